"""The project's verification walk on a real node, step by step, and the figures it gives.

On the e2e node, with the webhook's image built from the project's Dockerfile and the chart's
images as stand-ins (``images.py``), and the external backend on the host where
``host.docker.internal`` points (``backend.py``):

a. ``kubectl apply -k manifests/overlays/docker-desktop``: the install Job completes in the
   cluster, the webhook Deployment is 2/2 Ready (its readiness probes pass); then the same
   from the Helm chart (its post-install hook Job), which the rest of the walk uses;
b. a namespace opted in with ``backend-injector label``, ``helm install`` of the unmodified
   flts chart with ``values-complete.yaml`` (and the inference pod's further waiter,
   ``backendCheck``, written as other public charts write theirs): every pod Running or
   Completed, none left in Init;
c. each trainer's run is in MLflow (its REST API) and its artifact in the S3 bucket; then a
   pod whose only init container is a Python socket loop for ``mlflow:5000``, which no reader
   of shell understands and the webhook keeps, goes Running: the webhook, resolving
   ``host.docker.internal`` through the cluster's DNS, gave it ``hostAliases`` that point
   ``mlflow`` at the host, where the external MLflow listens (the safety net);
d. ``kubectl scale deployment/inference --replicas=5``: 5 Running, the same injected env;
e. the same chart in an unlabelled namespace stays in Init (``Init:0/2``; the inference pod
   ``Init:1/2``, its wait-for-kafka passing against the in-cluster Kafka); the labelled
   namespace's pods read the S3 credentials by reference (the default), from the Secret
   ``backend-injector label`` put there; the unlabelled one has none, so a pod there that
   names it cannot start;
f. faults: a webhook pod deleted while a Deployment scales up by 20, and the webhook rolled
   while another does: every pod admitted mutated, none unmutated, none lost;
g. ``backend-injector doctor -n flts-plain`` names the pods (e) left stuck in Init, each with
   its owners, and the fix; then ``backend-injector label flts-plain`` and ``backend-injector
   restart -n flts-plain --yes``: Deployments rolled, the preprocess Job recreated, every pod
   Running or Completed and changed by the webhook, the trainers' new runs in MLflow;
h. ``backend-injector doctor --connectivity -n flts``: a short-lived pod of the namespace
   reaches each external service, and doctor names the one a configuration puts at a closed
   port; the overlap line (no other mutator of pods here).

The tests share one cluster and run in this order; each depends on the one before. Figures
(time to Running, latencies, the longest delay of the faults) are printed and, when
``BACKEND_INJECTOR_NODE_RESULTS`` names a file, written there as Markdown.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import images
from .harness.admission import BACKEND_INJECTOR, clean_environment, new_namespace, opt_in, run
from .harness.backend import Backend
from .harness.controlplane import REPO_ROOT, ControlPlane
from .harness.kubectl import kubectl_json, kubectl_ok, pod_summary, wait_for
from .harness.node import HOST_ADDRESS, HOST_DOCKER_INTERNAL, NODE_CPUS, Node
from .harness.smoke import SMOKE_IMAGE, WEB_COMMAND, write_smoke_image
from .harness.standin import runs_of

OVERLAY = REPO_ROOT / "manifests" / "overlays" / "docker-desktop"
WEBHOOK_CHART = REPO_ROOT / "charts" / "backend-injector"
FLTS_CHART = REPO_ROOT / "tests" / "e2e" / "chart"
FLTS_VALUES = FLTS_CHART / "values-complete.yaml"
WEBHOOK_NAMESPACE = "backend-injector"
INSTALL_JOB = "backend-injector-install"
INJECT_LABEL = "backend-injector/inject"
CREDENTIALS_SECRET = "backend-injector-credentials"
STATUS = "backend-injector/status"
LABELLED = "flts"
UNLABELLED = "flts-plain"
FAULTS = "faults"
TRAINERS = ("train-gru", "train-lstm", "train-prophet")
# What the webhook puts in for the chart's in-cluster URLs (the docker-desktop defaults).
EXTERNAL_MLFLOW = f"http://{HOST_DOCKER_INTERNAL}:5000"
RESULTS_ENV = "BACKEND_INJECTOR_NODE_RESULTS"
# Generous: the 2 cores also build, and every stand-in imports the mlflow client at start.
ROLLOUT_TIMEOUT = 420.0

# Figures collected along the walk, reported at the end of the module.
FIGURES: dict[str, Any] = {}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def walk_images(node: Node) -> list[images.Image]:
    """Every image of the walk, built (or found in the cache) and imported into the node."""
    built = images.all_images(stream=sys.stderr)
    for archive in images.archives(built):
        node.import_image(archive)
    return built


@pytest.fixture(scope="module")
def backend(node: Node) -> Iterator[Backend]:
    """MLflow, S3 and the gateway on the host, at the address of host.docker.internal."""
    with Backend(HOST_ADDRESS, extra_allowed_hosts=(HOST_DOCKER_INTERNAL,)) as started:
        yield started


@pytest.fixture(scope="module")
def cluster(
    control_plane: ControlPlane, node: Node, walk_images: list[images.Image], backend: Backend
) -> ControlPlane:
    """The control plane once the node runs, the images are in and the backend answers."""
    return control_plane


# --- helpers --------------------------------------------------------------------------------


def pods(plane: ControlPlane, namespace: str, selector: str | None = None) -> list[Any]:
    args = ["get", "pods", "-n", namespace]
    if selector:
        args += ["-l", selector]
    return list(kubectl_json(plane, *args)["items"])


def pod_state(pod: dict[str, Any]) -> str:
    """What `kubectl get pods` prints in STATUS, for the cases the walk meets."""
    status = pod.get("status", {})
    init = pod["spec"].get("initContainers") or []
    init_statuses = status.get("initContainerStatuses") or []
    done = sum(
        1
        for s in init_statuses
        if (s.get("state") or {}).get("terminated", {}).get("exitCode") == 0
    )
    if status.get("phase") == "Pending" and init and done < len(init):
        return f"Init:{done}/{len(init)}"
    if status.get("phase") == "Succeeded":
        return "Completed"
    return str(status.get("phase", "Unknown"))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def all_settled(plane: ControlPlane, namespace: str) -> bool:
    """Every pod Running and Ready, or Completed."""
    listed = pods(plane, namespace)
    if not listed:
        return False
    for pod in listed:
        state = pod_state(pod)
        if state == "Completed":
            continue
        if state != "Running":
            return False
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") != "True":
            return False
    return True


def describe(plane: ControlPlane, node: Node, namespace: str) -> str:
    """Pods, events and the logs of pods that are not Running, for failure messages."""
    logs = []
    for pod in pods(plane, namespace):
        if pod_state(pod) not in ("Running", "Completed"):
            for container in [
                *(pod["spec"].get("initContainers") or []),
                *pod["spec"]["containers"],
            ]:
                text = node.container_log(namespace, pod["metadata"]["name"], container["name"])
                if text:
                    logs.append(
                        f"--- {pod['metadata']['name']}/{container['name']}\n{text[-1500:]}"
                    )
    return pod_summary(plane, namespace) + "\n" + "\n".join(logs)


def helm_install(plane: ControlPlane, namespace: str) -> None:
    # With the inference pod's further waiter, written in the shapes of other public charts.
    result = plane.helm("install", "flts", str(FLTS_CHART), "-f", str(FLTS_VALUES),
                        "--set", "backendCheck.enabled=true", "-n", namespace)
    assert result.returncode == 0, result.stderr


def create_namespace(plane: ControlPlane, name: str, *, opted_in: bool) -> None:
    kubectl_ok(plane, "create", "namespace", name)
    if opted_in:
        # As the README says: the label, and the credentials Secret the pods read by reference
        # (the default credentials mode), copied from the installed webhook's.
        said = opt_in(plane, name)
        assert f"{name}: Secret {CREDENTIALS_SECRET} created, from Secret " in said, said


def record(key: str, value: Any) -> None:
    FIGURES[key] = value
    print(f"\nnode walk: {key} = {value}", file=sys.stderr)
    write_results()


# --- a: the webhook from its own image, installed by its own Job ----------------------------


def wait_for_webhook(plane: ControlPlane, node: Node, job: str | None) -> None:
    """The install Job ``job`` completed (when named) and the webhook is 2/2 Ready."""

    def job_complete() -> bool:
        found = plane.kubectl("get", "job", str(job), "-n", WEBHOOK_NAMESPACE, "-o", "json")
        return found.returncode == 0 and bool(json.loads(found.stdout)["status"].get("succeeded"))

    if job is not None:
        wait_for(
            f"the install Job {job} to complete",
            job_complete,
            timeout=ROLLOUT_TIMEOUT,
            describe=lambda: describe(plane, node, WEBHOOK_NAMESPACE),
        )

    def webhook_ready() -> bool:
        deployment = kubectl_json(
            plane, "get", "deployment", "backend-injector", "-n", WEBHOOK_NAMESPACE
        )
        status = deployment.get("status", {})
        return bool(status.get("readyReplicas") == 2 and status.get("availableReplicas") == 2)

    wait_for(
        "the webhook Deployment 2/2 Ready",
        webhook_ready,
        timeout=ROLLOUT_TIMEOUT,
        describe=lambda: describe(plane, node, WEBHOOK_NAMESPACE),
    )
    # Ready means the kubelet's readiness probes (HTTPS /readyz) passed on both pods.
    listed = webhook_pods(plane)
    assert len(listed) == 2, [p["metadata"]["name"] for p in listed]
    for pod in listed:
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"] and container["restartCount"] == 0, container
    # The Job wrote the CA it made into the webhook configuration.
    configuration = kubectl_json(plane, "get", "mutatingwebhookconfiguration", "backend-injector")
    assert configuration["webhooks"][0]["clientConfig"].get("caBundle")


def test_a_install_job_completes_and_the_webhook_is_ready(
    cluster: ControlPlane, node: Node
) -> None:
    assert node.advertised_cpus() == str(NODE_CPUS)
    started = time.monotonic()
    kubectl_ok(cluster, "apply", "-k", str(OVERLAY))
    wait_for_webhook(cluster, node, INSTALL_JOB)
    record("kustomize: apply -k to webhook 2/2 Ready (s)", round(time.monotonic() - started, 1))


def test_a_the_same_from_the_helm_chart(cluster: ControlPlane, node: Node) -> None:
    result = cluster.kubectl("delete", "-k", str(OVERLAY), "--wait=true", timeout=300)
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    # helm returns once the post-install hook (the install Job) has completed in the
    # cluster; the chart deletes the Job when it succeeds, and helm fails if it does not.
    installed = cluster.helm(
        "install", "backend-injector", str(WEBHOOK_CHART), "-n", WEBHOOK_NAMESPACE,
        "--create-namespace", "--timeout", "7m", timeout=600
    )
    assert installed.returncode == 0, installed.stderr + describe(cluster, node, WEBHOOK_NAMESPACE)
    wait_for_webhook(cluster, node, None)
    record("helm chart: install to webhook 2/2 Ready (s)", round(time.monotonic() - started, 1))


# --- b, c, d: the chart in an opted-in namespace --------------------------------------------


def test_b_the_unmodified_chart_runs_in_a_labelled_namespace(
    cluster: ControlPlane, node: Node
) -> None:
    create_namespace(cluster, LABELLED, opted_in=True)
    started = time.monotonic()
    helm_install(cluster, LABELLED)
    wait_for(
        "every flts pod Running or Completed",
        lambda: all_settled(cluster, LABELLED),
        timeout=ROLLOUT_TIMEOUT,
        interval=1,
        describe=lambda: describe(cluster, node, LABELLED),
    )
    record("helm install to all pods Running (s)", round(time.monotonic() - started, 1))
    listed = pods(cluster, LABELLED)
    states = {pod["metadata"]["name"]: pod_state(pod) for pod in listed}
    assert not [name for name, state in states.items() if state.startswith("Init")], states

    def preprocess_succeeded() -> bool:
        # The Job's status follows its pod's by a moment.
        jobs = kubectl_json(cluster, "get", "jobs", "-n", LABELLED)["items"]
        (preprocess,) = [job for job in jobs if job["metadata"]["name"].startswith("preprocess-")]
        return bool(preprocess["status"].get("succeeded") == 1)

    wait_for("the preprocess Job to succeed", preprocess_succeeded, timeout=60)
    # Every pod that waited was admitted mutated: waiters for external services gone,
    # wait-for-kafka kept and completed against the in-cluster Kafka stand-in.
    for pod in listed:
        init_names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        if pod["metadata"]["labels"].get("app.kubernetes.io/component") == "kafka":
            continue
        assert STATUS in pod["metadata"].get("annotations", {}), pod["metadata"]["name"]
        assert "wait-for-mlflow" not in init_names and "wait-for-fastapi" not in init_names
        for status in pod["status"].get("initContainerStatuses") or []:
            assert status["state"]["terminated"]["exitCode"] == 0, status


def test_c_each_trainer_logged_its_run_and_artifact(
    cluster: ControlPlane, backend: Backend
) -> None:
    def trainer_runs() -> dict[str, Any] | None:
        # A run is listed as RUNNING for a moment before its trainer ends it: wait for the
        # end, so that the status below is the one the trainer left.
        runs = {run.experiment_name: run for run in backend.runs()}
        wanted = {f"flts-{trainer.removeprefix('train-')}" for trainer in TRAINERS}
        ended = all(name in runs and runs[name].status != "RUNNING" for name in wanted)
        return runs if ended else None

    runs = wait_for(
        "an ended run of every trainer in MLflow", trainer_runs, timeout=120, interval=2
    )
    objects = backend.s3_objects()
    for trainer in TRAINERS:
        run = runs[f"flts-{trainer.removeprefix('train-')}"]
        assert run.status == "FINISHED", run
        assert run.params and run.metrics, run
        assert run.artifact_uri.startswith("s3://mlflow/"), run
        prefix = run.artifact_uri.removeprefix("s3://mlflow/")
        assert [key for key in objects if key.startswith(prefix + "/")], (run, objects)


# A waiter in Python: the rules read shell, so it is kept as written and would wait for
# mlflow:5000 forever, but for the hostAliases the webhook adds. It prints where it connected.
PYTHON_WAITER_SCRIPT = """\
import socket, time
while True:
    try:
        connection = socket.create_connection(("mlflow", 5000), timeout=2)
    except OSError as error:
        print("waiting for mlflow:", error, flush=True)
        time.sleep(1)
        continue
    print("connected to %s:%d" % connection.getpeername()[:2], flush=True)
    connection.close()
    break
