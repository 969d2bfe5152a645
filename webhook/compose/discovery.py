"""Which compose services are MLflow, MinIO and the gateway, and the host port each is
published on: a parsed compose document in, what was found and what was not out.

Pure: the variables for interpolation and the names each env_file sets are given by the
caller. Only the chosen services' fields are read, so a service of no interest (a database
whose port needs a variable this shell lacks) never stops the discovery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.compose.credentials import EnvFileNames, MinioCredentials, minio_credentials
from webhook.compose.ports import PortMapping, port_mappings
from webhook.compose.roles import MINIO, ROLES, Evidence, Role, evidence, listening_port
from webhook.settings import ConfigError


@dataclass(frozen=True, slots=True)
class Found:
    """A backend's compose service, and the host port pods reach it at (None: not
    published at a port known before it starts)."""

    role: Role
    service: str
    evidence: Evidence
    container_port: int | None
    host_port: int | None
    host_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Discovery:
    found: tuple[Found, ...]
    credentials: MinioCredentials | None  # None: no MinIO service
    warnings: tuple[str, ...]


def discover(compose: Any, *, variables: Mapping[str, str], chosen: Mapping[str, str],
             env_file_names: EnvFileNames) -> Discovery:
    """``chosen`` maps a role's key (``mlflow``) to the compose service a flag named for it."""
    services = _services(compose)
    warnings: list[str] = []
    found: list[Found] = []
    taken: set[str] = set(chosen.values())
    for role in ROLES:
        name, how = _choose(role, services, chosen, taken, variables, warnings)
        if name is None:
            continue
        taken.add(name)
        found.append(_published(role, name, how, _service(services, name), variables, warnings))
    minio = next((item for item in found if item.role is MINIO), None)
    credentials = None
    if minio is not None:
        credentials = minio_credentials(minio.service, _service(services, minio.service),
                                        env_file_names)
        warnings.extend(credentials.warnings)
    return Discovery(tuple(found), credentials, tuple(warnings))


def _services(compose: Any) -> Mapping[str, Any]:
    if not isinstance(compose, Mapping):
        raise ConfigError("not a compose file: its top level is not a mapping")
    services = compose.get("services")
    if not isinstance(services, Mapping) or not services:
        raise ConfigError("not a compose file: it has no services")
    return services


def _service(services: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    service = services[name]
    return service if isinstance(service, Mapping) else {}


def _choose(role: Role, services: Mapping[str, Any], chosen: Mapping[str, str],
            taken: set[str], variables: Mapping[str, str],
            warnings: list[str]) -> tuple[str | None, Evidence]:
    """The service that is ``role``: the one a flag named, else the best evidence, the
    first in the file among equals (the others named in a warning)."""
    if role.key in chosen:
        name = chosen[role.key]
        if name not in services:
            raise ConfigError(f"{role.option} {name}: the compose file has no such service "
                              f"(it has {', '.join(map(str, services))})")
        return name, Evidence.CHOSEN
    candidates: list[tuple[Evidence, str]] = []
    for name, service in services.items():
        if str(name) in taken or not (service is None or isinstance(service, Mapping)):
            continue
        reason = evidence(role, str(name), service or {}, variables)
        if reason is not None:
            candidates.append((reason, str(name)))
    if not candidates:
        warnings.append(f"no {role.title} service found (looked for {role.describe_search()}); "
                        f"services.{role.key} keeps its address; name the service with "
                        f"{role.option}")
        return None, Evidence.NAME
    best = min(reason for reason, _ in candidates)
    equals = [name for reason, name in candidates if reason == best]
    if len(equals) > 1:
        warnings.append(f"several {role.title} candidates ({', '.join(equals)}); using "
                        f"{equals[0]}; choose another with {role.option}")
    return equals[0], best


def _published(role: Role, name: str, how: Evidence, service: Mapping[str, Any],
               variables: Mapping[str, str], warnings: list[str]) -> Found:
    where = f"services.{name}"
    container_port, note = listening_port(role, service, variables, f"{where}.command")
    if note is not None:
        warnings.append(note)
    if service.get("network_mode") == "host":
        # The container shares the host's network: it is reached at the port it listens on.
        if container_port is None:
            warnings.append(f"{role.title} (compose service {name}) uses the host's network and "
                            f"its port cannot be told; services.{role.key} keeps its address")
        return Found(role, name, how, container_port, container_port)
    mappings = [mapping for mapping in port_mappings(service.get("ports"), variables,
                                                     f"{where}.ports")
                if mapping.protocol == "tcp"]
    published = _host_port(mappings, container_port)
    if published is None:
        wanted = "any port" if container_port is None else f"container port {container_port}"
        warnings.append(f"{role.title} (compose service {name}) does not publish {wanted} at a "
                        f"fixed host port; services.{role.key} keeps its address")
        return Found(role, name, how, container_port, None)
    host_port, mapping = published
    target = container_port if container_port is not None else mapping.target[0]
    return Found(role, name, how, target, host_port, mapping.host_ip)


def _host_port(mappings: list[PortMapping], container_port: int | None
               ) -> tuple[int, PortMapping] | None:
    """The first fixed host port of ``container_port`` (of any port when it is None), and
    the entry that publishes it."""
    for mapping in mappings:
        port = mapping.host_port(mapping.target[0] if container_port is None else container_port)
        if port is not None:
            return port, mapping
    return None
