"""The MutatingAdmissionPolicy twin admits pods exactly as the webhook's rules would.

Proof through the real apiserver, field by field. For every case pod (the pod templates of
the e2e charts, rendered with the harness's helm, and a set of edge pods; see
harness/policy_pods.py) and for each policy instance under test:

* the raw pod is created in a namespace bound to the policy, so the apiserver's defaulting
  and the CEL mutate it;
* the same raw pod is defaulted by a server-side dry run in a namespace no policy touches,
  handed to ``Rules`` (what the webhook runs), patched, and created there;

and the two stored pods are compared with only server-assigned fields left out (uid,
timestamps, resourceVersion, managedFields, status, namespace and the random suffix of the
service-account token volume). Both sides went through the same defaulting, so any difference
is a difference between the CEL and the Python rules (harness/policy_twin.py).

Instances: the embedded default (remove, credentials by reference, v1), rewrite mode (v1), and
credentials as values with ``add_env_to: all`` through the v1beta1 API.

Besides the chart and the edge pods, the cases hold a pod for each word of the grammar in a
waiter, for each host form of each managed service, and for each spelling of the opt-out;
tests below check what these must show beyond equality (not vacuous). Shapes that the two
twins read differently are not compared for equality: each has a pod of its own (DEGRADED)
checked for what docs/policy.md says the policy does instead. Random pods keep to the shapes
both read alike, and a pod as large as the webhook reads checks the CEL's cost.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from webhook.rules.mutate import (
    INJECT_KEY,
    MAX_POD_PROGRAM_CHARS,
    OPT_OUT_VALUES,
    STATUS_KEY,
    Rules,
)
from webhook.rules.programs import MAX_PROGRAM_CHARS
from webhook.settings import Action

from .harness import policy_pods
from .harness.policy_pods import (
    CASE_ANNOTATION,
    IN_CLUSTER_ENV,
    KAFKA_WAIT,
    PORT_APART_IN_REWRITE,
    chart_pods,
    edge_pods,
    grammar_pods,
    opt_out_pods,
    service_pods,
)
from .harness.policy_random import random_pods
from .harness.policy_twin import (
    INSTANCES,
    Cluster,
    Comparison,
    Instance,
    compare,
    create_pods,
    differences,
    install,
    kubectl_json,
    normalized,
    webhook_pod,
)

pytestmark = pytest.mark.e2e


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(control_plane: Cluster) -> list[dict[str, Any]]:
    return (chart_pods(control_plane) + edge_pods() + grammar_pods()
            + service_pods(INSTANCES[0].settings) + opt_out_pods())


@pytest.fixture(scope="module")
def comparisons(control_plane: Cluster,
                cases: list[dict[str, Any]]) -> Iterator[dict[str, Comparison]]:
    for instance in INSTANCES:
        install(control_plane, instance)
    yield {instance.name: compare(control_plane, instance, cases) for instance in INSTANCES}
    for instance in INSTANCES:
        control_plane.kubectl("delete", "mutatingadmissionpolicybinding,mutatingadmissionpolicy",
                              instance.name, "--ignore-not-found")
        control_plane.kubectl("delete", "namespace", instance.policy_namespace,
                              instance.plain_namespace, "--wait=false", "--ignore-not-found")


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_policy_and_webhook_rules_store_the_same_pods(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    comparison = comparisons[instance.name]
    assert set(comparison.policy) == set(comparison.webhook) == set(comparison.raw)
    assert set(PORT_APART_IN_REWRITE) <= set(comparison.raw)

    def expected(name: str) -> dict[str, Any]:
        pod = normalized(comparison.webhook[name])
        if instance.settings.action is Action.REWRITE and name in PORT_APART_IN_REWRITE:
            pod = removed_instead(pod, PORT_APART_IN_REWRITE[name])
        return pod

    unequal = {
        name: differences(expected(name), normalized(pod))
        for name, pod in comparison.policy.items()
        if normalized(pod) != expected(name)
    }
    assert not unequal, "\n\n".join(f"== {name}\n{diff}" for name, diff in unequal.items())


def removed_instead(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """``pod`` with init container ``name`` removed rather than retargeted, status and all."""
    pod = copy.deepcopy(pod)
    pod["spec"]["initContainers"] = [c for c in pod["spec"]["initContainers"]
                                     if c["name"] != name]
    annotations = pod["metadata"]["annotations"]
    status = json.loads(annotations[STATUS_KEY])
    assert name in status["rewritten"], status
    status["rewritten"].remove(name)
    status["removed"].append(name)
    annotations[STATUS_KEY] = json.dumps(status, separators=(",", ":"))
    return pod


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_the_comparison_is_not_vacuous(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Most cases are changed, and the chart's trainers lose their wait-for-mlflow."""
    comparison = comparisons[instance.name]
    changed = [name for name, pod in comparison.policy.items()
               if STATUS_KEY in pod["metadata"].get("annotations", {})]
    assert len(changed) > len(comparison.policy) * 2 // 3
    trainer = comparison.policy["chart-deployment-train-gru"]
    names = [c["name"] for c in trainer["spec"].get("initContainers", [])]
    if instance.settings.action is Action.REMOVE:
        assert names == ["wait-for-kafka"]
    else:
        assert "wait-for-mlflow" in names
        assert "host.docker.internal" in json.dumps(trainer["spec"]["initContainers"])
    for name in ("opt-out-annotation", "opt-out-label", "opt-out-spelling"):
        assert STATUS_KEY not in comparison.policy[name]["metadata"].get("annotations", {})


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_a_second_pass_changes_nothing(
    control_plane: Cluster, comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Pods that the policy already mutated, created again through it, come out unchanged:
    the CEL guards every operation on equality, so reinvocation is a no-op."""
    comparison = comparisons[instance.name]
    again = []
    for name, pod in comparison.policy.items():
        copy_of = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {k: v for k, v in pod["metadata"].items()
                                if k in ("labels", "annotations")} | {"name": f"again-{name}"},
                   "spec": copy.deepcopy(pod["spec"])}
        again.append(copy_of)
    stored = create_pods(control_plane, instance.policy_namespace, again)
    rules = Rules(instance.settings)
    assert not [name for name, pod in comparison.policy.items() if rules.mutate_pod(pod).changed]
    changed = {}
    for name, pod in comparison.policy.items():
        first, second = normalized(pod), normalized(stored[f"again-{name}"])
        second["metadata"]["name"] = name
        if first != second:
            changed[name] = differences(first, second)
    assert not changed, "\n\n".join(f"== {name}\n{diff}" for name, diff in changed.items())


def _status(pod: dict[str, Any]) -> dict[str, list[str]]:
    status: dict[str, list[str]] = json.loads(pod["metadata"]["annotations"][STATUS_KEY])
    return status


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_every_opt_out_spelling_leaves_the_pod_alone(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    comparison = comparisons[instance.name]
    opted_out = [name for name, pod in comparison.raw.items()
                 if pod["metadata"].get("annotations", {}).get(CASE_ANNOTATION) == "opt-out"]
    assert len(opted_out) == len(OPT_OUT_VALUES) * 5
    for name in opted_out:
        stored = comparison.policy[name]
        assert STATUS_KEY not in stored["metadata"]["annotations"], name
        assert [c["name"] for c in stored["spec"]["initContainers"]] == [
            "wait-for-mlflow", "wait-for-kafka"], name
        assert stored["spec"]["containers"][0]["env"] == IN_CLUSTER_ENV, name


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_every_service_is_recognised_in_each_host_form(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Each managed service's waiter is removed, or in rewrite mode retargeted at the
    external address (removed when the service has none), whichever host form names it."""
    comparison = comparisons[instance.name]
    services = {service.name: service for service in instance.settings.services}
    checked = set()
    for name, raw in comparison.raw.items():
        service = services.get(raw["metadata"].get("annotations", {}).get(CASE_ANNOTATION, ""))
        if service is None or not name.startswith("service-"):
            continue
        checked.add(service.name)
        stored = comparison.policy[name]
        status = _status(stored)
        kept = {c["name"]: c for c in stored["spec"]["initContainers"]}
        if instance.settings.action is Action.REMOVE or service.external is None:
            assert "probe" in status["removed"] and "probe" not in kept, name
        else:
            assert "probe" in status["rewritten"], name
            assert f"{service.external.host} {service.external.port}" in kept["probe"][
                "command"][2], name
    assert checked == set(services)


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_an_earlier_status_is_merged_not_overwritten(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """The names of an earlier status come first and stay; this pass's are added once."""
    earlier = json.loads(comparisons[instance.name].raw["earlier-status"]["metadata"][
        "annotations"][STATUS_KEY])
    status = _status(comparisons[instance.name].policy["earlier-status"])
    for key, names in status.items():
        assert names[:len(earlier[key])] == earlier[key], key
        assert len(names) == len(set(names)), key
    assert len(status["removed"]) + len(status["rewritten"]) > 1
    assert len(status["env"]) > len(earlier["env"])


def test_excluded_namespaces_are_never_mutated(control_plane: Cluster,
                                               comparisons: dict[str, Comparison]) -> None:
    """A namespace on the excluded list is left alone even when labelled to opt in."""
    instance = INSTANCES[0]
    excluded = sorted(instance.settings.excluded_namespaces - {"kube-system", "kube-public",
                                                              "kube-node-lease"})[0]
    kubectl_json(control_plane, "create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": excluded, "labels": {INJECT_KEY: instance.selector_value}}}))
    try:
        pod = policy_pods.pod("untouched",
                              init=[policy_pods.sh("wait-for-mlflow", "nc -z mlflow 5000")])
        stored = create_pods(control_plane, excluded, [pod], dry_run=True)["untouched"]
        assert STATUS_KEY not in stored["metadata"].get("annotations", {})
        assert stored["spec"]["initContainers"][0]["name"] == "wait-for-mlflow"
    finally:
        control_plane.kubectl("delete", "namespace", excluded, "--wait=false")


