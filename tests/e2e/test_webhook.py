"""backend-injector through a real kube-apiserver, deployed from the project's own manifests.

The module's fixture deploys the webhook the way a user does, minus the pods: the Namespace,
ConfigMap, credentials Secret, Service and MutatingWebhookConfiguration come from
``kubectl kustomize manifests/overlays/docker-desktop`` (the Deployment and the install Job are
left out: there is no kubelet to run them); ``backend-injector certs`` makes the certificate,
the TLS Secret is created from its files and ``backend-injector install`` puts the CA into the
caBundle. The server is ``backend-injector serve`` with the ConfigMap's configuration and the
Secret's credentials, inside a network namespace of the test's own (see webhook_host.py),
reached by the apiserver through the Service and a hand-made EndpointSlice, as a pod would be.

Everything is observed through the apiserver: pods created by the ReplicaSet and Job
controllers from ``helm install`` of the seed's chart, server-side dry runs, reinvocation by a
second webhook, the failure policy with the webhook down, and certificate rotation with the
webhook left running. The webhook's own log (one JSON line per review) is kept in the control
plane's log directory, so its tail is attached to every failure report.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .harness.controlplane import ControlPlane
from .harness.webhook_host import ADDED_CONTAINER, NetworkNamespace, SecretVolume, ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "manifests" / "overlays" / "docker-desktop"
CHART = Path(__file__).resolve().parent / "chart"
BROKER = "kafka"  # the chart's component that keeps running in the cluster
# The second chart: waiters in the shapes public charts write (see its README).
SHAPES_CHART = Path(__file__).resolve().parent / "chart-shapes"
VALUES = CHART / "values-complete.yaml"

NAMESPACE = "backend-injector"
SERVICE = "backend-injector"
TLS_SECRET = "backend-injector-tls"
WEBHOOK_CONFIG = "backend-injector"
WEBHOOK_NAME = "inject.backend-injector.svc"
WEBHOOK_PORT = 8443
INJECT_LABEL = "backend-injector/inject"
STATUS = "backend-injector/status"
# The kinds of the rendered overlay that make sense without a kubelet; the Deployment, the
# install Job/CronJob and their RBAC are what a node would run.
APPLIED_KINDS = ("Namespace", "ConfigMap", "Secret", "Service", "MutatingWebhookConfiguration")

EXTERNAL_ENV = {
    "MLFLOW_TRACKING_URI": "http://host.docker.internal:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://host.docker.internal:9000",
    "GATEWAY_URL": "http://host.docker.internal:8000",
    "AWS_ACCESS_KEY_ID": "minioadmin",
    "AWS_SECRET_ACCESS_KEY": "minioadmin",
}
WAITERS = ("wait-for-mlflow", "wait-for-fastapi")
TIMEOUT = 30.0


def _executable(name: str) -> str:
    # The venv the tests run in holds the console script; `which` covers an installed one.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed (bash tools/setup.sh)"
    return found


BACKEND_INJECTOR = _executable("backend-injector")


# --- small helpers --------------------------------------------------------------------------


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


def ca_fingerprints(bundle_pem: bytes) -> list[str]:
    return [cert.fingerprint(hashes.SHA256()).hex()
            for cert in x509.load_pem_x509_certificates(bundle_pem)]


def served_certificate(address: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


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


# --- the deployment -------------------------------------------------------------------------


@dataclass
class Deployment:
    """The webhook as deployed for this module, and the means to observe and disturb it."""

    plane: ControlPlane
    netns: NetworkNamespace
    server: ServerProcess
    volume: SecretVolume
    work: Path
    config: Path
    serve_env: dict[str, str]
    ca_pem: bytes
    install_output: str
    opted_in: str
    extra_servers: list[ServerProcess] = field(default_factory=list)

    def reviews(self, **match: Any) -> list[dict[str, Any]]:
        """The webhook's review log lines, optionally only those whose fields equal `match`."""
        return [record for record in self.server.records()
                if record.get("message") == "review"
                and all(record.get(key) == value for key, value in match.items())]

    def secret_files(self) -> dict[str, bytes]:
        secret = kubectl_json(self.plane, "get", "secret", TLS_SECRET, "-n", NAMESPACE)
        return {key: base64.b64decode(value) for key, value in secret["data"].items()}

    def ca_bundle(self) -> bytes:
        configuration = kubectl_json(self.plane, "get", "mutatingwebhookconfiguration",
                                     WEBHOOK_CONFIG)
        return base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"])

    def install(self, *args: str) -> str:
        return run(BACKEND_INJECTOR, "install", "--kubeconfig", str(self.plane.kubeconfig), *args)

    def wait_until_injecting(self) -> None:
        """Until a dry-run pod in the opted-in namespace comes back mutated."""

        def mutated() -> bool:
            result = create_pod(self.plane, self.opted_in, chart_like_pod("probe"),
                                "--dry-run=server")
            return result.returncode == 0 and is_mutated(json.loads(result.stdout))

        wait_for(mutated, "the apiserver to call backend-injector")


