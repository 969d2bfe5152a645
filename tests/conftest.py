"""Shared test helpers: settings built the way the CLI builds them, and a pod factory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.server_process import Server, start_server, stop, write_pair
from webhook.rules.mutate import Rules
from webhook.settings import Settings, load_settings


def make_settings(tmp_path: Path | None = None, **document: Any) -> Settings:
    """Settings from the embedded default, with ``document`` merged in as a config file."""
    if not document:
        return load_settings(environ={})
    assert tmp_path is not None, "a config document needs a directory to live in"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(document))
    return load_settings(config_file=config, environ={})


@pytest.fixture
def rules() -> Rules:
    return Rules(make_settings())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A `backend-injector serve` process for a whole test module, with its own CA."""
    directory = tmp_path_factory.mktemp("server")
    running = start_server(directory, tls_dir=write_pair(directory / "tls"))
    yield running
    stop(running)


def waiter(name: str, script: str) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.35", "command": ["sh", "-c", script]}


def pod(
    *,
    init: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An flts trainer pod: wait-for-mlflow and wait-for-kafka, in-cluster env."""
    spec: dict[str, Any] = {
        "containers": containers
        if containers is not None
        else [
            {
                "name": "trainer",
                "image": "flts/train:latest",
                "env": [
                    {"name": "MODEL_TYPE", "value": "gru"},
                    {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"},
                    {"name": "MLFLOW_S3_ENDPOINT_URL", "value": "http://minio:9000"},
                    {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "kafka:9092"},
                ],
            }
        ],
    }
    spec["initContainers"] = (
        init
        if init is not None
        else [
            waiter("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"),
            waiter("wait-for-kafka", "until nc -z kafka 9092; do sleep 2; done"),
        ]
    )
    metadata: dict[str, Any] = {"generateName": "train-gru-", "labels": {"app": "train-gru"}}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
