"""The policy twin's mutation: its variables, its JSON Patch and its match condition, in CEL.

``mutate.Rules`` step by step: which init containers are waiters (from the facts of
``webhook.policy_program``), their probes retargeted, env replaced in place, later duplicates
dropped, absent variables appended to the containers that use the backend, and the
``backend-injector/status`` annotation merged with an earlier one (read back with regexes,
since CEL cannot parse JSON).

The patch is built like the webhook's: per-index operations in the same order (init
containers in place, removals from the back, app containers, the annotation). Every value in
it is a literal of the policy or a list of strings: the pod reaches CEL as typed values, and a
sub-object copied from it cannot be marshalled into a patch. Every operation is guarded on
equality, so a second pass changes nothing; that matters more than for the webhook, since the
apiserver runs an ``IfNeeded`` policy again on its own output whenever it changed the pod.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from webhook.cel import (
    EMPTY_LIST,
    OBJECT,
    TRUE,
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
from webhook.config import Action, EnvScope, Service, Settings
from webhook.grammar import URL_SCHEME_END
from webhook.mutate import (
    INJECT_KEY,
    OPT_OUT_VALUES,
    STATUS_KEY,
    STATUS_LISTS,
    managed_env_entries,
)
from webhook.policy_program import (
    EXTERNAL_TAG,
    FACT_SEPARATOR,
    OTHER_HOST_TAG,
    PORT_APART_TAG,
    SERVICE_TAG_PREFIX,
    WORK_TAG,
    CommandRecord,
    command_facts,
    command_record,
    expanded_text,
    kubelet_expanded,
    marked,
    retarget_text,
    retargetable_probe,
    script_index,
    service_tag,
    uncommented,
    unmarked_ampersands,
)
from webhook.policy_regex import (
    ADDRESS_END_RE,
    ADDRESS_HOST_RE,
    ADDRESS_PREFIX_RE,
    ADDRESS_RE,
    AND_MARK,
    ANY_SPACE_RE,
    COMPUTED_RE,
    EXEC_JOINER,
    MARKS,
    QUOTED_NAME_RE,
    SEGMENT_RE,
    SEGMENT_WORD_RE,
    STATUS_SHAPE_RE,
    SUBSTITUTION_MARK,
    TRAILING_PORT_RE,
    host_search_re,
    status_list_re,
    whole_host_re,
)

# --- operations -----------------------------------------------------------------------------
#
# The patch's operations are gathered per container and must come out as one flat list, in
# the webhook's order. CEL here cannot flatten a list of lists (see policy_program's facts),
# and a JSONPatch value cannot be copied from the pod, so each operation travels as a line of
# text, "KIND PATH [ARGUMENT...]", the lines of all containers are joined and split again,
# and the patch decodes each line into a JSONPatch whose value it builds from literals of the
# policy and from indexes into its variables (patch_expression). The kinds:
REPLACE_MANAGED_ENV = "R"  # ARGUMENT: the variable's name (a key of managedEnv)
REPLACE_RETARGETED_ENV = "V"  # ARGUMENTS: INIT_CONTAINERS or APP_CONTAINERS, container, entry
REMOVE = "D"
ADD_MANAGED_ENV = "A"  # ARGUMENT: the variable's name
ADD_ENV_LIST = "L"  # a container without env gets all the managed variables at once
REPLACE_COMMAND = "C"  # ARGUMENT: the init container's index (into newCommands)
REPLACE_ARGS = "G"  # ARGUMENT: the init container's index (into newArgs)
INIT_CONTAINERS = "I"
APP_CONTAINERS = "C"
FIELD_SEPARATOR = " "
OPERATION_SEPARATOR = "\n"
# The fields of a decoded operation.
KIND, PATH, FIRST_ARGUMENT = 0, 1, 2
# A retargeted probe's pieces travel as [text, IS_PROBE or NOT_PROBE]: CEL lists are of one
# type, and so is the flag.
IS_PROBE, NOT_PROBE = "1", "0"


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


# --- containers -----------------------------------------------------------------------------


def env_of(container: Expr) -> Expr:
    return container.optional_field("env").or_value(EMPTY_LIST)


def command_of(container: Expr) -> Expr:
    return container.optional_field("command").or_value(EMPTY_LIST)


def args_of(container: Expr) -> Expr:
    return container.optional_field("args").or_value(EMPTY_LIST)


def as_strings(items: Expr) -> Expr:
    """The pod's typed list as a plain list of strings, comparable with the policy's own."""
    return items.map("element", lambda element: element)


def init_env(index: Expr) -> Expr:
    return env_of(variable("inits")[index])


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
    external address, or "" when nothing changes. Each comma-separated item is matched from
    its start; RE2's leftmost-first match, followed by one of `/?#` or the end, is the one
    the look-ahead of probes._ADDRESS admits (the host and port runs are maximal)."""

    def of_item(item: Expr) -> Expr:
        def with_address(address: Expr) -> Expr:
            def with_prefix(prefix: Expr) -> Expr:
                def with_host(host: Expr) -> Expr:
                    choice = item
                    for service in reversed(services):
                        replaced = item if service.external is None else add(
                            prefix, str(service.external), item.substring(address.size()))
                        choice = cond(host.matches(whole_host_re(service)), replaced, choice)
                    return choice

                return let(address.substring(prefix.size()).find(ADDRESS_HOST_RE), "host",
                           with_host)

            is_address = all_of(
                any_of(item.size().eq(address.size()),
                       item.substring(address.size()).matches(ADDRESS_END_RE)),
                any_of(address.contains(URL_SCHEME_END), address.matches(TRAILING_PORT_RE)),
            )
            return cond(any_of(address.eq(""), not_(is_address)), item,
                        let(address.find(ADDRESS_PREFIX_RE), "prefix", with_prefix))

        return let(item.find(ADDRESS_RE), "address", with_address)

    rewritten = let(value.split(",").map("item", of_item).join(","), "rewritten",
                    lambda rewritten: cond(rewritten.eq(value), "", rewritten))
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


