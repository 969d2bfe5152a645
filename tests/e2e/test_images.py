"""The images the node runs (images.py), looked at and run from their own archives.

Each test unpacks an image from the very archive the node imports and runs its programs
under ``chroot`` on this host: the bytes containerd would run, without a container runtime.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .harness import images
from .harness.backend import Backend
from .harness.controlplane import build_binaries, free_port
from .harness.standin import Standin, runs_of, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built() -> dict[str, images.Image]:
    """Every image by name (cold: minutes; warm: a few small reads)."""
    return {image.name: image for image in images.all_images()}


def image_env(image: images.Image) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in image.config.get("Env", []))


def in_chroot(rootfs: Path, image: images.Image,
              command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` inside ``rootfs`` with the image's environment, as its user."""
    userspec = image.config.get("User") or "0:0"
    return subprocess.run(["chroot", f"--userspec={userspec}", str(rootfs), *command],
                          env=image_env(image), capture_output=True, text=True,
                          timeout=120, check=False)


def dockerfile_instruction(name: str) -> str:
    """The argument of the Dockerfile's last ``name`` instruction (the runtime stage's)."""
    values = [line.split(None, 1)[1] for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
              if line.split(None, 1)[:1] == [name]]
    return values[-1]


# --- the webhook ----------------------------------------------------------------------------


