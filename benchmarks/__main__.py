"""Benchmarks: ``python -m benchmarks [--quick]`` writes a report and a plot to results/.

Every variant runs as its own server process on 127.0.0.1 with the same uvicorn, TLS and worker
settings; the load generator (benchmarks/loadgen.py) runs in this process. Variants are
measured side by side in alternating rounds so that drift on the machine (another process, a
thermal change) touches all of them alike; each figure is the median over the rounds.

Measured:
* throughput, closed loop at a fixed number of keep-alive connections: a small pod repeated (as
  replicas arrive), small pods all different, and a large pod;
* latency p50/p99/max at a paced rate (1,000 reviews/s), small pods all different;
* RSS of a backend-injector worker after 10k and 200k reviews, and time from start to ready;
* how busy the load generator was, to show it is not the bottleneck.

``--quick`` (under two minutes) is what CI runs, for information; the committed report comes
from a full run.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httpx

from benchmarks import payloads
from benchmarks.loadgen import LoadResult, build_request, run
from webhook import certs
from webhook.serving.review_cache import DEFAULT_ENTRIES

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("limit", "floor", "naive", "backend-injector", "backend-injector-2w")
# With --baseline TREE, backend-injector as another tree has it (an earlier commit, checked
# out beside this one) runs in the same alternating rounds, one and two workers.
BASELINE = "baseline"
BASELINE_VARIANTS = (BASELINE, f"{BASELINE}-2w")
CONNECTIONS = 16
PACED_RATE = 1000
# "All different" pods: twice what the review cache can hold, so that none is answered from it.
UNIQUE_PODS = 2 * DEFAULT_ENTRIES


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    seconds: float  # each closed-loop measurement
    paced_seconds: float
    memory_reviews: tuple[int, int]
    starts: int


QUICK = Mode("quick", rounds=2, seconds=2.0, paced_seconds=3.0, memory_reviews=(10_000, 30_000),
             starts=3)
FULL = Mode("full", rounds=3, seconds=8.0, paced_seconds=10.0,
            memory_reviews=(10_000, 200_000), starts=7)


@dataclass
class Measurements:
    throughput: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    wrk: dict[str, list[float]] = field(default_factory=dict)  # a C load generator, to compare
    paced: dict[str, LoadResult] = field(default_factory=dict)
    generator_busy: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    start_to_ready: list[float] = field(default_factory=list)


def variants_of(baseline: Path | None) -> tuple[str, ...]:
    return VARIANTS + BASELINE_VARIANTS if baseline is not None else VARIANTS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(port: int, timeout: float = 30.0) -> float:
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        try:
            httpx.get(f"https://127.0.0.1:{port}/readyz", verify=False, timeout=1)
            return time.perf_counter() - started
        except httpx.HTTPError:
            time.sleep(0.01)
    raise RuntimeError(f"server on port {port} did not come up")


def command_for(variant: str, port: int, tls: Path) -> list[str]:
    tls_args = ["--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
    if variant.startswith(("backend-injector", BASELINE)):
        workers = ["--workers", "2"] if variant.endswith("-2w") else []
        return [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port",
                str(port), *tls_args, *workers]
    return [sys.executable, "-m", "benchmarks.variants", variant, "--port", str(port), *tls_args]


def environment_for(variant: str, baseline: Path | None) -> tuple[Path | None, dict[str, str]]:
    """Where a variant runs and its environment: a baseline variant imports ``webhook`` from
    the baseline tree (``python -m`` puts its working directory first on the path, ahead of
    this tree's editable install), with this tree's interpreter and packages."""
    environment = dict(os.environ)
    if not variant.startswith(BASELINE) or baseline is None:
        return None, environment
    environment["PYTHONPATH"] = str(baseline)
    return baseline, environment


@contextmanager
def serving(
    variant: str, tls: Path, log_dir: Path, baseline: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    directory, environment = environment_for(variant, baseline)
    with (log_dir / f"{variant}.log").open("ab") as log:
        process = subprocess.Popen(command_for(variant, port, tls), stdout=log, stderr=log,
                                   cwd=directory, env=environment)
    try:
        wait_until_up(port)
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(port: int, requests: list[bytes], **options: object) -> tuple[LoadResult, float]:
    """One load run, and the share of one core the generator used during it."""
    cpu_before = time.process_time()
    result = run("127.0.0.1", port, requests, connections=CONNECTIONS, **options)
    busy = (time.process_time() - cpu_before) / result.elapsed if result.elapsed else 0.0
    return result, busy


def wrk_throughput(port: int, body: bytes, seconds: float, work: Path) -> float | None:
    """Throughput as wrk (C, one thread) sees it, or None where wrk is not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    body_file = work / "wrk-body.json"
    body_file.write_bytes(body)
    script = work / "wrk-post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    output = subprocess.run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-s", str(script),
         f"https://127.0.0.1:{port}/mutate"],
        capture_output=True, text=True, check=True,
    ).stdout
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    listed = children.read_text().split() if children.exists() else []
    return [int(pid) for pid in listed] or [process.pid]


