"""Serving: the settings' rules behind uvicorn, over TLS, on one socket, until drained.

``serve`` is the whole story. It settles the certificate pair (``tls.py``), binds the
listening socket once, and runs one worker on it, or ``--workers N`` forked ones that a
supervisor replaces when they die (``workers.py``). Each worker finds the safety net's
addresses (``addresses.py``), builds the admission handler from the settings, and is uvicorn
with this project's protocol, limits and TLS context, a certificate watcher that reloads a
rotated pair (``certificate_reload.py``), the background retry of addresses that did not
resolve, and a SIGTERM that drains: readiness goes false and the server keeps answering for
the shutdown delay before the listener closes, and then ``serve`` returns 0. What Python's
resource tracker says about a worker that died is logged too (``tracker_relay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType

import uvicorn

from webhook.rules.mutate import Rules
from webhook.serving import reachability
from webhook.serving.addresses import Addresses, AddressRetry, starting_addresses
from webhook.serving.admission import AdmissionHandler
from webhook.serving.app import Readiness, WebhookApp, create_app
from webhook.serving.certificate_reload import CertificateWatcher
from webhook.serving.connections import ConnectionLimits, protocol_factory
from webhook.serving.metrics import Metrics
from webhook.serving.offload import ReviewProcesses
from webhook.serving.tls import CertificatePair, build_tls_context, handshake_timeout, served_pair
from webhook.serving.tracker_relay import TrackerRelay
from webhook.serving.workers import supervise
from webhook.settings import Serving, Settings

logger = logging.getLogger(__name__)

# What stops the server. After either, once drained, `serve` returns and the process exits 0.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(settings: Settings) -> int:
    """Serve until stopped; returns the exit code."""
    reachability.configure(settings)  # each worker's metrics then check the external backend
    serving = settings.serving
    tracker_relay = TrackerRelay()  # read here, in the process that outlives every worker
    with served_pair(serving) as pair:
        listener = _bind(serving.host, serving.port)
        logger.info(
            "listening",
            extra={"fields": {"host": serving.host, "port": listener.getsockname()[1],
                              "workers": serving.workers}},
        )

        def run_worker() -> None:
            _run_worker(listener, settings, pair, tracker_relay)

        if serving.workers == 1:
            run_worker()
            return 0
        return supervise(serving.workers, run_worker)


class WebhookServer(uvicorn.Server):
    """uvicorn's server with readiness, certificate reload and a draining SIGTERM."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        serving: Serving,
        readiness: Readiness,
        watcher: CertificateWatcher,
        big_reviews: ReviewProcesses | None = None,
        address_retry: AddressRetry | None = None,
    ) -> None:
        super().__init__(config)
        self._serving = serving
        self._big_reviews = big_reviews
        self._readiness = readiness
        self._watcher = watcher
        self._address_retry = address_retry
        self._drain_deadline: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        with handshake_timeout(loop, self._serving.handshake_timeout_seconds):
            await super().startup(sockets)
        self._tasks.append(asyncio.create_task(self._watcher.watch()))
        if self._address_retry is not None:
            self._tasks.append(asyncio.create_task(self._address_retry.run()))
        if self._big_reviews is not None:
            self._big_reviews.start()
        self._readiness.set(True, "serving")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._readiness.set(False, "shutting down")
        for task in self._tasks:
            task.cancel()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The stop signals drain the server (``handle_exit``), and that is all they do.

        uvicorn's own version raises a stop signal again once the server has shut down, so that
        the process dies of it: exit 143 after SIGTERM, but only when no shutdown delay had kept
        uvicorn from seeing the signal, and a worker killed that way never stops its review
        processes (their semaphores are left for Python's resource tracker to remove, with a
        warning). Here the server returns instead: a drained server exits 0, whatever the delay
        and the number of workers, which is what process managers read as a clean stop.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signals are the main thread's; embedded elsewhere, the embedder's
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        delay = self._serving.shutdown_delay_seconds
        if sig == signal.SIGTERM and delay > 0 and self._drain_deadline is None:
            # Readiness goes false first and the server keeps answering for a while, so that
            # the endpoint is gone from the Service before the listener closes.
            self._readiness.set(False, "draining")
            self._drain_deadline = time.monotonic() + delay
            logger.info("draining", extra={"fields": {"seconds": delay}})
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)


def _bind(host: str, port: int) -> socket.socket:
    """The one listening socket, bound before any fork so that every worker accepts on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _run_worker(listener: socket.socket, settings: Settings, pair: CertificatePair,
                tracker_relay: TrackerRelay) -> None:
    serving = settings.serving
    tracker_relay.start_tracker()
    # Before the rules are built, and so before the review processes are spawned with them.
    addresses, unresolved = starting_addresses(settings, os.environ)
    handler = AdmissionHandler(Rules(settings, host_addresses=addresses))
    readiness = Readiness()
    big_reviews = ReviewProcesses(handler, processes=serving.review_processes,
                                  spawning=tracker_relay.as_stderr)
    app = create_app(handler, metrics=Metrics(), readiness=readiness, big_reviews=big_reviews)
    config, context = uvicorn_config(app, serving, pair)
    server = WebhookServer(
        config,
        serving=serving,
        readiness=readiness,
        watcher=CertificateWatcher(context, pair),
        big_reviews=big_reviews,
        address_retry=AddressRetry(unresolved, addresses, _renewer(settings, app, big_reviews))
        if unresolved else None,
    )
    try:
        server.run(sockets=[listener])
    finally:
        big_reviews.stop(wait=True)


def _renewer(settings: Settings, app: WebhookApp, big_reviews: ReviewProcesses
             ) -> Callable[[Addresses], None]:
    """What a worker does when more external hosts resolve: rules built anew with their IPs
    answer every review from then on (the remembered answers go with the old handler)."""

    def renew(addresses: Addresses) -> None:
        handler = AdmissionHandler(Rules(settings, host_addresses=addresses))
        app.use_handler(handler)
        big_reviews.use_handler(handler)

    return renew


def uvicorn_config(
    app: Callable[..., Awaitable[None]], serving: Serving, pair: CertificatePair
) -> tuple[uvicorn.Config, ssl.SSLContext]:
    """uvicorn's configuration as this project serves: uvloop, httptools with our connection
    limits, our TLS context (returned too, for the certificate watcher to reload into).

    Public so that the benchmarks serve their comparison apps on exactly the same stack.
    """
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol_factory(ConnectionLimits(
            max_connections=serving.max_connections,
            head_limit=serving.head_limit_bytes,
            request_seconds=serving.request_seconds,
        )),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # The apiserver connects directly: there is no proxy whose X-Forwarded-For could be
        # trusted, and the middleware that reads it costs a little on every request.
        proxy_headers=False,
        # Also the idle timeout of a connection that has not sent its first request yet.
        timeout_keep_alive=serving.keep_alive_seconds,
        # The cap is the protocol's (it closes idle connections first), not uvicorn's.
        limit_concurrency=None,
        timeout_graceful_shutdown=serving.graceful_timeout_seconds,
        # uvicorn only serves TLS when given files; its own context is replaced just below.
        ssl_certfile=str(pair.cert),
        ssl_keyfile=str(pair.key),
    )
    config.load()
    context = build_tls_context(pair, serving.client_ca)
    config.ssl = context
    return config, context