"""
PYTHON_WAITER = "wait-for-tracking"
SAFETY_NET_POD = "python-waiter"


def python_waiter_pod() -> dict[str, Any]:
    """One of the flts images (they have python3) as both the waiter and the app."""
    image = images.chart_values()["images"]["train"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": SAFETY_NET_POD, "namespace": LABELLED},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "initContainers": [{
                "name": PYTHON_WAITER, "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", PYTHON_WAITER_SCRIPT],
            }],
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import time; time.sleep(86400)"],
            }],
        },
    }


def safety_net_account(plane: ControlPlane, node: Node) -> str:
    """What the pod was given, and what the webhook's pods said of the addresses they found."""
    pod = kubectl_json(plane, "get", "pod", SAFETY_NET_POD, "-n", LABELLED)
    lines = [f"--- {SAFETY_NET_POD}: hostAliases {pod['spec'].get('hostAliases')}, "
             f"status {pod['metadata'].get('annotations', {}).get(STATUS)}"]
    for webhook in webhook_pods(plane):
        name = webhook["metadata"]["name"]
        log = node.container_log(WEBHOOK_NAMESPACE, name, "webhook")
        lines.append(f"--- {name}")
        lines += [line for line in log.splitlines() if "safety net" in line]
    return "\n" + "\n".join(lines)


