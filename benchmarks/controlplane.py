"""Pod creation latency through a real kube-apiserver: what the webhook adds, and the policy.

``python -m benchmarks.controlplane [--quick]`` starts the e2e control plane (etcd,
kube-apiserver, kube-controller-manager built from the Kubernetes Go modules), deploys the
webhook exactly as the e2e suite does (the project's manifests, its own network namespace),
and creates pods at a steady rate in three kinds of namespace:

* ``none``: not opted in; the apiserver calls nobody (the baseline);
* ``webhook``: opted in; every pod goes through backend-injector;
* ``policy``: opted in, with the MutatingWebhookConfiguration removed and the generated
  MutatingAdmissionPolicy bound instead, so the same mutation runs inside the apiserver.

Each create is timed from its due time (no coordinated omission). Baseline and variant run in
alternating rounds. Each pod carries a distinct label so that no review repeats: the webhook's
review cache is not what is measured here. The apiserver's own histogram
``apiserver_admission_webhook_admission_duration_seconds`` is read before and after.
Writes ``results/controlplane-<mode>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.controlplane import ControlPlane, build_binaries, running_control_plane
from tests.e2e.test_webhook import (
    WEBHOOK_CONFIG,
    WEBHOOK_NAME,
    chart_like_pod,
    deployed_webhook,
    new_namespace,
    opted_in_labels,
)
from webhook.config import load_settings
from webhook.policy import build_policy

RESULTS = Path(__file__).resolve().parent / "results"
HISTOGRAM = "apiserver_admission_webhook_admission_duration_seconds"


@dataclass(frozen=True)
class Mode:
    name: str
    rate: float  # pods per second
    seconds: float
    rounds: int


QUICK = Mode("quick", rate=50, seconds=8, rounds=2)
FULL = Mode("full", rate=50, seconds=60, rounds=2)


@dataclass
class Found:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    webhook_histogram: dict[str, float] = field(default_factory=dict)


async def create_pods(
    plane: ControlPlane, namespace: str, mode: Mode, tag: str
) -> tuple[list[float], int]:
    """Create pods at ``mode.rate`` for ``mode.seconds``; latency of each from its due time."""
    template = chart_like_pod("bench")
    count = int(mode.rate * mode.seconds)
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        base_url=plane.server_url, verify=plane._admin_ssl_context(), limits=limits, timeout=30
    ) as client:
        start = time.perf_counter() + 0.2

        async def one(index: int) -> None:
            nonlocal failures
            due = start + index / mode.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            # generateName, as controllers create pods; a distinct label so no review repeats.
            pod = {**template, "metadata": {"generateName": "bench-",
                                            "labels": {"bench-seq": f"{tag}-{index}"}}}
            response = await client.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
            latencies.append(time.perf_counter() - due)
            if response.status_code != 201:
                failures += 1
                if failures == 1:
                    print(f"  first failure: {response.status_code} {response.text[:300]}",
                          file=sys.stderr)

        await asyncio.gather(*(one(index) for index in range(count)))
    return latencies, failures


def histogram_sums(plane: ControlPlane) -> tuple[float, float]:
    """(sum, count) of the apiserver's webhook admission histogram for our webhook."""
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith(HISTOGRAM) or f'name="{WEBHOOK_NAME}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(HISTOGRAM + "_sum"):
            total += value
        elif line.startswith(HISTOGRAM + "_count"):
            count += value
    return total, count


def measure(plane: ControlPlane, found: Found, variant: str, namespace: str, mode: Mode,
            tag: str) -> None:
    latencies, failures = asyncio.run(create_pods(plane, namespace, mode, tag))
    found.latencies.setdefault(variant, []).extend(latencies)
    found.failures[variant] = found.failures.get(variant, 0) + failures
    print(f"  {variant}: {len(latencies)} pods, {failures} failed", file=sys.stderr)


def apply(plane: ControlPlane, documents: list[dict[str, Any]]) -> None:
    result = plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    if result.returncode != 0:
        raise RuntimeError(result.stderr)


def run_benchmark(mode: Mode, work: Path) -> Found:
    found = Found()
    binaries = build_binaries(stream=sys.stderr)
    with running_control_plane(binaries) as plane, ExitStack() as stack:
        deployment = stack.enter_context(deployed_webhook(plane, work))
        baseline = new_namespace(plane, "bench-none")
        opted_in = deployment.opted_in
        print("webhook", file=sys.stderr)
        before = histogram_sums(plane)
        for round_number in range(mode.rounds):
            measure(plane, found, "none (webhook phase)", baseline, mode, f"n{round_number}")
            measure(plane, found, "webhook", opted_in, mode, f"w{round_number}")
        after = histogram_sums(plane)
        if after[1] > before[1]:
            calls = after[1] - before[1]
            found.webhook_histogram["mean_ms"] = (after[0] - before[0]) / calls * 1e3
            found.webhook_histogram["count"] = after[1] - before[1]
        print("policy", file=sys.stderr)
        plane.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIG)
        settings = load_settings(environ={})
        apply(plane, build_policy(settings))
        policy_namespace = new_namespace(plane, "bench-policy", opted_in_labels())
        time.sleep(2)  # the policy's informers pick up the new objects
        for round_number in range(mode.rounds):
            measure(plane, found, "none (policy phase)", baseline, mode, f"m{round_number}")
            measure(plane, found, "policy", policy_namespace, mode, f"p{round_number}")
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def report(found: Found, mode: Mode) -> str:
    lines = [
        f"# Pod creation through the real apiserver ({mode.name} run)",
        "",
        f"{mode.rate:g} pods/s for {mode.seconds:g} s per measurement, {mode.rounds} alternating "
        "rounds; latency of each create from its due time; kube-apiserver v1.37.2 on the same "
        "2 cores as etcd, the controller manager, the webhook and this client.",
        "",
        "| variant | pods | p50 ms | p99 ms | max ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, latencies in found.latencies.items():
        lines.append(
            f"| {variant} | {len(latencies)} | {percentile(latencies, 0.5) * 1e3:.2f} | "
            f"{percentile(latencies, 0.99) * 1e3:.2f} | {max(latencies) * 1e3:.2f} | "
            f"{found.failures.get(variant, 0)} |"
        )

    def added(variant: str, baseline: str, fraction: float) -> float:
        return (percentile(found.latencies[variant], fraction)
                - percentile(found.latencies[baseline], fraction)) * 1e3

    lines += [
        "",
        "| added to pod creation | p50 ms | p99 ms | target |",
        "| --- | ---: | ---: | --- |",
        f"| backend-injector webhook | {added('webhook', 'none (webhook phase)', 0.5):+.2f} | "
        f"{added('webhook', 'none (webhook phase)', 0.99):+.2f} | <= 2 ms p50, <= 5 ms p99 |",
        f"| MutatingAdmissionPolicy | {added('policy', 'none (policy phase)', 0.5):+.2f} | "
        f"{added('policy', 'none (policy phase)', 0.99):+.2f} | for comparison |",
    ]
    if found.webhook_histogram:
        lines += [
            "",
            f"The apiserver's `{HISTOGRAM}` for `{WEBHOOK_NAME}`: "
            f"{found.webhook_histogram['count']:.0f} calls, mean "
            f"{found.webhook_histogram['mean_ms']:.2f} ms (TLS, the network namespace hop, the "
            "review).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="backend-injector-cpbench-") as work:
        found = run_benchmark(mode, Path(work))
    text = report(found, mode)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"controlplane-{mode.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
