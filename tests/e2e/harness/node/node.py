"""The node the tests use: it composes the runtime, the kubelet, the network and the cluster
services, starts them in order, and on stop undoes every change they made to the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..controlplane import ControlPlane
from ..host_lock import NODE, lock_host
from ..node_host import NodeError, cgroup_hierarchies, remove_cgroup_tree
from . import cgroups, network
from .binaries import NodeBinaries
from .kubelet import Kubelet
from .mount_namespace import MountNamespace
from .names import CGROUP_ROOT, CNI_BIN_DIR, NODE_NAME
from .runtime import ContainerRuntime
from .services import ClusterServices
from .supervisor import Supervisor, pids_running, processes_named

# How long start() waits for another session's node to stop.
LOCK_TIMEOUT = 1200.0


class Node:
    """One kubelet node (and scheduler, proxy, DNS) joined to ``plane``.

    After :meth:`start`: pods scheduled to the node run; :meth:`import_image` makes an OCI
    archive's image available to them (no registry is reachable, and the runtime is told
    never to try one); :meth:`container_log` reads a container's output.
    """

    def __init__(self, plane: ControlPlane, binaries: NodeBinaries) -> None:
        self.plane = plane
        self.binaries = binaries
        # A directory of its own per node: a test may run a node before the session's node.
        self.base_dir = Path(tempfile.mkdtemp(prefix="node-", dir=plane.base_dir))
        self.log_dir = plane.log_dir
        self._supervisor = Supervisor(self.log_dir, self.base_dir, plane.tail_logs)
        self._namespace = MountNamespace(self.base_dir)
        self._network = network.NodeNetwork(self.base_dir)
        self.runtime = ContainerRuntime(
            binaries, self.base_dir / "containerd", self._namespace, self._supervisor
        )
        self.kubelet = Kubelet(plane, binaries, self.base_dir, self._namespace, self._supervisor)
        self.services = ClusterServices(plane, binaries, self.base_dir, self._supervisor)
        self._lock: int | None = None
        self._started = False
        self._stopped = False

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> None:
        """Start every node component and wait until the node is Ready and DNS serves."""
        if os.geteuid() != 0:
            raise NodeError("the node needs root (network, mounts, cgroups)")
        if not (CNI_BIN_DIR / "bridge").exists():
            raise NodeError(f"{CNI_BIN_DIR}/bridge is missing (tools/setup.sh --all)")
        self._started = True
        atexit.register(self.stop)
        try:
            self.reserve()
            deadline = time.monotonic() + timeout
            wait = functools.partial(self._supervisor.wait, deadline)
            self._network.create()
            self._namespace.start()
            self.runtime.start(self._network.write_cni_config())
            wait("containerd", self.runtime.ready)
            self.runtime.import_pause_image(self.base_dir)
            cgroups.create_cgroup_root()
            self._network.start_forwarder(self.plane)
            self.services.start_scheduler()
            self.services.start_coredns()
            self.services.start_kube_proxy()
            self.kubelet.start(self.runtime.socket)
            wait(f"node {NODE_NAME} Ready", self.kubelet.node_ready)
            self.kubelet.advertise_cpus()
            self.kubelet.remove_not_ready_taint()
            wait("CoreDNS ready", self.services.coredns_ready)
            wait("kube-proxy healthy", self.services.kube_proxy_healthy)
            wait("kube-proxy's rules for the kubernetes Service", self.services.routed)
        except BaseException:
            self.stop()
            raise

    def reserve(self) -> None:
        """Take the machine-wide node lock and clear what a killed session left (idempotent).

        ``start`` does this itself; calling it first lets a caller see the machine as this
        node will find it: no other session's node running, none half-removed.
        """
        if self._lock is None:
            self._lock = lock_host(LOCK_TIMEOUT, NODE, error=NodeError)
            self._remove_leftovers()

    def stop(self) -> None:
        """Stop everything and undo every change to the machine (idempotent).

        Every step runs even when one before it failed (a half-cleaned machine is worse than
        a failed test); the first failure is raised at the end.
        """
        if self._stopped or not self._started:
            self._release()
            return
        self._stopped = True
        errors: list[BaseException] = []

        def step(action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as error:  # collected, raised below
                errors.append(error)

        # The kubelet first, so that it restarts nothing; then every container (by cgroup),
        # the runtime, and whatever is left in the mount namespace (the shims).
        step(lambda: self._supervisor.terminate_named("kubelet"))
        step(cgroups.kill_pods)
        step(lambda: self._supervisor.terminate_named("containerd"))
        step(self._namespace.kill)
        for terminate in self._supervisor.stop_steps():
            step(terminate)
        step(self._network.stop_forwarder)
        step(self._network.remove_added_chains)
        step(self._network.remove_added_tables)
        step(network.remove_interfaces)
        for hierarchy in cgroup_hierarchies():
            step(functools.partial(remove_cgroup_tree, hierarchy / CGROUP_ROOT))
        step(self._network.restore_forwarding)
        step(self._namespace.remove_created_mount_points)
        atexit.unregister(self.stop)
        self._release()
        if errors:
            raise NodeError(f"stopping the node: {errors[0]!r}") from errors[0]

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _remove_leftovers(self) -> None:
        """Clean up after a session that was SIGKILLed (its processes died with it)."""
        cgroups.kill_pods_once()
        for pid in pids_running(self.binaries.containerd_shim_runc_v2):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if network.bridge_exists():
            network.remove_interfaces()
        cgroups.remove_cgroup_root()
        # Its kube-proxy's and CNI plugins' chains too: left in place, every later node would
        # take them for the machine's own, add its rules into them and leave those behind.
        # Only while no kube-proxy at all runs here (a machine serving another cluster keeps
        # its rules; the node test then reports them).
        if not processes_named("kube-proxy"):
            network.remove_all_node_chains()
        network.check_pod_subnet_is_free()

    # --- what the tests use ---------------------------------------------------------------

    def ctr(self, *args: str | os.PathLike[str], check: bool = True) -> str:
        """Run ctr against this node's containerd, in the Kubernetes namespace."""
        return self.runtime.ctr(*args, check=check)

    def import_image(self, archive: Path) -> None:
        """Import an OCI image archive; its ``io.containerd.image.name`` is the image name."""
        self.runtime.import_image(archive)

    def advertised_cpus(self) -> str:
        """The node's allocatable CPUs as the API reports them now."""
        return self.kubelet.advertised_cpus()

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """Everything a container of a pod wrote, from the kubelet's log files (CRI format)."""
        return self.kubelet.container_log(namespace, pod, container)


@contextlib.contextmanager
def running_node(plane: ControlPlane, binaries: NodeBinaries) -> Iterator[Node]:
    """Start a node on ``plane`` for the duration of a ``with`` block."""
    node = Node(plane, binaries)
    with node:
        yield node
