"""The managed services' host names: found in words and text, and pointed at external addresses.

A managed host is found in all its in-cluster forms (``mlflow``, ``mlflow.NS``,
``mlflow.NS.svc``, ``mlflow.NS.svc.cluster.local``, NS possibly computed) and never as part of
a longer name (``mlflow-db``, ``mlflow.example.com``). Retargeting replaces such a host with
the service's external address, and its port with the external port, wherever the port is
written: attached (``mlflow:5000``), as the next word (``nc -z mlflow 5000``), as an option
(``-p 5000``), last (``wait-for-port``), or implied by a URL without one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from webhook.rules.grammar import (
    CONTINUES_AFTER_DOT,
    LABEL_CHARS,
    PORT_LAST_TOOLS,
    PORT_NUMBER,
    PORT_OPTIONS,
    PORT_SEPARATORS,
    URL_SCHEME_END,
    VARIABLE_PORT,
    host_form,
    host_names,
)
from webhook.rules.segments import unquote
from webhook.settings import Endpoint, Service

_SPACE = re.compile(r"\s")
_NEXT_WORD_PORT = re.compile(rf"(\s+)({PORT_NUMBER})(?![\w.:/-])")
_PORT_OPTION = re.compile(
    rf"(?<!\S)(?P<option>{'|'.join(map(re.escape, PORT_OPTIONS))})(?P<gap>=|\s+)"
    rf"(?P<port>{PORT_NUMBER})(?![0-9])"
)
_LAST_WORD_PORT = re.compile(rf"(?<!\S)(?P<port>{PORT_NUMBER})(?P<tail>\s*)$")
# One address in an env value: `scheme://[user@]host[:port][/path]` or `host:port`.
_ADDRESS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?:[^@/?#]*@)?(?P<host>[A-Za-z0-9][-A-Za-z0-9.]*)"
    rf"(?::(?P<port>{PORT_NUMBER}))?(?=[/?#]|$)"
)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """Recognises one managed service's in-cluster host names inside a word.

    A host ``mlflow`` is matched as ``mlflow``, ``mlflow.NS``, ``mlflow.NS.svc`` and
    ``mlflow.NS.svc.cluster.local`` (NS possibly computed, see ``grammar.host_form``),
    followed by an optional ``:PORT`` or ``/PORT``.
    """

    service: Service
    regex: re.Pattern[str]
    whole_host: re.Pattern[str]  # a whole host name of the service, nothing around it

    @classmethod
    def for_service(cls, service: Service) -> HostPattern:
        regex = re.compile(
            rf"(?<![{LABEL_CHARS}.])"
            rf"(?P<host>{host_form(service.hosts)})"
            rf"(?![{LABEL_CHARS}]|\.[{CONTINUES_AFTER_DOT}])"
            rf"(?:(?P<sep>[{PORT_SEPARATORS}])(?P<port>{PORT_NUMBER}(?![0-9])|{VARIABLE_PORT}))?"
        )
        return cls(service=service, regex=regex, whole_host=re.compile(host_form(service.hosts)))


class ManagedHosts:
    """The host names of one set of managed services, and their external addresses."""

    def __init__(self, services: Sequence[Service]) -> None:
        self._patterns = tuple(HostPattern.for_service(service) for service in services)
        # Any managed host name as plain text: a cheap first test that most values fail.
        self._mentions = re.compile(host_names(h for s in services for h in s.hosts))
        external_hosts = sorted({s.external.host for s in services if s.external is not None},
                                key=len, reverse=True)
        # Found the way managed hosts are, so a retargeted probe is always recognised as one
        # (a second pass must change nothing), whatever quotes or ports surround the host.
        self._external_host = re.compile(
            rf"(?<![{LABEL_CHARS}.])(?:{'|'.join(map(re.escape, external_hosts))})"
            rf"(?![{LABEL_CHARS}]|\.[A-Za-z0-9])",
            re.IGNORECASE,
        ) if external_hosts else None

    def services_in(self, word: str) -> list[Service]:
        """Every managed service a probe's argument ``word`` names, in the order of the
        services (a word may name several: `http://mlflow:5000/ready?db=postgres`)."""
        unquoted = unquote(word)
        return [pattern.service for pattern in self._patterns if pattern.regex.search(unquoted)]

    def names_external_host(self, word: str) -> bool:
        """Whether ``word`` names an external address, quoted or not: a probe of it is one
        that a pass before retargeted."""
        return self._external_host is not None and bool(self._external_host.search(word))

    def names_managed_host(self, text: str) -> bool:
        """Whether ``text`` names any managed host, in any of its forms."""
        return bool(self._mentions.search(text)) and any(
            pattern.regex.search(text) for pattern in self._patterns
        )

    def retarget_text(self, text: str) -> str:
        """``text`` with every host of a service that has an external address pointed at it
        (with its port: attached, as the next word, or written out after `scheme://`)."""
        for pattern in self._patterns:
            external = pattern.service.external
            if external is not None:
                text = _retarget_matches(pattern.regex, text, external, [])
        return text

    def retarget_probe(self, text: str, command_name: str) -> str:
        """One probe command's text retargeted, its separate port (`-p`, last word) too."""
        moved: list[Endpoint] = []
        for pattern in self._patterns:
            external = pattern.service.external
            if external is not None:
                text = _retarget_matches(pattern.regex, text, external, moved)
        if len(set(moved)) == 1:
            # A host without an attached port: the port may be an option or the last word.
            text = _retarget_separate_port(text, moved[0], command_name)
        return text

    def retarget_value(self, value: str) -> tuple[str | None, list[str]]:
        """An env value that is a URL or ``host:port`` of a managed host, retargeted.

        The value may be a comma-separated list of addresses; only the host (and port) part
        of each is looked at, never a user name, path or query that happens to spell a
        host. Returns the new value (None when nothing changes) and the services named that
        have no external address, whose addresses stay as they are.
        """
        if ":" not in value or not self._mentions.search(value) or _SPACE.search(value):
            return None, []
        unreachable: list[str] = []
        rewritten = ",".join([self._retarget_address(item, unreachable)
                              for item in value.split(",")])
        return (rewritten if rewritten != value else None), unreachable

    def _retarget_address(self, item: str, unreachable: list[str]) -> str:
        """One address of an env value retargeted; a managed service without an external
        address is added to ``unreachable`` and its address kept."""
        address = _ADDRESS.match(item)
        if address is None or not (address.group("scheme") or address.group("port")):
            return item
        service = self._service_named(address.group("host"))
        if service is None:
            return item
        if service.external is None:
            unreachable.append(service.name)
            return item
        end = address.end("port") if address.group("port") else address.end("host")
        return item[: address.start("host")] + str(service.external) + item[end:]

    def _service_named(self, host: str) -> Service | None:
        """The managed service whose host name ``host`` is, whole."""
        return next((p.service for p in self._patterns if p.whole_host.fullmatch(host)), None)