def test_c_a_python_waiter_reaches_the_external_mlflow_through_host_aliases(
    cluster: ControlPlane, node: Node
) -> None:
    started = time.monotonic()
    kubectl_ok(cluster, "apply", "-f", "-", input=json.dumps(python_waiter_pod()))

    def running() -> dict[str, Any] | None:
        pod = kubectl_json(cluster, "get", "pod", SAFETY_NET_POD, "-n", LABELLED)
        return pod if pod_state(pod) == "Running" else None

    pod = wait_for(
        "the pod with the Python waiter Running",
        running,
        timeout=ROLLOUT_TIMEOUT,
        interval=1,
        describe=lambda: describe(cluster, node, LABELLED) + safety_net_account(cluster, node),
    )
    record("python waiter: create to Running (s)", round(time.monotonic() - started, 1))
    # Kept as written (nothing the rules can read), and it completed.
    (kept,) = pod["spec"]["initContainers"]
    assert kept["name"] == PYTHON_WAITER and kept["command"][2] == PYTHON_WAITER_SCRIPT
    (waited,) = pod["status"]["initContainerStatuses"]
    assert waited["state"]["terminated"]["exitCode"] == 0, waited
    # The webhook in the cluster asked its DNS for host.docker.internal: the host's address.
    names = [f"{host}{suffix}" for host in ("mlflow", "minio", "fastapi-app", "fastapi")
             for suffix in ("", f".{LABELLED}", f".{LABELLED}.svc",
                            f".{LABELLED}.svc.cluster.local")]
    assert pod["spec"]["hostAliases"] == [{"ip": HOST_ADDRESS, "hostnames": names}]
    status = json.loads(pod["metadata"]["annotations"][STATUS])
    assert status["aliased"] == ["mlflow", "minio", "fastapi-app", "fastapi"]
    # It connected to mlflow:5000 and reached the host's port 5000, the external MLflow's.
    log = node.container_log(LABELLED, SAFETY_NET_POD, PYTHON_WAITER)
    assert f"connected to {HOST_ADDRESS}:5000" in log, log