def run_benchmarks(mode: Mode, work: Path, baseline: Path | None = None) -> Measurements:
    tls = work / "tls"
    ca = certs.build_ca(common_name="benchmark CA", days=1)
    serving_pair = certs.build_serving_certificate(ca=ca, hostnames=["localhost", "127.0.0.1"],
                                                   days=1)
    certs.write_bundle(tls, ca=ca, serving=serving_pair)
    requests = {
        "small": [build_request(payloads.encoded(payloads.small_review()))],
        # More distinct pods than the review cache holds, so every one is reviewed afresh: a
        # cycle longer than an LRU cache never hits it.
        "unique": [build_request(payloads.encoded(review))
                   for review in payloads.unique_reviews(UNIQUE_PODS)],
        "env": [build_request(payloads.encoded(review))
                for review in payloads.env_value_reviews(UNIQUE_PODS)],
        "large": [build_request(payloads.encoded(payloads.large_review()))],
    }
    found = Measurements()
    order = list(variants_of(baseline))
    for round_number in range(mode.rounds):
        print(f"round {round_number + 1}/{mode.rounds}", file=sys.stderr)
        for variant in order:
            with serving(variant, tls, work, baseline) as (port, _):
                run("127.0.0.1", port, requests["small"], connections=CONNECTIONS,
                    duration=0.5)  # warm up: imports, first handshakes
                for size, request in requests.items():
                    result, busy = measure(port, request, duration=mode.seconds)
                    found.throughput.setdefault((variant, size), []).append(result.throughput)
                    found.generator_busy.setdefault(variant, []).append(busy)
                    found.failures[variant] = found.failures.get(variant, 0) + result.failed
                if mode is FULL:
                    seen = wrk_throughput(port, payloads.encoded(payloads.small_review()),
                                          mode.seconds, work)
                    if seen is not None:
                        found.wrk.setdefault(variant, []).append(seen)
                if round_number == mode.rounds - 1:
                    paced, _ = measure(port, requests["unique"], duration=mode.paced_seconds,
                                       rate=PACED_RATE)
                    found.paced[variant] = paced
                    found.failures[variant] += paced.failed
        order = order[1:] + order[:1]  # a different variant goes first each round
    print("memory and start", file=sys.stderr)
    with serving("backend-injector", tls, work) as (port, process):
        first, second = mode.memory_reviews
        run("127.0.0.1", port, requests["unique"], connections=CONNECTIONS, count=first)
        found.rss["after_first"] = rss_of(process.pid)
        run("127.0.0.1", port, requests["unique"], connections=CONNECTIONS,
            count=second - first)
        found.rss["after_second"] = rss_of(process.pid)
    with serving("backend-injector-2w", tls, work) as (port, process):
        run("127.0.0.1", port, requests["unique"], connections=CONNECTIONS, count=first)
        found.rss["per_worker_2w"] = max(rss_of(pid) for pid in worker_pids(process))
    for _ in range(mode.starts):
        port = free_port()
        process = subprocess.Popen(command_for("backend-injector", port, tls),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        deadline = started + 30
        while time.perf_counter() < deadline:
            try:
                ready = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=False, timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.005)
        found.start_to_ready.append(time.perf_counter() - started)
        process.terminate()
        process.wait(timeout=30)
    return found


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("fastapi", "uvicorn", "uvloop", "httptools", "orjson", "jsonpatch")
    )
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": versions,
    }


def describe(tree: Path) -> str:
    """The baseline's commit, as `git log` would name it."""
    described = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                               capture_output=True, text=True, check=False).stdout.strip()
    return described or str(tree)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measured_variants(found: Measurements) -> list[str]:
    return [v for v in VARIANTS + BASELINE_VARIANTS if (v, "small") in found.throughput]


