"""Which local Kubernetes a cluster is, from what its API shows, and what doctor says of it.

`recognise` is pure: the kube context's name, the apiserver's URL and the node objects in, a
`Recognition` (the platform preset, and the evidence that named it) or None out. Every signal it
reads is one the platform sets itself; where each is set is said beside it. Nodes are better
witnesses than the context, which the user may rename, so the context alone is read only when
no node could be.

`platform_checks` makes doctor's lines: the platform and how an image built on this machine
reaches its nodes; then whether the configured external hosts are names its pods resolve. It
reads the nodes with GET /api/v1/nodes; a refusal (no RBAC right to list nodes) is a warn.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.cluster.checks import Check, passed, warned
from webhook.cluster.client import Cluster, ClusterError
from webhook.settings import (
    ConfigError,
    Platform,
    Settings,
    load_settings,
    owner_of,
    platform_named,
)
from webhook.settings.platforms import KIND_GATEWAY_HINT

NODES_PATH = "/api/v1/nodes"
# Enough node names to recognise a listing; more would make the line a wall.
MOST_NODES_NAMED = 4

# minikube labels every node with its profile (labelAndUntaintNode in
# pkg/minikube/bootstrapper/kubeadm/kubeadm.go).
MINIKUBE_PROFILE_LABEL = "minikube.k8s.io/name"
# kind's kubeadm configuration gives every node the provider ID kind://PROVIDER/CLUSTER/NODE
# (pkg/cluster/internal/kubeadm/config.go).
_KIND_PROVIDER_ID = re.compile(r"^kind://[^/]+/(?P<cluster>[^/]+)/")
# k3d names its nodes k3d-CLUSTER-server-N and k3d-CLUSTER-agent-N (pkg/client/cluster.go).
_K3D_NODE = re.compile(r"^k3d-(?P<cluster>.+)-(?:server|agent)-\d+$")
# k3s versions its kubelet v1.x.y+k3sN and annotates each node k3s.io/hostname
# (pkg/cloudprovider/instances.go); its provider IDs are k3s://NODE.
K3S_ANNOTATION = "k3s.io/hostname"
# Docker Desktop's kind provisioner makes a kind cluster called desktop, so its nodes are
# desktop-control-plane, desktop-worker, desktop-worker2...; its kubeadm one makes the single
# node docker-desktop (https://docs.docker.com/desktop/use-desktop/kubernetes/); the context
# is docker-desktop for both, and the kubeconfig names the apiserver
# kubernetes.docker.internal.
DOCKER_DESKTOP_KIND_CLUSTER = "desktop"
DOCKER_DESKTOP_CONTEXT = "docker-desktop"
DOCKER_DESKTOP_SERVER_HOST = "kubernetes.docker.internal"
# Rancher Desktop names its context rancher-desktop (pkg/rancher-desktop/backend/k3sHelper.ts)
# and its lima VM, the node, lima-rancher-desktop (pkg/rancher-desktop/assets/lima-config.yaml).
RANCHER_DESKTOP_NODE = "lima-rancher-desktop"
RANCHER_DESKTOP_CONTEXT = "rancher-desktop"
# Colima names the VM, so the node, and the context after the profile: colima, or
# colima-PROFILE (config/profile.go, environment/vm/lima/yaml.go, kubernetes/kubeconfig.go).
_COLIMA_NAME = re.compile(r"^colima(?:-.+)?$")


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What a node object says of the machine that runs it."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    provider_id: str = ""
    kubelet_version: str = ""
    container_runtime: str = ""  # containerRuntimeVersion: docker://27.3.1, containerd://2.0.2
    os_image: str = ""

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> NodeFacts:
        metadata = node.get("metadata") or {}
        info = (node.get("status") or {}).get("nodeInfo") or {}
        return cls(
            name=str(metadata.get("name") or ""),
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
            provider_id=str((node.get("spec") or {}).get("providerID") or ""),
            kubelet_version=str(info.get("kubeletVersion") or ""),
            container_runtime=str(info.get("containerRuntimeVersion") or ""),
            os_image=str(info.get("osImage") or ""),
        )

    @property
    def runtime(self) -> str:
        """The container runtime's name: docker, containerd, cri-o; empty when not reported."""
        return self.container_runtime.partition("://")[0]

    @property
    def runs_k3s(self) -> bool:
        return ("+k3s" in self.kubelet_version or self.provider_id.startswith("k3s://")
                or K3S_ANNOTATION in self.annotations)


@dataclass(frozen=True, slots=True)
class Recognition:
    """The platform a cluster is, and what showed it."""

    platform: Platform
    evidence: str
    # kind or kubeadm, for Docker Desktop, whose two provisioners load images differently.
    provisioner: str = ""
    # The kind or k3d cluster, or the minikube profile: what their image commands need.
    cluster: str = ""
    runtime: str = ""
    nodes: tuple[str, ...] = ()

    def describe(self) -> str:
        flavour = f", {self.provisioner} provisioner" if self.provisioner else ""
        return f"{self.platform.name}{flavour} ({self.evidence})"


