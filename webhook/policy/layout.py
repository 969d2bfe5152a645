"""Layout of generated CEL: long expressions broken at brackets, so the YAML stays readable.

Only white space outside string literals changes; what the expression means does not.
"""

from __future__ import annotations

from typing import Any

_OPENERS = {"(": ")", "[": "]", "{": "}"}


def _atoms(expression: str) -> list[str]:
    """Brackets, commas, string literals (whole) and the text between them."""
    atoms: list[str] = []
    text = ""
    index = 0
    while index < len(expression):
        char = expression[index]
        if char in "\"'":
            end = index + 1
            while expression[end] != char:
                end += 2 if expression[end] == "\\" else 1
            text += expression[index : end + 1]
            index = end + 1
            continue
        if char in _OPENERS or char in _OPENERS.values() or char == ",":
            if text:
                atoms.append(text)
            atoms.append(char)
            text = ""
        else:
            text += char
        index += 1
    if text:
        atoms.append(text)
    return atoms


def _group(atoms: list[str], start: int) -> tuple[list[Any], int]:
    """Nest ``atoms`` from ``start`` up to the closing bracket into lists; returns the end."""
    items: list[Any] = []
    index = start
    while index < len(atoms):
        atom = atoms[index]
        if atom in _OPENERS:
            inner, index = _group(atoms, index + 1)
            items.append([atom, *inner])
        elif atom in _OPENERS.values():
            items.append(atom)
            return items, index + 1
        else:
            items.append(atom)
            index += 1
    return items, index


def _flat(items: list[Any]) -> str:
    return "".join(_flat(item) if isinstance(item, list) else item for item in items)


def _render(items: list[Any], indent: int, width: int) -> str:
    """A bracketed group on one line if it fits, else one comma-separated element a line."""
    flat = _flat(items)
    if indent + len(flat) <= width or not isinstance(items[0], str) or items[0] not in _OPENERS:
        return "".join(
            _render(item, indent, width) if isinstance(item, list) else item for item in items
        )
    pad = " " * (indent + 2)
    lines: list[str] = []
    current = ""
    for item in items[1:-1]:
        if item == ",":
            lines.append(current.strip() + ",")
            current = ""
        elif isinstance(item, list):
            current += _render(item, indent + 2, width)
        else:
            current += item
    if current.strip():
        lines.append(current.strip())
    body = "\n".join(pad + line for line in lines)
    return f"{items[0]}\n{body}\n{' ' * indent}{items[-1]}"


def pretty(expression: str, width: int = 96) -> str:
    """``expression`` laid out on several lines; only white space outside strings changes."""
    items, _ = _group(_atoms(expression), 0)
    return "".join(
        _render(item, 0, width) if isinstance(item, list) else item for item in items
    )
