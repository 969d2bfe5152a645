"""Reading and retargeting the commands of init containers, with the grammar of ``grammar.py``.

An init container *waits* when its program does nothing but probe hosts (``nc -z``, ``wget``,
``curl``, ``pg_isready``, a wait tool, a liveness query such as ``psql -c 'SELECT 1'``,
``/dev/tcp/...``), loop, sleep, print and comment. This module finds which managed services
such a program probes, whether it also probes other hosts (kafka) or does real work (a
migration), and rewrites the probes of managed hosts so that they point at the external
address instead.

Programs come in two forms. A shell form, ``sh -c SCRIPT`` (the flag and the script may be in
``command`` or ``args``), is read as shell text, split into simple commands at ``;``, ``&&``,
``||``, ``|``, ``&``, newlines and subshell brackets, comments dropped. Any other form is one
command in exec form, its words being the elements of command + args. A wait tool that runs a
command of its own (``wait-for-it db:5432 -- ./migrate``) is two commands. Reading is
deliberately shallow: this is not a shell parser, it recognises the shapes that readiness
loops take in charts.

Hosts may come through variables: ``$(NAME)`` in command and args is expanded as the kubelet
does, from the container's own literal env; ``$NAME``, ``${NAME}`` and ``${NAME:-default}``
in a script are resolved the same way (and the default). A probe whose host is a variable
that cannot be resolved counts as probing some other host, so it is never taken for a pure
wait.

Bounds: a program longer than ``MAX_PROGRAM_CHARS`` is not read at all (it is kept as it is,
and the rules say so in a warning); readings are remembered in caches bounded by bytes.
Reading and retargeting are linear in the length of the program.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from webhook.rules.grammar import (
    ASSIGNMENT,
    CLIENTS,
    COMMAND_AFTER_DOUBLE_DASH,
    COMMENT,
    COMPUTED_PART,
    CONTINUES_AFTER_DOT,
    DEV_TCP_HOST,
    DEV_TCP_MARKERS,
    DOCKERIZE,
    DOCKERIZE_VALUE_OPTIONS,
    DOCKERIZE_WORK_OPTIONS,
    IDLE_COMMANDS,
    KUBELET_VARIABLE,
    LABEL_CHARS,
    LIVENESS_QUERIES,
    LOOP_HEADERS,
    MYSQLADMIN,
    MYSQLADMIN_COMMANDS,
    MYSQLADMIN_LIVENESS,
    NAMESPACE_FILE_SUBSTITUTION,
    PORT_LAST_TOOLS,
    PORT_NUMBER,
    PORT_OPTIONS,
    PORT_SEPARATORS,
    PROBE_COMMANDS,
    QUERY_CLIENTS,
    QUOTES,
    REDIRECTION,
    REDIRECTION_AMPERSAND_AFTER,
    REDIRECTION_AMPERSAND_BEFORE,
    REDIS_CLI,
    REDIS_LIVENESS,
    SAFE_VALUE,
    SEPARATOR_TOKENS,
    SHELL_KEYWORDS,
    SHELL_VARIABLE,
    SHELLS,
    TRAILING_PUNCTUATION,
    URL_HOST,
    URL_SCHEME_END,
    VARIABLE_PORT,
    WRAPPER_NUMBER,
    WRAPPERS,
    host_form,
    host_names,
)
from webhook.settings import Endpoint, Service

# A program (command + args, all elements together) longer than this is not read as a
# waiter: real readiness loops are a few hundred characters, and the bound keeps the time a
# hostile pod can cost per init container small. Such a container is kept as it is.
MAX_PROGRAM_CHARS = 16 * 1024
# Each cache of readings keeps at most this many bytes of programs; a program above
# CACHE_ENTRY_CHARS is not worth keeping (real ones repeat and are short).
CACHE_BYTES = 4 * 1024 * 1024
CACHE_ENTRY_CHARS = 16 * 1024


def _separator_pattern() -> str:
    longer = [token for token in SEPARATOR_TOKENS if len(token) > 1]
    single = "".join(re.escape(t) for t in SEPARATOR_TOKENS if len(t) == 1 and t != "&")
    lone_ampersand = (
        f"(?<![{REDIRECTION_AMPERSAND_AFTER}])&(?![{REDIRECTION_AMPERSAND_BEFORE}])"
    )
    return "|".join([*map(re.escape, longer), f"[{single}]", lone_ampersand])


# One scan of a script finds, left to right: substitutions inside a host (not split),
# comments (dropped up to the end of the line) and separators.
_SCRIPT_TOKENS = re.compile(
    rf"(?P<opaque>\.(?:{NAMESPACE_FILE_SUBSTITUTION}|{COMPUTED_PART}))"
    rf"|(?P<comment>(?:^|(?<=[\s;&|()`])){re.escape(COMMENT)}[^\n]*)"
    rf"|(?P<separator>{_separator_pattern()})"
)
_SPACE = re.compile(r"\s")
_WORD = re.compile(rf"(?:{NAMESPACE_FILE_SUBSTITUTION}|{COMPUTED_PART}|\S)+")
_ASSIGNMENT = re.compile(ASSIGNMENT)
_REDIRECTION = re.compile(REDIRECTION)
_WRAPPER_NUMBER = re.compile(WRAPPER_NUMBER)
_DEV_TCP_HOST = re.compile(DEV_TCP_HOST)
_URL_HOST = re.compile(URL_HOST)
_NEXT_WORD_PORT = re.compile(rf"(\s+)({PORT_NUMBER})(?![\w.:/-])")
_SHELL_VARIABLE = re.compile(SHELL_VARIABLE)
# A reference as a whole word part, with the double quotes around it when it has them: a
# resolved value written into a probe is one plain word, so the quotes can go with it.
_QUOTED_SHELL_VARIABLE = re.compile(rf'(?P<quote>")?{SHELL_VARIABLE}(?(quote)")')
# `$$(NAME)` is the kubelet's escape for a literal `$(NAME)`.
_KUBELET_VARIABLE = re.compile(rf"(?<!\$){KUBELET_VARIABLE}")
_SAFE_VALUE = re.compile(SAFE_VALUE)
_PORT_OPTION = re.compile(
    rf"(?<!\S)(?P<option>{'|'.join(map(re.escape, PORT_OPTIONS))})(?P<gap>=|\s+)"
    rf"(?P<port>{PORT_NUMBER})(?![0-9])"
)
_LAST_WORD_PORT = re.compile(rf"(?<!\S)(?P<port>{PORT_NUMBER})(?P<tail>\s*)$")
_EXEC_JOINER = "\x1f"
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


@dataclass(slots=True)
class ProgramReading:
    """What a container's program does, as far as waiting goes."""

    managed: list[str] = field(default_factory=list)  # services probed, in order of appearance
    probes_external: bool = False  # probes a configured external address (already retargeted)
    probes_other_hosts: bool = False  # probes something unmanaged, such as kafka
    does_work: bool = False  # runs anything that is not a probe or loop glue
    not_read: bool = False  # not read (over MAX_PROGRAM_CHARS, or the pod's budget): kept

    @property
    def only_waits_for_managed(self) -> bool:
        return bool(self.managed) and not self.probes_other_hosts and not self.does_work


