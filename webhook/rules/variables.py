"""Variables in a container's program, as far as the rules resolve them outside the shell
reader.

``$(NAME)`` in command and args is expanded as the kubelet does, from the container's own
literal env. In a script, the shell reader (``shell.py``) resolves ``$NAME``, ``${NAME}`` and
``${NAME:-default}`` in the words it reads; here, a probe's text has the references it makes
written in (``expand_in_probe``) when it is retargeted, and a word that still refers to a
variable is told apart (``refers_to_unresolved``): the reader counts its probe as one of some
other host, so it is never taken for a pure wait.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from webhook.rules.grammar import KUBELET_VARIABLE, SAFE_VALUE, SHELL_VARIABLE

_SHELL_VARIABLE = re.compile(SHELL_VARIABLE)
# A reference as a whole word part, with the double quotes around it when it has them: a
# resolved value written into a probe is one plain word, so the quotes can go with it.
_QUOTED_SHELL_VARIABLE = re.compile(rf'(?P<quote>")?{SHELL_VARIABLE}(?(quote)")')
# `$$(NAME)` is the kubelet's escape for a literal `$(NAME)`.
_KUBELET_VARIABLE = re.compile(rf"(?<!\$){KUBELET_VARIABLE}")
_SAFE_VALUE = re.compile(SAFE_VALUE)


def expand_kubelet(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``$(NAME)`` replaced as the kubelet does it, for the names the env defines literally."""
    if not env or not any("$(" in element for element in argv):
        return list(argv)

    def value_of(match: re.Match[str]) -> str:
        return env.get(match.group("name"), match.group(0))

    return [
        _KUBELET_VARIABLE.sub(value_of, element) if "$(" in element else element
        for element in argv
    ]


def refers_to_unresolved(word: str) -> bool:
    """Whether an argument, once expanded, still refers to a variable (an option does not
    count: `--timeout=$T` names no host)."""
    return not word.startswith("-") and bool(_SHELL_VARIABLE.search(word))


def expand_in_probe(text: str, env: Mapping[str, str]) -> str:
    """A probe's text with each resolvable reference replaced by its value, quotes and all,
    where the value is one plain word (so the text still parses as the same command)."""

    def value_of(match: re.Match[str]) -> str:
        value = _resolved(match, env)
        return value if value is not None and _SAFE_VALUE.match(value) else match.group(0)

    return _QUOTED_SHELL_VARIABLE.sub(value_of, text)


def _resolved(match: re.Match[str], env: Mapping[str, str]) -> str | None:
    value = env.get(match.group("plain") or match.group("braced"))
    return value if value else match.group("default")


__all__ = ["expand_in_probe", "expand_kubelet", "refers_to_unresolved"]
