"""The policy twin's mutation: its variables, its JSON Patch and its match condition, in CEL.

``mutate.Rules`` step by step: which init containers are waiters (from the facts of
``webhook.policy.program``), their probes retargeted, env set (``webhook.policy.env``), and
the ``backend-injector/status`` annotation merged with an earlier one (read back with
regexes, since CEL cannot parse JSON).

The patch is built like the webhook's: per-index operations in the same order (init
containers in place, removals from the back, app containers, the annotation), carried as
``webhook.policy.operations`` lines. Every value in it is a literal of the policy or a list
of strings: the pod reaches CEL as typed values, and a sub-object copied from it cannot be
marshalled into a patch. Every operation is guarded on equality, so a second pass changes
nothing; that matters more than for the webhook, since the apiserver runs an ``IfNeeded``
policy again on its own output whenever it changed the pod.
"""

from __future__ import annotations

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
from webhook.policy.operations import (
    ADD_ENV_LIST,
    ADD_MANAGED_ENV,
    APP_CONTAINERS,
    FIELD_SEPARATOR,
    FIRST_ARGUMENT,
    INIT_CONTAINERS,
    IS_PROBE,
    KIND,
    NOT_PROBE,
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
from webhook.policy.regex import (
    AND_MARK,
    COMPUTED_RE,
    EXEC_JOINER,
    MARKS,
    QUOTED_NAME_RE,
    SEGMENT_RE,
    SEGMENT_WORD_RE,
    STATUS_SHAPE_RE,
    SUBSTITUTION_MARK,
    status_list_re,
)
from webhook.rules.mutate import (
    INJECT_KEY,
    OPT_OUT_VALUES,
    STATUS_KEY,
    STATUS_LISTS,
    managed_env_entries,
)
from webhook.settings import Action, Settings

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
