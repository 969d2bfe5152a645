"""doctor's platform recognition, against node objects shaped as each platform writes them.

Each fabricated node carries the marks its platform sets (a label, a provider ID, a name, a
kubelet version) and nothing copied from the code under test; where each mark comes from is
said in webhook/cluster/platform.py and in the README's platform table.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.memory_cluster import MemoryCluster
from webhook.cluster import doctor, platform
from webhook.cluster.checks import Status
from webhook.cluster.client import ClusterError
from webhook.cluster.platform import NodeFacts, image_route, platform_checks, recognise
from webhook.settings import Settings, load_settings


def node(name: str, *, labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None, provider_id: str = "",
         kubelet: str = "v1.34.1", runtime: str = "containerd://2.1.4",
         os_image: str = "Debian GNU/Linux 12 (bookworm)") -> dict[str, Any]:
    """A node object as GET /api/v1/nodes lists it (the fields recognition may read)."""
    spec = {"providerID": provider_id} if provider_id else {}
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                     "annotations": annotations or {}},
        "spec": spec,
        "status": {"nodeInfo": {"kubeletVersion": kubelet, "containerRuntimeVersion": runtime,
                                "osImage": os_image}},
    }


def facts(*nodes: dict[str, Any]) -> list[NodeFacts]:
    return [NodeFacts.of(item) for item in nodes]


def k3s_node(name: str, runtime: str = "containerd://1.7.27-k3s1") -> dict[str, Any]:
    return node(name, kubelet="v1.33.4+k3s1", provider_id=f"k3s://{name}", runtime=runtime,
                annotations={"k3s.io/hostname": name, "k3s.io/internal-ip": "192.168.5.15"})


# --- one cluster of each platform ---------------------------------------------------------------

CLUSTERS: list[tuple[str, str, list[dict[str, Any]], str, str]] = [
    # (case, context, nodes, platform, evidence)
    ("docker-desktop kubeadm", "docker-desktop",
     [node("docker-desktop", runtime="docker://28.3.2")],
     "docker-desktop", "node docker-desktop"),
    ("docker-desktop kind", "docker-desktop",
     [node("desktop-control-plane",
           provider_id="kind://docker/desktop/desktop-control-plane"),
      node("desktop-worker", provider_id="kind://docker/desktop/desktop-worker")],
     "docker-desktop",
     "node desktop-control-plane, providerID kind://docker/desktop/desktop-control-plane, "
     "context docker-desktop"),
    ("minikube", "minikube",
     [node("minikube", labels={"minikube.k8s.io/name": "minikube",
                               "minikube.k8s.io/primary": "true"}, runtime="docker://28.4.0")],
     "minikube", "node minikube, label minikube.k8s.io/name=minikube"),
    ("kind", "kind-kind",
     [node("kind-control-plane", provider_id="kind://docker/kind/kind-control-plane")],
     "kind", "node kind-control-plane, providerID kind://docker/kind/kind-control-plane"),
    ("k3d", "k3d-dev",
     [k3s_node("k3d-dev-server-0"), k3s_node("k3d-dev-agent-0")],
     "k3d", "node k3d-dev-server-0, kubelet v1.33.4+k3s1"),
    ("rancher-desktop on lima", "rancher-desktop",
     [k3s_node("lima-rancher-desktop", runtime="docker://28.1.1")],
     "rancher-desktop",
     "node lima-rancher-desktop, kubelet v1.33.4+k3s1, context rancher-desktop"),
    ("orbstack", "orbstack",
     [node("orbstack", kubelet="v1.31.6+orb1", runtime="docker://28.3.3",
           os_image="OrbStack")],
     "orbstack", "node orbstack, kubelet v1.31.6+orb1"),
    ("colima", "colima",
     [k3s_node("colima", runtime="docker://28.4.0")],
     "colima", "node colima, kubelet v1.33.4+k3s1, context colima"),
]


@pytest.mark.parametrize(("context", "nodes", "expected", "evidence"),
                         [case[1:] for case in CLUSTERS], ids=[case[0] for case in CLUSTERS])
def test_each_platform_is_recognised_by_its_nodes(context: str, nodes: list[dict[str, Any]],
                                                  expected: str, evidence: str) -> None:
    found = recognise(context, "https://127.0.0.1:6443", facts(*nodes))
    assert found is not None
    assert found.platform.name == expected
    assert found.evidence == evidence


@pytest.mark.parametrize(("context", "nodes", "expected", "evidence"),
                         [case[1:] for case in CLUSTERS], ids=[case[0] for case in CLUSTERS])
def test_the_nodes_win_over_a_renamed_context(context: str, nodes: list[dict[str, Any]],
                                              expected: str, evidence: str) -> None:
    """A context the user renamed does not hide the platform, except where the context is the
    only mark the platform leaves on a node of an unknown name (none of these)."""
    found = recognise("work", "https://127.0.0.1:6443", facts(*nodes))
    assert found is not None and found.platform.name == expected
    # The context told nothing here, so the evidence does not cite it.
    assert "context" not in found.evidence


def test_a_minikube_profile_and_its_second_node() -> None:
    nodes = facts(node("dev", labels={"minikube.k8s.io/name": "dev"}),
                  node("dev-m02", labels={"minikube.k8s.io/name": "dev"}))
    found = recognise("dev", "https://192.168.49.2:8443", nodes)
    assert found is not None and found.platform.name == "minikube" and found.cluster == "dev"


def test_a_kind_cluster_the_user_called_desktop_is_kind_not_docker_desktop() -> None:
    nodes = facts(node("desktop-control-plane",
                       provider_id="kind://docker/desktop/desktop-control-plane"))
    found = recognise("kind-desktop", "https://127.0.0.1:41223", nodes)
    assert found is not None and found.platform.name == "kind" and found.cluster == "desktop"


def test_docker_desktop_kind_nodes_without_a_provider_id_are_still_docker_desktop() -> None:
    found = recognise("docker-desktop", "https://127.0.0.1:6443",
                      facts(node("desktop-control-plane"), node("desktop-worker")))
    assert found is not None
    assert (found.platform.name, found.provisioner) == ("docker-desktop", "kind")
    assert found.nodes == ("desktop-control-plane", "desktop-worker")


def test_rancher_desktop_on_windows_is_named_by_its_context() -> None:
    """On WSL the node bears the Windows machine's name; the k3s node and the context show it."""
    found = recognise("rancher-desktop", "https://127.0.0.1:6443",
                      facts(k3s_node("laptop-7f3k2")))
    assert found is not None and found.platform.name == "rancher-desktop"


