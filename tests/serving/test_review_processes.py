"""The review process of a server (webhook/serving/offload.py) never outlives the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.server_process import start_server, stop


def _children(pid: int) -> dict[int, str]:
    """Processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # The command name in brackets may hold spaces; the parent pid follows it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found[int(entry.name)] = command
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone in all but its entry in the process table.
    return " Z " not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:4]


def test_a_killed_server_leaves_no_review_process(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        deadline = time.monotonic() + 20
        workers: list[int] = []
        while not workers and time.monotonic() < deadline:
            workers = [pid for pid, command in _children(server.process.pid).items()
                       if "multiprocessing.spawn" in command]
            time.sleep(0.1)
        assert workers, "the server started no review process"
        # SIGKILL: no handler runs, nothing shuts the pool down.
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "a review process outlived its server"
    finally:
        stop(server)
