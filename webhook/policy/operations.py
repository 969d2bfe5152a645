"""The policy twin's patch operations, as lines of text until the patch decodes them.

The patch's operations are gathered per container and must come out as one flat list, in the
webhook's order. CEL here cannot flatten a list of lists (see policy_program's facts), and a
JSONPatch value cannot be copied from the pod, so each operation travels as a line of text,
"KIND PATH [ARGUMENT...]", the lines of all containers are joined and split again, and the
patch decodes each line (``webhook.policy.mutation.patch_expression``) into a JSONPatch whose
value it builds from literals of the policy and from indexes into its variables.
"""

from __future__ import annotations

from collections.abc import Callable

from webhook.policy.cel import Expr, add, function, sub

# The kinds of operation:
REPLACE_MANAGED_ENV = "R"  # ARGUMENT: the variable's name (a key of managedEnv)
REPLACE_RETARGETED_ENV = "V"  # ARGUMENTS: INIT_CONTAINERS or APP_CONTAINERS, container, entry
REMOVE = "D"
ADD_MANAGED_ENV = "A"  # ARGUMENT: the variable's name
ADD_ENV_LIST = "L"  # a container without env gets all the managed variables at once
REPLACE_COMMAND = "C"  # ARGUMENT: the init container's index (into newCommands)
REPLACE_ARGS = "G"  # ARGUMENT: the init container's index (into newArgs)
REPLACE_APP_COMMAND = "M"  # ARGUMENT: the app container's index (into appNewCommands)
REPLACE_APP_ARGS = "N"  # ARGUMENT: the app container's index (into appNewArgs)
INIT_CONTAINERS = "I"
APP_CONTAINERS = "C"
FIELD_SEPARATOR = " "
OPERATION_SEPARATOR = "\n"
# The fields of a decoded operation.
KIND, PATH, FIRST_ARGUMENT = 0, 1, 2


def operation(kind: str, path: Expr, *arguments: Expr | str) -> Expr:
    parts: list[Expr | str] = [kind + FIELD_SEPARATOR, path]
    for argument in arguments:
        parts += [FIELD_SEPARATOR, argument]
    return add(*parts)


def index_text(index: Expr) -> Expr:
    return function("string", index)


def env_path(container_path: Expr, index: Expr) -> Expr:
    return add(container_path, "/env/", index_text(index))


def init_path(index: Expr) -> Expr:
    return add("/spec/initContainers/", index_text(index))


def container_path(index: Expr) -> Expr:
    return add("/spec/containers/", index_text(index))


def from_the_back(indexes: Expr, body: Callable[[Expr], Expr]) -> Expr:
    """``body`` of each of ``indexes``, last first: removals keep the earlier indexes valid."""
    return indexes.transform_list("position", "ignored", lambda position, _: body(
        indexes[sub(sub(indexes.size(), 1), position)]))
