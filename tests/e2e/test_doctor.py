"""`backend-injector doctor` against a real kube-apiserver and a deployed webhook.

The webhook is deployed as in harness/deploy.py (the project's manifests, `certs`, `install`,
`serve` in a network namespace behind a hand-made EndpointSlice), with its external backend
at the host side of the namespace's link, where this module listens on MLflow's, MinIO's and
the gateway's ports. Doctor runs as a user runs it, with the admin kubeconfig. It is green on
that healthy install; then each test breaks one thing the way it breaks in a real cluster
and checks that doctor fails and names it: the namespace label removed, the caBundle wiped,
the webhook scaled to zero (no ready endpoint and nothing serving, as when the Deployment has
no pods), a dev registration left by a killed process, a backend service stopped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness.admission import (
    BACKEND_INJECTOR,
    apply,
    chart_like_pod,
    clean_environment,
    kubectl_ok,
    new_namespace,
    opt_in,
    opted_in_labels,
    run,
    wait_for,
)
from .harness.controlplane import ControlPlane
from .harness.deploy import (
    NAMESPACE,
    WEBHOOK_CONFIG,
    Deployment,
    deployed_webhook,
    endpoint_slice,
)
from .harness.dev import DevProcess
from .harness.webhook_host import HOST_ADDRESS

pytestmark = pytest.mark.e2e

BACKEND_PORTS = {"mlflow": 5000, "minio": 9000, "fastapi": 8000}


class Backend:
    """TCP listeners standing in for the Docker services, on the host side of the link."""

    def __init__(self) -> None:
        self.sockets: dict[str, socket.socket] = {}

    def start(self, service: str) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST_ADDRESS, BACKEND_PORTS[service]))
        listener.listen(64)
        self.sockets[service] = listener

    def stop(self, service: str) -> None:
        self.sockets.pop(service).close()

    def close(self) -> None:
        for listener in self.sockets.values():
            listener.close()
        self.sockets.clear()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    running = Backend()
    yield running
    running.close()


@pytest.fixture(scope="module")
def deployment(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
               backend: Backend) -> Iterator[Deployment]:
    with deployed_webhook(control_plane, tmp_path_factory.mktemp("doctor")) as deployed:
        for service in BACKEND_PORTS:
            backend.start(service)
        # The webhook's pods reach the backend where the Docker services would be.
        deployed.server.stop()
        deployed.server.env["BACKEND_INJECTOR_EXTERNAL_HOST"] = HOST_ADDRESS
        deployed.server.start()
        deployed.wait_until_injecting()
        yield deployed


def doctor(plane: ControlPlane, namespace: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BACKEND_INJECTOR, "doctor", "-n", namespace, "--kubeconfig", str(plane.kubeconfig)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name -> its whole line."""
    by_name = {}
    for line in result.stdout.splitlines():
        # "STATUS  name: detail", the status padded to four characters.
        status, rest = line[:4].strip(), line[6:]
        assert status in ("ok", "warn", "FAIL") and line[4:6] == "  ", line
        by_name[rest.split(": ", 1)[0]] = line
    return by_name


def failing(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {name: line for name, line in lines(result).items() if line.startswith("FAIL")}


def wait_for_backend_state(deployment: Deployment, namespace: str, service: str,
                           state: str) -> subprocess.CompletedProcess[str]:
    """Doctor, run until the webhook's probe has seen the backend change (one interval)."""
    result: subprocess.CompletedProcess[str] | None = None

    def seen() -> bool:
        nonlocal result
        result = doctor(deployment.plane, namespace)
        return state in lines(result).get(f"backend {service}", "")

    try:
        wait_for(seen, f"the webhook to see {service} {state}", timeout=60)
    except AssertionError as error:
        assert result is not None
        raise AssertionError(f"{error}; doctor said:\n{result.stdout}{result.stderr}") from None
    assert result is not None
    return result


@pytest.fixture(scope="module")
def opted_in(deployment: Deployment) -> str:
    namespace = new_namespace(deployment.plane, "doctor")
    said = opt_in(deployment.plane, namespace)
    assert (f"{namespace}: Secret backend-injector-credentials created, from Secret "
            "backend-injector/backend-injector-credentials") in said, said
    # A workload as the chart writes them, for doctor to dry-run from its template.
    pod = chart_like_pod("train")
    apply(deployment.plane, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "train", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "train"}},
                 "template": {"metadata": {"labels": {"app": "train"}}, "spec": pod["spec"]}},
    })
    return namespace


