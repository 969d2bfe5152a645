"""Admission as the tests see it through the apiserver: kubectl calls, namespaces, and pods.

The helpers the webhook's e2e modules (and the control-plane benchmark) share: the
``backend-injector`` command beside the tests' interpreter, kubectl calls that fail the test
with kubectl's stderr, namespaces made for one test, the chart-like pod the webhook is meant
to change, and the checks of what admission made of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane

INJECT_LABEL = "backend-injector/inject"
STATUS = "backend-injector/status"
EXTERNAL_ENV = {
    "MLFLOW_TRACKING_URI": "http://host.docker.internal:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://host.docker.internal:9000",
    "GATEWAY_URL": "http://host.docker.internal:8000",
    # By reference (the default): the Secret of the pod's own namespace, never a value.
    "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "backend-injector-credentials",
                                           "key": "access-key-id"}},
    "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "backend-injector-credentials",
                                               "key": "secret-access-key"}},
}
TIMEOUT = 30.0


def _executable(name: str) -> str:
    # The venv the tests run in holds the console script; `which` covers an installed one.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed (bash tools/setup.sh)"
    return found


BACKEND_INJECTOR = _executable("backend-injector")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll until `condition()` is truthy and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def kubectl_ok(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    result = plane.kubectl(*args, input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def kubectl_json(plane: ControlPlane, *args: str, input: str | None = None) -> Any:
    return json.loads(kubectl_ok(plane, *args, "-o", "json", input=input))


def apply(plane: ControlPlane, *objects: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kubectl_ok(plane, "apply", "-f", "-", input=json.dumps(items))


def run(*argv: str, env: dict[str, str] | None = None, input: str | None = None) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=env, input=input, check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stdout}{result.stderr}"
    return result.stdout


def new_namespace(plane: ControlPlane, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    apply(plane, {"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": name, "labels": labels or {}}})
    # Pod admission needs the namespace's default ServiceAccount, which the controller-manager
    # adds a moment after the namespace.
    wait_for(lambda: plane.kubectl("get", "sa", "default", "-n", name).returncode == 0,
             f"the default ServiceAccount of {name}")
    return name


def settle_namespace(plane: ControlPlane, name: str, timeout: float = 60.0) -> None:
    """Wait until `name` is not being deleted (another module may have just deleted it)."""

    def settled() -> bool:
        result = plane.kubectl("get", "namespace", name, "-o", "json")
        return result.returncode != 0 or "deletionTimestamp" not in json.loads(result.stdout)[
            "metadata"]

    wait_for(settled, f"namespace {name} to finish terminating", timeout)


def opted_in_labels() -> dict[str, str]:
    return {INJECT_LABEL: "enabled"}


def opt_in(plane: ControlPlane, namespace: str) -> str:
    """``backend-injector label NAMESPACE``, as a user opts a namespace in: the credentials
    Secret its pods read, copied from the installed webhook's, then the label. Its output."""
    return run(BACKEND_INJECTOR, "label", namespace, "--kubeconfig", str(plane.kubeconfig),
               env=clean_environment())


def clean_environment() -> dict[str, str]:
    """This process's environment without BACKEND_INJECTOR_* (the CLI would take them as the
    credentials to copy)."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("BACKEND_INJECTOR_")}


def chart_like_pod(
    name: str, *, labels: dict[str, str] | None = None, restricted: bool = False
) -> dict[str, Any]:
    """A pod as the chart's trainers are written: a waiter for mlflow, one for kafka, and
    in-cluster backend addresses."""
    container_security: dict[str, Any] = {}
    pod_security: dict[str, Any] = {}
    if restricted:
        # What the "restricted" Pod Security Standard of the webhook's namespace demands.
        container_security = {"securityContext": {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
        pod_security = {"securityContext": {
            "runAsNonRoot": True, "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            **pod_security,
            "initContainers": [
                {"name": "wait-for-mlflow", "image": "busybox:1.35",
                 "command": ["sh", "-c", "until nc -z mlflow 5000; do sleep 2; done"],
                 **container_security},
                {"name": "wait-for-kafka", "image": "busybox:1.35",
                 "command": ["sh", "-c", "until nc -z kafka 9092; do sleep 2; done"],
                 **container_security},
            ],
            "containers": [
                {"name": "trainer", "image": "example.invalid/train:1",
                 "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"},
                         {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "kafka:9092"}],
                 **container_security},
            ],
        },
    }


def create_pod(
    plane: ControlPlane, namespace: str, pod: dict[str, Any], *dry_run: str
) -> subprocess.CompletedProcess[str]:
    return plane.kubectl("create", "-n", namespace, "-f", "-", "-o", "json", *dry_run,
                         input=json.dumps(pod))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in
            container.get("env") or []}


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [container["name"] for container in containers or []]


def is_mutated(pod: dict[str, Any]) -> bool:
    return STATUS in (pod["metadata"].get("annotations") or {})


def assert_untouched(pod: dict[str, Any]) -> None:
    """The chart-like pod exactly as written: waiters present, in-cluster env, no record."""
    assert STATUS not in (pod["metadata"].get("annotations") or {})
    assert names(pod["spec"]["initContainers"]) == ["wait-for-mlflow", "wait-for-kafka"]
    assert env_of(pod["spec"]["containers"][0]) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}


def assert_injected(container: dict[str, Any]) -> None:
    env = env_of(container)
    missing = {key: value for key, value in EXTERNAL_ENV.items() if env.get(key) != value}
    assert not missing, f"{container['name']}: {env}"

