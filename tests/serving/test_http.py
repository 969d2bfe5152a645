"""The server, for real: a uvicorn process with TLS on 127.0.0.1, spoken to over HTTPS."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import httpx
import jsonpatch
import pytest

from tests.conftest import pod
from tests.server_process import (
    SECRET,
    Server,
    review_body,
    start_server,
    stop,
    unverified_context,
    write_pair,
)
from webhook.serving.app import DEFAULT_BODY_LIMIT


def test_mutate_over_tls_returns_a_patch_that_applies(server: Server) -> None:
    with server.client() as client:
        response = client.post("/mutate", json=review_body(pod()))
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer["uid"] == "uid-1"
    patched = jsonpatch.apply_patch(pod(), json.loads(base64.b64decode(answer["patch"])))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["wait-for-kafka"]
    env = {e["name"]: e for e in patched["spec"]["containers"][0]["env"]}
    # By reference: the server holds real credentials, and no answer carries them.
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-access-key"
    assert SECRET not in response.text
    assert SECRET not in base64.b64decode(answer["patch"]).decode()


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


def test_a_body_larger_than_any_create_review_is_refused_from_its_header(
    server: Server,
) -> None:
    with server.client() as client:
        response = client.post("/mutate", content=b"x" * (DEFAULT_BODY_LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == {"error": f"body exceeds {DEFAULT_BODY_LIMIT} bytes"}


def test_a_body_of_the_largest_create_review_is_read(server: Server) -> None:
    with server.client() as client:
        response = client.post("/mutate", content=b" " * (DEFAULT_BODY_LIMIT - 2) + b"{}")
    assert response.status_code == 400  # read, parsed, and found not to be a review


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
        assert httpx.get(running.url + "/healthz", verify=unverified_context()).is_success
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
    context = unverified_context()
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
