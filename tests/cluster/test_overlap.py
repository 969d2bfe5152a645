"""doctor's overlap line: which other webhooks and MutatingAdmissionPolicies act on a
namespace's pod creations, in what order, and whether they touch init containers or env; from
fabricated configurations and policies (and the project's own policy twin, as it builds it)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.memory_cluster import MemoryCluster
from webhook.cluster import overlap
from webhook.cluster.checks import Status
from webhook.cluster.client import (
    ClusterError,
    Created,
    namespace_path,
    webhook_configuration_path,
)
from webhook.cluster.doctor import Doctor
from webhook.cluster.overlap import (
    overlap_check,
    policy_mutators,
    rule_matches_pod_create,
    touched_fields,
    webhook_mutators,
)
from webhook.policy.objects import build_policy
from webhook.settings import load_settings

POD_CREATE = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
              "resources": ["pods"], "scope": "Namespaced"}
FLTS = {"kubernetes.io/metadata.name": "flts", "backend-injector/inject": "enabled"}
V1 = "/apis/admissionregistration.k8s.io/v1"
V1BETA1 = "/apis/admissionregistration.k8s.io/v1beta1"


def configuration(name: str, *webhooks: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "webhooks": list(webhooks)}


def webhook(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "rules": [POD_CREATE], **fields}


def policy(name: str, *mutations: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {
        "matchConstraints": {"resourceRules": [POD_CREATE]},
        "mutations": list(mutations), **spec}}


def binding(policy_name: str, **match_resources: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"policyName": policy_name}
    if match_resources:
        spec["matchResources"] = match_resources
    return {"metadata": {"name": f"{policy_name}-binding"}, "spec": spec}


def apply_configuration(expression: str) -> dict[str, Any]:
    return {"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": expression}}


@pytest.mark.parametrize(("changed", "matches"), [
    ({}, True),
    ({"operations": ["*"]}, True),
    ({"operations": ["UPDATE", "DELETE"]}, False),
    ({"resources": ["*"]}, True),
    ({"resources": ["*/*"]}, True),
    ({"resources": ["pods/exec", "pods/status"]}, False),
    ({"resources": ["deployments"], "apiGroups": ["apps"]}, False),
    ({"apiGroups": ["*"], "apiVersions": ["*"]}, True),
    ({"apiVersions": ["v2"]}, False),
    ({"scope": "Cluster"}, False),
    ({"scope": "*"}, True),
])
def test_a_rule_matches_pod_create_as_the_apiserver_reads_it(changed: dict[str, Any],
                                                              matches: bool) -> None:
    assert rule_matches_pod_create({**POD_CREATE, **changed}) is matches


def test_webhooks_are_ours_excluded_selected_by_namespace_and_placed_in_order() -> None:
    configurations = [
        configuration("zz-sidecars", webhook("inject.sidecars.example",
                                             reinvocationPolicy="IfNeeded",
                                             objectSelector={"matchLabels": {"mesh": "on"}})),
        configuration("backend-injector", webhook("inject.backend-injector.svc")),
        configuration("aa-defaults", webhook("defaults.example"),
                      webhook("deployments-only.example",
                              rules=[{**POD_CREATE, "resources": ["deployments"]}])),
        configuration("other-team", webhook("team.example", namespaceSelector={
            "matchLabels": {"team": "web"}})),
    ]
    found = webhook_mutators(configurations, FLTS, own_names={"backend-injector"},
                             ours="backend-injector")
    assert [(m.name, m.webhook, m.before, m.reinvocation) for m in found] == [
        ("aa-defaults", "defaults.example", True, "Never"),
        ("zz-sidecars", "inject.sidecars.example", False, "IfNeeded")]
    sidecars = found[1].describe()
    assert "runs after backend-injector" in sidecars and "reinvocationPolicy IfNeeded" in sidecars
    assert "cannot be known" in sidecars and "an objectSelector may spare some pods" in sidecars
    # With no backend-injector configuration, the order is not claimed.
    (unordered,) = webhook_mutators(configurations[2:3], FLTS, own_names=(), ours=None)
    assert unordered.before is None and "runs" not in unordered.describe()


def test_policies_count_only_when_bound_to_the_namespace() -> None:
    policies = [
        policy("sets-env", apply_configuration(
            "Object{spec: Object.spec{containers: [Object.spec.containers{name: 'app', "
            "env: [Object.spec.containers.env{name: 'X', value: 'y'}]}]}}"),
            reinvocationPolicy="IfNeeded"),
        policy("labels-only", {"patchType": "JSONPatch", "jsonPatch": {
            "expression": "[JSONPatch{op: 'add', path: '/metadata/labels/x', value: 'y'}]"}}),
        policy("unbound", apply_configuration("Object{}")),
        policy("bound-elsewhere", apply_configuration("Object{}")),
        policy("excludes-pods", apply_configuration("Object{}"),
               matchConstraints={"resourceRules": [POD_CREATE],
                                 "excludeResourceRules": [POD_CREATE]}),
        policy("elsewhere", apply_configuration("Object{}"),
               matchConstraints={"resourceRules": [POD_CREATE], "namespaceSelector": {
                   "matchLabels": {"kubernetes.io/metadata.name": "other"}}}),
    ]
    bindings = [binding("sets-env"), binding("labels-only"), binding("excludes-pods"),
                binding("elsewhere"),
                binding("bound-elsewhere", namespaceSelector={"matchLabels": {"team": "web"}})]
    found = policy_mutators(policies, bindings, FLTS, ours="backend-injector")
    assert [(m.name, m.touches, m.reinvocation, m.before) for m in found] == [
        ("labels-only", (), "Never", True),
        ("sets-env", ("env",), "IfNeeded", True)]
    assert "its CEL names neither initContainers nor env" in found[0].describe()
    assert "its CEL changes env" in found[1].describe()


def test_the_policy_twin_is_read_as_changing_init_containers_and_env() -> None:
    twin, twin_binding = build_policy(load_settings(environ={}))
    assert touched_fields(twin) == ("initContainers", "env")
    (found,) = policy_mutators([twin], [twin_binding], FLTS, ours="backend-injector")
    assert found.policy_twin and "backend-injector's own policy twin" in found.describe()
    assert "matchConditions" in found.narrowed_by and "an objectSelector" in found.narrowed_by
    # Its binding selects opted-in namespaces only.
    assert not policy_mutators([twin], [twin_binding], {"kubernetes.io/metadata.name": "plain"},
                               ours=None)


def overlap_cluster(**objects: Any) -> MemoryCluster:
    cluster = MemoryCluster()
    cluster.objects[namespace_path("flts")] = {"metadata": {"name": "flts", "labels": FLTS}}
    cluster.objects.update(objects)
    return cluster


OURS = {"metadata": {"name": "backend-injector"},
        "webhooks": [{"name": "inject.backend-injector.svc", "reinvocationPolicy": "IfNeeded"}]}


def test_nothing_else_is_ok_and_says_when_policies_are_not_served() -> None:
    cluster = overlap_cluster(**{webhook_configuration_path(): {"items": [OURS]}})
    check = overlap_check(cluster, "flts", ours=OURS, own_names={"backend-injector"})
    assert check.status is Status.PASS
    assert check.detail == ("no other mutating webhook or policy for pods of flts (this "
                            "cluster serves no MutatingAdmissionPolicy API)")
    # Both policy versions were asked for before concluding so.
    assert f"GET {V1}/mutatingadmissionpolicies" in cluster.calls
    assert f"GET {V1BETA1}/mutatingadmissionpolicies" in cluster.calls


def test_others_are_a_warning_that_lists_them_from_v1beta1_when_v1_is_not_served() -> None:
    cluster = overlap_cluster(**{
        webhook_configuration_path(): {"items": [OURS, configuration(
            "zz-sidecars", webhook("inject.sidecars.example"))]},
        f"{V1BETA1}/mutatingadmissionpolicies": {"items": [policy(
            "adds-waiter", apply_configuration(
                "Object{spec: Object.spec{initContainers: [Object.spec.initContainers{"
                "name: 'wait-for-mlflow'}]}}"))]},
        f"{V1BETA1}/mutatingadmissionpolicybindings": {"items": [binding("adds-waiter")]},
    })
    check = overlap_check(cluster, "flts", ours=OURS, own_names={"backend-injector"})
    assert check.status is Status.WARN
    assert check.detail.startswith("2 other mutators of pods in flts: webhook "
                                   "inject.sidecars.example of MutatingWebhookConfiguration "
                                   "zz-sidecars (runs after backend-injector; ")
    assert ("MutatingAdmissionPolicy adds-waiter (runs before backend-injector; "
            "reinvocationPolicy Never; its CEL changes initContainers)") in check.detail
    assert check.detail.endswith("backend-injector's reinvocationPolicy is IfNeeded")
    assert "order matters" in check.fix


def test_ours_without_reinvocation_is_told_to_ask_for_it() -> None:
    never = {**OURS, "webhooks": [{"name": "inject.backend-injector.svc"}]}
    cluster = overlap_cluster(**{webhook_configuration_path(): {"items": [
        never, configuration("zz-sidecars", webhook("inject.sidecars.example"))]}})
    check = overlap_check(cluster, "flts", ours=never, own_names={"backend-injector"})
    assert check.detail.endswith("backend-injector's reinvocationPolicy is Never")
    assert "reinvocationPolicy: IfNeeded" in check.fix


class DryRuns(MemoryCluster):
    """Dry runs answered with the pod as sent, for doctor's last checks."""

    def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
        return Created(object=body) if dry_run else super().create(path, body)


