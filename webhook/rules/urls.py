"""Addresses read as addresses: only the authority of a URL that connects to it is a host.

An address is ``scheme://[user@]host[:port][/path][?query][#fragment]``, or ``host:port``
written without a scheme. Its host is a host only when the scheme connects to it
(``grammar.CONNECTING_SCHEMES``: ``http``, ``tcp``, ``postgresql+psycopg2``, ``jdbc:mysql``...),
or when there is no scheme and a port says it is one. The user name, the path, the query and
the fragment are never hosts, whatever they spell (``http://mlflow@minio:9000/mlflow``), and
neither is anything in a URL whose scheme names a bucket or a path (``s3://mlflow/artifacts``,
``gs://``, ``file://``) or that this reader does not know.

Where addresses are looked for:

- an env value is an address, or a comma-separated list of them (``kafka-0:9092,mlflow:5000``),
  each read from its start (``read_address``);
- in a probe's text, a URL starts wherever a scheme does (``--url=http://...``), and a
  ``host:port`` followed by a path is one too (``curl minio:9000/minio/health/live``); both
  run to the next white space, quote or comma (``URL_IN_TEXT``). A bare ``host:port`` or host
  elsewhere in the text is left to the host patterns of ``hosts.py``.

The patterns are grammar.py's, which the policy twin compiles for RE2 as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webhook.rules.grammar import (
    ADDRESS_SEPARATOR,
    CONNECTING_SCHEMES,
    LABEL_CHARS,
    PATH_STARTS,
    SCHEME_DRIVER_SEPARATOR,
    SRV_SCHEME_SUFFIX,
    address_pattern,
    url_in_text,
)

# Python's `\s` is the white space of str.isspace(), which the policy twin spells out for RE2.
_SPACE = "\\s"
# A URL never starts inside a word (after a letter, digit, `_`, `-` or `.`): `_http://` is not
# `http://`, and the host patterns' own boundary is the same.
URL_IN_TEXT = f"(?<![{LABEL_CHARS}.])(?:{url_in_text(_SPACE)})"

_ADDRESS = re.compile(address_pattern(_SPACE))


@dataclass(frozen=True, slots=True)
class Address:
    """One address: its scheme, and where its host and port lie in the text it was read from.

    ``start``/``end`` span the host and port (``mlflow:5000`` of
    ``http://u@mlflow:5000/x``), the part a retarget replaces.
    """

    scheme: str | None  # as written, without a JDBC prefix; None for `host:port`
    host: str
    port: str | None  # as written: digits or a variable; None when absent
    start: int
    end: int

    @property
    def names_host(self) -> bool:
        """Whether the host is one a client connects to: the scheme connects, or there is
        none and a port is given."""
        if self.scheme is None:
            return self.port is not None
        return connects(self.scheme)


def connects(scheme: str) -> bool:
    """Whether a URL of ``scheme`` connects to its authority (see grammar.CONNECTING_SCHEMES)."""
    name = scheme.lower()
    dialect = name.split(SCHEME_DRIVER_SEPARATOR, 1)[0]
    return dialect in CONNECTING_SCHEMES and not name.endswith(SRV_SCHEME_SUFFIX)


def read_address(text: str, start: int = 0, end: int | None = None) -> Address | None:
    """The address at ``start`` of ``text`` (up to ``end``), or None when what stands there
    is not one: its host and port must end where the text ends or a path starts."""
    stop = len(text) if end is None else end
    matched = _ADDRESS.match(text, start, stop)
    if matched is None or (matched.end() < stop and text[matched.end()] not in PATH_STARTS):
        return None
    return Address(
        scheme=matched.group("scheme"),
        host=matched.group("host"),
        port=matched.group("port"),
        start=matched.start("host"),
        end=matched.end(),
    )


def value_addresses(value: str) -> list[Address]:
    """The addresses of an env value: each comma-separated item read from its start, only
    those whose host is a host (``Address.names_host``); offsets are the value's."""
    found = []
    start = 0
    for item in value.split(ADDRESS_SEPARATOR):
        address = read_address(value, start, start + len(item))
        if address is not None and address.names_host:
            found.append(address)
        start += len(item) + len(ADDRESS_SEPARATOR)
    return found


__all__ = [
    "URL_IN_TEXT",
    "Address",
    "connects",
    "read_address",
    "value_addresses",
]
