"""Reading and retargeting the programs of init containers: the reader's entry point.

An init container *waits* when its program does nothing but probe hosts, loop, sleep, print
and comment. A *probe* is a command that checks whether a host answers: ``nc -z mlflow 5000``,
``wget``, ``curl``, ``pg_isready``, a wait tool, a liveness query such as
``psql -c 'SELECT 1'``, ``/dev/tcp/...``. `ProgramReader` finds which managed services a
program probes, whether it also probes other hosts (kafka) or does real work (a migration),
and rewrites the probes of managed hosts so that they point at the external address instead.

The reading goes through these modules, each with one job:

- ``shell``: a script (``sh -c SCRIPT``) parsed as shell, its simple commands in run order
  with their words resolved (script-local variables, functions, nested command strings);
- ``segments``: a command's words cut where a wait tool runs a command of its own, and the
  exec form (no shell) read as one command;
- ``variables``: ``$(NAME)`` expanded as the kubelet does, and ``$NAME`` references written
  into a probe that is retargeted;
- ``commands``: what each simple command does (probe, work, idle);
- ``hosts``: managed host names found in words, and retargeted in probes and env values;
- ``cache``: readings remembered by program, bounded by bytes.

A probe whose host is a variable that cannot be resolved, or is computed by a command
(``$(...)``), counts as probing some other host, so it is never taken for a pure wait. A script
the shell reader cannot read is work.

Bounds: a program longer than ``MAX_PROGRAM_CHARS`` is not read at all (it is kept as it is,
and the rules say so in a warning); readings are remembered in caches bounded by bytes.
Reading and retargeting are linear in the length of the program.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from webhook.rules.cache import (
    CACHE_BYTES,
    BoundedCache,
    ProgramKey,
    env_size,
    program_key,
)
from webhook.rules.commands import PROBE, WORK, Command, classify, names_some_host
from webhook.rules.grammar import (
    CLIENTS,
    CONTINUATION_MASK,
    LINE_CONTINUATION,
    PROBE_COMMANDS,
)
from webhook.rules.hosts import HostPattern, ManagedHosts
from webhook.rules.segments import Segment, command_segments, segments, shell_script_index, unquote
from webhook.rules.shell import ShellReading, command_string, read_script
from webhook.rules.variables import expand_in_probe, expand_kubelet, refers_to_unresolved
from webhook.settings import Service

# A program (command + args, all elements together) longer than this is not read as a
# waiter: real readiness loops are a few hundred characters, and the bound keeps the time a
# hostile pod can cost per init container small. Such a container is kept as it is.
MAX_PROGRAM_CHARS = 16 * 1024
# Commands whose hosts are among their arguments; in any other probe (`/dev/tcp/...`), any
# word may name the host.
_HOSTS_IN_ARGUMENTS = PROBE_COMMANDS | CLIENTS
# Joins the elements of an exec-form probe into one text: it counts as white space for the
# port rule (`nc -z mlflow 5000` finds its port in the next element) and cannot occur in an
# argument.
_EXEC_JOINER = "\x1f"

_NO_VARIABLES: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class _Step:
    """One simple command of a program, classified.

    In exec form, ``segment``'s start and end index argv; in a script they are the command's
    character offsets in the script as written, or -1 when its words are not written there
    (taken from a variable or a string); ``variables`` are the script's constants its text
    may refer to.
    """

    segment: Segment
    command: Command
    variables: Mapping[str, str] = field(default_factory=lambda: _NO_VARIABLES)


@dataclass(frozen=True, slots=True)
class _Program:
    """A program cut into steps; ``unreadable`` when a script cannot be read as shell."""

    steps: list[_Step]
    script_index: int | None
    unreadable: bool = False
    # Work besides its commands: a file written by a redirection, or a command computed by
    # another (`` `...` `` where a command goes), whose output the rules cannot know.
    other_work: bool = False


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


def program_length(argv: Sequence[str]) -> int:
    """The size by which programs are bounded: characters of all elements together."""
    return sum(map(len, argv))


class ProgramReader:
    """Reads and retargets programs for one set of managed services."""

    def __init__(self, services: Sequence[Service]) -> None:
        self._hosts = ManagedHosts(services)
        self._has_external = {service.name: service.external is not None for service in services}
        # The pods of one workload carry the same init containers over and over, so readings
        # are remembered by program; reading is most of the cost of a review otherwise.
        self._readings: BoundedCache[ProgramReading] = BoundedCache()
        self._retargeted: BoundedCache[tuple[list[str] | None, tuple[str, ...]]] = BoundedCache()
        # The program read last: a retarget follows the reading of the same program, and need
        # not parse it again.
        self._last: tuple[ProgramKey, _Program] | None = None

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
        key = program_key(argv, env)
        found, reading = self._readings.get(key)
        if found and reading is not None:
            return reading
        reading = ProgramReading()
        program = self._program(key, expand_kubelet(argv, env or {}), env or {})
        if program.unreadable or program.other_work:
            reading.does_work = True
        for step in program.steps:
            if step.command.kind == PROBE:
                # A script's words come resolved; what is left of `$` is not known.
                self._read_probe(step.segment.words, step.command,
                                 program.script_index is not None, reading)
            elif step.command.kind == WORK:
                reading.does_work = True
        self._readings.put(key, size + env_size(key), reading)
        return reading

    def retargets_fully(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
        """Whether retargeting ``argv`` leaves no probe of a managed service that has an
        external address: false when a probe is reached through a function, a variable holding
        the command or a command string, whose text cannot be rewritten where it stands."""
        retargeted = self.retarget(argv, env)
        reading = self.read(retargeted if retargeted is not None else argv, env)
        return not any(self._has_external[name] for name in reading.managed)

    def retarget(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> list[str] | None:
        """``argv`` with every probe of a managed host pointed at its external address, and
        every URL of one in a command that does work (``mc alias set m http://minio:9000``).

        Only the probes' hosts and the work's URL authorities change; the rest of the text
        stays as written. Returns None when nothing changes. Hosts of services without an
        external address are left (see ``unreachable_in_work``).
        """
        retargeted, _ = self._retargeting(argv, env)
        return list(retargeted) if retargeted is not None else None

    def unreachable_in_work(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> list[str]:
        """The managed services without an external address that URLs in the program's work
        name: such work still talks to the in-cluster name."""
        return list(self._retargeting(argv, env)[1])

    def _retargeting(
        self, argv: Sequence[str], env: Mapping[str, str] | None
    ) -> tuple[list[str] | None, tuple[str, ...]]:
        size = program_length(argv)
        if size > MAX_PROGRAM_CHARS:
            return None, ()
        key = program_key(argv, env)
        found, retargeted = self._retargeted.get(key)
        if not found or retargeted is None:
            retargeted = self._retarget_uncached(key, argv, env or {})
            self._retargeted.put(key, size + env_size(key), retargeted)
        return retargeted

    @property
    def hosts(self) -> ManagedHosts:
        """The managed host names this reader finds and retargets, for text that is not a
        program (env values)."""
        return self._hosts

    def names_managed_host(self, text: str) -> bool:
        """Whether ``text`` names any managed host, in any of its forms."""
        return self._hosts.names_managed_host(text)

    def retarget_value(self, value: str) -> tuple[str | None, list[str]]:
        """An env value that is a URL or ``host:port`` of a managed host, retargeted (see
        ``ManagedHosts.retarget_value``): the new value or None, and the services named that
        have no external address."""
        return self._hosts.retarget_value(value)

    def managed_services_in(self, word: str) -> list[Service]:
        """Every managed service a probe's argument ``word`` names, in the order of the
        services (a word may name several: `mlflow:5000,postgres:5432`)."""
        return self._hosts.services_in(word)

    def names_external_host(self, word: str) -> bool:
        """Whether ``word`` names an external address, quoted or not: a probe of it is one
        that a pass before retargeted."""
        return self._hosts.names_external_host(word)

    def retarget_text(self, text: str) -> str:
        """``text`` with every host of a service that has an external address pointed at it
        (with its port: attached, as the next word, or written out after `scheme://`)."""
        return self._hosts.retarget_text(text)

    def _program(
        self, key: ProgramKey, expanded: list[str], env: Mapping[str, str]
    ) -> _Program:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        script_index = shell_script_index(expanded)
        if script_index is not None:
            program = _script_program(read_script(expanded[script_index], env), script_index)
        elif (nested := command_string(expanded)) is not None:
            # `timeout 60 sh -c SCRIPT` in exec form: the script is read, not in place.
            program = _script_program(read_script(nested, env, in_place=False), None)
        else:
            program = _Program([_Step(segment, classify(segment.words, segment.command))
                                for segment in segments(expanded)], None)
        self._last = (key, program)
        return program

    def _read_probe(
        self, words: Sequence[str], command: Command, resolved: bool, reading: ProgramReading
    ) -> None:
        """Note the hosts one probe names; ``resolved``: its words have had their variables
        resolved, so a `$` left in one stands for something the rules cannot know."""
        probed_anything = False
        unresolved = False
        for word in _host_candidates(words, command):
            if resolved and ("$" in word or "`" in word):
                unresolved = unresolved or refers_to_unresolved(word) or _computed(word)
            probed_anything = self._note_hosts(word, reading) or probed_anything
        # A probe of no managed or external host that names a host all the same (or one
        # hidden in a variable) waits for something the rules do not manage.
        if not probed_anything and (unresolved or _names_some_host(words, command)):
            reading.probes_other_hosts = True

    def _note_hosts(self, word: str, reading: ProgramReading) -> bool:
        """Note the managed services, or the external address, ``word`` names; whether it
        names any of them."""
        # Every service a word names counts, not just the first: after a retarget the others
        # would be found on a second pass and change the verdict then.
        services = self._hosts.services_in(word)
        for service in services:
            if service.name not in reading.managed:
                reading.managed.append(service.name)
        if services:
            return True
        if self._hosts.names_external_host(word):
            reading.probes_external = True
            return True
        return False

    def _retarget_uncached(
        self, key: ProgramKey, argv: Sequence[str], env: Mapping[str, str]
    ) -> tuple[list[str] | None, tuple[str, ...]]:
        expanded = expand_kubelet(argv, env)
        program = self._program(key, expanded, env)
        if program.unreadable:
            return None, ()
        unreachable: list[str] = []
        if program.script_index is None:
            rewritten = self._retarget_exec_form(expanded, program.steps, unreachable)
        else:
            rewritten = self._retarget_shell_form(expanded, program.script_index,
                                                  program.steps, unreachable)
        # The kubelet's expansion alone is no change: only a retargeted probe writes it out.
        changed = rewritten is not None and rewritten != list(argv)
        return (rewritten if changed else None), tuple(dict.fromkeys(unreachable))

    def _retargeted_step(self, text: str, step: _Step, unreachable: list[str]) -> str:
        """One step's text retargeted: a probe's hosts, or the URLs of work."""
        if step.command.kind == PROBE:
            return self._hosts.retarget_probe(text, step.command.name)
        if step.command.kind == WORK:
            retargeted, missing = self._hosts.retarget_urls(text)
            unreachable += missing
            return retargeted
        return text

    def _retarget_exec_form(
        self, argv: list[str], steps: list[_Step], unreachable: list[str]
    ) -> list[str] | None:
        if any(_EXEC_JOINER in word for word in argv):
            return None
        rewritten: list[str] = []
        position = 0
        changed = False
        for step in steps:
            segment = step.segment
            if segment.start < 0:
                continue
            original = _EXEC_JOINER.join(argv[segment.start : segment.end])
            retargeted = self._retargeted_step(original, step, unreachable)
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
        self, argv: list[str], script_index: int, steps: list[_Step], unreachable: list[str]
    ) -> list[str] | None:
        """Each probe (and URL in work) whose words are written in the script rewritten
        where it stands, continuation lines and all; variables a probe refers to are written
        in when their values are plain words."""
        script = argv[script_index]
        pieces: list[str] = []
        position = 0
        # A command whose text holds others (`nc -z mlflow.$(cat ...)`) is retargeted whole,
        # the commands inside it with it: by place, outermost first.
        for step in sorted(steps, key=lambda s: (s.segment.start, -s.segment.end)):
            segment, command = step.segment, step.command
            if segment.start < position or segment.start < 0:
                position = max(position, segment.end)
                continue
            if command.kind not in (PROBE, WORK):
                continue
            original = script[segment.start : segment.end]
            if CONTINUATION_MASK in original:
                continue
            # A continuation counts as the white space it stands for while the probe is read.
            masked = original.replace(LINE_CONTINUATION, CONTINUATION_MASK)
            expanded = (expand_in_probe(masked, step.variables)
                        if "$" in masked and command.kind == PROBE else masked)
            retargeted = self._retargeted_step(expanded, step, unreachable)
            if retargeted == expanded:
                continue  # nothing retargeted: the text stays as it was written
            pieces += (script[position : segment.start],
                       retargeted.replace(CONTINUATION_MASK, LINE_CONTINUATION))
            position = segment.end
        if not pieces:
            return None
        pieces.append(script[position:])
        return [*argv[:script_index], "".join(pieces), *argv[script_index + 1 :]]


def _script_program(reading: ShellReading | None, script_index: int | None) -> _Program:
    """The steps of a script read by the shell reader (None: it could not be read)."""
    if reading is None:
        return _Program([], script_index, unreadable=True)
    return _Program(list(_script_steps(reading, script_index)), script_index,
                    other_work=reading.writes_files or reading.runs_computed_command)


def _script_steps(reading: ShellReading, script_index: int | None) -> Iterator[_Step]:
    """A script's commands as steps; a wait tool's own command (after ``--``) is a step of
    its own, and only the first part of a command keeps the command's place."""
    for shell_command in reading.commands:
        span = shell_command.span if script_index is not None else None
        for part, segment in enumerate(command_segments(shell_command.words)):
            start, end = span if span is not None and part == 0 else (-1, -1)
            placed = Segment(script_index if script_index is not None else -1, start, end,
                             segment.words, segment.command)
            yield _Step(placed, classify(segment.words, segment.command),
                        shell_command.variables)


def _computed(word: str) -> bool:
    """Whether a word holds a part computed when it runs (`$(...)`, backticks)."""
    return not word.startswith("-") and ("$(" in word or "`" in word)


def _host_candidates(words: Sequence[str], command: Command) -> Sequence[str]:
    """The words of a probe that may name the host it probes."""
    return command.arguments if command.name in _HOSTS_IN_ARGUMENTS else list(words)


def _names_some_host(words: Sequence[str], command: Command) -> bool:
    return names_some_host(command.arguments or list(words))


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
