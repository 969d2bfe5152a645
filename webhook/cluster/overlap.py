"""Other mutators of the namespace's pods: webhooks and MutatingAdmissionPolicies that also act
at pod CREATE, for doctor's overlap line.

Mutators run one after another, and what one does the next may undo: a sidecar injector that
adds a ``wait-for-mlflow`` after backend-injector ran, or a policy that sets
``MLFLOW_TRACKING_URI`` back. The apiserver runs every MutatingAdmissionPolicy before any
mutating webhook, and webhook configurations in the order of their names; a mutator whose
``reinvocationPolicy`` is ``IfNeeded`` is called once more when a later one changed the object.
So the line names each other mutator whose rules match CREATE of pods and whose
namespaceSelector matches the namespace, where it runs relative to backend-injector, its
``reinvocationPolicy``, and whether it touches init containers or env when that can be known:
for a policy, its CEL text says (its mutations and the variables they read); what a webhook
does is known only to its server.

An objectSelector or matchConditions may still spare the pods at hand: they are mentioned,
not evaluated. Policies are read as ``admissionregistration.k8s.io/v1``, else ``v1beta1``; a
cluster that serves neither has none. A policy without a binding does nothing and is left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.cluster.checks import Check, passed, warned
from webhook.cluster.client import Cluster, JsonObject, namespace_path, webhook_configuration_path
from webhook.cluster.selectors import selector_matches

CHECK_NAME = "other mutating webhooks and policies"
POLICY_API_VERSIONS = ("admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# How this project labels what it installs, the policy twin included.
PROJECT_LABEL = ("app.kubernetes.io/name", "backend-injector")
# The fields of a pod that backend-injector changes, as CEL names them.
_TOUCHED_FIELDS = (("initContainers", re.compile(r"\binitContainers\b")),
                   ("env", re.compile(r"\benv(?:From)?\b")))


@dataclass(frozen=True)
class Mutator:
    """Another webhook or policy that acts on the namespace's pod creations."""

    kind: str  # "MutatingWebhookConfiguration" or "MutatingAdmissionPolicy"
    name: str
    webhook: str = ""  # the webhook's name within its configuration
    reinvocation: str = "Never"
    # True: runs before backend-injector's webhook; None: unknown (none is installed).
    before: bool | None = None
    # The pod fields its CEL names; None: cannot be known (a webhook).
    touches: tuple[str, ...] | None = None
    narrowed_by: tuple[str, ...] = ()
    policy_twin: bool = False

    def describe(self) -> str:
        what = (f"webhook {self.webhook} of {self.kind} {self.name}" if self.webhook
                else f"{self.kind} {self.name}")
        if self.policy_twin:
            what += " (backend-injector's own policy twin)"
        facts = []
        if self.before is not None:
            facts.append(f"runs {'before' if self.before else 'after'} backend-injector")
        facts.append(f"reinvocationPolicy {self.reinvocation}")
        if self.touches is None:
            facts.append("whether it changes init containers or env cannot be known from its "
                         "configuration")
        elif self.touches:
            facts.append(f"its CEL changes {' and '.join(self.touches)}")
        else:
            facts.append("its CEL names neither initContainers nor env")
        if self.narrowed_by:
            facts.append(f"{' and '.join(self.narrowed_by)} may spare some pods")
        return f"{what} ({'; '.join(facts)})"


# --- matching -------------------------------------------------------------------------------


def rule_matches_pod_create(rule: Mapping[str, Any]) -> bool:
    """A webhook rule or a policy's resource rule that covers CREATE of core v1 pods (not a
    subresource of them; ``*/*`` covers those and pods alike)."""
    def has(key: str, *accepted: str) -> bool:
        return any(value in accepted for value in rule.get(key) or [])

    return (has("operations", "CREATE", "*") and has("apiGroups", "", "*")
            and has("apiVersions", "v1", "*") and has("resources", "pods", "*", "*/*")
            and rule.get("scope", "*") in ("*", "Namespaced"))


def _any_rule_matches(rules: Iterable[Mapping[str, Any]] | None) -> bool:
    return any(rule_matches_pod_create(rule) for rule in rules or [])


def _narrowing(selector_owner: Mapping[str, Any]) -> list[str]:
    notes = []
    if selector_owner.get("objectSelector"):
        notes.append("an objectSelector")
    if selector_owner.get("matchConditions"):
        notes.append("matchConditions")
    return notes


def webhook_mutators(configurations: Sequence[Mapping[str, Any]],
                     namespace_labels: Mapping[str, str], *, own_names: Iterable[str],
                     ours: str | None) -> list[Mutator]:
    """The webhooks of configurations other than `own_names` that act on pod creations in a
    namespace with `namespace_labels`; `ours` is the name of backend-injector's active
    configuration, for the order (the apiserver sorts configurations by name)."""
    own = set(own_names)
    found = []
    for configuration in sorted(configurations, key=_name):
        name = _name(configuration)
        if name in own:
            continue
        for webhook in configuration.get("webhooks") or []:
            if not _any_rule_matches(webhook.get("rules")):
                continue
            if not selector_matches(webhook.get("namespaceSelector") or {}, namespace_labels):
                continue
            found.append(Mutator(
                kind="MutatingWebhookConfiguration", name=name,
                webhook=str(webhook.get("name", "?")),
                reinvocation=str(webhook.get("reinvocationPolicy") or "Never"),
                before=None if ours is None else name < ours,
                narrowed_by=tuple(_narrowing(webhook))))
    return found


