"""A real node for the e2e control plane: containerd, runc, kubelet, scheduler, proxy, DNS.

On top of a running :class:`~tests.e2e.harness.controlplane.ControlPlane` this starts

* containerd (with runc and the Debian CNI bridge plugins) and a kubelet, both inside one
  private mount namespace, so every mount they make (overlay root filesystems, Secret
  tmpfs, network namespace handles) lives and dies with that namespace, and the kernel
  tunables the kubelet insists on writing land in files of the test's own that are
  bind-mounted over ``/proc/sys`` there;
* kube-scheduler, kube-proxy (iptables mode) and CoreDNS on the host.

Pods get addresses from :data:`POD_SUBNET` on the bridge :data:`BRIDGE`, which this package
creates with the gateway :data:`HOST_ADDRESS`. That one address is the node's IP, the
cluster DNS server (CoreDNS listens there), and what ``host.docker.internal`` resolves to,
as on Docker Desktop: a backend listening on it on the host is reachable from every pod.
Pods reach the apiserver through the ``kubernetes`` Service: its endpoint is a forwarder on
:data:`HOST_ADDRESS` to the apiserver's loopback port.

Everything a node writes stays under its own directories (the node's temp directory, or
directories of its own mounted in its mount namespace); :meth:`Node.stop` stops everything
started, then removes the iptables chains, interfaces, cgroups and mount points created, and
restores ``net.ipv4.ip_forward``: the machine is left as it was found
(``tests/e2e/test_node.py`` checks that).

The parts, one job each: ``runtime`` (containerd, ``ctr``, images), ``kubelet``, ``network``
(bridge, CNI, the apiserver forwarder, packet filter undo), ``services`` (scheduler, CoreDNS,
kube-proxy), ``mount_namespace``, ``cgroups``, ``supervisor`` (the processes), ``names`` (the
fixed names and addresses), ``binaries``; ``node`` composes them.
"""

from __future__ import annotations

from .binaries import NodeBinaries
from .names import (
    APISERVER_FORWARD_PORT,
    BRIDGE,
    CGROUP_FS,
    CGROUP_ROOT,
    CHAIN_PREFIXES,
    CLUSTER_DOMAIN,
    CNI_BIN_DIR,
    DNS_PORT,
    HIJACKED_PATHS,
    HOST_ADDRESS,
    HOST_DOCKER_INTERNAL,
    IP_FORWARD,
    K8S_NAMESPACE,
    KUBELET_PORT,
    KUBELET_SYSCTLS,
    NODE_CPUS,
    NODE_NAME,
    NODE_STATUS_UPDATE_FREQUENCY,
    PAUSE_IMAGE,
    POD_SUBNET,
    REDIRECTED_PATHS,
)
from .node import Node, running_node

__all__ = [
    "APISERVER_FORWARD_PORT",
    "BRIDGE",
    "CGROUP_FS",
    "CGROUP_ROOT",
    "CHAIN_PREFIXES",
    "CLUSTER_DOMAIN",
    "CNI_BIN_DIR",
    "DNS_PORT",
    "HIJACKED_PATHS",
    "HOST_ADDRESS",
    "HOST_DOCKER_INTERNAL",
    "IP_FORWARD",
    "K8S_NAMESPACE",
    "KUBELET_PORT",
    "KUBELET_SYSCTLS",
    "NODE_CPUS",
    "NODE_NAME",
    "NODE_STATUS_UPDATE_FREQUENCY",
    "PAUSE_IMAGE",
    "POD_SUBNET",
    "REDIRECTED_PATHS",
    "Node",
    "NodeBinaries",
    "running_node",
]
