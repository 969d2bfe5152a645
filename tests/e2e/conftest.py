"""Fixtures for tests that run against a real control plane (see harness/controlplane.py).

Every test under tests/e2e is marked ``e2e``. The binaries are built (or found in the cache)
once per session, right after collection and only when an e2e test was selected: a cold
build takes tens of minutes, which must not count against any single test's timeout.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .harness.controlplane import Binaries, ControlPlane, ControlPlaneError, build_binaries
from .harness.deploy import Deployment, deployed_webhook
from .harness.node import Node, NodeBinaries

E2E_DIR = Path(__file__).resolve().parent

# Set to keep the control plane's temp dir (certs, kubeconfig, logs) after the session.
KEEP_ENV = "BACKEND_INJECTOR_E2E_KEEP"

_binaries: Binaries | None = None
_build_error: BaseException | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: runs against a real kube-apiserver built from the Kubernetes Go modules"
    )


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(str(item.path)).resolve().parents


def _node_order(item: pytest.Item) -> int:
    """0: runs before any node exists; 1: a node of its own; 2: the session's node."""
    if "node" in getattr(item, "fixturenames", ()):
        return 2
    return 1 if Path(str(item.path)).name.startswith("test_node") else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)
    # Once a node has joined the session's cluster, the scheduler places every pending pod
    # of the other e2e tests too: those run first, on a cluster without nodes, as written.
    # (sort is stable, so the order within each group stays as collected.)
    items.sort(key=_node_order)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before the first test, with pytest's output capture suspended.

    A failure is kept and re-raised by the ``control_plane`` fixture, so the e2e tests
    error (never skip) while the rest of the suite still runs.
    """
    global _binaries, _build_error
    if not any(_is_e2e(item) for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    # Without this the build's progress would sit in the capture buffer for half an hour.
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        try:
            _binaries = build_binaries(stream=sys.stderr)
        except (ControlPlaneError, OSError) as error:
            _build_error = error


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver + kube-controller-manager for the whole session."""
    if _build_error is not None:
        raise ControlPlaneError(f"building the binaries failed: {_build_error}")
    binaries = _binaries if _binaries is not None else build_binaries(stream=sys.stderr)
    plane = ControlPlane(binaries, keep_dir=bool(os.environ.get(KEEP_ENV)))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane) -> Iterator[Node]:
    """A kubelet node (containerd, runc, CNI bridge, scheduler, kube-proxy, CoreDNS) joined
    to the session's control plane; only started when a test asks for it."""
    started = Node(control_plane, NodeBinaries.from_cache())
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of the control-plane logs to the report of a failed e2e test."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        plane = getattr(item, "funcargs", {}).get("control_plane")
        if isinstance(plane, ControlPlane):
            report.sections.append(("control-plane logs (tail)", plane.tail_logs()))
    return report


@pytest.fixture(scope="module")
def deployment(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The webhook deployed from the project's manifests (harness/deploy.py), once for each
    module that asks for it and torn down at the module's end."""
    with deployed_webhook(control_plane, tmp_path_factory.mktemp("webhook")) as deployed:
        yield deployed
