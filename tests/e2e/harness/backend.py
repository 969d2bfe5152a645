"""The external backend of the user's Docker side, run on the host for the node e2e.

The user runs MLflow (:5000), MinIO (:9000) and a FastAPI gateway (:8000) in Docker Desktop,
and the chart's pods reach them as ``host.docker.internal``. Here:

- MLflow is the real tracking server from PyPI, on SQLite, with ``s3://mlflow/`` as its
  default artifact root, so clients upload artifacts straight to S3 as they do with MinIO;
- S3 is moto in server mode (MinIO is not installable here), with the bucket ``mlflow``;
- the gateway is a small HTTP server in this process that answers what the chart's pods
  ask of it (``/health``, raw rows for preprocess, ``/models/promote`` for eval) and
  records every request, so a test can see who came.

MLflow and moto run from a virtual environment of their own, cached by version under
``~/.cache/backend-injector/backend/`` and never mixed with the project's .venv.

    with Backend("127.0.0.1") as backend:
        ...  # point clients at backend.client_env()
        backend.runs(), backend.s3_objects(), backend.gateway_requests()

``python -m tests.e2e.harness.backend prepare`` builds the virtual environment ahead of a test run.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from . import buildcache

MLFLOW_VERSION = "3.17.2"
MOTO_VERSION = "5.2.5"

MLFLOW_PORT = 5000
S3_PORT = 9000
GATEWAY_PORT = 8000
BUCKET = "mlflow"
# What the webhook gives the pods (manifests/base/credentials-secret.yaml): MinIO's
# development default. moto accepts any credentials; the server side uses the same ones.
ACCESS_KEY_ID = "minioadmin"
SECRET_ACCESS_KEY = "minioadmin"
# The name pods use for the host, which MLflow must accept in the Host header.
DOCKER_HOST_NAME = "host.docker.internal"

_S3_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class BackendError(RuntimeError):
    """The backend could not be prepared, started or asked."""


@dataclass(frozen=True)
class Run:
    """One MLflow run as the tracking server reports it."""

    run_id: str
    run_name: str
    experiment_name: str
    status: str
    artifact_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class GatewayRequest:
    """One request the gateway answered."""

    method: str
    path: str
    body: bytes
    client: str


def venv_dir() -> Path:
    """Where the backend's virtual environment lives (built or not)."""
    return buildcache.cache_root() / "backend" / f"mlflow-{MLFLOW_VERSION}-moto-{MOTO_VERSION}"


def ensure_venv(stream: IO[str] | None = None) -> Path:
    """Build the MLflow + moto virtual environment unless the cache has it; return its path.

    A cold build downloads about 600 MB; it is built in place (virtual environments do not
    move), and a half-built one is thrown away and built again.
    """
    venv = venv_dir()
    if buildcache.is_complete(venv):
        return venv
    with buildcache.locked("backend"):
        if buildcache.is_complete(venv):
            return venv
        buildcache.fresh_entry(venv)
        output = stream if stream is not None else sys.stderr
        print(f"backend: installing mlflow {MLFLOW_VERSION} and moto {MOTO_VERSION} "
              f"into {venv}", file=output, flush=True)
        started = time.monotonic()
        commands = [
            [sys.executable, "-m", "venv", str(venv)],
            ["nice", "-n", "10", str(venv / "bin" / "python"), "-m", "pip", "install",
             "--quiet", "--disable-pip-version-check",
             f"mlflow=={MLFLOW_VERSION}", f"moto[server]=={MOTO_VERSION}"],
        ]
        for command in commands:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                raise BackendError(f"{' '.join(command)} failed with exit code "
                                   f"{result.returncode}")
        elapsed = time.monotonic() - started
        buildcache.mark_complete(venv, f"installed in {elapsed:.0f} s\n")
        print(f"backend: installed in {elapsed:.0f} s", file=output, flush=True)
    return venv


