"""Where the running server spends its time under the all-different load, by sampling it.

``python -m benchmarks.profile`` starts the real ``serve``, drives it with the benchmark's
8,192 distinct small pods over 16 keep-alive TLS connections, and samples its event-loop
thread with py-spy, native frames included (so TLS, JSON, the garbage collector and system
calls are seen for what they are; py-spy pauses the process for each such sample, which
slows it down). Each sample is put in the first category that matches its stack, read from
the innermost frame outwards, and the shares are turned into microseconds with the server's
own CPU time per review, measured unsampled on the same server just before. Writes
``results/profile.md``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.__main__ import CONNECTIONS, RESULTS, free_port, machine, wait_until_up
from benchmarks.accounting import cpu_seconds, prepare
from benchmarks.compare import serve_command
from benchmarks.loadgen import run

# (category, substrings of a frame that place a sample in it), tried frame by frame from the
# innermost outwards, the categories in this order for each frame.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("garbage collection", ("gc_collect", "collect_with_callback", "gc.collect")),
    ("log line", ("webhook/serving/logs.py", "log_review")),
    ("metrics", ("prometheus_client", "webhook/serving/metrics.py")),
    ("JSON parse and encode", ("orjson",)),
    ("base64 of the patch", ("binascii", "base64.py")),
    ("rules", ("webhook/rules/",)),
    ("review cache", ("webhook/serving/review_cache.py", "blake2")),
    ("envelope and answer", ("webhook/serving/admission.py",)),
    ("TLS", ("libssl", "libcrypto", "_ssl", "ssl.py", "SSLProtocol")),
    ("system calls and libc", ("libc.so.6) ", "write (libc", "read (libc", "writev", "recv",
                             "send (libc")),
    ("HTTP parsing and protocol", ("httptools", "llhttp", "parser.c", "uvicorn/protocols",
                                   "webhook/serving/connections.py",
                                   "webhook/serving/coalescing.py")),
    ("the endpoint (body, answer)", ("webhook/serving/app.py",)),
    ("event loop and tasks", ("loop.c", "libuv", "uv_", "_asynciomodule", "asyncio/")),
)
OTHER = "interpreter, other"


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for category, markers in CATEGORIES:
            if any(marker in frame for marker in markers):
                return category
    return OTHER


def profile(seconds: float, work: Path) -> tuple[collections.Counter[str], float, float]:
    """Samples by category, the server's CPU µs per review, and reviews/s."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    requests = prepare(work)
    port = free_port()
    with (work / "server.log").open("ab") as log:
        server = subprocess.Popen(serve_command(port, work / "tls"), stdout=log, stderr=log)
    try:
        wait_until_up(port)
        run("127.0.0.1", port, requests, connections=CONNECTIONS, duration=2.0)
        # CPU per review unsampled: py-spy's pauses inflate the sampled run's own.
        before = cpu_seconds(server.pid)
        unsampled = run("127.0.0.1", port, requests, connections=CONNECTIONS, duration=seconds)
        used = cpu_seconds(server.pid) - before
        raw = work / "samples.txt"
        sampler = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.pid), "--native",
             "--rate", "250", "--duration", str(int(seconds)), "--format", "raw",
             "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=(work / "py-spy.log").open("wb"))
        time.sleep(0.5)  # py-spy attached
        run("127.0.0.1", port, requests, connections=CONNECTIONS, duration=seconds)
        if sampler.wait(timeout=seconds + 60) != 0 or not raw.exists():
            raise RuntimeError("py-spy: " + (work / "py-spy.log").read_text()[-500:])
    finally:
        server.terminate()
        server.wait(timeout=30)
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        # The event loop's thread only (the health prober and others sleep).
        if "_run_worker" not in stack:
            continue
        counts[classify(stack.split(";"))] += int(number)
    return counts, used / unsampled.answered * 1e6, unsampled.throughput


def report(counts: collections.Counter[str], cpu_us: float, throughput: float,
           seconds: float) -> str:
    total = sum(counts.values())
    lines = [
        "# The running server, sampled (all pods different)",
        "",
        "Machine: " + "; ".join(f"{key}: {value}" for key, value in machine().items()) + ".",
        f"py-spy at 250 Hz with native frames for {seconds:g} s on `serve` under "
        f"{CONNECTIONS} keep-alive TLS connections of distinct small pods. Unsampled, the same "
        f"server answered {throughput:,.0f} reviews/s at {cpu_us:.0f} µs of its CPU per review "
        "just before. Each sample goes to the first category its stack matches from the "
        "innermost frame out; µs = share × that CPU per review.",
        "",
        "| where | share of samples | µs per review |",
        "| --- | ---: | ---: |",
    ]
    for category, count in counts.most_common():
        lines.append(f"| {category} | {count / total:.1%} | {count / total * cpu_us:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backend-injector-profile-") as work:
        counts, cpu_us, throughput = profile(args.seconds, Path(work))
    text = report(counts, cpu_us, throughput, args.seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
