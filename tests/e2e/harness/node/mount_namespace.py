"""The node's private mount namespace, which containerd and the kubelet join.

Every mount they make (overlay root filesystems, Secret tmpfs, network namespace handles)
lives and dies with it; the kernel tunables the kubelet insists on writing land in files of
the node's own bind-mounted over ``/proc/sys`` there, and the host paths they write to
whatever they are told (:data:`HIJACKED_PATHS`) get directories of the node's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ..node_host import NodeError, die_with_parent_prefix, read_sysctl, run
from .names import HIJACKED_PATHS, IP_FORWARD, KUBELET_SYSCTLS


class MountNamespace:
    """A process holding a private mount namespace, and the mounts made in it."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._holder: subprocess.Popen[bytes] | None = None
        self._created_mount_points: list[Path] = []

    def start(self) -> None:
        """Unshare, then mount the hijacked paths (mount(8)'s first) and the sysctl stand-ins."""
        self._holder = subprocess.Popen(
            [
                *die_with_parent_prefix(),
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sleep",
                "infinity",
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_for_holder(self._holder.pid)
        hijacked = self.base_dir / "hijacked"
        for path in HIJACKED_PATHS:
            if not path.exists():
                path.mkdir(parents=True)
                self._created_mount_points.append(path)
            own_dir = hijacked / path.relative_to("/")
            own_dir.mkdir(parents=True)
            self.run(["mount", "--bind", own_dir, path])
        stand_ins = self.base_dir / "sysctl"
        stand_ins.mkdir()
        for name in (*KUBELET_SYSCTLS, IP_FORWARD):
            stand_in = stand_ins / name.replace("/", ".")
            stand_in.write_text(read_sysctl(name) + "\n")
            self.run(["mount", "--bind", stand_in, Path("/proc/sys") / name])

    @staticmethod
    def _wait_for_holder(pid: int) -> None:
        own = os.stat("/proc/self/ns/mnt").st_ino
        for _ in range(100):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/mnt").st_ino != own:
                    # setpriv has exec'd unshare, which has unshared and exec'd sleep.
                    if os.readlink(f"/proc/{pid}/exe").endswith("sleep"):
                        return
            time.sleep(0.05)
        raise NodeError("the mount namespace did not come up")

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        if self._holder is None:
            raise NodeError("the mount namespace is not running")
        return ["nsenter", f"--target={self._holder.pid}", "--mount", "--"]

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True) -> str:
        return run([*self.prefix(), *argv], check=check)

    def kill(self) -> None:
        """SIGKILL every process in the namespace (the shims), then its holder."""
        if self._holder is None:
            return
        with contextlib.suppress(OSError):
            namespace = os.stat(f"/proc/{self._holder.pid}/ns/mnt").st_ino
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit() and int(proc.name) != self._holder.pid:
                    with contextlib.suppress(OSError):
                        if os.stat(proc / "ns" / "mnt").st_ino == namespace:
                            os.kill(int(proc.name), signal.SIGKILL)
        self._holder.kill()
        self._holder.wait(timeout=10)

    def remove_created_mount_points(self) -> None:
        # Nothing is mounted on them outside the (now gone) namespace; whatever a client
        # wrote there on the host's side goes with them.
        for mount_point in reversed(self._created_mount_points):
            shutil.rmtree(mount_point, ignore_errors=True)
        self._created_mount_points.clear()
