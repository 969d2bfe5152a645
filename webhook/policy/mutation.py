"""The policy twin's mutation: its variables, its JSON Patch and its match condition, in CEL.

``mutate.Rules`` step by step: which init containers are waiters (from the facts of
``webhook.policy.program``), their probes retargeted (both per container in
``webhook.policy.init_programs``), env set (``webhook.policy.env``), and the
``backend-injector/status`` annotation merged with an earlier one (read back with regexes,
since CEL cannot parse JSON). The variables come in groups, in the order the policy lists
them: the pod read, its programs read, the waiters, the retargeting, the patch, the status.

The patch is built like the webhook's: per-index operations in the same order (init
containers in place, removals from the back, app containers, the annotation), carried as
``webhook.policy.operations`` lines. Every value in it is a literal of the policy or a list
of strings: the pod reaches CEL as typed values, and a sub-object copied from it cannot be
marshalled into a patch. Every operation is guarded on equality, so a second pass changes
nothing; that matters more than for the webhook, since the apiserver runs an ``IfNeeded``
policy again on its own output whenever it changed the pod.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from webhook.policy.cel import (
    EMPTY_LIST,
    OBJECT,
    Expr,
    add,
    all_of,
    any_of,
    check_closed,
    cond,
    function,
    json_patch,
    let,
    list_of,
    literal,
    map_of,
    not_,
    string,
    strings,
    sub,
    variable,
)
from webhook.policy.env import (
    args_of,
    as_strings,
    command_of,
    env_changes,
    env_operations,
    init_env,
    is_native_sidecar,
    retargeted_values,
    uses_backend,
)
from webhook.policy.init_programs import (
    is_removed,
    new_argv,
    program_facts,
    program_segments,
    retarget_input,
    retarget_output,
)
from webhook.policy.operations import (
    ADD_ENV_LIST,
    ADD_MANAGED_ENV,
    APP_CONTAINERS,
    FIELD_SEPARATOR,
    FIRST_ARGUMENT,
    INIT_CONTAINERS,
    KIND,
    OPERATION_SEPARATOR,
    PATH,
    REMOVE,
    REPLACE_ARGS,
    REPLACE_COMMAND,
    REPLACE_MANAGED_ENV,
    REPLACE_RETARGETED_ENV,
    container_path,
    from_the_back,
    index_text,
    init_path,
    operation,
)
from webhook.policy.program import (
    SERVICE_TAG_PREFIX,
    CommandRecord,
    command_record,
    kubelet_expanded,
    retargetable_probe,
    script_index,
)
from webhook.policy.regex import (
    COMPUTED_RE,
    QUOTED_NAME_RE,
    STATUS_SHAPE_RE,
    status_list_re,
)
from webhook.rules.mutate import (
    INJECT_KEY,
    OPT_OUT_VALUES,
    STATUS_KEY,
    STATUS_LISTS,
    managed_env_entries,
)
from webhook.rules.status import escape_pointer
from webhook.settings import Service, Settings

# --- the operations -------------------------------------------------------------------------


def sidecar_uses(settings: Settings, container: Expr) -> Expr:
    """Whether an init container gets the absent variables: only native sidecars do, as app
    containers, when they use the backend (add_env_to)."""
    return all_of(is_native_sidecar(container), uses_backend(settings, container))


def is_kept(index: Expr, _: Expr) -> Expr:
    return not_(variable("removeInit")[index])


def argv_words(index: Expr, container: Expr, *, of_command: bool) -> Expr:
    """The new program's words where the written command was (``of_command``), or the rest:
    an init container's new command or its new args."""
    command_size = command_of(container).size()
    return variable("newArgvs")[index].transform_list(
        "position", "element", lambda _, element: element,
        where=lambda position, _: (position.lt(command_size) if of_command
                                   else position.ge(command_size)))


def init_operations(settings: Settings, index: Expr, container: Expr) -> Expr:
    """A kept init container's operations: its command, its args, its env."""
    command = cond(variable("newCommands")[index].ne(as_strings(command_of(container))),
                   list_of(operation(REPLACE_COMMAND, add(init_path(index), "/command"),
                                     index_text(index))), EMPTY_LIST)
    args = cond(variable("newArgs")[index].ne(as_strings(args_of(container))),
                list_of(operation(REPLACE_ARGS, add(init_path(index), "/args"),
                                  index_text(index))), EMPTY_LIST)
    env = env_operations(container, index, init_path(index), variable("initValues")[index],
                         INIT_CONTAINERS, add_absent=sidecar_uses(settings, container))
    return add(command, args, env).join(OPERATION_SEPARATOR)


