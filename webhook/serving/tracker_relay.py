"""What Python's resource tracker and the review processes say outside the server's logging,
as log records of the server instead of plain text.

The review processes (``offload.py``) are started with ``spawn``, and their queues hold named
semaphores. Each worker has a resource tracker, a process of Python's own, that removes those
names when the worker could not (SIGKILL, the OOM killer), and says so in plain text on the
stderr it was started with: the one thing ``serve`` would print that is not a log record.

So ``serve`` makes a pipe before it starts any worker and reads it in a thread, writing each
line that arrives as a warning of its own log; each worker starts its tracker with that pipe
as the tracker's stderr. The reader lives in the process that outlives the workers (the
supervisor with ``--workers N``), so a worker that is killed has its tracker's lines logged as
soon as the tracker writes them. A worker that stops normally leaves its tracker nothing to say.

The review processes are started with the same pipe as their stderr. A review process whose
worker is killed while it starts has its interpreter print a trace (``EOFError`` reading what
the worker was still sending) before any code of the project runs; through the pipe that trace
becomes warnings too. Once it runs, a review process logs JSON records as the server does: those
lines pass through the relay as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker

from webhook.serving.logs import clipped, flush_logs

logger = logging.getLogger("multiprocessing.resource_tracker")

# Longest line relayed; the tracker writes warnings and, at worst, a traceback, line by line.
LINE_LENGTH = 1000


class TrackerRelay:
    """A pipe whose lines become warnings in this process's log (see the module)."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        # Records pass through to the stderr of now, never to the pipe ``as_stderr`` may have
        # put in its place meanwhile (from which the relay would read them again, forever).
        stderr = os.dup(2)
        threading.Thread(target=_relay, args=(read_end, stderr), name="resource-tracker-log",
                         daemon=True).start()

    def start_tracker(self) -> None:
        """Start this process's resource tracker (before the review processes, which would
        start it otherwise) with the pipe as its stderr, which it takes from this process's."""
        with self.as_stderr():
            resource_tracker.ensure_running()

    @contextlib.contextmanager
    def as_stderr(self) -> Iterator[None]:
        """The pipe as this process's file descriptor 2 for as long as the block lasts, so that
        the processes started in it inherit it as their stderr. Whatever this process itself
        writes there meanwhile (JSON records) passes through the relay unchanged."""
        flush_logs()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(self._write_end, 2)
        try:
            yield
        finally:
            flush_logs()
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _relay(read_end: int, stderr: int) -> None:
    with os.fdopen(read_end, "rb") as lines, os.fdopen(stderr, "wb", buffering=0) as out:
        for line in lines:
            if _is_record(line):
                flush_logs()
                out.write(line if line.endswith(b"\n") else line + b"\n")
                continue
            text = line.decode("utf-8", "replace").strip()
            if text:
                logger.warning(clipped(text, LINE_LENGTH))


def _is_record(line: bytes) -> bool:
    """Whether `line` is a log record already: one JSON object with a level and a message."""
    if not line.startswith(b"{"):
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "level" in record and "message" in record
