"""Serving over TLS with uvicorn: TLS settings, certificate reload, workers and draining.

The listening socket is bound once, here, and shared by every worker; with ``--workers N``
the process forks N children that each run uvicorn on it and restarts any that dies. Forking
(rather than uvicorn's own spawn-based supervisor) keeps the settings object as the CLI built
it, flags included, with nothing to re-read in the workers.

Certificates are watched by each worker: when the files behind the paths change (a Secret
volume update or cert-manager swaps a symlink), the new pair is checked in a scratch context
and then loaded into the live one, so new connections get the new certificate while those in
flight keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from webhook import health
from webhook.admission import AdmissionHandler
from webhook.app import Readiness, create_app
from webhook.certs import build_self_signed
from webhook.config import Settings
from webhook.connections import ConnectionLimits, protocol_factory
from webhook.metrics import Metrics
from webhook.mutate import Rules
from webhook.offload import ReviewProcesses

logger = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all of that already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
CERTIFICATE_POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """How to serve, beyond the rules: TLS material, timeouts and draining."""

    tls_cert: Path
    tls_key: Path
    client_ca: Path | None = None
    # Longer than the apiserver's idle-connection timeout (Go's default is 90 s), so that it
    # is always the client that closes an idle connection: a server closing first can race a
    # request being sent on it, and the apiserver does not retry a failed POST.
    keep_alive_seconds: int = 120
    # A client that opens a connection and never finishes the TLS handshake is dropped after
    # this long. The apiserver completes a handshake in milliseconds; asyncio's 60 s default
    # lets idle sockets pile up.
    handshake_timeout_seconds: float = 10.0
    # Open connections (plus requests in flight). A new connection over it closes the one idle
    # longest; a request that finds none idle gets 503. The apiserver keeps a few dozen
    # connections per replica; this leaves room for many. See webhook/connections.py.
    max_connections: int = 1000
    # The request line and headers together: over it, 431 without reading the rest.
    head_limit_bytes: int = 64 * 1024
    # From a request's first byte to its last: over it, 408.
    request_seconds: float = 10.0
    # Processes answering reviews too big for the event loop (webhook/offload.py). One keeps
    # a core for the event loop on a small machine; big reviews are rare and wait their turn.
    review_processes: int = 1
    # After SIGTERM: how long to keep serving with /readyz false before closing the listener.
    shutdown_delay_seconds: float = 0.0
    graceful_timeout_seconds: int = 20


def build_tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server context: TLS 1.2+ with modern suites, optional client-certificate checks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


class CertificateWatcher:
    """Reloads the certificate pair into a live context when the files change."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self._context = context
        self._cert = cert
        self._key = key
        self._seen = self._signature()

    def _signature(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            # os.stat follows symlinks, so a swapped `..data` link shows as a new inode.
            stats = [os.stat(self._cert), os.stat(self._key)]
        except OSError:
            return None
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def check(self) -> bool:
        """Reload if the files changed and form a valid pair. True when a reload happened."""
        signature = self._signature()
        if signature is None or signature == self._seen:
            return False
        try:
            # A half-written rotation (new certificate, old key) must not reach the live
            # context: a failed load there would leave it with a mismatched pair.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self._cert, self._key)
            self._context.load_cert_chain(self._cert, self._key)
        except (OSError, ssl.SSLError) as error:
            logger.warning("certificate change not loaded yet: %s", error.__class__.__name__)
            return False
        self._seen = signature
        logger.info("certificate reloaded", extra={"fields": {"cert": str(self._cert)}})
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CERTIFICATE_POLL_SECONDS)
            self.check()