def test_d_inference_scales_to_five_with_the_same_env(cluster: ControlPlane, node: Node) -> None:
    kubectl_ok(cluster, "scale", "deployment/inference", "--replicas=5", "-n", LABELLED)

    def five_running() -> list[Any] | None:
        listed = [
            p
            for p in pods(cluster, LABELLED)
            if p["metadata"]["name"].startswith("inference-") and pod_state(p) == "Running"
        ]
        ready = [p for p in listed if all(s["ready"] for s in p["status"]["containerStatuses"])]
        return ready if len(ready) == 5 else None

    replicas = wait_for(
        "5 inference pods Running",
        five_running,
        timeout=ROLLOUT_TIMEOUT,
        interval=1,
        describe=lambda: describe(cluster, node, LABELLED),
    )
    environments = [
        json.dumps(env_of(p["spec"]["containers"][0]), sort_keys=True) for p in replicas
    ]
    assert len(set(environments)) == 1, environments
    assert env_of(replicas[0]["spec"]["containers"][0])["MLFLOW_TRACKING_URI"] == EXTERNAL_MLFLOW


# --- e: the original problem, reproduced ----------------------------------------------------


def test_e_the_same_chart_in_an_unlabelled_namespace_stays_in_init(
    cluster: ControlPlane, node: Node
) -> None:
    create_namespace(cluster, UNLABELLED, opted_in=False)
    helm_install(cluster, UNLABELLED)

    def running_waiter(pod: dict[str, Any]) -> str | None:
        running = [
            s["name"]
            for s in pod["status"].get("initContainerStatuses") or []
            if (s.get("state") or {}).get("running")
        ]
        return running[0] if len(running) == 1 else None

    # A pod first waits for Kafka, which runs in the namespace and passes once the Kafka pod
    # listens (its own pace on a busy machine); the wait that must never pass is for a
    # service that runs outside the cluster.
    external_waiters = ("wait-for-mlflow", "wait-for-fastapi")

    def waiting_on_external() -> list[Any] | None:
        listed = [p for p in pods(cluster, UNLABELLED) if p["spec"].get("initContainers")]
        stuck = [p for p in listed if running_waiter(p) in external_waiters]
        return listed if listed and len(stuck) == len(listed) else None

    waiting_pods = wait_for(
        "every pod with waiters running a waiter for an external service",
        waiting_on_external,
        timeout=ROLLOUT_TIMEOUT,
        interval=1,
        describe=lambda: describe(cluster, node, UNLABELLED),
    )
    # Give the waiters time they would need to pass, were anything listening.
    time.sleep(20)
    states = {}
    for pod in pods(cluster, UNLABELLED):
        if not pod["spec"].get("initContainers"):
            continue
        name = pod["metadata"]["name"]
        states[name.rsplit("-", 2)[0]] = pod_state(pod)
        assert STATUS not in pod["metadata"].get("annotations", {}), name
        assert pod_state(pod).startswith("Init:"), (name, pod_state(pod))
        assert running_waiter(pod) in external_waiters, (name, running_waiter(pod))
    record("unlabelled namespace, pod states after waiting", states)
    assert waiting_pods


