"""Stopping `serve`: SIGTERM ends it with exit 0, whatever the delay and the workers, and every
line it (and every process it started) printed is a JSON log record.

The server's stdout and stderr are pipes read to their end, and a pipe ends only once every
process holding it has exited: the workers, their review processes, and Python's resource
trackers, which outlive the server and used to report, in plain text, the semaphores of
workers that died of a signal raised again after their drain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from benchmarks import adversarial as attacks
from tests.server_process import SECRET, free_port, unverified_context, write_pair

# What `serve` exits with once it has drained after SIGTERM (README, SECURITY.md).
EXIT_AFTER_SIGTERM = 0


class Output:
    """Every line a process tree writes to two pipes, read in threads until both end."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[bytes] = []
        self._lock = threading.Lock()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(pipe,), daemon=True)
                         for pipe in (process.stdout, process.stderr)]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            with self._lock:
                self.lines.append(line)

    def records(self) -> list[dict[str, object]]:
        with self._lock:
            return [json.loads(line) for line in self.lines if line.startswith(b"{")]

    def wait_until(self, condition: Callable[[list[dict[str, object]]], bool],
                   seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition(self.records()):
            assert time.monotonic() < deadline, b"".join(self.lines).decode()[-3000:]
            time.sleep(0.05)

    def ended(self, seconds: float) -> bool:
        for reader in self._readers:
            reader.join(seconds)
        return not any(reader.is_alive() for reader in self._readers)


def serve(tmp_path: Path, *arguments: str) -> tuple[subprocess.Popen[bytes], Output, str]:
    tls = write_pair(tmp_path / "tls")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key"), *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "BACKEND_INJECTOR_SECRET_ACCESS_KEY": SECRET},
    )
    return process, Output(process), f"https://127.0.0.1:{port}"


def children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def started_workers(records: list[dict[str, object]]) -> int:
    return sum(str(record["message"]).startswith("Started server process") for record in records)


def big_review() -> bytes:
    """A review over the offload threshold, answered by a review process."""
    return attacks.body_of(attacks.repeated_probe_pod(400_000, tag="stopping"), uid="big")


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
@pytest.mark.parametrize("delay", [None, "1"], ids=["no-delay", "delay"])
def test_sigterm_exits_with_the_documented_code_and_only_json_lines(
    tmp_path: Path, workers: int, delay: str | None
) -> None:
    arguments = ["--workers", str(workers)]
    if delay is not None:
        arguments += ["--shutdown-delay", delay]
    process, output, url = serve(tmp_path, *arguments)
    try:
        # Every worker has its signal handlers (uvicorn installs them before this line).
        output.wait_until(lambda records: started_workers(records) == workers)
        with httpx.Client(base_url=url, verify=unverified_context(), timeout=30) as client:
            for _ in range(4):  # big reviews: every worker's review process has worked
                assert client.post("/mutate", content=big_review()).status_code == 200
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert output.ended(seconds=30), "a process the server started still holds its output"
    assert code == EXIT_AFTER_SIGTERM
    for line in output.lines:
        record = json.loads(line)
        assert isinstance(record, dict) and {"time", "level", "message"} <= record.keys(), line
    messages = [str(record["message"]) for record in output.records()]
    assert messages.count("listening") == 1
    assert sum(message.startswith("Finished server process") for message in messages) == workers
    if workers > 1:
        # Each worker drained and went through its own cleanup, rather than dying of the
        # signal raised again after the drain, its review processes' semaphores left behind.
        stopped = [record for record in output.records() if record["message"] == "worker stopped"]
        assert [record["exit"] for record in stopped] == [0] * workers
    assert not [message for message in messages if "leaked" in str(message)]


def test_a_killed_workers_leftovers_are_reported_as_json(tmp_path: Path) -> None:
    """A worker killed with SIGKILL cannot remove its review processes' semaphores; its
    resource tracker does, and what it says about it arrives as a log record."""
    process, output, url = serve(tmp_path, "--workers", "2")
    try:
        output.wait_until(lambda records: started_workers(records) == 2)
        supervisor = process.pid
        workers = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        # Its resource tracker and its review process started (their semaphores exist): only
        # then has a killed worker left something behind.
        output.wait_until(lambda _: len(children(int(workers[0]))) >= 2)
        os.kill(int(workers[0]), signal.SIGKILL)
        output.wait_until(lambda records: any(
            "leaked" in str(record["message"]) for record in records))
        with httpx.Client(base_url=url, verify=unverified_context(), timeout=30) as client:
            assert client.get("/healthz").status_code == 200
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert output.ended(seconds=30)
    assert code == EXIT_AFTER_SIGTERM
    for line in output.lines:
        json.loads(line)
    (leaked,) = [record for record in output.records() if "leaked" in str(record["message"])]
    assert leaked["level"] == "warning"
    assert leaked["logger"] == "multiprocessing.resource_tracker"


RELAY_SCRIPT = """
import subprocess, sys, time
from webhook.serving.logs import configure_logging
from webhook.serving.tracker_relay import TrackerRelay
configure_logging("INFO", "json")
relay = TrackerRelay()
child = ("import json, sys; print('Traceback (most recent call last):', file=sys.stderr); "
         "print(json.dumps({'level': 'info', 'message': 'from the child'}), file=sys.stderr)")
with relay.as_stderr():
    subprocess.run([sys.executable, "-c", child], check=True)
time.sleep(1)
"""


def test_what_a_process_started_in_the_relay_prints_arrives_as_records() -> None:
    """A review process's own records pass through as they are; anything else it prints (the
    interpreter's trace when its worker dies while it starts) becomes a warning record."""
    completed = subprocess.run([sys.executable, "-c", RELAY_SCRIPT], capture_output=True,
                               timeout=60, check=True)
    records = [json.loads(line) for line in completed.stderr.splitlines()]
    assert {"level": "info", "message": "from the child"} in records
    (relayed,) = [record for record in records if record.get("level") == "warning"]
    assert relayed["message"] == "Traceback (most recent call last):"
