"""Hostile pods and hostile clients against a real server: what each attack costs the webhook.

``python -m benchmarks.adversarial [--out FILE]`` starts ``backend-injector serve`` processes on
127.0.0.1 and runs each attack that someone with the right to create pods (or to open a
connection to the webhook) could try, measuring what it costs: how long the hostile review
takes, the p99 of small reviews sent meanwhile on other connections, the server's RSS, the log
bytes written, and the connections held. The report goes to ``results/adversarial.md``.

The attacks are functions of a running server, so that ``tests/serving/test_adversarial.py``
runs the same ones in CI and asserts the bounds on what they measure. Everything connects to
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import itertools
import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks import payloads
from benchmarks.loadgen import LoadResult, build_request, parse_head, run
from webhook import certs

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
MIB = 1024 * 1024
# The apiserver's limit on an object; a review of a pod that size is what the webhook must take.
OBJECT_LIMIT = 3 * MIB
PROBE = "until nc -z mlflow 5000; do sleep 2; done; "
SMALL_RATE = 100  # small reviews a second while an attack runs
GIANT_MARKER = "giant-00000000"  # replaced by a number in each giant review sent


# -- the hostile reviews -----------------------------------------------------------------------


def review_of(obj: dict[str, Any], uid: str = "hostile-1") -> dict[str, Any]:
    review = payloads.small_review()
    review["request"]["uid"] = uid
    review["request"]["object"] = obj
    return review


def small_pod() -> dict[str, Any]:
    pod: dict[str, Any] = payloads.small_review()["request"]["object"]
    return pod


def encoded_size(obj: dict[str, Any]) -> int:
    return len(orjson.dumps(review_of(obj)))


def repeated_probe_pod(size: int, *, unit: str = PROBE, tag: str = "") -> dict[str, Any]:
    """An flts trainer whose wait-for-mlflow script repeats a probe to about ``size`` bytes.

    ``tag`` goes into a comment at the top of the script, so that scripts can differ.
    """
    pod = small_pod()
    padding = size - encoded_size(pod)
    script = f"# {tag}\n" + unit * max(1, padding // len(unit))
    pod["spec"]["initContainers"][0]["command"] = ["sh", "-c", script]
    return pod


def status_names_pod(count: int) -> dict[str, Any]:
    """A pod whose status annotation lists ``count`` names in each of its lists."""
    pod = small_pod()
    names = [f"wait-for-service-{number}" for number in range(count)]
    status = {"removed": names, "rewritten": names, "env": [f"VAR_{n}" for n in range(count)]}
    pod["metadata"].setdefault("annotations", {})["backend-injector/status"] = (
        orjson.dumps(status).decode()
    )
    return pod


def nested_status_pod(depth: int) -> dict[str, Any]:
    pod = small_pod()
    pod["metadata"].setdefault("annotations", {})["backend-injector/status"] = (
        "[" * depth + "]" * depth
    )
    return pod


def unique_giant_pod(number: int, size: int, *, where: str) -> dict[str, Any]:
    """A pod made unique by a giant generateName, or by a giant waiter script."""
    pod = small_pod()
    tag = f"{number:08d}"
    if where == "name":
        pod["metadata"]["generateName"] = (tag * (size // len(tag)))[:size] + "-"
    else:
        pod["spec"]["initContainers"][0]["command"] = [
            "sh", "-c", f"# {tag}\n" + PROBE * (size // len(PROBE))
        ]
    return pod


def body_of(obj: dict[str, Any], uid: str = "hostile-1") -> bytes:
    return orjson.dumps(review_of(obj, uid))


# -- a server process --------------------------------------------------------------------------


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        return rss_of(self.pid)

    def tree_rss(self) -> int:
        """RSS of the server and of its review processes together."""
        return sum(rss_of(pid) for pid in [self.pid, *children_of(self.pid)])

    def cpu_seconds(self) -> float:
        """User and system time the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def alive(self) -> bool:
        return self.process.poll() is None


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    listed = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in listed.read_text().split()] if listed.exists() else []