def credentials_pod() -> dict[str, Any]:
    """A pod that asks for the credentials the way a mutated pod reads them."""
    image = images.chart_values()["images"]["train"]
    reference = {"name": CREDENTIALS_SECRET, "key": "secret-access-key"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wants-credentials", "namespace": UNLABELLED},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": image, "imagePullPolicy": "Never",
            "command": ["python3", "-c", "import time; time.sleep(86400)"],
            "env": [{"name": "AWS_SECRET_ACCESS_KEY",
                     "valueFrom": {"secretKeyRef": reference}}]}]},
    }


def test_e_a_namespace_that_did_not_opt_in_gets_no_credentials(
    cluster: ControlPlane, node: Node
) -> None:
    """The opted-in namespace's pods read the credentials by reference; the namespace that
    did not opt in has no copy, so even a pod that names the Secret cannot start."""
    readers = [
        item for pod in pods(cluster, LABELLED) for container in pod["spec"]["containers"]
        for item in container.get("env") or [] if item["name"] == "AWS_SECRET_ACCESS_KEY"]
    assert readers, "no pod of the chart got the S3 credentials"
    assert all(item == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
        "name": CREDENTIALS_SECRET, "key": "secret-access-key"}}} for item in readers), readers
    assert cluster.kubectl("get", "secret", CREDENTIALS_SECRET, "-n", UNLABELLED).returncode
    kubectl_ok(cluster, "apply", "-f", "-", input=json.dumps(credentials_pod()))

    def refused() -> str | None:
        pod = kubectl_json(cluster, "get", "pod", "wants-credentials", "-n", UNLABELLED)
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                return str(waiting.get("message"))
        return None

    message = wait_for("the kubelet refusing the pod's missing Secret", refused,
                       timeout=ROLLOUT_TIMEOUT, interval=1,
                       describe=lambda: describe(cluster, node, UNLABELLED))
    assert CREDENTIALS_SECRET in message and "not found" in message, message


# --- f: faults while Deployments scale ------------------------------------------------------


def fault_deployment(name: str) -> dict[str, Any]:
    """Pods that use the backend (an in-cluster MLflow URL), so the webhook rewrites them."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": FAULTS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": SMOKE_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": WEB_COMMAND,
                            "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}],
                        }
                    ],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def faults(cluster: ControlPlane, node: Node, tmp_path_factory: pytest.TempPathFactory) -> str:
    node.import_image(
        write_smoke_image(tmp_path_factory.mktemp("faults") / "smoke.tar", node.binaries)
    )
    create_namespace(cluster, FAULTS, opted_in=True)
    return FAULTS


def scale_under_fault(plane: ControlPlane, node: Node, name: str, fault: Any) -> dict[str, float]:
    """Scale ``name`` from 0 to 20 the moment ``fault`` has struck; check every pod.

    The ReplicaSet creates its 20 pods within a second, so the fault is set off first and
    the scale-up lands on it; returns the delays seen.
    """
    kubectl_ok(plane, "apply", "-f", "-", input=json.dumps(fault_deployment(name)))
    fault()
    started = time.time()
    kubectl_ok(plane, "scale", f"deployment/{name}", "--replicas=20", "-n", FAULTS)

    def all_ready() -> bool:
        status = kubectl_json(plane, "get", "deployment", name, "-n", FAULTS).get("status", {})
        return bool(status.get("readyReplicas") == 20)

    wait_for(
        f"{name}: 20 pods Ready",
        all_ready,
        timeout=ROLLOUT_TIMEOUT,
        interval=0.5,
        describe=lambda: describe(plane, node, FAULTS),
    )
    all_running = time.time() - started
    listed = pods(plane, FAULTS, f"app={name}")
    assert len(listed) == 20, [p["metadata"]["name"] for p in listed]
    for pod in listed:
        # Admitted mutated: the record, and the in-cluster URL pointed at the external one.
        assert STATUS in pod["metadata"].get("annotations", {}), pod["metadata"]["name"]
        assert env_of(pod["spec"]["containers"][0])["MLFLOW_TRACKING_URI"] == EXTERNAL_MLFLOW
    # ReplicaSet events name each rejected creation; the controller retried them all.
    events = kubectl_json(plane, "get", "events", "-n", FAULTS)["items"]
    rejected = sum(
        e.get("count", 1)
        for e in events
        if e.get("reason") == "FailedCreate" and e["involvedObject"]["name"].startswith(name + "-")
    )
    created = [p["metadata"]["creationTimestamp"] for p in listed]
    last_created = max(
        time.mktime(time.strptime(c, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone for c in created
    )
    return {
        "scale to all 20 Ready (s)": round(all_running, 1),
        # creationTimestamp has whole seconds: the last admission was before this.
        "scale to the last pod admitted, at most (s)": round(last_created + 1 - started, 1),
        "creations rejected and retried": rejected,
    }


def webhook_pods(plane: ControlPlane, *, terminating: bool = False) -> list[Any]:
    """The webhook's pods; those being deleted only when ``terminating``."""
    listed = pods(plane, WEBHOOK_NAMESPACE, "app.kubernetes.io/component=webhook")
    return [p for p in listed if terminating or not p["metadata"].get("deletionTimestamp")]


