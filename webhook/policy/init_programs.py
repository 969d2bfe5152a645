"""The policy twin's init containers, one at a time, in CEL: what each program says, whether
the container goes, and whether its program is retargeted.

Each function builds the expression for one init container (its ``index`` in the pod's list),
read by ``transformList`` in ``webhook.policy.mutation``'s variables; they refer to the
variables before theirs by name (``facts``, ``removeInit``... and the reading of
``webhook.policy.container_programs``), as ``mutate.Rules._read_init_containers`` and
``_mutate_init_containers`` refer to what they read before.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook.policy.cel import Expr, all_of, any_of, cond, list_of, not_, string, strings, variable
from webhook.policy.container_programs import INIT_PROGRAMS
from webhook.policy.program import (
    EXTERNAL_TAG,
    FACT_SEPARATOR,
    OTHER_HOST_TAG,
    PORT_APART_TAG,
    SERVICE_TAG_PREFIX,
    WORK_TAG,
    CommandRecord,
    command_facts,
    service_tag,
)
from webhook.settings import Action, Service, Settings


def facts_of(index: Expr) -> Expr:
    """The facts of init container ``index``'s program (tags of ``webhook.policy.program``)."""
    return variable("facts")[index]


def has_fact(fact: str, index: Expr) -> Expr:
    return string(fact).is_in(facts_of(index))


def probes_managed(index: Expr) -> Expr:
    """Whether the program probes at least one managed service."""
    return facts_of(index).exists("fact", lambda fact: fact.starts_with(SERVICE_TAG_PREFIX))


def program_facts(services: Sequence[Service], index: Expr, records: Expr) -> Expr:
    """The facts of a program from the records of its commands, as one flat list; a script
    the rules cannot read says only that it works (its probes are not read)."""
    group = INIT_PROGRAMS
    kinds, writes = group.var("kinds")[index], group.var("writes")[index]
    facts = records.transform_list("position", "record", lambda position, record: command_facts(
        CommandRecord(record), kinds[position], writes[position], services,
        group.in_script(index), group.env(index)).join(FACT_SEPARATOR)
    ).join(FACT_SEPARATOR).split(FACT_SEPARATOR).filter("fact", lambda fact: fact.ne(""))
    return cond(group.var("unreadable")[index], list_of(WORK_TAG), facts)


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


def is_retargeted(index: Expr) -> Expr:
    """Whether a kept init container's program is retargeted (mutate.Rules._retarget): it
    probes a managed service or does work, and the policy can read it where it stands."""
    return all_of(not_(variable("removeInit")[index]),
                  any_of(probes_managed(index), has_fact(WORK_TAG, index)),
                  not_(variable("computed")[index]), not_(variable("unreadable")[index]))


__all__ = ["facts_of", "has_fact", "is_removed", "is_retargeted", "probes_managed",
           "program_facts"]
