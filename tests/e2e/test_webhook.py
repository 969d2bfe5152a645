"""backend-injector serving a real kube-apiserver, deployed from the project's own manifests.

The ``deployment`` fixture (conftest.py, harness/deploy.py) deploys the webhook the way a user
does, minus the pods. Everything is observed through the apiserver: the caBundle ``install``
writes, namespaces that are never sent, server-side dry runs, reinvocation by a second webhook,
and the failure policy with the webhook down. The webhook's own log (one JSON line per review)
is kept in the control plane's log directory, so its tail is attached to every failure report.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .harness.admission import (
    BACKEND_INJECTOR,
    EXTERNAL_ENV,
    INJECT_LABEL,
    STATUS,
    apply,
    assert_injected,
    assert_untouched,
    chart_like_pod,
    create_pod,
    is_mutated,
    kubectl_json,
    kubectl_ok,
    names,
    new_namespace,
    run,
    wait_for,
)
from .harness.controlplane import REPO_ROOT, ControlPlane
from .harness.deploy import (
    NAMESPACE,
    WEBHOOK_NAME,
    WEBHOOK_PORT,
    Deployment,
    ca_fingerprints,
)
from .harness.webhook_host import ADDED_CONTAINER, ServerProcess

pytestmark = pytest.mark.e2e


METRIC_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$"
)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def webhook_metrics(plane: ControlPlane) -> list[Sample]:
    """The apiserver's admission-webhook samples that concern backend-injector's webhook."""
    samples = []
    for line in kubectl_ok(plane, "get", "--raw", "/metrics").splitlines():
        match = METRIC_LINE.match(line)
        if not match or not match["name"].startswith("apiserver_admission_webhook"):
            continue
        labels = dict(LABEL.findall(match["labels"] or ""))
        if labels.get("name") == WEBHOOK_NAME:
            samples.append(Sample(match["name"], labels, float(match["value"])))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(sample.value for sample in samples if sample.name == name
               and all(sample.labels.get(key) == value for key, value in labels.items()))


def test_install_trusts_the_given_ca_without_reissuing(deployment: Deployment) -> None:
    # The Secret made from `backend-injector certs` was accepted as it is...
    assert "issued" not in deployment.install_output, deployment.install_output
    assert deployment.secret_files()["ca.crt"] == deployment.ca_pem
    # ...and its CA is now what the apiserver trusts for the webhook.
    assert "patched the caBundle" in deployment.install_output, deployment.install_output
    assert ca_fingerprints(deployment.ca_bundle()) == ca_fingerprints(deployment.ca_pem)
    # A second run has nothing to do.
    assert deployment.install().startswith("nothing to do"), deployment.install_output


def test_the_webhook_namespace_and_kube_system_are_never_sent(deployment: Deployment) -> None:
    plane = deployment.plane
    wait_for(lambda: plane.kubectl("get", "sa", "default", "-n", "kube-system").returncode == 0,
             "the default ServiceAccount of kube-system")
    witness = new_namespace(plane, "witness")
    name = f"excluded-{uuid.uuid4().hex[:6]}"
    try:
        # Opted in by label, as a careless `kubectl label --all` would do.
        for namespace in (NAMESPACE, "kube-system", witness):
            kubectl_ok(plane, "label", "namespace", namespace, f"{INJECT_LABEL}=enabled",
                       "--overwrite")

        # The apiserver's namespace cache applies changes in order: once the witness, labelled
        # last, is seen as opted in, so are the other two.
        def witness_opted_in() -> bool:
            probe = create_pod(plane, witness, chart_like_pod("probe"), "--dry-run=server")
            return probe.returncode == 0 and is_mutated(json.loads(probe.stdout))

        wait_for(witness_opted_in, "the apiserver to see the new namespace labels")
        for namespace in (NAMESPACE, "kube-system"):
            result = create_pod(plane, namespace, chart_like_pod(name, restricted=True))
            assert result.returncode == 0, result.stderr
            assert_untouched(json.loads(result.stdout))
    finally:
        kubectl_ok(plane, "label", "namespace", NAMESPACE, f"{INJECT_LABEL}=disabled",
                   "--overwrite")
        kubectl_ok(plane, "label", "namespace", "kube-system", f"{INJECT_LABEL}-")
        for namespace in (NAMESPACE, "kube-system"):
            plane.kubectl("delete", "pod", name, "-n", namespace, "--wait=false",
                          "--ignore-not-found")
    # Not even sent: the webhook would have logged a review, "excluded" or not.
    assert deployment.reviews(namespace=NAMESPACE) == []
    assert deployment.reviews(namespace="kube-system") == []


def test_server_side_dry_run_returns_the_mutated_pod_and_stores_nothing(
    deployment: Deployment,
) -> None:
    plane = deployment.plane
    name = f"dry-{uuid.uuid4().hex[:6]}"
    result = create_pod(plane, deployment.opted_in, chart_like_pod(name), "--dry-run=server")
    assert result.returncode == 0, result.stderr
    pod = json.loads(result.stdout)
    assert names(pod["spec"]["initContainers"]) == ["wait-for-kafka"]
    assert_injected(pod["spec"]["containers"][0])
    assert json.loads(pod["metadata"]["annotations"][STATUS])["removed"] == ["wait-for-mlflow"]
    # The warnings the webhook returns reach the client.
    assert "backend-injector: removed init containers wait-for-mlflow" in result.stderr
    gone = plane.kubectl("get", "pod", name, "-n", deployment.opted_in)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone
    [review] = deployment.reviews(pod=name)
    assert review["dry_run"] is True and review["result"] == "mutated"


@pytest.fixture
def container_adder(deployment: Deployment) -> Iterator[ServerProcess]:
    """A second mutating webhook, called after backend-injector, that adds a container."""
    plane, netns = deployment.plane, deployment.netns
    port = WEBHOOK_PORT + 1
    certs_dir = deployment.work / "certs-adder"
    # Called by URL at the namespace's address, so the certificate names that address.
    run(BACKEND_INJECTOR, "certs", "--service", "container-adder", "--namespace", NAMESPACE,
        "--san", netns.address, "--out", str(certs_dir))
    adder = ServerProcess(
        "container-adder",
        [sys.executable, "-m", "tests.e2e.harness.webhook_host", "add-container",
         "--host", netns.address, "--port", str(port),
         "--tls-cert", str(certs_dir / "tls.crt"), "--tls-key", str(certs_dir / "tls.key")],
        netns=netns, port=port, log_path=plane.log_dir / "container-adder.log",
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    deployment.extra_servers.append(adder)
    adder.start()
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        # The apiserver calls webhooks in the order of their configurations' names: this one
        # sorts after "backend-injector", so it runs after it.
        "metadata": {"name": "zz-e2e-container-adder"},
        "webhooks": [{
            "name": "add.container-adder.e2e",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "url": f"https://{netns.address}:{port}/add",
                "caBundle": base64.b64encode((certs_dir / "ca.crt").read_bytes()).decode(),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "objectSelector": {"matchLabels": {"e2e/add-container": "true"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
        }],
    }
    try:
        apply(plane, configuration)
        yield adder
    finally:
        plane.kubectl("delete", "mutatingwebhookconfiguration", "zz-e2e-container-adder",
                      "--ignore-not-found")
        adder.stop()
        deployment.extra_servers.remove(adder)


def test_reinvocation_gives_a_container_added_later_the_backend(
    deployment: Deployment, container_adder: ServerProcess
) -> None:
    plane = deployment.plane
    labels = {"e2e/add-container": "true"}

    def added() -> bool:
        probe = create_pod(plane, deployment.opted_in, chart_like_pod("probe", labels=labels),
                           "--dry-run=server")
        return probe.returncode == 0 and ADDED_CONTAINER in names(
            json.loads(probe.stdout)["spec"]["containers"])

    wait_for(added, "the apiserver to call the container adder")

    name = f"reinvoked-{uuid.uuid4().hex[:6]}"
    result = create_pod(plane, deployment.opted_in, chart_like_pod(name, labels=labels))
    assert result.returncode == 0, result.stderr
    pod = kubectl_json(plane, "get", "pod", name, "-n", deployment.opted_in)
    assert names(pod["spec"]["containers"]) == ["trainer", ADDED_CONTAINER]
    for container in pod["spec"]["containers"]:
        assert_injected(container)
    status = json.loads(pod["metadata"]["annotations"][STATUS])
    assert status["removed"] == ["wait-for-mlflow"]

    first, second = deployment.reviews(pod=name)
    assert first["result"] == second["result"] == "mutated"
    assert first["removed"] == ["wait-for-mlflow"] and second["removed"] == []
    # The second pass only had the new container to give the backend to.
    assert sorted(second["env"]) == sorted(EXTERNAL_ENV)
    [adder_review] = [record["request"] for record in container_adder.records()
                      if (record["request"]["object"]["metadata"].get("name")) == name]
    # The adder saw the pod after backend-injector's first pass.
    assert names(adder_review["object"]["spec"]["initContainers"]) == ["wait-for-kafka"]


def test_webhook_down_means_pods_are_refused_and_counted(deployment: Deployment) -> None:
    """failurePolicy: Fail, as manifests/README.md documents it: a webhook that does not
    answer gets the pod refused with a clear error, and the apiserver's metrics count it."""
    plane = deployment.plane
    rejections = "apiserver_admission_webhook_rejection_count"
    requests = "apiserver_admission_webhook_request_total"
    calling = {"error_type": "calling_webhook_error", "operation": "CREATE", "type": "admit"}
    refused = {"rejected": "true", "operation": "CREATE", "type": "admit"}

    def refused_creation(what: str) -> tuple[float, str]:
        started = time.monotonic()
        result = create_pod(plane, deployment.opted_in,
                            chart_like_pod(f"{what}-{uuid.uuid4().hex[:6]}"))
        elapsed = time.monotonic() - started
        assert result.returncode != 0, result.stdout
        assert f'failed calling webhook "{WEBHOOK_NAME}"' in result.stderr, result.stderr
        return elapsed, result.stderr

    before = webhook_metrics(plane)
    # Hung (stopped, so connections are accepted by the kernel and never answered): refused
    # after the configuration's timeoutSeconds (5), not the apiserver's default of 10.
    deployment.server.signal(signal.SIGSTOP)
    try:
        elapsed, error = refused_creation("hung")
        assert 4.5 < elapsed < 9, (elapsed, error)
    finally:
        deployment.server.signal(signal.SIGCONT)
    # Gone: refused at once (connection refused), not after the timeout.
    deployment.server.stop()
    try:
        elapsed, error = refused_creation("down")
        assert elapsed < 4.5, (elapsed, error)
        after = webhook_metrics(plane)
        assert total(after, rejections, **calling) == total(before, rejections, **calling) + 2, (
            [sample for sample in after if sample.name == rejections])
        assert total(after, requests, **refused) == total(before, requests, **refused) + 2, (
            [sample for sample in after if sample.name == requests])
        # Namespaces that did not opt in are not affected.
        plain = new_namespace(plane, "plain")
        kept = create_pod(plane, plain, chart_like_pod("plain"))
        assert kept.returncode == 0, kept.stderr
    finally:
        deployment.server.start()
    deployment.wait_until_injecting()
