"""Smoke test of the e2e control plane itself.

If these fail, every other e2e failure is suspect: they prove the apiserver is the expected
release, that kube-controller-manager turns Deployments and Jobs into Pods (no scheduler or
kubelet is needed for the Pod objects to exist), and that the MutatingAdmissionPolicy API
the project targets is served.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from .harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

KUBERNETES_VERSION = "v1.37.2"
POD_TIMEOUT = 30.0


def _new_namespace(control_plane: ControlPlane) -> str:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    result = control_plane.kubectl("create", "namespace", name)
    assert result.returncode == 0, result.stderr
    # Pods need the namespace's default ServiceAccount, which the controller-manager adds
    # asynchronously; wait for it so a slow start cannot look like a broken controller.
    _wait_for(lambda: control_plane.kubectl("get", "sa", "default", "-n", name).returncode == 0)
    return name


def _wait_for(condition: Any, timeout: float = POD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.5)


def _pods(control_plane: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    result = control_plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def _wait_for_pod(control_plane: ControlPlane, namespace: str, selector: str) -> dict[str, Any]:
    _wait_for(lambda: bool(_pods(control_plane, namespace, selector)))
    return _pods(control_plane, namespace, selector)[0]


def test_server_reports_built_version(control_plane: ControlPlane) -> None:
    version = control_plane.api_get("/version")
    assert version["gitVersion"] == KUBERNETES_VERSION
    assert (version["major"], version["minor"]) == ("1", "37")

    client = control_plane.kubectl("version", "-o", "json")
    assert client.returncode == 0, client.stderr
    versions = json.loads(client.stdout)
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_deployment_produces_pod(control_plane: ControlPlane) -> None:
    namespace = _new_namespace(control_plane)
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/smoke:1"}]},
            },
        },
    }
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert result.returncode == 0, result.stderr

    pod = _wait_for_pod(control_plane, namespace, "app=smoke")
    # Admitted and stored, with ServiceAccount admission applied; no node will ever run it.
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert pod["spec"]["serviceAccountName"] == "default"
    assert pod["status"]["phase"] == "Pending"


def test_job_produces_pod(control_plane: ControlPlane) -> None:
    namespace = _new_namespace(control_plane)
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "smoke", "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "example.invalid/smoke:1"}],
                },
            },
        },
    }
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert result.returncode == 0, result.stderr

    pod = _wait_for_pod(control_plane, namespace, "job-name=smoke")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"


def test_mutating_admission_policy_api_is_served(control_plane: ControlPlane) -> None:
    result = control_plane.kubectl(
        "api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name"
    )
    assert result.returncode == 0, result.stderr
    resources = set(result.stdout.split())
    assert "mutatingadmissionpolicies.admissionregistration.k8s.io" in resources
    assert "mutatingadmissionpolicybindings.admissionregistration.k8s.io" in resources

    # kubectl lists the preferred version only; the project needs the GA v1 one.
    served = control_plane.api_get("/apis/admissionregistration.k8s.io/v1")
    names = {resource["name"] for resource in served["resources"]}
    assert {"mutatingadmissionpolicies", "mutatingadmissionpolicybindings"} <= names
