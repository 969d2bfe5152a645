"""Small kubectl helpers for the tests that run pods on the e2e node."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .controlplane import ControlPlane

T = TypeVar("T")


def kubectl_json(plane: ControlPlane, *args: str) -> Any:
    """``kubectl get ... -o json``, decoded; fails the test on a kubectl error."""
    result = plane.kubectl(*args, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def kubectl_ok(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    """Run kubectl and fail the test (with its stderr) unless it succeeds."""
    result = plane.kubectl(*args, input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    describe: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``probe`` until it returns something other than None (or False) and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")
        time.sleep(interval)


def pod_summary(plane: ControlPlane, namespace: str) -> str:
    """Pods with phase and container states, for failure messages."""
    result = plane.kubectl("get", "pods", "-n", namespace, "-o", "wide")
    events = plane.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp")
    return f"{result.stdout}{result.stderr}\n{events.stdout[-4000:]}"


def wait_for_pod_phase(
    plane: ControlPlane, namespace: str, name: str, phases: set[str], *, timeout: float
) -> dict[str, Any]:
    """Wait until pod ``name`` is in one of ``phases``; return the pod."""

    def probe() -> dict[str, Any] | None:
        result = plane.kubectl("get", "pod", "-n", namespace, name, "-o", "json")
        if result.returncode != 0:
            return None
        pod: dict[str, Any] = json.loads(result.stdout)
        return pod if pod.get("status", {}).get("phase") in phases else None

    return wait_for(
        f"pod {namespace}/{name} in {sorted(phases)}",
        probe,
        timeout=timeout,
        describe=lambda: pod_summary(plane, namespace),
    )
