"""``backend-injector dev`` in a child process of the tests, and the registration it makes.

The command runs as a user runs it, with the control plane's admin kubeconfig and
``--url https://127.0.0.1:PORT/mutate``; its JSON log lines go to a file the tests read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .admission import BACKEND_INJECTOR, clean_environment, wait_for
from .controlplane import ControlPlane, free_port

DEV_CONFIGURATION = "backend-injector-dev"


class DevProcess:
    """`backend-injector dev` in a child process, logging JSON lines to a file."""

    def __init__(self, plane: ControlPlane, log_path: Path) -> None:
        self.plane = plane
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/mutate"
        self.log_path = log_path
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [*prefix, BACKEND_INJECTOR, "dev", "--url", self.url,
                 "--kubeconfig", str(plane.kubeconfig)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=clean_environment(),
            )

    def records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"message": line})
        return records

    def messages(self) -> list[str]:
        return [str(record.get("message")) for record in self.records()]

    def wait_registered(self) -> dict[str, Any]:
        def registered() -> dict[str, Any] | None:
            assert self.popen.poll() is None, self.log_path.read_text()
            configuration = registration(self.plane)
            if configuration is None:
                return None
            url = configuration["webhooks"][0]["clientConfig"].get("url")
            pid = configuration["metadata"]["annotations"]["backend-injector/dev-pid"]
            return configuration if url == self.url and pid == str(self.popen.pid) else None

        found: dict[str, Any] = wait_for(registered, "the dev registration", timeout=60)
        return found

    def stop(self, sig: int) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait(timeout=60)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)


def registration(plane: ControlPlane) -> dict[str, Any] | None:
    result = plane.kubectl("get", "mutatingwebhookconfiguration", DEV_CONFIGURATION,
                           "-o", "json")
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    found: dict[str, Any] = json.loads(result.stdout)
    return found