def test_green_on_a_healthy_install(deployment: Deployment, opted_in: str) -> None:
    result = wait_for_backend_state(deployment, opted_in, "mlflow", "reachable")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines(result)
    assert not failing(result), result.stdout
    for name in ("cluster reachable", "webhook configuration",
                 "caBundle verifies the served certificate", "certificate expiry",
                 "webhook endpoints ready", f"namespace {opted_in} selected",
                 "no stale dev registration", "backend mlflow", "backend minio",
                 "backend fastapi", "dry-run a test pod", "dry-run Deployment/train",
                 f"credentials Secret in {opted_in}"):
        assert checks[name].startswith("ok"), checks
    # The e2e cluster is none of the platform presets: its context is e2e, and its node (when
    # one has joined) a plain kubelet with no platform's marks.
    assert checks["platform"].startswith("ok    platform: none of the presets (context e2e, "), \
        checks
    # Fetched from the endpoint the apiserver calls, and checked against the caBundle.
    assert "backend-injector.backend-injector.svc, from endpoint 10.213.77.2:8443" in checks[
        "caBundle verifies the served certificate"]
    # The admission warnings say what the webhook changed.
    assert "removed init containers wait-for-mlflow" in checks["dry-run Deployment/train"]
    assert "reachable from the webhook's pod" in checks["backend minio"]


def test_a_namespace_without_the_label_is_named(deployment: Deployment, opted_in: str) -> None:
    plain = new_namespace(deployment.plane, "doctor-plain")
    result = doctor(deployment.plane, plain)
    assert result.returncode == 1
    broken = failing(result)
    assert set(broken) == {f"namespace {plain} selected", "dry-run a test pod"}, result.stdout
    assert f"fix: backend-injector label {plain}" in broken[f"namespace {plain} selected"]
    assert "came back unchanged" in broken["dry-run a test pod"]


def test_a_namespace_labelled_without_its_credentials_secret_is_named(
        deployment: Deployment, opted_in: str) -> None:
    """Labelled by hand, the namespace's pods would reference a Secret it lacks and stop in
    CreateContainerConfigError; doctor names it, and `label` puts it there."""
    plane = deployment.plane
    bare = new_namespace(plane, "doctor-bare", opted_in_labels())
    result = doctor(plane, bare)
    assert result.returncode == 1
    line = failing(result)[f"credentials Secret in {bare}"]
    assert "backend-injector-credentials/access-key-id" in line
    assert f"fix: backend-injector label {bare}" in line
    opt_in(plane, bare)
    assert lines(doctor(plane, bare))[f"credentials Secret in {bare}"].startswith("ok")


def test_rotation_reaches_every_copy_and_opting_out_removes_it(
        deployment: Deployment, opted_in: str) -> None:
    """A new secret key in the installed webhook's Secret, then `backend-injector credentials`:
    every opted-in namespace's copy holds it; `label --remove` takes the label and the copy."""
    plane = deployment.plane
    other = new_namespace(plane, "doctor-rotation")
    opt_in(plane, other)
    source = json.loads(kubectl_ok(plane, "get", "secret", "backend-injector-credentials",
                                   "-n", NAMESPACE, "-o", "json"))
    rotated = base64.b64encode(b"rotated-secret-value").decode()

    def set_secret_key(value: str) -> None:
        kubectl_ok(plane, "patch", "secret", "backend-injector-credentials", "-n", NAMESPACE,
                   "--type=json", "-p", json.dumps([{"op": "replace",
                                                     "path": "/data/secret-access-key",
                                                     "value": value}]))

    set_secret_key(rotated)
    try:
        said = run(BACKEND_INJECTOR, "credentials", "--kubeconfig", str(plane.kubeconfig),
                   env=clean_environment())
        for namespace in (opted_in, other):
            assert f"{namespace}: Secret backend-injector-credentials updated" in said, said
            copy = json.loads(kubectl_ok(plane, "get", "secret", "backend-injector-credentials",
                                         "-n", namespace, "-o", "json"))
            assert copy["data"]["secret-access-key"] == rotated
    finally:
        set_secret_key(source["data"]["secret-access-key"])
        run(BACKEND_INJECTOR, "credentials", "--kubeconfig", str(plane.kubeconfig),
            env=clean_environment())
    run(BACKEND_INJECTOR, "label", other, "--remove", "--kubeconfig", str(plane.kubeconfig),
        env=clean_environment())
    assert plane.kubectl("get", "secret", "backend-injector-credentials", "-n",
                         other).returncode != 0
    labels = json.loads(kubectl_ok(plane, "get", "namespace", other, "-o", "json"))[
        "metadata"].get("labels") or {}
    assert "backend-injector/inject" not in labels


