"""The cgroup every pod of the node runs under (:data:`CGROUP_ROOT`, in every hierarchy)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from ..node_host import cgroup_hierarchies, cgroup_pids, remove_cgroup_tree
from .names import CGROUP_ROOT


def create_cgroup_root() -> None:
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        root.mkdir(exist_ok=True)
        # A new cpuset cgroup starts with no CPUs and no memory nodes: copy the parent's.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (hierarchy / knob).exists() and (root / knob).exists():
                (root / knob).write_text((hierarchy / knob).read_text())


def kill_pods(attempts: int = 50) -> None:
    """SIGKILL every process under the root until none is left (or ``attempts`` run out)."""
    hierarchies = cgroup_hierarchies()
    for _ in range(attempts):
        pids = set().union(*(cgroup_pids(h / CGROUP_ROOT) for h in hierarchies))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def kill_pods_once() -> None:
    """A killed session's pods: one SIGKILL each (they are orphans, nothing restarts them)."""
    for hierarchy in cgroup_hierarchies():
        for pid in cgroup_pids(hierarchy / CGROUP_ROOT):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def remove_cgroup_root() -> None:
    for hierarchy in cgroup_hierarchies():
        remove_cgroup_tree(hierarchy / CGROUP_ROOT)
