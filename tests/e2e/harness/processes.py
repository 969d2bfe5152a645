"""The processes the harness starts: the prefix that ties them to the test process, their
record, the wait for readiness and the stop.

Shared by the control plane, the node and the webhook host; each keeps its own list.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


def die_with_parent_prefix() -> list[str]:
    """A command prefix that makes Linux SIGKILL the child if the test process dies.

    Without it a SIGKILLed pytest would leave etcd, the apiserver or a node running and holding
    their ports. setpriv (util-linux, on every Debian) sets the flag and execs the binary;
    it is used instead of a Popen preexec_fn, which is unsafe once threads exist.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


@dataclass
class ManagedProcess:
    """A started child, by the name its log file carries."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


# After SIGKILL: a process in uninterruptible sleep (containerd unmounting a snapshot on a
# busy disk, say) dies only once that call returns; seen to take more than 15 s at the end of
# a whole run.
KILLED_SECONDS = 90.0


def terminate(process: ManagedProcess, grace: float = 15.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it after ``grace`` seconds."""
    if process.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=max(grace, KILLED_SECONDS))


def wait_while_running(
    processes: Sequence[ManagedProcess],
    deadline: float,
    what: str,
    ready: Callable[[], bool],
    *,
    error: type[Exception],
    logs: Callable[[], str],
) -> None:
    """Poll ``ready`` until it holds; raise ``error`` (with the logs' tail) when a process exits
    first or ``deadline`` (time.monotonic) passes."""
    while True:
        for process in processes:
            if process.popen.poll() is not None:
                raise error(
                    f"{process.name} exited with code {process.popen.returncode} while "
                    f"waiting for {what}\n{logs()}"
                )
        if ready():
            return
        if time.monotonic() > deadline:
            raise error(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.5)
