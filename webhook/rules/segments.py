"""The simple commands of a program by its words: the exec form, a wait tool's own command,
and the shallow reading of scripts that the policy twin compiles into CEL.

Any form that is not a shell script is one command in exec form, its words being the elements
of command + args. A wait tool that runs a command of its own (``wait-for-it db:5432 --
./migrate``) is two commands (``command_segments``, also applied to each command the shell
reader finds in a script).

``segments`` of a shell form (``sh -c SCRIPT``) splits the script at ``;``, ``&&``, ``||``,
``|``, ``&``, newlines and subshell brackets, comments dropped, with the words and separators
of ``grammar.py``, in time linear in its length. The webhook reads scripts with the shell
parser (``shell.py``); this shallow reading is the one the native policy expresses in CEL,
kept here as its reference for the policy's tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from webhook.rules.grammar import (
    ASSIGNMENT,
    COMMAND_AFTER_DOUBLE_DASH,
    COMMENT,
    COMPUTED_PART,
    DOCKERIZE,
    DOCKERIZE_VALUE_OPTIONS,
    LOOP_HEADERS,
    NAMESPACE_FILE_SUBSTITUTION,
    QUOTES,
    REDIRECTION,
    REDIRECTION_AMPERSAND_AFTER,
    REDIRECTION_AMPERSAND_BEFORE,
    SEPARATOR_TOKENS,
    SHELL_KEYWORDS,
    SHELLS,
    WRAPPER_NUMBER,
    WRAPPERS,
)


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
_WORD = re.compile(rf"(?:{NAMESPACE_FILE_SUBSTITUTION}|{COMPUTED_PART}|\S)+")
_ASSIGNMENT = re.compile(ASSIGNMENT)
_REDIRECTION = re.compile(REDIRECTION)
_WRAPPER_NUMBER = re.compile(WRAPPER_NUMBER)


@dataclass(frozen=True, slots=True)
class Segment:
    """One simple command: where it lies, and its words.

    In a script, ``start``/``end`` are character offsets in ``argv[argv_index]``; in exec
    form (``argv_index`` -1) they are indexes of the elements of argv.
    """

    argv_index: int
    start: int
    end: int
    words: tuple[str, ...]
    command: int | None  # index of the command word in ``words`` (see command_index)


def segments(argv: Sequence[str]) -> Iterator[Segment]:
    """The simple commands of a program, in order (a comment is none)."""
    script_index = shell_script_index(argv)
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


def shell_script_index(argv: Sequence[str]) -> int | None:
    """Index of the script in ``sh -c SCRIPT`` forms, or None for an exec form."""
    if not argv or basename(argv[0]) not in SHELLS:
        return None
    for index in range(1, len(argv) - 1):
        flag = argv[index]
        if not flag.startswith("-"):
            return None
        if "c" in flag[1:] and not flag.startswith("--"):
            return index + 1
    return None


def command_segments(words: Sequence[str]) -> Iterator[Segment]:
    """One command's words as the commands they run: itself, or a wait tool and the command
    it runs (start and end index ``words``)."""
    return _exec_segments(words)


def _exec_segments(argv: Sequence[str]) -> Iterator[Segment]:
    start = 0
    while start < len(argv):
        words = tuple(argv[start:])
        index = command_index(words)
        cut = _command_cut(words, index)
        end = len(argv) if cut is None else start + cut[0]
        yield Segment(-1, start, end, words[: end - start], index)
        if cut is None:
            return
        start += cut[1]


def _shell_segments(argv_index: int, script: str, start: int, end: int) -> Iterator[Segment]:
    spans = [(word.start(), word.end()) for word in _WORD.finditer(script, start, end)]
    words = tuple(script[a:b] for a, b in spans)
    offset = 0
    while True:
        rest = words[offset:] if offset else words
        index = command_index(rest)
        cut = _command_cut(rest, index)
        if cut is None:
            yield Segment(argv_index, start, end, rest, index)
            return
        stop, resume = offset + cut[0], offset + cut[1]
        yield Segment(argv_index, start, spans[stop - 1][1] if stop > offset else start,
                      words[offset:stop], index)
        if resume >= len(words):
            return
        offset, start = resume, spans[resume][0]


def _command_cut(words: Sequence[str], index: int | None) -> tuple[int, int] | None:
    """Where a wait tool's own command begins, as (end of the tool's words, start of the
    command), or None: `wait-for-it db:5432 -- ./migrate`, `dockerize -wait tcp://db:5432 run`.
    ``index`` is the command word's (see command_index).
    """
    if index is None:
        return None
    name = basename(unquote(words[index]))
    if name in COMMAND_AFTER_DOUBLE_DASH:
        return _double_dash_cut(words, index)
    if name == DOCKERIZE:
        return _dockerize_cut(words, index)
    return None


def _double_dash_cut(words: Sequence[str], index: int) -> tuple[int, int] | None:
    for position in range(index + 1, len(words)):
        if words[position] == "--":
            return position, position + 1
    return None


def _dockerize_cut(words: Sequence[str], index: int) -> tuple[int, int] | None:
    """dockerize runs its first word that is neither an option nor an option's value."""
    position = index + 1
    while position < len(words):
        option = words[position].lstrip("-")
        if not words[position].startswith("-"):
            return position, position
        if "=" not in option and option in DOCKERIZE_VALUE_OPTIONS:
            position += 1  # its value
        position += 1
    return None


def command_index(words: Sequence[str]) -> int | None:
    """Index of the command word of a simple command, past keywords and wrappers.

    A nested shell (`timeout 60 sh -c '...'`) is looked through as well: the words after it
    are the start of its script. None when nothing runs (a loop header, or only keywords).
    """
    index = 0
    while index < len(words):
        word = unquote(words[index])
        name = basename(word)
        if word in LOOP_HEADERS:
            return None
        if word in SHELL_KEYWORDS or _ASSIGNMENT.match(word) or _REDIRECTION.match(word):
            index += 1
        elif name in WRAPPERS or name in SHELLS:
            index = past_wrapper_options(words, index + 1)
        else:
            return index
    return None


def past_wrapper_options(words: Sequence[str], index: int) -> int:
    """The index of the first word from ``index`` on that is not a wrapper's option or number
    (`timeout -s KILL 5`, `sh -ec`)."""
    while index < len(words) and (
        words[index].startswith("-") or _WRAPPER_NUMBER.match(words[index])
    ):
        index += 1
    return index


def unquote(word: str) -> str:
    """A word without the quote characters at its ends."""
    return word.strip(QUOTES)


def basename(word: str) -> str:
    """The last part of a path: the command name of `/bin/sh`."""
    return word.rsplit("/", 1)[-1]


__all__ = [
    "Segment",
    "basename",
    "command_index",
    "command_segments",
    "past_wrapper_options",
    "segments",
    "shell_script_index",
    "unquote",
]
