"""Stand-ins for the flts chart's images: what each service does to the backend, and no more.

The chart (tests/e2e/chart) runs its images with ``args`` only, so this program is their
entry point and the first argument picks the role:

    preprocess [--sample-rows N]   Job: rows from the gateway -> windows; logs a run; exits 0
    train --model NAME             Deployment: logs a training run; then stays up
    eval                           Deployment: compares the trainers' runs, logs its own,
                                   asks the gateway to promote the best; then stays up
    inference                      Deployment: logs a serving run, then answers HTTP on
                                   :8080 (/health is the chart's readiness probe)
    kafka                          Deployment: a TCP listener on each KAFKA_LISTENERS port

Every MLflow run has a parameter, a metric and an artifact, written through
MLFLOW_TRACKING_URI, with the artifact going to S3 through MLFLOW_S3_ENDPOINT_URL and the AWS
variables, exactly the variables the webhook injects. Nothing here knows the backend's
address: a wrong injection shows as a pod that fails.

``kafka`` needs only the standard library; the other roles need the ``mlflow`` client.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

INFERENCE_PORT = 8080
STARTED = time.monotonic()


def main(argv: list[str]) -> int:
    # As PID 1 in a container, SIGTERM is ignored unless handled: a pod would then wait out
    # its whole grace period before being killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parser = argparse.ArgumentParser(prog="standin")
    roles = parser.add_subparsers(dest="role", required=True)
    preprocess = roles.add_parser("preprocess")
    preprocess.add_argument("--sample-rows", type=int,
                            default=int(os.environ.get("SAMPLE_ROWS", "50")))
    train = roles.add_parser("train")
    train.add_argument("--model", default=os.environ.get("MODEL_TYPE", "gru").lower())
    roles.add_parser("eval")
    roles.add_parser("inference")
    roles.add_parser("kafka")
    options = parser.parse_args(argv)
    if options.role == "kafka":
        serve_kafka(os.environ.get("KAFKA_LISTENERS", "PLAINTEXT://:9092"))
        return 0
    check_kafka()
    if options.role == "preprocess":
        run_preprocess(options.sample_rows)
        return 0
    if options.role == "train":
        run_train(options.model)
    elif options.role == "eval":
        run_eval()
    else:
        run_inference()
    stay_up()
    return 0


# --- roles ----------------------------------------------------------------------------------


def run_preprocess(sample_rows: int) -> None:
    gateway = os.environ["GATEWAY_URL"]
    with urllib.request.urlopen(f"{gateway}/data/raw?rows={sample_rows}", timeout=30) as answer:
        rows = json.load(answer)["rows"]
    values = [row["value"] for row in rows]
    windows = [values[i:i + 8] for i in range(0, max(len(values) - 7, 0))]
    log_run(
        experiment="flts-preprocess",
        name="preprocess",
        params={"sample_rows": sample_rows},
        metrics={"rows": len(rows), "windows": len(windows)},
        artifact=("windows.json", {"windows": windows}),
    )


def run_train(model: str) -> None:
    epochs = int(os.environ.get("EPOCHS", "1"))
    # A deterministic "loss curve" per model, so runs differ and eval has a best one.
    floor = {"gru": 0.8, "lstm": 0.9, "prophet": 1.2}.get(model, 1.0)
    losses = [floor + 2.0 / (epoch + 1) for epoch in range(epochs)]
    log_run(
        experiment=os.environ.get("MLFLOW_EXPERIMENT_NAME", f"flts-{model}"),
        name=f"train-{model}",
        params={"model": model, "model_type": os.environ.get("MODEL_TYPE", model.upper()),
                "epochs": epochs},
        metrics={"rmse": losses[-1]},
        steps={"loss": losses},
        artifact=("model.json", {"model": model, "weights": [round(x, 4) for x in losses]}),
    )


def run_eval() -> None:
    import mlflow

    metric = os.environ.get("EVAL_METRIC", "rmse")
    deadline = time.monotonic() + float(os.environ.get("EVAL_WAIT_SECONDS", "600"))
    # The trainers start beside eval: wait (as the real evaluator polls) for their runs.
    while True:
        candidates = [
            run for run in mlflow.search_runs(search_all_experiments=True, output_format="list")
            if metric in run.data.metrics and run.data.params.get("model")
        ]
        if candidates or time.monotonic() > deadline:
            break
        time.sleep(5)
    best = min(candidates, key=lambda run: run.data.metrics[metric], default=None)
    comparison = [
        {"run_id": run.info.run_id, "model": run.data.params["model"],
         metric: run.data.metrics[metric]}
        for run in candidates
    ]
    log_run(
        experiment="flts-eval",
        name="eval",
        params={"eval_metric": metric,
                "best_model": best.data.params["model"] if best else "none"},
        metrics={"candidates": len(candidates),
                 f"best_{metric}": best.data.metrics[metric] if best else float("nan")},
        artifact=("comparison.json", {"metric": metric, "runs": comparison}),
    )
    promote_url = os.environ.get("PROMOTE_URL")
    if best is not None and promote_url:
        body = json.dumps({"model": best.data.params["model"], "run_id": best.info.run_id})
        request = urllib.request.Request(promote_url, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30):
            pass


def run_inference() -> None:
    import mlflow

    model_name = os.environ.get("MODEL_NAME", "flts-best")
    log_run(
        experiment="flts-inference",
        name="inference",
        # The registry URI is the chart's $(MLFLOW_TRACKING_URI): recorded to show it resolved.
        params={"model_name": model_name, "model_uri": os.environ.get("MODEL_URI", ""),
                "registry_uri": mlflow.get_registry_uri()},
        metrics={"seconds_to_ready": time.monotonic() - STARTED},
        artifact=("serving.json", {"model_name": model_name}),
    )
    server = ThreadingHTTPServer(("", INFERENCE_PORT), _InferenceHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


class _InferenceHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        if self.path == "/health":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})

    def _answer(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        """Quiet: the kubelet probes every ten seconds."""


def serve_kafka(listeners: str) -> None:
    """Accept and close connections on each port of KAFKA_LISTENERS (``NAME://HOST:PORT,...``).

    This is the part of Kafka the chart's pods use before they start: ``nc -z kafka 9092``.
    """
    sockets = []
    for listener in listeners.split(","):
        host, port = listener.split("://", 1)[-1].rsplit(":", 1)
        sock = socket.create_server((host, int(port)))
        sockets.append(sock)
        threading.Thread(target=_accept_forever, args=(sock,), daemon=True).start()
        print(f"kafka stand-in listening on {host}:{port}", flush=True)
    stay_up()


def _accept_forever(sock: socket.socket) -> None:
    while True:
        connection, _ = sock.accept()
        connection.close()


# --- shared ---------------------------------------------------------------------------------


def check_kafka() -> None:
    """Open a TCP connection to each KAFKA_BOOTSTRAP_SERVERS address, if it is set.

    Kafka stays in the cluster: reaching it proves cluster DNS and Service routing from
    the pod, which the init containers' ``nc -z`` already waited for.
    """
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    for server in filter(None, servers.split(",")):
        host, port = server.rsplit(":", 1)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)


def log_run(*, experiment: str, name: str, params: dict[str, Any], metrics: dict[str, float],
            artifact: tuple[str, Any], steps: dict[str, list[float]] | None = None) -> None:
    """One MLflow run with parameters, metrics and one JSON artifact, named after the pod."""
    import mlflow

    set_experiment(experiment)
    pod = os.environ.get("HOSTNAME") or socket.gethostname()
    with mlflow.start_run(run_name=pod) as run:
        mlflow.set_tag("flts.pod", pod)
        mlflow.log_params(params)
        for key, values in (steps or {}).items():
            for step, value in enumerate(values):
                mlflow.log_metric(key, value, step=step)
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / artifact[0]
            path.write_text(json.dumps(artifact[1]))
            mlflow.log_artifact(str(path))
        print(f"{name}: logged run {run.info.run_id} in {experiment} "
              f"({run.info.artifact_uri})", flush=True)


def set_experiment(name: str) -> None:
    """Select (creating if need be) the experiment; replicas may race to create it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(5):
        try:
            mlflow.set_experiment(name)
            return
        except MlflowException:
            if attempt == 4:
                raise
            time.sleep(1 + attempt)


def stay_up() -> None:
    """Block until SIGTERM (a Deployment's container does not exit on its own)."""
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
