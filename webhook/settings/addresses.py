"""The safety net's addresses known from the settings alone: the IP pods reach each external
host at, where no DNS need be asked.

An external host written as an IP address is its own answer; ``safety_net.addresses`` gives the
IP of a name. Every other name is left to whoever can ask the DNS the pods ask (``serve`` in
the cluster, ``webhook.serving.addresses``).
"""

from __future__ import annotations

import ipaddress

from webhook.settings.model import Settings


def literal_ip(host: str) -> str | None:
    """``host`` as the canonical text of the IP address it is, or None when it is a name (or
    an address the apiserver would not take in a hostAliases entry)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and (
        address.scope_id is not None or address.ipv4_mapped is not None
    ):
        return None
    return str(address)


def known_addresses(settings: Settings) -> dict[str, str]:
    """The IP of each external host known without asking DNS: a host that is an IP address,
    else the configured ``safety_net.addresses``; none when the safety net is off."""
    if not settings.safety_net.host_aliases:
        return {}
    configured = dict(settings.safety_net.addresses)
    known: dict[str, str] = {}
    for service in settings.services:
        if service.external is None:
            continue
        host = service.external.host.lower()
        address = literal_ip(host) or configured.get(host)
        if address is not None:
            known[host] = address
    return known


def hosts_without_address(settings: Settings) -> list[str]:
    """The external hosts (lower case, each once) whose IP `known_addresses` does not know:
    names only DNS can answer for. None when the safety net is off."""
    if not settings.safety_net.host_aliases:
        return []
    known = known_addresses(settings)
    hosts = (s.external.host.lower() for s in settings.services if s.external is not None)
    return list(dict.fromkeys(host for host in hosts if host not in known))