def test_removing_the_label_is_named(deployment: Deployment, opted_in: str) -> None:
    plane = deployment.plane
    kubectl_ok(plane, "label", "namespace", opted_in, "backend-injector/inject-")
    try:
        result = doctor(plane, opted_in)
        assert result.returncode == 1
        assert f"namespace {opted_in} selected" in failing(result)
    finally:
        kubectl_ok(plane, "label", "namespace", opted_in, "backend-injector/inject=enabled")
    assert doctor(plane, opted_in).returncode == 0


def test_a_wiped_ca_bundle_is_named(deployment: Deployment, opted_in: str) -> None:
    plane = deployment.plane
    kubectl_ok(plane, "patch", "mutatingwebhookconfiguration", WEBHOOK_CONFIG, "--type=json",
               "-p", json.dumps([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                                  "value": ""}]))
    try:
        result = doctor(plane, opted_in)
        assert result.returncode == 1
        broken = failing(result)
        line = broken["caBundle verifies the served certificate"]
        assert "the caBundle is empty" in line and "fix: run backend-injector install" in line
        # The apiserver cannot verify the webhook, and fails closed: the dry run says so.
        assert "failed calling webhook" in broken["dry-run a test pod"]
    finally:
        deployment.install()
    deployment.wait_until_injecting()
    assert doctor(plane, opted_in).returncode == 0


def test_the_webhook_scaled_to_zero_is_named(deployment: Deployment, opted_in: str) -> None:
    plane = deployment.plane
    # What the EndpointSlice controller publishes when the Deployment has no pods, and the
    # pods gone with it.
    empty = endpoint_slice(deployment.netns.address)
    empty["endpoints"] = []
    apply(plane, empty)
    deployment.server.stop()
    try:
        result = doctor(plane, opted_in)
        assert result.returncode == 1
        broken = failing(result)
        assert (f"Service {NAMESPACE}/backend-injector has no ready endpoints"
                in broken["webhook endpoints ready"])
        assert "dry-run a test pod" in broken
    finally:
        apply(plane, endpoint_slice(deployment.netns.address))
        deployment.server.start()
    deployment.wait_until_injecting()
    assert doctor(plane, opted_in).returncode == 0


def test_a_stale_dev_registration_is_named(deployment: Deployment, opted_in: str,
                                           tmp_path: Path) -> None:
    plane = deployment.plane
    process = DevProcess(plane, plane.log_dir / f"doctor-dev-{tmp_path.name}.log")
    try:
        process.wait_registered()
        live = lines(doctor(plane, opted_in))["no stale dev registration"]
        assert live.startswith("warn") and "is live at" in live
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(timeout=30)
        result = doctor(plane, opted_in)
        assert result.returncode == 1
        line = failing(result)["no stale dev registration"]
        assert f"backend-injector-dev is stale: nothing answers at {process.url}" in line
        assert "kubectl delete mutatingwebhookconfiguration backend-injector-dev" in line
    finally:
        process.kill()
        plane.kubectl("delete", "mutatingwebhookconfiguration", "backend-injector-dev",
                      "--ignore-not-found")


def test_a_stopped_backend_service_is_named(deployment: Deployment, opted_in: str,
                                            backend: Backend) -> None:
    backend.stop("minio")
    try:
        result = wait_for_backend_state(deployment, opted_in, "minio", "not reachable")
        assert result.returncode == 1
        assert set(failing(result)) == {"backend minio"}, result.stdout
    finally:
        with contextlib.suppress(OSError):
            backend.start("minio")
