"""Hostile input, connection abuse, TLS policy, faults under load, and secrets kept secret.

Each test runs a real `backend-injector serve` process on 127.0.0.1 and speaks to it over TLS;
load comes from benchmarks/loadgen.py, aimed at that address only.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from benchmarks.loadgen import LoadResult, build_request, run
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
from webhook import certs

REQUEST = build_request(orjson.dumps(review_body(pod())))


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def load_in_background(
    server: Server, **options: object
) -> tuple[threading.Thread, list[LoadResult]]:
    results: list[LoadResult] = []

    def target() -> None:
        results.append(run("127.0.0.1", port_of(server), [REQUEST], **options))

    thread = threading.Thread(target=target)
    thread.start()
    return thread, results


# -- input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"null", b"[]", b"{}", b"\"review\"", b'{"apiVersion": "admission.k8s.io/v1"',
        b"\xc3\x28", b'{"a": NaN}', b"[" * 300_000,
    ],
)
def test_bodies_that_are_not_reviews_get_400_and_the_server_lives(
    server: Server, body: bytes
) -> None:
    with server.client() as client:
        response = client.post("/mutate", content=body)
        assert response.status_code == 400
        assert "error" in response.json()
        assert client.get("/healthz").is_success


@pytest.mark.parametrize(
    "obj",
    [
        {"spec": {"containers": "app"}},
        {"spec": {"containers": [{"name": "app", "env": {"A": "b"}}]}},
        {"metadata": ["x"], "spec": {}},
        {"spec": {"initContainers": [{"name": None}], "containers": []}},
        {"spec": {"containers": [{"name": "app", "env": [None]}]}},
        "a string",
        None,
        12,
    ],
)
def test_nonsense_objects_are_allowed_unchanged_with_a_warning(server: Server, obj: object) -> None:
    body = review_body(pod())
    body["request"]["object"] = obj
    with server.client() as client:
        response = client.post("/mutate", json=body)
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer == {"uid": "uid-1", "allowed": True, "warnings": answer["warnings"]}
    assert "left unchanged" in answer["warnings"][0]


def test_a_chunked_body_over_the_limit_is_cut_off(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * (1024 * 1024)

    with server.client() as client:
        assert client.post("/mutate", content=chunks()).status_code == 413
        assert client.get("/healthz").is_success


# -- connections and TLS -------------------------------------------------------------------------


def test_stalled_handshakes_do_not_keep_others_from_being_served(server: Server) -> None:
    stalled = []
    for _ in range(200):
        connection = socket.create_connection(("127.0.0.1", port_of(server)))
        connection.sendall(b"\x16\x03\x01\x00")  # the first bytes of a ClientHello, then silence
        stalled.append(connection)
    try:
        started = time.monotonic()
        with server.client() as client:
            for number in range(20):
                assert client.post("/mutate", json=review_body(pod(), f"s{number}")).is_success
        assert time.monotonic() - started < 5
        # The handshake timeout (10 s) closes them from the server's side.
        stalled[0].settimeout(15)
        assert stalled[0].recv(1) == b""
    finally:
        for connection in stalled:
            connection.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(server: Server, version: ssl.TLSVersion) -> None:
    context = unverified_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # old versions are the point here
        context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(
        ("127.0.0.1", port_of(server))
    ) as raw, context.wrap_socket(raw):
        pass


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_are_served(server: Server, version: ssl.TLSVersion) -> None:
    context = unverified_context()
    context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port_of(server))) as raw, \
            context.wrap_socket(raw) as tls:
        assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                 ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_tls12_suites_without_forward_secrecy_are_refused(server: Server) -> None:
    context = unverified_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-GCM-SHA256:AES256-SHA")
    with pytest.raises(ssl.SSLError), socket.create_connection(
        ("127.0.0.1", port_of(server))
    ) as raw, context.wrap_socket(raw):
        pass


def test_client_certificates_are_required_with_client_ca(tmp_path: Path) -> None:
    client_ca = certs.build_ca(common_name="apiserver client CA", days=1)
    (tmp_path / "client-ca.crt").write_bytes(client_ca.cert_pem)
    client = client_certificate(client_ca)
    (tmp_path / "client.crt").write_bytes(client.cert_pem)
    (tmp_path / "client.key").write_bytes(client.key_pem)
    pair = (str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
    running = start_server(tmp_path, "--client-ca", str(tmp_path / "client-ca.crt"),
                           tls_dir=write_pair(tmp_path / "tls"), client_cert=pair)
    try:
        with pytest.raises(httpx.HTTPError), running.client() as anonymous:
            anonymous.get("/healthz")
        with running.client(cert=pair) as trusted:
            assert trusted.post("/mutate", json=review_body(pod())).is_success
    finally:
        stop(running)


def client_certificate(ca: certs.KeyPair) -> certs.KeyPair:
    """A certificate for TLS client authentication (EKU clientAuth), as the apiserver holds."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certs.KeyPair(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    )


