"""The e2e node itself: pods run, get an address the host reaches, resolve cluster names and
``host.docker.internal``, reach each other through Services; and a node that has run a pod
leaves the machine exactly as it found it.

The pods use a small image made here (the static ``probe`` program of ``tools/probe``, packed
by ``oci.py``), so nothing in these tests depends on images built elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness.controlplane import ControlPlane
from .harness.host_lock import lock_host
from .harness.kubectl import kubectl_json, kubectl_ok, pod_summary, wait_for, wait_for_pod_phase
from .harness.node import (
    CGROUP_ROOT,
    HIJACKED_PATHS,
    HOST_ADDRESS,
    HOST_DOCKER_INTERNAL,
    IP_FORWARD,
    KUBELET_SYSCTLS,
    NODE_NAME,
    POD_SUBNET,
    REDIRECTED_PATHS,
    Node,
    NodeBinaries,
)
from .harness.node_host import cgroup_hierarchies, nft_tables
from .harness.smoke import PAGE_TOKEN, SMOKE_IMAGE, WEB_COMMAND, write_smoke_image

POD_TIMEOUT = 120.0


def pod_manifest(name: str, namespace: str, command: list[str], **spec: Any) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": SMOKE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                }
            ],
            "terminationGracePeriodSeconds": 1,
            **spec,
        },
    }
    return json.dumps(pod)


@pytest.fixture(scope="module")
def smoke(
    node: Node, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A namespace with the smoke image imported and a web pod running; yields its name."""
    archive = tmp_path_factory.mktemp("smoke") / "smoke.tar"
    node.import_image(write_smoke_image(archive, node.binaries))
    namespace = "node-smoke"
    kubectl_ok(control_plane, "create", "namespace", namespace)
    kubectl_ok(control_plane, "apply", "-f", "-", input=pod_manifest("web", namespace, WEB_COMMAND))
    yield namespace
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_pod_runs_and_its_address_answers_from_the_host(
    smoke: str, control_plane: ControlPlane
) -> None:
    pod = wait_for_pod_phase(control_plane, smoke, "web", {"Running"}, timeout=POD_TIMEOUT)
    assert pod["spec"]["nodeName"] == NODE_NAME
    address = pod["status"]["podIP"]
    assert ipaddress.ip_address(address) in POD_SUBNET

    def page() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{address}:8080/", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    body = wait_for(f"http://{address}:8080/", page, timeout=30)
    assert body.strip() == f"smoke {PAGE_TOKEN}"


def _run_to_completion(
    plane: ControlPlane, node: Node, namespace: str, name: str, command: list[str]
) -> str:
    kubectl_ok(
        plane,
        "apply",
        "-f",
        "-",
        input=pod_manifest(name, namespace, command, restartPolicy="Never"),
    )
    pod = wait_for_pod_phase(plane, namespace, name, {"Succeeded", "Failed"}, timeout=POD_TIMEOUT)
    log = node.container_log(namespace, name, "main")
    assert pod["status"]["phase"] == "Succeeded", f"{log}\n{pod_summary(plane, namespace)}"
    return log


def _resolved(log: str, name: str) -> set[str]:
    """The addresses ``probe lookup`` printed for ``name`` (lines "NAME ADDRESS")."""
    return {line.split()[1] for line in log.splitlines() if line.split()[:1] == [name]}


def test_cluster_dns_resolves_services_and_host_docker_internal(
    smoke: str, node: Node, control_plane: ControlPlane
) -> None:
    kubernetes_ip = kubectl_json(control_plane, "get", "service", "-n", "default", "kubernetes")[
        "spec"
    ]["clusterIP"]
    # Short names, as pods use them: the search path of resolv.conf completes the first.
    log = _run_to_completion(
        control_plane,
        node,
        smoke,
        "dns",
        ["/probe", "lookup", "kubernetes.default", HOST_DOCKER_INTERNAL],
    )
    assert _resolved(log, "kubernetes.default") == {kubernetes_ip}, log
    assert _resolved(log, HOST_DOCKER_INTERNAL) == {HOST_ADDRESS}, log


def test_a_service_routes_to_its_pod(smoke: str, node: Node, control_plane: ControlPlane) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": smoke},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    kubectl_ok(control_plane, "apply", "-f", "-", input=json.dumps(service))
    wait_for_pod_phase(control_plane, smoke, "web", {"Running"}, timeout=POD_TIMEOUT)
    # The Service name through cluster DNS, the ClusterIP through kube-proxy's rules;
    # retried for a while, as kube-proxy syncs its rules a moment after the Service appears.
    log = _run_to_completion(
        control_plane, node, smoke, "client", ["/probe", "get", "http://web/", "20"]
    )
    assert log.strip() == f"smoke {PAGE_TOKEN}"


# --- the machine as found -------------------------------------------------------------------

SYSCTL_DIRS = ("net/ipv4/conf/all", "net/ipv4/conf/default", "net/bridge", "vm")
SYSCTLS = (*KUBELET_SYSCTLS, IP_FORWARD, "net/ipv6/conf/all/forwarding")
LISTED_DIRS = ("/run", "/var/lib", "/var/log", "/etc/cni", "/opt", "/usr/libexec")


