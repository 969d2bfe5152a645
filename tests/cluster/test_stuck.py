"""Finding the pods stuck in Init that the webhook never changed, and their owners; and the
doctor line that lists them. The real thing runs in tests/e2e/test_node_walk.py (g1)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.cluster.memory_cluster import WorkloadCluster
from webhook.cluster import doctor
from webhook.cluster.client import namespace_path, namespaced_path
from webhook.cluster.stuck import (
    Owner,
    StuckPod,
    init_container_waiting,
    listed,
    owner_chain,
    read_stuck,
    stuck_in,
)
from webhook.rules.mutate import STATUS_KEY, Rules
from webhook.settings import load_settings

NAMESPACE = "flts-plain"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return Rules(load_settings(environ={}))


def controller(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": f"uid-{name}",
            "controller": True}


def chart_pod(name: str, *, owner: tuple[str, str] | None = None, waiting_in: str | None =
              "wait-for-mlflow", phase: str = "Pending") -> dict[str, Any]:
    """A pod of the flts chart as the kubelet reports it: wait-for-kafka passed, then held in
    `waiting_in` (None: past its init containers)."""
    statuses = [{"name": "wait-for-kafka",
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
    statuses.append({"name": "wait-for-mlflow",
                     "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
                     if waiting_in == "wait-for-mlflow"
                     else {"terminated": {"exitCode": 0, "reason": "Completed"}}})
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if owner is not None:
        metadata["ownerReferences"] = [controller(*owner)]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {
            "initContainers": [
                {"name": "wait-for-kafka", "image": "busybox:1.35",
                 "command": ["sh", "-c", "until nc -z kafka 9092; do sleep 2; done"]},
                {"name": "wait-for-mlflow", "image": "busybox:1.35",
                 "command": ["sh", "-c", "until nc -z mlflow 5000; do sleep 2; done"]},
            ],
            "containers": [{"name": "trainer", "image": "flts/train:1",
                            "env": [{"name": "MLFLOW_TRACKING_URI",
                                     "value": "http://mlflow:5000"}]}],
        },
        "status": {"phase": phase, "initContainerStatuses": statuses},
    }


# --- which init container holds a pod ----------------------------------------------------


def test_a_pending_pod_is_held_in_its_running_init_container() -> None:
    assert init_container_waiting(chart_pod("a")) == "wait-for-mlflow"


def test_a_crash_looping_init_container_holds_the_pod_too() -> None:
    pod = chart_pod("a")
    pod["status"]["initContainerStatuses"][1]["state"] = {
        "waiting": {"reason": "CrashLoopBackOff"}}
    assert init_container_waiting(pod) == "wait-for-mlflow"


def test_a_pod_past_its_init_containers_or_not_yet_reported_is_not_held() -> None:
    assert init_container_waiting(chart_pod("a", waiting_in=None, phase="Running")) is None
    # Pending for another reason (its image, its volumes): the init containers all passed.
    assert init_container_waiting(chart_pod("a", waiting_in=None)) is None
    unscheduled = chart_pod("a")
    del unscheduled["status"]["initContainerStatuses"]
    assert init_container_waiting(unscheduled) is None


def test_a_running_native_sidecar_is_passed_over() -> None:
    pod = chart_pod("a")
    pod["spec"]["initContainers"].insert(0, {"name": "proxy", "image": "envoy",
                                             "restartPolicy": "Always"})
    pod["status"]["initContainerStatuses"].insert(0, {"name": "proxy",
                                                      "state": {"running": {}}})
    assert init_container_waiting(pod) == "wait-for-mlflow"


# --- stuck: the rules would change it, and the webhook never did --------------------------


def test_a_pod_the_webhook_never_admitted_is_stuck_in_its_waiter(rules: Rules) -> None:
    assert stuck_in(chart_pod("a"), rules, NAMESPACE) == "wait-for-mlflow"


def test_a_pod_the_webhook_admitted_is_not_stuck(rules: Rules) -> None:
    pod = chart_pod("a")
    pod["metadata"]["annotations"] = {STATUS_KEY: '{"removed":["wait-for-mlflow"]}'}
    assert stuck_in(pod, rules, NAMESPACE) is None


def test_a_pod_the_rules_leave_alone_is_not_stuck_on_a_managed_host(rules: Rules) -> None:
    """Waiting for Kafka, which runs in the cluster: creating it anew would not help."""
    pod = chart_pod("kafka-consumer")
    pod["spec"]["initContainers"] = pod["spec"]["initContainers"][:1]
    pod["spec"]["containers"][0]["env"] = [{"name": "KAFKA_BOOTSTRAP_SERVERS",
                                           "value": "kafka:9092"}]
    pod["status"]["initContainerStatuses"] = [{"name": "wait-for-kafka",
                                               "state": {"running": {}}}]
    assert init_container_waiting(pod) == "wait-for-kafka"
    assert stuck_in(pod, rules, NAMESPACE) is None


def test_a_pod_that_opted_out_is_not_stuck_for_the_webhook(rules: Rules) -> None:
    pod = chart_pod("a")
    pod["metadata"]["annotations"] = {"backend-injector/inject": "false"}
    assert stuck_in(pod, rules, NAMESPACE) is None


# --- owners ------------------------------------------------------------------------------


def objects_by_kind(*objects: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


def owned(kind: str, name: str, owner: tuple[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if owner is not None:
        metadata["ownerReferences"] = [controller(*owner)]
    return {"kind": kind, "metadata": metadata, "spec": {}}


@pytest.mark.parametrize(("owner", "above", "chain"), [
    (("ReplicaSet", "train-gru-5d8f"), [owned("Deployment", "train-gru")],
     ["ReplicaSet/train-gru-5d8f", "Deployment/train-gru"]),
    (("Job", "nightly-2901"), [owned("CronJob", "nightly")],
     ["Job/nightly-2901", "CronJob/nightly"]),
    (("StatefulSet", "db"), [], ["StatefulSet/db"]),
    (("DaemonSet", "agent"), [], ["DaemonSet/agent"]),
    (("Job", "preprocess-x1"), [], ["Job/preprocess-x1"]),
    (("ReplicaSet", "lonely"), [], ["ReplicaSet/lonely"]),
])
def test_a_pod_is_followed_to_its_top_owner(owner: tuple[str, str], above: list[Any],
                                           chain: list[str]) -> None:
    kind, name = owner
    top = above[0]["metadata"]["name"] if above else None
    middle = owned(kind, name, (above[0]["kind"], top) if top else None)
    known = objects_by_kind(middle, *above)
    owners = owner_chain(chart_pod("p", owner=owner), lambda k, n: known.get((k, n)))
    assert [o.label for o in owners] == chain
    assert all(o.object is not None for o in owners)


def test_a_bare_pod_has_no_owners_and_only_controllers_count() -> None:
    pod = chart_pod("bare")
    pod["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "name": "x"}]  # not controller
    assert owner_chain(pod, lambda k, n: pytest.fail("nothing to read")) == ()


def test_an_unknown_or_missing_owner_ends_the_chain_unread() -> None:
    rollout_owned = owned("ReplicaSet", "web-7c", ("Rollout", "web"))
    owners = owner_chain(chart_pod("p", owner=("ReplicaSet", "web-7c")),
                         lambda k, n: rollout_owned if k == "ReplicaSet" else pytest.fail(k))
    assert owners == (Owner("ReplicaSet", "web-7c", rollout_owned), Owner("Rollout", "web", None))
    assert owner_chain(chart_pod("p", owner=("ReplicaSet", "gone")), lambda k, n: None) == (
        Owner("ReplicaSet", "gone", None),)


# --- reading the namespace ---------------------------------------------------------------


def put(cluster: WorkloadCluster, group_version: str, resource: str,
        obj: dict[str, Any]) -> None:
    path = namespaced_path(group_version, NAMESPACE, resource, obj["metadata"]["name"])
    cluster.objects[path] = copy.deepcopy(obj)


def stuck_namespace() -> WorkloadCluster:
    """Two stuck pods of one Deployment, a stuck Job pod, an admitted pod, a terminating one,
    and Kafka past its init."""
    cluster = WorkloadCluster()
    cluster.objects[namespace_path(NAMESPACE)] = {"metadata": {"name": NAMESPACE}}
    put(cluster, "apps/v1", "deployments", owned("Deployment", "train-gru"))
    put(cluster, "apps/v1", "replicasets",
        owned("ReplicaSet", "train-gru-5d8f", ("Deployment", "train-gru")))
    put(cluster, "batch/v1", "jobs", owned("Job", "preprocess-x1"))
    for name in ("train-gru-5d8f-aaaaa", "train-gru-5d8f-bbbbb"):
        put(cluster, "v1", "pods", chart_pod(name, owner=("ReplicaSet", "train-gru-5d8f")))
    put(cluster, "v1", "pods", chart_pod("preprocess-x1-ccccc", owner=("Job", "preprocess-x1")))
    admitted = chart_pod("eval-ddddd")
    admitted["metadata"]["annotations"] = {STATUS_KEY: "{}"}
    put(cluster, "v1", "pods", admitted)
    leaving = chart_pod("train-gru-old-eeeee", owner=("ReplicaSet", "train-gru-5d8f"))
    leaving["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    put(cluster, "v1", "pods", leaving)
    put(cluster, "v1", "pods", chart_pod("kafka-fffff", waiting_in=None, phase="Running"))
    return cluster


def test_the_namespace_is_read_with_each_owner_once(rules: Rules) -> None:
    cluster = stuck_namespace()
    found = read_stuck(cluster, NAMESPACE, rules)
    assert [pod.describe() for pod in found] == [
        "preprocess-x1-ccccc (Job/preprocess-x1, in wait-for-mlflow)",
        "train-gru-5d8f-aaaaa (ReplicaSet/train-gru-5d8f of Deployment/train-gru, in "
        "wait-for-mlflow)",
        "train-gru-5d8f-bbbbb (ReplicaSet/train-gru-5d8f of Deployment/train-gru, in "
        "wait-for-mlflow)",
    ]
    replica_set_reads = [call for call in cluster.calls if "/replicasets/" in call]
    assert replica_set_reads == [
        f"GET /apis/apps/v1/namespaces/{NAMESPACE}/replicasets/train-gru-5d8f"]


def test_a_long_list_is_cut_and_counted() -> None:
    pods = [StuckPod(f"p{index}", "wait-for-mlflow", ()) for index in range(4)]
    assert list(listed(pods, 2)) == ["p0 (a bare pod, in wait-for-mlflow)",
                                     "p1 (a bare pod, in wait-for-mlflow)", "2 more"]


# --- doctor's line -----------------------------------------------------------------------


def doctor_checks(cluster: WorkloadCluster) -> dict[str, doctor.Check]:
    return {check.name: check for check in doctor.Doctor(cluster, namespace=NAMESPACE).run()}


def test_doctor_names_the_stuck_pods_their_owners_and_the_restart() -> None:
    cluster = stuck_namespace()
    line = doctor_checks(cluster)["pods stuck in Init"]
    assert line.status is doctor.Status.WARN
    assert line.detail.startswith("3 pods created without the webhook's changes wait in Init: ")
    assert "train-gru-5d8f-aaaaa (ReplicaSet/train-gru-5d8f of Deployment/train-gru" in (
        line.detail)
    assert "preprocess-x1-ccccc (Job/preprocess-x1, in wait-for-mlflow)" in line.detail
    assert "eval-ddddd" not in line.detail and "kafka" not in line.detail
    # The dry runs speak of new pods; this line says the ones already there were not changed.
    assert "these, already there, were not changed" in line.detail
    assert line.fix.startswith(f"backend-injector restart -n {NAMESPACE}")


def test_doctor_passes_when_nothing_is_stuck() -> None:
    cluster = stuck_namespace()
    for path in [path for path in cluster.objects if "/pods/" in path]:
        pod = cluster.objects[path]
        pod["metadata"].setdefault("annotations", {})[STATUS_KEY] = "{}"
    assert doctor_checks(cluster)["pods stuck in Init"].status is doctor.Status.PASS


def test_doctor_says_nothing_of_stuck_pods_in_a_namespace_that_is_not_there() -> None:
    assert "pods stuck in Init" not in doctor_checks(WorkloadCluster())
