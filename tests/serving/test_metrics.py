"""The request path's counts read as prometheus_client's own counters and histogram would."""

from __future__ import annotations

import json
import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tests.conftest import make_settings, pod
from webhook.rules.mutate import Rules
from webhook.serving.admission import AdmissionHandler, ReviewOutcome
from webhook.serving.metrics import DURATION_BUCKETS, Metrics


def samples(text: bytes, prefix: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(prefix)]


def test_the_duration_histogram_is_the_librarys_on_the_same_observations() -> None:
    chosen = random.Random(7)
    durations = [*DURATION_BUCKETS, 0.0, 30.0,
                 *(chosen.uniform(0, 0.01) for _ in range(500))]
    reference_registry = CollectorRegistry()
    reference = Histogram("backend_injector_review_duration_seconds",
                          "Time from a complete request body to the encoded response.",
                          buckets=DURATION_BUCKETS, registry=reference_registry)
    ours = Metrics()
    outcome = ReviewOutcome(body=b"", uid="u", operation="CREATE", namespace="n", pod="p",
                            result="ignored")
    for seconds in durations:
        reference.observe(seconds)
        ours.observe_review(outcome, seconds)
    prefix = "backend_injector_review_duration_seconds_"
    expected = [line for line in samples(generate_latest(reference_registry), prefix)
                if "_created" not in line]
    assert samples(ours.exposition(), prefix) == expected


def test_reviews_mutations_and_errors_are_counted_by_label() -> None:
    handler = AdmissionHandler(Rules(make_settings()))
    def review(operation: str) -> bytes:
        return json.dumps({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "flts", "operation": operation, "object": pod()},
        }).encode()

    mutated = handler.review(review("CREATE"))
    assert mutated.mutation is not None
    other = handler.review(review("SOMETHING"))
    metrics = Metrics()
    for outcome in (mutated, mutated, other):
        metrics.observe_review(outcome, 0.001)
    metrics.observe_error("bad-request")
    text = metrics.exposition()
    assert samples(text, "backend_injector_reviews_total") == [
        'backend_injector_reviews_total{operation="CREATE",result="mutated"} 2.0',
        'backend_injector_reviews_total{operation="other",result="ignored"} 1.0',
    ]
    assert samples(text, "backend_injector_mutations_total") == [
        f'backend_injector_mutations_total{{action="removed"}} '
        f'{2.0 * len(mutated.mutation.removed)}',
        'backend_injector_mutations_total{action="rewritten"} 0.0',
        f'backend_injector_mutations_total{{action="env"}} '
        f'{2.0 * len(mutated.mutation.containers)}',
    ]
    assert samples(text, "backend_injector_errors_total") == [
        'backend_injector_errors_total{kind="bad-request"} 1.0']