def test_a_colima_profile() -> None:
    found = recognise("colima-work", "https://127.0.0.1:6443", facts(k3s_node("colima-work")))
    assert found is not None and found.platform.name == "colima"


@pytest.mark.parametrize(("case", "context", "nodes"), [
    # The e2e node: a plain kubelet on containerd, no provider ID, its own name.
    ("the e2e node", "e2e", [node("bi-e2e-node", kubelet="v1.34.1")]),
    ("a k3s server", "default", [k3s_node("edge-1")]),
    ("a cloud node", "prod", [node("ip-10-0-1-5.ec2.internal",
                                   provider_id="aws:///eu-west-1a/i-0abc")]),
])
def test_other_clusters_are_none_of_the_presets(case: str, context: str,
                                                nodes: list[dict[str, Any]]) -> None:
    assert recognise(context, "https://10.0.0.1:6443", facts(*nodes)) is None


@pytest.mark.parametrize(("context", "server", "expected"), [
    ("docker-desktop", "https://127.0.0.1:6443", "docker-desktop"),
    ("renamed", "https://kubernetes.docker.internal:6443", "docker-desktop"),
    ("minikube", "https://192.168.49.2:8443", "minikube"),
    ("kind-dev", "https://127.0.0.1:40111", "kind"),
    ("k3d-dev", "https://0.0.0.0:39555", "k3d"),
    ("rancher-desktop", "https://127.0.0.1:6443", "rancher-desktop"),
    ("orbstack", "https://127.0.0.1:26443", "orbstack"),
    ("colima-work", "https://127.0.0.1:6443", "colima"),
])
def test_without_nodes_the_context_names_the_platform(context: str, server: str,
                                                      expected: str) -> None:
    found = recognise(context, server, [])
    assert found is not None and found.platform.name == expected


def test_docker_desktop_known_by_its_context_alone_names_both_image_routes() -> None:
    found = recognise("docker-desktop", "https://127.0.0.1:6443", [])
    assert found is not None and found.provisioner == ""
    route = image_route(found)
    assert "kubeadm provisioner docker build is enough" in route and "with kind" in route


def test_without_nodes_an_unknown_context_is_none() -> None:
    assert recognise("e2e", "https://127.0.0.1:38001", []) is None
    assert recognise(None, "https://127.0.0.1:38001", []) is None


# --- how an image built here reaches the nodes --------------------------------------------------


@pytest.mark.parametrize(("context", "nodes", "words"), [
    ("docker-desktop", [node("docker-desktop", runtime="docker://28.3.2")],
     "docker build is enough"),
    ("docker-desktop", [node("desktop-control-plane"), node("desktop-worker")],
     "docker exec -i NODE ctr -n k8s.io images import - for each node "
     "(desktop-control-plane, desktop-worker)"),
    ("kind-dev", [node("dev-control-plane", provider_id="kind://docker/dev/dev-control-plane")],
     "kind load docker-image IMAGE --name dev"),
    ("dev", [node("dev", labels={"minikube.k8s.io/name": "dev"})],
     "minikube image load IMAGE -p dev"),
    ("k3d-dev", [k3s_node("k3d-dev-server-0")], "k3d image import IMAGE -c dev"),
    ("colima", [k3s_node("colima", runtime="docker://28.4.0")], "docker build is enough"),
    ("colima", [k3s_node("colima", runtime="containerd://1.7.27")], "nerdctl -n k8s.io build"),
    ("rancher-desktop", [k3s_node("lima-rancher-desktop", runtime="containerd://1.7.27")],
     "nerdctl -n k8s.io build"),
    ("orbstack", [node("orbstack", kubelet="v1.31.6+orb1", runtime="docker://28.3.3")],
     "docker build is enough"),
])
def test_the_image_route_names_the_platform_s_own_command(
        context: str, nodes: list[dict[str, Any]], words: str) -> None:
    found = recognise(context, "https://127.0.0.1:6443", facts(*nodes))
    assert found is not None
    assert words in image_route(found)


