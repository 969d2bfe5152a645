"""What a discovery changes in a configuration document, and the comment lines that say what
was found and where the S3 credentials are, by the names of the variables that hold them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from webhook.compose.credentials import CredentialVariable, MinioCredentials
from webhook.compose.discovery import Discovery, Found
from webhook.compose.roles import Evidence
from webhook.settings import DEFAULT_EXTERNAL_HOST, ENV_PREFIX

_HOW = {
    Evidence.IMAGE: "by its image",
    Evidence.COMMAND: "by its command",
    Evidence.NAME: "by its name",
}


def with_discovery(document: Mapping[str, Any], discovery: Discovery) -> dict[str, Any]:
    """``document`` with each found service's external port set to its published host port;
    the host stays the configuration's."""
    updated = copy.deepcopy(dict(document))
    services = updated.setdefault("services", {})
    for found in discovery.found:
        if found.host_port is None:
            continue
        service = services.setdefault(found.role.key, {})
        service["external"] = {"host": _host_of(services, found.role.key),
                               "port": found.host_port}
    return updated


def _host_of(services: Mapping[str, Any], key: str) -> str:
    """The service's own external host; for one without an address, the first other one's."""
    candidates = [services.get(key), *services.values()]
    for service in candidates:
        external = service.get("external") if isinstance(service, Mapping) else None
        if isinstance(external, Mapping) and external.get("host"):
            return str(external["host"])
    return DEFAULT_EXTERNAL_HOST


def comments(discovery: Discovery, compose_file: str) -> list[str]:
    """What was taken from the compose file, and how to hand the credentials to the webhook."""
    lines = [f"From the compose file {compose_file}:"]
    lines += [_found_line(found) for found in discovery.found if found.host_port is not None]
    if len(lines) == 1:
        lines.append("  nothing: no backend service published a port (see the warnings)")
    return lines + _credential_lines(discovery.credentials)


def _found_line(found: Found) -> str:
    chosen = found.evidence is Evidence.CHOSEN
    how = f"named with {found.role.option}" if chosen else _HOW[found.evidence]
    line = (f"  {found.role.key}: compose service {found.service} ({how}), container port "
            f"{found.container_port} published on host port {found.host_port}")
    if found.host_ip:
        line += f" of {found.host_ip} only"
    return line


def _credential_lines(credentials: MinioCredentials | None) -> list[str]:
    access, secret = f"{ENV_PREFIX}ACCESS_KEY_ID", f"{ENV_PREFIX}SECRET_ACCESS_KEY"
    if credentials is None:
        return [
            "S3 credentials: no MinIO service was found; give the webhook yours in "
            f"{access} and {secret} (or {access}_FILE and {secret}_FILE naming files that "
            "hold them)."
        ]
    lines = [f"S3 credentials of compose service {credentials.service} (never written here):"]
    for label, variable in (("access key", credentials.user),
                            ("secret key", credentials.password)):
        lines.append(f"  {label}: " + (variable.describe() if variable is not None else
                                        "not set, so MinIO's development default"))
    lines.append(f"Give backend-injector the same values as {access} and {secret} (or in files "
                 "their _FILE forms name):")
    lines.append(f"  {access} = {_value_of(credentials.user)}")
    lines.append(f"  {secret} = {_value_of(credentials.password)}")
    return lines


def _value_of(variable: CredentialVariable | None) -> str:
    """Where the value to give is found, in words; never the value."""
    if variable is None:
        return "nothing: unset, the webhook's default is MinIO's development default too"
    if variable.name.endswith("_FILE"):
        return f"the content of the file {variable.name} names"
    if variable.taken_from is not None:
        fallback = (", or the default the compose file gives it when unset"
                    if variable.taken_from_has_default else "")
        return f"the value of {variable.taken_from}{fallback}"
    if variable.from_compose_environment:
        return f"the value of {variable.name} where docker compose runs"
    if variable.where == "environment":
        return f"the value of {variable.name} in the compose file"
    return f"the value of {variable.name} in {variable.where.removeprefix('env_file ')}"
