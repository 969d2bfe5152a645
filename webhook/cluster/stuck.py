"""Pods stuck in Init because the webhook never saw them, and the controllers that own them.

The webhook changes a pod when it is created, never afterwards. A chart installed before its
namespace opted in (or while no webhook answered) keeps every waiter for an in-cluster service
that runs elsewhere, so its pods wait in ``Init`` for ever, and labelling the namespace later
does not help them. Such a pod is told by the rules themselves rather than by matching host
names again here: the rules would change it, yet it carries no status annotation, so the
webhook did not admit it.

Pure functions over pod and owner objects (`init_container_waiting`, `stuck_in`,
`owner_chain`), and `read_stuck`, the thin reader over `Cluster` that lists a namespace's pods
and reads their owners once each. ``doctor`` lists what it finds; ``restart`` acts on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.cluster.client import Cluster, JsonObject, namespaced_path
from webhook.rules.mutate import STATUS_KEY, PodShapeError, Rules

# The controllers whose objects are read to follow a pod to its top owner:
# kind -> (group/version, resource).
OWNER_KINDS: Mapping[str, tuple[str, str]] = {
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "ReplicationController": ("v1", "replicationcontrollers"),
    "Job": ("batch/v1", "jobs"),
    "CronJob": ("batch/v1", "cronjobs"),
}
# Pod -> ReplicaSet -> Deployment and Pod -> Job -> CronJob are the longest chains there are.
MOST_OWNERS = 2

OwnerReader = Callable[[str, str], JsonObject | None]


@dataclass(frozen=True)
class Owner:
    """One controller above a pod; ``object`` is None when it could not be read (gone, or a
    kind this tool does not know)."""

    kind: str
    name: str
    object: JsonObject | None

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class StuckPod:
    """A pod waiting in an init container, admitted without the webhook's changes."""

    name: str
    waiting_in: str  # the init container it waits in
    owners: tuple[Owner, ...]  # the nearest first: (ReplicaSet, Deployment); () for a bare pod

    def describe(self) -> str:
        """``train-gru-5d8f-x2 (ReplicaSet/train-gru-5d8f of Deployment/train-gru, in
        wait-for-mlflow)``."""
        owners = " of ".join(owner.label for owner in self.owners) or "a bare pod"
        return f"{self.name} ({owners}, in {self.waiting_in})"


def init_container_waiting(pod: Mapping[str, Any]) -> str | None:
    """The init container a Pending pod is held in (running, or waiting to run again), or None
    when the pod is past its init containers or the kubelet has not reported them yet.

    Native sidecars (init containers with ``restartPolicy: Always``) keep running beside the
    rest, so a running one holds nothing up and is passed over."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return None
    spec = pod.get("spec") or {}
    sidecars = {container.get("name") for container in spec.get("initContainers") or []
                if isinstance(container, dict) and container.get("restartPolicy") == "Always"}
    for container in status.get("initContainerStatuses") or []:
        state = container.get("state") or {}
        # A state is a one-key mapping whose value may be empty: its key is what counts.
        if container.get("name") in sidecars and "running" in state:
            continue
        if "running" in state or "waiting" in state:
            return str(container.get("name", "?"))
    return None


def admitted_by_webhook(pod: Mapping[str, Any]) -> bool:
    """The webhook writes its status annotation on every pod it changes."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return STATUS_KEY in annotations


def stuck_in(pod: JsonObject, rules: Rules, namespace: str) -> str | None:
    """The init container `pod` is stuck in, when it waits in Init and the rules would change
    it although it carries no status annotation (so the webhook never admitted it); else None.
    A pod whose owner can never be created anew is reported all the same: it is stuck."""
    waiting_in = init_container_waiting(pod)
    if waiting_in is None or admitted_by_webhook(pod):
        return None
    try:
        mutation = rules.mutate_pod(pod, namespace=namespace)
    except PodShapeError:
        return None  # nothing the webhook would do for it either
    return waiting_in if mutation.changed else None


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object's managing controller (``controller: true``), if any."""
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(reference, dict) and reference.get("controller"):
            return str(reference.get("kind", "?")), str(reference.get("name", "?"))
    return None


def owner_chain(pod: Mapping[str, Any], read: OwnerReader) -> tuple[Owner, ...]:
    """The pod's controllers, the nearest first, each read with ``read(kind, name)``; the walk
    stops at an object without a controller, one that cannot be read, or an unknown kind."""
    owners: list[Owner] = []
    current: Mapping[str, Any] = pod
    while len(owners) < MOST_OWNERS and (reference := controller_of(current)) is not None:
        kind, name = reference
        found = read(kind, name) if kind in OWNER_KINDS else None
        owners.append(Owner(kind, name, found))
        if found is None:
            break
        current = found
    return tuple(owners)


def stuck_pods(pods: Sequence[JsonObject], rules: Rules, namespace: str,
               read: OwnerReader) -> list[StuckPod]:
    """The stuck ones among `pods`, with their owners, in the order given."""
    found = []
    for pod in pods:
        waiting_in = stuck_in(pod, rules, namespace)
        if waiting_in is not None:
            name = str((pod.get("metadata") or {}).get("name", "?"))
            found.append(StuckPod(name, waiting_in, owner_chain(pod, read)))
    return found


def read_stuck(cluster: Cluster, namespace: str, rules: Rules) -> list[StuckPod]:
    """The stuck pods of `namespace`, as the cluster has them now."""
    listed = cluster.get(namespaced_path("v1", namespace, "pods")) or {}
    pods = [pod for pod in listed.get("items") or [] if isinstance(pod, dict)
            and not (pod.get("metadata") or {}).get("deletionTimestamp")]
    return stuck_pods(pods, rules, namespace, _cached_reader(cluster, namespace))


def _cached_reader(cluster: Cluster, namespace: str) -> OwnerReader:
    """Reads each owner once: a Deployment's ten stuck pods share one ReplicaSet."""
    seen: dict[tuple[str, str], JsonObject | None] = {}

    def read(kind: str, name: str) -> JsonObject | None:
        if (kind, name) not in seen:
            group_version, resource = OWNER_KINDS[kind]
            seen[kind, name] = cluster.get(namespaced_path(group_version, namespace, resource,
                                                           name))
        return seen[kind, name]

    return read


def listed(stuck: Sequence[StuckPod], most: int) -> Iterator[str]:
    """Each pod's description, at most `most`, then how many more there are."""
    for pod in stuck[:most]:
        yield pod.describe()
    if len(stuck) > most:
        yield f"{len(stuck) - most} more"