def rendered_overlay(plane: ControlPlane) -> list[dict[str, Any]]:
    text = kubectl_ok(plane, "kustomize", str(OVERLAY))
    return [document for document in yaml.safe_load_all(text) if document]


def endpoint_slice(address: str) -> dict[str, Any]:
    """What the EndpointSlice controller would publish for a ready webhook pod at `address`."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "backend-injector-e2e",
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                # Not the controller's value, so the controller leaves this slice alone.
                "endpointslice.kubernetes.io/managed-by": "e2e.backend-injector",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": WEBHOOK_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


@contextlib.contextmanager
def deployed_webhook(plane: ControlPlane, work: Path) -> Iterator[Deployment]:
    """The webhook deployed on `plane`, torn down on exit (also used by the benchmarks)."""
    objects = [obj for obj in rendered_overlay(plane) if obj["kind"] in APPLIED_KINDS]
    assert sorted(obj["kind"] for obj in objects) == sorted(APPLIED_KINDS), objects
    netns: NetworkNamespace | None = None
    server: ServerProcess | None = None
    extra: list[ServerProcess] = []
    try:
        settle_namespace(plane, NAMESPACE)
        apply(plane, *objects)

        # The server runs with what the Deployment would mount: the ConfigMap's configuration
        # and the credentials Secret's files.
        config_map = next(obj for obj in objects if obj["kind"] == "ConfigMap")
        config = work / "config.yaml"
        config.write_text(config_map["data"]["config.yaml"])
        credentials = next(obj for obj in objects if obj["kind"] == "Secret")
        credentials_dir = work / "credentials"
        credentials_dir.mkdir()
        for key, value in credentials["stringData"].items():
            (credentials_dir / key).write_text(value)
        serve_env = {
            "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE": str(credentials_dir / "access-key-id"),
            "BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE": str(credentials_dir / "secret-access-key"),
        }

        certs_dir = work / "certs-initial"
        run(BACKEND_INJECTOR, "certs", "--service", SERVICE, "--namespace", NAMESPACE,
            "--out", str(certs_dir))
        files = {name: (certs_dir / name).read_bytes()
                 for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
        apply(plane, tls_secret(files))
        volume = SecretVolume(work / "tls")
        volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})

        netns = NetworkNamespace.create()
        server = ServerProcess(
            "webhook",
            [BACKEND_INJECTOR, "serve", "--config", str(config),
             "--host", netns.address, "--port", str(WEBHOOK_PORT),
             "--tls-cert", str(volume.path("tls.crt")), "--tls-key", str(volume.path("tls.key"))],
            netns=netns, port=WEBHOOK_PORT, log_path=plane.log_dir / "webhook.log", env=serve_env,
        )
        server.start()
        apply(plane, endpoint_slice(netns.address))

        opted_in = new_namespace(plane, "opted-in", opted_in_labels())
        deployment = Deployment(
            plane=plane, netns=netns, server=server, volume=volume, work=work, config=config,
            serve_env=serve_env, ca_pem=files["ca.crt"], install_output="", opted_in=opted_in,
            extra_servers=extra,
        )
        deployment.install_output = deployment.install()
        deployment.wait_until_injecting()
        yield deployment
    finally:
        # The webhook fails closed: its configuration goes first, so that nothing after this
        # module meets a webhook that no longer answers.
        plane.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIG,
                      "--ignore-not-found")
        plane.kubectl("delete", "endpointslice", "backend-injector-e2e", "-n", NAMESPACE,
                      "--ignore-not-found")
        for process in [*extra, *([server] if server else [])]:
            process.stop()
        if netns is not None:
            netns.delete()
        # Leave no trace of the deployment for later modules (they may create the namespace).
        plane.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=60s")


@pytest.fixture(scope="module")
def deployment(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with deployed_webhook(control_plane, tmp_path_factory.mktemp("webhook")) as deployed:
        yield deployed


def tls_secret(files: dict[str, bytes]) -> dict[str, Any]:
    """The Secret `install` reads: type kubernetes.io/tls with the CA and its key beside."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TLS_SECRET, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {name: base64.b64encode(content).decode() for name, content in files.items()},
    }