class Forbidden(DryRuns):
    def get(self, path: str) -> dict[str, Any] | None:
        if "mutatingadmissionpolicies" in path:
            raise ClusterError("cannot read policies: forbidden: User \"dev\" cannot list "
                               "resource \"mutatingadmissionpolicies\"")
        return super().get(path)


def test_doctor_prints_the_line_and_a_refused_list_only_warns() -> None:
    # A dev registration: its URL answers nothing, so the checks that need it fail quickly.
    dev = {"metadata": {"name": "backend-injector-dev"},
           "webhooks": [{"clientConfig": {"url": "https://127.0.0.1:9/mutate"}}]}
    objects = {**overlap_cluster().objects,
               webhook_configuration_path("backend-injector-dev"): dev,
               webhook_configuration_path(): {"items": [dev]}}
    cluster = DryRuns()
    cluster.objects = dict(objects)
    lines = {check.name: check for check in Doctor(cluster, namespace="flts").run()}
    assert lines[overlap.CHECK_NAME].status is Status.PASS

    forbidden = Forbidden()
    forbidden.objects = dict(objects)
    lines = {check.name: check for check in Doctor(forbidden, namespace="flts").run()}
    assert lines[overlap.CHECK_NAME].status is Status.WARN
    assert "forbidden" in lines[overlap.CHECK_NAME].detail
