"""Settings: the one typed object that says what the webhook manages and where the external
backend lives, and how it is built from its sources.

- ``model``: the frozen dataclasses and enums (`Settings`, `Service`, `Credentials`,
  `SafetyNet`, `Serving`, ...), and `describe`, the loggable summary;
- ``addresses``: `known_addresses` and `hosts_without_address`, the external hosts whose IP
  is known without asking DNS (the safety net's), and the others;
- ``loading``: `load_settings`, the embedded default < file < environment < flags;
- ``document``: the embedded default and the YAML file as documents, and settings from them;
- ``layers``: the ``BACKEND_INJECTOR_*`` variables and the flags over the file;
- ``platforms``: the platform presets, each local Kubernetes's name for this machine;
- ``values``, ``validation``: checked values, and checks of the whole;
- ``keys``, ``schema``: the configuration's JSON Schema, and unknown keys found by walking it.

Contract: settings import nothing else of the package; every other wing may import them. The
names below are the wing's public face, and what the other wings import.
"""

from webhook.settings.addresses import hosts_without_address, known_addresses, literal_ip
from webhook.settings.document import default_document, yaml_problem
from webhook.settings.keys import unknown_key
from webhook.settings.layers import with_external_host
from webhook.settings.loading import load_settings
from webhook.settings.model import (
    ACCESS_KEY_ENV,
    DEFAULT_EXTERNAL_HOST,
    DEVELOPMENT_CREDENTIAL,
    ENV_PREFIX,
    SECRET_KEY_ENV,
    Action,
    ConfigError,
    CredentialMode,
    Credentials,
    Endpoint,
    EnvironmentConfigError,
    EnvScope,
    SafetyNet,
    Service,
    Serving,
    Settings,
    describe,
)
from webhook.settings.platforms import PLATFORMS, Platform, owner_of, platform_named
from webhook.settings.schema import DNS_SUBDOMAIN

__all__ = [
    "ACCESS_KEY_ENV", "DEFAULT_EXTERNAL_HOST", "DEVELOPMENT_CREDENTIAL", "DNS_SUBDOMAIN",
    "ENV_PREFIX", "PLATFORMS", "SECRET_KEY_ENV", "Action", "ConfigError", "CredentialMode",
    "Credentials", "Endpoint", "EnvScope", "EnvironmentConfigError", "Platform", "SafetyNet",
    "Serving", "Service", "Settings", "default_document", "describe", "hosts_without_address",
    "known_addresses", "literal_ip",
    "load_settings", "owner_of", "platform_named", "unknown_key", "with_external_host",
    "yaml_problem",
]
