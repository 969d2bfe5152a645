"""The chart's stand-in programs run as host processes, and what they logged to the backend.

The stand-ins (tools/images/flts/standin.py) run from the backend's own virtual environment
(which has the mlflow client and boto3), with exactly the variables the webhook injects; the
image tests start the same program inside the stand-in images and keep it as a ``Standin`` too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .backend import Backend, Run, ensure_venv
from .controlplane import REPO_ROOT

STANDIN = REPO_ROOT / "tools" / "images" / "flts" / "standin.py"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0,
             running: Standin | None = None) -> T:
    """Poll ``probe`` until it returns something true; fail early if ``running`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if running is not None and running.process.poll() is not None:
            raise AssertionError(f"exited while waiting for {what}:\n{running.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@dataclass
class Standin:
    """One stand-in program running on the host, its output in a file."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends it; the stand-in must exit promptly."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def standin(args: list[str], env: dict[str, str], tmp: Path) -> Standin:
    python = ensure_venv() / "bin" / "python"
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("MLFLOW_", "AWS_", "KAFKA_"))}
    log = tmp / f"{args[0]}-{time.monotonic_ns()}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([str(python), str(STANDIN), *args], env=base | env,
                                   stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT)
    return Standin(process, log)


def runs_of(backend: Backend, pod: str) -> list[Run]:
    """The finished runs the stand-in in ``pod`` logged."""
    return [run for run in backend.runs()
            if run.tags.get("flts.pod") == pod and run.status == "FINISHED"]
