"""The policy twin's mutation: its variables, its JSON Patch and its match condition, in CEL.

``mutate.Rules`` step by step: the programs of the init containers, and of the app
containers that name a service, read (``webhook.policy.container_programs``); which init
containers are waiters (from the facts of ``webhook.policy.program``, per container in
``webhook.policy.init_programs``); the probes and the URLs of work retargeted in the kept
init containers and the app containers; env set (``webhook.policy.env``), and the
``backend-injector/status`` annotation merged with an earlier one (read back with regexes,
since CEL cannot parse JSON). The variables come in groups, in the order the policy lists
them: the pod read, its programs read, the waiters, the retargeting, the patch, the safety
net's hostAliases (``webhook.policy.host_aliases``, when an IP is known), the status.

The patch is built like the webhook's: per-index operations in the same order (init
containers in place, removals from the back, app containers' programs and env, the
annotation), carried as
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
from webhook.policy.container_programs import (
    APP_PROGRAMS,
    INIT_PROGRAMS,
    ProgramGroup,
    argv_words,
    expanded_programs,
    is_computed,
    is_unreadable,
    new_argv,
    program_kinds,
    program_pieces,
    program_records,
    program_segments,
    program_writes,
    retarget_input,
    retarget_output,
    works,
    written_programs,
)
from webhook.policy.env import (
    args_of,
    as_strings,
    command_of,
    env_changes,
    env_operations,
    is_native_sidecar,
    retargeted_values,
    uses_backend,
)
from webhook.policy.host_aliases import (
    has_host_aliases,
    host_alias_patches,
    host_alias_variables,
)
from webhook.policy.init_programs import (
    is_removed,
    is_retargeted,
    probes_managed,
    program_facts,
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
    REPLACE_APP_ARGS,
    REPLACE_APP_COMMAND,
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
from webhook.policy.program import SERVICE_TAG_PREFIX, script_index
from webhook.policy.regex import (
    QUOTED_NAME_RE,
    STATUS_SHAPE_RE,
    host_search_re,
    status_list_re,
)
from webhook.rules.mutate import (
    INJECT_KEY,
    OPT_OUT_VALUES,
    STATUS_KEY,
    STATUS_LISTS,
    managed_env_entries,
)
from webhook.rules.status import ALIASED, escape_pointer
from webhook.settings import Service, Settings

# --- the operations -------------------------------------------------------------------------


def sidecar_uses(settings: Settings, container: Expr) -> Expr:
    """Whether an init container gets the absent variables: only native sidecars do, as app
    containers, when they use the backend (add_env_to)."""
    return all_of(is_native_sidecar(container), uses_backend(settings, container))


def is_kept(index: Expr, _: Expr) -> Expr:
    return not_(variable("removeInit")[index])


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
    """An app container's operations: its command and args (the URLs of its work
    retargeted), then its env."""
    program: Expr = EMPTY_LIST
    if retargets_programs(settings.services):
        command = cond(variable("appNewCommands")[index].ne(as_strings(command_of(container))),
                       list_of(operation(REPLACE_APP_COMMAND, add(container_path(index),
                                                                  "/command"),
                                         index_text(index))), EMPTY_LIST)
        args = cond(variable("appNewArgs")[index].ne(as_strings(args_of(container))),
                    list_of(operation(REPLACE_APP_ARGS, add(container_path(index), "/args"),
                                      index_text(index))), EMPTY_LIST)
        program = add(command, args)
    env = env_operations(container, index, container_path(index), variable("appValues")[index],
                         APP_CONTAINERS, add_absent=uses_backend(settings, container))
    return add(program, env).join(OPERATION_SEPARATOR)


def retargets_programs(services: Sequence[Service]) -> bool:
    """Whether any service has an external address to retarget programs at."""
    return any(service.external is not None for service in services)


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


def status_json(*, aliases: bool = False) -> Expr:
    """The status annotation: each list merged with the earlier one, as compact JSON; with
    ``aliases``, ``aliased`` after them when it names anything (as the webhook writes it)."""
    parts: list[Expr | str] = []
    for position, key in enumerate(STATUS_LISTS):
        parts += [("{" if position == 0 else ",") + f'"{key}":',
                  json_list(merged(variable("earlier")[position], variable(key + "Names")))]
    if aliases:
        parts.append(let(merged(variable("earlierAliased"), variable("aliasedNames")), "aliased",
                         lambda names: cond(names.size().gt(0),
                                            add(f',"{ALIASED}":', json_list(names)), "")))
    return add(*parts, "}")


# --- the variables, in order (each may use the ones before it) ------------------------------

Variables = list[tuple[str, Expr]]


def pod_variables(settings: Settings) -> Variables:
    """The managed env and the containers."""
    entries = managed_env_entries(settings)
    return [
        ("managedEnv", map_of({name: literal(entry) for name, entry in entries.items()})),
        ("managedOrder", list_of(*(string(name) for name in entries))),
        ("inits", OBJECT.field("spec").optional_field("initContainers").or_value(EMPTY_LIST)),
        ("containers", OBJECT.field("spec").optional_field("containers").or_value(EMPTY_LIST)),
    ]


def reading_variables(group: ProgramGroup, read: Expr | None = None) -> Variables:
    """A group's programs read: as written, as the kubelet runs them (`$(NAME)` expanded from
    the literal env; with ``read``, only those of the containers it names), the script's
    position, its segments as text and as words, each command's record and kind, whether the
    script can be read at all, and whether a host part is computed at run time."""
    argvs = group.var("argvs")
    return [
        (group.name("written"), written_programs(group)),
        *([(group.name("read"), read)] if read is not None else []),
        (group.name("argvs"), expanded_programs(group, group.var("read") if read is not None
                                                else None)),
        (group.name("scriptIndex"), argvs.map("argv", script_index)),
        (group.name("pieces"), argvs.transform_list(
            "index", "argv", lambda index, argv: program_pieces(group, index, argv))),
        (group.name("segments"), argvs.transform_list(
            "index", "argv", lambda index, argv: program_segments(group, index, argv))),
        (group.name("records"), group.var("segments").transform_list(
            "index", "program_segments", lambda index, segments: program_records(
                group, index, segments))),
        (group.name("kinds"), group.var("records").transform_list(
            "index", "program_records", lambda index, records: program_kinds(
                group, index, records))),
        (group.name("writes"), group.var("records").transform_list(
            "index", "program_records", lambda index, records: program_writes(
                group, index, records))),
        (group.name("unreadable"), group.var("records").transform_list(
            "index", "program_records", lambda index, records: is_unreadable(
                group, index, records))),
        (group.name("computed"), argvs.map("argv", is_computed)),
    ]


def program_variables(services: Sequence[Service]) -> Variables:
    """The init containers' programs read, and their facts; when there is an external address
    to retarget at, the app containers' programs that name one of its services (the webhook
    retargets the URLs of their work), and whether each does work."""
    init = [
        *reading_variables(INIT_PROGRAMS),
        ("facts", variable("records").transform_list(
            "index", "program_records", lambda index, records: program_facts(
                services, index, records))),
    ]
    if not retargets_programs(services):
        return init
    retargetable = [service for service in services if service.external is not None]
    app = APP_PROGRAMS
    names_a_host = variable(app.containers).transform_list(
        "index", "container", lambda index, _: app.var("written")[index].exists(
            "part", lambda part: any_of(*(part.matches(host_search_re(service))
                                          for service in retargetable))))
    return [
        *init,
        *reading_variables(app, names_a_host),
        (app.name("works"), app.var("records").transform_list(
            "index", "program_records", lambda index, records: works(app, index, records))),
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
    if not retargets_programs(services):
        return [*values, ("newArgvs", variable("written"))]
    app = APP_PROGRAMS
    return [
        *values,
        *program_retargeting(INIT_PROGRAMS, services, is_retargeted),
        *program_retargeting(app, services, lambda index: all_of(
            app.var("works")[index], not_(app.var("computed")[index]),
            not_(app.var("unreadable")[index]))),
    ]


def program_retargeting(group: ProgramGroup, services: Sequence[Service],
                        retargeted: Callable[[Expr], Expr]) -> Variables:
    """A group's programs retargeted where ``retargeted`` holds for the container: the pieces
    to retarget, the text they make, the new programs."""
    return [
        (group.name("retargetInput"), variable(group.containers).transform_list(
            "index", "container", lambda index, _: retarget_input(
                group, index, retargeted(index)))),
        (group.name("retargetOutput"), group.var("retargetInput").transform_list(
            "index", "pieces", lambda index, pieces: retarget_output(
                group, services, index, pieces))),
        (group.name("newArgvs"), group.var("argvs").transform_list(
            "index", "argv", lambda index, argv: new_argv(group, index, argv))),
    ]


def patch_variables(settings: Settings) -> Variables:
    """The new commands and args, then every operation as a line: kept init containers in
    place, the removals, the app containers."""
    inits = variable("inits")
    groups = ((INIT_PROGRAMS, APP_PROGRAMS) if retargets_programs(settings.services)
              else (INIT_PROGRAMS,))
    return [
        *(variable_ for group in groups for variable_ in new_programs(group)),
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


def new_programs(group: ProgramGroup) -> Variables:
    """A group's new commands and new args, cut from its new programs where they were."""
    containers = variable(group.containers)
    return [
        (group.name("newCommands"), containers.transform_list(
            "index", "container", lambda index, container: argv_words(
                group, index, container, of_command=True))),
        (group.name("newArgs"), containers.transform_list(
            "index", "container", lambda index, container: argv_words(
                group, index, container, of_command=False))),
    ]


