"""Reading and retargeting the programs of init containers: the reader's entry point.

An init container *waits* when its program does nothing but probe hosts, loop, sleep, print
and comment. A *probe* is a command that checks whether a host answers: ``nc -z mlflow 5000``,
``wget``, ``curl``, ``pg_isready``, a wait tool, a liveness query such as
``psql -c 'SELECT 1'``, ``/dev/tcp/...``. `ProgramReader` finds which managed services a
program probes, whether it also probes other hosts (kafka) or does real work (a migration),
and rewrites the probes of managed hosts so that they point at the external address instead.

The reading goes through these modules, each with one job:

- ``segments``: the program cut into simple commands (shell form or exec form);
- ``variables``: ``$(NAME)``, ``$NAME``, ``${NAME:-default}`` resolved from the literal env;
- ``commands``: what each simple command does (probe, work, idle);
- ``hosts``: managed host names found in words, and retargeted in probes and env values;
- ``cache``: readings remembered by program, bounded by bytes.

A probe whose host is a variable that cannot be resolved counts as probing some other host,
so it is never taken for a pure wait.

Bounds: a program longer than ``MAX_PROGRAM_CHARS`` is not read at all (it is kept as it is,
and the rules say so in a warning); readings are remembered in caches bounded by bytes.
Reading and retargeting are linear in the length of the program.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from webhook.rules.cache import (
    CACHE_BYTES,
    BoundedCache,
    ProgramKey,
    env_size,
    program_key,
)
from webhook.rules.commands import PROBE, WORK, Command, classify, names_some_host
from webhook.rules.grammar import CLIENTS, PROBE_COMMANDS
from webhook.rules.hosts import HostPattern, ManagedHosts
from webhook.rules.segments import Segment, segments, shell_script_index, unquote
from webhook.rules.variables import (
    expand_in_probe,
    expand_kubelet,
    expand_word,
    refers_to_unresolved,
)
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

_Commands = list[tuple[Segment, Command]]


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
        # The pods of one workload carry the same init containers over and over, so readings
        # are remembered by program; reading is most of the cost of a review otherwise.
        self._readings: BoundedCache[ProgramReading] = BoundedCache()
        self._retargeted: BoundedCache[list[str] | None] = BoundedCache()
        # The commands of the program read last: a retarget follows the reading of the same
        # program, and need not split it again.
        self._last: tuple[ProgramKey, _Commands] | None = None

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
        variables = env or {}
        expanded = expand_kubelet(argv, variables)
        # Shell variables are resolved in a script only; exec form has had the kubelet's.
        script_env = variables if shell_script_index(expanded) is not None else None
        for segment, command in self._commands(key, expanded):
            if command.kind == PROBE:
                self._read_probe(segment.words, command, script_env, reading)
            elif command.kind == WORK:
                reading.does_work = True
        self._readings.put(key, size + env_size(key), reading)
        return reading

    def retarget(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> list[str] | None:
        """``argv`` with every probe of a managed host pointed at its external address.

        Only probe commands are touched, so work in the same script keeps its text. Returns
        None when nothing changes. Hosts of services without an external address are left.
        """
        size = program_length(argv)
        if size > MAX_PROGRAM_CHARS:
            return None
        key = program_key(argv, env)
        found, retargeted = self._retargeted.get(key)
        if not found:
            retargeted = self._retarget_uncached(key, argv, env or {})
            self._retargeted.put(key, size + env_size(key), retargeted)
        return list(retargeted) if retargeted is not None else None

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
        services (a word may name several: `http://mlflow:5000/ready?db=postgres`)."""
        return self._hosts.services_in(word)

    def names_external_host(self, word: str) -> bool:
        """Whether ``word`` names an external address, quoted or not: a probe of it is one
        that a pass before retargeted."""
        return self._hosts.names_external_host(word)

    def retarget_text(self, text: str) -> str:
        """``text`` with every host of a service that has an external address pointed at it
        (with its port: attached, as the next word, or written out after `scheme://`)."""
        return self._hosts.retarget_text(text)

    def _commands(self, key: ProgramKey, expanded: list[str]) -> _Commands:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        commands = [(segment, classify(segment.words, segment.command))
                    for segment in segments(expanded)]
        self._last = (key, commands)
        return commands

    def _read_probe(
        self,
        words: Sequence[str],
        command: Command,
        env: Mapping[str, str] | None,
        reading: ProgramReading,
    ) -> None:
        """Note the hosts one probe names; ``env`` resolves its variables (None: none)."""
        probed_anything = False
        unresolved = False
        for word in _host_candidates(words, command):
            if env is not None and "$" in word:
                word = expand_word(word, env)
                unresolved = unresolved or refers_to_unresolved(word)
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
    ) -> list[str] | None:
        expanded = expand_kubelet(argv, env)
        commands = self._commands(key, expanded)
        script_index = shell_script_index(expanded)
        if script_index is None:
            rewritten = self._retarget_exec_form(expanded, commands)
        else:
            rewritten = self._retarget_shell_form(expanded, script_index, commands, env)
        # The kubelet's expansion alone is no change: only a retargeted probe writes it out.
        return rewritten if rewritten is not None and rewritten != list(argv) else None

    def _retarget_exec_form(self, argv: list[str], commands: _Commands) -> list[str] | None:
        if any(_EXEC_JOINER in word for word in argv):
            return None
        rewritten: list[str] = []
        position = 0
        changed = False
        for segment, command in commands:
            if command.kind != PROBE:
                continue
            original = _EXEC_JOINER.join(argv[segment.start : segment.end])
            retargeted = self._hosts.retarget_probe(original, command.name)
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
        script_index: int,
        commands: _Commands,
        env: Mapping[str, str],
    ) -> list[str] | None:
        script = argv[script_index]
        pieces: list[str] = []
        position = 0
        for segment, command in commands:
            if command.kind != PROBE:
                continue
            original = script[segment.start : segment.end]
            expanded = expand_in_probe(original, env) if "$" in original else original
            retargeted = self._hosts.retarget_probe(expanded, command.name)
            if retargeted == expanded:
                continue  # nothing retargeted: the variables stay as they were written
            pieces += (script[position : segment.start], retargeted)
            position = segment.end
        if not pieces:
            return None
        pieces.append(script[position:])
        return [*argv[:script_index], "".join(pieces), *argv[script_index + 1 :]]


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