def recognise(context: str | None, server: str,
              nodes: Sequence[NodeFacts]) -> Recognition | None:
    """The platform the nodes (else, when none could be read, the context and the apiserver's
    URL) show; None for any other cluster."""
    names = tuple(node.name for node in nodes)
    for node in nodes:
        found = _by_node(node, context)
        if found is not None:
            platform, evidence, provisioner, cluster = found
            return Recognition(platform, evidence, provisioner, cluster,
                               runtime=node.runtime, nodes=names)
    if nodes:
        return None
    return _by_context(context or "", server)


def _by_node(node: NodeFacts, context: str | None
             ) -> tuple[Platform, str, str, str] | None:
    """(platform, evidence, provisioner, cluster) from one node's own marks."""
    where = f"node {node.name}"
    profile = node.labels.get(MINIKUBE_PROFILE_LABEL)
    if profile is not None:
        evidence = f"{where}, label {MINIKUBE_PROFILE_LABEL}={profile}"
        return _named("minikube"), evidence, "", profile
    kind = _KIND_PROVIDER_ID.match(node.provider_id)
    if kind is not None or node.name == f"{DOCKER_DESKTOP_KIND_CLUSTER}-control-plane":
        cluster = kind["cluster"] if kind is not None else DOCKER_DESKTOP_KIND_CLUSTER
        evidence = f"{where}, providerID {node.provider_id}" if kind is not None else where
        # A kind cluster the user called desktop has the context kind-desktop.
        if cluster == DOCKER_DESKTOP_KIND_CLUSTER and context != f"kind-{cluster}":
            evidence = _with_context(evidence, context, DOCKER_DESKTOP_CONTEXT)
            return _named("docker-desktop"), evidence, "kind", cluster
        if kind is not None:
            return _named("kind"), evidence, "", cluster
    if node.name == DOCKER_DESKTOP_CONTEXT:
        return _named("docker-desktop"), where, "kubeadm", ""
    # OrbStack versions its kubelet v1.x.y+orbN and reports its OS as OrbStack.
    if "+orb" in node.kubelet_version or node.os_image == "OrbStack":
        return _named("orbstack"), f"{where}, kubelet {node.kubelet_version}", "", ""
    if node.runs_k3s:
        return _k3s_platform(node, context)
    return None


def _k3s_platform(node: NodeFacts, context: str | None
                  ) -> tuple[Platform, str, str, str] | None:
    """k3d, Rancher Desktop and Colima all run k3s; their node names tell them apart."""
    where = f"node {node.name}, kubelet {node.kubelet_version or node.provider_id}"
    k3d = _K3D_NODE.match(node.name)
    if k3d is not None:
        return _named("k3d"), where, "", k3d["cluster"]
    if node.name == RANCHER_DESKTOP_NODE or context == RANCHER_DESKTOP_CONTEXT:
        return (_named("rancher-desktop"), _with_context(where, context, RANCHER_DESKTOP_CONTEXT),
                "", "")
    colima_context = context if _COLIMA_NAME.match(context or "") else None
    if _COLIMA_NAME.match(node.name) or colima_context:
        return _named("colima"), _with_context(where, context, colima_context), "", ""
    return None


def _by_context(context: str, server: str) -> Recognition | None:
    """The platform the context's name (or Docker Desktop's apiserver name) shows."""
    evidence = f"context {context}" if context else ""
    server_host = urllib.parse.urlsplit(server).hostname
    if context == DOCKER_DESKTOP_CONTEXT or server_host == DOCKER_DESKTOP_SERVER_HOST:
        return Recognition(_named("docker-desktop"), evidence or f"apiserver {server}")
    for prefix, name in (("kind-", "kind"), ("k3d-", "k3d")):
        if context.startswith(prefix):
            return Recognition(_named(name), evidence, cluster=context[len(prefix):])
    if context in ("minikube", "rancher-desktop", "orbstack"):
        return Recognition(_named(context), evidence,
                           cluster=context if context == "minikube" else "")
    if _COLIMA_NAME.match(context):
        return Recognition(_named("colima"), evidence)
    return None


def _with_context(evidence: str, context: str | None, telling: str | None) -> str:
    """``evidence``, and the context when it is the one the platform names (``telling``)."""
    return f"{evidence}, context {context}" if context and context == telling else evidence


def _named(name: str) -> Platform:
    return platform_named(name, "platform")


# --- what it means for an image built on this machine ----------------------------------------


