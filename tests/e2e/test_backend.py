"""The external backend (backend.py) with the chart's stand-in programs as its clients.

The stand-ins run here as host processes, from the backend's own virtual environment (which
has the mlflow client and boto3), with exactly the variables the webhook injects. In the node
e2e the same program runs inside the stand-in images.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness.backend import BUCKET, Backend, Run, ensure_venv
from .harness.controlplane import free_port
from .harness.standin import runs_of, standin, wait_for


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend("127.0.0.1", mlflow_port=free_port(), s3_port=free_port(),
                 gateway_port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Kafka stand-in on a loopback port; yields its bootstrap address."""
    port = free_port()
    listener = standin(["kafka"], {"KAFKA_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}"},
                       tmp_path_factory.mktemp("kafka"))
    try:
        wait_for("the Kafka stand-in", lambda: "listening" in listener.output(), 30)
        yield f"127.0.0.1:{port}"
    finally:
        assert listener.stop() == 0, listener.output()


def artifact_key(run: Run, name: str) -> str:
    prefix = f"s3://{BUCKET}/"
    assert run.artifact_uri.startswith(prefix), run.artifact_uri
    return f"{run.artifact_uri[len(prefix):]}/{name}"


def test_a_trainer_logs_its_run_and_its_artifact_lands_in_s3(
    backend: Backend, kafka: str, tmp_path: Path
) -> None:
    env = backend.client_env() | {
        "MODEL_TYPE": "GRU", "EPOCHS": "3", "MLFLOW_EXPERIMENT_NAME": "flts-gru",
        "KAFKA_BOOTSTRAP_SERVERS": kafka, "HOSTNAME": "train-gru-host",
    }
    trainer = standin(["train", "--model", "gru"], env, tmp_path)
    try:
        [run] = wait_for("the trainer's run", lambda: runs_of(backend, "train-gru-host"),
                         running=trainer)
        # A Deployment's trainer stays up after logging, until the kubelet stops it.
        assert trainer.process.poll() is None, trainer.output()
    finally:
        assert trainer.stop() == 0, trainer.output()

    assert run.experiment_name == "flts-gru"
    assert run.params == {"model": "gru", "model_type": "GRU", "epochs": "3"}
    assert run.run_name == "train-gru-host"
    assert run.metrics["rmse"] > 0
    key = artifact_key(run, "model.json")
    assert key in backend.s3_objects()
    model = json.loads(backend.s3_object(key))
    assert model["model"] == "gru"
    assert len(model["weights"]) == 3


def test_preprocess_reads_the_gateway_logs_a_run_and_exits(
    backend: Backend, kafka: str, tmp_path: Path
) -> None:
    env = backend.client_env() | {"KAFKA_BOOTSTRAP_SERVERS": kafka, "HOSTNAME": "preprocess-x"}
    job = standin(["preprocess", "--sample-rows", "20"], env, tmp_path)
    assert job.process.wait(timeout=120) == 0, job.output()

    asked = [r.path for r in backend.gateway_requests() if r.method == "GET"]
    assert "/data/raw?rows=20" in asked
    [run] = runs_of(backend, "preprocess-x")
    assert run.params == {"sample_rows": "20"}
    assert run.metrics["rows"] == 20
    assert artifact_key(run, "windows.json") in backend.s3_objects()


def test_eval_promotes_the_trainer_run_with_the_lowest_metric(
    backend: Backend, kafka: str, tmp_path: Path
) -> None:
    common = backend.client_env() | {"KAFKA_BOOTSTRAP_SERVERS": kafka}
    for model in ("lstm", "prophet"):
        pod = f"train-{model}-host"
        trainer = standin(["train", "--model", model],
                          common | {"EPOCHS": "2", "HOSTNAME": pod}, tmp_path)
        try:
            wait_for(f"the {model} run", functools.partial(runs_of, backend, pod),
                     running=trainer)
        finally:
            assert trainer.stop() == 0, trainer.output()

    evaluator = standin(["eval"], common | {
        "EVAL_METRIC": "rmse", "HOSTNAME": "eval-host",
        "PROMOTE_URL": f"{backend.gateway_url}/models/promote",
    }, tmp_path)
    try:
        [promotion] = wait_for("the promotion", lambda: [
            r for r in backend.gateway_requests()
            if r.method == "POST" and r.path == "/models/promote"
        ], running=evaluator)
    finally:
        assert evaluator.stop() == 0, evaluator.output()

    trained = [run for run in backend.runs() if "model" in run.params and "rmse" in run.metrics]
    best = min(trained, key=lambda run: run.metrics["rmse"])
    assert json.loads(promotion.body) == {"model": best.params["model"], "run_id": best.run_id}
    [evaluation] = runs_of(backend, "eval-host")
    assert evaluation.params["best_model"] == best.params["model"]
    assert evaluation.metrics["candidates"] == len(trained)
    assert artifact_key(evaluation, "comparison.json") in backend.s3_objects()


def test_stop_ends_every_process_the_backend_started() -> None:
    started = Backend("127.0.0.1", mlflow_port=free_port(), s3_port=free_port(),
                      gateway_port=free_port())
    started.start()
    groups = started.process_groups()
    members = _group_members(groups)
    # mlflow runs its uvicorn worker as a child in the same group: it must go too.
    assert len(members) > len(groups)
    started.stop()
    assert _group_members(groups) == []


def _group_members(groups: list[int]) -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True,
                             check=True).stdout
    return [int(pid) for pid, pgid in (line.split() for line in listing.splitlines())
            if int(pgid) in groups]


def test_the_s3_request_signature_is_the_one_botocore_makes() -> None:
    """backend.py signs S3 requests itself (no boto3 in the project's .venv): check it."""
    script = """
import time
from unittest import mock
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tests.e2e.harness.backend import sigv4_headers
url = "http://127.0.0.1:9000/mlflow/1/a%20b/model.json?continuation-token=x%2Fy&list-type=2"
request = AWSRequest(method="GET", url=url)
S3SigV4Auth(Credentials("AK", "SK"), "s3", "us-east-1").add_auth(request)
signed_at = time.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
with mock.patch("time.gmtime", return_value=signed_at):
    mine = sigv4_headers("GET", url, b"", "AK", "SK")
print(mine["Authorization"])
print(request.headers["Authorization"])
"""
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([str(ensure_venv() / "bin" / "python"), "-c", script], cwd=repo,
                            capture_output=True, text=True, check=True)
    mine, botocore = result.stdout.splitlines()
    assert mine == botocore
