"""What Python's resource tracker says, as log records of the server instead of plain text.

The review processes (``offload.py``) are started with ``spawn``, and their queues hold named
semaphores. Each worker has a resource tracker, a process of Python's own, that removes those
names when the worker could not (SIGKILL, the OOM killer), and says so in plain text on the
stderr it was started with: the one thing ``serve`` would print that is not a log record.

So ``serve`` makes a pipe before it starts any worker and reads it in a thread, writing each
line that arrives as a warning of its own log; each worker starts its tracker with that pipe
as the tracker's stderr. The reader lives in the process that outlives the workers (the
supervisor with ``--workers N``), so a worker that is killed has its tracker's lines logged as
soon as the tracker writes them. A worker that stops normally leaves its tracker nothing to say.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from multiprocessing import resource_tracker

from webhook.serving.logs import clipped, flush_logs

logger = logging.getLogger("multiprocessing.resource_tracker")

# Longest line relayed; the tracker writes warnings and, at worst, a traceback, line by line.
LINE_LENGTH = 1000


class TrackerRelay:
    """A pipe whose lines become warnings in this process's log (see the module)."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        threading.Thread(target=_relay, args=(read_end,), name="resource-tracker-log",
                         daemon=True).start()

    def start_tracker(self) -> None:
        """Start this process's resource tracker (before the review processes, which would
        start it otherwise) with the pipe as its stderr, which it takes from this process's."""
        flush_logs()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(self._write_end, 2)
        try:
            resource_tracker.ensure_running()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _relay(read_end: int) -> None:
    with os.fdopen(read_end, "rb") as lines:
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                logger.warning(clipped(text, LINE_LENGTH))