def status_variables(settings: Settings) -> Variables:
    """The names for the status annotation (with the safety net's, an earlier pass's aliased
    hosts), and the annotation itself."""
    remove_init = variable("removeInit")
    changed = variable("envChanged")
    aliases = has_host_aliases(settings)
    return [
        ("removedNames", init_names(lambda index, _: remove_init[index])),
        # Only a container that probed a managed service counts as rewritten: the names say
        # the pod waited, which work alone does not.
        ("rewrittenNames", init_names(lambda index, _: all_of(
            not_(remove_init[index]), probes_managed(index),
            variable("newArgvs")[index].ne(variable("written")[index])))),
        ("envChanged", env_changed(settings)),
        ("envNames", changed.transform_list(
            "position", "name", lambda _, name: name,
            where=lambda position, name: changed.index_of(name).eq(position))),
        *([("earlierAliased", cond(variable("currentStatus").matches(STATUS_SHAPE_RE),
                                   earlier_status(ALIASED), EMPTY_LIST))] if aliases else []),
        ("status", status_json(aliases=aliases)),
    ]


def policy_variables(settings: Settings) -> Variables:
    """The policy's variables, in order (each may use the ones before it)."""
    variables = [
        *pod_variables(settings),
        *program_variables(settings.services),
        *waiting_variables(settings),
        *retargeting_variables(settings.services),
        *patch_variables(settings),
        *host_alias_variables(settings),
        *status_variables(settings),
    ]
    return [(name, check_closed(expression)) for name, expression in variables]