# --- the chart ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """The flts chart installed in `namespace`, and what it was rendered from."""

    namespace: str
    templates: dict[str, dict[str, Any]]  # component -> pod template as the chart wrote it
    injected: dict[str, dict[str, Any]]  # component -> pod template after `backend-injector inject`
    pods: dict[str, dict[str, Any]]  # component -> the live pod the controllers created


def pod_templates(manifests: str) -> dict[str, dict[str, Any]]:
    """component label -> pod template of every Deployment and Job in rendered manifests."""
    templates = {}
    for document in yaml.safe_load_all(manifests):
        if document and document["kind"] in ("Deployment", "Job"):
            template = document["spec"]["template"]
            templates[template["metadata"]["labels"]["app.kubernetes.io/component"]] = template
    return templates


def install_chart(deployment: Deployment, namespace: str) -> Release:
    plane = deployment.plane
    args = ["flts", str(CHART), "-f", str(VALUES), "--namespace", namespace]
    rendered = plane.helm("template", *args)
    assert rendered.returncode == 0, rendered.stderr
    injected = run(BACKEND_INJECTOR, "inject", "--config", str(deployment.config), "-f", "-",
                   env={**os.environ, **deployment.serve_env}, input=rendered.stdout)
    # No --wait: with no kubelet nothing ever becomes ready. The pods are what is tested.
    installed = plane.helm("install", *args)
    assert installed.returncode == 0, installed.stderr
    templates = pod_templates(rendered.stdout)

    def all_pods() -> dict[str, dict[str, Any]] | None:
        items = kubectl_json(plane, "get", "pods", "-n", namespace,
                             "-l", "app.kubernetes.io/instance=flts")["items"]
        pods = {pod["metadata"]["labels"]["app.kubernetes.io/component"]: pod for pod in items}
        return pods if set(pods) == set(templates) and len(items) == len(templates) else None

    pods = wait_for(all_pods, f"one pod per workload of the chart in {namespace}")
    return Release(namespace, templates, pod_templates(injected), pods)


@pytest.fixture(scope="module")
def chart_opted_in(deployment: Deployment) -> Release:
    namespace = new_namespace(deployment.plane, "flts-opted-in", opted_in_labels())
    return install_chart(deployment, namespace)


@pytest.fixture(scope="module")
def chart_unlabelled(deployment: Deployment) -> Release:
    namespace = new_namespace(deployment.plane, "flts-plain")
    return install_chart(deployment, namespace)


def essentials(template_or_pod: dict[str, Any]) -> dict[str, Any]:
    """What the webhook may change, without what the apiserver defaults (pull policy,
    termination message path, service-account volume...)."""
    spec = template_or_pod["spec"]

    def containers(key: str) -> list[dict[str, Any]]:
        return [{field: container.get(field) for field in ("name", "image", "command", "args",
                                                           "env")}
                for container in spec.get(key) or []]

    return {
        "initContainers": containers("initContainers"),
        "containers": containers("containers"),
        "status": (template_or_pod["metadata"].get("annotations") or {}).get(STATUS),
    }


# --- tests ----------------------------------------------------------------------------------


def test_install_trusts_the_given_ca_without_reissuing(deployment: Deployment) -> None:
    # The Secret made from `backend-injector certs` was accepted as it is...
    assert "issued" not in deployment.install_output, deployment.install_output
    assert deployment.secret_files()["ca.crt"] == deployment.ca_pem
    # ...and its CA is now what the apiserver trusts for the webhook.
    assert "patched the caBundle" in deployment.install_output, deployment.install_output
    assert ca_fingerprints(deployment.ca_bundle()) == ca_fingerprints(deployment.ca_pem)
    # A second run has nothing to do.
    assert deployment.install().startswith("nothing to do"), deployment.install_output