def policy_mutators(policies: Sequence[Mapping[str, Any]],
                    bindings: Sequence[Mapping[str, Any]],
                    namespace_labels: Mapping[str, str], *, ours: str | None) -> list[Mutator]:
    """The bound MutatingAdmissionPolicies that act on pod creations in a namespace with
    `namespace_labels`: the policy's constraints and one of its bindings must both match."""
    bound: dict[str, list[Mapping[str, Any]]] = {}
    for binding in bindings:
        bound.setdefault(str((binding.get("spec") or {}).get("policyName")), []).append(binding)
    found = []
    for policy in sorted(policies, key=_name):
        name = _name(policy)
        spec = policy.get("spec") or {}
        constraints = spec.get("matchConstraints") or {}
        if not _any_rule_matches(constraints.get("resourceRules")):
            continue
        excluded = [rule for rule in constraints.get("excludeResourceRules") or []
                    if not rule.get("resourceNames")]
        if _any_rule_matches(excluded):
            continue
        if not selector_matches(constraints.get("namespaceSelector") or {}, namespace_labels):
            continue
        matching = [binding for binding in bound.get(name, [])
                    if _binding_matches(binding, namespace_labels)]
        if not matching:
            continue
        narrowed = _narrowing(constraints) + _narrowing(spec)
        for binding in matching:
            narrowed += _narrowing((binding.get("spec") or {}).get("matchResources") or {})
        labels = (policy.get("metadata") or {}).get("labels") or {}
        found.append(Mutator(
            kind="MutatingAdmissionPolicy", name=name,
            reinvocation=str(spec.get("reinvocationPolicy") or "Never"),
            # Every policy runs before every webhook.
            before=None if ours is None else True,
            touches=touched_fields(policy),
            narrowed_by=tuple(dict.fromkeys(narrowed)),
            policy_twin=labels.get(PROJECT_LABEL[0]) == PROJECT_LABEL[1]))
    return found


def _binding_matches(binding: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
    resources = (binding.get("spec") or {}).get("matchResources") or {}
    if resources.get("resourceRules") and not _any_rule_matches(resources["resourceRules"]):
        return False
    return selector_matches(resources.get("namespaceSelector") or {}, namespace_labels)


def touched_fields(policy: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod fields backend-injector changes that the policy's CEL names: its mutations'
    expressions and its variables (a mutation may build its patch in one)."""
    spec = policy.get("spec") or {}
    texts = [str(variable.get("expression") or "") for variable in spec.get("variables") or []]
    for mutation in spec.get("mutations") or []:
        for key in ("applyConfiguration", "jsonPatch"):
            texts.append(str((mutation.get(key) or {}).get("expression") or ""))
    text = "\n".join(texts)
    return tuple(field for field, pattern in _TOUCHED_FIELDS if pattern.search(text))


def _name(item: Mapping[str, Any]) -> str:
    return str((item.get("metadata") or {}).get("name", ""))


# --- the check ------------------------------------------------------------------------------


def overlap_check(cluster: Cluster, namespace: str, *, ours: JsonObject | None,
                  own_names: Iterable[str]) -> Check:
    """The overlap line for `namespace`; `ours` is backend-injector's active webhook
    configuration (None when none is), `own_names` every configuration name that is this
    project's. A refused request raises `ClusterError`."""
    found = cluster.get(namespace_path(namespace))
    labels = dict(((found or {}).get("metadata") or {}).get("labels") or {})
    labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
    ours_name = _name(ours) if ours is not None else None
    configurations = (cluster.get(webhook_configuration_path()) or {}).get("items") or []
    mutators = webhook_mutators(configurations, labels, own_names=own_names, ours=ours_name)
    policies, bindings, served = _policies(cluster)
    mutators += policy_mutators(policies, bindings, labels, ours=ours_name)
    if not mutators:
        note = "" if served else " (this cluster serves no MutatingAdmissionPolicy API)"
        return passed(CHECK_NAME, f"no other mutating webhook or policy for pods of "
                                  f"{namespace}{note}")
    ours_reinvocation = _reinvocation(ours)
    detail = (f"{len(mutators)} other mutator{'s' if len(mutators) > 1 else ''} of pods in "
              f"{namespace}: " + "; ".join(mutator.describe() for mutator in mutators))
    if ours_reinvocation is not None:
        detail += f"; backend-injector's reinvocationPolicy is {ours_reinvocation}"
    if ours_reinvocation == "Never":
        fix = ("set reinvocationPolicy: IfNeeded on backend-injector's webhook, so that what a "
               "later mutator adds (a waiter, in-cluster env) is changed too")
    else:
        fix = ("order matters: a mutator that runs later and puts a waiter or an in-cluster "
               "address back wins; look for them in a created pod (kubectl get pod NAME -o "
               "yaml)")
    return warned(CHECK_NAME, detail, fix)


def _reinvocation(configuration: JsonObject | None) -> str | None:
    if configuration is None:
        return None
    webhook = (configuration.get("webhooks") or [{}])[0]
    return str(webhook.get("reinvocationPolicy") or "Never")


def _policies(cluster: Cluster) -> tuple[list[JsonObject], list[JsonObject], bool]:
    """The policies and bindings of the first policy API version the cluster serves, and
    whether it serves one (an API it does not serve answers 404, read as None)."""
    for version in POLICY_API_VERSIONS:
        policies = cluster.get(f"/apis/{version}/mutatingadmissionpolicies")
        if policies is None:
            continue
        bindings = cluster.get(f"/apis/{version}/mutatingadmissionpolicybindings") or {}
        return list(policies.get("items") or []), list(bindings.get("items") or []), True
    return [], [], False
