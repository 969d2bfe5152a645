"""Variables in a program, resolved in the policy twin as the rules resolve them (CEL).

The twin of ``webhook.rules.variables``: ``$(NAME)`` in command and args expanded as the kubelet
does, from the container's literal env; ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` in a
script's words resolved against the same env and the default (reading), and written into a
probe's text where the value is one plain word (retargeting). CEL has no regex replace: a text is
cut into reference tokens and the rest (``webhook.policy.regex``), the references resolved, and
the tokens joined again.
"""

from __future__ import annotations

from webhook.policy.cel import Expr, Operand, all_of, any_of, cond, function, let, sub
from webhook.policy.regex import (
    KUBELET_TOKENS_RE,
    KUBELET_WHOLE_RE,
    QUOTED_VARIABLE_WHOLE_RE,
    READ_TOKENS_RE,
    SAFE_VALUE_RE,
    TEXT_TOKENS_RE,
    VARIABLE_DEFAULT_RE,
    VARIABLE_NAME_RE,
    VARIABLE_WHOLE_RE,
)


def literal_values(env: Expr, name: Operand) -> Expr:
    """The literal values of the variable ``name`` in ``env``, in order."""
    return env.filter("entry", lambda entry: all_of(
        entry.field("name").eq(name), function("has", entry.field("value")))).map(
        "entry", lambda entry: entry.field("value"))


def resolution(token: Expr, env: Expr) -> Expr:
    """What a reference token stands for: the last literal value of its variable when that is
    not empty, else its default; "" for neither (variables._resolved, where None and "" both
    leave the reference as written)."""

    def chosen(name: Expr) -> Expr:
        # Only a braced reference can hold a `-`, and then it starts the default.
        default = cond(token.contains("-"), token.find(VARIABLE_DEFAULT_RE).substring(1), "")
        return let(literal_values(env, name), "values", lambda values: let(
            cond(values.size().gt(0), values.last(), ""), "value",
            lambda value: cond(value.ne(""), value, default)))

    return let(token.find(VARIABLE_NAME_RE), "variable_name", chosen)


def kubelet_expanded(element: Expr, env: Expr) -> Expr:
    """variables.expand_kubelet for one element of command + args: `$(NAME)` replaced by the
    last literal value of NAME (`$$(` escapes it), any other reference left as written."""

    def value(token: Expr) -> Expr:
        name = token.substring(2, sub(token.size(), 1))
        return let(literal_values(env, name), "values",
                   lambda values: cond(values.size().gt(0), values.last(), token))

    tokens = element.find_all(KUBELET_TOKENS_RE).map(
        "token", lambda token: cond(token.matches(KUBELET_WHOLE_RE), value(token), token)
    ).join("")
    return cond(element.contains("$("), tokens, element)


def expanded_word(word: Expr, in_script: Expr, env: Expr) -> Expr:
    """Each reference in a script word resolved from the literal env (then its default);
    unresolved ones as written."""

    def value(token: Expr) -> Expr:
        return let(resolution(token, env), "resolved",
                   lambda resolved: cond(resolved.ne(""), resolved, token))

    tokens = word.find_all(READ_TOKENS_RE).map(
        "token", lambda token: cond(token.matches(VARIABLE_WHOLE_RE), value(token), token)
    ).join("")
    return cond(all_of(in_script, word.contains("$")), tokens, word)


def expanded_text(text: Expr, env: Expr) -> Expr:
    """variables.expand_in_probe: each reference (with the quotes around it) replaced by its
    value where that is one plain word."""

    def value(token: Expr) -> Expr:
        return let(resolution(token, env), "resolved", lambda resolved: cond(
            all_of(resolved.ne(""), resolved.matches(SAFE_VALUE_RE)), resolved, token))

    def is_reference(token: Expr) -> Expr:
        return any_of(token.matches(VARIABLE_WHOLE_RE), token.matches(QUOTED_VARIABLE_WHOLE_RE))

    tokens = text.find_all(TEXT_TOKENS_RE).map(
        "token", lambda token: cond(is_reference(token), value(token), token)).join("")
    return cond(text.contains("$"), tokens, text)


__all__ = ["expanded_text", "expanded_word", "kubelet_expanded", "literal_values", "resolution"]