class _Gateway(ThreadingHTTPServer):
    """The FastAPI gateway's stand-in: answers the pipeline and records what it was asked."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _GatewayHandler)
        self.requests: list[GatewayRequest] = []
        self.requests_lock = threading.Lock()

    def record(self, request: GatewayRequest) -> None:
        with self.requests_lock:
            self.requests.append(request)


class _GatewayHandler(BaseHTTPRequestHandler):
    server: _Gateway

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        url = urllib.parse.urlsplit(self.path)
        self._record(b"")
        if url.path == "/health":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        elif url.path == "/data/raw":
            query = urllib.parse.parse_qs(url.query)
            rows = int(query.get("rows", ["10"])[0])
            # A small deterministic series: what preprocess turns into training windows.
            series = [{"t": i, "value": round((i % 24) * 1.5 + i * 0.01, 3)} for i in range(rows)]
            self._answer(HTTPStatus.OK, {"rows": series})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._record(body)
        if urllib.parse.urlsplit(self.path).path == "/models/promote":
            try:
                promoted = json.loads(body or b"{}")
            except ValueError:
                self._answer(HTTPStatus.UNPROCESSABLE_ENTITY, {"detail": "body is not JSON"})
                return
            self._answer(HTTPStatus.OK, {"promoted": promoted})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})

    def _record(self, body: bytes) -> None:
        self.server.record(GatewayRequest(self.command, self.path, body, self.client_address[0]))

    def _answer(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        """Quiet: the requests are recorded, not printed."""


@dataclass
class Backend:
    """MLflow, S3 and the gateway listening on ``host``; a context manager.

    ``host`` is an address of this machine: 127.0.0.1 for tests on the host alone, or the
    address the cluster's ``host.docker.internal`` resolves to. ``extra_allowed_hosts`` are
    further names MLflow accepts in the Host header (it refuses unknown ones since 3.5).
    """

    host: str
    mlflow_port: int = MLFLOW_PORT
    s3_port: int = S3_PORT
    gateway_port: int = GATEWAY_PORT
    extra_allowed_hosts: tuple[str, ...] = ()
    keep_dir: bool = False
    start_timeout: float = 240.0
    workdir: Path = field(init=False)
    _processes: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)
    _gateway: _Gateway | None = field(init=False, default=None)

    # --- addresses ------------------------------------------------------------------------

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    def process_groups(self) -> list[int]:
        """The pids of the processes started (each leads a process group of its own)."""
        return [process.pid for process in self._processes.values()]

    def client_env(self) -> dict[str, str]:
        """The variables a client of this backend needs, as the webhook would inject them."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "GATEWAY_URL": self.gateway_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        }

    # --- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, stream: IO[str] | None = None) -> None:
        """Start S3, make the bucket, start the gateway and MLflow; return once all answer."""
        venv = ensure_venv(stream)
        python = str(venv / "bin" / "python")
        self.workdir = Path(tempfile.mkdtemp(prefix="backend-injector-backend-"))
        atexit.register(self.stop)
        try:
            self._spawn("s3", [python, "-m", "moto.server", "-H", self.host,
                               "-p", str(self.s3_port)],
                        # Path-style buckets whatever the Host header says.
                        {"S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"})
            self._wait_until("s3", lambda: self._http("GET", self.s3_endpoint + "/"))
            self._s3("PUT", f"/{BUCKET}")

            self._gateway = _Gateway((self.host, self.gateway_port))
            threading.Thread(target=self._gateway.serve_forever, name="gateway",
                             daemon=True).start()

            self._spawn("mlflow", [
                python, "-m", "mlflow", "server",
                "--host", self.host, "--port", str(self.mlflow_port),
                # One worker: the default four, on two shared cores, take a minute to start.
                "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
                "--default-artifact-root", f"s3://{BUCKET}/",
                "--allowed-hosts", ",".join(self._allowed_hosts()),
            ], {
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                # Otherwise a job runner with seven consumer processes starts beside it.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            })
            self._wait_until("mlflow", lambda: self._http("GET", self.mlflow_uri + "/health"))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything started, whole process groups included; safe to call twice."""
        for name, process in list(self._processes.items()):
            _stop_group(process)
            del self._processes[name]
        if self._gateway is not None:
            self._gateway.shutdown()
            self._gateway.server_close()
            self._gateway = None
        workdir = getattr(self, "workdir", None)
        if workdir is not None and not self.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)

    def _allowed_hosts(self) -> list[str]:
        names = [DOCKER_HOST_NAME, self.host, "localhost", "127.0.0.1", *self.extra_allowed_hosts]
        return [pattern for name in dict.fromkeys(names) for pattern in (name, f"{name}:*")]

    def _spawn(self, name: str, command: list[str], extra_env: dict[str, str]) -> None:
        env = {key: value for key, value in os.environ.items()
               if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update(extra_env)
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (the child keeps it)
        with log:
            self._processes[name] = subprocess.Popen(
                ["nice", "-n", "5", *command], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                # A group of its own, so that stop() reaches the workers it forks.
                start_new_session=True,
            )

    def _wait_until(self, name: str, probe: Any) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            process = self._processes[name]
            if process.poll() is not None:
                raise BackendError(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            try:
                probe()
                return
            except (OSError, BackendError):
                if time.monotonic() > deadline:
                    raise BackendError(f"{name} did not answer within {self.start_timeout:.0f}"
                                       f" s:\n{self.log(name)}") from None
                time.sleep(0.5)

    def log(self, name: str, tail: int = 4000) -> str:
        """The end of a server's log (``s3`` or ``mlflow``)."""
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # --- what arrived ---------------------------------------------------------------------

    def runs(self) -> list[Run]:
        """Every run of every experiment, through MLflow's REST API."""
        experiments = {
            experiment["experiment_id"]: experiment["name"]
            for experiment in self._paged("experiments/search", {}, "experiments")
        }
        if not experiments:
            return []
        runs = self._paged("runs/search", {"experiment_ids": list(experiments)}, "runs")
        return [
            Run(
                run_id=run["info"]["run_id"],
                run_name=run["info"].get("run_name", ""),
                experiment_name=experiments.get(run["info"]["experiment_id"], ""),
                status=run["info"]["status"],
                artifact_uri=run["info"].get("artifact_uri", ""),
                params={p["key"]: p["value"] for p in run.get("data", {}).get("params", [])},
                metrics={m["key"]: float(m["value"])
                         for m in run.get("data", {}).get("metrics", [])},
                tags={t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])},
            )
            for run in runs
        ]

    def s3_objects(self, bucket: str = BUCKET) -> list[str]:
        """The keys of every object in ``bucket``, through the S3 API (ListObjectsV2)."""
        keys: list[str] = []
        token: str | None = None
        while True:
            query = {"list-type": "2"} | ({"continuation-token": token} if token else {})
            body = self._s3("GET", f"/{bucket}", query)
            listing = ElementTree.fromstring(body)
            keys += [element.text or "" for element in listing.iter(f"{_S3_NAMESPACE}Key")]
            token = listing.findtext(f"{_S3_NAMESPACE}NextContinuationToken")
            if not token:
                return keys

    def s3_object(self, key: str, bucket: str = BUCKET) -> bytes:
        """The content of one object, through the S3 API (GetObject)."""
        return self._s3("GET", f"/{bucket}/{key}")

    def _s3(self, method: str, path: str, query: dict[str, str] | None = None) -> bytes:
        """A request signed with the injected credentials (moto keeps objects private)."""
        encoded_query = urllib.parse.urlencode(sorted((query or {}).items()),
                                               quote_via=urllib.parse.quote)
        url = f"{self.s3_endpoint}{urllib.parse.quote(path)}"
        url += f"?{encoded_query}" if encoded_query else ""
        headers = sigv4_headers(method, url, b"", ACCESS_KEY_ID, SECRET_ACCESS_KEY)
        return self._http(method, url, headers=headers)

    def gateway_requests(self) -> list[GatewayRequest]:
        """Every request the gateway has answered so far, oldest first."""
        if self._gateway is None:
            return []
        with self._gateway.requests_lock:
            return list(self._gateway.requests)

    def _paged(self, endpoint: str, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            request = body | {"max_results": 1000} | ({"page_token": token} if token else {})
            answer = json.loads(self._http("POST", f"{self.mlflow_uri}/api/2.0/mlflow/"
                                                   f"{endpoint}", json.dumps(request).encode()))
            items += answer.get(key, [])
            token = answer.get("next_page_token")
            if not token:
                return items

    @staticmethod
    def _http(method: str, url: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            raise BackendError(f"{method} {url}: HTTP {error.code}: "
                               f"{error.read()[:500]!r}") from None


def sigv4_headers(method: str, url: str, payload: bytes, access_key: str, secret_key: str,
                  region: str = "us-east-1", service: str = "s3") -> dict[str, str]:
    """Headers that sign a request with AWS Signature Version 4, as boto3 would.

    ``url`` must already be percent-encoded, its query sorted by name.
    """
    parts = urllib.parse.urlsplit(url)
    now = time.gmtime()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    payload_hash = hashlib.sha256(payload).hexdigest()
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload_hash,
               "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, parts.path or "/", parts.query,
        *(f"{name}:{headers[name]}" for name in sorted(headers)), "",
        signed, payload_hash,
    ])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    del headers["host"]  # urllib sends it itself, with the same value
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


def _stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # Workers may outlive their parent: whatever is left of the group goes now.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def main(argv: list[str]) -> int:
    """``prepare``: build the virtual environment. ``serve HOST``: run until interrupted."""
    if argv[:1] == ["prepare"]:
        print(ensure_venv(sys.stderr))
        return 0
    if argv[:1] == ["serve"] and len(argv) == 2:
        # Handlers, not a blocked signal mask: the servers would inherit the mask and
        # ignore the SIGTERM that stops them.
        stopping = threading.Event()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stopping.set())
        with Backend(argv[1]) as backend:
            print(json.dumps(backend.client_env(), indent=2), flush=True)
            while not stopping.wait(1):
                pass
        return 0
    print("usage: python -m tests.e2e.harness.backend prepare | serve HOST", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
