"""The policy twin on the e2e control plane, and the webhook's rules beside it.

An ``Instance`` is one MutatingAdmissionPolicy built from one configuration and bound to a
namespace of its own; ``compare`` creates the same pods through the policy and, in a namespace
no policy touches, through ``Rules`` (what the webhook runs) after the apiserver's defaulting,
and keeps both sides' stored pods. ``normalized`` leaves out only what the apiserver assigns
per object (uid, timestamps, resourceVersion, managedFields, status, namespace and the random
suffix of the service-account token volume).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jsonpatch

from webhook.policy.objects import build_policy
from webhook.rules.mutate import INJECT_KEY, STATUS_KEY, Rules
from webhook.settings import Action, CredentialMode, EnvScope, Settings, load_settings

from . import policy_pods

# Fields the apiserver assigns per object; everything else must be equal.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation",
                   "namespace", "selfLink")
TOKEN_VOLUME = re.compile(r"kube-api-access-[a-z0-9]+")


class Cluster(Protocol):
    """What the policy twin's e2e needs of the harness's control plane."""

    def kubectl(self, *args: str, input: str | None = None,
                timeout: float = 120.0) -> Any: ...

    def helm(self, *args: str, input: str | None = None, timeout: float = 300.0) -> Any: ...


@dataclass(frozen=True)
class Instance:
    """One policy built from one configuration, bound to its own namespace."""

    name: str
    settings: Settings
    api_version: str
    # The namespace label value its binding selects. Not the generated "enabled", so that the
    # webhook, which other e2e tests of the session may install, never sees these namespaces.
    selector_value: str

    @property
    def policy_namespace(self) -> str:
        return f"{self.name}-policy"

    @property
    def plain_namespace(self) -> str:
        return f"{self.name}-webhook"


def _instances() -> list[Instance]:
    default = load_settings(environ={})  # credentials by reference
    rewrite = dataclasses.replace(default, action=Action.REWRITE)
    by_value = dataclasses.replace(
        default,
        credentials=dataclasses.replace(default.credentials, mode=CredentialMode.VALUE),
        add_env_to=EnvScope.ALL,
    )
    return [
        Instance("bi-remove", default, "admissionregistration.k8s.io/v1", "e2e-remove"),
        Instance("bi-rewrite", rewrite, "admissionregistration.k8s.io/v1", "e2e-rewrite"),
        Instance("bi-value", by_value, "admissionregistration.k8s.io/v1beta1", "e2e-value"),
    ]


INSTANCES = _instances()


def kubectl_json(cluster: Cluster, *args: str, input: str | None = None) -> Any:
    """kubectl's output as JSON; several objects (a created List) come back as a List."""
    result = cluster.kubectl(*args, "-o", "json", input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    decoder, text, position, objects = json.JSONDecoder(), result.stdout, 0, []
    while text[position:].strip():
        obj, end = decoder.raw_decode(text, position)
        objects.append(obj)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return objects[0] if len(objects) == 1 else {"kind": "List", "items": objects}


def _as_list(pods: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})


def _items(created: Any) -> list[dict[str, Any]]:
    return list(created["items"]) if created.get("kind") == "List" else [created]


def create_pods(cluster: Cluster, namespace: str, pods: list[dict[str, Any]],
                *, dry_run: bool = False) -> dict[str, dict[str, Any]]:
    """Create ``pods`` in ``namespace`` in one request per pod (kubectl batches them); return
    the stored (or, with ``dry_run``, the would-be stored) pods by name."""
    args = ["create", "-n", namespace, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    created = kubectl_json(cluster, *args, input=_as_list(pods))
    return {pod["metadata"]["name"]: pod for pod in _items(created)}


def webhook_pod(defaulted: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """What the webhook makes of a pod as the apiserver hands it over (defaulted), ready to
    be created again: its patch applied, server-assigned fields dropped."""
    pod = copy.deepcopy(defaulted)
    pod.pop("status", None)
    for key in SERVER_METADATA:
        pod["metadata"].pop(key, None)
    mutation = rules.mutate_pod(pod)
    return jsonpatch.apply_patch(pod, mutation.operations) if mutation.changed else pod


def normalized(pod: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored pod that admission decides, with per-object noise removed."""
    metadata = {k: v for k, v in pod["metadata"].items() if k not in SERVER_METADATA}
    text = TOKEN_VOLUME.sub("kube-api-access-X", json.dumps(pod["spec"], sort_keys=True))
    return {"metadata": metadata, "spec": json.loads(text)}


def differences(left: dict[str, Any], right: dict[str, Any]) -> str:
    a = json.dumps(left, indent=1, sort_keys=True).splitlines()
    b = json.dumps(right, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "webhook rules", "policy", lineterm="", n=2))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def install(cluster: Cluster, instance: Instance) -> None:
    """The instance's policy and binding, its two namespaces, and (for secretKeyRef) the
    Secret; returns once the apiserver enforces the policy."""
    policy, binding = build_policy(instance.settings, api_version=instance.api_version,
                                   name=instance.name)
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector[0] == {"key": INJECT_KEY, "operator": "In", "values": ["enabled"]}
    selector[0]["values"] = [instance.selector_value]
    for namespace, labels in ((instance.policy_namespace, {INJECT_KEY: instance.selector_value}),
                              (instance.plain_namespace, {})):
        kubectl_json(cluster, "create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels}}))
    kubectl_json(cluster, "create", "-f", "-", input=_as_list([policy, binding]))
    probe = policy_pods.pod("policy-ready",
                            init=[policy_pods.sh("wait-for-mlflow", "nc -z mlflow 5000")])

    def enforced() -> bool:
        result = cluster.kubectl("create", "-n", instance.policy_namespace, "-f", "-",
                                 "--dry-run=server", "-o", "json", input=json.dumps(probe))
        return result.returncode == 0 and STATUS_KEY in json.loads(result.stdout)[
            "metadata"].get("annotations", {})

    wait_until(enforced, f"policy {instance.name} to be enforced")


@dataclass
class Comparison:
    """Stored pods of one instance, by name: through the policy and through the rules."""

    instance: Instance
    policy: dict[str, dict[str, Any]]
    webhook: dict[str, dict[str, Any]]
    raw: dict[str, dict[str, Any]]


def compare(cluster: Cluster, instance: Instance, pods: list[dict[str, Any]]) -> Comparison:
    rules = Rules(instance.settings)
    through_policy = create_pods(cluster, instance.policy_namespace, pods)
    defaulted = create_pods(cluster, instance.plain_namespace, pods, dry_run=True)
    expected = [webhook_pod(defaulted[pod["metadata"]["name"]], rules) for pod in pods]
    through_rules = create_pods(cluster, instance.plain_namespace, expected)
    return Comparison(instance, through_policy, through_rules,
                      {pod["metadata"]["name"]: pod for pod in pods})
