"""What one simple command of a program does: probe a host, work, idle, or nothing at all.

A *probe* is a command that checks whether a host answers (``nc -z mlflow 5000``, ``wget``,
``pg_isready``, a wait tool, ``/dev/tcp/...``), or a database or cache client that runs only a
liveness check (``psql -c 'SELECT 1'``, ``mysqladmin ping``, ``redis-cli ping``). *Idle*
commands are the glue of a readiness loop (``sleep``, ``echo``). Anything else is *work*,
including a client given any other query and ``dockerize`` rendering files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from webhook.rules.grammar import (
    DEV_TCP_HOST,
    DEV_TCP_MARKERS,
    DOCKERIZE,
    DOCKERIZE_WORK_OPTIONS,
    HTTP_CLIENTS,
    HTTP_METHOD_OPTIONS,
    HTTP_READ_METHODS,
    HTTP_SENDING_OPTIONS,
    IDLE_COMMANDS,
    LIVENESS_QUERIES,
    MYSQLADMIN,
    MYSQLADMIN_COMMANDS,
    MYSQLADMIN_LIVENESS,
    OUTPUT_FILTERS,
    PACKAGE_MANAGERS,
    PROBE_COMMANDS,
    PROBE_TOOL_PACKAGES,
    QUERY_CLIENTS,
    QUOTES,
    REDIS_CLI,
    REDIS_LIVENESS,
    SHELL_LIBRARIES,
    SOURCE_COMMANDS,
    TRAILING_PUNCTUATION,
    URL_HOST,
)
from webhook.rules.segments import basename, unquote

# The kinds of a simple command.
PROBE = "probe"
WORK = "work"
IDLE = "idle"
NOTHING = ""  # nothing runs: an empty command, a loop header

_DEV_TCP_HOST = re.compile(DEV_TCP_HOST)
_URL_HOST = re.compile(URL_HOST)


@dataclass(frozen=True, slots=True)
class Command:
    """A simple command classified: what kind, its command name and its arguments."""

    kind: str  # PROBE, WORK, IDLE or NOTHING
    name: str
    arguments: list[str]


def classify(words: Sequence[str], index: int | None) -> Command:
    """What a simple command does; ``index`` is its command word's (see
    ``segments.command_index``)."""
    if index is None:
        return Command(PROBE if _uses_dev_tcp(words) else NOTHING, "", [])
    name = basename(unquote(words[index]))
    raw = words[index + 1 :]
    arguments = [unquote(word) for word in raw]
    kind = _kind_by_name(name, raw, arguments)
    if kind is None:
        kind = _kind_otherwise(name, words, arguments)
    return Command(kind, name, arguments)


def _kind_by_name(name: str, raw: Sequence[str], arguments: list[str]) -> str | None:
    """The kind of a probe command or client, judged by its arguments; None for the others.

    dockerize comes first: it is a wait tool (a probe command) unless it renders files.
    """
    if name == DOCKERIZE:
        return WORK if _dockerize_works(arguments) else PROBE
    if name in HTTP_CLIENTS and _sends(arguments):
        return WORK
    if name in PROBE_COMMANDS:
        return PROBE
    if name in QUERY_CLIENTS:
        return _probe_if(_only_liveness_queries(_queries(raw, QUERY_CLIENTS[name])))
    if name == MYSQLADMIN:
        return _probe_if(_mysqladmin_only_checks_liveness(arguments))
    if name == REDIS_CLI:
        return _probe_if(bool(arguments) and arguments[-1].lower() in REDIS_LIVENESS)
    return None


def _kind_otherwise(name: str, words: Sequence[str], arguments: Sequence[str]) -> str:
    if _uses_dev_tcp(words):
        return PROBE
    if name in IDLE_COMMANDS or name in OUTPUT_FILTERS or not name:
        return IDLE
    if _installs_probe_tools(name, arguments) or _reads_shell_library(name, arguments):
        return IDLE
    return WORK


def _installs_probe_tools(name: str, arguments: Sequence[str]) -> bool:
    """`apk add --no-cache netcat-openbsd`, `apt-get update`: setup for a probe."""
    verbs = PACKAGE_MANAGERS.get(name)
    if verbs is None:
        return False
    plain = [word for word in arguments if not word.startswith("-")]
    if not plain or plain[0] not in verbs:
        return False
    return all(package in PROBE_TOOL_PACKAGES for package in plain[1:])


def _reads_shell_library(name: str, arguments: Sequence[str]) -> bool:
    return (name in SOURCE_COMMANDS and len(arguments) == 1
            and arguments[0].startswith(SHELL_LIBRARIES))


def _probe_if(liveness_only: bool) -> str:
    return PROBE if liveness_only else WORK


def _sends(arguments: Sequence[str]) -> bool:
    """Whether an HTTP client's arguments send a body or a method that changes something."""
    for index, argument in enumerate(arguments):
        option, _, value = argument.partition("=")
        if option not in HTTP_SENDING_OPTIONS and not argument.startswith("--") \
                and argument[:2] in HTTP_SENDING_OPTIONS:
            option, value = argument[:2], argument[2:]  # attached: `-XPOST`, `-d@body.json`
        if option not in HTTP_SENDING_OPTIONS:
            continue
        if option in HTTP_METHOD_OPTIONS:
            method = value or (arguments[index + 1] if index + 1 < len(arguments) else "")
            if method.upper() in HTTP_READ_METHODS:
                continue
        return True
    return False


def _dockerize_works(arguments: Sequence[str]) -> bool:
    return any(a.lstrip("-").split("=", 1)[0] in DOCKERIZE_WORK_OPTIONS for a in arguments
               if a.startswith("-"))


def _only_liveness_queries(queries: list[str]) -> bool:
    return bool(queries) and all(query in LIVENESS_QUERIES for query in queries)


def _mysqladmin_only_checks_liveness(arguments: Sequence[str]) -> bool:
    verbs = [a.lower() for a in arguments if a.lower() in MYSQLADMIN_COMMANDS]
    return bool(verbs) and set(verbs) <= MYSQLADMIN_LIVENESS


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


def names_some_host(arguments: Sequence[str]) -> bool:
    """Whether any argument that is not an option names a host, managed or not."""
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


__all__ = ["IDLE", "NOTHING", "PROBE", "WORK", "Command", "classify", "names_some_host"]
