"""A real node for the e2e control plane: containerd, runc, kubelet, scheduler, proxy, DNS.

On top of a running :class:`~tests.e2e.harness.controlplane.ControlPlane` this starts

* containerd (with runc and the Debian CNI bridge plugins) and a kubelet, both inside one
  private mount namespace, so every mount they make (overlay root filesystems, Secret
  tmpfs, network namespace handles) lives and dies with that namespace, and the kernel
  tunables the kubelet insists on writing land in files of the test's own that are
  bind-mounted over ``/proc/sys`` there;
* kube-scheduler, kube-proxy (iptables mode) and CoreDNS on the host.

Pods get addresses from :data:`POD_SUBNET` on the bridge :data:`BRIDGE`, which this module
creates with the gateway :data:`HOST_ADDRESS`. That one address is the node's IP, the
cluster DNS server (CoreDNS listens there), and what ``host.docker.internal`` resolves to,
as on Docker Desktop: a backend listening on it on the host is reachable from every pod.
Pods reach the apiserver through the ``kubernetes`` Service: its endpoint is a forwarder on
:data:`HOST_ADDRESS` to the apiserver's loopback port.

:meth:`Node.stop` stops everything started, then removes the iptables chains, interfaces,
cgroups and mount points created, and restores ``net.ipv4.ip_forward``; the machine is left
as it was found (``tests/e2e/test_node.py`` checks that).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import oci
from .controlplane import (
    BUILD_SCRIPT,
    ControlPlane,
    KeyPair,
    _Process,
    free_port,
    wait_while_running,
    write_kubeconfig,
)
from .node_host import (
    NodeError,
    TcpForwarder,
    cgroup_hierarchies,
    cgroup_pids,
    die_with_parent_prefix,
    iptables_chains,
    lock_machine,
    nft_tables,
    read_sysctl,
    remove_cgroup_tree,
    remove_chains,
    remove_tables,
    run,
    write_sysctl,
)

# The pods' network. 10.88.0.0/16 is the usual CNI bridge default; start() refuses to run
# when any interface or route of the machine already uses it.
POD_SUBNET = ipaddress.IPv4Network("10.88.0.0/16")
# The bridge's own address: node IP, cluster DNS, host.docker.internal.
HOST_ADDRESS = "10.88.0.1"
HOST_DOCKER_INTERNAL = "host.docker.internal"
BRIDGE = "bi-e2e-br0"
NODE_NAME = "bi-e2e-node"
CLUSTER_DOMAIN = "cluster.local"
# Ports on HOST_ADDRESS (an address of the node's own, so fixed ports cannot collide).
APISERVER_FORWARD_PORT = 6443
KUBELET_PORT = 10250
DNS_PORT = 53
# Cgroup parent of every pod (created in each v1 hierarchy and the unified one).
CGROUP_ROOT = "bi-e2e-node"
CGROUP_FS = Path("/sys/fs/cgroup")
# containerd's namespace for Kubernetes images and containers.
K8S_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "localhost/bi-e2e/pause"
CNI_BIN_DIR = Path("/usr/lib/cni")

# Kernel tunables the kubelet sets at start (setupKernelTunables) and stops without.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# The bridge plugin writes this one too; the harness sets it itself (Service traffic between
# pods is forwarded) and restores it on stop.
IP_FORWARD = "net/ipv4/ip_forward"
# Host paths that containerd, its shims, libcni or the kubelet write to regardless of their
# configured directories. Inside the mount namespace each gets a directory of the test's own
# mounted over it; a mount point that did not exist is created and removed again.
# (The kubelet's device plugin socket stays under /var/lib/kubelet whatever its --root-dir.)
HIJACKED_PATHS = (
    Path("/run/containerd"),
    Path("/var/lib/cni"),
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
)
# CPUs the node advertises. The unmodified chart requests about 3.5 CPUs per release (and
# the walk installs it twice and scales it up), more than the 2 CPUs of a CI machine, while
# its stand-in pods use a fraction of that. So once the node is Ready its status says this
# many CPUs (capacity and allocatable), which the scheduler and the kubelet's admission
# read; the kubelet would write its own count back at its next status update, which is why
# that runs only hourly (its lease, not its status, is the node's heartbeat). Nothing else
# about the node is faked.
NODE_CPUS = 16
NODE_STATUS_UPDATE_FREQUENCY = "1h"
# Prefixes of the iptables chains kubelet, kube-proxy and the CNI plugins create.
CHAIN_PREFIXES = ("KUBE-", "CNI-")


@dataclass(frozen=True)
class NodeBinaries:
    """Absolute paths of the cached node binaries (see tools/build-binaries.sh)."""

    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim_runc_v2: Path
    ctr: Path
    runc: Path
    coredns: Path
    pause: Path
    # Not part of the node: the program of the node smoke tests' image.
    probe: Path

    @classmethod
    def from_cache(cls) -> NodeBinaries:
        """Read the paths from the build script; the build itself ran at collection."""
        listing = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-paths"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        paths = dict(line.split("=", 1) for line in listing.splitlines() if "=" in line)
        binaries = cls(
            **{field: Path(paths[field.replace("_", "-")]).resolve() for field in cls.fields()}
        )
        for path in vars(binaries).values():
            if not os.access(path, os.X_OK):
                raise NodeError(f"{path} is missing after the build")
        return binaries

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)


# --- the node -------------------------------------------------------------------------------


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
        self.containerd_dir = self.base_dir / "containerd"
        self.containerd_socket = self.containerd_dir / "containerd.sock"
        self.kubelet_dir = self.base_dir / "kubelet"
        self.pod_logs_dir = self.base_dir / "pod-logs"
        self.pause_image = f"{PAUSE_IMAGE}:{binaries.pause.parent.name.removeprefix('pause-')}"
        self._processes: list[_Process] = []
        self._holder: subprocess.Popen[bytes] | None = None
        self._forwarder: TcpForwarder | None = None
        self._chains_before: set[tuple[str, str, str]] = set()
        self._tables_before: set[tuple[str, str]] = set()
        self._ip_forward_before: str | None = None
        self._created_mount_points: list[Path] = []
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
            self._chains_before = iptables_chains()
            self._tables_before = nft_tables()
            self._create_bridge()
            self._ip_forward_before = read_sysctl(IP_FORWARD)
            write_sysctl(IP_FORWARD, "1")
            self._start_mount_namespace()
            self._start_containerd()
            self._wait(deadline, "containerd", self._containerd_ready)
            self._import_pause_image()
            self._create_cgroup_root()
            self._write_client_configs()
            self._start_forwarder()
            self._start_scheduler()
            self._start_coredns()
            self._start_kube_proxy()
            self._start_kubelet()
            self._wait(deadline, f"node {NODE_NAME} Ready", self._node_ready)
            self._advertise_cpus()
            self._remove_not_ready_taint()
            self._wait(deadline, "CoreDNS ready", self._coredns_ready)
            self._wait(deadline, "kube-proxy healthy", self._kube_proxy_healthy)
            self._wait(deadline, "kube-proxy's rules for the kubernetes Service", self._routed)
        except BaseException:
            self.stop()
            raise

    def reserve(self) -> None:
        """Take the machine-wide node lock and clear what a killed session left (idempotent).

        ``start`` does this itself; calling it first lets a caller see the machine as this
        node will find it: no other session's node running, none half-removed.
        """
        if self._lock is None:
            self._lock = lock_machine()
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
        step(lambda: self._terminate_named("kubelet"))
        step(self._kill_pods)
        step(lambda: self._terminate_named("containerd"))
        step(self._kill_mount_namespace)
        for process in reversed(self._processes):
            step(lambda process=process: ControlPlane._terminate(process))  # type: ignore[misc]
        self._processes.clear()
        if self._forwarder is not None:
            step(self._forwarder.stop)
        step(
            lambda: remove_chains(
                {
                    chain
                    for chain in iptables_chains() - self._chains_before
                    if chain[2].startswith(CHAIN_PREFIXES)
                }
            )
        )
        step(lambda: remove_tables(nft_tables() - self._tables_before))
        step(self._remove_interfaces)
        for hierarchy in cgroup_hierarchies():
            step(lambda hierarchy=hierarchy: remove_cgroup_tree(hierarchy / CGROUP_ROOT))  # type: ignore[misc]
        if self._ip_forward_before is not None:
            before = self._ip_forward_before
            step(lambda: write_sysctl(IP_FORWARD, before))
        # Nothing is mounted on them outside the (now gone) mount namespace; whatever a
        # client wrote there on the host's side goes with them.
        for mount_point in reversed(self._created_mount_points):
            shutil.rmtree(mount_point, ignore_errors=True)
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
        for hierarchy in cgroup_hierarchies():
            for pid in cgroup_pids(hierarchy / CGROUP_ROOT):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self._pids_running(self.binaries.containerd_shim_runc_v2):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            self._remove_interfaces()
        for hierarchy in cgroup_hierarchies():
            remove_cgroup_tree(hierarchy / CGROUP_ROOT)
        # Its kube-proxy's and CNI plugins' chains too: left in place, every later node would
        # take them for the machine's own, add its rules into them and leave those behind.
        # Only while no kube-proxy at all runs here (a machine serving another cluster keeps
        # its rules; the node test then reports them).
        if not self._processes_named("kube-proxy"):
            remove_chains({chain for chain in iptables_chains()
                           if chain[2].startswith(CHAIN_PREFIXES)})
        for network in self._networks_in_use():
            if network.overlaps(POD_SUBNET):
                raise NodeError(f"{POD_SUBNET} overlaps {network}, which the machine uses")

    @staticmethod
    def _processes_named(name: str) -> list[int]:
        return Node._pids_where(lambda proc: (proc / "comm").read_text().strip() == name)

    @staticmethod
    def _pids_running(executable: Path) -> list[int]:
        return Node._pids_where(lambda proc: Path(os.readlink(proc / "exe")) == executable)

    @staticmethod
    def _pids_where(test: Callable[[Path], bool]) -> list[int]:
        """The processes whose /proc entry passes ``test`` (those gone meanwhile are skipped)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if test(proc):
                        pids.append(int(proc.name))
        return pids

    @staticmethod
    def _networks_in_use() -> list[ipaddress.IPv4Network]:
        networks = []
        for entry in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"])):
            destination = entry.get("dst", "")
            if destination and destination != "default" and entry.get("type") != "broadcast":
                with contextlib.suppress(ValueError):
                    networks.append(ipaddress.IPv4Network(destination, strict=False))
        return networks

    # --- network --------------------------------------------------------------------------

    def _create_bridge(self) -> None:
        # Created here rather than by the bridge plugin at the first pod, so that CoreDNS,
        # the forwarder and an external backend can listen on HOST_ADDRESS from the start.
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/{POD_SUBNET.prefixlen}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])

    def _remove_interfaces(self) -> None:
        # Pod veths vanish with their network namespaces; any still attached go first.
        links = json.loads(run(["ip", "-j", "link", "show"], check=False) or "[]")
        for link in links:
            if link.get("master") == BRIDGE:
                run(["ip", "link", "del", link["ifname"]], check=False)
        run(["ip", "link", "del", BRIDGE], check=False)

    def _write_cni_config(self) -> Path:
        conf_dir = self.base_dir / "cni"
        conf_dir.mkdir()
        config = {
            "cniVersion": "1.0.0",
            "name": "bi-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # No masquerading: pods only talk to each other and to HOST_ADDRESS.
                    "ipMasq": False,
                    # A pod reaching itself through its own Service comes back on its port.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(POD_SUBNET), "gateway": HOST_ADDRESS}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.base_dir / "cni-ipam"),
                    },
                }
            ],
        }
        (conf_dir / "10-bi-e2e.conflist").write_text(json.dumps(config, indent=2))
        return conf_dir

    # --- mount namespace ------------------------------------------------------------------

    def _start_mount_namespace(self) -> None:
        """A process holding a private mount namespace; containerd and kubelet join it."""
        self._holder = subprocess.Popen(
            [
                *die_with_parent_prefix(),
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sleep",
                "infinity",
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        own = os.stat("/proc/self/ns/mnt").st_ino
        for _ in range(100):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{self._holder.pid}/ns/mnt").st_ino != own:
                    # setpriv has exec'd unshare, which has unshared and exec'd sleep.
                    if os.readlink(f"/proc/{self._holder.pid}/exe").endswith("sleep"):
                        break
            time.sleep(0.05)
        else:
            raise NodeError("the mount namespace did not come up")
        stand_ins = self.base_dir / "sysctl"
        stand_ins.mkdir()
        for name in (*KUBELET_SYSCTLS, IP_FORWARD):
            stand_in = stand_ins / name.replace("/", ".")
            stand_in.write_text(read_sysctl(name) + "\n")
            self._in_namespace(["mount", "--bind", stand_in, Path("/proc/sys") / name])
        hijacked = self.base_dir / "hijacked"
        for path in HIJACKED_PATHS:
            if not path.exists():
                path.mkdir(parents=True)
                self._created_mount_points.append(path)
            own_dir = hijacked / path.relative_to("/")
            own_dir.mkdir(parents=True)
            self._in_namespace(["mount", "--bind", own_dir, path])

    def _namespace_prefix(self) -> list[str]:
        assert self._holder is not None
        return ["nsenter", f"--target={self._holder.pid}", "--mount", "--"]

    def _in_namespace(self, argv: Sequence[str | os.PathLike[str]]) -> str:
        return run([*self._namespace_prefix(), *argv])

    def _kill_mount_namespace(self) -> None:
        if self._holder is None:
            return
        with contextlib.suppress(OSError):
            namespace = os.stat(f"/proc/{self._holder.pid}/ns/mnt").st_ino
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit() and int(proc.name) != self._holder.pid:
                    with contextlib.suppress(OSError):
                        if os.stat(proc / "ns" / "mnt").st_ino == namespace:
                            os.kill(int(proc.name), signal.SIGKILL)
        self._holder.kill()
        self._holder.wait(timeout=10)

    # --- processes ------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        in_namespace: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        log_path = self.log_dir / f"{name}.log"
        prefix = [*die_with_parent_prefix()]
        if in_namespace:
            prefix += self._namespace_prefix()
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [*prefix, *(os.fspath(arg) for arg in argv)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=env,
                start_new_session=True,
            )
        self._processes.append(_Process(name, popen, log_path))

    def _terminate_named(self, name: str) -> None:
        for process in list(self._processes):
            if process.name == name:
                ControlPlane._terminate(process)
                self._processes.remove(process)

    def _kill_pods(self) -> None:
        hierarchies = cgroup_hierarchies()
        for _ in range(50):
            pids = set().union(*(cgroup_pids(h / CGROUP_ROOT) for h in hierarchies))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        wait_while_running(self._processes, deadline, what, ready,
                           error=NodeError, logs=self.plane.tail_logs)

    # --- containerd -----------------------------------------------------------------------

    def _start_containerd(self) -> None:
        self.containerd_dir.mkdir()
        cni_conf_dir = self._write_cni_config()
        # No registry is reachable: every pull goes to a closed local port and fails at
        # once, instead of waiting for a DNS or connect timeout.
        hosts_dir = self.containerd_dir / "certs.d" / "_default"
        hosts_dir.mkdir(parents=True)
        (hosts_dir / "hosts.toml").write_text('server = "http://127.0.0.1:9"\n')
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        images = "plugins.'io.containerd.cri.v1.images'"
        config = f"""\
version = 3
root = "{self.containerd_dir / "root"}"
state = "{self.containerd_dir / "state"}"

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_dir / "containerd.sock.ttrpc"}"

[debug]
  level = "info"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"

# NRI would create its socket directory under /run on the host's side.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = "{self.pause_image}"

[{images}.registry]
  config_path = "{self.containerd_dir / "certs.d"}"

[{runtime}]
  # root lacks CAP_SYS_RESOURCE here: a negative oom_score_adj would fail every container.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{runtime}.containerd]
  default_runtime_name = "runc"

[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{runtime}.containerd.runtimes.runc.options]
  BinaryName = "{self.binaries.runc}"
  Root = "{self.containerd_dir / "runc"}"
  SystemdCgroup = false

[{runtime}.cni]
  bin_dirs = ["{CNI_BIN_DIR}"]
  conf_dir = "{cni_conf_dir}"
"""
        config_path = self.containerd_dir / "config.toml"
        config_path.write_text(config)
        # containerd finds its shim on PATH (and the shim finds runc there when a container
        # is not started through the CRI, as with `ctr run`).
        path = os.pathsep.join(
            [
                str(self.binaries.containerd_shim_runc_v2.parent),
                str(self.binaries.runc.parent),
                os.environ.get("PATH", ""),
            ]
        )
        self._spawn(
            "containerd",
            [self.binaries.containerd, f"--config={config_path}"],
            in_namespace=True,
            env={**os.environ, "PATH": path},
        )

    def ctr(self, *args: str | os.PathLike[str], check: bool = True) -> str:
        """Run ctr against this node's containerd, in the Kubernetes namespace.

        It runs in the node's mount namespace, where containerd's host paths (its fifo and
        shim directories under /run/containerd) are the node's own.
        """
        return run(
            [
                *self._namespace_prefix(),
                self.binaries.ctr,
                f"--address={self.containerd_socket}",
                f"--namespace={K8S_NAMESPACE}",
                *args,
            ],
            check=check,
        )

    def _containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        return bool(
            subprocess.run(
                [self.binaries.ctr, f"--address={self.containerd_socket}", "version"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    def import_image(self, archive: Path) -> None:
        """Import an OCI image archive; its ``io.containerd.image.name`` is the image name."""
        self.ctr("images", "import", "--local", archive)

    def _import_pause_image(self) -> None:
        archive = self.base_dir / "pause.tar"
        oci.write_image_archive(
            archive,
            name=self.pause_image,
            entries={"/pause": oci.File(self.binaries.pause.read_bytes(), 0o755)},
            entrypoint=["/pause"],
            user="65535:65535",
        )
        self.import_image(archive)

    # --- cgroups and credentials ----------------------------------------------------------

    def _create_cgroup_root(self) -> None:
        for hierarchy in cgroup_hierarchies():
            root = hierarchy / CGROUP_ROOT
            root.mkdir(exist_ok=True)
            # A new cpuset cgroup starts with no CPUs and no memory nodes: copy the parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists() and (root / knob).exists():
                    (root / knob).write_text((hierarchy / knob).read_text())

    def _client_kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        pair: KeyPair = self.plane.ca.issue(user, organization=group)
        return write_kubeconfig(
            self.base_dir / f"{name}.kubeconfig",
            server=self.plane.server_url,
            ca_pem=self.plane.ca.cert_pem,
            client=pair,
            user=user,
        )

    def _write_client_configs(self) -> None:
        # Users the bootstrap RBAC policy already grants what each component needs.
        self.kubelet_kubeconfig = self._client_kubeconfig(
            "kubelet", f"system:node:{NODE_NAME}", "system:nodes"
        )
        self.scheduler_kubeconfig = self._client_kubeconfig("scheduler", "system:kube-scheduler")
        self.proxy_kubeconfig = self._client_kubeconfig("kube-proxy", "system:kube-proxy")

    # --- the apiserver behind the kubernetes Service --------------------------------------

    def _start_forwarder(self) -> None:
        self._forwarder = TcpForwarder(
            (HOST_ADDRESS, APISERVER_FORWARD_PORT), ("127.0.0.1", self.plane.apiserver_port)
        )
        self._forwarder.start()
        # The control plane runs without an endpoint reconciler (its apiserver is on
        # loopback), so the kubernetes Service's endpoint is published here.
        slice_manifest = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "backend-injector-e2e",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [HOST_ADDRESS], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": APISERVER_FORWARD_PORT, "protocol": "TCP"}],
        }
        result = self.plane.kubectl("apply", "-f", "-", input=json.dumps(slice_manifest))
        if result.returncode != 0:
            raise NodeError(f"publishing the kubernetes endpoint: {result.stderr.strip()}")

    # --- scheduler, DNS, proxy, kubelet ---------------------------------------------------

    def _start_scheduler(self) -> None:
        self.scheduler_port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                self.binaries.kube_scheduler,
                f"--kubeconfig={self.scheduler_kubeconfig}",
                f"--authentication-kubeconfig={self.scheduler_kubeconfig}",
                f"--authorization-kubeconfig={self.scheduler_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                "--leader-elect=false",
            ],
        )

    def _start_coredns(self) -> None:
        self.coredns_health_port = free_port()
        self.coredns_ready_port = free_port()
        corefile = self.base_dir / "Corefile"
        corefile.write_text(
            f""".:{DNS_PORT} {{
    bind {HOST_ADDRESS}
    errors
    health 127.0.0.1:{self.coredns_health_port}
    ready 127.0.0.1:{self.coredns_ready_port}
    hosts {{
        {HOST_ADDRESS} {HOST_DOCKER_INTERNAL}
        fallthrough
    }}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.plane.kubeconfig} e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        )
        self._spawn("coredns", [self.binaries.coredns, "-conf", corefile])

    def _coredns_ready(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.coredns_ready_port}/ready")

    def _start_kube_proxy(self) -> None:
        self.proxy_health_port = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": str(POD_SUBNET),
            "healthzBindAddress": f"127.0.0.1:{self.proxy_health_port}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Only the bridge address gets NodePorts; nothing else of the machine opens.
            "nodePortAddresses": [f"{HOST_ADDRESS}/32"],
            "iptables": {
                # Service traffic between pods on one bridge is masqueraded to the gateway,
                # so that replies come back through the host's conntrack (no br_netfilter).
                "masqueradeAll": True,
                # Would set net.ipv4.conf.all.route_localnet on the machine.
                "localhostNodePorts": False,
                "minSyncPeriod": "0s",
                "syncPeriod": "30s",
            },
            # Zeros leave the machine's conntrack tunables alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        config_path = self.base_dir / "kube-proxy.json"
        config_path.write_text(json.dumps(config, indent=2))
        self._spawn("kube-proxy", [self.binaries.kube_proxy, f"--config={config_path}"])

    def _kube_proxy_healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.proxy_health_port}/healthz")

    @staticmethod
    def _routed() -> bool:
        # Its health endpoint answers before the first sync; the rules are what pods need.
        rules = run(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"], check=False)
        return "default/kubernetes:https cluster IP" in rules

    def _start_kubelet(self) -> None:
        self.kubelet_dir.mkdir()
        self.pod_logs_dir.mkdir()
        self.kubelet_health_port = free_port()
        resolv_conf = self.base_dir / "resolv.conf"
        # Pods with dnsPolicy Default get this; ClusterFirst pods get CoreDNS.
        resolv_conf.write_text(f"nameserver {HOST_ADDRESS}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": HOST_ADDRESS,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.kubelet_health_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.plane.ca_path)},
            },
            "authorization": {"mode": "Webhook"},
            # No systemd on these machines; cgroup v1 is refused since 1.35 unless told.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "cgroupsPerQOS": True,
            # root lacks CAP_SYS_RESOURCE: the default -999 cannot be set.
            "oomScoreAdj": 0,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [HOST_ADDRESS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv_conf),
            "podLogsDir": str(self.pod_logs_dir),
            "volumePluginDir": str(self.kubelet_dir / "volume-plugins"),
            "failSwapOn": False,
            # kube-proxy owns the iptables rules of this node.
            "makeIPTablesUtilChains": False,
            # Imported images can never be pulled again: never collect them, never evict.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "maxPods": 250,
            "enableControllerAttachDetach": False,
            "registerNode": True,
            "rotateCertificates": False,
            "nodeStatusUpdateFrequency": NODE_STATUS_UPDATE_FREQUENCY,
            "nodeStatusReportFrequency": NODE_STATUS_UPDATE_FREQUENCY,
        }
        config_path = self.base_dir / "kubelet.json"
        config_path.write_text(json.dumps(config, indent=2))
        self._spawn(
            "kubelet",
            [
                self.binaries.kubelet,
                f"--config={config_path}",
                f"--kubeconfig={self.kubelet_kubeconfig}",
                f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.kubelet_dir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={HOST_ADDRESS}",
                "--v=1",
            ],
            in_namespace=True,
        )

    def _advertise_cpus(self) -> None:
        patch = {
            "status": {"capacity": {"cpu": str(NODE_CPUS)}, "allocatable": {"cpu": str(NODE_CPUS)}}
        }
        result = self.plane.kubectl(
            "patch",
            "node",
            NODE_NAME,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(patch),
        )
        if result.returncode != 0:
            raise NodeError(f"advertising {NODE_CPUS} CPUs: {result.stderr.strip()}")

    def _remove_not_ready_taint(self) -> None:
        # The kubelet registers its node with this taint, and the node lifecycle controller
        # (off in this control plane, which runs no cloud or multi-node machinery) removes it
        # once the node is Ready. The node is Ready here, so the harness does that one step.
        result = self.plane.kubectl(
            "taint", "node", NODE_NAME, "node.kubernetes.io/not-ready:NoSchedule-"
        )
        if result.returncode != 0 and "not found" not in result.stderr:
            raise NodeError(f"removing the not-ready taint: {result.stderr.strip()}")

    def advertised_cpus(self) -> str:
        """The node's allocatable CPUs as the API reports them now."""
        return str(self.plane.api_get(f"/api/v1/nodes/{NODE_NAME}")["status"]["allocatable"]["cpu"])

    def _node_ready(self) -> bool:
        try:
            node = self.plane.api_get(f"/api/v1/nodes/{NODE_NAME}")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # --- diagnostics ----------------------------------------------------------------------

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """Everything a container of a pod wrote, from the kubelet's log files (CRI format)."""
        lines = []
        pattern = f"{namespace}_{pod}_*/{container}/*.log"
        for path in sorted(self.pod_logs_dir.glob(pattern)):
            for line in path.read_text(errors="replace").splitlines():
                # "<time> <stream> <P|F> <text>"
                parts = line.split(" ", 3)
                lines.append(parts[3] if len(parts) == 4 else line)
        return "\n".join(lines)


def _http_ok(url: str) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


@contextlib.contextmanager
def running_node(plane: ControlPlane, binaries: NodeBinaries) -> Iterator[Node]:
    """Start a node on ``plane`` for the duration of a ``with`` block."""
    node = Node(plane, binaries)
    with node:
        yield node