def test_f_a_webhook_pod_deleted_while_a_deployment_scales_up(
    cluster: ControlPlane, node: Node, faults: str
) -> None:
    victim = webhook_pods(cluster)[0]["metadata"]["name"]

    def delete_one() -> None:
        # At once and without grace, as a crash or an evicted node would: its address stays
        # among the Service's endpoints until the EndpointSlice controller notices.
        kubectl_ok(
            cluster,
            "delete",
            "pod",
            victim,
            "-n",
            WEBHOOK_NAMESPACE,
            "--grace-period=0",
            "--force",
            "--wait=false",
        )

    delays = scale_under_fault(cluster, node, "fault-delete", delete_one)
    record("fault, webhook pod deleted", delays)
    assert victim not in [p["metadata"]["name"] for p in webhook_pods(cluster)]


def test_f_the_webhook_rolled_while_another_deployment_scales_up(
    cluster: ControlPlane, node: Node, faults: str
) -> None:
    before = {p["metadata"]["name"] for p in webhook_pods(cluster)}

    def roll() -> None:
        kubectl_ok(
            cluster, "rollout", "restart", "deployment/backend-injector", "-n", WEBHOOK_NAMESPACE
        )
        # Scale the moment the first old replica starts terminating (a new one is Ready by
        # then: maxUnavailable 0), in the middle of the roll.
        wait_for(
            "an old webhook pod terminating",
            lambda: any(
                p["metadata"].get("deletionTimestamp") and p["metadata"]["name"] in before
                for p in webhook_pods(cluster, terminating=True)
            ),
            timeout=ROLLOUT_TIMEOUT,
            interval=0.2,
        )

    delays = scale_under_fault(cluster, node, "fault-roll", roll)
    record("fault, webhook rolled", delays)
    result = cluster.kubectl(
        "rollout",
        "status",
        "deployment/backend-injector",
        "-n",
        WEBHOOK_NAMESPACE,
        f"--timeout={int(ROLLOUT_TIMEOUT)}s",
    )
    assert result.returncode == 0, result.stderr
    assert not before & {p["metadata"]["name"] for p in webhook_pods(cluster)}


# --- g: pods stuck before their namespace opted in, found and restarted ----------------------


def waiting_init_container(pod: dict[str, Any]) -> str | None:
    """The init container a pod waits in (running, or waiting to run again)."""
    for status in pod["status"].get("initContainerStatuses") or []:
        state = status.get("state") or {}
        if "running" in state or "waiting" in state:
            return str(status["name"])
    return None


def controller_of(obj: dict[str, Any]) -> tuple[str, str]:
    (reference,) = [r for r in obj["metadata"]["ownerReferences"] if r.get("controller")]
    return reference["kind"], reference["name"]


def stuck_description(plane: ControlPlane, pod: dict[str, Any]) -> str:
    """How doctor is to name a stuck pod: its owners, the nearest first, and its waiter."""
    kind, name = controller_of(pod)
    owners = f"{kind}/{name}"
    if kind == "ReplicaSet":
        above = kubectl_json(plane, "get", "replicaset", name, "-n", UNLABELLED)
        owners += " of {}/{}".format(*controller_of(above))
    return f"{pod['metadata']['name']} ({owners}, in {waiting_init_container(pod)})"


def stuck_pods_line(plane: ControlPlane, namespace: str) -> str:
    """doctor's line on stuck pods (doctor exits 1 here: the namespace is not selected yet)."""
    result = subprocess.run(
        [BACKEND_INJECTOR, "doctor", "-n", namespace, "--kubeconfig", str(plane.kubeconfig)],
        capture_output=True, text=True, env=clean_environment(), timeout=180, check=False)
    found = [line for line in result.stdout.splitlines()
             if line[6:].startswith("pods stuck in Init: ")]
    assert len(found) == 1, result.stdout + result.stderr
    return found[0]


def test_g1_doctor_lists_the_stuck_pods_with_their_owners(
    cluster: ControlPlane, node: Node
) -> None:
    stuck = [pod for pod in pods(cluster, UNLABELLED) if pod_state(pod).startswith("Init:")]
    assert stuck, pod_summary(cluster, UNLABELLED)
    line = stuck_pods_line(cluster, UNLABELLED)
    assert line.startswith(f"warn  pods stuck in Init: {len(stuck)} pods created without the "
                           "webhook's changes wait in Init: "), line
    for pod in stuck:
        assert stuck_description(cluster, pod) in line, (stuck_description(cluster, pod), line)
    # Not the Kafka broker, which never waited, nor the pod that lacks its Secret.
    assert "kafka-" not in line and "wants-credentials" not in line, line
    assert "these, already there, were not changed" in line, line
    assert f"fix: backend-injector restart -n {UNLABELLED}" in line, line
    record("doctor: stuck pods named, with their owners", len(stuck))


