"""A small builder for the CEL expressions of the policy twin.

The policy's expressions are built from Python values of type ``Expr``, never by pasting
text: literals (``string``, ``integer``, ``strings``, ``list_of``, ``map_of``), the root
identifiers (``OBJECT``, ``variable``), method calls and fields on an ``Expr``, the
comprehension macros (``map``, ``filter``, ``exists``, ``all``, ``transform_list``), operators
(``eq``, ``any_of``, ``all_of``, ``add``, ``not_``...), conditionals (``cond``) and ``let``.

A macro takes the name of its CEL variable and a Python function that builds the body from
that variable, so each variable is named once, where it is bound, and is referred to as a
Python value after that. The builder parenthesises every compound operand, so precedence is
never a question, and it refuses an inner variable that would hide an outer one of the same
name that its body still refers to (``CaptureError``): a reused name is safe or rejected.

Nothing here knows the policy's rules; ``webhook.policy.program`` and
``webhook.policy.mutation`` say what the expressions compute.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# CEL reserves these words (the language definition's reserved identifiers and keywords): a
# variable named so would not parse.
RESERVED = frozenset({
    "as", "break", "const", "continue", "else", "false", "for", "function", "if", "import",
    "in", "let", "loop", "namespace", "null", "package", "return", "true", "var", "void",
    "while",
})
# Names the apiserver binds at the top level, which a comprehension variable must not hide.
ROOT_NAMES = frozenset({"object", "oldObject", "request", "params", "namespaceObject",
                        "variables", "authorizer"})

_binding_ids = itertools.count()


class CaptureError(ValueError):
    """A variable would hide another one of the same name that the body refers to."""


@dataclass(frozen=True)
class Expr:
    """A CEL expression: its text, whether it needs no parentheses as an operand, and the
    comprehension variables it refers to (name and binding, for the capture check)."""

    text: str
    atomic: bool = True
    free: frozenset[tuple[str, int]] = field(default=frozenset())
    # The regular expressions it matches with, for the checks of their dialect.
    regexes: frozenset[str] = field(default=frozenset())
    # For a string literal, its value; for a sum, its terms: ``add`` flattens sums and joins
    # adjacent literals, so a concatenation costs one step per piece that is computed.
    string_value: str | None = None
    terms: tuple[Expr, ...] = ()

    # --- member access ---------------------------------------------------------------

    def _receiver(self) -> str:
        return self.text if self.atomic else f"({self.text})"

    def field(self, name: str) -> Expr:
        return Expr(f"{self._receiver()}.{name}", **_meta(self))

    def optional_field(self, name: str) -> Expr:
        """``x.?name``: an optional, empty when the field is absent."""
        return Expr(f"{self._receiver()}.?{name}", **_meta(self))

    def optional_index(self, key: Operand) -> Expr:
        """``x[?key]``: an optional, empty when the key is absent."""
        key_expr = value_of(key)
        return Expr(f"{self._receiver()}[?{key_expr.text}]", **_meta(self, key_expr))

    def __getitem__(self, key: Operand) -> Expr:
        key_expr = value_of(key)
        return Expr(f"{self._receiver()}[{key_expr.text}]", **_meta(self, key_expr))

    def call(self, method: str, *arguments: Operand) -> Expr:
        """``x.method(arguments...)``."""
        values = [value_of(argument) for argument in arguments]
        text = f"{self._receiver()}.{method}({', '.join(v.text for v in values)})"
        return Expr(text, **_meta(self, *values))

    # --- the methods the policy uses -------------------------------------------------

    def or_value(self, default: Operand) -> Expr:
        return self.call("orValue", default)

    def size(self) -> Expr:
        return self.call("size")

    def contains(self, text: Operand) -> Expr:
        return self.call("contains", text)

    def starts_with(self, text: Operand) -> Expr:
        return self.call("startsWith", text)

    def ends_with(self, text: Operand) -> Expr:
        return self.call("endsWith", text)

    def matches(self, regex: str) -> Expr:
        """Whether the RE2 ``regex`` matches anywhere in the string (anchors say otherwise)."""
        return _with_regex(self.call("matches", string(regex)), regex)

    def find(self, regex: str) -> Expr:
        """The leftmost match of ``regex``, "" for none (Kubernetes' regex library)."""
        return _with_regex(self.call("find", string(regex)), regex)

    def find_all(self, regex: str) -> Expr:
        return _with_regex(self.call("findAll", string(regex)), regex)

    def split(self, separator: Operand) -> Expr:
        return self.call("split", separator)

    def join(self, separator: Operand | None = None) -> Expr:
        return self.call("join") if separator is None else self.call("join", separator)

    def replace(self, old: Operand, new: Operand) -> Expr:
        return self.call("replace", old, new)

    def substring(self, start: Operand, end: Operand | None = None) -> Expr:
        return self.call("substring", start) if end is None else self.call("substring", start,
                                                                            end)

    def lower_ascii(self) -> Expr:
        return self.call("lowerAscii")

    def upper_ascii(self) -> Expr:
        return self.call("upperAscii")

    def trim(self) -> Expr:
        return self.call("trim")

    def index_of(self, item: Operand) -> Expr:
        return self.call("indexOf", item)

    def last_index_of(self, item: Operand) -> Expr:
        return self.call("lastIndexOf", item)

    def last(self) -> Expr:
        """The last element of a list that is known not to be empty."""
        return self[sub(self.size(), 1)]

    # --- comprehension macros --------------------------------------------------------

    def map(self, name: str, body: Body) -> Expr:
        return self._macro("map", name, body)

    def filter(self, name: str, body: Body) -> Expr:
        return self._macro("filter", name, body)

    def exists(self, name: str, body: Body) -> Expr:
        return self._macro("exists", name, body)

    def all(self, name: str, body: Body) -> Expr:
        return self._macro("all", name, body)

    def transform_list(self, index: str, value: str, body: Body2,
                       where: Body2 | None = None) -> Expr:
        """``transformList(index, value, [where,] body)``: the elements for which ``where``
        holds, each mapped by ``body``; both see the index and the element."""
        index_var, value_var = _variable(index), _variable(value)
        parts = []
        if where is not None:
            parts.append(value_of(where(index_var, value_var)))
        parts.append(value_of(body(index_var, value_var)))
        free = _bound(frozenset().union(*(p.free for p in parts)), index_var, value_var)
        text = f"{self._receiver()}.transformList({index}, {value}, " + ", ".join(
            p.text for p in parts) + ")"
        return Expr(text, free=self.free | free, regexes=_meta(self, *parts)["regexes"])

    def _macro(self, macro: str, name: str, body: Body) -> Expr:
        variable_expr = _variable(name)
        built = value_of(body(variable_expr))
        free = _bound(built.free, variable_expr)
        return Expr(f"{self._receiver()}.{macro}({name}, {built.text})", free=self.free | free,
                    regexes=self.regexes | built.regexes)

    # --- operators -------------------------------------------------------------------

    def eq(self, other: Operand) -> Expr:
        return _binary(self, "==", other)

    def ne(self, other: Operand) -> Expr:
        return _binary(self, "!=", other)

    def lt(self, other: Operand) -> Expr:
        return _binary(self, "<", other)

    def le(self, other: Operand) -> Expr:
        return _binary(self, "<=", other)

    def gt(self, other: Operand) -> Expr:
        return _binary(self, ">", other)

    def ge(self, other: Operand) -> Expr:
        return _binary(self, ">=", other)

    def is_in(self, collection: Operand) -> Expr:
        """``x in collection``: membership in a list, or a key of a map."""
        return _binary(self, "in", collection)


Operand = Expr | str | int | bool
Body = Callable[[Expr], Operand]
Body2 = Callable[[Expr, Expr], Operand]


def value_of(operand: Operand) -> Expr:
    """An Expr as it is; a Python string, integer or boolean as its CEL literal."""
    if isinstance(operand, Expr):
        return operand
    if isinstance(operand, bool):
        return TRUE if operand else FALSE
    if isinstance(operand, int):
        return integer(operand)
    return string(operand)


def _operand(expr: Expr) -> str:
    return expr.text if expr.atomic else f"({expr.text})"


def _meta(*exprs: Expr) -> dict[str, Any]:
    """What a compound expression inherits from its parts: free variables and regexes."""
    return {"free": frozenset().union(*(e.free for e in exprs)),
            "regexes": frozenset().union(*(e.regexes for e in exprs))}


def _with_regex(expr: Expr, regex: str) -> Expr:
    return Expr(expr.text, free=expr.free, regexes=expr.regexes | {regex})


def _binary(left: Operand, operator: str, right: Operand) -> Expr:
    lhs, rhs = value_of(left), value_of(right)
    return Expr(f"{_operand(lhs)} {operator} {_operand(rhs)}", atomic=False,
                **_meta(lhs, rhs))


def _variable(name: str) -> Expr:
    if name in RESERVED or name in ROOT_NAMES or not name.isidentifier():
        raise ValueError(f"{name!r} cannot name a CEL variable")
    return Expr(name, free=frozenset({(name, next(_binding_ids))}))


def _bound(free: frozenset[tuple[str, int]], *variables: Expr) -> frozenset[tuple[str, int]]:
    """``free`` without ``variables``; refuses a body that refers to another variable of the
    same name, which the new binding would hide."""
    for variable_expr in variables:
        (own,) = variable_expr.free
        hidden = [ref for ref in free if ref[0] == own[0] and ref != own]
        if hidden:
            raise CaptureError(f"the variable {own[0]!r} would hide an outer one of that name")
        free = free - {own}
    return free


# --- literals and roots ----------------------------------------------------------------------

TRUE = Expr("true")
FALSE = Expr("false")
OBJECT = Expr("object")
EMPTY_LIST = Expr("[]")


def variable(name: str) -> Expr:
    """``variables.name``: a variable of the policy (see MutatingAdmissionPolicy.variables)."""
    return Expr(f"variables.{name}")


def string(text: str) -> Expr:
    """A double-quoted string literal: backslash, quote and anything unprintable escaped."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return Expr('"' + "".join(out) + '"', string_value=text)


def integer(number: int) -> Expr:
    return Expr(str(number)) if number >= 0 else Expr(str(number), atomic=False)


def list_of(*items: Operand) -> Expr:
    values = [value_of(item) for item in items]
    return Expr("[" + ", ".join(v.text for v in values) + "]", **_meta(*values))


def strings(values: Iterable[str]) -> Expr:
    """A sorted list literal of strings (for ``in`` tests against a word list)."""
    return list_of(*(string(value) for value in sorted(values)))


def map_of(entries: Mapping[str, Operand], *, dynamic: bool = True) -> Expr:
    """A map literal with string keys; values wrapped in ``dyn`` unless ``dynamic`` is false
    (Kubernetes CEL requires homogeneous literals, and a string next to a map is not)."""
    values = {key: value_of(value) for key, value in entries.items()}
    wrap = "dyn({})" if dynamic else "{}"
    text = "{" + ", ".join(
        f"{string(k).text}: {wrap.format(v.text)}" for k, v in values.items()) + "}"
    return Expr(text, **_meta(*values.values()))


def literal(value: Any) -> Expr:
    """A JSON-like value (strings, booleans, integers, maps, lists) as a CEL literal."""
    if isinstance(value, str | bool | int):
        return value_of(value)
    if isinstance(value, Mapping):
        return map_of({key: literal(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return list_of(*(function("dyn", literal(item)) for item in value))
    raise TypeError(f"no CEL literal for {type(value).__name__}")


def function(name: str, *arguments: Operand) -> Expr:
    """A global function call: ``string(i)``, ``int(x)``, ``has(x.f)``, ``dyn(x)``."""
    values = [value_of(argument) for argument in arguments]
    return Expr(f"{name}({', '.join(v.text for v in values)})", **_meta(*values))


def json_patch(op: str, path: Operand, value: Operand | None = None) -> Expr:
    """A ``JSONPatch{op, path[, value]}`` object of a MutatingAdmissionPolicy."""
    fields = [("op", value_of(op)), ("path", value_of(path))]
    if value is not None:
        fields.append(("value", value_of(value)))
    text = "JSONPatch{" + ", ".join(f"{name}: {v.text}" for name, v in fields) + "}"
    return Expr(text, **_meta(*(v for _, v in fields)))


# --- composition ------------------------------------------------------------------------------


def let(value: Operand, name: str, body: Body) -> Expr:
    """``body`` with ``name`` bound to ``value``, evaluated once: ``[value].map(name, body)[0]``
    (CEL has no ``let``, and the Kubernetes CEL of 1.34 no ``cel.bind``)."""
    return list_of(value).map(name, body)[0]


def cond(test: Operand, then: Operand, otherwise: Operand) -> Expr:
    """``test ? then : otherwise``."""
    parts = [value_of(test), value_of(then), value_of(otherwise)]
    text = f"{_operand(parts[0])} ? {_operand(parts[1])} : {_operand(parts[2])}"
    return Expr(text, atomic=False, **_meta(*parts))


def _chain(operator: str, operands: Iterable[Operand], empty: Expr) -> Expr:
    values = [value_of(operand) for operand in operands]
    if not values:
        return empty
    if len(values) == 1:
        return values[0]
    return Expr(f" {operator} ".join(_operand(v) for v in values), atomic=False,
                **_meta(*values))


def any_of(*operands: Operand) -> Expr:
    """``a || b || ...``; false for none."""
    return _chain("||", operands, FALSE)


def all_of(*operands: Operand) -> Expr:
    """``a && b && ...``; true for none."""
    return _chain("&&", operands, TRUE)


def add(*operands: Operand) -> Expr:
    """``a + b + ...``: sums, string and list concatenation (associative, so nested sums are
    flattened and adjacent string literals joined)."""
    terms: list[Expr] = []
    for operand in operands:
        value = value_of(operand)
        for term in value.terms or (value,):
            last = terms[-1] if terms else None
            if (last is not None and last.string_value is not None
                    and term.string_value is not None):
                terms[-1] = string(last.string_value + term.string_value)
            else:
                terms.append(term)
    total = _chain("+", terms, integer(0))
    return total if len(terms) < 2 else Expr(total.text, atomic=False, free=total.free,
                                             regexes=total.regexes, terms=tuple(terms))


def sub(left: Operand, right: Operand) -> Expr:
    return _binary(left, "-", right)


def not_(operand: Operand) -> Expr:
    value = value_of(operand)
    return Expr(f"!{_operand(value)}", atomic=False, **_meta(value))


def replaced_all(text: Expr, replacements: Iterable[tuple[str, str]]) -> Expr:
    """``text`` with each literal replacement applied in turn (CEL has no regex replace)."""
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def check_closed(expr: Expr) -> Expr:
    """``expr``, which must refer to no comprehension variable it does not bind itself."""
    if expr.free:
        names = sorted({name for name, _ in expr.free})
        raise CaptureError(f"unbound CEL variables: {', '.join(names)}")
    return expr


__all__ = [
    "EMPTY_LIST", "FALSE", "OBJECT", "TRUE", "CaptureError", "Expr", "add", "all_of", "any_of",
    "check_closed", "cond", "function", "integer", "json_patch", "let", "list_of", "literal",
    "map_of", "not_", "replaced_all", "string", "strings", "sub", "value_of", "variable",
]