def container_operations(settings: Settings, index: Expr, container: Expr) -> Expr:
    """An app container's operations: its env."""
    return env_operations(container, index, container_path(index), variable("appValues")[index],
                          APP_CONTAINERS, add_absent=uses_backend(settings, container)
                          ).join(OPERATION_SEPARATOR)


def removals() -> Expr:
    """The removals: the whole list when every init container goes, else each one from the
    back, so the indexes still to remove stay valid."""
    remove_init = variable("removeInit")
    return cond(
        all_of(remove_init.all("removed", lambda removed: removed),
               variable("inits").size().gt(0)),
        string(REMOVE + FIELD_SEPARATOR + "/spec/initContainers"),
        let(variable("inits").transform_list("index", "container", lambda index, _: index,
                                             where=lambda index, _: remove_init[index]),
            "removed_indexes", lambda indexes: from_the_back(
                indexes, lambda index: operation(REMOVE, init_path(index))
            ).join(OPERATION_SEPARATOR)),
    )


# --- the status -----------------------------------------------------------------------------


def json_list(names: Expr) -> Expr:
    """The names as a JSON array of strings, as the webhook writes them in the annotation."""
    return add("[", names.map("name", lambda name: add('"', name, '"')).join(","), "]")


def earlier_status(key: str) -> Expr:
    """The names under ``key`` in an earlier status annotation (our own compact JSON)."""
    found = variable("currentStatus").find(status_list_re(key))
    return let(found, "found", lambda found: cond(
        found.eq(""), EMPTY_LIST,
        found.substring(found.index_of("[")).find_all(QUOTED_NAME_RE).map(
            "quoted", lambda quoted: quoted.substring(1, sub(quoted.size(), 1)))))


def merged(earlier: Expr, now: Expr) -> Expr:
    """The earlier names, then the new ones not among them."""
    return add(earlier, now.filter("name", lambda name: not_(name.is_in(earlier))))


def env_changed(settings: Settings) -> Expr:
    """The names of the variables changed, kept init containers first, with repeats."""
    in_inits = variable("inits").transform_list(
        "index", "container", lambda index, container: env_changes(
            container, variable("initValues")[index],
            add_absent=sidecar_uses(settings, container)),
        where=is_kept).join(",")
    in_containers = variable("containers").transform_list(
        "index", "container", lambda index, container: env_changes(
            container, variable("appValues")[index],
            add_absent=uses_backend(settings, container))).join(",")
    return list_of(in_inits, in_containers).join(",").split(",").filter(
        "name", lambda name: name.ne(""))


def init_names(where: Callable[[Expr, Expr], Expr]) -> Expr:
    """The names of the init containers ``where`` holds for."""
    return variable("inits").transform_list(
        "index", "container", lambda _, container: container.field("name"), where=where)


def status_json() -> Expr:
    """The status annotation: each list merged with the earlier one, as compact JSON."""
    parts: list[Expr | str] = []
    for position, key in enumerate(STATUS_LISTS):
        parts += [("{" if position == 0 else ",") + f'"{key}":',
                  json_list(merged(variable("earlier")[position], variable(key + "Names")))]
    return add(*parts, "}")


# --- the variables, in order (each may use the ones before it) ------------------------------

Variables = list[tuple[str, Expr]]


def pod_variables(settings: Settings) -> Variables:
    """The managed env, the containers, and each init container's program as written and as
    the kubelet runs it."""
    entries = managed_env_entries(settings)
    return [
        ("managedEnv", map_of({name: literal(entry) for name, entry in entries.items()})),
        ("managedOrder", list_of(*(string(name) for name in entries))),
        ("inits", OBJECT.field("spec").optional_field("initContainers").or_value(EMPTY_LIST)),
        ("containers", OBJECT.field("spec").optional_field("containers").or_value(EMPTY_LIST)),
        ("written", variable("inits").map("container", lambda container: add(
            command_of(container), args_of(container)))),
        # The program as the kubelet runs it: `$(NAME)` expanded from the literal env.
        ("argvs", variable("inits").transform_list("index", "container", lambda index, _: (
            variable("written")[index].map("element", lambda element: kubelet_expanded(
                element, init_env(index)))))),
        ("scriptIndex", variable("argvs").map("argv", script_index)),
    ]


