"""The node's processes: started with their logs beside the control plane's, waited on, stopped;
and the lookups in /proc that find what a killed session left running.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from ..node_host import NodeError
from ..processes import ManagedProcess, die_with_parent_prefix, terminate, wait_while_running


class Supervisor:
    """Starts the node's processes (each in a process group of its own) and stops them."""

    def __init__(self, log_dir: Path, work_dir: Path, logs: Callable[[], str]) -> None:
        self.log_dir = log_dir
        self.work_dir = work_dir
        self._logs = logs
        self._processes: list[ManagedProcess] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``argv`` (after ``prefix``, e.g. nsenter), logging to ``<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [*die_with_parent_prefix(), *prefix, *(os.fspath(arg) for arg in argv)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env=env,
                start_new_session=True,
            )
        self._processes.append(ManagedProcess(name, popen, log_path))

    def wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready``; fail when a process exits first or ``deadline`` passes."""
        wait_while_running(self._processes, deadline, what, ready,
                           error=NodeError, logs=self._logs)

    def terminate_named(self, name: str) -> None:
        for process in list(self._processes):
            if process.name == name:
                terminate(process)
                self._processes.remove(process)

    def stop_steps(self) -> list[Callable[[], None]]:
        """One step per process still running, newest first; the list is emptied."""
        steps: list[Callable[[], None]] = [
            functools.partial(terminate, process) for process in reversed(self._processes)
        ]
        self._processes.clear()
        return steps


def processes_named(name: str) -> list[int]:
    return pids_where(lambda proc: (proc / "comm").read_text().strip() == name)


def pids_running(executable: Path) -> list[int]:
    return pids_where(lambda proc: Path(os.readlink(proc / "exe")) == executable)


def pids_where(test: Callable[[Path], bool]) -> list[int]:
    """The processes whose /proc entry passes ``test`` (those gone meanwhile are skipped)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if test(proc):
                    pids.append(int(proc.name))
    return pids