# -- faults under load ---------------------------------------------------------------------------


def test_sigterm_under_load_drains_without_failing_a_review(tmp_path: Path) -> None:
    # The load stops (as the apiserver does once the endpoint is gone) well before the drain
    # ends; what is tested is that nothing in flight or sent while draining fails.
    running = start_server(tmp_path, "--shutdown-delay", "5", tls_dir=write_pair(tmp_path / "tls"))
    thread, results = load_in_background(running, connections=8, duration=3.5, rate=400)
    time.sleep(1.0)
    running.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with running.client() as client:
        readiness = client.get("/readyz")
    assert readiness.status_code == 503
    assert readiness.json()["reason"] == "draining"
    thread.join()
    assert running.process.wait(timeout=20) == 0
    (result,) = results
    assert result.failed == 0, (result.statuses, result.errors)
    assert result.answered > 1000


def test_certificate_rotation_under_load_fails_no_review(tmp_path: Path) -> None:
    versions = [write_pair(tmp_path / f"v{number}") for number in range(4)]
    mount = tmp_path / "mount"
    mount.mkdir()
    (mount / "..data").symlink_to(versions[0])
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (mount / name).symlink_to(Path("..data") / name)
    running = start_server(tmp_path, tls_dir=mount)
    try:
        # Short-lived connections as well as long ones, so new handshakes meet each version.
        thread, results = load_in_background(running, connections=8, duration=6.0, rate=500)
        for version in versions[1:]:
            time.sleep(1.5)
            swap = mount / "..data_tmp"
            swap.symlink_to(version)
            swap.replace(mount / "..data")
        fresh_connections = [
            httpx.post(running.url + "/mutate", json=review_body(pod()),
                       verify=unverified_context()).status_code
            for _ in range(30)
        ]
        thread.join()
    finally:
        stop(running)
    (result,) = results
    assert result.failed == 0, (result.statuses, result.errors)
    assert set(fresh_connections) == {200}
    assert "certificate reloaded" in running.log.read_text()


def test_sixty_seconds_at_a_thousand_reviews_a_second(tmp_path: Path) -> None:
    running = start_server(tmp_path, tls_dir=write_pair(tmp_path / "tls"))
    try:
        thread, results = load_in_background(running, connections=16, duration=60.0, rate=1000)
        time.sleep(10)
        early = rss_bytes(running.process.pid)
        thread.join()
        late = rss_bytes(running.process.pid)
    finally:
        stop(running)
    (result,) = results
    assert result.failed == 0, (result.statuses, result.errors)
    assert result.answered >= 59_000
    assert late <= early * 1.05, f"RSS grew from {early} to {late} bytes"


# -- secrets -------------------------------------------------------------------------------------


def test_credential_values_appear_nowhere_but_the_injected_env(tmp_path: Path) -> None:
    running = start_server(tmp_path, tls_dir=write_pair(tmp_path / "tls"))
    fixtures = sorted(Path(__file__).parents[1].glob("fixtures/*/request.json"))
    seen: list[str] = []
    try:
        with running.client() as client:
            for request in fixtures:
                answer = client.post("/mutate", content=request.read_bytes()).json()["response"]
                seen.extend(answer.get("warnings", []))
                seen.append(json.dumps({k: v for k, v in answer.items() if k != "patch"}))
            for bad in (b"{", b"[]", orjson.dumps(review_body({"spec": "x"}))):
                seen.append(client.post("/mutate", content=bad).text)
            seen.append(client.get("/metrics").text)
            seen.append(client.get("/readyz").text)
    finally:
        stop(running)
    seen.append(running.log.read_text())
    assert fixtures, "the fixture cases are part of this scenario"
    for output in seen:
        assert SECRET not in output