def baseline_comparison(found: Measurements, baseline_label: str) -> list[str]:
    """This tree's backend-injector beside the baseline's, column by column, same rounds."""
    lines = [
        "",
        f"This tree beside the baseline ({baseline_label}), measured in the same rounds:",
        "",
        "| measure | this tree | baseline | this / baseline |",
        "| --- | ---: | ---: | ---: |",
    ]
    for suffix in ("", "-2w"):
        ours, theirs = f"backend-injector{suffix}", f"{BASELINE}{suffix}"
        for size, label in (("small", "small pod"), ("unique", "small, all different"),
                            ("env", "one env value different"), ("large", "large pod")):
            mine = median(found.throughput.get((ours, size), []))
            other = median(found.throughput.get((theirs, size), []))
            lines.append(f"| {label}{suffix or ''}, reviews/s | {mine:,.0f} | {other:,.0f} | "
                         f"{mine / other:.2f} |")
        if ours in found.paced and theirs in found.paced:
            for quantile in (0.5, 0.99):
                mine = found.paced[ours].percentile(quantile) * 1000
                other = found.paced[theirs].percentile(quantile) * 1000
                lines.append(f"| p{quantile * 100:.0f}{suffix} at {PACED_RATE}/s, ms | "
                             f"{mine:.2f} | {other:.2f} | {mine / other:.2f} |")
    return lines