def test_g2_label_and_restart_bring_every_stuck_pod_up_changed(
    cluster: ControlPlane, node: Node, backend: Backend
) -> None:
    # (e) left a pod that names a Secret the namespace lacked; it is no part of the chart.
    kubectl_ok(cluster, "delete", "pod", "wants-credentials", "-n", UNLABELLED, "--wait=true")
    stuck = {pod["metadata"]["name"]: pod for pod in pods(cluster, UNLABELLED)
             if pod_state(pod).startswith("Init:")}
    owners = {controller_of(pod) for pod in stuck.values()}
    (job,) = [name for kind, name in owners if kind == "Job"]
    said = opt_in(cluster, UNLABELLED)
    assert f"{UNLABELLED}: Secret {CREDENTIALS_SECRET} created, from Secret " in said, said

    started = time.monotonic()
    output = run(BACKEND_INJECTOR, "restart", "-n", UNLABELLED, "--yes",
                 "--kubeconfig", str(cluster.kubeconfig), env=clean_environment())
    restarted = time.monotonic() - started
    assert output.startswith(f"{UNLABELLED}: {len(stuck)} pods wait in Init"), output
    for kind, name in owners:
        if kind == "ReplicaSet":
            deployment = "{}/{}".format(*controller_of(
                kubectl_json(cluster, "get", "replicaset", name, "-n", UNLABELLED)))
            assert f"\n{deployment}: restarted (kubectl.kubernetes.io/restartedAt=" in output
    assert f"\nJob/{job}: deleted (its pods in the background) and created again" in output

    def replacements_up() -> bool:
        """The pods not being deleted are Running or Completed (the stuck ones may still be
        in their grace period: a shell loop takes no notice of SIGTERM)."""
        live = [pod for pod in pods(cluster, UNLABELLED)
                if not pod["metadata"].get("deletionTimestamp")]
        return bool(live) and all(pod_state(pod) in ("Running", "Completed") for pod in live)

    wait_for("the pods made anew Running or Completed", replacements_up,
             timeout=ROLLOUT_TIMEOUT, interval=1,
             describe=lambda: describe(cluster, node, UNLABELLED))
    replaced = time.monotonic() - started
    wait_for(
        "every flts-plain pod Running or Completed",
        lambda: all_settled(cluster, UNLABELLED),
        timeout=ROLLOUT_TIMEOUT,
        interval=1,
        describe=lambda: describe(cluster, node, UNLABELLED),
    )
    record("restart: the command itself (s)", round(restarted, 1))
    record("restart to the pods made anew Running or Completed (s)", round(replaced, 1))
    record("restart to every pod Running or Completed (s)",
           round(time.monotonic() - started, 1))
    listed = pods(cluster, UNLABELLED)
    assert not set(stuck) & {pod["metadata"]["name"] for pod in listed}
    for pod in listed:
        if not pod["spec"].get("initContainers"):
            continue  # Kafka, which the webhook has nothing to do with
        assert STATUS in pod["metadata"].get("annotations", {}), pod["metadata"]["name"]
        init_names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert "wait-for-mlflow" not in init_names and "wait-for-fastapi" not in init_names
    # The Job, created again under its own name, ran to completion with its budget whole.
    status = kubectl_json(cluster, "get", "job", job, "-n", UNLABELLED)["status"]
    assert status.get("succeeded") == 1 and not status.get("failed"), status

    trainers = [pod["metadata"]["name"] for pod in listed
                if pod["metadata"]["name"].startswith(("train-gru-", "train-lstm-",
                                                       "nonml-prophet-"))]
    assert len(trainers) == 3, trainers
    wait_for("a finished run in MLflow from each restarted trainer",
             lambda: all(runs_of(backend, trainer) for trainer in trainers),
             timeout=120, interval=2)


# --- h: doctor, from a pod of the labelled namespace ----------------------------------------


CONNECTIVITY_COMPONENT = "app.kubernetes.io/component=connectivity"
OVERLAP_CHECK = "other mutating webhooks and policies"


def doctor_lines(output: str) -> dict[str, str]:
    """doctor's lines (``STATUS  name: detail``, the status padded to four) by check name."""
    return {line[6:].split(": ", 1)[0]: line for line in output.splitlines()
            if line[4:6] == "  "}


def connectivity_lines(output: str) -> dict[str, str]:
    """The ``connectivity SERVICE`` lines, by service."""
    return {name.removeprefix("connectivity "): line
            for name, line in doctor_lines(output).items() if name.startswith("connectivity")}


def doctor_connectivity(plane: ControlPlane, namespace: str, *flags: str
                        ) -> subprocess.CompletedProcess[str]:
    """``doctor --connectivity`` with the chart's busybox, which the node has (no registry)."""
    image = images.chart_values()["images"]["busybox"]
    return subprocess.run(
        [BACKEND_INJECTOR, "doctor", "-n", namespace, "--kubeconfig", str(plane.kubeconfig),
         "--connectivity", "--connectivity-image", image, *flags],
        capture_output=True, text=True, timeout=300, check=False, env=clean_environment())