def _retarget_matches(
    regex: re.Pattern[str], text: str, external: Endpoint, moved: list[Endpoint]
) -> str:
    """Replace each host match (and its port, attached or as the next word) in ``text``.

    ``moved`` collects the endpoint of each host replaced without a port of its own.
    """
    pieces: list[str] = []
    position = 0
    for match in regex.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        if match.group("port") is not None:
            pieces.append(f"{external.host}{match.group('sep')}{external.port}")
            continue
        following = _NEXT_WORD_PORT.match(text, position)
        scheme_start = max(0, match.start() - len(URL_SCHEME_END))
        url_without_port = text[scheme_start : match.start()] == URL_SCHEME_END
        if following is not None and not url_without_port:
            # `nc -z mlflow 5000`: the port is the next word.
            pieces.append(f"{external.host}{following.group(1)}{external.port}")
            position = following.end()
        elif url_without_port:
            # `http://mlflow/health` meant the service port; the external one must be explicit.
            pieces.append(str(external))
        else:
            pieces.append(external.host)
            moved.append(external)
    pieces.append(text[position:])
    return "".join(pieces)


def _retarget_separate_port(text: str, external: Endpoint, command_name: str) -> str:
    """The port given apart from the host: an option (`-p 5000`), or the last word for the
    tools that take it there (`wait-for-port --host=mlflow 5000`)."""
    text = _PORT_OPTION.sub(lambda m: f"{m.group('option')}{m.group('gap')}{external.port}", text)
    if command_name in PORT_LAST_TOOLS:
        text = _LAST_WORD_PORT.sub(lambda m: f"{external.port}{m.group('tail')}", text)
    return text


__all__ = ["HostPattern", "ManagedHosts"]
