"""Backend reachability: can the external addresses the webhook points pods at be reached?

Every ``CHECK_INTERVAL_SECONDS`` a background thread opens a TCP connection to the
``host:port`` of each service with an external address (MLflow, MinIO, the gateway), from
the webhook's own pod, which sits on the same network as the pods it changes. Each check is
bounded by ``CHECK_TIMEOUT_SECONDS``, name resolution included (a check that overruns counts
as down and is not started again until it returns), and nothing on the request path waits for
it. The results are exported as ``backend_injector_external_up{service}`` (1 or 0) and
``backend_injector_external_probe_duration_seconds{service}``, names that dashboards and alerts
already use. Readiness does not read them: a stopped MLflow must not keep the webhook, and so
every pod creation, from working.

`configure` is called once by ``serve``; each worker process starts its own checker when it
builds its metrics (`Metrics` calls `attach`), since a thread does not survive the fork.
`parse_exposition` reads them back, for ``doctor``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.settings import Settings

logger = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 15.0
CHECK_TIMEOUT_SECONDS = 2.0
UP_METRIC = "backend_injector_external_up"
DURATION_METRIC = "backend_injector_external_probe_duration_seconds"


@dataclass(frozen=True)
class Target:
    """One external address to check."""

    service: str
    host: str
    port: int


@dataclass(frozen=True)
class Result:
    up: bool
    seconds: float


Connect = Callable[[Target, float], None]


def targets(settings: Settings) -> tuple[Target, ...]:
    """The external addresses of the managed services, one per service."""
    return tuple(Target(service.name, service.external.host, service.external.port)
                 for service in settings.services if service.external is not None)


def tcp_connect(target: Target, timeout: float) -> None:
    """Open and close a TCP connection; raises OSError when it cannot."""
    with socket.create_connection((target.host, target.port), timeout=timeout):
        pass


class ReachabilityChecker:
    """Checks every target each interval, in threads of its own, and reports each result."""

    def __init__(
        self,
        targets_to_check: Sequence[Target],
        report: Callable[[Target, Result], None],
        *,
        interval: float = CHECK_INTERVAL_SECONDS,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        connect: Connect = tcp_connect,
    ) -> None:
        self._targets = tuple(targets_to_check)
        self._report = report
        self._interval = interval
        self._timeout = timeout
        self._connect = connect
        self._in_flight: set[Target] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and self._targets:
            self._thread = threading.Thread(target=self._loop, name="reachability-checks",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> None:
        """One round: every target not still busy from an earlier round, at most `timeout`."""
        started = time.monotonic()
        results: dict[Target, Result] = {}
        done = threading.Condition()
        launched = []
        for target in self._targets:
            with self._lock:
                if target in self._in_flight:
                    continue  # an earlier check overran and has not returned yet
                self._in_flight.add(target)
            launched.append(target)
            threading.Thread(target=self._check, args=(target, results, done),
                             name=f"reachability-{target.service}", daemon=True).start()
        deadline = started + self._timeout
        with done:
            while len(results) < len(launched) and time.monotonic() < deadline:
                done.wait(timeout=max(0.0, deadline - time.monotonic()))
            finished = dict(results)
        for target in launched:
            self._report(target, finished.get(target, Result(up=False, seconds=self._timeout)))

    def _check(self, target: Target, results: dict[Target, Result],
               done: threading.Condition) -> None:
        started = time.perf_counter()
        try:
            self._connect(target, self._timeout)
            up = True
        except OSError:
            up = False
        result = Result(up=up, seconds=time.perf_counter() - started)
        with self._lock:
            self._in_flight.discard(target)
        with done:
            results[target] = result
            done.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception:  # a failed check must never take the webhook down
                # The message keeps the wording that log searches already look for.
                logger.exception("backend probe round failed")
            self._stop.wait(self._interval)


# --- process-wide wiring ------------------------------------------------------------------

_configured: tuple[Target, ...] = ()
_started_in: int | None = None


def configure(settings: Settings) -> None:
    """Check these services' external addresses in every worker that serves metrics."""
    global _configured
    _configured = targets(settings)


def attach(up: Any, duration: Any) -> None:
    """Start this process's reachability checker, reporting into the `up` and `duration`
    gauges (labelled by service). Nothing happens unless `configure` was called, or when
    already started."""
    global _started_in
    if not _configured or _started_in == os.getpid():
        return
    _started_in = os.getpid()
    children = {target: (up.labels(target.service), duration.labels(target.service))
                for target in _configured}

    def report(target: Target, result: Result) -> None:
        up_child, duration_child = children[target]
        up_child.set(1 if result.up else 0)
        duration_child.set(result.seconds)

    ReachabilityChecker(_configured, report).start()


# --- what doctor reads ---------------------------------------------------------------------

_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{service="(?P<service>[^"]*)"\} (?P<value>\S+)$')


def parse_exposition(text: str) -> dict[str, dict[str, float]]:
    """``{service: {"up": 1.0, "seconds": 0.002}}`` from a Prometheus exposition."""
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] not in (UP_METRIC, DURATION_METRIC):
            continue
        key = "up" if match["name"] == UP_METRIC else "seconds"
        try:
            found.setdefault(match["service"], {})[key] = float(match["value"])
        except ValueError:
            continue
    return found
