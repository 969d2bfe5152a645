"""`backend-injector restart`: pods stuck in Init created anew, so that the webhook changes them.

The webhook acts when a pod is created, so the pods a chart started before its namespace opted
in (``webhook.cluster.stuck``) stay stuck until something creates them again. This makes a
plan, one step per owner, and then carries it out:

* Deployment, DaemonSet: a rollout restart, exactly as ``kubectl rollout restart`` makes one
  (the pod template's ``kubectl.kubernetes.io/restartedAt`` annotation set to the time, RFC
  3339 in seconds); the controller replaces the pods at its own pace. A paused Deployment
  would not roll, so its stuck pods are deleted and its ReplicaSet makes them again.
* StatefulSet: the same annotation, and its stuck pods deleted: under the default
  ``OrderedReady`` policy a rolling update never replaces a pod that is not Ready. So too a
  DaemonSet whose update strategy is ``OnDelete``.
* ReplicaSet (or ReplicationController) without a Deployment: its stuck pods are deleted; it
  makes them again.
* Job: deleting its pod would count as a failed attempt against ``backoffLimit`` (one with
  ``backoffLimit: 0`` would fail outright), although the pod never ran. So a Job none of whose
  pods has succeeded is recreated from its own spec, under its own name, labels and owner (a
  CronJob's Job stays that CronJob's scheduled run, which its concurrency policy and history
  limits still see), with its whole retry budget. One that has succeeded pods would run them
  again that way, so only its stuck pods are deleted, when its budget has room for them.
* A bare pod: nothing would make it again, so it is listed and kept, unless ``--bare-pods
  delete`` is given.

Nothing happens in a namespace that did not opt in, or while the webhook does not change a
trial pod there (`refusal`): pods created then would wait again.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from webhook.cluster import credentials
from webhook.cluster.client import (
    Cluster,
    ClusterError,
    JsonObject,
    PatchOperation,
    namespace_path,
    namespaced_path,
)
from webhook.cluster.pods import trial_pod
from webhook.cluster.stuck import OWNER_KINDS, Owner, StuckPod, admitted_by_webhook, read_stuck
from webhook.rules.mutate import INJECT_KEY, Rules

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# What the apiserver adds to a Job without a manual selector (and to its pod template); a
# recreated Job must not carry the old Job's uid, or its pods would match neither Job.
JOB_GENERATED_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid", "job-name",
                        "batch.kubernetes.io/job-name")
# The Job controller's default, when the spec leaves backoffLimit out.
DEFAULT_BACKOFF_LIMIT = 6
# How long a Job deleted in the background may take to be gone before its name is reused.
JOB_GONE_SECONDS = 30.0
POLL_SECONDS = 0.5


class RestartRefused(Exception):
    """Nothing was done, for the reason the message gives (one line)."""


class Action(StrEnum):
    ROLLOUT = "rollout restart"
    ROLLOUT_AND_DELETE = "rollout restart, and delete its stuck pods"
    DELETE_PODS = "delete the stuck pods"
    RECREATE_JOB = "recreate the Job from its own spec"
    LEAVE = "leave alone"


class BarePods(StrEnum):
    KEEP = "keep"
    DELETE = "delete"


@dataclass(frozen=True)
class Step:
    """What is done for one owner (or one bare pod), and why."""

    action: Action
    target: str  # "Deployment/train-gru", or "Pod/NAME" for a bare pod
    pods: tuple[str, ...]  # the stuck pods it is for
    why: str = ""

    @property
    def kind(self) -> str:
        return self.target.partition("/")[0]

    @property
    def name(self) -> str:
        return self.target.partition("/")[2]

    def line(self) -> str:
        text = f"{self.target}: {self.action.value} (stuck: {', '.join(self.pods)})"
        return f"{text}; {self.why}" if self.why else text


# --- the plan (pure) --------------------------------------------------------------------


def plan(stuck: Sequence[StuckPod], *, bare_pods: BarePods = BarePods.KEEP) -> list[Step]:
    """One step per object acted on, in the order its first stuck pod was found."""
    groups: dict[str, list[StuckPod]] = {}
    for pod in stuck:
        groups.setdefault(_acted_on(pod), []).append(pod)
    return [_step(target, pods, bare_pods) for target, pods in groups.items()]


def _acted_on(pod: StuckPod) -> str:
    """The object the step acts on: the Deployment above a ReplicaSet, else the nearest
    owner (a CronJob's Job is recreated, not the CronJob), else the pod itself."""
    owners = pod.owners
    if not owners:
        return f"Pod/{pod.name}"
    if owners[0].kind == "ReplicaSet" and _is_deployment(owners[1:]):
        return owners[1].label
    return owners[0].label


def _is_deployment(rest: Sequence[Owner]) -> bool:
    return bool(rest) and rest[0].kind == "Deployment" and rest[0].object is not None


def _step(target: str, pods: list[StuckPod], bare_pods: BarePods) -> Step:
    names = tuple(pod.name for pod in pods)
    owners = pods[0].owners
    if not owners:
        if bare_pods is BarePods.DELETE:
            return Step(Action.DELETE_PODS, target, names,
                        "a bare pod: nothing makes it again, create it anew yourself "
                        "(kubectl apply) and the webhook changes it")
        return Step(Action.LEAVE, target, names,
                    "a bare pod: nothing would make it again; delete it and create it anew "
                    "yourself, or pass --bare-pods delete")
    nearest = owners[0]
    if nearest.object is None:
        why = (f"{nearest.label} cannot be read (gone?)" if nearest.kind in OWNER_KINDS else
               f"owned by {nearest.label}, which this tool does not restart; restart it the "
               "way its controller does")
        return Step(Action.LEAVE, target, names, why)
    if nearest.kind == "ReplicaSet" and _is_deployment(owners[1:]):
        return _deployment_step(owners[1], names)
    if nearest.kind in ("ReplicaSet", "ReplicationController"):
        above = f" ({owners[1].label} is not a Deployment)" if len(owners) > 1 else ""
        return Step(Action.DELETE_PODS, target, names,
                    f"no Deployment above it{above}: it makes the deleted pods again")
    if nearest.kind == "DaemonSet":
        strategy = (nearest.object.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type") == "OnDelete":
            return Step(Action.ROLLOUT_AND_DELETE, target, names,
                        "its update strategy is OnDelete: it replaces only deleted pods")
        return Step(Action.ROLLOUT, target, names)
    if nearest.kind == "StatefulSet":
        return Step(Action.ROLLOUT_AND_DELETE, target, names,
                    "a rolling update never replaces a pod that is not Ready")
    if nearest.kind == "Job":
        cronjob = owners[1] if len(owners) > 1 and owners[1].kind == "CronJob" else None
        return _job_step(nearest.object, target, names, cronjob)
    return Step(Action.LEAVE, target, names, f"{nearest.kind} is not restarted by this tool")


def _deployment_step(deployment: Owner, names: tuple[str, ...]) -> Step:
    if (deployment.object or {}).get("spec", {}).get("paused"):
        return Step(Action.DELETE_PODS, deployment.label, names,
                    "paused, so a rollout would wait for `kubectl rollout resume`; its "
                    "ReplicaSet makes the deleted pods again")
    return Step(Action.ROLLOUT, deployment.label, names)


def _job_step(job: JsonObject, target: str, names: tuple[str, ...],
              cronjob: Owner | None) -> Step:
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    given = spec.get("backoffLimit")
    limit = DEFAULT_BACKOFF_LIMIT if given is None else int(given)
    if not status.get("succeeded"):
        owner = f" and owner {cronjob.label}" if cronjob is not None else ""
        return Step(Action.RECREATE_JOB, target, names,
                    f"deleting its pods would count them as failed attempts (backoffLimit "
                    f"{limit}); recreated under its own name{owner}, with its whole retry "
                    "budget")
    room = limit - int(status.get("failed") or 0)
    succeeded = int(status["succeeded"])
    if len(names) <= room:
        return Step(Action.DELETE_PODS, target, names,
                    f"{succeeded} of its pods succeeded, which recreating the Job would run "
                    f"again; each deleted pod counts as a failed attempt ({room} left)")
    return Step(Action.LEAVE, target, names,
                f"{succeeded} of its pods succeeded and deleting {len(names)} more would "
                f"exceed backoffLimit {limit}; recreate the Job yourself")


# --- the objects written (pure) ----------------------------------------------------------


def restarted_at(now: dt.datetime) -> str:
    """The annotation's value as kubectl writes it: Go's RFC 3339 layout, in seconds, local
    time with its offset and ``Z`` for UTC."""
    text = now.replace(microsecond=0).isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def restart_operations(workload: Mapping[str, Any], stamp: str) -> list[PatchOperation]:
    """JSON Patch that sets the pod template's restart annotation, whatever of the template's
    metadata is already there."""
    template = (workload.get("spec") or {}).get("template") or {}
    metadata = template.get("metadata")
    if not isinstance(metadata, dict):
        return [{"op": "add", "path": "/spec/template/metadata",
                 "value": {"annotations": {RESTARTED_AT: stamp}}}]
    if not isinstance(metadata.get("annotations"), dict):
        return [{"op": "add", "path": "/spec/template/metadata/annotations",
                 "value": {RESTARTED_AT: stamp}}]
    key = RESTARTED_AT.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/spec/template/metadata/annotations/{key}", "value": stamp}]


def recreated_job(job: Mapping[str, Any]) -> JsonObject:
    """The Job as it was asked for: its name, labels, annotations, owners and spec, without
    what the apiserver added for the old one (uid, status, the selector and labels that name
    the old uid). A manual selector is the user's own and is kept."""
    metadata = job.get("metadata") or {}
    spec = copy.deepcopy(dict(job.get("spec") or {}))
    kept = {key: copy.deepcopy(metadata[key]) for key in
            ("name", "namespace", "labels", "annotations", "ownerReferences") if key in metadata}
    if not spec.get("manualSelector"):
        spec.pop("selector", None)
        template_metadata = (spec.get("template") or {}).get("metadata") or {}
        _drop_generated(template_metadata)
        _drop_generated(kept)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": kept, "spec": spec}


def _drop_generated(metadata: dict[str, Any]) -> None:
    labels = metadata.get("labels")
    if isinstance(labels, dict):
        for key in JOB_GENERATED_LABELS:
            labels.pop(key, None)


# --- whether it may run ------------------------------------------------------------------


def refusal(cluster: Cluster, namespace: str) -> str | None:
    """Why nothing may be restarted in `namespace` now, or None. A pod created anew is only
    changed when the namespace opted in and the webhook answers; else it would wait again."""
    found = cluster.get(namespace_path(namespace))
    if found is None:
        return f"namespace {namespace} does not exist"
    labels = (found.get("metadata") or {}).get("labels") or {}
    if labels.get(INJECT_KEY) != "enabled":
        return (f"{namespace} is not opted in (no label {INJECT_KEY}=enabled), so pods created "
                f"anew would wait again; run backend-injector label {namespace} first")
    doctor = f"backend-injector doctor -n {namespace} says why"
    try:
        created = cluster.create(namespaced_path("v1", namespace, "pods"), trial_pod(),
                                 dry_run=True)
    except ClusterError as error:
        return f"the webhook is not ready: a dry-run pod in {namespace} was refused " \
               f"({error.problem}); {doctor}"
    if not admitted_by_webhook(created.object):
        return (f"the webhook is not ready: a dry-run pod in {namespace} came back unchanged, "
                f"so pods created anew would wait again; {doctor}")
    missing = credentials.missing_references(cluster, namespace,
                                             list(credentials.references(created.object)))
    if missing:
        return (f"pods created anew would read {', '.join(missing)}, which {namespace} lacks "
                f"(they would not start); run backend-injector label {namespace}")
    return None


# --- carrying it out -----------------------------------------------------------------------


def restart(
    cluster: Cluster,
    namespace: str,
    rules: Rules,
    *,
    bare_pods: BarePods = BarePods.KEEP,
    dry_run: bool = False,
    confirm: Callable[[str], bool] | None = None,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone(),
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """The lines to print: the plan, then (unless `dry_run`, and once `confirm` agrees when
    given) what was done. Raises RestartRefused before anything is changed."""
    reason = refusal(cluster, namespace)
    if reason is not None and not dry_run:
        raise RestartRefused(reason)
    steps = plan(read_stuck(cluster, namespace, rules), bare_pods=bare_pods)
    if not steps:
        yield f"{namespace}: no pod waits in Init for what the webhook would change"
        return
    count = sum(len(step.pods) for step in steps)
    yield f"{namespace}: {count} pods wait in Init for what the webhook would change:"
    yield from (f"  {step.line()}" for step in steps)
    if dry_run:
        if reason is not None:
            yield f"a run now would refuse: {reason}"
        return
    if confirm is not None and not confirm(f"restart them in {namespace}? [y/N] "):
        raise RestartRefused("nothing was restarted")
    executor = _Executor(cluster, namespace, now().replace(microsecond=0), sleep)
    for step in steps:
        yield executor.carry_out(step)


class _Executor:
    """Carries out steps against the cluster, reading each object afresh first."""

    def __init__(self, cluster: Cluster, namespace: str, now: dt.datetime,
                 sleep: Callable[[float], None]) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.stamp = restarted_at(now)
        self.sleep = sleep

    def carry_out(self, step: Step) -> str:
        if step.action is Action.LEAVE:
            return f"{step.target}: left alone ({', '.join(step.pods)})"
        if step.action is Action.RECREATE_JOB:
            return f"{step.target}: {self._recreate_job(step.name)}"
        done = []
        if step.action in (Action.ROLLOUT, Action.ROLLOUT_AND_DELETE):
            done.append(self._rollout(step.kind, step.name))
        if step.action in (Action.ROLLOUT_AND_DELETE, Action.DELETE_PODS):
            done.append(self._delete_pods(step.pods))
        return f"{step.target}: {'; '.join(done)}"

    def _path(self, kind: str, name: str) -> str:
        group_version, resource = OWNER_KINDS[kind]
        return namespaced_path(group_version, self.namespace, resource, name)

    def _rollout(self, kind: str, name: str) -> str:
        path = self._path(kind, name)
        current = self.cluster.get(path)
        if current is None:
            return "gone, nothing to restart"
        self.cluster.patch(path, restart_operations(current, self.stamp))
        return f"restarted ({RESTARTED_AT}={self.stamp})"

    def _delete_pods(self, pods: Sequence[str]) -> str:
        deleted = [pod for pod in pods
                   if self.cluster.delete(namespaced_path("v1", self.namespace, "pods", pod))]
        gone = len(pods) - len(deleted)
        already = f" ({gone} already gone)" if gone else ""
        return f"deleted {', '.join(deleted) or 'none'}{already}"

    def _recreate_job(self, name: str) -> str:
        path = self._path("Job", name)
        current = self.cluster.get(path)
        if current is None:
            return "gone, nothing to recreate"
        if (current.get("status") or {}).get("succeeded"):
            return "a pod of it succeeded meanwhile: left alone"
        body = recreated_job(current)
        # In the background: the Job goes at once, freeing its name; its stuck pods follow.
        self.cluster.delete(f"{path}?propagationPolicy=Background")
        self._wait_gone(path)
        try:
            self.cluster.create(self._path("Job", ""), body)
        except ClusterError as error:
            raise ClusterError(f"Job {name} was deleted but not created again: {error.problem}",
                               "apply its manifest again (helm upgrade, kubectl apply)") from None
        return "deleted (its pods in the background) and created again from its spec"

    def _wait_gone(self, path: str) -> None:
        waited = 0.0
        while self.cluster.get(path) is not None:
            if waited >= JOB_GONE_SECONDS:
                raise ClusterError(f"{path} was still there {JOB_GONE_SECONDS:.0f} s after "
                                   "its deletion", "create it again from its manifest")
            self.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
