"""The policy twin's address reader, as CEL: webhook.rules.urls for env values and probe text.

An address is read from the start of a text (an env value's item, a URL token of a probe's
text) with the regexes of ``webhook.policy.regex``, which grammar.py builds for both twins:
the whole address, then its prefix (scheme and user info) and its host apart. Its host is a
host when its scheme connects (``grammar.CONNECTING_SCHEMES``, a `dialect+driver` by its
dialect, never `+srv`) or, without a scheme, when a port is given (``urls.Address.names_host``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from webhook.policy.cel import Expr, Operand, add, all_of, any_of, cond, let, not_, strings
from webhook.policy.regex import (
    ADDRESS_END_RE,
    ADDRESS_HOST_RE,
    ADDRESS_PREFIX_RE,
    ADDRESS_RE,
    WHOLE_URL_RE,
    whole_host_re,
)
from webhook.rules.grammar import (
    CONNECTING_SCHEMES,
    JDBC_PREFIX,
    SCHEME_DRIVER_SEPARATOR,
    SRV_SCHEME_SUFFIX,
    URL_SCHEME_END,
)
from webhook.settings import Service

# What to build when the text starts with an address naming a host: from the address as
# matched, its prefix and its host.
OnHost = Callable[[Expr, Expr, Expr], Expr]


def connects(prefix: Expr) -> Expr:
    """urls.connects for the scheme of an address's prefix (`jdbc:` set aside)."""

    def of_scheme(scheme: Expr) -> Expr:
        name = cond(scheme.starts_with(JDBC_PREFIX), scheme.substring(len(JDBC_PREFIX)),
                    scheme).lower_ascii()
        return let(name, "scheme_name", lambda name: all_of(
            name.split(SCHEME_DRIVER_SEPARATOR)[0].is_in(strings(CONNECTING_SCHEMES)),
            not_(name.ends_with(SRV_SCHEME_SUFFIX))))

    return let(prefix.split(URL_SCHEME_END)[0], "scheme", of_scheme)


def with_address(text: Expr, on_host: OnHost, otherwise: Operand) -> Expr:
    """``on_host(address, prefix, host)`` when ``text`` starts with an address whose host is
    a host (urls.read_address and Address.names_host), else ``otherwise``."""

    def of_address(address: Expr) -> Expr:
        def of_prefix(prefix: Expr) -> Expr:
            def of_host(host: Expr) -> Expr:
                has_port = add(prefix.size(), host.size()).lt(address.size())
                names_host = cond(prefix.contains(URL_SCHEME_END), connects(prefix), has_port)
                return cond(names_host, on_host(address, prefix, host), otherwise)

            return let(address.substring(prefix.size()).find(ADDRESS_HOST_RE), "address_host",
                       of_host)

        # RE2's leftmost-first match is the one Python's re.match takes; it is an address
        # where the text ends or a path starts right after it.
        is_address = all_of(address.ne(""), any_of(
            text.size().eq(address.size()),
            text.substring(address.size()).matches(ADDRESS_END_RE)))
        return cond(is_address, let(address.find(ADDRESS_PREFIX_RE), "address_prefix",
                                    of_prefix), otherwise)

    return let(text.find(ADDRESS_RE), "address", of_address)


def retargeted_address(text: Expr, services: Sequence[Service]) -> Expr:
    """``text`` with the host and port of its leading address replaced by the external address
    of the managed service the host names; ``text`` itself when there is none (ManagedHosts'
    retarget of one env item, and of one URL in a probe)."""

    def on_host(address: Expr, prefix: Expr, host: Expr) -> Expr:
        choice = text
        for service in reversed(services):
            if service.external is not None:
                choice = cond(host.matches(whole_host_re(service)), add(
                    prefix, str(service.external), text.substring(address.size())), choice)
        return choice

    return with_address(text, on_host, text)


def named_host(text: Expr) -> Expr:
    """The host of ``text``'s leading address when it is a host, else ""."""
    return with_address(text, lambda _address, _prefix, host: host, "")


def is_url(token: Expr) -> Expr:
    """Whether a token of ``regex.retarget_token_re`` is a URL (the tokenizer tries URLs
    first, so no other token is one whole)."""
    return all_of(token.contains(":"), token.matches(WHOLE_URL_RE))


__all__ = ["connects", "is_url", "named_host", "retargeted_address", "with_address"]