def test_chart_pods_in_an_opted_in_namespace_are_pointed_at_the_external_backend(
    deployment: Deployment, chart_opted_in: Release
) -> None:
    for component, pod in chart_opted_in.pods.items():
        template = chart_opted_in.templates[component]
        written = names(template["spec"].get("initContainers"))
        init = names(pod["spec"].get("initContainers"))
        assert not set(init) & set(WAITERS), (component, init)
        assert init == [name for name in written if name not in WAITERS], (component, init)
        if "wait-for-kafka" in written:
            assert "wait-for-kafka" in init, component
        if component == BROKER:
            # The broker waits for nothing managed and names no managed host: it uses no
            # backend, so it gets none of the managed variables (add_env_to: using), and with
            # nothing changed there is nothing to record.
            assert essentials(pod) == essentials(template), component
            assert STATUS not in (pod["metadata"].get("annotations") or {})
            continue
        for container in pod["spec"]["containers"]:
            assert_injected(container)
        status = json.loads(pod["metadata"]["annotations"][STATUS])
        assert status["removed"] == [name for name in written if name in WAITERS], component
        # Every pod was reviewed by the webhook, as a real create, and mutated.
        owner = pod["metadata"]["ownerReferences"][0]["kind"]
        assert owner in ("ReplicaSet", "Job"), owner
    reviews = deployment.reviews(namespace=chart_opted_in.namespace)
    assert len(reviews) == len(chart_opted_in.pods), reviews
    assert sorted(review["result"] for review in reviews) == sorted(
        "unchanged" if component == BROKER else "mutated" for component in chart_opted_in.pods)
    assert not any(review.get("dry_run") for review in reviews)


def test_chart_pods_in_an_unlabelled_namespace_are_as_the_chart_wrote_them(
    deployment: Deployment, chart_unlabelled: Release
) -> None:
    for component, pod in chart_unlabelled.pods.items():
        template = chart_unlabelled.templates[component]
        assert essentials(pod) == essentials(template), component
        assert STATUS not in (pod["metadata"].get("annotations") or {})
        for container in pod["spec"]["containers"]:
            env = env_of(container)
            if "MLFLOW_TRACKING_URI" in env:
                assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", component
    assert set(WAITERS) <= {name for pod in chart_unlabelled.pods.values()
                            for name in names(pod["spec"].get("initContainers"))}
    assert deployment.reviews(namespace=chart_unlabelled.namespace) == []


