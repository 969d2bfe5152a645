"""The policy twin's safety net: the hostAliases entries of ``webhook.rules.host_aliases``.

The policy is generated from the settings, so it can hold only the IPs known then: external
hosts written as IP addresses and ``safety_net.addresses``. A name that only the cluster's DNS
can answer for (``serve`` asks it in the cluster) gets no entry from the policy.

The entries are grouped at generation (one per IP, in the order of the first service at it)
and their names computed per pod: each host in the forms for the pod's namespace, less the
names the pod maps itself and those the apiserver would refuse; an entry left without a name
goes. As the rules, nothing for a pod on the node's network. The patch appends to an existing
list or adds a new one; the status annotation gains ``aliased`` as the webhook writes it.
"""

from __future__ import annotations

from webhook.policy.cel import (
    EMPTY_LIST,
    OBJECT,
    Expr,
    add,
    all_of,
    any_of,
    cond,
    function,
    json_patch,
    list_of,
    map_of,
    not_,
    string,
    variable,
)
from webhook.rules.host_aliases import (
    DNS_SUBDOMAIN_MAX_CHARS,
    HOST_ALIASES_PATH,
    SERVICE_SUFFIXES,
    is_valid_hostname,
)
from webhook.settings import DNS_SUBDOMAIN, Settings, known_addresses

Variables = list[tuple[str, Expr]]


def reachable_hosts(settings: Settings) -> list[tuple[str, str]]:
    """(IP, host name) for each host of each service whose external host's IP is known, in the
    order of the services, as the rules go through them; hosts the apiserver would refuse even
    bare are left out here."""
    known = known_addresses(settings)
    found = []
    for service in settings.services:
        address = known.get(service.external.host.lower()) if service.external else None
        if address is not None:
            found += [(address, host) for host in service.hosts if is_valid_hostname(host)]
    return found


def addresses_by_ip(settings: Settings) -> dict[str, list[str]]:
    """The host names to point at each known IP, one entry per IP in the order of the first
    service at it (as the rules group them)."""
    grouped: dict[str, list[str]] = {}
    for address, host in reachable_hosts(settings):
        grouped.setdefault(address, []).append(host)
    return grouped


def has_host_aliases(settings: Settings) -> bool:
    """Whether the policy for ``settings`` adds entries at all."""
    return bool(addresses_by_ip(settings))


def host_alias_variables(settings: Settings) -> Variables:
    """``hostAliasEntries`` (the entries to add to this pod) and ``aliasedNames`` (the hosts
    they name, for the status); none when no IP is known."""
    grouped = addresses_by_ip(settings)
    if not grouped:
        return []
    entries = list_of(*(map_of({"ip": string(address),
                                "hostnames": _wanted_names(hosts)})
                        for address, hosts in grouped.items()))
    on_node_network = OBJECT.field("spec").optional_field("hostNetwork").or_value(False)
    # In the order of the services, as the rules list them (not grouped by IP).
    all_hosts = [host for _, host in reachable_hosts(settings)]
    return [
        ("aliasNamespace", OBJECT.field("metadata").optional_field("namespace").or_value("")),
        ("hostAliasEntries", cond(on_node_network, EMPTY_LIST, entries.filter(
            "entry", lambda entry: entry.field("hostnames").size().gt(0)))),
        ("aliasedNames", list_of(*(string(host) for host in all_hosts)).filter(
            "host", lambda host: variable("hostAliasEntries").exists(
                "entry", lambda entry: entry.field("hostnames").exists(
                    "name", lambda name: any_of(name.eq(host),
                                                name.starts_with(add(host, "."))))))),
    ]


def host_alias_patches() -> Expr:
    """The JSON Patch operations: each entry appended to the pod's list, or the list added."""
    entries = variable("hostAliasEntries")
    listed = function("has", OBJECT.field("spec").field("hostAliases"))
    return cond(listed,
                entries.map("entry", lambda entry: json_patch("add", HOST_ALIASES_PATH + "/-",
                                                              entry)),
                cond(entries.size().gt(0),
                     list_of(json_patch("add", HOST_ALIASES_PATH, entries)), EMPTY_LIST))


def _wanted_names(hosts: list[str]) -> Expr:
    """The forms of ``hosts`` for the pod's namespace that it does not map itself and the
    apiserver accepts."""
    namespace = variable("aliasNamespace")
    forms = add(*(cond(namespace.eq(""), list_of(string(host)), list_of(
        string(host), *(add(host, ".", namespace, *([suffix] if suffix else []))
                        for suffix in SERVICE_SUFFIXES)))
        for host in hosts))
    claimed = OBJECT.field("spec").optional_field("hostAliases").or_value(EMPTY_LIST)
    return forms.filter("name", lambda name: all_of(
        name.size().le(DNS_SUBDOMAIN_MAX_CHARS),
        name.matches(DNS_SUBDOMAIN),
        not_(claimed.exists("alias", lambda alias: name.is_in(
            alias.optional_field("hostnames").or_value(EMPTY_LIST)))),
    ))


__all__ = ["addresses_by_ip", "has_host_aliases", "host_alias_patches", "host_alias_variables",
           "reachable_hosts"]
