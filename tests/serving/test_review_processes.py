"""The review process of a server (webhook/serving/offload.py) never outlives the server, and
logs as the server does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import make_settings, pod
from tests.server_process import review_body, start_server, stop
from webhook.rules.mutate import Mutation, Rules
from webhook.serving.admission import AdmissionHandler


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


class FailingRules(Rules):
    """Rules with a bug: every pod makes them raise."""

    def mutate_pod(self, obj: Any) -> Mutation:
        raise RuntimeError("a bug in the rules")


def failing_handler() -> AdmissionHandler:
    return AdmissionHandler(FailingRules(make_settings()))


# Run in a process of its own, whose stderr is all the test reads: JSON logging, as `serve`
# sets it up, and one review answered in a review process by rules that fail.
REVIEW_IN_A_REVIEW_PROCESS = """
import asyncio, sys
from tests.serving.test_review_processes import failing_handler
from webhook.serving.logs import configure_logging
from webhook.serving.offload import ReviewProcesses
configure_logging("INFO", "json")
processes = ReviewProcesses(failing_handler())
outcome = asyncio.run(processes.review(sys.stdin.buffer.read()))
processes.stop(wait=True)
print(outcome.result)
"""


def test_what_a_review_process_logs_is_json_like_the_server() -> None:
    body = json.dumps(review_body(pod(), uid="failing")).encode()
    process = subprocess.Popen([sys.executable, "-c", REVIEW_IN_A_REVIEW_PROCESS],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(body, timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "internal-error"
    records = [json.loads(line) for line in stderr.decode().splitlines()]
    (failed,) = [record for record in records if record["message"] == "rules failed"]
    assert failed["level"] == "error" and failed["uid"] == "failing"
    assert "a bug in the rules" in failed["exception"]
    assert failed["pid"] != process.pid  # written by the review process itself
