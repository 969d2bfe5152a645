"""Prometheus metrics with stable names and labels.

Reviews, mutations and errors are counted on the request path; the health of the external
backend (``backend_injector_external_up{service}`` and how long the check took) is set by the
reachability checker of `webhook.serving.reachability`, which the first `Metrics` of a worker
process starts.

Each server builds its own registry, so tests and several apps in one process do not collide.
The duration buckets hold every boundary of the apiserver's own webhook histogram (5 ms, 25 ms,
100 ms, 500 ms, 1 s, 2.5 s, 10 s, 25 s), so the two can be read side by side, plus finer steps
below 5 ms, where this webhook's reviews actually fall (a tenth of a millisecond or so).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from webhook.serving import reachability
from webhook.serving.admission import ReviewOutcome

# The library's own spelling of a bucket bound (`le`), as its Histogram writes it (untyped).
_bound_text = cast(Callable[[float], str], floatToGoString)

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0,
)

# Operation labels are limited to the apiserver's own, so a hostile client cannot create
# a new time series with every request.
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


class ReviewCounts:
    """The request path's counts: plain numbers, read by the registry only when scraped.

    Every request and every scrape run on the one event-loop thread of a worker, so there is
    nothing to lock; prometheus_client's own counters take a lock on each increment and walk
    the buckets in Python, which in the server cost several times what they do alone.
    """

    def __init__(self) -> None:
        self.reviews: dict[tuple[str, str], int] = {}
        self.bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one: +Inf only
        self.duration_sum = 0.0
        self.mutations = {"removed": 0, "rewritten": 0, "env": 0}
        self.errors: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        reviews = CounterMetricFamily("backend_injector_reviews",
                                      "AdmissionReviews answered, by operation and result.",
                                      labels=["operation", "result"])
        for labels, count in sorted(self.reviews.items()):
            reviews.add_metric(list(labels), count)
        yield reviews
        cumulative = list(itertools.accumulate(self.bucket_counts))
        bounds = [*(_bound_text(bound) for bound in DURATION_BUCKETS), "+Inf"]
        yield HistogramMetricFamily(
            "backend_injector_review_duration_seconds",
            "Time from a complete request body to the encoded response.",
            buckets=list(zip(bounds, cumulative, strict=True)), sum_value=self.duration_sum,
        )
        mutations = CounterMetricFamily(
            "backend_injector_mutations",
            "Changes made to pods, by action (removed, rewritten, env).", labels=["action"])
        for action, count in self.mutations.items():
            mutations.add_metric([action], count)
        yield mutations
        errors = CounterMetricFamily(
            "backend_injector_errors",
            "Requests that were refused or could not be handled, by kind.", labels=["kind"])
        for kind, count in sorted(self.errors.items()):
            errors.add_metric([kind], count)
        yield errors


class Metrics:
    """The webhook's counters and histogram, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counts = ReviewCounts()
        self.registry.register(self.counts)

        # Written by the reachability checker (webhook.serving.reachability), never on the request
        # path.
        self.external_up = Gauge(
            reachability.UP_METRIC,
            "1 if the last TCP connect to the service's external host:port succeeded, else 0.",
            ["service"],
            registry=self.registry,
        )
        self.external_check_duration = Gauge(
            reachability.DURATION_METRIC,
            "How long the last TCP connect to the service's external address took, in seconds.",
            ["service"],
            registry=self.registry,
        )
        reachability.attach(self.external_up, self.external_check_duration)

    def observe_review(self, outcome: ReviewOutcome, seconds: float) -> None:
        counts = self.counts
        labels = (outcome.operation if outcome.operation in OPERATIONS else "other",
                  outcome.result)
        counts.reviews[labels] = counts.reviews.get(labels, 0) + 1
        counts.bucket_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        counts.duration_sum += seconds
        mutation = outcome.mutation
        if mutation is not None and mutation.operations:
            counts.mutations["removed"] += len(mutation.removed)
            counts.mutations["rewritten"] += len(mutation.rewritten)
            counts.mutations["env"] += len(mutation.containers)

    def observe_error(self, kind: str) -> None:
        self.counts.errors[kind] = self.counts.errors.get(kind, 0) + 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