def test_only_create_is_mutated(control_plane: Cluster,
                                comparisons: dict[str, Comparison]) -> None:
    """A pod stored before its namespace opted in is not touched by a later UPDATE (had the
    policy matched UPDATE, it would change the immutable spec and the update would fail)."""
    namespace, name = "bi-update", "stored-before"
    kubectl_json(control_plane, "create", "namespace", namespace)
    try:
        pod = policy_pods.pod(name, init=[policy_pods.sh("wait-for-mlflow", "nc -z mlflow 5000")],
                              containers=[policy_pods.app(env=list(IN_CLUSTER_ENV))])
        before = create_pods(control_plane, namespace, [pod])[name]
        kubectl_json(control_plane, "label", "namespace", namespace,
                     f"{INJECT_KEY}={INSTANCES[0].selector_value}")
        time.sleep(2)  # the policy's namespace cache follows the label
        after = kubectl_json(control_plane, "label", "pod", "-n", namespace, name,
                             "e2e/updated=yes")
        assert after["spec"] == before["spec"]
        assert STATUS_KEY not in after["metadata"].get("annotations", {})
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


RANDOM_SEED = int(os.environ.get("BACKEND_INJECTOR_E2E_SEED", "20261126"))
RANDOM_COUNT = 300


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_random_pods_follow_the_rules_step_for_step(
    control_plane: Cluster, comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Random pods (server-side dry runs): the policy stores what the rules give when applied
    as the apiserver applies a policy, that is once and, since the first pass changed the pod
    and reinvocationPolicy is IfNeeded, once more on the result.

    Where the rules are idempotent that is exactly the webhook's pod. Where they are not (a
    bug in the rules, not in the CEL), the policy and the webhook differ; how often is
    reported as a warning.
    """
    rules = Rules(instance.settings)
    pods = random_pods(RANDOM_SEED, RANDOM_COUNT)
    through_policy = create_pods(control_plane, instance.policy_namespace, pods, dry_run=True)
    defaulted = create_pods(control_plane, instance.plain_namespace, pods, dry_run=True)
    unequal, not_idempotent = {}, []
    for pod in pods:
        name = pod["metadata"]["name"]
        once = webhook_pod(defaulted[name], rules)
        twice = webhook_pod(once, rules)
        if normalized(twice) != normalized(once):
            not_idempotent.append(name)
        if normalized(twice) != normalized(through_policy[name]):
            unequal[name] = differences(normalized(twice), normalized(through_policy[name]))
    assert not unequal, f"seed {RANDOM_SEED}:\n" + "\n\n".join(
        f"== {name}: {json.dumps(next(p for p in pods if p['metadata']['name'] == name))}\n{diff}"
        for name, diff in unequal.items()
    )
    if not_idempotent:
        warnings.warn(
            f"{instance.name}: the rules are not idempotent on {len(not_idempotent)} of"
            f" {RANDOM_COUNT} random pods (seed {RANDOM_SEED}), so there the policy (applied"
            f" twice by the apiserver) and the webhook differ: {', '.join(not_idempotent[:8])}",
            stacklevel=1,
        )


def test_variable_ports_and_quoted_hosts_are_idempotent(
    control_plane: Cluster, comparisons: dict[str, Comparison]
) -> None:
    """Once a known difference: in rewrite mode a named waiter probing `mlflow:${MLFLOW_PORT}`
    was retargeted by a first pass (to `...:5000:${MLFLOW_PORT}`) and removed by a second,
    which the policy, run twice by the apiserver, did and the webhook did not. The rules now
    replace a variable port and find the external host inside quotes, so a second pass keeps
    the waiter, and the policy stores what the webhook does."""
    instance = next(i for i in INSTANCES if i.settings.action is Action.REWRITE)
    rules = Rules(instance.settings)
    waiters = {
        "wait-for-mlflow": ("until curl -sf http://mlflow:${MLFLOW_PORT}/health; do sleep 2;"
                            " done"),
        "wait-for-fastapi": 'until nc -z "fastapi"/$FASTAPI_PORT; do sleep 2; done',
    }
    init = [policy_pods.sh(name, script) for name, script in waiters.items()] + [KAFKA_WAIT]
    pod = policy_pods.pod("port-variable", init=init,
                          containers=[policy_pods.app(env=list(IN_CLUSTER_ENV))])
    through_policy = create_pods(control_plane, instance.policy_namespace, [pod],
                                 dry_run=True)["port-variable"]
    defaulted = create_pods(control_plane, instance.plain_namespace, [pod],
                            dry_run=True)["port-variable"]
    once = webhook_pod(defaulted, rules)
    twice = webhook_pod(once, rules)
    assert [c["name"] for c in once["spec"]["initContainers"]] == [
        "wait-for-mlflow", "wait-for-fastapi", "wait-for-kafka"]
    scripts = [c["command"][2] for c in once["spec"]["initContainers"][:2]]
    assert scripts == [
        "until curl -sf http://host.docker.internal:5000/health; do sleep 2; done",
        # The quote stands between host and port, so the port is not the host's: kept as is.
        'until nc -z "host.docker.internal"/$FASTAPI_PORT; do sleep 2; done',
    ]
    assert normalized(twice) == normalized(once)
    assert normalized(through_policy) == normalized(once)


# Shapes the webhook reads and the policy does not follow, one (or two) for each row of
# docs/policy.md's tables that says so, with what the policy does instead: "kept" (the init
# container exactly as written), "removed", "retargeted" (kept, its probe pointed at the
# external address) or "same" (the webhook's pod), for remove and rewrite mode.
_KEPT = {Action.REMOVE: "kept", Action.REWRITE: "kept"}
DEGRADED: dict[str, tuple[dict[str, Any], dict[Action, str]]] = {
    "computed-namespace": (policy_pods.sh("probe", "until nslookup mlflow.$(cat /var/run/"
                                                   "secrets/kubernetes.io/serviceaccount/namespace)"
                                                   ".svc.cluster.local; do sleep 2; done"),
                           _KEPT),
    "wait-tool-command": (policy_pods.init("probe", ["wait-for-it", "mlflow:5000", "--", "echo",
                                                     "up"]), _KEPT),
    "port-apart": (policy_pods.init("probe", ["wait-for-port", "--host=fastapi-app",
                                              "--state=inuse", "80"]),
                   {Action.REMOVE: "same", Action.REWRITE: "removed"}),
    # The shell reader's shapes.
    "command-in-variable": (policy_pods.sh("probe", 'PG_READY="pg_isready -h postgres"; until'
                                                    " $PG_READY; do sleep 1; done"), _KEPT),
    "script-variable-host": (policy_pods.sh("probe", "ADDRESS=minio; until nc -zv $ADDRESS 9000;"
                                                     " do sleep 1; done"), _KEPT),
    "function-from-arguments": (policy_pods.sh("probe", ". /opt/bitnami/scripts/libos.sh\n"
                                                        "check_host() {\n  wait-for-port"
                                                        ' --host="$1" --state=inuse "$2"\n}\n'
                                                        'retry_while "check_host mlflow 5000"'),
                                _KEPT),
    "function-with-probe": (policy_pods.sh("probe", "wait_for_mlflow() { until nc -z mlflow"
                                                    " 5000; do sleep 1; done; }\nwait_for_mlflow"),
                            {Action.REMOVE: "retargeted", Action.REWRITE: "same"}),
    "nested-shell": (policy_pods.sh("probe", "timeout 60 sh -c 'until nc -z mlflow 5000; do"
                                             " sleep 1; done'"),
                     {Action.REMOVE: "same", Action.REWRITE: "retargeted"}),
    "nested-shell-exec-form": (policy_pods.init("probe", ["timeout", "60", "sh", "-c",
                                                          "until nc -z mlflow 5000; do sleep 1;"
                                                          " done"]), _KEPT),
    "eval": (policy_pods.sh("probe", 'eval "until nc -z mlflow 5000; do sleep 1; done"'), _KEPT),
    "trap": (policy_pods.sh("probe", "trap 'echo stopped' TERM\nuntil nc -z mlflow 5000; do"
                                     " sleep 1; done"),
             {Action.REMOVE: "retargeted", Action.REWRITE: "same"}),
    "here-document": (policy_pods.sh("probe", "cat <<EOF > /etc/app.conf\ntracking:"
                                              " http://mlflow:5000\nEOF\nuntil nc -z mlflow 5000;"
                                              " do sleep 1; done"),
                      {Action.REMOVE: "retargeted", Action.REWRITE: "retargeted"}),
    "parse-error-unseen": (policy_pods.sh("probe", "until (nc -z mlflow 5000; do sleep 1; done"),
                           {Action.REMOVE: "removed", Action.REWRITE: "retargeted"}),
    # Shapes the webhook's parser misreads.
    "quoted-host-before-a-variable": (policy_pods.sh("probe", 'until wget -q http://"mlflow":$PORT'
                                                              "/health; do sleep 1; done"),
                                      {Action.REMOVE: "removed",
                                       Action.REWRITE: "retargeted"}),
}


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_the_policy_degrades_as_documented_where_it_does_not_follow(
    control_plane: Cluster, comparisons: dict[str, Comparison], instance: Instance
) -> None:
    rules = Rules(instance.settings)
    pods = [policy_pods.pod(f"degraded-{name}", init=[container],
                            containers=[policy_pods.app(env=list(IN_CLUSTER_ENV))])
            for name, (container, _) in DEGRADED.items()]
    through_policy = create_pods(control_plane, instance.policy_namespace, pods, dry_run=True)
    defaulted = create_pods(control_plane, instance.plain_namespace, pods, dry_run=True)
    wrong = {}
    for name, (container, expected) in DEGRADED.items():
        pod_name = f"degraded-{name}"
        policy_pod = through_policy[pod_name]
        webhook = webhook_pod(defaulted[pod_name], rules)
        outcome = expected[instance.settings.action]
        stored = {c["name"]: c for c in policy_pod["spec"].get("initContainers", [])}
        program = stored["probe"].get("command", []) + stored["probe"].get("args", []) \
            if "probe" in stored else None
        written = container.get("command", []) + container.get("args", [])
        if outcome == "same":
            ok = normalized(webhook) == normalized(policy_pod)
        elif outcome == "removed":
            ok = program is None
        elif outcome == "kept":
            ok = program == written
        else:
            ok = program is not None and "host.docker.internal" in " ".join(program)
        # A degradation is a difference from the webhook, or it would not need documenting.
        real = outcome == "same" or normalized(webhook) != normalized(policy_pod)
        if not (ok and real):
            wrong[name] = f"expected {outcome}; policy stored {program}"
    assert not wrong, wrong


# A readiness loop and work as charts write them, repeated to fill the webhook's budget.
_LONG_SCRIPT_BLOCK = (
    "# wait for the tracking server and the store, then make the bucket\n"
    'until nc -z mlflow 5000 >/dev/null 2>&1; do echo "waiting for mlflow"; sleep 2; done\n'
    "until curl -sf http://minio:9000/minio/health/live; do sleep 2; done\n"
    'mc alias set store http://minio:9000 "$ACCESS" "$SECRET" && mc mb --ignore-existing'
    " store/models > /tmp/bucket.log 2>&1\n"
)


def test_the_policy_reads_every_pod_the_webhook_reads(
    control_plane: Cluster, comparisons: dict[str, Comparison]
) -> None:
    """The CEL's cost stays within the apiserver's limits on a pod with as much program text
    as the webhook reads (MAX_POD_PROGRAM_CHARS: eight init containers of readiness loops and
    work, and an app container's args), in rewrite mode, which retargets all of it: the pod
    is admitted, and stored as the webhook stores it."""
    instance = next(i for i in INSTANCES if i.settings.action is Action.REWRITE)
    app_args = ["--tracking-uri", "http://mlflow:5000"]
    count = 8
    # Each init container's program ("sh", "-c", its script), the app's args, all within the
    # pod's budget.
    room = (MAX_POD_PROGRAM_CHARS - sum(map(len, app_args))) // count - len("sh-c")
    script = _LONG_SCRIPT_BLOCK * (room // len(_LONG_SCRIPT_BLOCK))
    assert len(script) <= MAX_PROGRAM_CHARS
    init = [policy_pods.sh(f"setup-{index}", script) for index in range(count)]
    pod = policy_pods.pod("long-programs", init=init, containers=[policy_pods.app(
        env=list(IN_CLUSTER_ENV), args=app_args)])
    assert count * (len(script) + len("sh-c")) > MAX_POD_PROGRAM_CHARS * 0.9
    rules = Rules(instance.settings)
    through_policy = create_pods(control_plane, instance.policy_namespace, [pod],
                                 dry_run=True)["long-programs"]
    defaulted = create_pods(control_plane, instance.plain_namespace, [pod],
                            dry_run=True)["long-programs"]
    webhook = webhook_pod(defaulted, rules)
    assert "host.docker.internal" in json.dumps(webhook["spec"]["initContainers"][-1])
    assert webhook["spec"]["containers"][0]["args"] == [
        "--tracking-uri", "http://host.docker.internal:5000"]
    assert normalized(through_policy) == normalized(webhook), differences(
        normalized(webhook), normalized(through_policy))
