"""Worker processes: N forked children serving one listening socket, a dead one replaced.

With ``--workers N`` the server process forks N children that each run a worker on the
socket bound before the fork, and stays their supervisor: it passes SIGTERM and SIGINT on to
them, and starts another child when one dies while nothing asked it to stop. Once every child
has stopped (each says how, in a line of the log), it returns 0, as one worker does after a
stop signal. Forking (rather than uvicorn's own spawn-based supervisor) hands each worker the
settings object as the CLI built it, flags included, with nothing to re-read in the children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable
from types import FrameType

from webhook.serving.logs import flush_logs

logger = logging.getLogger(__name__)


def supervise(workers: int, run_worker: Callable[[], None]) -> int:
    """Fork ``workers`` children running ``run_worker``, pass stop signals on to them, and
    replace any that dies; returns the exit code once all have stopped."""
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            # Not the supervisor's handlers: until uvicorn installs its own, a signal stops it.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                run_worker()
            finally:
                # Never back into the supervisor's code (its loop, its cleanup of files the
                # other workers still serve) from a child; os._exit skips logging's own
                # flush at exit, so the worker's last log lines are written here.
                flush_logs()
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
        else:
            # 0 when it drained and stopped its review processes; -N when signal N ended it
            # (SIGKILL, or a stop signal that came before it served: the stop signals are
            # uvicorn's only once it starts).
            logger.info("worker stopped",
                        extra={"fields": {"pid": pid, "exit": os.waitstatus_to_exitcode(status)}})
    return 0


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)  # one already gone is one fewer to stop