# What a program that is not read counts as: work, so its container is kept as it is.
NOT_READ = ProgramReading(does_work=True, not_read=True)
_Value = TypeVar("_Value")
_Key = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


class _BoundedCache(Generic[_Value]):
    """Remembered results, bounded by the characters of their keys; the oldest go first."""

    def __init__(self, budget: int = CACHE_BYTES, largest: int = CACHE_ENTRY_CHARS) -> None:
        self._entries: dict[_Key, tuple[int, _Value]] = {}
        self._size = 0
        self._budget = budget
        self._largest = largest

    def get(self, key: _Key) -> tuple[bool, _Value | None]:
        found = self._entries.get(key)
        return (False, None) if found is None else (True, found[1])

    def put(self, key: _Key, size: int, value: _Value) -> None:
        if size > self._largest or key in self._entries:
            return
        self._entries[key] = (size, value)
        self._size += size
        while self._size > self._budget:
            oldest = next(iter(self._entries))
            self._size -= self._entries.pop(oldest)[0]

    @property
    def size(self) -> int:
        return self._size


@dataclass(frozen=True, slots=True)
class _Segment:
    """One simple command: where it lies, and its words.

    In a script, ``start``/``end`` are character offsets in ``argv[argv_index]``; in exec
    form (``argv_index`` -1) they are indexes of the elements of argv.
    """

    argv_index: int
    start: int
    end: int
    words: tuple[str, ...]
    command: int | None  # index of the command word in ``words`` (_command_index)