def _iptables_rules() -> list[str]:
    rules = []
    for command in ("iptables-save", "ip6tables-save"):
        output = subprocess.run([command], capture_output=True, text=True, check=False).stdout
        for line in output.splitlines():
            if line and not line.startswith("#"):
                # Chain lines carry packet counters, which traffic changes.
                rules.append(command + " " + re.sub(r"\[\d+:\d+\]", "", line))
    return sorted(rules)


def _ip_json(*args: str) -> Any:
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout)


def _sysctls() -> dict[str, str]:
    values = {}
    paths = [Path("/proc/sys") / name for name in SYSCTLS]
    for directory in SYSCTL_DIRS:
        paths += sorted(p for p in (Path("/proc/sys") / directory).glob("*") if p.is_file())
    for path in paths:
        try:
            values[str(path)] = path.read_text().strip()
        except OSError:
            continue  # write-only knobs (vm/drop_caches, vm/compact_memory)
    # Counters, not settings.
    for volatile in ("vm/stat_refresh", "vm/nr_pdflush_threads"):
        values.pop(f"/proc/sys/{volatile}", None)
    return values


def machine_state(binaries: NodeBinaries) -> dict[str, Any]:
    """What a node could change on the machine, in comparable form."""
    node_executables = {str(path) for path in vars(binaries).values()}
    processes = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                executable = os.readlink(proc / "exe")
            except OSError:
                continue
            if executable in node_executables:
                processes.append(executable)
    return {
        "iptables": _iptables_rules(),
        "nft tables": sorted(nft_tables()),
        "links": sorted(link["ifname"] for link in _ip_json("link", "show")),
        "addresses": sorted(
            f"{entry['ifname']} {info['local']}/{info['prefixlen']}"
            for entry in _ip_json("addr", "show")
            for info in entry.get("addr_info", [])
        ),
        "routes": sorted(json.dumps(route, sort_keys=True) for route in _ip_json("route", "show")),
        "mounts": sorted(Path("/proc/self/mounts").read_text().splitlines()),
        "sysctls": _sysctls(),
        "cgroups": sorted(
            str(child)
            for hierarchy in cgroup_hierarchies()
            for child in hierarchy.iterdir()
            if child.is_dir()
        ),
        "paths": {
            directory: sorted(os.listdir(directory)) if os.path.isdir(directory) else None
            # The default paths the node redirects are listed themselves: one that exists
            # already would hide what is written inside it from its parent's listing.
            for directory in (*LISTED_DIRS, *map(str, (*HIJACKED_PATHS, *REDIRECTED_PATHS)))
        },
        "processes": sorted(processes),
    }


@pytest.fixture
def quiet_host() -> Iterator[None]:
    """The webhook tests' host lock: no other session's test netns comes or goes meanwhile,
    so that every difference in the snapshot is this node's."""
    lock = lock_host(timeout=1200)
    try:
        yield
    finally:
        os.close(lock)


def test_a_node_that_ran_a_pod_leaves_the_machine_as_found(
    control_plane: ControlPlane, tmp_path: Path, quiet_host: None
) -> None:
    binaries = NodeBinaries.from_cache()
    namespace = "node-as-found"
    own = Node(control_plane, binaries)
    try:
        # Under the node lock, with a killed session's node cleared away: another session's
        # node running meanwhile would otherwise be part of "as found".
        own.reserve()
        before = machine_state(binaries)
        own.start()
        during = machine_state(binaries)
        own.import_image(write_smoke_image(tmp_path / "smoke.tar", binaries))
        kubectl_ok(control_plane, "create", "namespace", namespace)
        kubectl_ok(
            control_plane, "apply", "-f", "-", input=pod_manifest("web", namespace, WEB_COMMAND)
        )
        wait_for_pod_phase(control_plane, namespace, "web", {"Running"}, timeout=POD_TIMEOUT)
        running = machine_state(binaries)
    finally:
        own.stop()
        # The session's node registers under the same name later: it must find no pod of
        # this test bound to it.
        control_plane.kubectl(
            "delete", "pods", "--all", "-n", namespace, "--force", "--grace-period=0"
        )
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
        control_plane.kubectl("delete", "node", NODE_NAME)
    after = machine_state(binaries)
    # The snapshot sees what a node changes: a running one differs in every respect.
    assert any(rule.startswith("iptables-save -A KUBE-") for rule in during["iptables"])
    assert during["links"] != before["links"]
    assert running["cgroups"] != before["cgroups"]
    assert running["processes"] != before["processes"]
    assert during["sysctls"][f"/proc/sys/{IP_FORWARD}"] == "1"
    # The runtime's and kubelet's mounts stay in their own mount namespace throughout.
    assert running["mounts"] == before["mounts"]
    for key in before:
        assert after[key] == before[key], key
    assert not any(Path(hierarchy, CGROUP_ROOT).exists() for hierarchy in cgroup_hierarchies())
