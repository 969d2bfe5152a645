"""The CEL expression builder: what it writes for each construct, and what it refuses.

The policy's expressions are only ever built through ``webhook.policy.cel``; what they compute is
proven on a real apiserver by tests/e2e/test_policy_equivalence.py. Here: each construct
renders as the CEL it stands for, operands are parenthesised so precedence never decides,
and a variable that would hide another one still in use is refused.
"""

from __future__ import annotations

import pytest

from webhook.policy import cel
from webhook.policy.cel import (
    OBJECT,
    CaptureError,
    add,
    all_of,
    any_of,
    cond,
    let,
    list_of,
    map_of,
    not_,
    string,
    strings,
    variable,
)


def test_string_literals_escape_quotes_backslashes_and_unprintables() -> None:
    assert string('say "hi"\\').text == '"say \\"hi\\"\\\\"'
    assert string("a\nb\x1f\ue000\U0001f600").text == '"a\\nb\\u001f\\ue000\\U0001f600"'


def test_a_let_binds_a_value_once_by_the_map_idiom() -> None:
    expr = let(variable("inits").size(), "count", lambda count: count.gt(0))
    assert expr.text == "[variables.inits.size()].map(count, count > 0)[0]"


def test_macros_name_their_variable_where_it_is_bound() -> None:
    words = variable("words")
    assert words.map("word", lambda word: word.lower_ascii()).text == (
        "variables.words.map(word, word.lowerAscii())")
    assert words.exists("word", lambda word: word.starts_with("-")).text == (
        'variables.words.exists(word, word.startsWith("-"))')
    assert words.transform_list("position", "word", lambda _, word: word,
                                where=lambda position, _: position.gt(0)).text == (
        "variables.words.transformList(position, word, position > 0, word)")


def test_compound_operands_are_parenthesised() -> None:
    a, b, c = variable("a"), variable("b"), variable("c")
    assert all_of(any_of(a, b), c).text == "(variables.a || variables.b) && variables.c"
    assert cond(a, b, cond(b, a, c)).text == (
        "variables.a ? variables.b : (variables.b ? variables.a : variables.c)")
    assert not_(a.eq(b)).text == "!(variables.a == variables.b)"
    assert add(a, b).size().text == "(variables.a + variables.b).size()"
    assert any_of().text == "false" and all_of().text == "true"


def test_sums_are_flattened_and_adjacent_literals_joined() -> None:
    total = add("R ", add("/spec/", cel.function("string", variable("i"))), "/env", " ")
    assert total.text == '"R /spec/" + string(variables.i) + "/env "'


def test_literals_of_lists_maps_and_optionals() -> None:
    assert strings({"b", "a"}).text == '["a", "b"]'
    assert list_of(1, "x", True).text == '[1, "x", true]'
    assert map_of({"k": "v"}).text == '{"k": dyn("v")}'
    assert map_of({"k": "v"}, dynamic=False).text == '{"k": "v"}'
    assert cel.literal({"name": "X", "list": [1]}).text == (
        '{"name": dyn("X"), "list": dyn([dyn(1)])}')
    annotation = OBJECT.field("metadata").optional_field("annotations").optional_index("k")
    assert annotation.or_value("").text == 'object.metadata.?annotations[?"k"].orValue("")'
    assert cel.json_patch("remove", "/spec").text == 'JSONPatch{op: "remove", path: "/spec"}'


def test_a_name_may_be_reused_where_nothing_is_hidden() -> None:
    outer = variable("lists").map("item", lambda item: item.map("item", lambda inner: inner))
    assert outer.text == "variables.lists.map(item, item.map(item, item))"


def test_a_variable_that_would_hide_one_in_use_is_refused() -> None:
    with pytest.raises(CaptureError, match="item"):
        variable("lists").map("item", lambda item: item.map("item", lambda _: item))


def test_reserved_words_and_root_names_cannot_name_variables() -> None:
    for name in ("in", "let", "object", "variables", "two words"):
        with pytest.raises(ValueError, match="cannot name"):
            variable("xs").map(name, lambda x: x)


def test_a_closed_expression_has_no_free_variables() -> None:
    inner: list[cel.Expr] = []
    variable("xs").map("x", lambda x: inner.append(x) or x)
    with pytest.raises(CaptureError, match="unbound"):
        cel.check_closed(inner[0].size())
    assert cel.check_closed(variable("xs").size()).text == "variables.xs.size()"


def test_the_regexes_an_expression_uses_are_recorded() -> None:
    expr = variable("words").exists("w", lambda w: any_of(w.matches("^a"), w.find("b+").eq("")))
    assert expr.regexes == {"^a", "b+"}
