"""`backend-injector restart` without a cluster: the plan for every kind of owner, the objects
it writes, when it refuses, and its execution against an in-memory cluster. The real thing
runs in tests/e2e/test_node_walk.py (g2)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.cli_process import kubeconfig_for, run_cli, unused_port
from tests.cluster.memory_cluster import WorkloadCluster
from webhook.cluster.client import ClusterError, Created, namespace_path, namespaced_path
from webhook.cluster.restart import (
    RESTARTED_AT,
    Action,
    BarePods,
    RestartRefused,
    Step,
    plan,
    recreated_job,
    refusal,
    restart,
    restart_operations,
    restarted_at,
)
from webhook.cluster.stuck import Owner, StuckPod
from webhook.rules.mutate import Rules
from webhook.settings import load_settings

NAMESPACE = "flts-plain"
NOW = dt.datetime(2025, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC)


def obj(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def stuck(name: str, *owners: Owner) -> StuckPod:
    return StuckPod(name, "wait-for-mlflow", owners)


def owner(kind: str, name: str, **spec: Any) -> Owner:
    return Owner(kind, name, obj(kind, name, **spec))


REPLICA_SET = owner("ReplicaSet", "train-gru-5d8f")
DEPLOYMENT = owner("Deployment", "train-gru")


def only(steps: list[Step]) -> Step:
    assert len(steps) == 1, steps
    return steps[0]


# --- the plan, for every owner -----------------------------------------------------------


def test_a_deployments_pods_make_one_rollout_restart() -> None:
    step = only(plan([stuck("train-gru-5d8f-a", REPLICA_SET, DEPLOYMENT),
                      stuck("train-gru-5d8f-b", REPLICA_SET, DEPLOYMENT)]))
    assert (step.action, step.target) == (Action.ROLLOUT, "Deployment/train-gru")
    assert step.pods == ("train-gru-5d8f-a", "train-gru-5d8f-b")


def test_a_paused_deployments_pods_are_deleted_rather_than_rolled() -> None:
    paused = owner("Deployment", "train-gru", paused=True)
    step = only(plan([stuck("train-gru-5d8f-a", REPLICA_SET, paused)]))
    assert (step.action, step.target) == (Action.DELETE_PODS, "Deployment/train-gru")
    assert "paused" in step.why


def test_a_replica_set_without_a_deployment_has_its_pods_deleted() -> None:
    step = only(plan([stuck("lonely-a", owner("ReplicaSet", "lonely"))]))
    assert (step.action, step.target) == (Action.DELETE_PODS, "ReplicaSet/lonely")
    rollout = Owner("Rollout", "web", None)
    step = only(plan([stuck("web-7c-a", owner("ReplicaSet", "web-7c"), rollout)]))
    assert (step.action, step.target) == (Action.DELETE_PODS, "ReplicaSet/web-7c")
    assert "Rollout/web is not a Deployment" in step.why


def test_a_replication_controllers_pods_are_deleted() -> None:
    step = only(plan([stuck("old-a", owner("ReplicationController", "old"))]))
    assert (step.action, step.target) == (Action.DELETE_PODS, "ReplicationController/old")


def test_a_statefulset_is_rolled_and_its_stuck_pods_deleted() -> None:
    step = only(plan([stuck("db-0", owner("StatefulSet", "db"))]))
    assert (step.action, step.target) == (Action.ROLLOUT_AND_DELETE, "StatefulSet/db")
    assert "not Ready" in step.why


def test_a_daemonset_is_rolled_unless_it_replaces_only_deleted_pods() -> None:
    step = only(plan([stuck("agent-x", owner("DaemonSet", "agent"))]))
    assert (step.action, step.target) == (Action.ROLLOUT, "DaemonSet/agent")
    on_delete = owner("DaemonSet", "agent", updateStrategy={"type": "OnDelete"})
    assert only(plan([stuck("agent-x", on_delete)])).action is Action.ROLLOUT_AND_DELETE


def test_a_job_that_never_succeeded_is_recreated_whatever_its_backoff_limit() -> None:
    """Deleting its pod would be a failed attempt: with backoffLimit 0, the end of the Job."""
    job = owner("Job", "preprocess-x1", backoffLimit=0)
    step = only(plan([stuck("preprocess-x1-a", job)]))
    assert (step.action, step.target) == (Action.RECREATE_JOB, "Job/preprocess-x1")
    assert "backoffLimit 0" in step.why


def test_a_cronjobs_job_is_recreated_as_that_cronjobs_run() -> None:
    job, cronjob = owner("Job", "nightly-2901"), owner("CronJob", "nightly")
    step = only(plan([stuck("nightly-2901-a", job, cronjob)]))
    assert (step.action, step.target) == (Action.RECREATE_JOB, "Job/nightly-2901")
    assert "owner CronJob/nightly" in step.why


def test_a_job_with_succeeded_pods_has_its_stuck_pods_deleted_while_its_budget_allows() -> None:
    job = Owner("Job", "shards", {**obj("Job", "shards", backoffLimit=2, completions=4),
                                  "status": {"succeeded": 2, "failed": 1}})
    step = only(plan([stuck("shards-a", job)]))
    assert (step.action, step.target) == (Action.DELETE_PODS, "Job/shards")
    assert "1 left" in step.why
    step = only(plan([stuck("shards-a", job), stuck("shards-b", job)]))
    assert step.action is Action.LEAVE and "exceed backoffLimit 2" in step.why


def test_a_job_without_a_backoff_limit_has_the_controllers_default_of_six() -> None:
    job = Owner("Job", "shards", {**obj("Job", "shards", completions=4),
                                  "status": {"succeeded": 1}})
    step = only(plan([stuck("shards-a", job)]))
    assert step.action is Action.DELETE_PODS and "(6 left)" in step.why


def test_a_bare_pod_is_kept_unless_deleting_is_asked_for() -> None:
    step = only(plan([stuck("debug")]))
    assert (step.action, step.target) == (Action.LEAVE, "Pod/debug")
    assert "--bare-pods delete" in step.why
    step = only(plan([stuck("debug")], bare_pods=BarePods.DELETE))
    assert (step.action, step.target) == (Action.DELETE_PODS, "Pod/debug")


def test_an_unknown_or_unreadable_owner_is_left_alone() -> None:
    step = only(plan([stuck("w-a", Owner("Workflow", "w", None))]))
    assert step.action is Action.LEAVE and "does not restart" in step.why
    step = only(plan([stuck("gone-a", Owner("ReplicaSet", "gone", None))]))
    assert step.action is Action.LEAVE and "cannot be read" in step.why


def test_steps_follow_the_order_pods_were_found_in() -> None:
    steps = plan([stuck("db-0", owner("StatefulSet", "db")),
                  stuck("train-gru-5d8f-a", REPLICA_SET, DEPLOYMENT),
                  stuck("db-1", owner("StatefulSet", "db"))])
    assert [(s.target, s.pods) for s in steps] == [
        ("StatefulSet/db", ("db-0", "db-1")), ("Deployment/train-gru", ("train-gru-5d8f-a",))]


# --- what is written ---------------------------------------------------------------------


def test_the_restart_time_is_written_as_kubectl_writes_it() -> None:
    # Go's time.RFC3339: whole seconds, Z for UTC, the offset otherwise.
    assert restarted_at(NOW) == "2025-03-04T05:06:07Z"
    assert restarted_at(NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))) == (
        "2025-03-04T07:06:07+02:00")


@pytest.mark.parametrize("template", [
    {"metadata": {"labels": {"app": "x"}, "annotations": {"keep": "me"}}, "spec": {}},
    {"metadata": {"labels": {"app": "x"}}, "spec": {}},
    {"spec": {}},
])
def test_the_restart_annotation_is_added_whatever_the_template_has(
        template: dict[str, Any]) -> None:
    workload = {"spec": {"template": copy.deepcopy(template)}}
    patched = jsonpatch.apply_patch(workload, restart_operations(workload, "T"))
    metadata = patched["spec"]["template"]["metadata"]
    assert metadata["annotations"][RESTARTED_AT] == "T"
    before = template.get("metadata") or {}
    assert metadata.get("labels") == before.get("labels")
    assert metadata["annotations"] | {} == {**before.get("annotations", {}), RESTARTED_AT: "T"}


def live_job(*, manual_selector: bool = False) -> dict[str, Any]:
    """A Job as the apiserver returns it, with what it added to the one that was created."""
    generated = {"batch.kubernetes.io/controller-uid": "u-1", "controller-uid": "u-1",
                 "batch.kubernetes.io/job-name": "nightly-2901", "job-name": "nightly-2901"}
    selector = {"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": "nightly-2901", "namespace": NAMESPACE, "uid": "u-1",
            "resourceVersion": "77", "creationTimestamp": "2025-01-01T00:00:00Z",
            "generation": 1, "managedFields": [{"manager": "kube-controller-manager"}],
            "labels": {"app": "nightly", **generated},
            "annotations": {"meta.helm.sh/release-name": "flts"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                 "name": "nightly", "uid": "c-1", "controller": True}],
        },
        "spec": {
            "backoffLimit": 0, "manualSelector": manual_selector, "selector": selector,
            "template": {"metadata": {"labels": {"app": "nightly", **generated}},
                         "spec": {"restartPolicy": "Never",
                                  "containers": [{"name": "main", "image": "x"}]}},
        },
        "status": {"active": 1, "startTime": "2025-01-01T00:00:00Z"},
    }


def test_a_job_is_recreated_as_it_was_asked_for() -> None:
    body = recreated_job(live_job())
    assert body["metadata"] == {
        "name": "nightly-2901", "namespace": NAMESPACE, "labels": {"app": "nightly"},
        "annotations": {"meta.helm.sh/release-name": "flts"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
                             "uid": "c-1", "controller": True}]}
    assert "status" not in body and "selector" not in body["spec"]
    assert body["spec"]["template"]["metadata"]["labels"] == {"app": "nightly"}
    assert body["spec"]["backoffLimit"] == 0


def test_a_manual_selector_is_the_users_own_and_is_kept() -> None:
    job = live_job(manual_selector=True)
    body = recreated_job(job)
    assert body["spec"]["selector"] == job["spec"]["selector"]
    assert body["spec"]["template"]["metadata"]["labels"] == (
        job["spec"]["template"]["metadata"]["labels"])


# --- whether it may run ------------------------------------------------------------------


def opted_in_cluster() -> WorkloadCluster:
    cluster = WorkloadCluster()
    cluster.objects[namespace_path(NAMESPACE)] = {"metadata": {
        "name": NAMESPACE, "labels": {"backend-injector/inject": "enabled"}}}
    return cluster


def test_a_ready_webhook_in_an_opted_in_namespace_lets_it_run() -> None:
    assert refusal(opted_in_cluster(), NAMESPACE) is None


def test_a_namespace_that_did_not_opt_in_is_refused() -> None:
    cluster = opted_in_cluster()
    cluster.objects[namespace_path(NAMESPACE)]["metadata"]["labels"] = {}
    reason = refusal(cluster, NAMESPACE)
    assert reason is not None and "not opted in" in reason
    assert f"backend-injector label {NAMESPACE}" in reason
    assert refusal(WorkloadCluster(), NAMESPACE) == f"namespace {NAMESPACE} does not exist"


def test_a_webhook_that_does_not_change_the_trial_pod_is_refused() -> None:
    cluster = opted_in_cluster()
    cluster.dry_run_answer = lambda body: Created(object=body)
    reason = refusal(cluster, NAMESPACE)
    assert reason is not None and "came back unchanged" in reason

    def refused(body: dict[str, Any]) -> Created:
        raise ClusterError('failed calling webhook "inject.backend-injector.svc": no endpoints')

    cluster.dry_run_answer = refused
    reason = refusal(cluster, NAMESPACE)
    assert reason is not None and "was refused (failed calling webhook" in reason


def test_a_namespace_without_the_credentials_its_pods_would_read_is_refused() -> None:
    cluster = opted_in_cluster()

    def by_reference(body: dict[str, Any]) -> Created:
        admitted = copy.deepcopy(body)
        admitted["metadata"]["annotations"] = {"backend-injector/status": "{}"}
        admitted["spec"]["containers"][0]["env"] = [{"name": "AWS_SECRET_ACCESS_KEY",
                                                     "valueFrom": {"secretKeyRef": {
                                                         "name": "creds", "key": "secret"}}}]
        return Created(object=admitted)

    cluster.dry_run_answer = by_reference
    reason = refusal(cluster, NAMESPACE)
    assert reason is not None and "creds/secret, which flts-plain lacks" in reason
    cluster.objects[namespaced_path("v1", NAMESPACE, "secrets", "creds")] = {
        "metadata": {"name": "creds"}, "data": {"secret": "eA=="}}
    assert refusal(cluster, NAMESPACE) is None


# --- carrying it out ---------------------------------------------------------------------


def controller(kind: str, name: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": kind, "name": name, "uid": f"uid-{name}",
             "controller": True}]


def stuck_pod(name: str, owner_kind: str | None = None, owner_name: str = "") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if owner_kind is not None:
        metadata["ownerReferences"] = controller(owner_kind, owner_name)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"initContainers": [{"name": "wait-for-mlflow", "image": "busybox",
                                         "command": ["sh", "-c", "until nc -z mlflow 5000; "
                                                     "do sleep 2; done"]}],
                     "containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "wait-for-mlflow", "state": {"running": {}}}]}}


def workload(kind: str, name: str, owners: str | None = None,
             **spec: Any) -> dict[str, Any]:
    body = obj(kind, name, template={"metadata": {"labels": {"app": name}}}, **spec)
    if owners is not None:
        body["metadata"]["ownerReferences"] = controller("Deployment", owners)
    return body


def path(group_version: str, resource: str, name: str = "") -> str:
    return namespaced_path(group_version, NAMESPACE, resource, name)


def every_kind_cluster() -> WorkloadCluster:
    cluster = opted_in_cluster()
    cluster.objects.update({
        path("apps/v1", "deployments", "train-gru"): workload("Deployment", "train-gru"),
        path("apps/v1", "replicasets", "train-gru-5d8f"):
            workload("ReplicaSet", "train-gru-5d8f", owners="train-gru"),
        path("apps/v1", "replicasets", "lonely"): workload("ReplicaSet", "lonely"),
        path("apps/v1", "statefulsets", "db"): workload("StatefulSet", "db"),
        path("apps/v1", "daemonsets", "agent"): workload("DaemonSet", "agent"),
        path("batch/v1", "jobs", "nightly-2901"): live_job(),
    })
    for name, kind, owner_name in (
            ("train-gru-5d8f-a", "ReplicaSet", "train-gru-5d8f"),
            ("lonely-a", "ReplicaSet", "lonely"), ("db-0", "StatefulSet", "db"),
            ("agent-a", "DaemonSet", "agent"), ("nightly-2901-a", "Job", "nightly-2901")):
        cluster.objects[path("v1", "pods", name)] = stuck_pod(name, kind, owner_name)
    cluster.objects[path("v1", "pods", "debug")] = stuck_pod("debug")
    return cluster


@pytest.fixture(scope="module")
def rules() -> Rules:
    return Rules(load_settings(environ={}))


def run(cluster: WorkloadCluster, rules: Rules, **options: Any) -> list[str]:
    return list(restart(cluster, NAMESPACE, rules, now=lambda: NOW, sleep=lambda _: None,
                        **options))


def annotation(cluster: WorkloadCluster, resource: str, name: str) -> str | None:
    template = cluster.objects[path("apps/v1", resource, name)]["spec"]["template"]
    value = (template["metadata"].get("annotations") or {}).get(RESTARTED_AT)
    return None if value is None else str(value)


def test_every_owner_is_restarted_its_own_way(rules: Rules) -> None:
    cluster = every_kind_cluster()
    lines = run(cluster, rules)
    assert lines[0] == f"{NAMESPACE}: 6 pods wait in Init for what the webhook would change:"
    assert annotation(cluster, "deployments", "train-gru") == "2025-03-04T05:06:07Z"
    assert annotation(cluster, "daemonsets", "agent") == "2025-03-04T05:06:07Z"
    assert annotation(cluster, "statefulsets", "db") == "2025-03-04T05:06:07Z"
    assert annotation(cluster, "replicasets", "lonely") is None
    pods = {p.rpartition("/")[2] for p in cluster.objects if p.startswith(path("v1", "pods"))}
    # Deleted: the StatefulSet's and the lone ReplicaSet's. The rolled ones go at their
    # controllers' pace, the Job's with the Job, and the bare pod is kept.
    assert pods == {"train-gru-5d8f-a", "agent-a", "nightly-2901-a", "debug"}
    job_path = path("batch/v1", "jobs", "nightly-2901")
    assert f"{job_path}?propagationPolicy=Background" in cluster.deleted
    recreated = cluster.objects[job_path]
    assert "uid" not in recreated["metadata"] and "selector" not in recreated["spec"]
    assert recreated["metadata"]["ownerReferences"][0]["name"] == "nightly"
    assert "Pod/debug: left alone (debug)" in lines


def test_a_dry_run_prints_the_plan_and_changes_nothing(rules: Rules) -> None:
    cluster = every_kind_cluster()
    before = copy.deepcopy(cluster.objects)
    lines = run(cluster, rules, dry_run=True)
    assert cluster.objects == before and not cluster.deleted
    assert "  Deployment/train-gru: rollout restart (stuck: train-gru-5d8f-a)" in lines
    assert len(lines) == 1 + 6  # the heading and one line per owner


def test_a_dry_run_in_a_namespace_not_opted_in_says_a_run_would_refuse(rules: Rules) -> None:
    cluster = every_kind_cluster()
    cluster.objects[namespace_path(NAMESPACE)]["metadata"]["labels"] = {}
    lines = run(cluster, rules, dry_run=True)
    assert lines[-1].startswith(f"a run now would refuse: {NAMESPACE} is not opted in")


def test_nothing_happens_when_refused_or_not_confirmed(rules: Rules) -> None:
    cluster = every_kind_cluster()
    cluster.objects[namespace_path(NAMESPACE)]["metadata"]["labels"] = {}
    before = copy.deepcopy(cluster.objects)
    with pytest.raises(RestartRefused, match="not opted in"):
        run(cluster, rules)
    assert cluster.objects == before
    cluster = every_kind_cluster()
    before = copy.deepcopy(cluster.objects)
    asked: list[str] = []

    def declined(question: str) -> bool:
        asked.append(question)
        return False

    with pytest.raises(RestartRefused, match="nothing was restarted"):
        run(cluster, rules, confirm=declined)
    assert asked == [f"restart them in {NAMESPACE}? [y/N] "]
    assert cluster.objects == before and not cluster.deleted


def test_nothing_stuck_is_said_in_one_line(rules: Rules) -> None:
    assert run(opted_in_cluster(), rules) == [
        f"{NAMESPACE}: no pod waits in Init for what the webhook would change"]


class LingeringJobCluster(WorkloadCluster):
    """A Job that is still readable for a few reads after its deletion."""

    def __init__(self, reads_left: int) -> None:
        super().__init__()
        self.reads_left = reads_left
        self.lingering: dict[str, Any] | None = None

    def delete(self, path: str) -> bool:
        if "/jobs/" in path:
            self.lingering = self.objects.get(path.partition("?")[0])
        return super().delete(path)

    def get(self, path: str) -> dict[str, Any] | None:
        if self.lingering is not None and path.endswith("/jobs/nightly-2901"):
            if self.reads_left > 0:
                self.reads_left -= 1
                return copy.deepcopy(self.lingering)
            self.lingering = None
        return super().get(path)


def lingering(reads_left: int) -> LingeringJobCluster:
    cluster = LingeringJobCluster(reads_left)
    cluster.objects.update(opted_in_cluster().objects)
    cluster.objects[path("batch/v1", "jobs", "nightly-2901")] = live_job()
    cluster.objects[path("v1", "pods", "nightly-2901-a")] = stuck_pod(
        "nightly-2901-a", "Job", "nightly-2901")
    return cluster


def test_a_job_is_created_again_only_once_the_old_one_is_gone(rules: Rules) -> None:
    cluster = lingering(reads_left=3)
    slept: list[float] = []
    lines = list(restart(cluster, NAMESPACE, rules, now=lambda: NOW, sleep=slept.append))
    assert len(slept) == 3
    assert lines[-1].startswith("Job/nightly-2901: deleted (its pods in the background)")
    assert path("batch/v1", "jobs", "nightly-2901") in cluster.objects


def test_a_job_that_does_not_go_is_reported_and_not_created_twice(rules: Rules) -> None:
    cluster = lingering(reads_left=10_000)
    with pytest.raises(ClusterError, match="still there 30 s after its deletion"):
        list(restart(cluster, NAMESPACE, rules, now=lambda: NOW, sleep=lambda _: None))
    assert not [call for call in cluster.calls if call == f"POST {path('batch/v1', 'jobs')}"]


# --- the command line --------------------------------------------------------------------


def test_without_a_terminal_or_yes_it_refuses_in_one_line_before_connecting(
        tmp_path: Path) -> None:
    kubeconfig = kubeconfig_for(tmp_path / "config", f"https://127.0.0.1:{unused_port()}")
    result = run_cli("restart", "-n", NAMESPACE, "--kubeconfig", str(kubeconfig), stdin="")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ("backend-injector restart: stdin is not a terminal to ask on: "
                             "pass --yes to restart without asking, or --dry-run to see the "
                             "plan\n")


def test_with_yes_it_goes_on_to_the_cluster(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{unused_port()}"
    kubeconfig = kubeconfig_for(tmp_path / "config", server)
    result = run_cli("restart", "-n", NAMESPACE, "--yes", "--kubeconfig", str(kubeconfig),
                     stdin="")
    assert result.returncode == 1
    assert result.stderr.startswith(f"backend-injector restart: cannot reach the cluster at "
                                    f"{server}")
