"""Settings: what the webhook manages and where the external backend lives.

One typed object, built once by the CLI and passed down; nothing reads the environment at
import time. Sources, the later winning over the earlier:

    embedded default  <  YAML file (--config)  <  environment (BACKEND_INJECTOR_*)  <  flags

The embedded default is the Docker Desktop backend of the seed report: MLflow, MinIO and the
FastAPI gateway on ``host.docker.internal`` at 5000, 9000 and 8000, and MinIO's development
credentials ``minioadmin``/``minioadmin`` (warned about at start).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from webhook.config_schema import (
    CREDENTIAL_VARIABLES,
    DNS_LABEL,
    ENV_NAME,
    HOSTNAME,
    config_schema,
)

ENV_PREFIX = "BACKEND_INJECTOR_"
DEFAULT_EXTERNAL_HOST = "host.docker.internal"
# MinIO's documented development default; a deployment that keeps it is warned at start.
DEVELOPMENT_CREDENTIAL = "minioadmin"
ACCESS_KEY_ENV, SECRET_KEY_ENV = CREDENTIAL_VARIABLES

# The grammars the configuration schema declares, so that a file the schema accepts and the
# values checked here can never disagree.
_DNS_LABEL = re.compile(DNS_LABEL)
_HOSTNAME = re.compile(HOSTNAME)
_ENV_NAME = re.compile(ENV_NAME)
_TEMPLATE_FIELD = re.compile(r"\{([a-z0-9-]+)\}")
_E = TypeVar("_E", bound=StrEnum)


class ConfigError(ValueError):
    """The configuration cannot be used: a bad file, a bad value, or a contradiction."""


class EnvironmentConfigError(ConfigError):
    """A bad value from a BACKEND_INJECTOR_* variable; the message names the variable."""


class Action(StrEnum):
    """What happens to an init container that waits for a managed in-cluster service."""

    REMOVE = "remove"
    REWRITE = "rewrite"


class CredentialMode(StrEnum):
    """How the S3 credentials reach the pods."""

    VALUE = "value"  # literal values in the pod spec
    SECRET_KEY_REF = "secretKeyRef"  # a reference to a Secret in the pod's own namespace
    NONE = "none"  # not managed: the chart's own credentials stay


class EnvScope(StrEnum):
    """Which containers get the managed variables they do not carry yet."""

    USING = "using"  # those that use the backend
    ALL = "all"  # every app container and native sidecar


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An external address that pods can reach."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Service:
    """An in-cluster service the chart expects, and where it lives outside the cluster.

    ``external`` is None for services that have no external address (postgres): waiters for
    them are removed whatever the action, because there is nothing to retarget them at.
    """

    name: str
    hosts: tuple[str, ...]
    external: Endpoint | None


@dataclass(frozen=True, slots=True)
class Credentials:
    """S3 credentials. ``repr`` hides the values so they cannot reach a log by accident."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    mode: CredentialMode = CredentialMode.VALUE
    secret_name: str = "backend-injector-credentials"
    # Keys inside that Secret, in secretKeyRef mode.
    access_key_id_key: str = "access-key-id"
    secret_access_key_key: str = "secret-access-key"

    @property
    def is_development_default(self) -> bool:
        if self.mode is CredentialMode.NONE:
            return False  # nothing reaches a pod
        return DEVELOPMENT_CREDENTIAL in (self.access_key_id, self.secret_access_key)


