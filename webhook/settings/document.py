"""The configuration as a document: the embedded default, the YAML file, and the settings
built from their merge.

The embedded default is the Docker Desktop backend: MLflow, MinIO and the FastAPI gateway on
``host.docker.internal`` at 5000, 9000 and 8000 (another platform's name for this machine with
``platform``, see ``platforms``), and the S3 credentials by reference: pods get
``valueFrom.secretKeyRef`` to the Secret ``backend-injector-credentials`` of their own namespace.
The values this process holds (MinIO's development ``minioadmin``/``minioadmin`` unless given)
reach pods only in ``value`` mode, warned about at start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from webhook.settings.addresses import literal_ip
from webhook.settings.keys import unknown_key
from webhook.settings.layers import secret_from_env
from webhook.settings.model import (
    DEFAULT_EXTERNAL_HOST,
    ENV_PREFIX,
    Action,
    ConfigError,
    CredentialMode,
    Credentials,
    Endpoint,
    EnvScope,
    SafetyNet,
    Service,
    Settings,
)
from webhook.settings.schema import DNS_LABEL, HOSTNAME, config_schema
from webhook.settings.values import enum_value, port_number, string_list

# The grammar the configuration schema declares, so that a file the schema accepts and the
# values checked here can never disagree.
_DNS_LABEL = re.compile(DNS_LABEL)
_HOSTNAME = re.compile(HOSTNAME)
_TEMPLATE_FIELD = re.compile(r"\{([a-z0-9-]+)\}")


def default_document(external_host: str | None = DEFAULT_EXTERNAL_HOST) -> dict[str, Any]:
    """The embedded default, in the same shape as a configuration file. With no
    ``external_host`` the external addresses name only their port: the platform fills the
    host in once the file is merged (``webhook.settings.platforms``)."""
    def external(port: int) -> dict[str, Any]:
        return {"port": port} if external_host is None else {"host": external_host, "port": port}

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
        "credentials": {"mode": "secretKeyRef", "secret_name": "backend-injector-credentials"},
        "excluded_namespaces": [
            "kube-system", "kube-public", "kube-node-lease", "backend-injector",
        ],
        "safety_net": {"host_aliases": True, "addresses": {}},
    }


def read_configuration_file(path: Path) -> dict[str, Any]:
    """The file as a mapping, refused with one line that says where when it cannot be used."""
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
    _refuse_credential_values(loaded)
    problem = unknown_key(loaded, config_schema())
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    return loaded


def _refuse_credential_values(document: Mapping[str, Any]) -> None:
    """Files end up in ConfigMaps and in git; credential values belong in a Secret."""
    credentials = document.get("credentials")
    if not isinstance(credentials, dict):
        return
    for secret_field in ("access_key_id", "secret_access_key"):
        if secret_field in credentials:
            raise ConfigError(
                f"credentials.{secret_field} may not be set in a configuration file; use "
                f"{ENV_PREFIX}{secret_field.upper()} or {ENV_PREFIX}{secret_field.upper()}_FILE"
            )


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


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings key by key; lists and scalars in ``update`` replace those in ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings_from_document(document: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    services = tuple(_service(name, spec) for name, spec in _mapping(document, "services").items())
    endpoints = {service.name: service.external for service in services}
    env = tuple(
        (str(name), _expand(str(name), value, endpoints))
        for name, value in _mapping(document, "env").items()
        if value is not None  # null in a file drops a variable of the default
    )
    return Settings(
        action=enum_value(Action, document.get("action"), "action"),
        waiter_names=frozenset(string_list(document.get("waiter_names", []), "waiter_names")),
        services=services,
        env=env,
        credentials=_credentials(_mapping(document, "credentials"), environ),
        add_env_to=enum_value(EnvScope, document.get("add_env_to", "using"), "add_env_to"),
        excluded_namespaces=frozenset(
            string_list(document.get("excluded_namespaces", []), "excluded_namespaces")
        ),
        safety_net=_safety_net(_mapping(document, "safety_net")),
    )


def _mapping(document: Mapping[str, Any], key: str, *, where: str | None = None
             ) -> Mapping[str, Any]:
    value = document.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where or key} must be a mapping")
    return value


def _service(name: str, spec: Any) -> Service:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"services.{name} must be a mapping")
    hosts = tuple(string_list(spec.get("hosts", [name]), f"services.{name}.hosts"))
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
                          port=port_number(external.get("port"), f"services.{name}.external.port")),
    )


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


def _safety_net(spec: Mapping[str, Any]) -> SafetyNet:
    switch = spec.get("host_aliases", True)
    if not isinstance(switch, bool):
        raise ConfigError(f"safety_net.host_aliases must be true or false, not {switch!r}")
    addresses = _mapping(spec, "addresses", where="safety_net.addresses")
    return SafetyNet(
        host_aliases=switch,
        addresses=tuple(_configured_address(str(host), ip) for host, ip in addresses.items()),
    )


def _configured_address(host: str, value: Any) -> tuple[str, str]:
    """One ``safety_net.addresses`` entry, checked: a host name and the IP it is reached at."""
    where = f"safety_net.addresses.{host}"
    if not _HOSTNAME.fullmatch(host):
        raise ConfigError(f"safety_net.addresses: {host!r} is not a host name")
    if literal_ip(host) is not None:
        raise ConfigError(f"{where}: {host} is an IP address already; it needs no entry")
    address = literal_ip(value) if isinstance(value, str) else None
    if address is None:
        raise ConfigError(f"{where} must be an IPv4 or IPv6 address, not {value!r}")
    return host.lower(), address


def _credentials(spec: Mapping[str, Any], environ: Mapping[str, str]) -> Credentials:
    return Credentials(
        access_key_id=secret_from_env(environ, "ACCESS_KEY_ID"),
        secret_access_key=secret_from_env(environ, "SECRET_ACCESS_KEY"),
        mode=enum_value(CredentialMode, spec.get("mode", "secretKeyRef"), "credentials.mode"),
        secret_name=str(spec.get("secret_name", "backend-injector-credentials")),
        access_key_id_key=str(spec.get("access_key_id_key", "access-key-id")),
        secret_access_key_key=str(spec.get("secret_access_key_key", "secret-access-key")),
    )
