"""The server, for real: a uvicorn process with TLS on 127.0.0.1, spoken to over HTTPS."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.conftest import pod
from webhook import certs

SECRET = "s3cr3t-value-never-logged"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    ca: Path
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.ca),
                            timeout=10, **kwargs)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_pair(directory: Path, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    ca = certs.build_ca(common_name="test CA", days=1)
    serving = certs.build_serving_certificate(ca=ca, hostnames=list(hostnames), days=1)
    certs.write_bundle(directory, ca=ca, serving=serving)
    return directory


def start_server(tmp_path: Path, *extra: str, tls_dir: Path | None = None) -> Server:
    port = free_port()
    log = tmp_path / "server.log"
    arguments = ["--host", "127.0.0.1", "--port", str(port), *extra]
    if tls_dir is not None:
        arguments += ["--tls-cert", str(tls_dir / "tls.crt"), "--tls-key", str(tls_dir / "tls.key")]
    environ = {**os.environ, "BACKEND_INJECTOR_SECRET_ACCESS_KEY": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook", "serve", *arguments],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=environ,
    )
    server = Server(process, f"https://127.0.0.1:{port}", (tls_dir or tmp_path) / "ca.crt", log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if httpx.get(f"{server.url}/readyz", verify=context, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"server not ready: {log.read_text()}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("server")
    running = start_server(directory, tls_dir=write_pair(directory / "tls"))
    yield running
    stop(running)


def review_body(obj: dict[str, Any], uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "flts", "operation": "CREATE", "object": obj},
    }


def test_mutate_over_tls_returns_a_patch_that_applies(server: Server) -> None:
    with server.client() as client:
        response = client.post("/mutate", json=review_body(pod()))
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer["uid"] == "uid-1"
    patched = jsonpatch.apply_patch(pod(), json.loads(base64.b64decode(answer["patch"])))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["wait-for-kafka"]
    env = {e["name"]: e["value"] for e in patched["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET


def test_keep_alive_serves_many_reviews_on_one_connection(server: Server) -> None:
    with server.client() as client:
        for number in range(50):
            assert client.post("/mutate", json=review_body(pod(), f"u{number}")).status_code == 200


def test_health_readiness_and_metrics(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["ready"] is True
        client.post("/mutate", json=review_body(pod(), "metrics"))
        metrics = client.get("/metrics").text
    assert 'backend_injector_reviews_total{operation="CREATE",result="mutated"}' in metrics
    assert "backend_injector_review_duration_seconds_bucket" in metrics


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/mutate", b"not json", 400),
        ("POST", "/mutate", b"", 400),
        ("POST", "/mutate", b'{"kind": "Pod"}', 400),
        ("GET", "/mutate", b"", 405),
        ("GET", "/nowhere", b"", 404),
        ("POST", "/healthz", b"", 405),
    ],
)
def test_bad_requests_get_clear_errors(
    server: Server, method: str, path: str, body: bytes, status: int
) -> None:
    with server.client() as client:
        response = client.request(method, path, content=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")


def test_oversized_body_is_refused_from_its_header(server: Server) -> None:
    with server.client() as client:
        response = client.post("/mutate", content=b"x" * (7 * 1024 * 1024 + 1))
    assert response.status_code == 413


def test_plain_http_on_the_tls_port_is_refused(server: Server) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https", "http") + "/healthz", timeout=3)


def test_one_json_log_line_per_review_and_no_credential(server: Server) -> None:
    with server.client() as client:
        client.post("/mutate", json=review_body(pod(), "logged-uid"))
    time.sleep(0.2)
    lines = server.log_lines()
    reviews = [line for line in lines if line.get("uid") == "logged-uid"]
    assert len(reviews) == 1
    assert reviews[0]["pod"] == "train-gru-*"
    assert reviews[0]["namespace"] == "flts"
    assert reviews[0]["removed"] == ["wait-for-mlflow"]
    assert "duration_ms" in reviews[0]
    assert SECRET not in server.log.read_text()


def test_without_certificates_it_serves_a_throwaway_one(tmp_path: Path) -> None:
    running = start_server(tmp_path)
    try:
        assert any("self-signed" in line["message"] for line in running.log_lines())
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        assert httpx.get(running.url + "/healthz", verify=context).status_code == 200
    finally:
        stop(running)


def test_two_workers_share_the_port(tmp_path: Path) -> None:
    running = start_server(tmp_path, "--workers", "2", tls_dir=write_pair(tmp_path / "tls"))
    try:
        children = Path(f"/proc/{running.process.pid}/task/{running.process.pid}/children")
        assert len(children.read_text().split()) == 2
        for number in range(40):
            with running.client() as client:  # a new connection each time
                assert client.post("/mutate", json=review_body(pod(), f"w{number}")).is_success
        time.sleep(0.2)
        served_by = {line["pid"] for line in running.log_lines() if line.get("uid", "")[:1] == "w"}
        assert served_by <= {int(pid) for pid in children.read_text().split()}
    finally:
        stop(running)
    assert running.process.returncode == 0


def served_certificate(url: str) -> bytes:
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port))) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_certificate_rotation_by_symlink_swap_without_restart(tmp_path: Path) -> None:
    # The layout a Secret volume has: files behind a `..data` symlink that is swapped whole.
    first, second = write_pair(tmp_path / "v1"), write_pair(tmp_path / "v2")
    mount = tmp_path / "mount"
    mount.mkdir()
    (mount / "..data").symlink_to(first)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (mount / name).symlink_to(Path("..data") / name)
    running = start_server(tmp_path, tls_dir=mount)
    try:
        with running.client() as old_connection:
            assert old_connection.get("/healthz").is_success
            before = served_certificate(running.url)
            swap = mount / "..data_tmp"
            swap.symlink_to(second)
            swap.replace(mount / "..data")
            deadline = time.monotonic() + 10
            while served_certificate(running.url) == before and time.monotonic() < deadline:
                time.sleep(0.2)
            assert served_certificate(running.url) != before
            # The connection opened before the swap keeps working.
            assert old_connection.get("/healthz").is_success
        trusting_new_ca = Server(running.process, running.url, second / "ca.crt", running.log)
        with trusting_new_ca.client() as client:
            assert client.post("/mutate", json=review_body(pod())).is_success
    finally:
        stop(running)