def tls_pair(directory: Path) -> Path:
    ca = certs.build_ca(common_name="adversarial CA", days=1)
    serving_pair = certs.build_serving_certificate(
        ca=ca, hostnames=["localhost", HOST], days=1
    )
    certs.write_bundle(directory, ca=ca, serving=serving_pair)
    return directory


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@functools.cache
def client_context() -> ssl.SSLContext:
    """One context for every connection: building one loads the system's CAs (~25 ms)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_ready(running: Running, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running.alive():
            raise RuntimeError(f"server exited: {running.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, ssl.SSLError):
            status, _ = request_once(running.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 1)
            if status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("server not ready")


@contextlib.contextmanager
def serving(work: Path, *arguments: str, command: list[str] | None = None) -> Iterator[Running]:
    """``backend-injector serve`` on a free loopback port, logging to a file in ``work``."""
    tls = work / "tls"
    if not (tls / "tls.crt").exists():
        tls_pair(tls)
    port = free_port()
    log = work / f"server-{port}.log"
    base = command or [sys.executable, "-m", "webhook", "serve"]
    argv = [*base, "--host", HOST, "--port", str(port),
            "--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key"), *arguments]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    running = Running(process, port, log)
    try:
        wait_ready(running)
        yield running
    finally:
        if running.alive():
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- speaking to it ----------------------------------------------------------------------------


def tls_connect(port: int, timeout: float) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=timeout)
    return client_context().wrap_socket(raw, server_hostname="localhost")


def read_response(connection: ssl.SSLSocket) -> tuple[int, bytes]:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status, length = parse_head(head)
    body = bytearray(rest)
    while len(body) < length:
        chunk = connection.recv(1024 * 1024)
        if not chunk:
            break
        body += chunk
    return status, bytes(body[:length])


def request_once(port: int, request: bytes, timeout: float) -> tuple[int, bytes]:
    with tls_connect(port, timeout) as connection:
        connection.sendall(request)
        return read_response(connection)


@dataclass
class Timed:
    status: int
    seconds: float
    body: bytes


def timed_review(port: int, body: bytes, *, timeout: float = 60.0) -> Timed:
    """One review on a connection already open, timed from the first byte sent to the answer."""
    with tls_connect(port, timeout) as connection:
        request = build_request(body)
        started = time.perf_counter()
        connection.sendall(request)
        try:
            status, answer = read_response(connection)
        except (TimeoutError, ConnectionError):
            return Timed(0, time.perf_counter() - started, b"")
        return Timed(status, time.perf_counter() - started, answer)


class SmallReviews:
    """Small reviews paced on connections of their own, in a thread, while something else runs."""

    def __init__(self, port: int, *, rate: float = SMALL_RATE, connections: int = 4) -> None:
        self._port = port
        self._rate = rate
        self._connections = connections
        self._results: list[LoadResult] = []
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> SmallReviews:
        requests = [build_request(payloads.encoded(review))
                    for review in payloads.unique_reviews(200)]

        def target() -> None:
            self._results.append(run(HOST, self._port, requests, connections=self._connections,
                                     duration=seconds, rate=self._rate))

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        return self

    def result(self) -> LoadResult:
        assert self._thread is not None
        self._thread.join()
        (result,) = self._results
        return result


# -- the attacks -------------------------------------------------------------------------------


@dataclass
class ReviewFigures:
    """One hostile review: its answer, its time, what it cost in memory and log."""

    name: str
    body_bytes: int
    status: int
    seconds: float
    result: str
    log_bytes: int
    rss_after: int
    small_p99: float
    small_failed: int
    traceback_logged: bool

    def row(self) -> list[str]:
        return [self.name, f"{self.body_bytes / MIB:.2f} MiB", str(self.status or "timeout"),
                self.result, f"{self.seconds * 1000:.0f} ms", f"{self.small_p99 * 1000:.1f} ms",
                f"{self.log_bytes:,}", f"{self.rss_after / MIB:.0f} MiB",
                "yes" if self.traceback_logged else "no"]


def hostile_review(running: Running, name: str, obj: dict[str, Any], *,
                   timeout: float = 60.0) -> ReviewFigures:
    """Send one hostile review while small reviews run beside it."""
    body = body_of(obj, uid=f"hostile-{name}")
    log_before = running.log_size()
    small = SmallReviews(running.port).start(seconds=1.0)
    time.sleep(0.2)
    timed = timed_review(running.port, body, timeout=timeout)
    result = small.result()
    time.sleep(0.3)  # the review's log line is written after its answer
    log_text = running.log.read_bytes()[log_before:]
    outcome = ""
    if timed.status == 200:
        response = orjson.loads(timed.body)["response"]
        outcome = "patched" if "patch" in response else "unchanged"
        if response.get("warnings"):
            outcome += f", {len(response['warnings'])} warnings"
    hostile_lines = [line for line in log_text.splitlines() if f"hostile-{name}".encode() in line]
    return ReviewFigures(
        name=name, body_bytes=len(body), status=timed.status, seconds=timed.seconds,
        result=outcome, log_bytes=sum(len(line) + 1 for line in hostile_lines),
        rss_after=running.tree_rss(), small_p99=result.percentile(0.99),
        small_failed=result.failed, traceback_logged=b"Traceback" in log_text,
    )


@dataclass
class ConcurrentFigures:
    big_bytes: int
    big_answered: int
    big_max_seconds: float
    small: LoadResult

    @property
    def small_p99(self) -> float:
        return self.small.percentile(0.99)


def concurrent_giants(running: Running, obj: dict[str, Any], *, in_flight: int = 4,
                      seconds: float = 5.0, timeout: float = 60.0) -> ConcurrentFigures:
    """``in_flight`` giant reviews at all times (closed loop), small ones paced meanwhile.

    Every giant differs from every other (a number in its generateName, and wherever else
    ``obj`` holds the marker ``giant-00000000``), so none is answered from memory. They are sent
    from a process of their own, so that the time this process spends building and reading
    them (it holds the GIL) is not charged to the small reviews, and at a low CPU priority: in
    a cluster the apiserver that sends them runs elsewhere, here it shares the server's cores.
    """
    obj = copy.deepcopy(obj)
    obj["metadata"]["generateName"] = f"{GIANT_MARKER}-"
    request = build_request(body_of(obj, uid="giant"))
    context = multiprocessing.get_context("spawn")
    started, stop = context.Event(), context.Event()
    results: multiprocessing.Queue[list[float]] = context.Queue()
    sender = context.Process(target=_send_giants,
                             args=(running.port, request, in_flight, timeout, started, stop,
                                   results))
    sender.start()
    try:
        started.wait(timeout)
        time.sleep(0.5)  # the giants are in flight before the small reviews start
        small = SmallReviews(running.port).start(seconds=seconds).result()
        stop.set()
        latencies = results.get(timeout=timeout)
    finally:
        sender.join(timeout)
        if sender.is_alive():
            sender.kill()
    return ConcurrentFigures(len(request), len(latencies), max(latencies, default=float("nan")),
                             small)


def _send_giants(port: int, request: bytes, in_flight: int, timeout: float,
                 started: Any, stop: Any, results: Any) -> None:
    os.nice(10)
    counter = itertools.count()
    latencies: list[float] = []

    def giant_loop() -> None:
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError), \
                tls_connect(port, timeout) as connection:
            while not stop.is_set():
                unique = request.replace(GIANT_MARKER.encode(), b"giant-%08d" % next(counter))
                began = time.perf_counter()
                connection.sendall(unique)
                started.set()
                status, _ = read_response(connection)
                if status == 200:
                    latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=giant_loop, daemon=True) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    results.put(latencies)


@dataclass
class MemoryFigures:
    reviews: int
    each_bytes: int
    rss_before: int
    rss_after_stream: int
    rss_after_steady: int
    log_bytes: int
    seconds: float


def unique_giants(running: Running, *, count: int, size: int, where: str) -> MemoryFigures:
    """A stream of unique giant reviews on one connection, then steady small load."""
    warm = [build_request(payloads.encoded(review)) for review in payloads.unique_reviews(500)]
    run(HOST, running.port, warm, connections=4, count=2000)
    rss_before = running.tree_rss()
    log_before = running.log_size()
    started = time.perf_counter()
    each = 0
    with tls_connect(running.port, 120) as connection:
        for number in range(count):
            body = body_of(unique_giant_pod(number, size, where=where), uid=f"unique-{number}")
            each = len(body)
            connection.sendall(build_request(body))
            read_response(connection)
    seconds = time.perf_counter() - started
    rss_after_stream = running.tree_rss()
    log_bytes = running.log_size() - log_before
    run(HOST, running.port, warm, connections=4, count=2000)
    return MemoryFigures(count, each, rss_before, rss_after_stream, running.tree_rss(),
                         log_bytes, seconds)


@dataclass
class IdleFigures:
    opened: int
    review_status: int
    review_seconds: float
    still_open_after: int
    waited_seconds: float
    rss_with_idle: int


def idle_connections(running: Running, *, count: int, wait: float) -> IdleFigures:
    """``count`` TLS connections that finish the handshake and never send a request."""
    idle: list[ssl.SSLSocket] = []
    try:
        for _ in range(count):
            idle.append(tls_connect(running.port, 10))
        rss = running.tree_rss()
        body = body_of(small_pod(), uid="after-idle")
        timed = timed_review(running.port, body, timeout=10)
        time.sleep(wait)
        still_open = 0
        for connection in idle:
            connection.setblocking(False)
            try:
                still_open += connection.recv(1) != b""
            except ssl.SSLWantReadError:
                still_open += 1  # nothing to read: the server has not closed it
            except OSError:
                pass
        return IdleFigures(count, timed.status, timed.seconds, still_open, wait, rss)
    finally:
        for connection in idle:
            connection.close()


@dataclass
class HeaderFigures:
    offered_bytes: int
    sent_bytes: int
    status: int
    seconds: float
    server_cpu_seconds: float
    small_p99: float
    small_failed: int


def giant_header(running: Running, *, size: int, timeout: float = 60.0) -> HeaderFigures:
    """A request whose one header is ``size`` bytes long, sent as fast as the server reads."""
    small = SmallReviews(running.port).start(seconds=3.0)
    time.sleep(0.2)
    sent = 0
    status = 0
    cpu_before = running.cpu_seconds()
    started = time.perf_counter()
    chunk = b"a" * 65536
    with tls_connect(running.port, timeout) as connection:
        try:
            connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Padding: ")
            while sent < size and time.perf_counter() - started < timeout:
                connection.sendall(chunk)
                sent += len(chunk)
            connection.sendall(b"\r\nContent-Length: 2\r\n\r\n{}")
        except OSError:
            pass  # the server stopped reading and closed: what is wanted
        with contextlib.suppress(OSError, ConnectionError):
            connection.settimeout(5)
            status, _ = read_response(connection)
    seconds = time.perf_counter() - started
    cpu = running.cpu_seconds() - cpu_before
    result = small.result()
    return HeaderFigures(size, sent, status, seconds, cpu, result.percentile(0.99),
                         result.failed)


# -- the report --------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


SECTIONS = ("reviews", "concurrent", "memory", "header", "idle")


def measure_all(work: Path, label: str, only: tuple[str, ...] = SECTIONS) -> str:
    sections: list[str] = []
    for action in ("remove", "rewrite"):
        if "reviews" not in only and "concurrent" not in only:
            break
        with serving(work, "--action", action) as running:
            if "reviews" in only:
                sections.append(f"### One hostile review at a time (action {action})\n\n"
                                + one_at_a_time(running, action))
            if "concurrent" in only:
                sections.append(f"### Four 3 MiB reviews in flight (action {action})\n\n"
                                + four_in_flight(running, action))
    if "memory" in only:
        with serving(work) as running:
            sections.append("### A stream of unique giant reviews, then steady small load\n\n"
                            + stream_of_giants(running))
    if "header" in only:
        with serving(work) as running:
            header = giant_header(running, size=100 * MIB)
            print("header", header, flush=True)
            sections.append(
                "### A 100 MB request header\n\n"
                f"{header.sent_bytes / MIB:.1f} MiB of {header.offered_bytes / MIB:.0f} MiB "
                f"accepted by the client's socket before it was closed; status "
                f"{header.status or 'none'} after {header.seconds:.2f} s; server CPU "
                f"{header.server_cpu_seconds:.2f} s (small reviews included); small reviews "
                "meanwhile p99 "
                f"{header.small_p99 * 1000:.1f} ms, {header.small_failed} failed"
            )
    if "idle" in only:
        with serving(work) as running:
            idle = idle_connections(running, count=1000, wait=15.0)
            print("idle", idle, flush=True)
            sections.append(
                "### 1,000 idle TLS connections (the connection cap)\n\n"
                f"a review on a new connection while they are open: status "
                f"{idle.review_status or 'none'} in {idle.review_seconds * 1000:.0f} ms; after "
                f"{idle.waited_seconds:.0f} s, {idle.still_open_after} of {idle.opened} still "
                f"open; RSS with them open {idle.rss_with_idle / MIB:.0f} MiB"
            )
    return f"## {label}\n\n" + "\n\n".join(sections) + "\n"


def one_at_a_time(running: Running, action: str) -> str:
    rows = []
    cases = [
        ("probe-1MB", repeated_probe_pod(1_000_000)),
        ("probe-3MiB", repeated_probe_pod(OBJECT_LIMIT - 4096)),
        ("status-50k-names", status_names_pod(50_000)),
        ("status-nested-100k", nested_status_pod(100_000)),
    ]
    for name, obj in cases:
        figures = hostile_review(running, name, obj)
        print(action, figures, flush=True)
        rows.append(figures.row())
    return table(["attack", "body", "status", "answer", "time", "small p99 meanwhile",
                  "log bytes", "RSS after", "traceback"], rows)


def four_in_flight(running: Running, action: str) -> str:
    giants = concurrent_giants(running, repeated_probe_pod(OBJECT_LIMIT - 4096, tag=GIANT_MARKER))
    print(action, "concurrent", giants.big_answered, giants.big_max_seconds, giants.small_p99,
          flush=True)
    small = giants.small
    return (
        f"{giants.big_answered} giant reviews answered in 5 s, slowest "
        f"{giants.big_max_seconds * 1000:.0f} ms; small reviews meanwhile: {small.answered} "
        f"answered, p50 {small.percentile(0.5) * 1000:.1f} ms, p99 "
        f"{giants.small_p99 * 1000:.1f} ms, max {max(small.latencies, default=0) * 1000:.0f} "
        f"ms, {small.failed} failed"
    )


def stream_of_giants(running: Running) -> str:
    rows = []
    for where in ("name", "script"):
        memory = unique_giants(running, count=40, size=2 * MIB, where=where)
        print("unique", where, memory, flush=True)
        rows.append([f"unique 2 MiB {where}s", str(memory.reviews),
                     f"{memory.rss_before / MIB:.0f} MiB",
                     f"{memory.rss_after_stream / MIB:.0f} MiB",
                     f"{memory.rss_after_steady / MIB:.0f} MiB",
                     f"{memory.log_bytes:,}", f"{memory.seconds:.1f} s"])
    return table(["attack", "reviews", "RSS before", "RSS after stream",
                  "RSS after steady load", "log bytes", "time"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="measured")
    parser.add_argument("--out", type=Path, default=RESULTS / "adversarial-run.md")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adversarial-") as work:
        text = measure_all(Path(work), args.label, tuple(args.only))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