@dataclass(frozen=True, slots=True)
class _Command:
    """A simple command classified: what kind, its command name and its arguments."""

    kind: str  # "probe", "work", "idle" or "" (nothing runs: empty, a loop header)
    name: str
    arguments: list[str]


def program_length(argv: Sequence[str]) -> int:
    """The size by which programs are bounded: characters of all elements together."""
    return sum(map(len, argv))


class ProgramReader:
    """Reads and retargets programs for one set of managed services."""

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
        # The pods of one workload carry the same init containers over and over, so readings
        # are remembered by program; reading is most of the cost of a review otherwise.
        self._readings: _BoundedCache[ProgramReading] = _BoundedCache()
        self._retargeted: _BoundedCache[list[str] | None] = _BoundedCache()
        # The commands of the program read last: a retarget follows the reading of the same
        # program, and need not split it again.
        self._last: tuple[_Key, list[tuple[_Segment, _Command]]] | None = None

    def read(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
        length: int | None = None,
    ) -> ProgramReading:
        """What ``argv`` does, with ``env`` the container's literal variables (``length``:
        its program_length, when the caller has it). The result is shared between calls: do
        not change it."""
        size = program_length(argv) if length is None else length
        if size > MAX_PROGRAM_CHARS:
            return NOT_READ
        key = _cache_key(argv, env)
        found, reading = self._readings.get(key)
        if found and reading is not None:
            return reading
        reading = ProgramReading()
        variables = env or {}
        expanded = _expand_kubelet(argv, variables)
        in_script = _shell_script_index(expanded) is not None
        commands = self._commands(key, expanded)
        for segment, command in commands:
            self._read_segment(segment, command, variables if in_script else None, reading)
        self._readings.put(key, size + _env_size(key), reading)
        return reading

    def retarget(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> list[str] | None:
        """``argv`` with every probe of a managed host pointed at its external address.

        Only probe commands are touched, so work in the same script keeps its text. Returns
        None when nothing changes. Hosts of services without an external address are left.
        A host given through a variable is replaced as a whole by the external address.
        """
        size = program_length(argv)
        if size > MAX_PROGRAM_CHARS:
            return None
        key = _cache_key(argv, env)
        found, retargeted = self._retargeted.get(key)
        if not found:
            retargeted = self._retarget_uncached(key, argv, env or {})
            self._retargeted.put(key, size + _env_size(key), retargeted)
        return list(retargeted) if retargeted is not None else None

    def names_managed_host(self, text: str) -> bool:
        """Whether ``text`` names any managed host, in any of its forms."""
        return bool(self._mentions.search(text)) and any(
            pattern.regex.search(text) for pattern in self._patterns
        )

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
        items = value.split(",")
        for position, item in enumerate(items):
            address = _ADDRESS.match(item)
            if address is None or not (address.group("scheme") or address.group("port")):
                continue
            service = next((p.service for p in self._patterns
                            if p.whole_host.fullmatch(address.group("host"))), None)
            if service is None:
                continue
            if service.external is None:
                unreachable.append(service.name)
                continue
            items[position] = (item[: address.start("host")] + str(service.external)
                               + item[address.end("port") if address.group("port") else
                                      address.end("host"):])
        rewritten = ",".join(items)
        return (rewritten if rewritten != value else None), unreachable

    def _retarget_uncached(
        self, key: _Key, argv: Sequence[str], env: Mapping[str, str]
    ) -> list[str] | None:
        expanded = _expand_kubelet(argv, env)
        commands = self._commands(key, expanded)
        if _shell_script_index(expanded) is None:
            rewritten = self._retarget_exec_form(expanded, commands)
        else:
            rewritten = self._retarget_shell_form(expanded, commands, env)
        # The kubelet's expansion alone is no change: only a retargeted probe writes it out.
        return rewritten if rewritten is not None and rewritten != list(argv) else None

    def _retarget_exec_form(
        self, argv: list[str], commands: list[tuple[_Segment, _Command]]
    ) -> list[str] | None:
        if any(_EXEC_JOINER in word for word in argv):
            return None
        rewritten: list[str] = []
        position = 0
        changed = False
        for segment, command in commands:
            if command.kind != "probe":
                continue
            # Joined so that `nc -z mlflow 5000` finds its port in the next element; the
            # joiner counts as white space for the port rule and cannot occur in an argument.
            original = _EXEC_JOINER.join(argv[segment.start : segment.end])
            retargeted = self._retarget_probe(original, command)
            if retargeted == original:
                continue
            rewritten += argv[position : segment.start]
            rewritten += retargeted.split(_EXEC_JOINER)
            position = segment.end
            changed = True
        if not changed:
            return None
        return rewritten + argv[position:]

    def _retarget_shell_form(
        self,
        argv: list[str],
        commands: list[tuple[_Segment, _Command]],
        env: Mapping[str, str],
    ) -> list[str] | None:
        index = _shell_script_index(argv)
        assert index is not None
        script = argv[index]
        pieces: list[str] = []
        position = 0
        for segment, command in commands:
            if command.kind != "probe":
                continue
            original = script[segment.start : segment.end]
            expanded = _expand_in_probe(original, env) if "$" in original else original
            retargeted = self._retarget_probe(expanded, command)
            if retargeted == expanded:
                continue  # nothing retargeted: the variables stay as they were written
            pieces += (script[position : segment.start], retargeted)
            position = segment.end
        if not pieces:
            return None
        pieces.append(script[position:])
        return [*argv[:index], "".join(pieces), *argv[index + 1 :]]

    def _retarget_probe(self, text: str, command: _Command) -> str:
        """One probe command's text retargeted, its separate port (`-p`, last word) too."""
        moved: list[Endpoint] = []
        for pattern in self._patterns:
            external = pattern.service.external
            if external is not None:
                text = _retarget_matches(pattern.regex, text, external, moved)
        if len(set(moved)) == 1:
            # A host without an attached port: the port may be an option or the last word.
            external = moved[0]
            text = _PORT_OPTION.sub(
                lambda m: f"{m.group('option')}{m.group('gap')}{external.port}", text
            )
            if command.name in PORT_LAST_TOOLS:
                text = _LAST_WORD_PORT.sub(lambda m: f"{external.port}{m.group('tail')}", text)
        return text

    def _commands(self, key: _Key, expanded: list[str]) -> list[tuple[_Segment, _Command]]:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        commands = [(segment, _classify(segment.words, segment.command))
                    for segment in segments(expanded)]
        self._last = (key, commands)
        return commands

    def _read_segment(
        self,
        segment: _Segment,
        command: _Command,
        env: Mapping[str, str] | None,
        reading: ProgramReading,
    ) -> None:
        words = segment.words
        if command.kind == "probe":
            probed_anything = False
            candidates = (
                command.arguments if command.name in PROBE_COMMANDS | CLIENTS else list(words)
            )
            unresolved = False
            for word in candidates:
                if env is not None and "$" in word:
                    word = _expand_word(word, env)
                    unresolved = unresolved or (
                        not word.startswith("-") and bool(_SHELL_VARIABLE.search(word))
                    )
                # Every service a word names counts, not just the first: after a retarget the
                # others would be found on a second pass and change the verdict then.
                services = self.managed_services_in(word)
                for service in services:
                    if service.name not in reading.managed:
                        reading.managed.append(service.name)
                if services:
                    probed_anything = True
                elif self.names_external_host(word):
                    probed_anything = True
                    reading.probes_external = True
            if not probed_anything and (
                unresolved or _names_some_host(command.arguments or list(words))
            ):
                reading.probes_other_hosts = True
        elif command.kind == "work":
            reading.does_work = True

    def managed_services_in(self, word: str) -> list[Service]:
        """Every managed service a probe's argument ``word`` names, in the order of the
        services (a word may name several: `http://mlflow:5000/ready?db=postgres`)."""
        unquoted = unquote(word)
        return [pattern.service for pattern in self._patterns if pattern.regex.search(unquoted)]

    def names_external_host(self, word: str) -> bool:
        """Whether ``word`` names an external address, quoted or not: a probe of it is one
        that a pass before retargeted."""
        return self._external_host is not None and bool(self._external_host.search(word))

    def retarget_text(self, text: str) -> str:
        """``text`` with every host of a service that has an external address pointed at it
        (with its port: attached, as the next word, or written out after `scheme://`)."""
        for pattern in self._patterns:
            external = pattern.service.external
            if external is not None:
                text = _retarget_matches(pattern.regex, text, external, [])
        return text


def _cache_key(argv: Sequence[str], env: Mapping[str, str] | None) -> _Key:
    # The env only matters to a program that refers to variables.
    if env and any("$" in element for element in argv):
        return tuple(argv), tuple(sorted(env.items()))
    return tuple(argv), ()


def _env_size(key: _Key) -> int:
    return sum(len(name) + len(value) for name, value in key[1])


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


def segments(argv: Sequence[str]) -> Iterator[_Segment]:
    """The simple commands of a program, in order (a comment is none)."""
    script_index = _shell_script_index(argv)
    if script_index is None:
        # Exec form: one command, whose words are the elements themselves.
        yield from _exec_segments(argv)
        return
    script = argv[script_index]
    start = 0
    for token in _SCRIPT_TOKENS.finditer(script):
        if token.lastgroup == "opaque":
            continue
        yield from _shell_segments(script_index, script, start, token.start())
        start = token.end()
    yield from _shell_segments(script_index, script, start, len(script))


def _exec_segments(argv: Sequence[str]) -> Iterator[_Segment]:
    start = 0
    while start < len(argv):
        words = tuple(argv[start:])
        index = _command_index(words)
        cut = _command_cut(words, index)
        end = len(argv) if cut is None else start + cut[0]
        yield _Segment(-1, start, end, words[: end - start], index)
        if cut is None:
            return
        start += cut[1]


def _shell_segments(argv_index: int, script: str, start: int, end: int) -> Iterator[_Segment]:
    spans = [(word.start(), word.end()) for word in _WORD.finditer(script, start, end)]
    words = tuple(script[a:b] for a, b in spans)
    offset = 0
    while True:
        rest = words[offset:] if offset else words
        index = _command_index(rest)
        cut = _command_cut(rest, index)
        if cut is None:
            yield _Segment(argv_index, start, end, rest, index)
            return
        stop, resume = offset + cut[0], offset + cut[1]
        yield _Segment(argv_index, start, spans[stop - 1][1] if stop > offset else start,
                       words[offset:stop], index)
        if resume >= len(words):
            return
        offset, start = resume, spans[resume][0]


def _command_cut(words: Sequence[str], index: int | None) -> tuple[int, int] | None:
    """Where a wait tool's own command begins, as (end of the tool's words, start of the
    command), or None: `wait-for-it db:5432 -- ./migrate`, `dockerize -wait tcp://db:5432 run`.
    ``index`` is the command word's (see _command_index).
    """
    if index is None:
        return None
    name = _basename(unquote(words[index]))
    if name in COMMAND_AFTER_DOUBLE_DASH:
        for position in range(index + 1, len(words)):
            if words[position] == "--":
                return position, position + 1
    elif name == DOCKERIZE:
        position = index + 1
        while position < len(words):
            option = words[position].lstrip("-")
            if not words[position].startswith("-"):
                return position, position
            if "=" not in option and option in DOCKERIZE_VALUE_OPTIONS:
                position += 1  # its value
            position += 1
    return None


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


def _command_index(words: Sequence[str]) -> int | None:
    """Index of the command word of a simple command, past keywords and wrappers.

    A nested shell (`timeout 60 sh -c '...'`) is looked through as well: the words after it
    are the start of its script. None when nothing runs (a loop header, or only keywords).
    """
    index = 0
    while index < len(words):
        word = unquote(words[index])
        name = _basename(word)
        if word in LOOP_HEADERS:
            return None
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
            return index
    return None


def _classify(words: Sequence[str], index: int | None) -> _Command:
    """What a simple command does; ``index`` is its command word's (see _command_index)."""
    if index is None:
        return _Command("probe" if _uses_dev_tcp(words) else "", "", [])
    name = _basename(unquote(words[index]))
    raw = words[index + 1 :]
    arguments = [unquote(word) for word in raw]
    if name == DOCKERIZE:
        work = any(a.lstrip("-").split("=", 1)[0] in DOCKERIZE_WORK_OPTIONS for a in arguments
                   if a.startswith("-"))
        kind = "work" if work else "probe"
    elif name in PROBE_COMMANDS:
        kind = "probe"
    elif name in QUERY_CLIENTS:
        queries = _queries(raw, QUERY_CLIENTS[name])
        kind = "probe" if queries and all(q in LIVENESS_QUERIES for q in queries) else "work"
    elif name == MYSQLADMIN:
        verbs = [a.lower() for a in arguments if a.lower() in MYSQLADMIN_COMMANDS]
        kind = "probe" if verbs and set(verbs) <= MYSQLADMIN_LIVENESS else "work"
    elif name == REDIS_CLI:
        kind = "probe" if arguments and arguments[-1].lower() in REDIS_LIVENESS else "work"
    elif _uses_dev_tcp(words):
        kind = "probe"
    elif name in IDLE_COMMANDS or not name:
        kind = "idle"
    else:
        kind = "work"
    return _Command(kind, name, arguments)


def _queries(words: Sequence[str], flags: Sequence[str]) -> list[str]:
    """The queries a client is given (`-c 'SELECT 1'`, `--command=...`), normalised."""
    found = []
    for index, word in enumerate(words):
        attached = next((word[len(flag) + 1 :] for flag in flags
                         if flag.startswith("--") and word.startswith(flag + "=")), None)
        if word in flags:
            text = " ".join(words[index + 1 :])
        elif attached is not None:
            text = " ".join([attached, *words[index + 1 :]])
        else:
            continue
        found.append(_normalised_query(_first_shell_word(text)))
    return found


def _first_shell_word(text: str) -> str:
    if text[:1] in QUOTES and text:
        closing = text.find(text[0], 1)
        return text[1:] if closing < 0 else text[1:closing]
    return text.split(" ", 1)[0]


def _normalised_query(query: str) -> str:
    return " ".join(query.split()).rstrip(";").strip().lower()


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


def _expand_kubelet(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``$(NAME)`` replaced as the kubelet does it, for the names the env defines literally."""
    if not env or not any("$(" in element for element in argv):
        return list(argv)

    def value_of(match: re.Match[str]) -> str:
        return env.get(match.group("name"), match.group(0))

    return [
        _KUBELET_VARIABLE.sub(value_of, element) if "$(" in element else element
        for element in argv
    ]


def _resolved(match: re.Match[str], env: Mapping[str, str]) -> str | None:
    value = env.get(match.group("plain") or match.group("braced"))
    return value if value else match.group("default")


def _expand_word(word: str, env: Mapping[str, str]) -> str:
    """A word with the variables it refers to resolved; unresolved ones stay as written."""
    return _SHELL_VARIABLE.sub(lambda m: _resolved(m, env) or m.group(0), word)


def _expand_in_probe(text: str, env: Mapping[str, str]) -> str:
    """A probe's text with each resolvable reference replaced by its value, quotes and all,
    where the value is one plain word (so the text still parses as the same command)."""

    def value_of(match: re.Match[str]) -> str:
        value = _resolved(match, env)
        return value if value is not None and _SAFE_VALUE.match(value) else match.group(0)

    return _QUOTED_SHELL_VARIABLE.sub(value_of, text)


def _is_redirection(word: str) -> bool:
    return bool(_REDIRECTION.match(word))


def unquote(word: str) -> str:
    """A word without the quote characters at its ends."""
    return word.strip(QUOTES)


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


__all__ = [
    "CACHE_BYTES",
    "MAX_PROGRAM_CHARS",
    "NOT_READ",
    "HostPattern",
    "ProgramReader",
    "ProgramReading",
    "program_length",
    "segments",
    "unquote",
]
