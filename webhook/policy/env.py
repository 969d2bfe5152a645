"""The policy twin's env rules, as CEL: mutate.Rules._set_env and _uses_backend.

Managed variables replaced in place at their first index, later duplicates removed from the
back, other variables whose value is the address of a managed host retargeted in place
(``retarget_value``), absent managed variables appended to the containers that use the
backend; and the names of the variables changed, for the status annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from webhook.policy.cel import (
    EMPTY_LIST,
    TRUE,
    Expr,
    add,
    all_of,
    any_of,
    cond,
    function,
    let,
    list_of,
    not_,
    variable,
)
from webhook.policy.operations import (
    ADD_ENV_LIST,
    ADD_MANAGED_ENV,
    REMOVE,
    REPLACE_MANAGED_ENV,
    REPLACE_RETARGETED_ENV,
    env_path,
    from_the_back,
    index_text,
    operation,
)
from webhook.policy.regex import ANY_SPACE_RE, host_search_re
from webhook.policy.urls import retargeted_address
from webhook.rules.grammar import ADDRESS_SEPARATOR
from webhook.settings import EnvScope, Service, Settings


def env_of(container: Expr) -> Expr:
    return container.optional_field("env").or_value(EMPTY_LIST)


def command_of(container: Expr) -> Expr:
    return container.optional_field("command").or_value(EMPTY_LIST)


def args_of(container: Expr) -> Expr:
    return container.optional_field("args").or_value(EMPTY_LIST)


def as_strings(items: Expr) -> Expr:
    """The pod's typed list as a plain list of strings, comparable with the policy's own."""
    return items.map("element", lambda element: element)


def is_native_sidecar(container: Expr) -> Expr:
    """An init container with restartPolicy Always is served like an app container."""
    return container.optional_field("restartPolicy").or_value("").eq("Always")


def is_managed(entry: Expr) -> Expr:
    return entry.field("name").is_in(variable("managedEnv"))


def first_of_its_name(env: Expr, position: Expr, entry: Expr) -> Expr:
    return env.map("other", lambda other: other.field("name")).index_of(
        entry.field("name")).eq(position)


def absent_names(env: Expr) -> Expr:
    return variable("managedOrder").filter("name", lambda name: not_(env.exists(
        "entry", lambda entry: entry.field("name").eq(name))))


def replaced_here(env: Expr, values: Expr) -> Callable[[Expr, Expr], Expr]:
    """Whether the entry at a position of ``env`` is replaced: a managed one at its first
    index that differs from the managed entry, or another whose value is retargeted."""

    def test(position: Expr, entry: Expr) -> Expr:
        return any_of(
            all_of(is_managed(entry), first_of_its_name(env, position, entry),
                   entry.ne(variable("managedEnv")[entry.field("name")])),
            all_of(not_(is_managed(entry)), values[position].ne("")),
        )

    return test


def duplicate_test(env: Expr) -> Callable[[Expr, Expr], Expr]:
    return lambda position, entry: all_of(is_managed(entry),
                                          not_(first_of_its_name(env, position, entry)))


def env_operations(container: Expr, index: Expr, path: Expr, values: Expr, kind: str, *,
                   add_absent: Expr) -> Expr:
    """mutate.Rules._set_env as operations, in its order: managed entries replaced at their
    first index and other entries whose value is a retargeted address (``values``, see
    retarget_value) replaced in place, in the order of the env; later duplicates of managed
    ones removed from the back; absent ones appended when ``add_absent`` holds."""
    env = env_of(container)
    replaced = env.transform_list(
        "position", "entry",
        lambda position, entry: cond(
            is_managed(entry),
            operation(REPLACE_MANAGED_ENV, env_path(path, position), entry.field("name")),
            operation(REPLACE_RETARGETED_ENV, env_path(path, position), kind, index_text(index),
                      index_text(position))),
        where=replaced_here(env, values),
    )
    duplicates = let(
        env.transform_list("position", "entry", lambda position, _: position,
                           where=duplicate_test(env)),
        "duplicate_positions",
        lambda positions: from_the_back(
            positions, lambda position: operation(REMOVE, env_path(path, position))),
    )
    absent = let(absent_names(env), "absent", lambda names: cond(
        env.size().gt(0),
        names.map("name", lambda name: operation(ADD_MANAGED_ENV, add(path, "/env/-"), name)),
        cond(names.size().gt(0), list_of(operation(ADD_ENV_LIST, add(path, "/env"))),
             EMPTY_LIST)))
    return add(replaced, duplicates, cond(add_absent, absent, EMPTY_LIST))


def env_changes(container: Expr, values: Expr, *, add_absent: Expr) -> Expr:
    """The names _set_env reports as changed, in its order, joined with commas."""
    env = env_of(container)
    replaced = env.transform_list("position", "entry", lambda _, entry: entry.field("name"),
                                  where=replaced_here(env, values))
    duplicates = env.transform_list("position", "entry", lambda _, entry: entry.field("name"),
                                    where=duplicate_test(env))
    return add(replaced, duplicates, cond(add_absent, absent_names(env), EMPTY_LIST)).join(",")


def retarget_value(value: Expr, services: Sequence[Service]) -> Expr:
    """ProgramReader.retarget_value: an env value's addresses of managed hosts pointed at the
    external address, or "" when nothing changes. Each comma-separated item is read from its
    start as urls.value_addresses reads it (see webhook.policy.urls): a bucket, a path or a
    user name that spells a managed host stays as written."""
    rewritten = let(value.split(ADDRESS_SEPARATOR).map(
        "item", lambda item: retargeted_address(item, services)).join(ADDRESS_SEPARATOR),
        "rewritten", lambda rewritten: cond(rewritten.eq(value), "", rewritten))
    return cond(any_of(not_(value.contains(":")), value.matches(ANY_SPACE_RE)), "", rewritten)


def retargeted_values(containers: Expr, services: Sequence[Service]) -> Expr:
    """Per container, per env entry: the retargeted value of a literal one, else ""."""
    return containers.map("container", lambda container: env_of(container).map(
        "entry", lambda entry: cond(
            function("has", entry.field("valueFrom")), "",
            retarget_value(entry.optional_field("value").or_value(""), services))))


def uses_backend(settings: Settings, container: Expr) -> Expr:
    """mutate.Rules._uses_backend: the pod waited for a managed service, or the container
    carries a managed variable, or its env, command or args name a managed host
    (``add_env_to: all``: every container)."""
    if settings.add_env_to is EnvScope.ALL:
        return TRUE
    texts = add(command_of(container), args_of(container),
                env_of(container).map("entry", lambda entry: entry.optional_field("value")
                                      .or_value("")))
    return any_of(
        variable("podWaited"),
        env_of(container).exists("entry", is_managed),
        texts.exists("text", lambda text: any_of(
            *(text.matches(host_search_re(service)) for service in settings.services))),
    )