def test_h_doctor_connects_from_a_pod_of_the_namespace_and_names_what_it_cannot_reach(
    cluster: ControlPlane, node: Node, tmp_path: Path
) -> None:
    """``doctor --connectivity -n flts``: green, one line per service reached from a pod of
    the namespace, and the overlap line. Then MLflow given at a port of the host where
    nothing listens (a configuration passed with --config, so that the backend the walk
    shares keeps running): that one line fails and names it. The pod meets the "restricted"
    Pod Security Standard (a namespace that enforces it runs it), and none is left behind."""
    image = images.chart_values()["images"]["busybox"]
    started = time.monotonic()
    said = run(BACKEND_INJECTOR, "doctor", "-n", LABELLED, "--kubeconfig",
               str(cluster.kubeconfig), "--connectivity", "--connectivity-image", image,
               env=clean_environment())
    took = time.monotonic() - started
    lines = connectivity_lines(said)
    assert set(lines) == {"mlflow", "minio", "fastapi"}, said
    for service, port in (("mlflow", 5000), ("minio", 9000), ("fastapi", 8000)):
        assert lines[service].startswith(
            f"ok    connectivity {service}: {HOST_DOCKER_INTERNAL}:{port} reachable from a pod "
            f"in {LABELLED} (TCP connect "), said
    overlap = doctor_lines(said)[OVERLAP_CHECK]
    assert overlap.startswith("ok    ") and "no other mutating webhook or policy" in overlap, said
    record("doctor --connectivity -n flts, backend up (s)", round(took, 1))
    record("doctor --connectivity, TCP connect from the pod",
           {service: line.rpartition("TCP connect ")[2].rstrip(")")
            for service, line in lines.items()})
    record("doctor overlap line", overlap)

    with socket.socket() as probe:
        probe.bind((HOST_ADDRESS, 0))
        closed = int(probe.getsockname()[1])
    configuration = tmp_path / "mlflow-closed.yaml"
    configuration.write_text(f"services:\n  mlflow:\n    external: {{host: {HOST_DOCKER_INTERNAL}, "
                             f"port: {closed}}}\n")
    result = doctor_connectivity(cluster, LABELLED, "--config", str(configuration))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = connectivity_lines(result.stdout)
    assert lines["mlflow"].startswith(
        f"FAIL  connectivity mlflow: {HOST_DOCKER_INTERNAL}:{closed} not reachable from a pod "
        f"in {LABELLED} ("), output
    assert "services.mlflow.external" in lines["mlflow"], output
    assert lines["minio"].startswith("ok") and lines["fastapi"].startswith("ok"), output
    assert [line for line in result.stdout.splitlines() if line.startswith("FAIL")] == [
        lines["mlflow"]], output
    record("doctor --connectivity, MLflow at a closed port", lines["mlflow"])

    restricted = new_namespace(cluster, "connectivity-restricted",
                               {"pod-security.kubernetes.io/enforce": "restricted"})
    result = doctor_connectivity(cluster, restricted)
    lines = connectivity_lines(result.stdout)
    assert len(lines) == 3 and all(line.startswith("ok") for line in lines.values()), (
        result.stdout + result.stderr)

    def none_left() -> bool:
        return not [pod for namespace in (LABELLED, restricted)
                    for pod in pods(cluster, namespace, CONNECTIVITY_COMPONENT)]

    wait_for("the connectivity pods gone", none_left, timeout=60,
             describe=lambda: pod_summary(cluster, LABELLED))
    kubectl_ok(cluster, "delete", "namespace", restricted, "--wait=false")


# --- item 5: pod start latency with and without the webhook ---------------------------------


def time_to_running(plane: ControlPlane, namespace: str, name: str) -> float:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": SMOKE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": WEB_COMMAND,
                    "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}],
                }
            ],
        },
    }
    started = time.monotonic()
    kubectl_ok(plane, "apply", "-f", "-", input=json.dumps(pod))
    while True:
        phase = plane.api_get(f"/api/v1/namespaces/{namespace}/pods/{name}")["status"].get("phase")
        if phase == "Running":
            return time.monotonic() - started
        assert time.monotonic() - started < 120, f"{namespace}/{name} not Running"
        time.sleep(0.05)


def test_latency_of_pods_without_waiters_with_and_without_the_webhook(
    cluster: ControlPlane, node: Node, faults: str
) -> None:
    create_namespace(cluster, "latency-plain", opted_in=False)
    samples: dict[str, list[float]] = {"webhook": [], "none": []}
    rounds = 10
    for index in range(rounds):
        # Alternating, so that load from anything else falls on both alike.
        samples["webhook"].append(time_to_running(cluster, FAULTS, f"latency-{index}"))
        samples["none"].append(time_to_running(cluster, "latency-plain", f"latency-{index}"))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    record("pod create to Running, median (s)", {k: round(v, 2) for k, v in medians.items()})
    record("pod create to Running, max (s)", {k: round(max(v), 2) for k, v in samples.items()})
    record(
        "pod create to Running, ratio webhook/none (median)",
        round(medians["webhook"] / medians["none"], 2),
    )
    mutated = cluster.api_get(f"/api/v1/namespaces/{FAULTS}/pods/latency-0")
    assert STATUS in mutated["metadata"].get("annotations", {})
    write_results()


def write_results() -> None:
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    lines = ["# The node walk: measured figures", ""]
    for key, value in FIGURES.items():
        lines.append(f"- {key}: {json.dumps(value)}")
    Path(target).write_text("\n".join(lines) + "\n")
