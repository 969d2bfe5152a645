"""The node's network on the host: the bridge and its CNI configuration, the address the pods
reach the apiserver at, the machine's routes, and the undoing of what the node's components
add to the machine's packet filter and forwarding.

Pods get addresses from :data:`POD_SUBNET` on :data:`BRIDGE`, whose address
:data:`HOST_ADDRESS` is the node's IP, the cluster DNS server and ``host.docker.internal``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from pathlib import Path

from ..controlplane import ControlPlane
from ..node_host import (
    NodeError,
    TcpForwarder,
    iptables_chains,
    nft_tables,
    read_sysctl,
    remove_chains,
    remove_tables,
    run,
    write_sysctl,
)
from .names import (
    APISERVER_FORWARD_PORT,
    BRIDGE,
    CHAIN_PREFIXES,
    HOST_ADDRESS,
    IP_FORWARD,
    POD_SUBNET,
)


class NodeNetwork:
    """Creates the node's network on the host and removes it again."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._forwarder: TcpForwarder | None = None
        self._chains_before: set[tuple[str, str, str]] = set()
        self._tables_before: set[tuple[str, str]] = set()
        self._ip_forward_before: str | None = None

    def create(self) -> None:
        """Note the machine's chains, tables and forwarding; create the bridge; forward."""
        self._chains_before = iptables_chains()
        self._tables_before = nft_tables()
        # Created here rather than by the bridge plugin at the first pod, so that CoreDNS,
        # the forwarder and an external backend can listen on HOST_ADDRESS from the start.
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/{POD_SUBNET.prefixlen}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        self._ip_forward_before = read_sysctl(IP_FORWARD)
        write_sysctl(IP_FORWARD, "1")

    def write_cni_config(self) -> Path:
        """The bridge plugin's configuration; returns its directory (containerd's conf_dir)."""
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
                        # Its leases, which would default to /var/lib/cni/networks.
                        "dataDir": str(self.base_dir / "cni-ipam"),
                    },
                }
            ],
        }
        (conf_dir / "10-bi-e2e.conflist").write_text(json.dumps(config, indent=2))
        return conf_dir

    def start_forwarder(self, plane: ControlPlane) -> None:
        """Put the loopback apiserver behind HOST_ADDRESS, as the kubernetes Service's endpoint."""
        self._forwarder = TcpForwarder(
            (HOST_ADDRESS, APISERVER_FORWARD_PORT), ("127.0.0.1", plane.apiserver_port)
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
        result = plane.kubectl("apply", "-f", "-", input=json.dumps(slice_manifest))
        if result.returncode != 0:
            raise NodeError(f"publishing the kubernetes endpoint: {result.stderr.strip()}")

    def stop_forwarder(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None

    def remove_added_chains(self) -> None:
        """The KUBE- and CNI- chains that were not there before :meth:`create`."""
        remove_chains(
            {
                chain
                for chain in iptables_chains() - self._chains_before
                if chain[2].startswith(CHAIN_PREFIXES)
            }
        )

    def remove_added_tables(self) -> None:
        remove_tables(nft_tables() - self._tables_before)

    def restore_forwarding(self) -> None:
        if self._ip_forward_before is not None:
            write_sysctl(IP_FORWARD, self._ip_forward_before)


def remove_interfaces() -> None:
    """The bridge, and any pod veth still attached to it."""
    # Pod veths vanish with their network namespaces; any still attached go first.
    links = json.loads(run(["ip", "-j", "link", "show"], check=False) or "[]")
    for link in links:
        if link.get("master") == BRIDGE:
            run(["ip", "link", "del", link["ifname"]], check=False)
    run(["ip", "link", "del", BRIDGE], check=False)


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def remove_all_node_chains() -> None:
    """Every KUBE- and CNI- chain of the machine (a killed session's)."""
    remove_chains({chain for chain in iptables_chains() if chain[2].startswith(CHAIN_PREFIXES)})


def check_pod_subnet_is_free() -> None:
    """Refuse to run when any route of the machine overlaps POD_SUBNET."""
    for network in _networks_in_use():
        if network.overlaps(POD_SUBNET):
            raise NodeError(f"{POD_SUBNET} overlaps {network}, which the machine uses")


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    networks = []
    for entry in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"])):
        destination = entry.get("dst", "")
        if destination and destination != "default" and entry.get("type") != "broadcast":
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.IPv4Network(destination, strict=False))
    return networks
