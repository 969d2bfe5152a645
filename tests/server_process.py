"""Running the real server in tests: a `backend-injector serve` process on 127.0.0.1 with TLS."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from webhook import certs

SECRET = "s3cr3t-value-never-logged"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    ca: Path
    log: Path

    def client(self, *, cert: tuple[str, str] | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.ca)
        if cert is not None:
            context.load_cert_chain(*cert)
        return httpx.Client(base_url=self.url, verify=context, timeout=10)

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


def start_server(
    tmp_path: Path,
    *extra: str,
    tls_dir: Path | None = None,
    env: dict[str, str] | None = None,
    client_cert: tuple[str, str] | None = None,
) -> Server:
    port = free_port()
    log = tmp_path / "server.log"
    arguments = ["--host", "127.0.0.1", "--port", str(port), *extra]
    if tls_dir is not None:
        arguments += ["--tls-cert", str(tls_dir / "tls.crt"), "--tls-key", str(tls_dir / "tls.key")]
    environ = {**os.environ, "BACKEND_INJECTOR_SECRET_ACCESS_KEY": SECRET, **(env or {})}
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
            context = unverified_context()
            if client_cert is not None:
                context.load_cert_chain(*client_cert)
            ready = httpx.get(f"{server.url}/readyz", verify=context, timeout=1)
            if ready.status_code == 200:
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




def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def review_body(obj: dict[str, Any], uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "flts", "operation": "CREATE", "object": obj},
    }



