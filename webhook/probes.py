"""Reading and retargeting the commands of init containers.

An init container *waits* when its program does nothing but probe hosts (``nc -z``, ``wget``,
``curl``, ``nslookup``, ``pg_isready``, ``/dev/tcp/...``), loop, sleep and print. This module
finds which managed services such a program probes, whether it also probes other hosts
(kafka) or does real work (a migration), and rewrites the probes of managed hosts so that they
point at the external address instead.

Programs come in two forms. A shell form, ``sh -c SCRIPT`` (the flag and the script may be in
``command`` or ``args``), is read as shell text, split into simple commands at ``;``, ``&&``,
``||``, ``|``, ``&``, newlines and subshell brackets. Any other form is one command in exec
form, its words being the elements of command + args. Reading is deliberately shallow: this is
not a shell parser, it recognises the shapes that readiness loops take in charts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from webhook.config import Endpoint, Service
from webhook.grammar import (
    ASSIGNMENT,
    DEV_TCP_HOST,
    DEV_TCP_MARKERS,
    IDLE_COMMANDS,
    LABEL_CHARS,
    LOOP_HEADERS,
    PORT_NUMBER,
    PORT_SEPARATORS,
    PROBE_COMMANDS,
    QUOTES,
    REDIRECTION,
    REDIRECTION_AMPERSAND_AFTER,
    REDIRECTION_AMPERSAND_BEFORE,
    SEPARATOR_TOKENS,
    SHELL_KEYWORDS,
    SHELLS,
    TRAILING_PUNCTUATION,
    URL_HOST,
    URL_SCHEME_END,
    VARIABLE_PORT,
    WRAPPER_NUMBER,
    WRAPPERS,
    host_form,
)


def _separator_regex() -> re.Pattern[str]:
    longer = [token for token in SEPARATOR_TOKENS if len(token) > 1]
    single = "".join(re.escape(t) for t in SEPARATOR_TOKENS if len(t) == 1 and t != "&")
    lone_ampersand = (
        f"(?<![{REDIRECTION_AMPERSAND_AFTER}])&(?![{REDIRECTION_AMPERSAND_BEFORE}])"
    )
    return re.compile("|".join([*map(re.escape, longer), f"[{single}]", lone_ampersand]))


_SEPARATORS = _separator_regex()
_WORD = re.compile(r"\S+")
_ASSIGNMENT = re.compile(ASSIGNMENT)
_REDIRECTION = re.compile(REDIRECTION)
_WRAPPER_NUMBER = re.compile(WRAPPER_NUMBER)
_DEV_TCP_HOST = re.compile(DEV_TCP_HOST)
_URL_HOST = re.compile(URL_HOST)
_NEXT_WORD_PORT = re.compile(rf"(\s+)({PORT_NUMBER})(?![\w.:/-])")
_EXEC_JOINER = "\x1f"
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class HostPattern:
    """Recognises one managed service's in-cluster host names inside a word.

    A host ``mlflow`` is matched as ``mlflow``, ``mlflow.NS``, ``mlflow.NS.svc`` and
    ``mlflow.NS.svc.cluster.local``, followed by an optional ``:PORT`` or ``/PORT``.
    """

    service: Service
    regex: re.Pattern[str]

    @classmethod
    def for_service(cls, service: Service) -> HostPattern:
        regex = re.compile(
            rf"(?<![{LABEL_CHARS}.])"
            rf"(?P<host>{host_form(service.hosts)})"
            rf"(?![{LABEL_CHARS}]|\.[A-Za-z0-9])"
            rf"(?:(?P<sep>[{PORT_SEPARATORS}])(?P<port>{PORT_NUMBER}(?![0-9])|{VARIABLE_PORT}))?"
        )
        return cls(service=service, regex=regex)


@dataclass(slots=True)
class ProgramReading:
    """What a container's program does, as far as waiting goes."""

    managed: list[str] = field(default_factory=list)  # services probed, in order of appearance
    probes_external: bool = False  # probes a configured external address (already retargeted)
    probes_other_hosts: bool = False  # probes something unmanaged, such as kafka
    does_work: bool = False  # runs anything that is not a probe or loop glue

    @property
    def only_waits_for_managed(self) -> bool:
        return bool(self.managed) and not self.probes_other_hosts and not self.does_work