def program_variables(services: Sequence[Service]) -> Variables:
    """Each program read: its commands, which of them are probes to retarget, its facts."""
    return [
        ("segments", variable("argvs").transform_list("index", "argv", program_segments)),
        ("records", variable("segments").map("program_segments", lambda segments: segments.map(
            "words", command_record))),
        # Probes to retarget: not those whose port or command the policy cannot follow.
        ("probeFlags", variable("records").transform_list(
            "index", "program_records", lambda _, records: records.map(
                "record", lambda record: retargetable_probe(CommandRecord(record))))),
        ("facts", variable("records").transform_list(
            "index", "program_records", lambda index, records: program_facts(
                services, index, records))),
        # A host part computed at run time (`mlflow.$(...)`): the policy splits the script
        # there, so it cannot tell the host; the container is kept as it is.
        ("computed", variable("argvs").map("argv", lambda argv: argv.exists(
            "element", lambda element: element.matches(COMPUTED_RE)))),
    ]


def waiting_variables(settings: Settings) -> Variables:
    """Which init containers go, the earlier status, and whether the pod waited."""
    earlier = variable("earlier")
    return [
        ("removeInit", variable("inits").transform_list(
            "index", "container", lambda index, container: is_removed(
                settings, index, container))),
        ("currentStatus", OBJECT.field("metadata").optional_field("annotations")
         .optional_index(STATUS_KEY).or_value("")),
        ("earlier", cond(variable("currentStatus").matches(STATUS_SHAPE_RE),
                         list_of(*(earlier_status(key) for key in STATUS_LISTS)),
                         list_of(*(EMPTY_LIST for _ in STATUS_LISTS)))),
        # The pod waited for a managed service, now or by an earlier pass's account.
        ("podWaited", any_of(
            earlier[0].size().gt(0), earlier[1].size().gt(0),
            variable("removeInit").exists("removed", lambda removed: removed),
            variable("facts").exists("program_facts", lambda facts: facts.exists(
                "fact", lambda fact: fact.starts_with(SERVICE_TAG_PREFIX))))),
    ]


def retargeting_variables(services: Sequence[Service]) -> Variables:
    """Env values and programs retargeted at the external addresses; without any external
    address there is nothing to retarget a program at, and it stays as written."""
    values = [
        ("initValues", retargeted_values(variable("inits"), services)),
        ("appValues", retargeted_values(variable("containers"), services)),
    ]
    if not any(s.external is not None for s in services):
        return [*values, ("newArgvs", variable("written"))]
    return [
        *values,
        ("retargetInput", variable("inits").transform_list("index", "container",
                                                           retarget_input)),
        ("retargetOutput", variable("retargetInput").transform_list(
            "index", "pieces", lambda index, pieces: retarget_output(services, index, pieces))),
        ("newArgvs", variable("argvs").transform_list("index", "argv", new_argv)),
    ]


def patch_variables(settings: Settings) -> Variables:
    """The new commands and args, then every operation as a line: kept init containers in
    place, the removals, the app containers."""
    inits = variable("inits")
    return [
        ("newCommands", inits.transform_list("index", "container", lambda index, container: (
            argv_words(index, container, of_command=True)))),
        ("newArgs", inits.transform_list("index", "container", lambda index, container: (
            argv_words(index, container, of_command=False)))),
        ("initOperations", inits.transform_list(
            "index", "container", lambda index, container: init_operations(
                settings, index, container), where=is_kept).join(OPERATION_SEPARATOR)),
        ("removals", removals()),
        ("containerOperations", variable("containers").transform_list(
            "index", "container", lambda index, container: container_operations(
                settings, index, container)).join(OPERATION_SEPARATOR)),
        ("operations", list_of(variable("initOperations"), variable("removals"),
                               variable("containerOperations"))
         .join(OPERATION_SEPARATOR).split(OPERATION_SEPARATOR).filter(
             "operation", lambda line: line.ne(""))),
    ]


