"""`backend-injector dev` against a real kube-apiserver.

The command runs as a user runs it, in a process of its own (see harness/dev.py), with the
control plane's admin kubeconfig and ``--url https://127.0.0.1:PORT/mutate`` (the apiserver
runs on this machine's loopback, as Docker Desktop's reaches its host at
``host.docker.internal``). Everything is observed through the apiserver: the registration it
makes, pods created in an opted-in namespace, the registration gone after SIGTERM or Ctrl-C,
and, after ``kill -9``, a stale registration that still lets pods be created.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness.admission import (
    assert_injected,
    chart_like_pod,
    create_pod,
    is_mutated,
    kubectl_json,
    names,
    new_namespace,
    opted_in_labels,
)
from .harness.controlplane import ControlPlane
from .harness.dev import DEV_CONFIGURATION, DevProcess, registration

pytestmark = pytest.mark.e2e



@pytest.fixture
def dev_process(control_plane: ControlPlane, tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(control_plane, control_plane.log_dir / f"dev-{tmp_path.name}.log")
    try:
        yield process
    finally:
        process.kill()
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", DEV_CONFIGURATION,
                              "--ignore-not-found")


def created(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result = create_pod(plane, namespace, chart_like_pod(name))
    assert result.returncode == 0, result.stderr
    pod: dict[str, Any] = json.loads(result.stdout)
    return pod


def test_dev_mutates_opted_in_pods_and_unregisters_on_sigterm(
    control_plane: ControlPlane, dev_process: DevProcess
) -> None:
    configuration = dev_process.wait_registered()
    (webhook,) = configuration["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["clientConfig"]["url"] == dev_process.url

    opted_in = new_namespace(control_plane, "dev-in", opted_in_labels())
    other = new_namespace(control_plane, "dev-out")
    pod = created(control_plane, opted_in, "trainer")
    assert is_mutated(pod)
    assert names(pod["spec"]["initContainers"]) == ["wait-for-kafka"]
    assert_injected(pod["spec"]["containers"][0])
    # The same selector as the deployed webhook: a namespace that did not opt in is not sent.
    untouched = created(control_plane, other, "trainer")
    assert not is_mutated(untouched)
    stored = kubectl_json(control_plane, "get", "pod", "trainer", "-n", opted_in)
    assert is_mutated(stored)

    assert dev_process.stop(signal.SIGTERM) == 0
    assert registration(control_plane) is None
    assert "removed the dev registration" in dev_process.messages()
    after = created(control_plane, opted_in, "after-exit")
    assert not is_mutated(after)


def test_ctrl_c_removes_the_registration_too(
    control_plane: ControlPlane, dev_process: DevProcess
) -> None:
    dev_process.wait_registered()
    assert dev_process.stop(signal.SIGINT) == 0
    assert registration(control_plane) is None


def test_after_kill_9_pods_are_still_created_and_the_next_run_takes_over(
    control_plane: ControlPlane, dev_process: DevProcess, tmp_path: Path
) -> None:
    dev_process.wait_registered()
    dev_process.kill()
    # Nothing removed it: the registration is left behind, pointing at a closed port.
    left = registration(control_plane)
    assert left is not None
    opted_in = new_namespace(control_plane, "dev-killed", opted_in_labels())
    pod = created(control_plane, opted_in, "while-stale")
    assert not is_mutated(pod)
    assert names(pod["spec"]["initContainers"]) == ["wait-for-mlflow", "wait-for-kafka"]

    # A new run replaces the stale registration rather than failing on the name.
    second = DevProcess(control_plane, control_plane.log_dir / f"dev-{tmp_path.name}-2.log")
    try:
        second.wait_registered()
        assert "replacing a dev registration left by an earlier run" in second.messages()
        assert is_mutated(created(control_plane, opted_in, "after-restart"))
        assert second.stop(signal.SIGTERM) == 0
    finally:
        second.kill()
    assert registration(control_plane) is None
