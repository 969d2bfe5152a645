"""Big reviews answered in a process of their own, so that they cannot stall the small ones.

A review costs time in proportion to its size, and most of that time holds the GIL: orjson
parses and encodes a whole document without releasing it, and the rules are Python. In a
thread of the server's process a 3 MiB review therefore still stops the event loop for as long
as each of those steps takes (tens of milliseconds for a parse alone), and four of them stop it
for most of the time. Reviews larger than ``OFFLOAD_THRESHOLD`` go to a pool of review
processes instead; the event loop only moves their bytes.

The processes are started with ``spawn`` (a fresh interpreter: nothing of the server's threads,
sockets or event loop is inherited) and receive the handler, rules and settings included, once.
They keep no review cache: reviews this large are rarely repeated. Waiting work is bounded in
bytes (``queued_limit``); past it a big review gets 503, while small ones go on. Should a
process die, the pool is started again, and the review that was in it is answered in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from dataclasses import replace

from webhook.serving.admission import AdmissionHandler, ReviewOutcome, without_operations
from webhook.serving.logs import configure_logging, logging_setup

logger = logging.getLogger(__name__)

# Below this a review is answered on the event loop: it takes a few milliseconds at most, and
# handing it over would cost more than that.
OFFLOAD_THRESHOLD = 256 * 1024
# Bytes of big reviews waiting for a process, beyond the ones being reviewed: about twenty
# reviews of the apiserver's largest objects.
QUEUED_LIMIT = 64 * 1024 * 1024
# Added to the review processes' nice value: they get the CPU the event loop leaves.
REVIEW_PROCESS_NICENESS = 10
# How often a review process looks whether its server is still there (seconds).
SERVER_WATCH_INTERVAL = 0.5


class Busy(Exception):
    """Too many big reviews are waiting already (HTTP 503)."""


class ReviewProcesses:
    """A bounded pool of processes answering big reviews with the server's own rules."""

    def __init__(self, handler: AdmissionHandler, *, processes: int = 1,
                 queued_limit: int = QUEUED_LIMIT,
                 spawning: Callable[[], AbstractContextManager[None]] | None = None) -> None:
        self._handler = handler
        self._processes = processes
        # What the processes are started inside of: the stderr they are to inherit
        # (``TrackerRelay.as_stderr``), so that nothing they print is plain text.
        self._spawning = spawning if spawning is not None else contextlib.nullcontext
        self._queued_limit = queued_limit
        self._queued = 0
        self._executor: ProcessPoolExecutor | None = None
        # Pools given up for a new handler, each shutting down in a thread of its own.
        self._retiring: list[threading.Thread] = []

    def start(self) -> None:
        """Start the processes now rather than at the first big review.

        Not waited for: a process takes a moment to start an interpreter and import the rules,
        and small reviews need none of it. A big review that comes sooner waits for it.
        """
        self._pool()

    def use_handler(self, handler: AdmissionHandler) -> None:
        """Review with ``handler`` from now on (called on the event loop). The processes
        started with the old one finish what they were given and exit; the next big review
        starts new ones."""
        self._handler = handler
        if self._executor is not None:
            # Waited for in a thread rather than not at all: ``stop`` joins it, so that a
            # worker never exits with a pool's semaphores still unremoved (tracker_relay.py).
            retiring = threading.Thread(target=self._executor.shutdown,
                                        name="review-processes-retiring", daemon=True)
            retiring.start()
            self._retiring = [*(old for old in self._retiring if old.is_alive()), retiring]
            self._executor = None

    def stop(self, *, wait: bool = False) -> None:
        """Stop the processes; with ``wait``, once they are gone (at exit)."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None
        if wait:
            for retiring in self._retiring:
                retiring.join()
            self._retiring = []

    async def review(self, body: bytes) -> ReviewOutcome:
        """Answer one review in a review process. Raises EnvelopeError and Busy."""
        if self._queued + len(body) > self._queued_limit:
            raise Busy
        self._queued += len(body)
        try:
            answer, account = await asyncio.wrap_future(self._pool().submit(_review, body))
        except BrokenProcessPool:
            logger.error("a review process died; starting the pool again")
            self.stop()
            return await asyncio.to_thread(self._handler.review, body)
        finally:
            self._queued -= len(body)
        return replace(account, body=answer)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self._processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_adopt,
                initargs=(self._handler.without_cache(), os.getpid(), logging_setup()),
            )
            # A spawn pool starts a process at each submit until it has them all: start them
            # here, inside ``spawning``, rather than at whichever review comes first.
            with self._spawning():
                for _ in range(self._processes):
                    self._executor.submit(_ready)
        return self._executor


# -- in a review process -------------------------------------------------------------------------

_handler: AdmissionHandler | None = None


def _adopt(handler: AdmissionHandler, server_pid: int,
           log_setup: tuple[str, str] | None) -> None:
    global _handler
    _handler = handler
    if log_setup is not None:
        # A fresh interpreter logs nothing of its own otherwise, and Python's last resort
        # would write what the rules report here (a trace, say) as plain text.
        configure_logging(*log_setup)
    # A server stopped with SIGKILL (or by the OOM killer) never shuts its pool down; its review
    # process would live on, holding its memory, with nobody to answer.
    threading.Thread(
        target=_exit_with, args=(server_pid,), name="server-watch", daemon=True
    ).start()
    # Ctrl-C reaches the whole process group; stopping is the server's to decide.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # When the machine is busy, the event loop (every small review) gets the CPU first.
    os.nice(REVIEW_PROCESS_NICENESS)


def _exit_with(server_pid: int) -> None:
    """Exit the moment the server that started this process is gone (re-parenting says so)."""
    while os.getppid() == server_pid:
        time.sleep(SERVER_WATCH_INTERVAL)
    os._exit(0)


def _ready() -> bool:
    return _handler is not None


def _review(body: bytes) -> tuple[bytes, ReviewOutcome]:
    """The answer, and the outcome without its patch operations, which are not sent back."""
    assert _handler is not None, "the pool's initializer gives every process its handler"
    outcome = _handler.review(body)
    return outcome.body, without_operations(outcome)
