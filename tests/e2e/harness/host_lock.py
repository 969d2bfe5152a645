"""Machine-wide locks of the e2e harness, one per set of fixed names it takes on the host.

The node's bridge, pod subnet and cgroup names, and the webhook host's network namespace,
veth pair and /30 are fixed (a session killed with SIGKILL must leave names the next one can
find), so two test sessions on one machine, even from two clones, would fight over them.
Each set has a lock file in the temp directory; the kernel releases a dead session's lock.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

# The webhook host's network namespace, veth pair and /30 (webhook_host.py).
NETWORK_NAMESPACE = "netns"
# The node's bridge, pod subnet, cgroup root and iptables chains (node/).
NODE = "node"
# How often a waiting session tries again.
POLL_SECONDS = 0.5


def lock_host(
    timeout: float,
    what: str = NETWORK_NAMESPACE,
    *,
    error: type[Exception] = TimeoutError,
) -> int:
    """Take the machine-wide lock of ``what``, waiting up to ``timeout`` seconds for another
    session to give it back; raise ``error`` when it does not.

    Returns the locked descriptor: closing it releases the lock. The file names are the ones
    every version of the harness used, so a session of an older clone is waited for too.
    """
    path = Path(tempfile.gettempdir()) / f"backend-injector-e2e-{what}.lock"
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(descriptor)
                raise error(
                    f"{path} stayed locked by another test session for {timeout:.0f}s"
                ) from None
            time.sleep(POLL_SECONDS)