_Cached = TypeVar("_Cached")


@dataclass(frozen=True, slots=True)
class _Segment:
    """One simple command: where it lies, and its words."""

    argv_index: int  # which element of command + args it lies in
    start: int
    end: int
    words: tuple[str, ...]


class ProgramReader:
    """Reads and retargets programs for one set of managed services."""

    def __init__(self, services: Sequence[Service]) -> None:
        self._patterns = tuple(HostPattern.for_service(service) for service in services)
        external_hosts = sorted({s.external.host for s in services if s.external is not None},
                                key=len, reverse=True)
        # Found the way managed hosts are, so a retargeted probe is always recognised as one
        # (a second pass must change nothing), whatever quotes or ports surround the host.
        self._external_host = re.compile(
            rf"(?<![{LABEL_CHARS}.])(?:{'|'.join(map(re.escape, external_hosts))})"
            rf"(?![{LABEL_CHARS}]|\.[A-Za-z0-9])",
            re.IGNORECASE,
        ) if external_hosts else None
        # The pods of one workload carry the same init containers over and over, so readings
        # are remembered by program; reading is most of the cost of a review otherwise.
        self._readings: dict[tuple[str, ...], ProgramReading] = {}
        self._retargeted: dict[tuple[str, ...], list[str] | None] = {}

    def read(self, argv: Sequence[str]) -> ProgramReading:
        """What ``argv`` does. The result is shared between calls: do not change it."""
        key = tuple(argv)
        reading = self._readings.get(key)
        if reading is None:
            reading = ProgramReading()
            for segment in _segments(argv):
                self._read_segment(segment.words, reading)
            _remember(self._readings, key, reading)
        return reading

    def retarget(self, argv: Sequence[str]) -> list[str] | None:
        """``argv`` with every probe of a managed host pointed at its external address.

        Only probe commands are touched, so work in the same script keeps its text. Returns
        None when nothing changes. Hosts of services without an external address are left.
        """
        key = tuple(argv)
        if key not in self._retargeted:
            _remember(self._retargeted, key, self._retarget_uncached(argv))
        retargeted = self._retargeted[key]
        return list(retargeted) if retargeted is not None else None

    def _retarget_uncached(self, argv: Sequence[str]) -> list[str] | None:
        if _shell_script_index(argv) is None:
            rewritten = self._retarget_exec_form(argv)
        else:
            rewritten = self._retarget_shell_form(argv)
        return rewritten if rewritten != list(argv) else None

    def _retarget_exec_form(self, argv: Sequence[str]) -> list[str]:
        if not _is_probe(tuple(argv)) or any(_EXEC_JOINER in word for word in argv):
            return list(argv)
        # Joined so that `nc -z mlflow 5000` finds its port in the next element; the joiner
        # counts as white space for the port rule and cannot occur in a real argument.
        return self._retarget_text(_EXEC_JOINER.join(argv)).split(_EXEC_JOINER)

    def _retarget_shell_form(self, argv: Sequence[str]) -> list[str]:
        rewritten = list(argv)
        # Edit from the end so that earlier spans stay valid.
        for segment in reversed(list(_segments(argv))):
            if not _is_probe(segment.words):
                continue
            text = rewritten[segment.argv_index]
            original = text[segment.start : segment.end]
            retargeted = self._retarget_text(original)
            rewritten[segment.argv_index] = text[: segment.start] + retargeted + text[segment.end :]
        return rewritten

    def _read_segment(self, words: tuple[str, ...], reading: ProgramReading) -> None:
        command, arguments = _command_of(words)
        if _is_probe(words):
            probed_anything = False
            for word in arguments if command in PROBE_COMMANDS else words:
                # Every service a word names counts, not just the first: after a retarget the
                # others would be found on a second pass and change the verdict then.
                services = self._managed_services_in(word)
                for service in services:
                    if service.name not in reading.managed:
                        reading.managed.append(service.name)
                if services:
                    probed_anything = True
                elif self._names_external_host(word):
                    probed_anything = True
                    reading.probes_external = True
            if not probed_anything and _names_some_host(arguments or list(words)):
                reading.probes_other_hosts = True
        elif command and command not in IDLE_COMMANDS:
            reading.does_work = True

    def _managed_services_in(self, word: str) -> list[Service]:
        unquoted = _unquote(word)
        return [pattern.service for pattern in self._patterns if pattern.regex.search(unquoted)]

    def _names_external_host(self, word: str) -> bool:
        return self._external_host is not None and bool(self._external_host.search(word))

    def _retarget_text(self, text: str) -> str:
        for pattern in self._patterns:
            external = pattern.service.external
            if external is not None:
                text = _retarget_matches(pattern.regex, text, external)
        return text