def report(found: Measurements, mode: Mode, baseline_label: str | None = None) -> str:
    def throughput(variant: str, size: str = "small") -> float:
        return median(found.throughput.get((variant, size), []))

    ours = throughput("backend-injector")
    lines = [
        f"# backend-injector benchmarks ({mode.name} run)",
        "",
        "Machine: " + "; ".join(f"{key}: {value}" for key, value in machine().items()) + ".",
        f"Load: {CONNECTIONS} keep-alive TLS connections from one asyncio process on the same "
        f"2 cores; {mode.rounds} alternating rounds of {mode.seconds:g} s per variant and size; "
        f"medians. Paced latency at {PACED_RATE}/s for {mode.paced_seconds:g} s, all pods "
        "different, measured from each request's due time. \"Small pod\" repeats one pod, as "
        "the replicas of a Deployment reach admission (byte for byte alike but for the review "
        "uid, which backend-injector's review cache exploits); \"all different\" cycles through "
        f"{UNIQUE_PODS:,} distinct pods, twice the entries the review cache holds, so each is "
        "reviewed afresh.",
        "",
        "| variant | small pod, reviews/s | small, all different | one env value different "
        "| large pod | p50 ms | p99 ms | max ms | generator busy | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in measured_variants(found):
        paced = found.paced.get(variant)
        latency = (
            [f"{paced.percentile(q) * 1000:.2f}" for q in (0.5, 0.99)]
            + [f"{max(paced.latencies) * 1000:.2f}" if paced and paced.latencies else "-"]
            if paced else ["-", "-", "-"]
        )
        lines.append(
            f"| {variant} | {throughput(variant):,.0f} | {throughput(variant, 'unique'):,.0f} | "
            f"{throughput(variant, 'env'):,.0f} | {throughput(variant, 'large'):,.0f} | "
            + " | ".join(latency)
            + f" | {median(found.generator_busy.get(variant, [])):.0%} "
            f"| {found.failures.get(variant, 0)} |"
        )
    first, second = mode.memory_reviews
    rss_growth = found.rss["after_second"] / found.rss["after_first"] - 1
    def ratio(numerator: str, denominator: str, size: str) -> float:
        return throughput(numerator, size) / throughput(denominator, size)

    sizes = ("small", "unique", "env")
    ratios = [
        ("throughput vs floor", [ratio("backend-injector", "floor", size) for size in sizes]),
        ("throughput vs limit", [ratio("backend-injector", "limit", size) for size in sizes]),
        ("throughput vs naive", [ratio("backend-injector", "naive", size) for size in sizes]),
        ("2 workers vs 1", [ratio("backend-injector-2w", "backend-injector", size)
                            for size in sizes]),
    ]
    lines += ["", "| ratio, small pods | replicas (same pod) | all different "
              "| one env value different |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | " + " | ".join(f"{value:.2f}" for value in values) + " |"
              for name, values in ratios]
    paced = found.paced.get("backend-injector")
    p99 = paced.percentile(0.99) * 1000 if paced else float("nan")
    targets = [
        ("all different vs floor", ratio("backend-injector", "floor", "unique"), 0.90, ""),
        ("all different vs limit", ratio("backend-injector", "limit", "unique"), 0.40, ""),
        ("one env value different vs limit", ratio("backend-injector", "limit", "env"), 0.60,
         ""),
        ("replicas vs floor", ours / throughput("floor"), 0.90, ""),
        ("2 workers vs 1, all different", ratio("backend-injector-2w", "backend-injector",
                                                "unique"), 1.5, ""),
        (f"p99 at {PACED_RATE}/s, all different, ms", p99, 5.0, "max"),
    ]
    lines += ["", "| target | measured | target | met |", "| --- | ---: | ---: | --- |"]
    for name, value, bound, kind in targets:
        met = value <= bound if kind == "max" else value >= bound
        sign = "<=" if kind == "max" else ">="
        lines.append(f"| {name} | {value:.2f} | {sign} {bound:g} | {'yes' if met else 'no'} |")
    lines += [
        "",
        "| memory and start | value |",
        "| --- | ---: |",
        f"| RSS after {first:,} reviews (1 worker) | {found.rss['after_first'] / 2**20:.1f} MiB |",
        f"| RSS after {second:,} reviews (1 worker) | {found.rss['after_second'] / 2**20:.1f} MiB "
        f"|",
        f"| growth between them (target <= 5%) | {rss_growth:+.1%} |",
        f"| largest worker RSS with --workers 2 | {found.rss['per_worker_2w'] / 2**20:.1f} MiB |",
        f"| start to /readyz 200, median of {len(found.start_to_ready)} (target <= 1.5 s) | "
        f"{median(found.start_to_ready):.2f} s |",
        "",
        "The generator is not the bottleneck where it drives the `limit` variant faster than "
        "backend-injector with no more than its own core: see the generator column.",
    ]
    if baseline_label is not None:
        lines += baseline_comparison(found, baseline_label)
    if found.wrk:
        lines += [
            "",
            "Cross-check with wrk (C, one thread, same connections, small pod repeated):",
            "",
            "| variant | wrk reviews/s | this generator | ratio to backend-injector (wrk) |",
            "| --- | ---: | ---: | ---: |",
        ]
        ours_wrk = median(found.wrk.get("backend-injector", []))
        for variant in measured_variants(found):
            seen = median(found.wrk.get(variant, []))
            lines.append(f"| {variant} | {seen:,.0f} | {throughput(variant):,.0f} | "
                         f"{ours_wrk / seen:.2f} |")
    return "\n".join(lines) + "\n"


def plot(found: Measurements, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = measured_variants(found)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = range(len(variants))
    for offset, size, label in ((-0.3, "small", "small pod, replicas"),
                                (-0.1, "unique", "small pods, all different"),
                                (0.1, "env", "small pods, one env value different"),
                                (0.3, "large", "large pod")):
        left.bar([p + offset for p in positions],
                 [median(found.throughput.get((v, size), [])) for v in variants],
                 width=0.2, label=label)
    left.set_xticks(list(positions), variants, rotation=20)
    left.set_ylabel("reviews per second")
    left.set_title(f"Throughput, {CONNECTIONS} connections")
    left.legend()
    data = [[latency * 1000 for latency in found.paced[v].latencies] for v in variants
            if v in found.paced]
    right.boxplot(data, whis=(1, 99), showfliers=False)
    right.set_xticks(range(1, len(data) + 1), [v for v in variants if v in found.paced],
                     rotation=20)
    right.set_yscale("log")
    right.set_ylabel("latency, ms (whiskers p1-p99)")
    right.set_title(f"Latency at {PACED_RATE} reviews/s, small pods, all different")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the short run CI does")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="also run backend-injector from TREE (e.g. a `git worktree` of an "
                             "earlier commit) in the same rounds, and compare")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    baseline: Path | None = args.baseline.resolve() if args.baseline else None
    if baseline is not None and not (baseline / "webhook" / "__main__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no webhook/__main__.py there")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    with tempfile.TemporaryDirectory(prefix="backend-injector-bench-") as work:
        found = run_benchmarks(mode, Path(work), baseline)
    RESULTS.mkdir(exist_ok=True)
    text = report(found, mode, describe(baseline) if baseline is not None else None)
    (RESULTS / f"{mode.name}.md").write_text(text)
    plot(found, RESULTS / f"{mode.name}.png")
    print(text)


if __name__ == "__main__":
    main()
