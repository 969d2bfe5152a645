"""The webhook Service's ready endpoints and, when there are none, what its pods are doing.

Three of doctor's checks look at the ready endpoints; `ServiceEndpoints` reads them once a run,
so that the checks agree with each other and the cluster is asked two requests, not six.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from webhook.cluster.client import Cluster, JsonObject, namespaced_path

# What to do about pods that cannot get their image (see `fix_for_pod_states`).
IMAGE_NOT_ON_NODE_FIX = (
    "the node does not have the image: on Docker Desktop's kind-based cluster load it into each "
    "node or use a registry (README, Troubleshooting), or run backend-injector dev instead")
IMAGE_NOT_PULLED_FIX = (
    "the image cannot be pulled: check image.repository, image.tag and the secrets")


class ServiceEndpoints:
    """Ready addresses of webhook Services, remembered until `forget`."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._ready: dict[tuple[str, str, int], tuple[list[str], int]] = {}

    def forget(self) -> None:
        """Read the endpoints again next time (a new doctor run)."""
        self._ready.clear()

    def ready_addresses(self, service: Mapping[str, Any]) -> tuple[list[str], int]:
        """Ready endpoint addresses of the Service and the target port the slices name."""
        namespace, name = str(service.get("namespace")), str(service.get("name"))
        port = int(service.get("port") or 443)
        if (namespace, name, port) not in self._ready:
            self._ready[namespace, name, port] = self._read(namespace, name, port)
        return self._ready[namespace, name, port]

    def why_none(self, namespace: str, service: str) -> tuple[str, str]:
        """What the Service's pods are doing, and the fix that goes with it."""
        found = self.cluster.get(namespaced_path("v1", namespace, "services", service))
        selector = ((found or {}).get("spec") or {}).get("selector") or {}
        if not selector:
            return "the Service selects no pods", f"kubectl -n {namespace} get pods,deployments"
        pods = self._pods(namespace, selector)
        if not pods:
            return ("no pods: scaled to zero, or none could be created",
                    f"kubectl -n {namespace} scale deployment/{service} --replicas=2, and "
                    f"kubectl -n {namespace} describe replicasets for what stops them")
        states = [f"{(pod.get('metadata') or {}).get('name')} {pod_state(pod)}" for pod in pods]
        fix = fix_for_pod_states(" ".join(states), namespace, service, sorted(selector))
        return "pods: " + ", ".join(states[:5]), fix

    def _pods(self, namespace: str, selector: Mapping[str, str]) -> list[JsonObject]:
        query = urllib.parse.quote(",".join(f"{key}={value}" for key, value in
                                            sorted(selector.items())), safe="")
        listed = self.cluster.get(namespaced_path("v1", namespace, "pods")
                                  + f"?labelSelector={query}")
        return list((listed or {}).get("items") or [])

    def _read(self, namespace: str, name: str, port: int) -> tuple[list[str], int]:
        selector = urllib.parse.quote(f"kubernetes.io/service-name={name}", safe="")
        listed = self.cluster.get(namespaced_path("discovery.k8s.io/v1", namespace,
                                                  "endpointslices")
                                  + f"?labelSelector={selector}")
        slices = (listed or {}).get("items") or []
        wanted_name = self._service_port_name(namespace, name, port)
        return ready_addresses_of(slices), target_port(slices, wanted_name, default=port)

    def _service_port_name(self, namespace: str, name: str, port: int) -> str:
        found = self.cluster.get(namespaced_path("v1", namespace, "services", name))
        for service_port in ((found or {}).get("spec") or {}).get("ports") or []:
            if service_port.get("port") == port:
                return str(service_port.get("name", ""))
        return ""


def ready_addresses_of(slices: list[JsonObject]) -> list[str]:
    """The addresses of the endpoints not marked unready, in the slices' order."""
    return [address
            for endpoint_slice in slices
            for endpoint in endpoint_slice.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
            for address in endpoint.get("addresses") or []]


def target_port(slices: list[JsonObject], port_name: str, *, default: int) -> int:
    """The pods' port behind the Service port called `port_name`; the last slice naming it
    wins, and `default` when none does."""
    found = default
    for endpoint_slice in slices:
        for slice_port in endpoint_slice.get("ports") or []:
            if slice_port.get("name", "") == port_name and slice_port.get("port"):
                found = int(slice_port["port"])
    return found


def pod_state(pod: Mapping[str, Any]) -> str:
    """The first waiting or terminated reason of its containers, else its phase."""
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            trouble = container_trouble(container)
            if trouble:
                return trouble
    return str(status.get("phase", "Pending"))


def container_trouble(container: Mapping[str, Any]) -> str | None:
    """Why the container waits or ended, unless it simply completed."""
    state = container.get("state") or {}
    for kind in ("waiting", "terminated"):
        reason = (state.get(kind) or {}).get("reason")
        if reason and reason != "Completed":
            return str(reason)
    return None


def fix_for_pod_states(states: str, namespace: str, service: str, selector_keys: list[str]
                       ) -> str:
    """What to do about pods in these states (their names and reasons, as one text)."""
    if "ErrImageNeverPull" in states:
        return IMAGE_NOT_ON_NODE_FIX
    if "ImagePullBackOff" in states or "ErrImagePull" in states:
        return IMAGE_NOT_PULLED_FIX
    if "CrashLoopBackOff" in states or "Error" in states:
        return f"kubectl -n {namespace} logs deployment/{service} says why it stops"
    return f"kubectl -n {namespace} describe pods -l {','.join(selector_keys)}"