def image_route(found: Recognition) -> str:
    """How an image built on this machine reaches the nodes, in the platform's own words."""
    name, cluster = found.platform.name, found.cluster
    if name == "docker-desktop" and found.provisioner == "kind":
        # Docker Desktop's table: kind "works with the containerd image store", not Docker's.
        nodes = ", ".join(found.nodes[:MOST_NODES_NAMED]) or "each node"
        return ("with Docker Desktop's containerd image store on, docker build is enough; "
                "else docker save IMAGE | docker exec -i NODE ctr -n k8s.io images import - "
                f"for each node ({nodes})")
    if name == "docker-desktop" and found.provisioner == "kubeadm":
        return "docker build is enough (the node uses Docker Desktop's image store)"
    if name == "docker-desktop":
        return ("with the kubeadm provisioner docker build is enough; with kind, load it into "
                "each node unless Docker Desktop's containerd image store is on")
    if name == "kind":
        return f"kind load docker-image IMAGE --name {cluster or 'kind'}"
    if name == "minikube":
        return f"minikube image load IMAGE -p {cluster or 'minikube'}"
    if name == "k3d":
        return f"k3d image import IMAGE -c {cluster or 'k3s-default'}"
    if name == "orbstack":
        return ("docker build is enough (its Kubernetes uses OrbStack's engine); tag it other "
                "than :latest, which is always pulled")
    if found.runtime == "docker":
        return f"docker build is enough ({found.platform.title}'s Kubernetes uses its dockerd)"
    return "build or load it in containerd's k8s.io namespace: nerdctl -n k8s.io build (or load)"


# --- doctor's lines --------------------------------------------------------------------------


def platform_checks(cluster: Cluster, settings: Settings | None = None) -> Iterator[Check]:
    """The platform line, then (when it is one of the presets) whether the external hosts of
    ``settings`` are names its pods resolve. Without ``settings``, those of the configuration
    as serve finds it here (BACKEND_INJECTOR_CONFIG, _PLATFORM, _EXTERNAL_HOST), as doctor's
    other checks of the configuration read it."""
    refusal: ClusterError | None = None
    try:
        listed = cluster.get(NODES_PATH) or {}
        nodes = [NodeFacts.of(item) for item in listed.get("items") or []
                 if isinstance(item, Mapping)]
    except ClusterError as error:
        nodes, refusal = [], error
    found = recognise(cluster.context, cluster.server, nodes)
    yield _platform_line(found, nodes, cluster.context, refusal)
    if found is None:
        return
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as error:
            yield warned("external host", f"not checked: {error}")
            return
    yield external_host_line(found.platform, settings)


def _platform_line(found: Recognition | None, nodes: Sequence[NodeFacts],
                   context: str | None, refusal: ClusterError | None) -> Check:
    name = "platform"
    if refusal is not None:
        guess = (f"{found.describe()}, from the context alone" if found is not None
                 else "not recognised from the context alone")
        return warned(name, f"{guess}: cannot list nodes ({refusal.problem})",
                      "ask for the right to list nodes, which doctor reads the platform from")
    if found is not None:
        return passed(name, f"{found.describe()}; an image built here reaches its nodes: "
                            f"{image_route(found)}")
    shown = ", ".join(node.name for node in nodes[:MOST_NODES_NAMED])
    more = f" and {len(nodes) - MOST_NODES_NAMED} more" if len(nodes) > MOST_NODES_NAMED else ""
    seen = f"nodes {shown}{more}" if nodes else "no nodes"
    where = f"context {context}, " if context else ""
    return passed(name, f"none of the presets ({where}{seen}): the external hosts are the "
                        "configuration's own")


def external_host_line(platform: Platform, settings: Settings) -> Check:
    """Whether the services' external hosts are names pods on ``platform`` reach this machine
    by. A host that is no platform's name (an IP, a real DNS name) is the user's to vouch for:
    the backend lines say whether pods reach it."""
    name = "external host"
    hosts = list(dict.fromkeys(service.external.host.lower() for service in settings.services
                               if service.external is not None))
    if not hosts:
        return passed(name, "no service has an external address")
    misfits = [host for host in hosts
               if host not in platform.hosts and owner_of(host) is not None]
    if not misfits:
        own = [host for host in hosts if host in platform.hosts]
        detail = f"{', '.join(own)}, {platform.title}'s name for this machine" if own else ""
        others = [host for host in hosts if host not in platform.hosts]
        if others:
            detail += ("; " if detail else "") + (
                f"{', '.join(others)}: no platform's name, so the backend lines say whether "
                "pods reach it")
        return passed(name, detail)
    owners = "; ".join(f"{host} is {_owner_title(host)}'s name for this machine"
                       for host in misfits)
    if platform.host is None:
        return warned(name, f"{owners}; {platform.title} has no name for it",
                      f"--platform {platform.name} --external-host ADDRESS ({KIND_GATEWAY_HINT})")
    return warned(name, f"{owners}; pods on {platform.title} reach it as {platform.host}",
                  f"--platform {platform.name} (or platform: {platform.name} in the "
                  f"configuration the webhook runs with), or --external-host {platform.host}")


def _owner_title(host: str) -> str:
    owner = owner_of(host)
    return owner.title if owner is not None else host
