"""Pod creation latency through a real kube-apiserver: what the webhook adds, and the policy.

``python -m benchmarks.controlplane [--quick]`` starts the e2e control plane (etcd,
kube-apiserver, kube-controller-manager built from the Kubernetes Go modules), deploys the
webhook exactly as the e2e suite does (the project's manifests, its own network namespace),
and creates pods at a steady rate in three kinds of namespace:

* ``none``: not opted in; the apiserver calls nobody (the baseline);
* ``webhook, pod opted out``: opted in, each pod annotated ``backend-injector/inject:
  disabled``: the apiserver calls the webhook, which answers at once without a patch (what
  calling a webhook costs by itself);
* ``webhook``: opted in; every pod goes through backend-injector;
* ``policy``: opted in, with the MutatingWebhookConfiguration removed and the generated
  MutatingAdmissionPolicy bound instead, so the same mutation runs inside the apiserver.

Each create is timed from its due time (no coordinated omission). Baseline and variant run in
alternating rounds. Each pod carries a distinct label so that no review repeats: the webhook's
review cache is not what is measured here. The apiserver's own histogram
``apiserver_admission_webhook_admission_duration_seconds`` (from the start of the call to the
patched object decoded again: encoding the review, the round trip, decoding the answer,
applying the patch) and the webhook's own ``backend_injector_review_duration_seconds`` (the
review alone) are read around each measurement, which splits the latency the webhook adds
into what the apiserver spends and what the webhook does. Writes
``results/controlplane-<mode>.md``.
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

from tests.e2e.harness.admission import chart_like_pod, new_namespace, opted_in_labels
from tests.e2e.harness.controlplane import ControlPlane, build_binaries, running_control_plane
from tests.e2e.harness.deploy import (
    WEBHOOK_CONFIG,
    WEBHOOK_NAME,
    WEBHOOK_PORT,
    Deployment,
    deployed_webhook,
)
from webhook.policy.objects import build_policy
from webhook.rules.mutate import INJECT_KEY
from webhook.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results"
HISTOGRAM = "apiserver_admission_webhook_admission_duration_seconds"
OWN_HISTOGRAM = "backend_injector_review_duration_seconds"
OPTED_OUT = "webhook, pod opted out"


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
    # (sum of seconds, count) per variant: the apiserver's view of the call, the webhook's own.
    apiserver_calls: dict[str, tuple[float, float]] = field(default_factory=dict)
    reviews: dict[str, tuple[float, float]] = field(default_factory=dict)


async def create_pods(
    plane: ControlPlane, namespace: str, mode: Mode, tag: str, *, opted_out: bool = False
) -> tuple[list[float], int]:
    """Create pods at ``mode.rate`` for ``mode.seconds``; latency of each from its due time."""
    template = chart_like_pod("bench")
    count = int(mode.rate * mode.seconds)
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        base_url=plane.server_url, verify=plane.admin_ssl_context(), limits=limits, timeout=30
    ) as client:
        start = time.perf_counter() + 0.2

        async def one(index: int) -> None:
            nonlocal failures
            due = start + index / mode.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            # generateName, as controllers create pods; a distinct label so no review repeats.
            metadata: dict[str, Any] = {"generateName": "bench-",
                                        "labels": {"bench-seq": f"{tag}-{index}"}}
            if opted_out:
                metadata["annotations"] = {INJECT_KEY: "disabled"}
            pod = {**template, "metadata": metadata}
            response = await client.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
            latencies.append(time.perf_counter() - due)
            if response.status_code != 201:
                failures += 1
                if failures == 1:
                    print(f"  first failure: {response.status_code} {response.text[:300]}",
                          file=sys.stderr)

        await asyncio.gather(*(one(index) for index in range(count)))
    return latencies, failures


def histogram_sums(text: str, histogram: str, selector: str = "") -> tuple[float, float]:
    """(sum, count) of ``histogram`` in a Prometheus exposition, over series with ``selector``."""
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith(histogram) or selector not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(histogram + "_sum"):
            total += value
        elif line.startswith(histogram + "_count"):
            count += value
    return total, count


def apiserver_calls(plane: ControlPlane) -> tuple[float, float]:
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    return histogram_sums(text, HISTOGRAM, f'name="{WEBHOOK_NAME}"')


def own_reviews(deployment: Deployment) -> tuple[float, float]:
    url = f"https://{deployment.netns.address}:{WEBHOOK_PORT}/metrics"
    return histogram_sums(httpx.get(url, verify=False, timeout=10).text, OWN_HISTOGRAM)


def measure(plane: ControlPlane, found: Found, variant: str, namespace: str, mode: Mode,
            tag: str, deployment: Deployment | None = None) -> None:
    calls_before = apiserver_calls(plane)
    reviews_before = own_reviews(deployment) if deployment is not None else (0.0, 0.0)
    latencies, failures = asyncio.run(
        create_pods(plane, namespace, mode, tag, opted_out=variant == OPTED_OUT))
    found.latencies.setdefault(variant, []).extend(latencies)
    found.failures[variant] = found.failures.get(variant, 0) + failures
    if deployment is not None:
        _add(found.apiserver_calls, variant, calls_before, apiserver_calls(plane))
        _add(found.reviews, variant, reviews_before, own_reviews(deployment))
    print(f"  {variant}: {len(latencies)} pods, {failures} failed", file=sys.stderr)


def _add(sums: dict[str, tuple[float, float]], variant: str, before: tuple[float, float],
         after: tuple[float, float]) -> None:
    total, count = sums.get(variant, (0.0, 0.0))
    sums[variant] = (total + after[0] - before[0], count + after[1] - before[1])


def mean_ms(sums: dict[str, tuple[float, float]], variant: str) -> float:
    total, count = sums.get(variant, (0.0, 0.0))
    return total / count * 1e3 if count else float("nan")


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
        for round_number in range(mode.rounds):
            measure(plane, found, "none (webhook phase)", baseline, mode, f"n{round_number}")
            measure(plane, found, OPTED_OUT, opted_in, mode, f"o{round_number}", deployment)
            measure(plane, found, "webhook", opted_in, mode, f"w{round_number}", deployment)
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
    if found.apiserver_calls:
        lines += [
            "",
            "Where the webhook's share goes, from the apiserver's `" + HISTOGRAM + "` (its call:"
            " encoding the review, the round trip, decoding the answer, applying the patch) and"
            " the webhook's `" + OWN_HISTOGRAM + "` (the review alone), means over the same pods:",
            "",
            "| variant | added p50 ms | added p99 ms | apiserver's call, mean ms | "
            "the review, mean ms | the rest of the call, mean ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant in (OPTED_OUT, "webhook"):
            call, review = mean_ms(found.apiserver_calls, variant), mean_ms(found.reviews, variant)
            lines.append(
                f"| {variant} | {added(variant, 'none (webhook phase)', 0.5):+.2f} | "
                f"{added(variant, 'none (webhook phase)', 0.99):+.2f} | {call:.2f} | "
                f"{review:.3f} | {call - review:.2f} |"
            )
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
