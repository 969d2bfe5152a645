"""A service's ``ports`` entries, read as Compose reads them, and the host port a container
port is published on.

Short syntax, ``[HOST:]CONTAINER[/PROTOCOL]`` with ``HOST`` being ``[IP:](port | range)``:
``"3000"``, ``"3000-3005"``, ``"8000:8000"``, ``"9090-9091:8080-8081"``, ``"8000-9000:80"``,
``"127.0.0.1:8001:8001"``, ``"127.0.0.1::5000"``, ``"::1:6000:6000"``, ``"[::1]:6001:6001"``,
``"6060:6060/udp"``, or a bare number. Long syntax: a mapping with ``target``, ``published``
(a port or a range, written as a string or a number), ``host_ip``, ``protocol``. Variables are
interpolated in each entry before it is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.compose.interpolation import interpolate
from webhook.settings import ConfigError

PortRange = tuple[int, int]  # first and last, equal for a single port
_PORT_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One ``ports`` entry: container ports, and the host ports they are published on (None:
    Docker picks a free one when the container starts)."""

    target: PortRange
    published: PortRange | None
    host_ip: str | None
    protocol: str

    def host_port(self, container_port: int) -> int | None:
        """The host port ``container_port`` is published on by this entry; None when the
        entry does not publish it at a port known before the container starts."""
        first, last = self.target
        if self.published is None or not first <= container_port <= last:
            return None
        published_first, published_last = self.published
        if published_last - published_first != last - first:
            return None  # a host range for fewer container ports: Docker picks from it
        return published_first + container_port - first


def port_mappings(entries: Any, variables: Mapping[str, str], where: str) -> list[PortMapping]:
    """Every entry of a service's ``ports`` (``where`` is its path, for messages)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"{where} must be a list")
    return [_mapping(entry, variables, f"{where}[{index}]") for index, entry in enumerate(entries)]


def _mapping(entry: Any, variables: Mapping[str, str], where: str) -> PortMapping:
    # Messages quote the entry as written, never as interpolated: a value from the
    # environment is not repeated.
    try:
        if isinstance(entry, int) and not isinstance(entry, bool):
            return PortMapping(_port_range(str(entry)), None, None, "tcp")
        if isinstance(entry, str):
            return _short(interpolate(entry, variables))
        if isinstance(entry, Mapping):
            return _long(entry, variables)
    except ConfigError as error:
        quoted = "" if isinstance(entry, Mapping) else f" ({entry!r})"
        raise ConfigError(f"{where}{quoted}: {error}") from None
    raise ConfigError(f"{where}: {entry!r} is neither a port string nor a mapping")


def _short(text: str) -> PortMapping:
    spec, _, protocol = text.strip().partition("/")
    host_ip: str | None = None
    if spec.startswith("["):  # an IPv6 address in brackets: [::1]:6001:6001
        close = spec.find("]")
        if close < 0 or spec[close + 1:close + 2] != ":":
            raise ConfigError("not a port mapping")
        host_ip = spec[1:close]
        published, separator, target = spec[close + 2:].rpartition(":")
        if not separator:
            raise ConfigError("not a port mapping")
    else:
        # Split from the right: what is left of the last two colons is the host IP, which may
        # hold colons of its own (::1:6000:6000).
        parts = spec.rsplit(":", 2)
        target = parts[-1]
        published = parts[-2] if len(parts) > 1 else ""
        host_ip = parts[0] if len(parts) > 2 else None
    return PortMapping(
        target=_port_range(target),
        published=_port_range(published) if published else None,
        host_ip=host_ip or None,
        protocol=(protocol or "tcp").lower(),
    )


def _long(entry: Mapping[str, Any], variables: Mapping[str, str]) -> PortMapping:
    def field(name: str) -> str:
        value = entry.get(name)
        if value is None or isinstance(value, bool):
            return ""
        try:
            return interpolate(value, variables) if isinstance(value, str) else str(value)
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}") from None

    def port_field(name: str) -> PortRange | None:
        text = field(name)
        try:
            return _port_range(text) if text else None
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}") from None

    target = port_field("target")
    if target is None:
        raise ConfigError("the long syntax needs a target port")
    return PortMapping(
        target=target,
        published=port_field("published"),
        host_ip=field("host_ip") or None,
        protocol=(field("protocol") or "tcp").lower(),
    )


def _port_range(text: str) -> PortRange:
    match = _PORT_RANGE.fullmatch(text.strip())
    if match is None:
        raise ConfigError("not a port or a range of ports")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 0 < first <= last < 65536:
        raise ConfigError("not a port or a range of ports from 1 to 65535")
    return first, last