def test_the_webhook_image_is_named_as_the_manifests_ask(built: dict[str, images.Image]) -> None:
    deployment = yaml.safe_load((REPO_ROOT / "manifests/base/deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    overlay = yaml.safe_load(
        (REPO_ROOT / "manifests/overlays/docker-desktop/kustomization.yaml").read_text())
    [retag] = overlay["images"]
    expected = {images.qualified(container["image"]),
                images.qualified(f"{retag['name']}:{retag['newTag']}")}
    assert expected <= set(built)
    archives = {built[name].archive for name in expected}
    assert len(archives) == 1, "one image under every name"


def test_the_webhook_image_has_the_dockerfiles_user_entrypoint_and_command(
    built: dict[str, images.Image]
) -> None:
    [webhook] = [image for name, image in built.items() if name.endswith("backend-injector:dev")]
    config = webhook.config
    assert config["User"] == dockerfile_instruction("USER")
    assert config["Entrypoint"] == json.loads(dockerfile_instruction("ENTRYPOINT"))
    assert config["Cmd"] == json.loads(dockerfile_instruction("CMD"))
    assert f"{dockerfile_instruction('EXPOSE')}/tcp" in config["ExposedPorts"]
    # The kubelet checks runAsNonRoot against the numeric user: the Deployment's must match.
    deployment = yaml.safe_load((REPO_ROOT / "manifests/base/deployment.yaml").read_text())
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert config["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"


def test_the_webhook_image_runs_its_version_command_as_its_user(
    built: dict[str, images.Image], tmp_path: Path
) -> None:
    webhook = built[images.qualified("backend-injector:dev")]
    images.unpack(webhook, tmp_path / "rootfs")
    result = in_chroot(tmp_path / "rootfs", webhook, [*webhook.config["Entrypoint"], "--version"])
    assert result.returncode == 0, result.stderr
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.split()[:2] == ["backend-injector", version]
    # The root filesystem is read-only in the Deployment: the bytecode must be there already.
    sources = list((tmp_path / "rootfs/opt/backend-injector/lib").rglob("webhook/cli.py"))
    assert sources and all(
        list(source.parent.glob("__pycache__/cli.*.pyc")) for source in sources
    )


# --- busybox:1.35 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox_root(built: dict[str, images.Image],
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[images.Image, Path]:
    image = built[images.qualified(images.chart_values()["images"]["busybox"])]
    rootfs = tmp_path_factory.mktemp("busybox") / "rootfs"
    images.unpack(image, rootfs)
    # What the kubelet writes into every container: here the chart's Service name is local.
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost kafka\n")
    return image, rootfs


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on 127.0.0.1 that records what each connection sends."""
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                received.append(connection.recv(1024))

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1], received
    finally:
        server.close()


def test_busybox_nc_z_tells_an_open_port_from_a_closed_one(
    busybox_root: tuple[images.Image, Path], listener: tuple[int, list[bytes]]
) -> None:
    image, rootfs = busybox_root
    port, _ = listener
    # The chart's wait, as its init containers run it (`sh -c`, a name, no timeout).
    wait = f"until nc -z kafka {port}; do sleep 2; done"
    assert in_chroot(rootfs, image, ["sh", "-c", wait]).returncode == 0
    closed = in_chroot(rootfs, image, ["sh", "-c", f"nc -z kafka {free_port()}"])
    assert closed.returncode == 1, closed.stderr
    unknown = in_chroot(rootfs, image, ["sh", "-c", "nc -z no-such-host 9092"])
    assert unknown.returncode == 1
    assert "no-such-host" in unknown.stderr


def test_busybox_nc_without_z_is_the_applet(
    busybox_root: tuple[images.Image, Path], listener: tuple[int, list[bytes]]
) -> None:
    image, rootfs = busybox_root
    port, received = listener
    result = in_chroot(rootfs, image, ["sh", "-c", f"echo hello | nc 127.0.0.1 {port}"])
    assert result.returncode == 0, result.stderr
    wait_for("the applet's bytes", lambda: received, 10)
    assert received == [b"hello\n"]


# --- the chart's own images -----------------------------------------------------------------


def test_every_image_of_the_chart_is_built_under_its_name(
    built: dict[str, images.Image]
) -> None:
    values = images.chart_values()
    chart_names = {images.qualified(name) for name in values["images"].values()}
    chart_names.add(images.qualified(values["kafka"]["image"]))
    assert chart_names <= set(built)


# What each of the chart's workloads is, as the stand-in program's role.
CHART_ROLES = {"preprocess": "preprocess", "train-gru": "train", "train-lstm": "train",
               "nonml-prophet": "train", "eval": "eval", "inference": "inference",
               "kafka": "kafka"}


def test_each_chart_container_runs_the_stand_in_in_its_role(
    built: dict[str, images.Image]
) -> None:
    """The chart's args (or, without args, the image's CMD) pick the right role."""
    rendered = subprocess.run(
        [str(build_binaries().helm), "template", "flts", str(REPO_ROOT / "tests/e2e/chart"),
         "--values", str(REPO_ROOT / "tests/e2e/chart/values-complete.yaml")],
        capture_output=True, text=True, check=True).stdout
    seen = {}
    for document in yaml.safe_load_all(rendered):
        if not document or "template" not in document.get("spec", {}):
            continue
        workload = document["metadata"]["name"].split("-")[0] if document["kind"] == "Job" \
            else document["metadata"]["name"]
        for container in document["spec"]["template"]["spec"]["containers"]:
            config = built[images.qualified(container["image"])].config
            argv = [*config["Entrypoint"], *(container.get("args") or config.get("Cmd", []))]
            assert argv[:2] == ["python", "/opt/flts/standin.py"], container["image"]
            seen[workload] = argv[2]
    assert seen == CHART_ROLES


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend("127.0.0.1", mlflow_port=free_port(), s3_port=free_port(),
                 gateway_port=free_port()) as running:
        yield running


def in_image(image: images.Image, rootfs: Path, args: list[str] | None, env: dict[str, str],
             log: Path) -> Standin:
    """Start the image's command (its CMD unless ``args``, as a pod spec's args) in ``rootfs``."""
    argv = [*image.config["Entrypoint"], *(args if args is not None else image.config["Cmd"])]
    with open(log, "wb") as output:
        process = subprocess.Popen(["chroot", str(rootfs), *argv], env=image_env(image) | env,
                                   stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT)
    return Standin(process, log)


def test_the_pipeline_images_log_their_runs_with_their_own_mlflow_client(
    built: dict[str, images.Image], backend: Backend, tmp_path: Path
) -> None:
    """preprocess, a trainer and eval, each from its image, as the chart starts them."""
    names = images.chart_values()["images"]
    image = {role: built[images.qualified(names[role])] for role in ("preprocess", "train", "eval")}
    # The five images share their layers: one root filesystem serves them all.
    rootfs = tmp_path / "rootfs"
    images.unpack(image["train"], rootfs)
    env = backend.client_env()

    job = in_image(image["preprocess"], rootfs, ["preprocess", "--sample-rows", "30"],
                   env | {"HOSTNAME": "preprocess-chroot"}, tmp_path / "preprocess.log")
    assert job.process.wait(timeout=180) == 0, job.output()
    trainer = in_image(image["train"], rootfs, ["train", "--model", "lstm"],
                       env | {"MODEL_TYPE": "LSTM", "EPOCHS": "4", "HOSTNAME": "train-chroot",
                              "MLFLOW_EXPERIMENT_NAME": "flts-lstm"}, tmp_path / "train.log")
    try:
        [run] = wait_for("the trainer's run", lambda: runs_of(backend, "train-chroot"), 180,
                         running=trainer)
    finally:
        assert trainer.stop() == 0, trainer.output()
    evaluator = in_image(image["eval"], rootfs, None, env | {
        "HOSTNAME": "eval-chroot", "PROMOTE_URL": f"{backend.gateway_url}/models/promote",
    }, tmp_path / "eval.log")
    try:
        [promotion] = wait_for("the promotion", lambda: [
            r for r in backend.gateway_requests() if r.path == "/models/promote"
        ], 180, running=evaluator)
    finally:
        assert evaluator.stop() == 0, evaluator.output()

    [preprocessed] = runs_of(backend, "preprocess-chroot")
    assert preprocessed.metrics["rows"] == 30
    assert run.params["epochs"] == "4"
    key = run.artifact_uri.removeprefix("s3://mlflow/") + "/model.json"
    assert json.loads(backend.s3_object(key))["model"] == "lstm"
    # MLflow records the program that logged the run: the image's, under chroot.
    assert run.tags["mlflow.source.name"] == "/opt/flts/standin.py"
    assert json.loads(promotion.body) == {"model": "lstm", "run_id": run.run_id}
    # No warning about a missing git in the pods' logs.
    assert "git executable" not in evaluator.output()


def test_the_kafka_image_listens_on_the_charts_listener_ports(
    built: dict[str, images.Image], tmp_path: Path
) -> None:
    image = built[images.qualified(images.chart_values()["kafka"]["image"])]
    rootfs = tmp_path / "rootfs"
    images.unpack(image, rootfs)
    port = free_port()
    kafka = in_image(image, rootfs, None, {"KAFKA_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}"},
                     tmp_path / "kafka.log")
    try:
        wait_for("the listener", lambda: "listening" in kafka.output(), 30, running=kafka)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        assert kafka.stop() == 0, kafka.output()