@pytest.fixture(scope="module")
def shapes_opted_in(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """The second chart installed in an opted-in namespace: component -> live pod."""
    plane = deployment.plane
    namespace = new_namespace(plane, "shapes-opted-in", opted_in_labels())
    installed = plane.helm("install", "shapes", str(SHAPES_CHART), "--namespace", namespace)
    assert installed.returncode == 0, installed.stderr
    components = {"tracker", "reporter", "broker", "bucket"}

    def all_pods() -> dict[str, dict[str, Any]] | None:
        items = kubectl_json(plane, "get", "pods", "-n", namespace,
                             "-l", "app.kubernetes.io/instance=shapes")["items"]
        pods = {pod["metadata"]["labels"]["app.kubernetes.io/component"]: pod for pod in items}
        return pods if set(pods) == components and len(items) == len(components) else None

    pods: dict[str, dict[str, Any]] = wait_for(all_pods, f"the second chart's pods in {namespace}")
    return pods


def test_the_second_chart_is_admitted_as_its_shapes_require(
    shapes_opted_in: dict[str, dict[str, Any]]
) -> None:
    tracker = shapes_opted_in["tracker"]
    # The commented waiter and Bitnami's wait-for-port go; the wait for Kafka stays.
    assert names(tracker["spec"]["initContainers"]) == ["wait-for-broker"]
    status = json.loads(tracker["metadata"]["annotations"][STATUS])
    assert status["removed"] == ["wait-for-tracking", "wait-for-store"]
    [app] = tracker["spec"]["containers"]
    assert_injected(app)
    env = env_of(app)
    # A gateway variable of another name, retargeted in place, its path kept.
    assert env["FASTAPI_URL"] == "http://host.docker.internal:8000/api"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert [e["name"] for e in app["env"]][:3] == [
        "MLFLOW_TRACKING_URI", "FASTAPI_URL", "KAFKA_BOOTSTRAP_SERVERS"]

    # Only an address of the gateway: it uses the backend, so it gets it all.
    [reporter] = shapes_opted_in["reporter"]["spec"]["containers"]
    assert_injected(reporter)
    assert env_of(reporter)["GATEWAY"] == "http://host.docker.internal:8000"

    # The broker uses no managed service: left as the chart wrote it, not even annotated.
    broker = shapes_opted_in["broker"]
    [kafka] = broker["spec"]["containers"]
    assert not set(env_of(kafka)) & set(EXTERNAL_ENV)
    assert env_of(kafka)["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert STATUS not in (broker["metadata"].get("annotations") or {})

    # The bucket job does work after its wait: kept, its probe of the computed host retargeted,
    # the work and the comment as written.
    bucket = shapes_opted_in["bucket"]
    [make_bucket] = bucket["spec"]["initContainers"]
    script = make_bucket["command"][2]
    assert script.startswith("until nc -z host.docker.internal 9000; do sleep 2; done\n")
    assert "# the bucket the trainers log their models to\nmc mb --ignore-existing" in script
    assert "minio" not in script.split("\n")[0]
    assert_injected(bucket["spec"]["containers"][0])


def test_inject_on_helm_template_gives_the_live_pods(chart_opted_in: Release) -> None:
    assert set(chart_opted_in.injected) == set(chart_opted_in.pods)
    for component, pod in chart_opted_in.pods.items():
        assert essentials(pod) == essentials(chart_opted_in.injected[component]), component


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
        env={"PYTHONPATH": str(REPO)},
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


class PodCreator:
    """Creates a pod in the opted-in namespace every few tenths of a second, in a thread,
    and keeps every outcome: the proof that a rotation never refused one."""

    def __init__(self, deployment: Deployment) -> None:
        self._deployment = deployment
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.outcomes: list[tuple[str, int, str]] = []

    def __enter__(self) -> PodCreator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def create(self, step: str) -> None:
        result = create_pod(self._deployment.plane, self._deployment.opted_in,
                            chart_like_pod(f"rotation-{uuid.uuid4().hex[:8]}"))
        mutated = result.returncode == 0 and is_mutated(json.loads(result.stdout))
        self.outcomes.append((step, result.returncode, "" if mutated else result.stderr))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.create("background")

    def failures(self) -> list[tuple[str, int, str]]:
        return [outcome for outcome in self.outcomes if outcome[1] != 0 or outcome[2]]


def wait_for_served(deployment: Deployment, cert_pem: bytes) -> None:
    wanted = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    wait_for(lambda: served_certificate(deployment.netns.address, WEBHOOK_PORT) == wanted,
             "the webhook to serve the new certificate")


def test_ca_rotation_by_install_keeps_every_pod_admitted(deployment: Deployment) -> None:
    """install renews with a new CA (the current one cannot outlive a 365-day certificate),
    keeps the old CA in the caBundle, and the running webhook picks up the new files."""
    old_ca = deployment.secret_files()["ca.crt"]
    with PodCreator(deployment) as creator:
        creator.create("before")
        # The current certificate (365 days, from `certs`) is due within a 365-day margin, and
        # its CA, which `certs` makes with the same 365 days, cannot outlive a new 366-day
        # certificate: install must make a new CA as well.
        output = deployment.install("--days", "366", "--renew-within-days", "365")
        assert "issued a new serving certificate" in output and "patched the caBundle" in output
        files = deployment.secret_files()
        assert files["ca.crt"] != old_ca
        assert ca_fingerprints(deployment.ca_bundle()) == (
            ca_fingerprints(files["ca.crt"]) + ca_fingerprints(old_ca))
        creator.create("after install")
        deployment.volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})
        wait_for_served(deployment, files["tls.crt"])
        creator.create("after the swap")
    assert not creator.failures(), creator.failures()
    assert len(creator.outcomes) >= 4


def test_replacing_the_secret_with_a_new_ca_then_install_keeps_every_pod_admitted(
    deployment: Deployment,
) -> None:
    """The rotation a person does by hand: `certs` to a new directory, replace the Secret,
    `install`, and the webhook picks up the new files."""
    served_ca = deployment.secret_files()["ca.crt"]
    certs_dir = deployment.work / f"certs-{uuid.uuid4().hex[:6]}"
    run(BACKEND_INJECTOR, "certs", "--service", SERVICE, "--namespace", NAMESPACE,
        "--out", str(certs_dir))
    files = {name: (certs_dir / name).read_bytes()
             for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
    try:
        with PodCreator(deployment) as creator:
            creator.create("before")
            kubectl_ok(deployment.plane, "replace", "-f", "-",
                       input=json.dumps(tls_secret(files)))
            creator.create("after replacing the Secret")
            output = deployment.install()
            assert "issued" not in output and "patched the caBundle" in output, output
            bundle = ca_fingerprints(deployment.ca_bundle())
            # As long as the webhook serves the old files, the old CA must still be trusted.
            time.sleep(1)
            creator.create("after install")
            deployment.volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})
            wait_for_served(deployment, files["tls.crt"])
            creator.create("after the swap")
        assert bundle[0] == ca_fingerprints(files["ca.crt"])[0]
        assert (ca_fingerprints(served_ca)[0] in bundle, creator.failures()) == (True, [])
    finally:
        # Whatever happened, leave the webhook serving what the caBundle trusts.
        deployment.volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})
        wait_for_served(deployment, files["tls.crt"])
        deployment.wait_until_injecting()
