"""The pods doctor asks the apiserver to create in a dry run: a trial pod that the webhook
always changes, and one pod per workload of the namespace, from its pod template."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from webhook.cluster.client import Cluster, ClusterError, JsonObject, namespaced_path

# The trial pod's generateName; dry runs create nothing, but the name says whose it was.
TRIAL_POD_PREFIX = "backend-injector-doctor-"
WORKLOAD_KINDS = (
    ("apps/v1", "deployments", "Deployment", ("spec", "template")),
    ("apps/v1", "statefulsets", "StatefulSet", ("spec", "template")),
    ("batch/v1", "jobs", "Job", ("spec", "template")),
    ("batch/v1", "cronjobs", "CronJob", ("spec", "jobTemplate", "spec", "template")),
)


def trial_pod() -> JsonObject:
    """A pod as the usual charts write them: a waiter for mlflow and in-cluster backend env.
    Whatever the configuration, the embedded rules change it, so it shows the webhook acts."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": TRIAL_POD_PREFIX,
                     "labels": {"app.kubernetes.io/name": "backend-injector-doctor"}},
        "spec": {
            "initContainers": [{
                "name": "wait-for-mlflow", "image": "busybox:1.36",
                "command": ["sh", "-c", "until nc -z mlflow 5000; do sleep 2; done"],
            }],
            "containers": [{
                "name": "app", "image": "busybox:1.36", "command": ["true"],
                "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}],
            }],
        },
    }


def pod_from_template(owner: str, template: Mapping[str, Any]) -> JsonObject:
    metadata = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": f"{owner}-doctor-",
                     "labels": dict(metadata.get("labels") or {}),
                     "annotations": dict(metadata.get("annotations") or {})},
        "spec": template["spec"],
    }


def workload_pods(cluster: Cluster, namespace: str) -> Iterator[tuple[str, JsonObject]]:
    """``("Deployment/api", pod)`` for each workload of the namespace with a pod template."""
    for group_version, resource, kind, template_path in WORKLOAD_KINDS:
        try:
            listed = cluster.get(namespaced_path(group_version, namespace, resource))
        except ClusterError:
            continue  # not allowed to list this kind: the other checks still stand
        for item in (listed or {}).get("items") or []:
            template = pod_template(item, template_path)
            if template is not None:
                name = (item.get("metadata") or {}).get("name", "?")
                yield f"{kind}/{name}", pod_from_template(name, template)


def pod_template(workload: JsonObject, path: tuple[str, ...]) -> JsonObject | None:
    """The pod template at `path` in the workload, if there is one with a spec."""
    found: Any = workload
    for key in path:
        found = found.get(key) if isinstance(found, dict) else None
    if isinstance(found, dict) and isinstance(found.get("spec"), dict):
        return found
    return None
