"""Compose's variable interpolation, for the fields the discovery reads.

``$NAME`` and ``${NAME}``; ``${NAME:-default}`` (unset or empty) and ``${NAME-default}``
(unset); ``${NAME:?message}`` and ``${NAME?message}`` (required); ``${NAME:+other}`` and
``${NAME+other}``; ``$$`` for a literal ``$``; defaults and messages may hold references of
their own. The values come from the caller (the process environment over the project's
``.env``, as ``docker compose`` reads them).

Where Compose puts an empty string and a warning for an unset variable without a default,
this refuses: a published port that silently becomes empty is not a port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from webhook.settings import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The operators of ${NAME<op>word}, the two-character ones first.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with every reference replaced; `ConfigError` naming the variable when one is
    unset and has no default, or a reference is malformed."""
    out: list[str] = []
    position = 0
    while (dollar := text.find("$", position)) >= 0:
        out.append(text[position:dollar])
        following = text[dollar + 1:dollar + 2]
        if following == "$":
            out.append("$")
            position = dollar + 2
        elif following == "{":
            end = _closing_brace(text, dollar + 2)
            out.append(_braced(text[dollar + 2:end], variables))
            position = end + 1
        elif (name := _NAME.match(text, dollar + 1)) is not None:
            out.append(_value(name.group(), variables))
            position = name.end()
        else:
            out.append("$")  # a lone dollar, as Compose leaves it
            position = dollar + 1
    out.append(text[position:])
    return "".join(out)


def sole_reference(text: str) -> tuple[str, bool] | None:
    """The variable a value is taken from when it is one reference and nothing else
    (``${MINIO_PASSWORD}``), and whether the reference gives a default; None for anything
    else, so that no part of a literal value is ever mistaken for a name and repeated."""
    text = text.strip()
    if not text.startswith("$") or text.startswith("$$"):
        return None
    if not text.startswith("${"):
        bare = _NAME.fullmatch(text, 1)
        return (bare.group(), False) if bare is not None else None
    try:
        end = _closing_brace(text, 2)
    except ConfigError:
        return None
    name = _NAME.match(text, 2, end)
    if end != len(text) - 1 or name is None:
        return None  # more after the reference, or not a reference
    rest = text[name.end():end]
    if rest and not rest.startswith(_OPERATORS):
        return None
    return name.group(), rest.startswith((":-", "-"))


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise ConfigError(f"unclosed ${{ in {text!r}")


def _braced(expression: str, variables: Mapping[str, str]) -> str:
    name_match = _NAME.match(expression)
    if name_match is None:
        raise ConfigError(f"${{{expression}}} is not a variable reference")
    name, rest = name_match.group(), expression[name_match.end():]
    if not rest:
        return _value(name, variables)
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise ConfigError(f"${{{expression}}}: Compose has no such substitution")
    word = rest[len(operator):]
    value = variables.get(name)
    # ":" makes an empty value count as unset, as in the shell.
    missing = value is None or (operator.startswith(":") and value == "")
    kind = operator[-1]
    if kind == "-":
        return interpolate(word, variables) if missing else str(value)
    if kind == "?":
        if missing:
            # The author's message as written: interpolated, it could repeat another value.
            raise ConfigError(f"variable {name} is required: {word}")
        return str(value)
    return "" if missing else interpolate(word, variables)


def _value(name: str, variables: Mapping[str, str]) -> str:
    value = variables.get(name)
    if value is None:
        raise ConfigError(f"variable {name} is not set and has no default")
    return value