class WebhookServer(uvicorn.Server):
    """uvicorn's server with readiness, certificate reload and a draining SIGTERM."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        readiness: Readiness,
        watcher: CertificateWatcher,
        shutdown_delay_seconds: float,
        handshake_timeout_seconds: float,
        big_reviews: ReviewProcesses | None = None,
    ) -> None:
        super().__init__(config)
        self._big_reviews = big_reviews
        self._handshake_timeout = handshake_timeout_seconds
        self._readiness = readiness
        self._watcher = watcher
        self._shutdown_delay = shutdown_delay_seconds
        self._drain_deadline: float | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        create_server = loop.create_server
        # uvicorn offers no setting for the TLS handshake timeout; its one call to
        # create_server is given it here.
        loop.create_server = functools.partial(  # type: ignore[method-assign]
            create_server, ssl_handshake_timeout=self._handshake_timeout
        )
        try:
            await super().startup(sockets)
        finally:
            loop.create_server = create_server  # type: ignore[method-assign]
        self._watch_task = asyncio.create_task(self._watcher.watch())
        if self._big_reviews is not None:
            self._big_reviews.start()
        self._readiness.set(True, "serving")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._readiness.set(False, "shutting down")
        if self._watch_task is not None:
            self._watch_task.cancel()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._shutdown_delay > 0 and self._drain_deadline is None:
            # Readiness goes false first and the server keeps answering for a while, so that
            # the endpoint is gone from the Service before the listener closes.
            self._readiness.set(False, "draining")
            self._drain_deadline = time.monotonic() + self._shutdown_delay
            logger.info("draining", extra={"fields": {"seconds": self._shutdown_delay}})
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings, options: ServingOptions | None = None) -> int:
    """Serve until stopped; returns the exit code."""
    health.configure(settings)  # each worker's metrics then probe the external backend
    with contextlib.ExitStack() as cleanup:
        if options is None:
            options = _serving_options(settings, cleanup)
        handler = AdmissionHandler(
            Rules(settings), excluded_namespaces=settings.excluded_namespaces
        )
        listener = _bind(settings.host, settings.port)
        logger.info(
            "listening",
            extra={"fields": {"host": settings.host, "port": listener.getsockname()[1],
                              "workers": settings.workers}},
        )
        if settings.workers == 1:
            _run_worker(listener, handler, options)
            return 0
        return _supervise(settings.workers, listener, handler, options)
    return 0


def _serving_options(settings: Settings, cleanup: contextlib.ExitStack) -> ServingOptions:
    if settings.tls_cert is not None and settings.tls_key is not None:
        return ServingOptions(tls_cert=settings.tls_cert, tls_key=settings.tls_key,
                              client_ca=settings.client_ca,
                              shutdown_delay_seconds=settings.shutdown_delay_seconds)
    directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="backend-injector-")))
    pair = build_self_signed(("localhost", "127.0.0.1"))
    cert, key = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(pair.cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(pair.key_pem)
    logger.warning(
        "no --tls-cert/--tls-key given: serving a throw-away self-signed certificate for "
        "localhost and 127.0.0.1; the apiserver will not trust it",
        extra={"fields": {"cert": str(cert)}},
    )
    return ServingOptions(tls_cert=cert, tls_key=key, client_ca=settings.client_ca,
                          shutdown_delay_seconds=settings.shutdown_delay_seconds)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _run_worker(
    listener: socket.socket, handler: AdmissionHandler, options: ServingOptions
) -> None:
    readiness = Readiness()
    big_reviews = ReviewProcesses(handler, processes=options.review_processes)
    app = create_app(handler, metrics=Metrics(), readiness=readiness, big_reviews=big_reviews)
    config, context = uvicorn_config(app, options)
    server = WebhookServer(
        config,
        readiness=readiness,
        watcher=CertificateWatcher(context, options.tls_cert, options.tls_key),
        shutdown_delay_seconds=options.shutdown_delay_seconds,
        handshake_timeout_seconds=options.handshake_timeout_seconds,
        big_reviews=big_reviews,
    )
    try:
        server.run(sockets=[listener])
    finally:
        big_reviews.stop()


def uvicorn_config(
    app: Callable[..., Awaitable[None]], options: ServingOptions
) -> tuple[uvicorn.Config, ssl.SSLContext]:
    """uvicorn's configuration as this project serves: uvloop, httptools with our connection
    limits, our TLS context.

    Public so that the benchmarks serve their comparison apps on exactly the same stack.
    """
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol_factory(ConnectionLimits(
            max_connections=options.max_connections,
            head_limit=options.head_limit_bytes,
            request_seconds=options.request_seconds,
        )),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # Also the idle timeout of a connection that has not sent its first request yet.
        timeout_keep_alive=options.keep_alive_seconds,
        # The cap is the protocol's (it closes idle connections first), not uvicorn's.
        limit_concurrency=None,
        timeout_graceful_shutdown=options.graceful_timeout_seconds,
        ssl_certfile=str(options.tls_cert),
        ssl_keyfile=str(options.tls_key),
    )
    config.load()
    context = build_tls_context(options.tls_cert, options.tls_key, options.client_ca)
    config.ssl = context
    return config, context


def _supervise(
    workers: int, listener: socket.socket, handler: AdmissionHandler, options: ServingOptions
) -> int:
    """Fork the workers, pass stop signals on to them, and replace any that dies."""
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                _run_worker(listener, handler, options)
            finally:
                os._exit(0)
        children.add(pid)

    def stop(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping:
            logger.error("worker exited; starting another",
                         extra={"fields": {"pid": pid, "status": status}})
            spawn()
    return 0


def _signal_all(pids: Sequence[int] | set[int], sig: int) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
