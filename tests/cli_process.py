"""The command line run as a user runs it: the console entry point in a subprocess with a clean
environment, and a kubeconfig for a cluster that is not there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

CLI_TIMEOUT_SECONDS = 60


def run_cli(*args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("BACKEND_INJECTOR_", "KUBERNETES_", "KUBECONFIG"))}
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin, capture_output=True, text=True, env={**clean, **(env or {})},
        timeout=CLI_TIMEOUT_SECONDS, check=False,
    )


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig_for(path: Path, server: str, *, context: str = "docker-desktop") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
        "current-context": context,
    }))
    return path
