"""The safety net: ``spec.hostAliases`` entries that send the managed names to the external IPs.

The rules remove or retarget the waiters they can read. A waiter they cannot read (a Python
socket loop, a Perl one-liner, a binary of the chart's own) is kept, as everything unread is,
and would wait for ``mlflow:5000`` forever: the in-cluster MLflow is switched off. With an
entry in the pod's ``/etc/hosts`` for each of a service's host names, in each of the forms the
rules recognise (``NAME``, ``NAME.NS``, ``NAME.NS.svc``, ``NAME.NS.svc.cluster.local``, for
the pod's own namespace), pointing at the IP of the service's external host, any client in
the pod that connects to ``mlflow:5000`` reaches the external MLflow (when the external port
is the in-cluster one, as on Docker Desktop). The same holds for app containers whose env the
rules did not recognise.

Nothing is added for a name that:

* belongs to a service without an external address (postgres), or whose external host's IP
  is not known (the IPs are given: the rules never look a name up);
* the pod maps itself in an entry of its own, to whatever IP: the user's entry wins;
* the apiserver would refuse (it checks each hostname is a DNS-1123 subdomain: lower-case
  labels of letters, digits and ``-``, 253 characters at most).

Nor for a pod on the node's network (``hostNetwork: true``). The kubelet does apply
hostAliases to those (it copies the node's own ``/etc/hosts`` and appends the entries), but
the IPs were found from the pods' network, such a pod is a node agent whose name resolution
belongs to the node, and it does not resolve the cluster's service names in the first place.

The names are grouped by IP into one entry each, appended to an existing list (``add`` at
``/spec/hostAliases/-``) or given as a new list. A second pass finds every name mapped and
adds nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.settings import DNS_SUBDOMAIN, Service

HOST_ALIASES_PATH = "/spec/hostAliases"
# The apiserver's check of a hostAliases hostname (IsDNS1123Subdomain): the grammar and its
# length limit.
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN)
DNS_SUBDOMAIN_MAX_CHARS = 253
# After NAME.NS, as the rules recognise in-cluster names (grammar.SERVICE_SUFFIX).
SERVICE_SUFFIXES = ("", ".svc", ".svc.cluster.local")
# (host, namespace) pairs whose names are remembered: a few hosts times the namespaces that
# opt in, with room to spare; a name is at most 253 characters, so the cache stays small.
NAMES_CACHE_ENTRIES = 4096


@dataclass(slots=True)
class HostAliasPatch:
    """The operations that add the entries, and the host names they were added for."""

    operations: list[dict[str, Any]] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)  # bare names (`mlflow`), in service order


def host_alias_operations(
    pod: Mapping[str, Any],
    namespace: str | None,
    services: Sequence[Service],
    addresses: Mapping[str, str],
) -> HostAliasPatch:
    """The JSON Patch operations that give ``pod`` the entries of the services whose external
    host has an IP in ``addresses`` (external host, lower case -> IP), for ``namespace``'s
    forms (only the bare names when it is not known)."""
    patch = HostAliasPatch()
    if not addresses:
        return patch
    if not isinstance(namespace, str):
        namespace = None  # a malformed object's: only the bare names are sure
    spec = pod.get("spec")
    if not isinstance(spec, dict) or spec.get("hostNetwork") is True:
        return patch
    existing = spec.get("hostAliases")
    if existing is not None and not isinstance(existing, list):
        return patch  # not a list to append to: the apiserver's validation has the last word
    claimed = _mapped_names(existing or [])
    # One entry per IP, in the order of the first service at it, whatever the pod claims.
    entries: dict[str, list[str]] = {}
    for service, address in _reachable(services, addresses):
        names_at_address = entries.setdefault(address, [])
        for host in service.hosts:
            names = [name for name in _valid_names(host, namespace) if name not in claimed]
            if names:
                names_at_address.extend(names)
                claimed.update(names)
                patch.hosts.append(host)
    aliases = [{"ip": address, "hostnames": names} for address, names in entries.items() if names]
    if not aliases:
        return patch
    if existing is None:
        patch.operations.append({"op": "add", "path": HOST_ALIASES_PATH, "value": aliases})
    else:
        patch.operations.extend(
            {"op": "add", "path": f"{HOST_ALIASES_PATH}/-", "value": alias} for alias in aliases
        )
    return patch


def in_cluster_names(host: str, namespace: str | None) -> list[str]:
    """``host`` as pods may write it: bare, and with the namespace and service suffixes."""
    if not namespace:
        return [host]
    return [host, *(f"{host}.{namespace}{suffix}" for suffix in SERVICE_SUFFIXES)]


def is_valid_hostname(name: str) -> bool:
    """Whether the apiserver accepts ``name`` as a hostAliases hostname."""
    return len(name) <= DNS_SUBDOMAIN_MAX_CHARS and _DNS_SUBDOMAIN.fullmatch(name) is not None


@functools.lru_cache(maxsize=NAMES_CACHE_ENTRIES)
def _valid_names(host: str, namespace: str | None) -> tuple[str, ...]:
    """The forms of ``host`` for ``namespace`` that the apiserver accepts, remembered: every
    pod of a namespace asks for the same ones."""
    return tuple(name for name in in_cluster_names(host, namespace) if is_valid_hostname(name))


def _reachable(
    services: Sequence[Service], addresses: Mapping[str, str]
) -> Iterator[tuple[Service, str]]:
    """Each service with an external address whose IP is known, with that IP."""
    for service in services:
        if service.external is not None:
            address = addresses.get(service.external.host.lower())
            if address is not None:
                yield service, address


def _mapped_names(aliases: list[Any]) -> set[str]:
    """Every hostname the pod's own entries map (entries of another shape map none)."""
    names: set[str] = set()
    for alias in aliases:
        hostnames = alias.get("hostnames") if isinstance(alias, dict) else None
        if isinstance(hostnames, list):
            names.update(name for name in hostnames if isinstance(name, str))
    return names


__all__ = [
    "HOST_ALIASES_PATH",
    "HostAliasPatch",
    "host_alias_operations",
    "in_cluster_names",
    "is_valid_hostname",
]
