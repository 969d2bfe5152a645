"""Charts installed with Helm through a real kube-apiserver, admitted by backend-injector.

The webhook is deployed from the project's own manifests (the ``deployment`` fixture,
conftest.py and harness/deploy.py). The chart's pods are created by the ReplicaSet and Job
controllers from ``helm install``, in an opted-in namespace and in one without the label, and
compared with what the chart wrote and with what ``backend-injector inject`` makes of
``helm template``; a second chart holds the waiter shapes public charts write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness.admission import (
    BACKEND_INJECTOR,
    EXTERNAL_ENV,
    STATUS,
    assert_injected,
    env_of,
    kubectl_json,
    names,
    new_namespace,
    opted_in_labels,
    run,
    wait_for,
)
from .harness.deploy import Deployment

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parent / "chart"
BROKER = "kafka"  # the chart's component that keeps running in the cluster
# The second chart: waiters in the shapes public charts write (see its README).
SHAPES_CHART = Path(__file__).resolve().parent / "chart-shapes"
VALUES = CHART / "values-complete.yaml"
WAITERS = ("wait-for-mlflow", "wait-for-fastapi")


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
