"""The policy twin's init containers, one at a time, in CEL: what each program does, whether
the container goes, and its probes retargeted.

Each function builds the expression for one init container (its ``index`` in the pod's list
and its program or pieces), read by ``transformList`` in ``webhook.policy.mutation``'s
variables; they refer to the variables before theirs by name (``facts``, ``scriptIndex``,
``removeInit``...), as ``mutate.Rules._read_init_containers`` and ``_retarget`` refer to what
they read before.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook.policy.cel import (
    EMPTY_LIST,
    Expr,
    all_of,
    any_of,
    cond,
    let,
    list_of,
    not_,
    string,
    strings,
    variable,
)
from webhook.policy.env import init_env
from webhook.policy.operations import IS_PROBE, NOT_PROBE
from webhook.policy.program import (
    EXTERNAL_TAG,
    FACT_SEPARATOR,
    OTHER_HOST_TAG,
    PORT_APART_TAG,
    SERVICE_TAG_PREFIX,
    WORK_TAG,
    CommandRecord,
    command_facts,
    expanded_text,
    marked,
    retarget_text,
    service_tag,
    uncommented,
    unmarked_ampersands,
)
from webhook.policy.regex import (
    AND_MARK,
    EXEC_JOINER,
    MARKS,
    SEGMENT_RE,
    SEGMENT_WORD_RE,
    SUBSTITUTION_MARK,
)
from webhook.settings import Action, Service, Settings

# --- its program and its facts --------------------------------------------------------------


def facts_of(index: Expr) -> Expr:
    """The facts of init container ``index``'s program (tags of ``webhook.policy.program``)."""
    return variable("facts")[index]


def has_fact(fact: str, index: Expr) -> Expr:
    return string(fact).is_in(facts_of(index))


def probes_managed(index: Expr) -> Expr:
    """Whether the program probes at least one managed service."""
    return facts_of(index).exists("fact", lambda fact: fact.starts_with(SERVICE_TAG_PREFIX))


def script_of(index: Expr) -> Expr:
    """The shell script of the program, as the kubelet runs it."""
    return variable("argvs")[index][variable("scriptIndex")[index]]


def program_segments(index: Expr, argv: Expr) -> Expr:
    """The program as simple commands, each a list of words: a script split at its
    separators, any other form one command (none for an empty program)."""
    segments = marked(argv[variable("scriptIndex")[index]]).find_all(SEGMENT_RE).map(
        "segment", lambda segment: segment.find_all(SEGMENT_WORD_RE).map(
            "word", unmarked_ampersands))
    return cond(variable("scriptIndex")[index].lt(0),
                cond(argv.size().gt(0), list_of(argv), EMPTY_LIST), segments)


def program_facts(services: Sequence[Service], index: Expr, records: Expr) -> Expr:
    """The facts of a program from the records of its commands, as one flat list."""
    in_script = variable("scriptIndex")[index].ge(0)
    return records.map("record", lambda record: command_facts(
        CommandRecord(record), services, in_script, init_env(index)).join(FACT_SEPARATOR)
    ).join(FACT_SEPARATOR).split(FACT_SEPARATOR).filter("fact", lambda fact: fact.ne(""))


def is_removed(settings: Settings, index: Expr, container: Expr) -> Expr:
    """Whether an init container goes: by its name, or because it only waits for managed
    services; in ``rewrite`` mode only when it cannot be retargeted instead."""
    named = container.field("name").is_in(strings(settings.waiter_names))
    waits = all_of(probes_managed(index), not_(has_fact(OTHER_HOST_TAG, index)),
                   not_(has_fact(WORK_TAG, index)), not_(variable("computed")[index]))
    if settings.action is Action.REMOVE:
        return any_of(named, waits)
    no_external = [service_tag(i) for i, s in enumerate(settings.services) if s.external is None]
    orphaned = facts_of(index).exists("fact", lambda fact: fact.is_in(strings(no_external)))
    # A waiter whose port the policy cannot retarget is removed instead.
    return all_of(any_of(named, waits), cond(
        not_(probes_managed(index)), not_(has_fact(EXTERNAL_TAG, index)),
        any_of(orphaned, has_fact(PORT_APART_TAG, index))))