# --- doctor's lines ---------------------------------------------------------------------------


class NodesCluster(MemoryCluster):
    """MemoryCluster whose node list is given, or refused as an RBAC-less user is."""

    def __init__(self, context: str, nodes: list[dict[str, Any]] | None) -> None:
        super().__init__()
        self.context = context
        self.refuse = nodes is None
        self.objects[platform.NODES_PATH] = {"items": nodes or []}

    def get(self, path: str) -> dict[str, Any] | None:
        if self.refuse and path == platform.NODES_PATH:
            raise ClusterError('cannot read /api/v1/nodes: forbidden: User "dev" cannot list '
                               'resource "nodes"', "ask for the RBAC rights it names")
        return super().get(path)


def settings_with(**overrides: str) -> Settings:
    return load_settings(environ={}, overrides=overrides)


def lines(cluster: NodesCluster, settings: Settings) -> dict[str, doctor.Check]:
    return {check.name: check for check in platform_checks(cluster, settings)}


MINIKUBE = [node("minikube", labels={"minikube.k8s.io/name": "minikube"})]


def test_the_platform_line_names_the_platform_its_evidence_and_the_image_route() -> None:
    found = lines(NodesCluster("minikube", MINIKUBE), settings_with(platform="minikube"))
    line = found["platform"].line()
    assert line.startswith("ok    platform: minikube (node minikube, label "
                           "minikube.k8s.io/name=minikube); an image built here reaches its "
                           "nodes: minikube image load IMAGE -p minikube")
    assert found["external host"].status is Status.PASS
    assert "host.minikube.internal, minikube's name for this machine" in \
        found["external host"].detail


def test_docker_desktop_s_name_on_minikube_is_a_warn_with_the_fix() -> None:
    found = lines(NodesCluster("minikube", MINIKUBE), settings_with())
    host = found["external host"]
    assert host.status is Status.WARN
    assert host.detail == ("host.docker.internal is Docker Desktop's name for this machine; "
                           "pods on minikube reach it as host.minikube.internal")
    assert host.fix.startswith("--platform minikube")
    assert "--external-host host.minikube.internal" in host.fix


def test_a_name_the_platform_also_resolves_passes() -> None:
    """Colima's resolver answers host.docker.internal as it does host.lima.internal."""
    found = lines(NodesCluster("colima", [k3s_node("colima")]), settings_with())
    assert found["external host"].status is Status.PASS


def test_on_kind_a_platform_name_is_a_warn_that_asks_for_the_gateway() -> None:
    kind = [node("kind-control-plane", provider_id="kind://docker/kind/kind-control-plane")]
    found = lines(NodesCluster("kind-kind", kind), settings_with(platform="minikube"))
    host = found["external host"]
    assert host.status is Status.WARN
    assert host.detail == ("host.minikube.internal is minikube's name for this machine; kind "
                           "has no name for it")
    assert host.fix.startswith("--platform kind --external-host ADDRESS")
    assert "docker network inspect kind" in host.fix


def test_an_address_of_the_user_s_own_is_theirs_to_vouch_for() -> None:
    found = lines(NodesCluster("minikube", MINIKUBE), settings_with(external_host="10.0.0.7"))
    host = found["external host"]
    assert host.status is Status.PASS
    assert host.detail.startswith("10.0.0.7: no platform's name")


def test_a_cluster_of_no_preset_says_so_and_judges_no_host() -> None:
    found = lines(NodesCluster("e2e", [node("bi-e2e-node")]), settings_with())
    assert found["platform"].line() == (
        "ok    platform: none of the presets (context e2e, nodes bi-e2e-node): the external "
        "hosts are the configuration's own")
    assert "external host" not in found


def test_nodes_that_cannot_be_listed_are_a_warn_and_the_context_is_read() -> None:
    found = lines(NodesCluster("k3d-dev", None), settings_with(platform="k3d"))
    line = found["platform"]
    assert line.status is Status.WARN
    assert line.detail.startswith("k3d (context k3d-dev), from the context alone: cannot list "
                                  "nodes (cannot read /api/v1/nodes: forbidden")
    assert "list nodes" in line.fix
    assert found["external host"].status is Status.PASS


def test_doctor_runs_the_platform_line_after_the_cluster_answers() -> None:
    cluster = NodesCluster("minikube", MINIKUBE)
    names = [check.name for check in doctor.Doctor(cluster, namespace="ml").run()]
    assert names[:2] == ["cluster reachable", "platform"]
