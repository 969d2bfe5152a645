"""Checks of built settings as a whole: contradictions no single value shows."""

from __future__ import annotations

import re

from webhook.settings.model import (
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    ConfigError,
    CredentialMode,
    Settings,
)
from webhook.settings.schema import ENV_NAME, HOSTNAME

# The grammars the configuration schema declares, so that a file the schema accepts and the
# values checked here can never disagree.
_HOSTNAME = re.compile(HOSTNAME)
_ENV_NAME = re.compile(ENV_NAME)


def validate(settings: Settings) -> None:
    """Raise `ConfigError` for the first contradiction in settings built from every source."""
    _validate_services(settings)
    validate_endpoints(settings)
    _validate_env_names(settings)
    validate_numbers(settings)
    if (settings.serving.tls_cert is None) != (settings.serving.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    credentials = settings.credentials
    if credentials.mode is not CredentialMode.NONE and (
        not credentials.access_key_id or not credentials.secret_access_key
    ):
        raise ConfigError("credentials may not be empty")


def _validate_services(settings: Settings) -> None:
    """At least one service, and no host claimed by two of them."""
    if not settings.services:
        raise ConfigError("services may not be empty")
    seen_hosts: dict[str, str] = {}
    for service in settings.services:
        for host in service.hosts:
            if host in seen_hosts:
                raise ConfigError(
                    f"host {host!r} is claimed by both {seen_hosts[host]} and {service.name}"
                )
            seen_hosts[host] = service.name


def _validate_env_names(settings: Settings) -> None:
    """Valid variable names, none of them a credential (those have a section of their own)."""
    for name, _ in settings.env:
        if not _ENV_NAME.match(name):
            raise ConfigError(f"env: {name!r} is not a valid variable name")
        if name in (ACCESS_KEY_ENV, SECRET_KEY_ENV):
            raise ConfigError(f"env: {name} is a credential; it comes from the credentials section")


def validate_numbers(settings: Settings) -> None:
    serving = settings.serving
    if not 0 < serving.port < 65536:
        raise ConfigError(f"port must be from 1 to 65535, not {serving.port}")
    if serving.workers < 1:
        raise ConfigError(f"workers must be at least 1, not {serving.workers}")


def validate_endpoints(settings: Settings) -> None:
    for service in settings.services:
        if service.external is not None and not _HOSTNAME.match(service.external.host):
            raise ConfigError(
                f"services.{service.name}.external.host: {service.external.host!r} is not a "
                "host name"
            )