def status_variables(settings: Settings) -> Variables:
    """The names for the status annotation, and the annotation itself."""
    remove_init = variable("removeInit")
    changed = variable("envChanged")
    return [
        ("removedNames", init_names(lambda index, _: remove_init[index])),
        ("rewrittenNames", init_names(lambda index, _: all_of(
            not_(remove_init[index]), variable("newArgvs")[index].ne(variable("written")[index])))),
        ("envChanged", env_changed(settings)),
        ("envNames", changed.transform_list(
            "position", "name", lambda _, name: name,
            where=lambda position, name: changed.index_of(name).eq(position))),
        ("status", status_json()),
    ]


def policy_variables(settings: Settings) -> Variables:
    """The policy's variables, in order (each may use the ones before it)."""
    variables = [
        *pod_variables(settings),
        *program_variables(settings.services),
        *waiting_variables(settings),
        *retargeting_variables(settings.services),
        *patch_variables(settings),
        *status_variables(settings),
    ]
    return [(name, check_closed(expression)) for name, expression in variables]


# --- the patch and the match condition ------------------------------------------------------


def patch_expression() -> Expr:
    """The JSON Patch: each operation line decoded, then the status annotation, written only
    with another operation and only when it differs."""
    v = variable
    status_path = "/metadata/annotations/" + escape_pointer(STATUS_KEY)

    def decoded(fields: Expr) -> Expr:
        kind, path, argument = fields[KIND], fields[PATH], fields[FIRST_ARGUMENT]

        def retargeted_entry(containers: str, values: str) -> Expr:
            return cond(argument.eq(INIT_CONTAINERS), v(containers), v(values))

        container = function("int", fields[FIRST_ARGUMENT + 1])
        entry = function("int", fields[FIRST_ARGUMENT + 2])
        retargeted = map_of({
            "name": retargeted_entry("inits", "containers")[container].field("env")[entry]
            .field("name"),
            "value": retargeted_entry("initValues", "appValues")[container][entry],
        })
        cases = [
            (REPLACE_RETARGETED_ENV, json_patch("replace", path, retargeted)),
            (REPLACE_MANAGED_ENV, json_patch("replace", path, v("managedEnv")[argument])),
            (REMOVE, json_patch("remove", path)),
            (ADD_MANAGED_ENV, json_patch("add", path, v("managedEnv")[argument])),
            (ADD_ENV_LIST, json_patch("add", path, v("managedOrder").map(
                "name", lambda name: v("managedEnv")[name]))),
            (REPLACE_COMMAND, json_patch("replace", path,
                                         v("newCommands")[function("int", argument)])),
        ]
        chosen = json_patch("replace", path, v("newArgs")[function("int", argument)])
        for case_kind, patch in reversed(cases):
            chosen = cond(kind.eq(case_kind), patch, chosen)
        return chosen

    annotation = cond(
        function("has", OBJECT.field("metadata").field("annotations")),
        list_of(json_patch("add", status_path, v("status"))),
        list_of(json_patch("add", "/metadata/annotations",
                           map_of({STATUS_KEY: v("status")}, dynamic=False))),
    )
    return check_closed(add(
        v("operations").map("operation", lambda line: let(
            line.split(FIELD_SEPARATOR), "fields", decoded)),
        cond(any_of(v("operations").size().eq(0), v("currentStatus").eq(v("status"))),
             EMPTY_LIST, annotation),
    ))


def opted_in() -> Expr:
    """Not mutate._opt_out_reason: neither the annotation nor the label says "false" in any
    of its spellings."""
    key = string(INJECT_KEY)
    metadata = OBJECT.field("metadata")
    return check_closed(not_(any_of(*(
        all_of(function("has", metadata.field(where)), key.is_in(metadata.field(where)),
               metadata.field(where)[key].trim().lower_ascii().is_in(strings(OPT_OUT_VALUES)))
        for where in ("annotations", "labels")
    ))))


def policy_regexes(settings: Settings) -> frozenset[str]:
    """Every regular expression the policy's expressions match with."""
    expressions = [expression for _, expression in policy_variables(settings)]
    expressions += [patch_expression(), opted_in()]
    return frozenset().union(*(expression.regexes for expression in expressions))


__all__ = ["opted_in", "patch_expression", "policy_regexes", "policy_variables"]