# --- the patch and the match condition ------------------------------------------------------


def patch_expression(settings: Settings | None = None) -> Expr:
    """The JSON Patch: each operation line decoded, the hostAliases entries (when ``settings``
    know an IP), then the status annotation, written only with another operation and only
    when it differs."""
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
            (REPLACE_ARGS, json_patch("replace", path, v("newArgs")[function("int", argument)])),
        ]
        if settings is not None and retargets_programs(settings.services):
            cases += [
                (REPLACE_APP_COMMAND, json_patch("replace", path,
                                                 v("appNewCommands")[function("int", argument)])),
                (REPLACE_APP_ARGS, json_patch("replace", path,
                                              v("appNewArgs")[function("int", argument)])),
            ]
        chosen = cases[-1][1]
        for case_kind, patch in reversed(cases[:-1]):
            chosen = cond(kind.eq(case_kind), patch, chosen)
        return chosen

    annotation = cond(
        function("has", OBJECT.field("metadata").field("annotations")),
        list_of(json_patch("add", status_path, v("status"))),
        list_of(json_patch("add", "/metadata/annotations",
                           map_of({STATUS_KEY: v("status")}, dynamic=False))),
    )
    aliases = settings is not None and has_host_aliases(settings)
    nothing_else = v("operations").size().eq(0)
    if aliases:
        nothing_else = all_of(nothing_else, v("hostAliasEntries").size().eq(0))
    return check_closed(add(
        v("operations").map("operation", lambda line: let(
            line.split(FIELD_SEPARATOR), "fields", decoded)),
        *([host_alias_patches()] if aliases else []),
        cond(any_of(nothing_else, v("currentStatus").eq(v("status"))), EMPTY_LIST, annotation),
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
    expressions += [patch_expression(settings), opted_in()]
    return frozenset().union(*(expression.regexes for expression in expressions))


__all__ = ["opted_in", "patch_expression", "policy_regexes", "policy_variables"]
