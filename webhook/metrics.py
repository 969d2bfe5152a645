"""Prometheus metrics with stable names and labels.

Reviews, mutations and errors are counted on the request path; the health of the external
backend (``backend_injector_external_up{service}`` and the probe's duration) is set by the
prober of `webhook.health`, which the first `Metrics` of a worker process starts.

Each server builds its own registry, so tests and several apps in one process do not collide.
The duration buckets hold every boundary of the apiserver's own webhook histogram (5 ms, 25 ms,
100 ms, 500 ms, 1 s, 2.5 s, 10 s, 25 s), so the two can be read side by side, plus finer steps
below 5 ms, where this webhook's reviews actually fall (a tenth of a millisecond or so).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from webhook import health
from webhook.admission import ReviewOutcome

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0,
)

# Operation labels are limited to the apiserver's own, so a hostile client cannot create
# a new time series with every request.
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


class Metrics:
    """The webhook's counters and histogram, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reviews = Counter(
            "backend_injector_reviews",
            "AdmissionReviews answered, by operation and result.",
            ["operation", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "backend_injector_review_duration_seconds",
            "Time from a complete request body to the encoded response.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.mutations = Counter(
            "backend_injector_mutations",
            "Changes made to pods, by action (removed, rewritten, env).",
            ["action"],
            registry=self.registry,
        )
        self.errors = Counter(
            "backend_injector_errors",
            "Requests that were refused or could not be handled, by kind.",
            ["kind"],
            registry=self.registry,
        )

        # Written by the backend prober (webhook.health), never on the request path.
        self.external_up = Gauge(
            health.UP_METRIC,
            "1 if the last TCP connect to the service's external host:port succeeded, else 0.",
            ["service"],
            registry=self.registry,
        )
        self.external_probe_duration = Gauge(
            health.DURATION_METRIC,
            "How long the last TCP connect to the service's external address took, in seconds.",
            ["service"],
            registry=self.registry,
        )
        health.attach(self.external_up, self.external_probe_duration)

        # Looking a labelled child up costs more than counting; keep the ones in use.
        self._review_children: dict[tuple[str, str], Any] = {}
        self._removed = self.mutations.labels("removed")
        self._rewritten = self.mutations.labels("rewritten")
        self._env = self.mutations.labels("env")

    def observe_review(self, outcome: ReviewOutcome, seconds: float) -> None:
        labels = (outcome.operation if outcome.operation in OPERATIONS else "other",
                  outcome.result)
        child = self._review_children.get(labels)
        if child is None:
            child = self._review_children[labels] = self.reviews.labels(*labels)
        child.inc()
        self.duration.observe(seconds)
        mutation = outcome.mutation
        if mutation is not None and mutation.changed:
            if mutation.removed:
                self._removed.inc(len(mutation.removed))
            if mutation.rewritten:
                self._rewritten.inc(len(mutation.rewritten))
            if mutation.containers:
                self._env.inc(len(mutation.containers))

    def observe_error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
