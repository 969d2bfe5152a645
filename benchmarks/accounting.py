"""Where the time of one review goes: the server built up one part at a time.

``python -m benchmarks.accounting`` serves the all-different load (the benchmark's 8,192
distinct small pods, 16 keep-alive TLS connections) to a sequence of servers, each on the
same uvicorn, TLS and connection-limit stack as ``serve``, each adding one part of the real
request path to the one before:

1. ``stack``: read the body, answer a fixed review (the ``limit`` variant);
2. ``answer size``: the same, with a fixed answer as long as the real one;
3. ``JSON parse``: ``orjson.loads`` of the body;
4. ``rules``: the review itself (envelope, rules, patch and answer encoding), no cache;
5. ``review cache``: the same handler with its cache, as served (every pod misses it);
6. ``metrics``: the Prometheus counters and histogram of each review;
7. ``log line``: the review's log line, written to a file as a pod's log would be;
8. ``serve``: the real command (its routing, readiness and health prober besides).

Each is measured as the server's own CPU time per answered review (user + system, from
``/proc``), which other processes on the machine inflate less than they do throughput, in
alternating rounds; medians. The difference between consecutive stages is what that part
costs. Writes ``results/accounting.md``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import payloads
from benchmarks.__main__ import (
    CONNECTIONS,
    RESULTS,
    UNIQUE_PODS,
    free_port,
    machine,
    wait_until_up,
)
from benchmarks.loadgen import build_request, run
from benchmarks.variants import FIXED_REVIEW
from webhook import certs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

STAGES = ("stack", "answer size", "JSON parse", "rules", "review cache", "metrics", "log line",
          "serve")


@dataclass
class StageFigures:
    cpu_per_review: list[float]
    throughput: list[float]


def stage_app(stage: str) -> App:
    """The ASGI app of one stage, built from the webhook's own parts."""
    import orjson

    from webhook.rules.mutate import Rules
    from webhook.serving.admission import AdmissionHandler
    from webhook.serving.app import log_review, send_answer
    from webhook.serving.metrics import Metrics
    from webhook.serving.review_cache import ReviewCache
    from webhook.settings import load_settings

    position = STAGES.index(stage)
    settings = load_settings()
    cache = ReviewCache[Any]() if position >= STAGES.index("review cache") else ReviewCache(
        entries=0)
    handler = AdmissionHandler(Rules(settings), cache=cache)
    metrics = Metrics()
    real_length = len(handler.review(payloads.encoded(payloads.small_review())).body)
    fixed = FIXED_REVIEW if stage == "stack" else payloads.fixed_answer(real_length)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if scope["path"] == "/readyz" or position < STAGES.index("JSON parse"):
            await send_answer(send, 200, fixed)
            return
        if position == STAGES.index("JSON parse"):
            orjson.loads(body)
            await send_answer(send, 200, fixed)
            return
        started = time.perf_counter()
        outcome = handler.review(body)
        seconds = time.perf_counter() - started
        await send_answer(send, 200, outcome.body)
        if position >= STAGES.index("metrics"):
            metrics.observe_review(outcome, seconds)
        if position >= STAGES.index("log line"):
            log_review(outcome, seconds)

    return app