# --- status ---------------------------------------------------------------------------------


def json_list(names: Expr) -> Expr:
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


# --- the variables --------------------------------------------------------------------------


def policy_variables(settings: Settings) -> list[tuple[str, Expr]]:
    """The policy's variables, in order (each may use the ones before it)."""
    services = settings.services
    v = variable
    entries = managed_env_entries(settings)
    no_external = [service_tag(i) for i, s in enumerate(services) if s.external is None]

    def facts(index: Expr) -> Expr:
        return v("facts")[index]

    def has_fact(fact: str, index: Expr) -> Expr:
        return string(fact).is_in(facts(index))

    def probes_managed(index: Expr) -> Expr:
        return facts(index).exists("fact", lambda fact: fact.starts_with(SERVICE_TAG_PREFIX))

    def removed(index: Expr, container: Expr) -> Expr:
        named = container.field("name").is_in(strings(settings.waiter_names))
        waits = all_of(probes_managed(index), not_(has_fact(OTHER_HOST_TAG, index)),
                       not_(has_fact(WORK_TAG, index)), not_(v("computed")[index]))
        if settings.action is Action.REMOVE:
            return any_of(named, waits)
        orphaned = facts(index).exists("fact", lambda fact: fact.is_in(strings(no_external)))
        # A waiter whose port the policy cannot retarget is removed instead.
        return all_of(any_of(named, waits), cond(
            not_(probes_managed(index)), not_(has_fact(EXTERNAL_TAG, index)),
            any_of(orphaned, has_fact(PORT_APART_TAG, index))))

    def script_of(index: Expr) -> Expr:
        return v("argvs")[index][v("scriptIndex")[index]]

    def split_program(index: Expr, argv: Expr) -> Expr:
        segments = marked(argv[v("scriptIndex")[index]]).find_all(SEGMENT_RE).map(
            "segment", lambda segment: segment.find_all(SEGMENT_WORD_RE).map(
                "word", unmarked_ampersands))
        return cond(v("scriptIndex")[index].lt(0),
                    cond(argv.size().gt(0), list_of(argv), EMPTY_LIST), segments)

    def init_facts(index: Expr, records: Expr) -> Expr:
        in_script = v("scriptIndex")[index].ge(0)
        return records.map("record", lambda record: command_facts(
            CommandRecord(record), services, in_script, init_env(index)).join(FACT_SEPARATOR)
        ).join(FACT_SEPARATOR).split(FACT_SEPARATOR).filter("fact", lambda fact: fact.ne(""))

    # What to retarget, per init container, as [text, IS_PROBE or NOT_PROBE] pieces: the
    # segments of the script (each with the separator that ends it, which a host match sees
    # as the end of the text, as probes.py does), or the exec-form words joined; [] for
    # nothing.
    def retarget_input(index: Expr, _: Expr) -> Expr:
        flags = v("probeFlags")[index]
        exec_form = cond(
            all_of(flags.size().gt(0), flags[0], not_(v("argvs")[index].exists(
                "element", lambda element: element.contains(EXEC_JOINER)))),
            list_of(list_of(v("argvs")[index].join(EXEC_JOINER), IS_PROBE)), EMPTY_LIST)
        pieces = let(marked(script_of(index)).find_all(SEGMENT_RE), "segments",
                     lambda segments: segments.transform_list(
                         "position", "segment", lambda position, segment: list_of(
                             unmarked_ampersands(segment),
                             cond(flags[position], IS_PROBE, NOT_PROBE))))
        # A script that already holds one of the marks is not retargeted.
        script_form = cond(list_of(*(string(mark) for mark in MARKS)).exists(
            "mark", lambda mark: script_of(index).contains(mark)), EMPTY_LIST, pieces)
        return cond(any_of(v("removeInit")[index], not_(probes_managed(index)),
                           v("computed")[index]), EMPTY_LIST,
                    cond(v("scriptIndex")[index].lt(0), exec_form, script_form))

    # A script's probe is retargeted with its variables resolved (probes._expand_in_probe),
    # and written so only when the retarget changed something.
    def retargeted_piece(index: Expr, piece: Expr) -> Expr:
        written = piece[0]
        expanded = cond(v("scriptIndex")[index].ge(0), expanded_text(written, init_env(index)),
                        written)
        return let(expanded, "expanded", lambda expanded: let(
            retarget_text(expanded, services), "retargeted",
            lambda retargeted: cond(retargeted.eq(expanded), written, retargeted)))

    def retarget_output(index: Expr, pieces: Expr) -> Expr:
        return pieces.map("piece", lambda piece: cond(
            piece[1].eq(IS_PROBE), retargeted_piece(index, piece), piece[0])).join("")

    def retargeted_argv(index: Expr, argv: Expr) -> Expr:
        output = v("retargetOutput")[index]
        script = uncommented(output.replace(SUBSTITUTION_MARK, "$(").replace(AND_MARK, "&&"))
        return cond(v("scriptIndex")[index].lt(0), output.split(EXEC_JOINER),
                    argv.transform_list("position", "element", lambda position, element: cond(
                        position.eq(v("scriptIndex")[index]), script, element)))

    # Only a retargeted probe writes the program out (with the kubelet's expansion in it);
    # otherwise the program stays as written.
    def new_argv(index: Expr, argv: Expr) -> Expr:
        return cond(v("retargetInput")[index].size().eq(0), v("written")[index],
                    let(retargeted_argv(index, argv), "new_argv", lambda new: cond(
                        new.eq(argv), v("written")[index], new)))

    variables: list[tuple[str, Expr]] = [
        ("managedEnv", map_of({name: literal(entry) for name, entry in entries.items()})),
        ("managedOrder", list_of(*(string(name) for name in entries))),
        ("inits", OBJECT.field("spec").optional_field("initContainers").or_value(EMPTY_LIST)),
        ("containers", OBJECT.field("spec").optional_field("containers").or_value(EMPTY_LIST)),
        ("written", v("inits").map("container", lambda container: add(
            command_of(container), args_of(container)))),
        # The program as the kubelet runs it: `$(NAME)` expanded from the literal env.
        ("argvs", v("inits").transform_list("index", "container", lambda index, _: (
            v("written")[index].map("element", lambda element: kubelet_expanded(
                element, init_env(index)))))),
        ("scriptIndex", v("argvs").map("argv", script_index)),
        ("segments", v("argvs").transform_list("index", "argv", split_program)),
        ("records", v("segments").map("program_segments", lambda segments: segments.map(
            "words", command_record))),
        # Probes to retarget: not those whose port or command the policy cannot follow.
        ("probeFlags", v("records").transform_list("index", "program_records", lambda _, records: (
            records.map("record", lambda record: retargetable_probe(CommandRecord(record)))))),
        ("facts", v("records").transform_list("index", "program_records", init_facts)),
        # A host part computed at run time (`mlflow.$(...)`): the policy splits the script
        # there, so it cannot tell the host; the container is kept as it is.
        ("computed", v("argvs").map("argv", lambda argv: argv.exists(
            "element", lambda element: element.matches(COMPUTED_RE)))),
        ("removeInit", v("inits").transform_list("index", "container", removed)),
        ("currentStatus", OBJECT.field("metadata").optional_field("annotations")
         .optional_index(STATUS_KEY).or_value("")),
        ("earlier", cond(v("currentStatus").matches(STATUS_SHAPE_RE),
                         list_of(*(earlier_status(key) for key in STATUS_LISTS)),
                         list_of(*(EMPTY_LIST for _ in STATUS_LISTS)))),
        # The pod waited for a managed service, now or by an earlier pass's account.
        ("podWaited", any_of(
            v("earlier")[0].size().gt(0), v("earlier")[1].size().gt(0),
            v("removeInit").exists("removed", lambda removed: removed),
            v("facts").exists("program_facts", lambda facts: facts.exists(
                "fact", lambda fact: fact.starts_with(SERVICE_TAG_PREFIX))))),
        ("initValues", retargeted_values(v("inits"), services)),
        ("appValues", retargeted_values(v("containers"), services)),
    ]
    if any(s.external is not None for s in services):
        variables += [
            ("retargetInput", v("inits").transform_list("index", "container", retarget_input)),
            ("retargetOutput", v("retargetInput").transform_list("index", "pieces",
                                                                 retarget_output)),
            ("newArgvs", v("argvs").transform_list("index", "argv", new_argv)),
        ]
    else:
        variables.append(("newArgvs", v("written")))

    # Only containers that use the backend get the absent variables (add_env_to), the native
    # sidecars among init containers.
    def sidecar_uses(container: Expr) -> Expr:
        return all_of(is_native_sidecar(container), uses_backend(settings, container))

    def init_operations(index: Expr, container: Expr) -> Expr:
        command = cond(v("newCommands")[index].ne(as_strings(command_of(container))),
                       list_of(operation(REPLACE_COMMAND, add(init_path(index), "/command"),
                                         index_text(index))), EMPTY_LIST)
        args = cond(v("newArgs")[index].ne(as_strings(args_of(container))),
                    list_of(operation(REPLACE_ARGS, add(init_path(index), "/args"),
                                      index_text(index))), EMPTY_LIST)
        env = env_operations(container, index, init_path(index), v("initValues")[index],
                             INIT_CONTAINERS, add_absent=sidecar_uses(container))
        return add(command, args, env).join(OPERATION_SEPARATOR)

    def container_operations(index: Expr, container: Expr) -> Expr:
        return env_operations(container, index, container_path(index), v("appValues")[index],
                              APP_CONTAINERS, add_absent=uses_backend(settings, container)
                              ).join(OPERATION_SEPARATOR)

    def kept(index: Expr, _: Expr) -> Expr:
        return not_(v("removeInit")[index])

    removals = cond(
        all_of(v("removeInit").all("removed", lambda removed: removed), v("inits").size().gt(0)),
        string(REMOVE + FIELD_SEPARATOR + "/spec/initContainers"),
        let(v("inits").transform_list("index", "container", lambda index, _: index,
                                      where=lambda index, _: v("removeInit")[index]),
            "removed_indexes", lambda indexes: from_the_back(
                indexes, lambda index: operation(REMOVE, init_path(index))
            ).join(OPERATION_SEPARATOR)),
    )
    env_changed = list_of(
        v("inits").transform_list("index", "container", lambda index, container: env_changes(
            container, v("initValues")[index], add_absent=sidecar_uses(container)), where=kept
        ).join(","),
        v("containers").transform_list("index", "container", lambda index, container: (
            env_changes(container, v("appValues")[index],
                        add_absent=uses_backend(settings, container)))).join(","),
    ).join(",").split(",").filter("name", lambda name: name.ne(""))
    status_parts: list[Expr | str] = []
    for position, key in enumerate(STATUS_LISTS):
        status_parts += [("{" if position == 0 else ",") + f'"{key}":',
                         json_list(merged(v("earlier")[position], v(key + "Names")))]
    variables += [
        ("newCommands", v("inits").transform_list("index", "container", lambda index, container: (
            v("newArgvs")[index].transform_list(
                "position", "element", lambda _, element: element,
                where=lambda position, _: position.lt(command_of(container).size()))))),
        ("newArgs", v("inits").transform_list("index", "container", lambda index, container: (
            v("newArgvs")[index].transform_list(
                "position", "element", lambda _, element: element,
                where=lambda position, _: position.ge(command_of(container).size()))))),
        ("initOperations", v("inits").transform_list(
            "index", "container", init_operations, where=kept).join(OPERATION_SEPARATOR)),
        ("removals", removals),
        ("containerOperations", v("containers").transform_list(
            "index", "container", container_operations).join(OPERATION_SEPARATOR)),
        ("operations", list_of(v("initOperations"), v("removals"), v("containerOperations"))
         .join(OPERATION_SEPARATOR).split(OPERATION_SEPARATOR).filter(
             "operation", lambda line: line.ne(""))),
        ("removedNames", v("inits").transform_list(
            "index", "container", lambda _, container: container.field("name"),
            where=lambda index, _: v("removeInit")[index])),
        ("rewrittenNames", v("inits").transform_list(
            "index", "container", lambda _, container: container.field("name"),
            where=lambda index, _: all_of(not_(v("removeInit")[index]),
                                          v("newArgvs")[index].ne(v("written")[index])))),
        ("envChanged", env_changed),
        ("envNames", v("envChanged").transform_list(
            "position", "name", lambda _, name: name,
            where=lambda position, name: v("envChanged").index_of(name).eq(position))),
        ("status", add(*status_parts, "}")),
    ]
    return [(name, check_closed(expression)) for name, expression in variables]


# --- the patch and the match condition ------------------------------------------------------


def patch_expression() -> Expr:
    """The JSON Patch: each operation line decoded, then the status annotation, written only
    with another operation and only when it differs."""
    v = variable
    status_path = "/metadata/annotations/" + STATUS_KEY.replace("~", "~0").replace("/", "~1")

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
