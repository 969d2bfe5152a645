"""The managed services' host names: found in words and text, and pointed at external addresses.

A managed host is found in all its in-cluster forms (``mlflow``, ``mlflow.NS``,
``mlflow.NS.svc``, ``mlflow.NS.svc.cluster.local``, NS possibly computed) and never as part of
a longer name (``mlflow-db``, ``mlflow.example.com``).

Addresses are read as addresses (``urls.py``): in a URL only the authority can be a host, and
only when its scheme connects to it, so a path, a query, a user name or a bucket that spells a
managed host is neither found nor retargeted (``http://minio:9000/minio/health/live``,
``s3://mlflow/artifacts``). Outside URLs, a host is found wherever it stands as a name of its
own (``nc -z mlflow 5000``, ``/dev/tcp/minio/9000``, ``-h postgres``).

Retargeting replaces such a host with the service's external address, and its port with the
external port, wherever the port is written: attached (``mlflow:5000``), as the next word
(``nc -z mlflow 5000``), as an option (``-p 5000``), last (``wait-for-port``); a URL's authority
always gets the external port written out, since a URL without one meant the service's port.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from webhook.rules.grammar import (
    CONTINUES_AFTER_DOT,
    LABEL_CHARS,
    PATH_STARTS,
    PORT_LAST_TOOLS,
    PORT_NUMBER,
    PORT_OPTIONS,
    PORT_SEPARATORS,
    VARIABLE_PORT,
    host_form,
    host_names,
)
from webhook.rules.segments import unquote
from webhook.rules.urls import URL_IN_TEXT, Address, read_address, value_addresses
from webhook.settings import Endpoint, Service

_SPACE = re.compile(r"\s")
_URL_IN_TEXT = re.compile(URL_IN_TEXT)
_NEXT_WORD_PORT = re.compile(rf"(\s+)({PORT_NUMBER})(?![\w.:/-])")
_PORT_OPTION = re.compile(
    rf"(?<!\S)(?P<option>{'|'.join(map(re.escape, PORT_OPTIONS))})(?P<gap>=|\s+)"
    rf"(?P<port>{PORT_NUMBER})(?![0-9])"
)
_LAST_WORD_PORT = re.compile(rf"(?<!\S)(?P<port>{PORT_NUMBER})(?P<tail>\s*)$")


def _host_regex(hosts: Iterable[str]) -> str:
    """Any of ``hosts`` in any form, as a name of its own, with an attached port if any."""
    return (
        rf"(?<![{LABEL_CHARS}.])"
        rf"(?P<host>{host_form(hosts)})"
        rf"(?![{LABEL_CHARS}]|\.[{CONTINUES_AFTER_DOT}])"
        rf"(?:(?P<sep>[{PORT_SEPARATORS}])(?P<port>{PORT_NUMBER}(?![0-9])|{VARIABLE_PORT}))?"
    )


def _scanner(services: Sequence[Service]) -> re.Pattern[str]:
    """URLs and the hosts of ``services``, left to right; where both could start, the URL
    is taken, so a host inside it is read as the URL reads it."""
    hosts = [host for service in services for host in service.hosts]
    return re.compile(f"(?P<url>{URL_IN_TEXT})|{_host_regex(hosts)}")


@dataclass(frozen=True, slots=True)
class HostPattern:
    """Recognises one managed service's in-cluster host names inside a word.

    A host ``mlflow`` is matched as ``mlflow``, ``mlflow.NS``, ``mlflow.NS.svc`` and
    ``mlflow.NS.svc.cluster.local`` (NS possibly computed, see ``grammar.host_form``),
    followed by an optional ``:PORT`` or ``/PORT``. It does not know URLs: it finds a host
    anywhere it is spelt, which is what ``names_managed_host`` asks.
    """

    service: Service
    regex: re.Pattern[str]
    whole_host: re.Pattern[str]  # a whole host name of the service, nothing around it

    @classmethod
    def for_service(cls, service: Service) -> HostPattern:
        return cls(service=service, regex=re.compile(_host_regex(service.hosts)),
                   whole_host=re.compile(host_form(service.hosts)))


class ManagedHosts:
    """The host names of one set of managed services, and their external addresses."""

    def __init__(self, services: Sequence[Service]) -> None:
        self._services = tuple(services)
        self._patterns = tuple(HostPattern.for_service(service) for service in services)
        # Any managed host name as plain text: a cheap first test that most values fail.
        self._mentions = re.compile(host_names(h for s in services for h in s.hosts))
        self._reading = _scanner(services)
        retargetable = [s for s in services if s.external is not None]
        self._retargeting = _scanner(retargetable) if retargetable else None
        self._retargetable_mentions = re.compile(
            host_names(h for s in retargetable for h in s.hosts)
        ) if retargetable else None
        external_hosts = sorted({s.external.host for s in retargetable if s.external is not None},
                                key=len, reverse=True)
        # Found the way managed hosts are, so a retargeted probe is always recognised as one
        # (a second pass must change nothing), whatever quotes or ports surround the host.
        self._external_host = re.compile(
            rf"(?<![{LABEL_CHARS}.])(?:{'|'.join(map(re.escape, external_hosts))})"
            rf"(?![{LABEL_CHARS}]|\.[A-Za-z0-9])",
            re.IGNORECASE,
        ) if external_hosts else None

    def services_in(self, word: str) -> list[Service]:
        """Every managed service a probe's argument ``word`` names as a host, in the order
        of the services (a word may name several: `mlflow:5000,minio:9000`). A URL names
        the service of its authority only (`http://minio:9000/minio/health/live` names
        minio once; `s3://mlflow/x` names none); outside URLs each service's host is looked
        for on its own."""
        unquoted = unquote(word)
        if not self._mentions.search(unquoted):
            return []
        named: set[str] = set()
        outside: list[str] = []
        position = 0
        # A URL needs a `:` and the start of a path; most words have neither.
        may_hold_url = ":" in unquoted and any(start in unquoted for start in PATH_STARTS)
        for match in self._reading.finditer(unquoted) if may_hold_url else ():
            if match.group("url") is None:
                continue
            # A URL stands apart from its neighbours: nothing is looked for inside it.
            outside += (unquoted[position : match.start()], " ")
            position = match.end()
            address = read_address(unquoted, match.start(), match.end())
            service = self._service_named(address.host) if (
                address is not None and address.names_host) else None
            if service is not None:
                named.add(service.name)
        outside.append(unquoted[position:])
        text = "".join(outside)
        named.update(p.service.name for p in self._patterns if p.regex.search(text))
        return [service for service in self._services if service.name in named]

    def names_external_host(self, word: str) -> bool:
        """Whether ``word`` names an external address, quoted or not: a probe of it is one
        that a pass before retargeted."""
        return self._external_host is not None and bool(self._external_host.search(word))

    def names_managed_host(self, text: str) -> bool:
        """Whether ``text`` spells any managed host, in any of its forms, anywhere: the test
        of whether a container has to do with the backend at all."""
        return bool(self._mentions.search(text)) and any(
            pattern.regex.search(text) for pattern in self._patterns
        )

    def retarget_text(self, text: str) -> str:
        """``text`` with every host of a service that has an external address pointed at it
        (with its port: attached, as the next word, or in a URL's authority)."""
        return self._retarget(text, [])

    def retarget_probe(self, text: str, command_name: str) -> str:
        """One probe command's text retargeted, its separate port (`-p`, last word) too."""
        moved: list[Endpoint] = []
        text = self._retarget(text, moved)
        if len(set(moved)) == 1:
            # A host without an attached port: the port may be an option or the last word.
            text = _retarget_separate_port(text, moved[0], command_name)
        return text

    def retarget_value(self, value: str) -> tuple[str | None, list[str]]:
        """An env value that is a URL or ``host:port`` of a managed host, retargeted.

        The value may be a comma-separated list of addresses; only the host (and port) part
        of each is looked at, never a user name, path, query or bucket that happens to spell
        a host (see ``urls.value_addresses``). Returns the new value (None when nothing
        changes) and the services named that have no external address, whose addresses stay
        as they are.
        """
        if ":" not in value or not self._mentions.search(value) or _SPACE.search(value):
            return None, []
        rewritten, unreachable = self._retarget_addresses(value, value_addresses(value))
        return (rewritten if rewritten != value else None), unreachable

    def retarget_urls(self, text: str) -> tuple[str, list[str]]:
        """The URLs in ``text`` (a command that does work: `mc alias set m http://minio:9000`)
        whose authority names a managed host with an external address, pointed at it; bare
        host names are left, for in work they may name anything (a bucket, an alias). Also
        the services named by a URL that have no external address, whose URLs stay."""
        if not self._mentions.search(text):
            return text, []
        addresses = [address for match in _URL_IN_TEXT.finditer(text)
                     if (address := read_address(text, match.start(), match.end())) is not None
                     and address.names_host]
        return self._retarget_addresses(text, addresses)

    def _retarget_addresses(
        self, text: str, addresses: Iterable[Address]
    ) -> tuple[str, list[str]]:
        """``text`` with the authority of each of ``addresses`` (in order) that names a
        managed host with an external address replaced by it; and the services named that
        have none."""
        unreachable: list[str] = []
        pieces: list[str] = []
        position = 0
        for address in addresses:
            service = self._service_named(address.host)
            if service is None:
                continue
            if service.external is None:
                unreachable.append(service.name)
                continue
            pieces += (text[position : address.start], str(service.external))
            position = address.end
        pieces.append(text[position:])
        return "".join(pieces), unreachable

    def _service_named(self, host: str) -> Service | None:
        """The managed service whose host name ``host`` is, whole."""
        return next((p.service for p in self._patterns if p.whole_host.fullmatch(host)), None)

    def _retarget(self, text: str, moved: list[Endpoint]) -> str:
        """Replace each host of a service with an external address (and its port, attached
        or as the next word) and each URL authority naming one; ``moved`` collects the
        endpoint of each host replaced without a port of its own."""
        if self._retargeting is None or self._retargetable_mentions is None or (
                not self._retargetable_mentions.search(text)):
            return text
        pieces: list[str] = []
        position = 0
        while (match := self._retargeting.search(text, position)) is not None:
            pieces.append(text[position : match.start()])
            position = match.end()
            if match.group("url") is not None:
                pieces.append(self._retargeted_url(text, match.start(), match.end()))
                continue
            service = self._service_named(match.group("host"))
            external = service.external if service is not None else None
            if external is None:  # the scanner only knows services that have one
                pieces.append(match.group())
            elif match.group("port") is not None:
                pieces.append(f"{external.host}{match.group('sep')}{external.port}")
            elif (following := _NEXT_WORD_PORT.match(text, position)) is not None:
                # `nc -z mlflow 5000`: the port is the next word.
                pieces.append(f"{external.host}{following.group(1)}{external.port}")
                position = following.end()
            else:
                pieces.append(external.host)
                moved.append(external)
        pieces.append(text[position:])
        return "".join(pieces)

    def _retargeted_url(self, text: str, start: int, end: int) -> str:
        """The URL at ``text[start:end]`` with its authority pointed at the external address
        when it names a managed host that has one; everything else as written."""
        address = read_address(text, start, end)
        if address is None or not address.names_host:
            return text[start:end]
        service = self._service_named(address.host)
        if service is None or service.external is None:
            return text[start:end]
        return f"{text[start : address.start]}{service.external}{text[address.end : end]}"


def _retarget_separate_port(text: str, external: Endpoint, command_name: str) -> str:
    """The port given apart from the host: an option (`-p 5000`), or the last word for the
    tools that take it there (`wait-for-port --host=mlflow 5000`)."""
    text = _PORT_OPTION.sub(lambda m: f"{m.group('option')}{m.group('gap')}{external.port}", text)
    if command_name in PORT_LAST_TOOLS:
        text = _LAST_WORD_PORT.sub(lambda m: f"{external.port}{m.group('tail')}", text)
    return text


__all__ = ["HostPattern", "ManagedHosts"]
