"""The fixed names, addresses, ports and paths a node takes on the machine.

Fixed on purpose: a session killed with SIGKILL leaves things under these names, which the
next session finds and removes (under the machine-wide node lock, see ``host_lock.py``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

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
# (The kubelet's device plugin socket stays under /var/lib/kubelet whatever its --root-dir.
# mount(8), which the kubelet mounts volumes with and the harness its stand-ins, creates
# /run/mount and records mounts in /run/mount/utab: it comes first, before any other mount.)
HIJACKED_PATHS = (
    Path("/run/mount"),
    Path("/run/containerd"),
    Path("/var/lib/cni"),
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
)
# Where containerd, the kubelet and the CNI plugins write by default, and which the node
# points at directories of its own instead (runtime.py, kubelet.py, network.py), so that
# none of them appears or changes on the machine while a node runs, even on its first run.
REDIRECTED_PATHS = (
    Path("/opt/containerd"),  # containerd's managed opt dir (io.containerd.internal.v1.opt)
    Path("/var/lib/containerd"),  # containerd's root
    Path("/etc/containerd"),  # its registry hosts (certs.d)
    Path("/run/netns"),  # the pods' network namespaces (netns_mounts_under_state_dir)
    Path("/etc/cni/net.d"),  # the CNI configuration (conf_dir)
    Path("/opt/cni/bin"),  # the CNI plugins (bin_dirs)
    Path("/var/log/pods"),  # the kubelet's pod logs (podLogsDir)
    Path("/usr/libexec/kubernetes"),  # the kubelet's volume plugins (volumePluginDir)
    Path("/etc/kubernetes"),  # kubeconfigs and static pods, by convention (here: the temp dir)
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
