"""The layers over the file: ``BACKEND_INJECTOR_*`` variables, then the flags that were given.

A bad value from a variable is reported with the variable's name
(`EnvironmentConfigError`): the user has to know where to look, and that is in no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from webhook.settings.model import (
    DEVELOPMENT_CREDENTIAL,
    ENV_PREFIX,
    Action,
    ConfigError,
    EnvironmentConfigError,
    Settings,
)
from webhook.settings.validation import validate_endpoints, validate_numbers
from webhook.settings.values import delay_seconds, enum_value, whole_number


def secret_from_env(environ: Mapping[str, str], name: str) -> str:
    """A credential from ``BACKEND_INJECTOR_<NAME>``, or from the file named by ``..._FILE``.

    The file form is for Secret volume mounts; it wins because it is the safer of the two.
    """
    file_path = path_from_env(environ, f"{name}_FILE")
    if file_path is not None:
        try:
            return file_path.read_text(encoding="utf-8").strip()
        except OSError as error:
            # The message names the file, never its content.
            raise EnvironmentConfigError(f"cannot read {ENV_PREFIX}{name}_FILE ({file_path}): "
                              f"{error.strerror}") from error
    return environ.get(ENV_PREFIX + name, DEVELOPMENT_CREDENTIAL)


def path_from_env(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(ENV_PREFIX + name)
    return Path(value) if value else None


_SCALAR_VARIABLES = ("ACTION", "EXTERNAL_HOST", "HOST", "PORT", "WORKERS", "TLS_CERT", "TLS_KEY",
                     "CLIENT_CA", "SHUTDOWN_DELAY_SECONDS")


def apply_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """Apply the scalar BACKEND_INJECTOR_* variables (credentials were read already).

    One at a time, so that a bad value is reported with the name of the variable it came
    from: the user has to know where to look, and that is not in any file.
    """
    for name in _SCALAR_VARIABLES:
        value = environ.get(ENV_PREFIX + name)
        if not value:
            continue
        try:
            settings = apply_overrides(settings, {name.lower(): value})
            validate_endpoints(settings)
            validate_numbers(settings)
        except ConfigError as error:
            raise EnvironmentConfigError(
                f"environment variable {ENV_PREFIX}{name}: {error}"
            ) from None
    return settings


def apply_overrides(settings: Settings, given: Mapping[str, Any]) -> Settings:
    changes: dict[str, Any] = {}
    if "action" in given:
        changes["action"] = enum_value(Action, given["action"], "action")
    serving: dict[str, Any] = {}
    if "host" in given:
        serving["host"] = str(given["host"])
    for number in ("port", "workers"):
        if number in given:
            serving[number] = whole_number(given[number], number)
    for path in ("tls_cert", "tls_key", "client_ca"):
        if path in given:
            serving[path] = Path(given[path])
    if "shutdown_delay_seconds" in given:
        serving["shutdown_delay_seconds"] = delay_seconds(given["shutdown_delay_seconds"])
    if serving:
        changes["serving"] = replace(settings.serving, **serving)
    updated = replace(settings, **changes)
    if "external_host" in given:
        updated = with_external_host(updated, str(given["external_host"]))
    return updated


def with_external_host(settings: Settings, host: str) -> Settings:
    """Move every external service to ``host``, keeping ports; env values follow."""
    old = {s.name: s.external for s in settings.services}
    services = tuple(
        replace(s, external=replace(s.external, host=host)) if s.external else s
        for s in settings.services
    )
    env = list(settings.env)
    for service in services:
        before = old[service.name]
        if before is None or service.external is None:
            continue
        env = [(name, value.replace(str(before), str(service.external))) for name, value in env]
    return replace(settings, services=services, env=tuple(env))