# --- its probes retargeted ------------------------------------------------------------------


def retarget_input(index: Expr, _: Expr) -> Expr:
    """What to retarget, as [text, IS_PROBE or NOT_PROBE] pieces: the segments of the script
    (each with the separator that ends it, which a host match sees as the end of the text,
    as ``webhook.rules.programs`` does), or the exec-form words joined; [] for nothing."""
    flags = variable("probeFlags")[index]
    argv = variable("argvs")[index]
    exec_form = cond(
        all_of(flags.size().gt(0), flags[0], not_(argv.exists(
            "element", lambda element: element.contains(EXEC_JOINER)))),
        list_of(list_of(argv.join(EXEC_JOINER), IS_PROBE)), EMPTY_LIST)
    pieces = let(marked(script_of(index)).find_all(SEGMENT_RE), "segments",
                 lambda segments: segments.transform_list(
                     "position", "segment", lambda position, segment: list_of(
                         unmarked_ampersands(segment),
                         cond(flags[position], IS_PROBE, NOT_PROBE))))
    # A script that already holds one of the marks is not retargeted.
    script_form = cond(list_of(*(string(mark) for mark in MARKS)).exists(
        "mark", lambda mark: script_of(index).contains(mark)), EMPTY_LIST, pieces)
    return cond(any_of(variable("removeInit")[index], not_(probes_managed(index)),
                       variable("computed")[index]), EMPTY_LIST,
                cond(variable("scriptIndex")[index].lt(0), exec_form, script_form))


def retargeted_piece(services: Sequence[Service], index: Expr, piece: Expr) -> Expr:
    """A probe's text retargeted with its variables resolved (``webhook.rules.programs``'
    ``_expand_in_probe``), and written so only when the retarget changed something."""
    written = piece[0]
    expanded = cond(variable("scriptIndex")[index].ge(0),
                    expanded_text(written, init_env(index)), written)
    return let(expanded, "expanded", lambda expanded: let(
        retarget_text(expanded, services), "retargeted",
        lambda retargeted: cond(retargeted.eq(expanded), written, retargeted)))


def retarget_output(services: Sequence[Service], index: Expr, pieces: Expr) -> Expr:
    """The pieces joined again, the probes among them retargeted."""
    return pieces.map("piece", lambda piece: cond(
        piece[1].eq(IS_PROBE), retargeted_piece(services, index, piece), piece[0])).join("")


def retargeted_argv(index: Expr, argv: Expr) -> Expr:
    """The program with the retargeted text in place: the exec-form words split again, or
    the script put back at its position with the marks undone."""
    output = variable("retargetOutput")[index]
    script = uncommented(output.replace(SUBSTITUTION_MARK, "$(").replace(AND_MARK, "&&"))
    return cond(variable("scriptIndex")[index].lt(0), output.split(EXEC_JOINER),
                argv.transform_list("position", "element", lambda position, element: cond(
                    position.eq(variable("scriptIndex")[index]), script, element)))


def new_argv(index: Expr, argv: Expr) -> Expr:
    """The program to write. Only a retargeted probe writes it out (with the kubelet's
    expansion in it); otherwise it stays as written."""
    written = variable("written")[index]
    return cond(variable("retargetInput")[index].size().eq(0), written,
                let(retargeted_argv(index, argv), "new_argv", lambda new: cond(
                    new.eq(argv), written, new)))


__all__ = [
    "facts_of", "has_fact", "is_removed", "new_argv", "probes_managed", "program_facts",
    "program_segments", "retarget_input", "retarget_output", "retargeted_argv",
    "retargeted_piece", "script_of",
]
