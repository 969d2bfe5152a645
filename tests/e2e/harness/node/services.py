"""What makes Services work for the node's pods, on the host: CoreDNS (cluster names and
``host.docker.internal``) and kube-proxy (iptables mode), plus the scheduler that places
pods on the node.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from ..controlplane import ControlPlane, free_port
from ..node_host import run
from ..pki import client_kubeconfig
from .binaries import NodeBinaries
from .names import (
    CLUSTER_DOMAIN,
    DNS_PORT,
    HOST_ADDRESS,
    HOST_DOCKER_INTERNAL,
    NODE_NAME,
    POD_SUBNET,
)
from .supervisor import Supervisor


class ClusterServices:
    """kube-scheduler, CoreDNS and kube-proxy for one node."""

    def __init__(
        self,
        plane: ControlPlane,
        binaries: NodeBinaries,
        base_dir: Path,
        supervisor: Supervisor,
    ) -> None:
        self.plane = plane
        self.binaries = binaries
        self.base_dir = base_dir
        self._supervisor = supervisor
        # Picked as each one starts: the shorter the time to its bind, the smaller the race.
        self.scheduler_port = 0
        self.coredns_health_port = 0
        self.coredns_ready_port = 0
        self.proxy_health_port = 0

    def _kubeconfig(self, name: str, user: str) -> Path:
        # Users the bootstrap RBAC policy already grants what each component needs.
        return client_kubeconfig(
            self.plane.ca, self.base_dir / f"{name}.kubeconfig", server=self.plane.server_url,
            user=user,
        )

    def start_scheduler(self) -> None:
        kubeconfig = self._kubeconfig("scheduler", "system:kube-scheduler")
        self.scheduler_port = free_port()
        self._supervisor.spawn(
            "kube-scheduler",
            [
                self.binaries.kube_scheduler,
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                "--leader-elect=false",
            ],
        )

    def start_coredns(self) -> None:
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
        self._supervisor.spawn("coredns", [self.binaries.coredns, "-conf", corefile])

    def coredns_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.coredns_ready_port}/ready")

    def start_kube_proxy(self) -> None:
        kubeconfig = self._kubeconfig("kube-proxy", "system:kube-proxy")
        self.proxy_health_port = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
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
        self._supervisor.spawn("kube-proxy", [self.binaries.kube_proxy, f"--config={config_path}"])

    def kube_proxy_healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.proxy_health_port}/healthz")

    @staticmethod
    def routed() -> bool:
        """Whether kube-proxy's rules for the kubernetes Service are in place."""
        # Its health endpoint answers before the first sync; the rules are what pods need.
        rules = run(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"], check=False)
        return "default/kubernetes:https cluster IP" in rules


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 (TLS unverified: a health endpoint, not a trust decision)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False
