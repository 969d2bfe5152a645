"""The node's kubelet: its configuration and credentials, its registration (Ready, the CPUs
the node advertises, the not-ready taint lifted), and the container logs it writes.

Every directory it is told of is the node's own: its root (``--root-dir``, which holds the
pods' volumes, plugin and pod-resources sockets, checkpoints and CPU/memory manager state),
its certificates, the pod logs, and the volume plugin directory (which would default to
``/usr/libexec/kubernetes/kubelet-plugins/volume/exec``). The paths it writes to whatever it
is told (``/var/lib/kubelet/device-plugins``, ``/var/log/containers``) are hijacked in the
node's mount namespace, where it runs.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

from ..controlplane import ControlPlane, free_port
from ..node_host import NodeError
from ..pki import client_kubeconfig
from .binaries import NodeBinaries
from .mount_namespace import MountNamespace
from .names import (
    CGROUP_ROOT,
    CLUSTER_DOMAIN,
    HOST_ADDRESS,
    KUBELET_PORT,
    NODE_CPUS,
    NODE_NAME,
    NODE_STATUS_UPDATE_FREQUENCY,
)
from .supervisor import Supervisor


class Kubelet:
    """The kubelet of node :data:`NODE_NAME`, in the node's mount namespace."""

    def __init__(
        self,
        plane: ControlPlane,
        binaries: NodeBinaries,
        base_dir: Path,
        namespace: MountNamespace,
        supervisor: Supervisor,
    ) -> None:
        self.plane = plane
        self.binaries = binaries
        self.base_dir = base_dir
        self.directory = base_dir / "kubelet"
        self.pod_logs_dir = base_dir / "pod-logs"
        self.health_port = 0
        self._namespace = namespace
        self._supervisor = supervisor

    def start(self, runtime_socket: Path) -> None:
        """Write the configuration and start the kubelet (not waiting for it)."""
        self.directory.mkdir()
        self.pod_logs_dir.mkdir()
        # A user the bootstrap RBAC policy (the Node authorizer) already grants what it needs.
        kubeconfig = client_kubeconfig(
            self.plane.ca,
            self.base_dir / "kubelet.kubeconfig",
            server=self.plane.server_url,
            user=f"system:node:{NODE_NAME}",
            group="system:nodes",
        )
        resolv_conf = self.base_dir / "resolv.conf"
        # Pods with dnsPolicy Default get this; ClusterFirst pods get CoreDNS.
        resolv_conf.write_text(f"nameserver {HOST_ADDRESS}\n")
        self.health_port = free_port()
        config_path = self.base_dir / "kubelet.json"
        config_path.write_text(json.dumps(self.config(runtime_socket, resolv_conf), indent=2))
        self._supervisor.spawn(
            "kubelet",
            [
                self.binaries.kubelet,
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.directory}",
                f"--cert-dir={self.directory / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={HOST_ADDRESS}",
                "--v=1",
            ],
            prefix=self._namespace.prefix(),
        )

    def config(self, runtime_socket: Path, resolv_conf: Path) -> dict[str, object]:
        """The KubeletConfiguration (JSON is YAML)."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": HOST_ADDRESS,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.health_port,
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
            "containerRuntimeEndpoint": f"unix://{runtime_socket}",
            "clusterDNS": [HOST_ADDRESS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv_conf),
            "podLogsDir": str(self.pod_logs_dir),
            "volumePluginDir": str(self.directory / "volume-plugins"),
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

    def node_ready(self) -> bool:
        try:
            node = self.plane.api_get(f"/api/v1/nodes/{NODE_NAME}")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def advertise_cpus(self) -> None:
        """Patch the node's status to :data:`NODE_CPUS` CPUs (see names.py for why)."""
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

    def remove_not_ready_taint(self) -> None:
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
        node = self.plane.api_get(f"/api/v1/nodes/{NODE_NAME}")
        return str(node["status"]["allocatable"]["cpu"])

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
