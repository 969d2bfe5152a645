"""The e2e copy of the "flts" chart (tests/e2e/chart) renders with `helm template` and
still has what makes its pods hang without backend-injector: the chart's init containers, in
their order, and in-cluster backend URLs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tool_binaries import find_helm

CHART = Path(__file__).resolve().parent / "e2e" / "chart"

# Init containers per workload, in order; its users' `kubectl get pods` showed Init:0/2 for
# the trainers, Init:0/3 for eval, Init:1/2 for inference (Kafka is waited for first and answers).
CHART_INIT_CONTAINERS = {
    "train-gru": ["wait-for-mlflow", "wait-for-kafka"],
    "train-lstm": ["wait-for-mlflow", "wait-for-kafka"],
    "nonml-prophet": ["wait-for-mlflow", "wait-for-kafka"],
    "eval": ["wait-for-mlflow", "wait-for-fastapi", "wait-for-kafka"],
    "inference": ["wait-for-kafka", "wait-for-mlflow"],
    "preprocess": ["wait-for-fastapi", "wait-for-kafka"],
}


def helm_template(tmp_path: Path, *arguments: str) -> list[dict[str, Any]]:
    helm = find_helm()
    if helm is None:
        pytest.skip("no helm binary (tools/build-binaries.sh builds one; or set HELM)")
    # Keep helm's config and cache out of the user's home.
    environment = {
        **os.environ,
        "HELM_CONFIG_HOME": str(tmp_path),
        "HELM_CACHE_HOME": str(tmp_path),
    }
    rendered = subprocess.run(
        [helm, "template", "flts", str(CHART), *arguments],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    ).stdout
    return [item for item in yaml.safe_load_all(rendered) if item]


def workload_name(item: dict[str, Any]) -> str:
    name: str = item["metadata"]["name"]
    # The preprocess Job gets a random suffix per release (preprocess-043uf in its pod list).
    return "preprocess" if name.startswith("preprocess-") else name


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        workload_name(item): item["spec"]["template"]["spec"]
        for item in objects
        if item["kind"] in ("Deployment", "Job")
    }


def test_values_complete_keeps_the_pipeline_and_kafka_and_drops_the_backends(
    tmp_path: Path,
) -> None:
    objects = helm_template(tmp_path, "-f", str(CHART / "values-complete.yaml"))
    assert set(pod_specs(objects)) == set(CHART_INIT_CONTAINERS) | {"kafka"}
    services = {item["metadata"]["name"] for item in objects if item["kind"] == "Service"}
    assert services == {"kafka", "inference"}
    assert not [item for item in objects if item["kind"] == "PersistentVolumeClaim"]


def test_pods_wait_for_the_backends_in_the_seed_order(tmp_path: Path) -> None:
    specs = pod_specs(helm_template(tmp_path, "-f", str(CHART / "values-complete.yaml")))
    for name, expected in CHART_INIT_CONTAINERS.items():
        init_containers = specs[name]["initContainers"]
        assert [container["name"] for container in init_containers] == expected, name
        for container in init_containers:
            assert container["image"] == "busybox:1.35"
            assert container["command"][:2] == ["sh", "-c"]


def test_env_points_at_the_in_cluster_backends(tmp_path: Path) -> None:
    specs = pod_specs(helm_template(tmp_path, "-f", str(CHART / "values-complete.yaml")))
    for name in CHART_INIT_CONTAINERS:
        env = {item["name"]: item["value"] for item in specs[name]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            "minioadmin",
            "minioadmin",
        )
    for name in ("eval", "preprocess"):
        env = {item["name"]: item["value"] for item in specs[name]["containers"][0]["env"]}
        assert env["GATEWAY_URL"] == "http://fastapi-app:8000"


def test_default_values_run_the_backends_in_the_cluster(tmp_path: Path) -> None:
    objects = helm_template(tmp_path, "--set", "train.enabled=true,nonml.enabled=true")
    services = {item["metadata"]["name"] for item in objects if item["kind"] == "Service"}
    assert {"mlflow", "minio", "postgres", "fastapi-app", "kafka"} <= services
    specs = pod_specs(objects)
    assert {"train", "nonml", "minio-init"} <= set(specs)