def _remember(cache: dict[tuple[str, ...], _Cached], key: tuple[str, ...], value: _Cached) -> None:
    # Bounded so that a stream of unique programs cannot grow the process without limit.
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value


def _retarget_matches(regex: re.Pattern[str], text: str, external: Endpoint) -> str:
    """Replace each host match (and its port, attached or as the next word) in ``text``."""
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
    pieces.append(text[position:])
    return "".join(pieces)


def _segments(argv: Sequence[str]) -> Iterator[_Segment]:
    script_index = _shell_script_index(argv)
    if script_index is None:
        # Exec form: one command, whose words are the elements themselves.
        if argv:
            yield _Segment(argv_index=0, start=0, end=0, words=tuple(argv))
        return
    script = argv[script_index]
    start = 0
    for separator in _SEPARATORS.finditer(script):
        yield _shell_segment(script_index, script, start, separator.start())
        start = separator.end()
    yield _shell_segment(script_index, script, start, len(script))


def _shell_segment(argv_index: int, script: str, start: int, end: int) -> _Segment:
    words = tuple(word.group() for word in _WORD.finditer(script, start, end))
    return _Segment(argv_index=argv_index, start=start, end=end, words=words)


def _shell_script_index(argv: Sequence[str]) -> int | None:
    """Index of the script in ``sh -c SCRIPT`` forms, or None for an exec form."""
    if not argv or _basename(argv[0]) not in SHELLS:
        return None
    for index in range(1, len(argv) - 1):
        flag = argv[index]
        if not flag.startswith("-"):
            return None
        if "c" in flag[1:] and not flag.startswith("--"):
            return index + 1
    return None


def _command_of(words: Sequence[str]) -> tuple[str, list[str]]:
    """The command name of a simple command and its arguments, past keywords and wrappers.

    A nested shell (`timeout 60 sh -c '...'`) is looked through as well: the words after it
    are the start of its script.
    """
    index = 0
    while index < len(words):
        word = _unquote(words[index])
        name = _basename(word)
        if word in LOOP_HEADERS:
            # `for i in 1 2 3` and `case $x in` only name the loop; the body is elsewhere.
            return "", []
        if word in SHELL_KEYWORDS or _ASSIGNMENT.match(word) or _is_redirection(word):
            index += 1
        elif name in WRAPPERS or name in SHELLS:
            index += 1
            # Skip the wrapper's own options and numbers (`timeout -s KILL 5`, `sh -ec`).
            while index < len(words) and (
                words[index].startswith("-") or _WRAPPER_NUMBER.match(words[index])
            ):
                index += 1
        else:
            return name, [_unquote(w) for w in words[index + 1 :]]
    return "", []


def _is_probe(words: Sequence[str]) -> bool:
    return _command_of(words)[0] in PROBE_COMMANDS or _uses_dev_tcp(words)


def _uses_dev_tcp(words: Sequence[str]) -> bool:
    return any(marker in word for word in words for marker in DEV_TCP_MARKERS)


def _names_some_host(arguments: Sequence[str]) -> bool:
    return any(
        _host_of(word) is not None for word in arguments if not word.startswith("-")
    )


def _host_of(word: str) -> str | None:
    """The host a probe argument names: `h`, `h:p`, `scheme://[user@]h[:p]/...`, `/dev/tcp/h/p`."""
    word = word.rstrip(TRAILING_PUNCTUATION)  # shell punctuation glued on is not the host
    match = _DEV_TCP_HOST.search(word) or _URL_HOST.match(word)
    if match is None:
        return None
    return match.group("host").rstrip(".")


def _is_redirection(word: str) -> bool:
    return bool(_REDIRECTION.match(word))


def _unquote(word: str) -> str:
    return word.strip(QUOTES)


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]