@dataclass(frozen=True, slots=True)
class Serving:
    """How the webhook is served: where it listens, its certificate, its bounds and draining.

    The first seven come from the ``serve`` flags and their ``BACKEND_INJECTOR_*`` variables;
    the rest are fixed here, each with the reason for its value (tests that need shorter
    bounds change them with ``dataclasses.replace``).
    """

    host: str = "0.0.0.0"
    port: int = 8443
    workers: int = 1
    # Both or neither. Neither: ``serve`` makes a throw-away self-signed pair for localhost.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Given: only clients holding a certificate this CA signed may connect (the apiserver's).
    client_ca: Path | None = None
    # After SIGTERM: how long to keep serving with /readyz false before closing the listener.
    shutdown_delay_seconds: float = 0.0
    # Longer than the apiserver's idle-connection timeout (Go's default is 90 s), so that it
    # is always the client that closes an idle connection: a server closing first can race a
    # request being sent on it, and the apiserver does not retry a failed POST.
    keep_alive_seconds: int = 120
    # A client that opens a connection and never finishes the TLS handshake is dropped after
    # this long. The apiserver completes a handshake in milliseconds; asyncio's 60 s default
    # lets idle sockets pile up.
    handshake_timeout_seconds: float = 10.0
    # Open connections (plus requests in flight). A new connection over it closes the one idle
    # longest; a request that finds none idle gets 503. The apiserver keeps a few dozen
    # connections per replica; this leaves room for many. See webhook/connections.py.
    max_connections: int = 1000
    # The request line and headers together: over it, 431 without reading the rest.
    head_limit_bytes: int = 64 * 1024
    # From a request's first byte to its last: over it, 408.
    request_seconds: float = 10.0
    # Processes answering reviews too big for the event loop (webhook/offload.py). One keeps
    # a core for the event loop on a small machine; big reviews are rare and wait their turn.
    review_processes: int = 1
    # After the listener closes: how long requests in flight may take before they are cut.
    # Inside the 30 s termination grace period the manifests and the chart give the pod, so
    # that the server, not a SIGKILL, ends what is still running.
    graceful_timeout_seconds: int = 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the rules need, and how the webhook serving them is served."""

    action: Action
    waiter_names: frozenset[str]
    services: tuple[Service, ...]
    env: tuple[tuple[str, str], ...]  # plain managed variables, in the order they are added
    credentials: Credentials
    add_env_to: EnvScope = EnvScope.USING
    # Never mutated even if the namespaceSelector is wrong: a broken webhook here could keep
    # the control plane or the webhook itself from starting.
    excluded_namespaces: frozenset[str] = frozenset()
    serving: Serving = field(default_factory=Serving)

    @property
    def managed_env_names(self) -> tuple[str, ...]:
        if self.credentials.mode is CredentialMode.NONE:
            return tuple(name for name, _ in self.env)
        return (*(name for name, _ in self.env), ACCESS_KEY_ENV, SECRET_KEY_ENV)


def default_document() -> dict[str, Any]:
    """The embedded default, in the same shape as a configuration file."""
    def external(port: int) -> dict[str, Any]:
        return {"host": DEFAULT_EXTERNAL_HOST, "port": port}

    return {
        "action": "remove",
        "waiter_names": ["wait-for-mlflow", "wait-for-fastapi"],
        "services": {
            "mlflow": {"hosts": ["mlflow"], "external": external(5000)},
            "minio": {"hosts": ["minio"], "external": external(9000)},
            "fastapi": {"hosts": ["fastapi-app", "fastapi"], "external": external(8000)},
            "postgres": {"hosts": ["postgres"], "external": None},
        },
        "env": {
            "MLFLOW_TRACKING_URI": "http://{mlflow}",
            "MLFLOW_S3_ENDPOINT_URL": "http://{minio}",
            "GATEWAY_URL": "http://{fastapi}",
        },
        "credentials": {"mode": "value", "secret_name": "backend-injector-credentials"},
        "excluded_namespaces": [
            "kube-system", "kube-public", "kube-node-lease", "backend-injector",
        ],
    }


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from the embedded default, a file, the environment and flag overrides.

    ``overrides`` holds flag values that were given (None means "not given").
    """
    environ = os.environ if environ is None else environ
    document = default_document()
    file_path = config_file or _path_from_env(environ, "CONFIG")
    if file_path is not None:
        document = _merge(document, _read_yaml(file_path))
    try:
        settings = _settings_from_document(document, environ)
    except EnvironmentConfigError:
        raise
    except ConfigError as error:
        # Every other value that can be wrong here came from the file (the default is right), so
        # the message says which file, after the key path it already names.
        raise ConfigError(f"{file_path}: {error}" if file_path is not None else str(error)) \
            from None
    settings = _apply_environment(settings, environ)
    if overrides:
        given = {key: value for key, value in overrides.items() if value is not None}
        settings = _apply_overrides(settings, given)
    _validate(settings)
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from error
    except yaml.MarkedYAMLError as error:
        raise ConfigError(_yaml_error_line(path, error)) from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
    if "credentials" in loaded and isinstance(loaded["credentials"], dict):
        for secret_field in ("access_key_id", "secret_access_key"):
            if secret_field in loaded["credentials"]:
                # Files end up in ConfigMaps and in git; values belong in a Secret.
                raise ConfigError(
                    f"credentials.{secret_field} may not be set in a configuration file; use "
                    f"{ENV_PREFIX}{secret_field.upper()} or {ENV_PREFIX}{secret_field.upper()}_FILE"
                )
    problem = unknown_key(loaded, config_schema())
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    return loaded