def command_for(stage: str, port: int, tls: Path) -> list[str]:
    tls_args = ["--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
    if stage == "serve":
        return [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1",
                "--port", str(port), *tls_args]
    return [sys.executable, "-m", "benchmarks.accounting", "--serve-stage", stage,
            "--port", str(port), *tls_args]


def serve_stage(stage: str, port: int, cert: Path, key: Path) -> None:
    """Serve one stage on the stack ``serve`` uses, logging as ``serve`` does (JSON lines)."""
    import uvicorn

    from webhook.serving.logs import configure_logging
    from webhook.serving.server import uvicorn_config
    from webhook.serving.tls import CertificatePair
    from webhook.settings import Serving

    configure_logging("INFO", "json")
    config, _ = uvicorn_config(stage_app(stage), Serving(), CertificatePair(cert, key))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(2048)
    uvicorn.Server(config).run(sockets=[listener])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_stage(stage: str, requests: list[bytes], seconds: float, work: Path) -> tuple[
        float, float]:
    return measure_server(lambda port: command_for(stage, port, work / "tls"), requests,
                          seconds, work)


def measure_server(
    command: Callable[[int], list[str]], requests: list[bytes], seconds: float, work: Path,
    directory: Path | None = None, environment: dict[str, str] | None = None,
) -> tuple[float, float]:
    """The server's CPU seconds per answered review under ``requests``, and reviews/s."""
    port = free_port()
    with (work / "server.log").open("ab") as log:
        process = subprocess.Popen(command(port), stdout=log, stderr=log, cwd=directory,
                                   env=environment)
    try:
        wait_until_up(port)
        run("127.0.0.1", port, requests, connections=CONNECTIONS, duration=1.0)  # warm up
        before = cpu_seconds(process.pid)
        result = run("127.0.0.1", port, requests, connections=CONNECTIONS, duration=seconds)
        used = cpu_seconds(process.pid) - before
        if result.failed:
            raise RuntimeError(f"{' '.join(command(port))}: {result.failed} requests failed")
        return used / result.answered, result.throughput
    finally:
        process.terminate()
        process.wait(timeout=30)


def prepare(work: Path) -> list[bytes]:
    """A serving certificate under ``work/tls``, and the all-different requests."""
    ca = certs.build_ca(common_name="accounting CA", days=1)
    pair = certs.build_serving_certificate(ca=ca, hostnames=["localhost", "127.0.0.1"], days=1)
    certs.write_bundle(work / "tls", ca=ca, serving=pair)
    return [build_request(payloads.encoded(review))
            for review in payloads.unique_reviews(UNIQUE_PODS)]


def run_accounting(rounds: int, seconds: float, work: Path) -> dict[str, StageFigures]:
    requests = prepare(work)
    found = {stage: StageFigures([], []) for stage in STAGES}
    order = list(STAGES)
    for number in range(rounds):
        print(f"round {number + 1}/{rounds}", file=sys.stderr)
        for stage in order:
            cpu, throughput = measure_stage(stage, requests, seconds, work)
            found[stage].cpu_per_review.append(cpu)
            found[stage].throughput.append(throughput)
        order = order[1:] + order[:1]
    return found


def report(found: dict[str, StageFigures], rounds: int, seconds: float) -> str:
    lines = [
        "# Where a review's time goes (all pods different)",
        "",
        "Machine: " + "; ".join(f"{key}: {value}" for key, value in machine().items()) + ".",
        f"Load: {CONNECTIONS} keep-alive TLS connections, {UNIQUE_PODS:,} distinct small pods; "
        f"{rounds} alternating rounds of {seconds:g} s per stage; medians. CPU is the server "
        "process's own (user + system) per answered review.",
        "",
        "| stage | adds | server CPU µs/review | lowest–highest | this part, µs | reviews/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    described = {
        "stack": "uvicorn, httptools, TLS, connection limits; fixed answer",
        "answer size": "a fixed answer as long as the real one",
        "JSON parse": "orjson.loads of the review",
        "rules": "envelope, rules, patch, answer encoding",
        "review cache": "cache key and store (all misses)",
        "metrics": "Prometheus counters and histogram",
        "log line": "one JSON log line per review",
        "serve": "the real command: routing, readiness, health prober",
    }
    previous: float | None = None
    for stage in STAGES:
        cpu = statistics.median(found[stage].cpu_per_review) * 1e6
        part = "" if previous is None else f"{cpu - previous:+.0f}"
        spread = (f"{min(found[stage].cpu_per_review) * 1e6:.0f}–"
                  f"{max(found[stage].cpu_per_review) * 1e6:.0f}")
        lines.append(f"| {stage} | {described[stage]} | {cpu:.0f} | {spread} | {part} | "
                     f"{statistics.median(found[stage].throughput):,.0f} |")
        previous = cpu
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--serve-stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-cert", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tls-key", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stage:
        serve_stage(args.serve_stage, args.port, args.tls_cert, args.tls_key)
        return
    with tempfile.TemporaryDirectory(prefix="backend-injector-accounting-") as work:
        found = run_accounting(args.rounds, args.seconds, Path(work))
    text = report(found, args.rounds, args.seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accounting.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
