"""Every kustomization in manifests/ is accepted by a real kube-apiserver (server-side dry run).

``tools/check-manifests.sh`` validates the rendered objects against published schemas; this
goes further: the apiserver runs its own validation, defaulting and admission (Pod Security
included) on each object, as ``kubectl apply -k`` would on a real cluster, and stores nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness.cert_manager import STAND_IN_CRDS
from .harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
KUSTOMIZATIONS = [MANIFESTS / "base", *sorted((MANIFESTS / "overlays").iterdir())]
NAMESPACE = "backend-injector"


def _ok(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    result = plane.kubectl(*args, input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def _rendered(plane: ControlPlane, directory: Path) -> list[dict[str, Any]]:
    return [obj for obj in yaml.safe_load_all(_ok(plane, "kustomize", str(directory))) if obj]


def _namespace_state(plane: ControlPlane) -> str:
    result = plane.kubectl("get", "namespace", NAMESPACE, "-o", "json")
    if result.returncode != 0:
        return "absent"
    metadata = json.loads(result.stdout)["metadata"]
    return "terminating" if "deletionTimestamp" in metadata else "there"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    plane = control_plane
    items = {"apiVersion": "v1", "kind": "List", "items": STAND_IN_CRDS}
    _ok(plane, "apply", "-f", "-", input=json.dumps(items))
    for crd in STAND_IN_CRDS:
        _ok(plane, "wait", "--for=condition=Established", "--timeout=30s",
            f"crd/{crd['metadata']['name']}")
    # A dry-run Namespace is not there for the dry-run objects that go into it, so the
    # project's Namespace (the one object every kustomization shares) is created for real,
    # after any deletion of it by an earlier module has finished, and removed afterwards.
    deadline = time.monotonic() + 60
    while (state := _namespace_state(plane)) == "terminating" and time.monotonic() < deadline:
        time.sleep(0.5)
    created = state == "absent"
    [namespace] = [obj for obj in _rendered(plane, MANIFESTS / "base")
                   if obj["kind"] == "Namespace"]
    _ok(plane, "apply", "-f", "-", input=json.dumps(namespace))
    try:
        yield plane
    finally:
        if created:
            plane.kubectl("delete", "namespace", NAMESPACE, "--timeout=60s")


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: path.name)
def test_server_side_dry_run_apply_succeeds(cluster: ControlPlane, directory: Path) -> None:
    objects = _rendered(cluster, directory)
    output = _ok(cluster, "apply", "--dry-run=server", "-k", str(directory), "-o", "json")
    applied = json.loads(output)
    returned = applied["items"] if applied.get("kind") == "List" else [applied]
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj in returned) == sorted(
        (obj["kind"], obj["metadata"]["name"]) for obj in objects
    )
    # The apiserver defaulted them (proof they went through it)...
    deployments = [obj for obj in returned if obj["kind"] == "Deployment"]
    assert deployments and all(
        obj["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirst" for obj in deployments
    )
    # ...and stored none of them.
    stored = cluster.kubectl("get", "deployment", "backend-injector", "-n", NAMESPACE)
    assert stored.returncode != 0 and "NotFound" in stored.stderr
