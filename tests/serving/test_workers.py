"""The worker supervisor, in a real `serve --workers 2`: a dead worker is replaced, and stop
signals reach every worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import pod
from tests.server_process import Server, review_body, start_server, stop, write_pair


def workers_of(running: Server) -> set[int]:
    pid = running.process.pid
    return {int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(tmp_path: Path) -> None:
    running = start_server(tmp_path, "--workers", "2", tls_dir=write_pair(tmp_path / "tls"))
    try:
        first = workers_of(running)
        assert len(first) == 2
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: len(workers_of(running) - {killed}) == 2)
        replacement = workers_of(running) - first
        assert len(replacement) == 1
        restarts = [line for line in running.log_lines()
                    if line["message"] == "worker exited; starting another"]
        assert [line["pid"] for line in restarts] == [killed]
        # Every new connection is answered, by whichever worker accepts it.
        for number in range(20):
            with running.client() as client:
                assert client.post("/mutate", json=review_body(pod(), f"r{number}")).is_success
    finally:
        survivors = workers_of(running) if running.process.poll() is None else set()
        stop(running)
    assert running.process.returncode == 0
    assert not [pid for pid in survivors if Path(f"/proc/{pid}").exists()]
