"""Hostile pods and hostile clients against a real server process, each bound measured.

Every test runs the attacks of benchmarks/adversarial.py against `backend-injector serve` on
127.0.0.1 and asserts the bound SECURITY.md states for it. Each prints the figure it measured
(run with ``-s`` to see them). Counts and sizes are fixed, so each test takes a bounded time.

The bounds in wall-clock time are checked over up to ``ROUNDS`` rounds, and hold when one
round meets them: on a machine shared with other work, a round can lose the CPU for longer
than the bound itself. Every round's figure is printed. A webhook that stalls does so in every
round (before these bounds, a 1 MB review held every other one for seconds).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest

from benchmarks import adversarial as attacks
from benchmarks.loadgen import build_request
from webhook.serving.app import DEFAULT_BODY_LIMIT
from webhook.serving.logs import MOST_LISTED, NAME_LENGTH

MIB = attacks.MIB
REVIEW_SECONDS = 0.25  # any review up to the apiserver's 3 MiB object limit
SMALL_P99_SECONDS = 0.05  # small reviews while four giant ones are in flight
CACHE_BUDGET = 32 * MIB  # every cache of every process together (SECURITY.md)
LOG_LINE_LIMIT = 16 * 1024  # one review's line, names of plain characters
STATUS = "backend-injector/status"
ROUNDS = 8


def best_of(measure: Callable[[], float], bound: float, what: str) -> float:
    """The first of up to ROUNDS measurements within ``bound``, else the smallest seen."""
    seen = []
    for _ in range(ROUNDS):
        seen.append(measure())
        figure(what, f"{seen[-1] * 1000:.1f} ms")
        if seen[-1] <= bound:
            break
    return min(seen)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adversarial")


@pytest.fixture(scope="module", params=["remove", "rewrite"])
def hostile_server(request: pytest.FixtureRequest, work: Path) -> Iterator[attacks.Running]:
    with attacks.serving(work, "--action", request.param) as running:
        yield running


@pytest.fixture(scope="module")
def default_server(work: Path) -> Iterator[attacks.Running]:
    with attacks.serving(work) as running:
        yield running


def figure(name: str, value: object) -> None:
    print(f"\n[measured] {name}: {value}")


def answer_of(timed: attacks.Timed) -> dict[str, Any]:
    assert timed.status == 200, timed
    response: dict[str, Any] = orjson.loads(timed.body)["response"]
    return response


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(obj, operations)
    return result


def init_names(obj: dict[str, Any]) -> list[str]:
    return [container["name"] for container in obj["spec"].get("initContainers", [])]


# -- time --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1_000_000, attacks.OBJECT_LIMIT - 4096], ids=["1MB", "3MiB"])
def test_a_giant_repeated_probe_script_is_answered_in_bounded_time(
    hostile_server: attacks.Running, size: int
) -> None:
    rounds = iter(range(ROUNDS))

    def review_seconds() -> float:
        # A script of its own each round: none is read from the rules' memory of programs.
        name = f"probe-{size}-{next(rounds)}"
        obj = attacks.repeated_probe_pod(size, tag=name)
        figures = attacks.hostile_review(hostile_server, name, obj)
        assert figures.status == 200 and figures.result.startswith("patched")
        assert figures.small_failed == 0
        return figures.seconds

    seconds = best_of(review_seconds, REVIEW_SECONDS, f"{size:,} byte repeated-probe review")
    assert seconds <= REVIEW_SECONDS


def test_a_status_annotation_of_tens_of_thousands_of_names_is_answered_in_bounded_time(
    hostile_server: attacks.Running,
) -> None:
    obj = attacks.status_names_pod(50_000)

    def review_seconds() -> float:
        timed = attacks.timed_review(hostile_server.port, attacks.body_of(obj, uid="names"))
        status = json.loads(patched(obj, answer_of(timed))["metadata"]["annotations"][STATUS])
        assert "wait-for-mlflow" in status["removed"] + status["rewritten"]
        return timed.seconds

    seconds = best_of(review_seconds, REVIEW_SECONDS, "3.2 MiB review, 150,000 status names")
    assert seconds <= REVIEW_SECONDS


def test_four_giant_reviews_in_flight_leave_small_reviews_fast(
    hostile_server: attacks.Running,
) -> None:
    """Small reviews keep a p99 under 50 ms beside four 3 MiB reviews in flight.

    Each round first measures small reviews alone. On a machine so busy that they alone take
    half the bound at p99 (other work holds the cores), the round asks instead that the giants
    add less than the bound to it: what is tested is what the webhook does, which on a quiet
    machine is the absolute bound itself. A webhook that lets a giant hold its event loop adds
    seconds either way (before these bounds: a p99 of 5 s).
    """
    obj = attacks.repeated_probe_pod(attacks.OBJECT_LIMIT - 4096, tag=attacks.GIANT_MARKER)
    results: list[tuple[float, float]] = []

    def excess_over_bound() -> float:
        alone = attacks.SmallReviews(hostile_server.port).start(seconds=3.0).result().percentile(
            0.99)
        found = attacks.concurrent_giants(hostile_server, obj, in_flight=4, seconds=5.0)
        figure("small reviews alone, then beside four 3 MiB ones",
               f"p99 {alone * 1000:.1f} ms, then {found.small_p99 * 1000:.1f} ms; giants: "
               f"{found.big_answered} answered, slowest {found.big_max_seconds * 1000:.0f} ms")
        assert found.small.failed == 0, (found.small.statuses, found.small.errors)
        assert found.small.answered >= 400
        assert found.big_answered >= 4
        results.append((alone, found.small_p99))
        busy = alone >= SMALL_P99_SECONDS / 2
        return (found.small_p99 - alone) if busy else found.small_p99

    best_of(excess_over_bound, SMALL_P99_SECONDS,
            "p99 beside the giants (less the p99 alone, on a busy machine)")
    assert any(
        beside < SMALL_P99_SECONDS
        or (alone >= SMALL_P99_SECONDS / 2 and beside - alone < SMALL_P99_SECONDS)
        for alone, beside in results
    ), results


# -- garbage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    ["[" * 100_000 + "]" * 100_000, '{"removed": ' * 50_000 + "1" + "}" * 50_000,
     "not json", '"a string"', '{"removed": "wait-for-mlflow", "env": 12}'],
    ids=["nested-list", "nested-object", "not-json", "wrong-type", "wrong-member-types"],
)
def test_a_garbage_status_annotation_is_treated_as_absent(
    default_server: attacks.Running, status: str
) -> None:
    obj = attacks.small_pod()
    obj["metadata"].setdefault("annotations", {})[STATUS] = status
    log_before = default_server.log_size()
    response = answer_of(attacks.timed_review(default_server.port,
                                              attacks.body_of(obj, uid="garbage-status")))
    result = patched(obj, response)
    assert "wait-for-mlflow" not in init_names(result)
    rewritten = json.loads(result["metadata"]["annotations"][STATUS])
    assert rewritten["removed"] == ["wait-for-mlflow"]
    time.sleep(0.2)
    assert b"Traceback" not in default_server.log.read_bytes()[log_before:]


# -- memory and logs ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["name", "script"])
def test_unique_giant_reviews_keep_memory_and_log_bounded(
    work: Path, where: str
) -> None:
    with attacks.serving(work) as running:
        found = attacks.unique_giants(running, count=30, size=2 * MIB, where=where)
    growth = found.rss_after_steady - found.rss_before
    figure(f"RSS after 30 unique 2 MiB {where}s", f"{found.rss_before / MIB:.0f} -> "
           f"{found.rss_after_stream / MIB:.0f} -> {found.rss_after_steady / MIB:.0f} MiB; "
           f"log {found.log_bytes:,} bytes; {found.seconds:.1f} s")
    assert growth <= CACHE_BUDGET
    assert found.log_bytes <= found.reviews * LOG_LINE_LIMIT


def test_one_review_log_line_is_bounded_and_says_what_it_left_out(
    default_server: attacks.Running,
) -> None:
    obj = attacks.small_pod()
    obj["metadata"]["generateName"] = "x" * 1_000_000
    waiter = obj["spec"]["initContainers"][0]
    obj["spec"]["initContainers"] = [
        {**waiter, "name": f"wait-for-mlflow-{number}-" + "y" * 300} for number in range(400)
    ]
    log_before = default_server.log_size()
    response = answer_of(attacks.timed_review(default_server.port,
                                              attacks.body_of(obj, uid="long-names")))
    assert init_names(patched(obj, response)) == []
    time.sleep(0.3)
    lines = [line for line in default_server.log.read_bytes()[log_before:].splitlines()
             if b'"long-names"' in line]
    (line,) = lines
    figure("log line of a review naming 400 containers of 320 characters",
           f"{len(line):,} bytes")
    assert len(line) <= LOG_LINE_LIMIT
    logged = json.loads(line)
    assert len(logged["pod"]) <= NAME_LENGTH + 32
    assert len(logged["removed"]) == MOST_LISTED
    assert logged["removed_more"] == 400 - MOST_LISTED
    assert all(len(name) <= NAME_LENGTH + 32 for name in logged["removed"])
    assert len(json.dumps(response.get("warnings", []))) <= 8 * 200


# -- connections -------------------------------------------------------------------------------


def serve_with_short_timeouts() -> None:
    """``backend-injector serve`` with short timeouts and a small cap, for the tests below."""
    from webhook.serving.logs import configure_logging
    from webhook.serving.server import serve
    from webhook.settings import load_settings

    parser = argparse.ArgumentParser()
    for flag in ("--host", "--port", "--tls-cert", "--tls-key"):
        parser.add_argument(flag)
    args = parser.parse_args()
    configure_logging()
    settings = load_settings(overrides={"host": args.host, "port": args.port,
                                        "tls_cert": args.tls_cert, "tls_key": args.tls_key})
    serve(replace(settings, serving=replace(
        settings.serving, keep_alive_seconds=2, max_connections=8, request_seconds=2.0,
    )))


SHORT_TIMEOUTS = [sys.executable, "-c",
                  "from tests.serving.test_adversarial import serve_with_short_timeouts as s; s()"]


@pytest.fixture(scope="module")
def short_server(work: Path) -> Iterator[attacks.Running]:
    with attacks.serving(work, command=SHORT_TIMEOUTS) as running:
        yield running


def closed_by_server(connection: ssl.SSLSocket, within: float) -> bool:
    connection.settimeout(within)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def raw_response(connection: ssl.SSLSocket) -> tuple[int, dict[str, Any]]:
    status, body = attacks.read_response(connection)
    return status, json.loads(body)


def test_a_thousand_idle_tls_connections_cannot_hold_the_cap(
    default_server: attacks.Running,
) -> None:
    found = attacks.idle_connections(default_server, count=1010, wait=0.5)
    figure("a review while 1,010 idle TLS connections are open",
           f"status {found.review_status} in {found.review_seconds * 1000:.0f} ms; "
           f"{found.still_open_after} still open")
    assert found.review_status == 200
    assert found.still_open_after <= 1000 - 1  # the cap, less the review's own connection


def test_an_idle_tls_connection_is_closed_after_the_idle_timeout(
    short_server: attacks.Running,
) -> None:
    started = time.monotonic()
    connections = [attacks.tls_connect(short_server.port, 5) for _ in range(4)]
    try:
        closed = [closed_by_server(connection, within=6) for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    figure("idle TLS connections closed by the server", f"{sum(closed)} of 4 within "
           f"{time.monotonic() - started:.1f} s (idle timeout 2 s)")
    assert all(closed)


def test_a_request_that_never_completes_gets_408(short_server: attacks.Running) -> None:
    with attacks.tls_connect(short_server.port, 10) as connection:
        connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        started = time.monotonic()
        status, error = raw_response(connection)
    figure("a request head left incomplete", f"{status} after {time.monotonic() - started:.1f} s")
    assert status == 408 and "error" in error


def test_the_cap_refuses_requests_with_json_503_when_no_connection_is_idle(
    short_server: attacks.Running,
) -> None:
    busy = [attacks.tls_connect(short_server.port, 5) for _ in range(8)]
    try:
        for connection in busy:  # each one in the middle of a request, so none is idle
            connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n")
        time.sleep(0.2)
        with attacks.tls_connect(short_server.port, 5) as late:
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, error = raw_response(late)
        assert status == 503 and "error" in error
    finally:
        for connection in busy:
            connection.close()
    # The cap recovers by itself: once those connections go, requests are served again.
    time.sleep(0.2)
    status, _ = attacks.request_once(short_server.port,
                                     b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 5)
    assert status == 200


def test_a_100_mb_header_is_refused_without_being_read(default_server: attacks.Running) -> None:
    received_before = bytes_read(default_server.pid)
    found = attacks.giant_header(default_server, size=100 * MIB)
    read = bytes_read(default_server.pid) - received_before
    figure("a 100 MB header", f"status {found.status} after {found.seconds:.2f} s; the server "
           f"read {read / MIB:.1f} MiB (small reviews included); small p99 "
           f"{found.small_p99 * 1000:.1f} ms")
    assert found.status == 431
    assert read < 8 * MIB
    assert found.small_failed == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_without_being_read(
    default_server: attacks.Running, chunked: bool
) -> None:
    received_before = bytes_read(default_server.pid)
    head = (b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n"
            + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
               else b"Content-Length: %d\r\n\r\n" % (100 * MIB)))
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536) if chunked else b" " * 65536
    sent = 0
    status = 0
    with attacks.tls_connect(default_server.port, 10) as connection:
        try:
            connection.sendall(head)
            while sent < 100 * MIB:
                connection.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # cut off by the server, as it should be
        with contextlib.suppress(OSError, ConnectionError):
            status, _ = attacks.read_response(connection)
    read = bytes_read(default_server.pid) - received_before
    figure(f"a 100 MB body ({'chunked' if chunked else 'Content-Length'})",
           f"status {status}; the server read {read / MIB:.1f} MiB")
    assert status == 413
    assert read < DEFAULT_BODY_LIMIT + 5 * MIB  # the limit, and what was in flight past it


@pytest.mark.parametrize(
    "request_bytes",
    [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"],
)
def test_the_servers_own_400_is_json(
    default_server: attacks.Running, request_bytes: bytes
) -> None:
    with attacks.tls_connect(default_server.port, 5) as connection:
        connection.sendall(request_bytes)
        status, error = raw_response(connection)
    assert status == 400 and "error" in error


def bytes_read(pid: int) -> int:
    """Bytes the process has read from files and sockets so far (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")



# -- bodies no CREATE review can reach ---------------------------------------------------------

# Larger than any CREATE review the apiserver can send (the body limit: its 3 MiB object limit
# and a generous envelope), and smaller than the old limit, which let such bodies wait for the
# review process among the real big reviews.
OVERSIZE = DEFAULT_BODY_LIMIT + MIB
# How far a sender that waits for the answer goes into its body before it does.
BODY_START = 64 * 1024


class OversizeFlood:
    """Threads sending oversize reviews back to back, each on a new connection, until stopped.

    Half the sends are the whole request at once (whose answer may be lost when the server cuts
    the connection under the rest of the body); the other half send the head and the first
    64 KiB and then wait for the answer, which a server that refuses at once gives, and one
    that reads the body first gives only after its request time limit (408).
    """

    def __init__(self, port: int, body: bytes, *, senders: int) -> None:
        self._port = port
        self._request = build_request(body)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.cut = 0
        self._threads = [threading.Thread(target=self._send, args=(whole,), daemon=True)
                         for whole in [True, False] * (senders // 2)]

    def start(self) -> OversizeFlood:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self, whole: bool) -> None:
        while not self._stop.is_set():
            status = 0
            with contextlib.suppress(OSError, ConnectionError), \
                    attacks.tls_connect(self._port, 15) as connection:
                with contextlib.suppress(OSError):
                    connection.sendall(
                        self._request if whole
                        else self._request[:self._request.index(b"\r\n\r\n") + 4 + BODY_START])
                status, _ = attacks.read_response(connection)
            with self._lock:
                if status:
                    self.statuses[status] += 1
                else:
                    self.cut += 1


def errors_counted(port: int) -> dict[str, float]:
    """The server's ``backend_injector_errors_total`` by kind."""
    status, body = attacks.request_once(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 10)
    assert status == 200
    counted = {}
    for line in body.decode().splitlines():
        if line.startswith("backend_injector_errors_total{"):
            labels, _, value = line.partition("} ")
            counted[labels.split('kind="', 1)[1].rstrip('"')] = float(value)
    return counted


def test_bodies_no_create_review_can_reach_get_413_while_a_real_big_review_is_served(
    default_server: attacks.Running,
) -> None:
    legit_obj = attacks.repeated_probe_pod(1_200_000, tag="legit-big")
    legit = attacks.body_of(legit_obj, uid="legit-big")
    oversize = attacks.body_of(attacks.repeated_probe_pod(OVERSIZE, tag="oversize"))
    assert 1_100_000 < len(legit) < DEFAULT_BODY_LIMIT < len(oversize)
    before = errors_counted(default_server.port)
    flood = OversizeFlood(default_server.port, oversize, senders=6).start()
    try:
        time.sleep(0.5)  # the flood is on before the reviews that must get through
        small = attacks.SmallReviews(default_server.port).start(seconds=3.0)
        answers = [attacks.timed_review(default_server.port, legit, timeout=30)
                   for _ in range(3)]
        small_result = small.result()
    finally:
        flood.stop()
    after = errors_counted(default_server.port)
    refused = after.get("body-too-large", 0) - before.get("body-too-large", 0)
    figure("oversize flood (6 senders) beside a 1.2 MB review and small ones",
           f"oversize answered {dict(flood.statuses)}, {flood.cut} cut, {refused:.0f} refused "
           f"in all; the 1.2 MB review: {[a.status for a in answers]} in "
           f"{[round(a.seconds * 1000) for a in answers]} ms; small p99 "
           f"{small_result.percentile(0.99) * 1000:.1f} ms")
    assert set(flood.statuses) == {413}, flood.statuses
    assert flood.statuses[413] >= 10
    assert refused >= sum(flood.statuses.values())
    for answer in answers:
        response = answer_of(answer)
        assert "wait-for-mlflow" not in init_names(patched(legit_obj, response))
    assert small_result.failed == 0, (small_result.statuses, small_result.errors)
    assert small_result.answered >= 200
    # None of the oversize bodies took a place among the big reviews waiting.
    assert after.get("busy", 0) == before.get("busy", 0)