def unknown_key(document: Any, schema: Mapping[str, Any], path: str = "") -> str | None:
    """The first key of `document`, at any depth, that `schema` (a JSON Schema of objects with
    ``additionalProperties: false``) does not allow, as ``unknown key PATH (did you mean
    NEAREST?)``; None when every key is known. Only keys are judged here; values are checked
    where settings are built, with messages of their own."""
    if isinstance(document, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(document):
            if (problem := unknown_key(item, schema["items"], f"{path}[{index}]")) is not None:
                return problem
        return None
    if not isinstance(document, Mapping):
        return None
    object_schema = _object_alternative(schema)
    if object_schema is None:
        return None
    properties: Mapping[str, Any] = object_schema.get("properties") or {}
    patterns: Mapping[str, Any] = object_schema.get("patternProperties") or {}
    for key, value in document.items():
        where = f"{path}.{key}" if path else str(key)
        child = properties.get(key)
        if child is None:
            child = next((sub for pattern, sub in patterns.items()
                          if re.search(pattern, str(key))), None)
        if child is None:
            additional = object_schema.get("additionalProperties", True)
            if additional is False:
                return _unknown(where, str(key), properties, patterns)
            child = additional if isinstance(additional, Mapping) else {}
        if (problem := unknown_key(value, child, where)) is not None:
            return problem
    return None


def _object_alternative(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema itself if it describes an object, else its object branch of oneOf/anyOf."""
    if schema.get("type") == "object" or "properties" in schema or "patternProperties" in schema:
        return schema
    for keyword in ("oneOf", "anyOf"):
        for alternative in schema.get(keyword) or []:
            if isinstance(alternative, Mapping) and _object_alternative(alternative) is not None:
                return _object_alternative(alternative)
    return None


def _unknown(where: str, key: str, properties: Mapping[str, Any],
             patterns: Mapping[str, Any]) -> str:
    if patterns and not properties:
        rule = " or ".join(patterns)
        return f"{where}: {key!r} is not a valid name here (it must match {rule})"
    nearest = difflib.get_close_matches(key, list(properties), n=1, cutoff=0.6)
    if nearest:
        return f"unknown key {where} (did you mean {nearest[0]}?)"
    return f"unknown key {where} (valid here: {', '.join(sorted(properties))})"


def yaml_problem(error: yaml.MarkedYAMLError) -> tuple[yaml.Mark | None, str]:
    """Where a YAML parser gave up (else where the construct it was in began; lines and
    columns 0-based) and what it met there, its context first: ``while parsing a flow
    mapping: expected ',' or '}'``. The configuration file and ``inject`` both report it."""
    mark = error.problem_mark or error.context_mark
    return mark, ": ".join(part for part in (error.context, error.problem) if part)


def _yaml_error_line(path: Path, error: yaml.MarkedYAMLError) -> str:
    """``FILE:LINE:COLUMN: not valid YAML: problem``, 1-based."""
    mark, problem = yaml_problem(error)
    if mark is None:
        return f"{path}: not valid YAML: {problem}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings key by key; lists and scalars in ``update`` replace those in ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _settings_from_document(document: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    services = tuple(_service(name, spec) for name, spec in _mapping(document, "services").items())
    endpoints = {service.name: service.external for service in services}
    env = tuple(
        (str(name), _expand(str(name), value, endpoints))
        for name, value in _mapping(document, "env").items()
        if value is not None  # null in a file drops a variable of the default
    )
    return Settings(
        action=_enum(Action, document.get("action"), "action"),
        waiter_names=frozenset(_string_list(document.get("waiter_names", []), "waiter_names")),
        services=services,
        env=env,
        credentials=_credentials(_mapping(document, "credentials"), environ),
        add_env_to=_enum(EnvScope, document.get("add_env_to", "using"), "add_env_to"),
        excluded_namespaces=frozenset(
            _string_list(document.get("excluded_namespaces", []), "excluded_namespaces")
        ),
    )


def _mapping(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return value


def _enum(kind: type[_E], value: Any, where: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ConfigError(f"{where} must be one of {allowed}, not {value!r}") from None


def _service(name: str, spec: Any) -> Service:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"services.{name} must be a mapping")
    hosts = tuple(_string_list(spec.get("hosts", [name]), f"services.{name}.hosts"))
    for host in hosts:
        if not _DNS_LABEL.match(host):
            raise ConfigError(f"services.{name}.hosts: {host!r} is not a DNS label")
    external = spec.get("external")
    if external is None:
        return Service(name=name, hosts=hosts, external=None)
    if not isinstance(external, Mapping):
        raise ConfigError(f"services.{name}.external must be a mapping or null")
    return Service(
        name=name,
        hosts=hosts,
        external=Endpoint(host=str(external.get("host", "")),
                          port=_port(external.get("port"), f"services.{name}.external.port")),
    )


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{where}: port must be a number from 1 to 65535, not {value!r}")
    return value


def _expand(name: str, template: Any, endpoints: Mapping[str, Endpoint | None]) -> str:
    """Fill ``{service}`` fields of an env value with that service's external host:port."""
    if not isinstance(template, str):
        raise ConfigError(f"env.{name} must be a string")

    def endpoint_of(match: re.Match[str]) -> str:
        service = match.group(1)
        if service not in endpoints:
            raise ConfigError(f"env.{name} refers to unknown service {{{service}}}")
        endpoint = endpoints[service]
        if endpoint is None:
            raise ConfigError(f"env.{name} refers to {{{service}}}, which has no external address")
        return str(endpoint)

    return _TEMPLATE_FIELD.sub(endpoint_of, template)


def _credentials(spec: Mapping[str, Any], environ: Mapping[str, str]) -> Credentials:
    return Credentials(
        access_key_id=_secret_from_env(environ, "ACCESS_KEY_ID"),
        secret_access_key=_secret_from_env(environ, "SECRET_ACCESS_KEY"),
        mode=_enum(CredentialMode, spec.get("mode", "value"), "credentials.mode"),
        secret_name=str(spec.get("secret_name", "backend-injector-credentials")),
        access_key_id_key=str(spec.get("access_key_id_key", "access-key-id")),
        secret_access_key_key=str(spec.get("secret_access_key_key", "secret-access-key")),
    )


def _secret_from_env(environ: Mapping[str, str], name: str) -> str:
    """A credential from ``BACKEND_INJECTOR_<NAME>``, or from the file named by ``..._FILE``.

    The file form is for Secret volume mounts; it wins because it is the safer of the two.
    """
    file_path = _path_from_env(environ, f"{name}_FILE")
    if file_path is not None:
        try:
            return file_path.read_text(encoding="utf-8").strip()
        except OSError as error:
            # The message names the file, never its content.
            raise EnvironmentConfigError(f"cannot read {ENV_PREFIX}{name}_FILE ({file_path}): "
                              f"{error.strerror}") from error
    return environ.get(ENV_PREFIX + name, DEVELOPMENT_CREDENTIAL)


def _path_from_env(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(ENV_PREFIX + name)
    return Path(value) if value else None


_SCALAR_VARIABLES = ("ACTION", "EXTERNAL_HOST", "HOST", "PORT", "WORKERS", "TLS_CERT", "TLS_KEY",
                     "CLIENT_CA", "SHUTDOWN_DELAY_SECONDS")


def _apply_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """Apply the scalar BACKEND_INJECTOR_* variables (credentials were read already).

    One at a time, so that a bad value is reported with the name of the variable it came
    from: the user has to know where to look, and that is not in any file.
    """
    for name in _SCALAR_VARIABLES:
        value = environ.get(ENV_PREFIX + name)
        if not value:
            continue
        try:
            settings = _apply_overrides(settings, {name.lower(): value})
            _validate_endpoints(settings)
            _validate_numbers(settings)
        except ConfigError as error:
            raise EnvironmentConfigError(
                f"environment variable {ENV_PREFIX}{name}: {error}"
            ) from None
    return settings


def _apply_overrides(settings: Settings, given: Mapping[str, Any]) -> Settings:
    changes: dict[str, Any] = {}
    if "action" in given:
        changes["action"] = _enum(Action, given["action"], "action")
    serving: dict[str, Any] = {}
    if "host" in given:
        serving["host"] = str(given["host"])
    for number in ("port", "workers"):
        if number in given:
            serving[number] = _integer(given[number], number)
    for path in ("tls_cert", "tls_key", "client_ca"):
        if path in given:
            serving[path] = Path(given[path])
    if "shutdown_delay_seconds" in given:
        serving["shutdown_delay_seconds"] = _seconds(given["shutdown_delay_seconds"])
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


def _integer(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, not {value!r}") from None


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"shutdown delay must be a number of seconds, not {value!r}") from None
    if not 0 <= seconds <= 300:
        raise ConfigError("shutdown delay must be from 0 to 300 seconds")
    return seconds


def _validate(settings: Settings) -> None:
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
    _validate_endpoints(settings)
    names = [name for name, _ in settings.env]
    for name in names:
        if not _ENV_NAME.match(name):
            raise ConfigError(f"env: {name!r} is not a valid variable name")
        if name in (ACCESS_KEY_ENV, SECRET_KEY_ENV):
            raise ConfigError(f"env: {name} is a credential; it comes from the credentials section")
    _validate_numbers(settings)
    if (settings.serving.tls_cert is None) != (settings.serving.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    credentials = settings.credentials
    if credentials.mode is not CredentialMode.NONE and (
        not credentials.access_key_id or not credentials.secret_access_key
    ):
        raise ConfigError("credentials may not be empty")


def _validate_numbers(settings: Settings) -> None:
    serving = settings.serving
    if not 0 < serving.port < 65536:
        raise ConfigError(f"port must be from 1 to 65535, not {serving.port}")
    if serving.workers < 1:
        raise ConfigError(f"workers must be at least 1, not {serving.workers}")


def _validate_endpoints(settings: Settings) -> None:
    for service in settings.services:
        if service.external is not None and not _HOSTNAME.match(service.external.host):
            raise ConfigError(
                f"services.{service.name}.external.host: {service.external.host!r} is not a "
                "host name"
            )


def describe(settings: Settings) -> dict[str, Any]:
    """A loggable summary: names and external addresses, never credential values."""
    return {
        "action": settings.action.value,
        "waiter_names": sorted(settings.waiter_names),
        "services": {
            s.name: {"hosts": list(s.hosts), "external": str(s.external) if s.external else None}
            for s in settings.services
        },
        "env": [name for name, _ in settings.env],
        "credentials_mode": settings.credentials.mode.value,
        "add_env_to": settings.add_env_to.value,
    }
