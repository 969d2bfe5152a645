"""The webhook's own Helm chart through a real control plane: install, upgrade, uninstall.

The release is installed as the README says, ``helm install ... -n NS --create-namespace``, in a
namespace other than the default ``backend-injector``, so that whatever names the webhook's
namespace (the registration's Service, the certificate's names, the install command's
arguments, the install account's RBAC) is seen to follow the release namespace on a real
apiserver. The namespace is then labelled with the command the install's notes print.

There is no kubelet in this control plane, so no pod ever runs, and a hook Job would never
complete (Helm would wait for it until its timeout). The chart is therefore installed and
upgraded with ``--no-hooks``, and the test does what the post-install/post-upgrade hook Job
would do: it reads the hook's manifest from the release (``helm get hooks``) and runs
``backend-injector`` with exactly that Job's arguments, under the install ServiceAccount's own
token (so the chart's RBAC is what is exercised, not the admin's rights). The webhook pods are
stood in for as in harness/deploy.py: ``backend-injector serve`` with the release's ConfigMap,
credentials Secret and TLS Secret, in a network namespace, behind the release's Service and a
hand-made EndpointSlice. The node e2e runs the hook Jobs themselves on a real kubelet.

What is checked, through the apiserver:

* install: the release's objects exist in the release namespace, the notes' labelling command
  gives the namespace the kustomize overlay's labels, the hook's work fills the caBundle, and
  opted-in pods are mutated by the webhook serving the release's configuration;
* upgrade with a changed value: the caBundle is kept (before and after the hook's work), the
  Deployment's pod template changes (its checksum annotation), so the ReplicaSet controller
  rolls a new ReplicaSet, and the webhook restarted from the new ConfigMap applies it;
* ``upgrade --force``, which replaces the registration without a caBundle: the hook's work
  puts the same CA back (this is why the Job is a post-upgrade hook too);
* every values example (and the defaults) renders objects the apiserver accepts: a server-side
  dry run, with its validation, defaulting and admission (Pod Security of the namespace);
* uninstall: nothing of the release is left (no MutatingWebhookConfiguration above all, nor
  cluster roles, nor any namespaced object of the chart); the namespace Helm made stays with
  the one thing the hook made in it, the TLS Secret, until ``kubectl delete namespace`` as the
  docs say; pods in the opted-in namespace are created again without any webhook.

Timings of the three Helm commands are printed (run with ``-s`` or ``-rP`` to see them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness.admission import (
    BACKEND_INJECTOR,
    chart_like_pod,
    create_pod,
    is_mutated,
    kubectl_json,
    kubectl_ok,
    names,
    new_namespace,
    opted_in_labels,
    run,
    settle_namespace,
    wait_for,
)
from .harness.cert_manager import STAND_IN_CRDS
from .harness.controlplane import ControlPlane
from .harness.deploy import endpoint_slice, rendered_overlay
from .harness.webhook_host import NetworkNamespace, ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "backend-injector"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
RELEASE = "backend-injector"
# Not the default namespace: see above.
NAMESPACE = "injector-system"
NAME = "backend-injector"
# What the cluster, the kustomize overlay (the project's name) and Helm's --create-namespace
# label a namespace with, besides the labels the webhook's namespace needs.
NAMESPACE_OWN_LABELS = ("kubernetes.io/metadata.name", "app.kubernetes.io/name",
                        "app.kubernetes.io/part-of", "name")
WEBHOOK_PORT = 8443
CHECKSUM = "checksum/config"


@dataclass
class Installed:
    """The release on the control plane, with the stand-in for its pods."""

    plane: ControlPlane
    work: Path
    opted_in: str
    netns: NetworkNamespace
    server: ServerProcess | None = None
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    hook_runs: list[str] = field(default_factory=list)

    def helm(self, *args: str) -> str:
        """A command on the release, in the release namespace."""
        started = time.monotonic()
        result = self.plane.helm(*args, "--namespace", NAMESPACE)
        name = f"helm {args[0]}"
        if name in self.timings:  # the same command again: `helm upgrade --force`
            name = f"{name} ({' '.join(arg for arg in args[1:] if arg.startswith('--'))})"
        self.timings[name] = time.monotonic() - started
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        self.outputs[name] = result.stdout
        return result.stdout

    def ca_bundle(self) -> bytes:
        configuration = kubectl_json(self.plane, "get", "mutatingwebhookconfiguration", NAME)
        bundle = configuration["webhooks"][0]["clientConfig"].get("caBundle", "")
        return base64.b64decode(bundle)

    def deployment(self) -> dict[str, Any]:
        return kubectl_json(self.plane, "get", "deployment", NAME, "-n", NAMESPACE)  # type: ignore[no-any-return]

    def run_hooks(self) -> str:
        """Do what the release's post-install/post-upgrade hook Job does, as its account."""
        listed = self.plane.helm("get", "hooks", RELEASE, "--namespace", NAMESPACE)
        assert listed.returncode == 0, listed.stderr
        hooks = [item for item in yaml.safe_load_all(listed.stdout) if item]
        (job,) = hooks
        assert job["kind"] == "Job"
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        kubeconfig = self.account_kubeconfig(spec["serviceAccountName"])
        started = time.monotonic()
        output = run(BACKEND_INJECTOR, *container["args"], "--kubeconfig", str(kubeconfig))
        self.timings[f"hook work #{len(self.hook_runs) + 1}"] = time.monotonic() - started
        self.hook_runs.append(output)
        return output

    def account_kubeconfig(self, account: str) -> Path:
        """A kubeconfig that authenticates as `account` with a short-lived token."""
        token = kubectl_ok(self.plane, "create", "token", account, "-n", NAMESPACE,
                           "--duration=10m").strip()
        admin = yaml.safe_load(self.plane.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        path = self.work / f"{account}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account,
                          "context": {"cluster": cluster["name"], "user": account}}],
            "current-context": account,
        }))
        path.chmod(0o600)
        return path

    def serve(self) -> None:
        """(Re)start the stand-in for the webhook pods from the release's objects."""
        if self.server is not None:
            self.server.stop()
        config_map = kubectl_json(self.plane, "get", "configmap", f"{NAME}-config",
                                  "-n", NAMESPACE)
        config = self.work / "config.yaml"
        config.write_text(config_map["data"]["config.yaml"])
        for secret_name, files in ((f"{NAME}-credentials", ("access-key-id", "secret-access-key")),
                                   (f"{NAME}-tls", ("tls.crt", "tls.key"))):
            secret = kubectl_json(self.plane, "get", "secret", secret_name, "-n", NAMESPACE)
            for key in files:
                path = self.work / key
                path.write_bytes(base64.b64decode(secret["data"][key]))
                path.chmod(0o600)
        env = {"BACKEND_INJECTOR_ACCESS_KEY_ID_FILE": str(self.work / "access-key-id"),
               "BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE": str(self.work / "secret-access-key")}
        self.server = ServerProcess(
            "webhook-helm",
            [BACKEND_INJECTOR, "serve", "--config", str(config), "--host", self.netns.address,
             "--port", str(WEBHOOK_PORT), "--tls-cert", str(self.work / "tls.crt"),
             "--tls-key", str(self.work / "tls.key")],
            netns=self.netns, port=WEBHOOK_PORT,
            log_path=self.plane.log_dir / "webhook-helm.log", env=env,
        )
        self.server.start()

    def admitted(self) -> dict[str, Any]:
        """A chart-like pod as the apiserver admits it in the opted-in namespace (dry run)."""

        def attempt() -> dict[str, Any] | None:
            result = create_pod(self.plane, self.opted_in, chart_like_pod("probe"),
                                "--dry-run=server")
            pod: dict[str, Any] = json.loads(result.stdout) if result.returncode == 0 else {}
            return pod if pod and is_mutated(pod) else None

        return wait_for(attempt, "the apiserver to call the release's webhook")  # type: ignore[no-any-return]


def release_objects(plane: ControlPlane) -> list[tuple[str, str]]:
    """(kind, name) of every object the release's manifest holds."""
    manifest = plane.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE)
    assert manifest.returncode == 0, manifest.stderr
    return sorted((item["kind"], item["metadata"]["name"])
                  for item in yaml.safe_load_all(manifest.stdout) if item)


def overlay_namespace_labels(plane: ControlPlane) -> dict[str, str]:
    """The labels the kustomize overlay gives the webhook's namespace, that a user gives the
    release namespace by hand."""
    (namespace,) = [item for item in rendered_overlay(plane) if item["kind"] == "Namespace"]
    return {name: value for name, value in namespace["metadata"]["labels"].items()
            if name not in NAMESPACE_OWN_LABELS}


def namespace_labels(plane: ControlPlane) -> dict[str, str]:
    labels = kubectl_json(plane, "get", "namespace", NAMESPACE)["metadata"].get("labels") or {}
    return {name: value for name, value in labels.items() if name not in NAMESPACE_OWN_LABELS}


def label_as_the_notes_say(plane: ControlPlane, notes: str) -> None:
    """Run the command the install's notes print to label the release namespace (the other
    `kubectl label namespace` they print opts a namespace of workloads in)."""
    (command,) = [line.split() for line in notes.splitlines()
                  if line.strip().startswith(f"kubectl label namespace {NAMESPACE} ")]
    kubectl_ok(plane, *command[1:])


@pytest.fixture(scope="module")
def installed(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    plane = control_plane
    settle_namespace(plane, NAMESPACE)
    netns = NetworkNamespace.create()
    state = Installed(plane=plane, work=tmp_path_factory.mktemp("helm-chart"),
                      opted_in=new_namespace(plane, "helm-opted-in", opted_in_labels()),
                      netns=netns)
    try:
        yield state
    finally:
        for name, seconds in state.timings.items():
            print(f"helm chart e2e: {name}: {seconds:.2f}s", flush=True)
        for name in ("helm install", "helm upgrade", "helm uninstall"):
            print(f"helm chart e2e: output of {name}:\n{state.outputs.get(name, '')}",
                  flush=True)
        for number, output in enumerate(state.hook_runs, 1):
            print(f"helm chart e2e: hook work #{number}:\n{output}", flush=True)
        # Whatever the tests left: the release (its registration fails closed) first.
        plane.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found")
        plane.kubectl("delete", "mutatingwebhookconfiguration", NAME, "--ignore-not-found")
        if state.server is not None:
            state.server.stop()
        netns.delete()
        plane.kubectl("delete", "namespace", state.opted_in, NAMESPACE, "--ignore-not-found",
                      "--timeout=60s")


@contextlib.contextmanager
def chart_namespace(plane: ControlPlane) -> Iterator[None]:
    """The release namespace for real (dry-run objects cannot go into a dry-run namespace),
    labelled as the overlay's (its Pod Security level is what the dry runs are admitted
    under), and stand-ins for cert-manager's CRDs (see harness/cert_manager.py); the namespace
    is deleted, and gone, on exit, before the install test has Helm create it."""
    kubectl_ok(plane, "apply", "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": STAND_IN_CRDS}))
    for crd in STAND_IN_CRDS:
        kubectl_ok(plane, "wait", "--for=condition=Established", "--timeout=30s",
                   f"crd/{crd['metadata']['name']}")
    settle_namespace(plane, NAMESPACE)
    kubectl_ok(plane, "create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": overlay_namespace_labels(plane)}}))
    try:
        yield
    finally:
        plane.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=60s")


def rendered_chart(plane: ControlPlane, *arguments: str) -> list[dict[str, Any]]:
    rendered = plane.helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *arguments)
    assert rendered.returncode == 0, rendered.stderr
    return [item for item in yaml.safe_load_all(rendered.stdout) if item]


def test_the_defaults_and_every_example_pass_a_server_side_dry_run(
    control_plane: ControlPlane,
) -> None:
    plane = control_plane
    with chart_namespace(plane):
        for values in [None, *EXAMPLES]:
            what = values.name if values else "the defaults"
            objects = rendered_chart(plane, *(["-f", str(values)] if values else []))
            assert "Namespace" not in [item["kind"] for item in objects], what
            applied = kubectl_json(plane, "apply", "--dry-run=server", "-f", "-",
                                   input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                     "items": objects}))
            returned = applied["items"] if applied.get("kind") == "List" else [applied]
            assert sorted((item["kind"], item["metadata"]["name"]) for item in returned) == (
                sorted((item["kind"], item["metadata"]["name"]) for item in objects)), what
            # Defaulted by the apiserver, and stored nowhere.
            (deployment,) = [item for item in returned if item["kind"] == "Deployment"]
            assert deployment["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirst", what
            stored = plane.kubectl("get", "deployment", NAME, "-n", NAMESPACE)
            assert stored.returncode != 0 and "NotFound" in stored.stderr, what


def test_install_upgrade_uninstall(installed: Installed) -> None:
    plane = installed.plane

    # --- helm install: the release's objects, then the hook's work fills the caBundle.
    notes = installed.helm("install", RELEASE, str(CHART), "--create-namespace", "--no-hooks")
    objects = release_objects(plane)
    assert ("MutatingWebhookConfiguration", NAME) in objects
    assert ("Job", f"{NAME}-install") not in objects  # a hook, not a release object
    assert ("Namespace", NAMESPACE) not in objects  # Helm made it; the chart does not own it
    assert kubectl_json(plane, "get", "service", NAME, "-n", NAMESPACE)["metadata"]["name"] == NAME
    # Bare as --create-namespace makes it; the notes' command labels it as the overlay's.
    assert namespace_labels(plane) == {}
    label_as_the_notes_say(plane, notes)
    assert namespace_labels(plane) == overlay_namespace_labels(plane)
    assert installed.ca_bundle() == b""
    output = installed.run_hooks()
    assert "patched the caBundle" in output, output
    bundle = installed.ca_bundle()
    assert bundle.startswith(b"-----BEGIN CERTIFICATE-----")

    installed.serve()
    apply_slice(plane, installed.netns.address)
    pod = installed.admitted()
    assert names(pod["spec"]["initContainers"]) == ["wait-for-kafka"]  # action remove
    template_before = installed.deployment()["spec"]["template"]
    sets_before = replica_sets(plane)
    assert len(sets_before) == 1

    # --- helm upgrade with a changed value.
    installed.helm("upgrade", RELEASE, str(CHART), "--no-hooks", "--set", "config.action=rewrite")
    # The upgrade's own patch leaves the caBundle alone, before any hook has run...
    assert installed.ca_bundle() == bundle
    # ...and the post-upgrade hook finds nothing to change.
    output = installed.run_hooks()
    assert "patched the caBundle" not in output, output
    assert installed.ca_bundle() == bundle
    # The pods roll: the pod template's checksum changed, and a second ReplicaSet appears.
    template_after = installed.deployment()["spec"]["template"]
    assert template_after["metadata"]["annotations"][CHECKSUM] != (
        template_before["metadata"]["annotations"][CHECKSUM])
    wait_for(lambda: len(replica_sets(plane)) == 2, "the rollout's new ReplicaSet")
    # The webhook pods started from the new ConfigMap apply the new action.
    installed.serve()
    pod = installed.admitted()
    init = {container["name"]: container for container in pod["spec"]["initContainers"]}
    assert set(init) == {"wait-for-mlflow", "wait-for-kafka"}
    assert "host.docker.internal 5000" in " ".join(init["wait-for-mlflow"]["command"])

    # --- helm upgrade --force replaces the registration, caBundle and all: this is what the
    # post-upgrade hook is for. Its work puts the same CA back before the command would return.
    installed.helm("upgrade", RELEASE, str(CHART), "--no-hooks", "--force", "--reuse-values")
    assert installed.ca_bundle() == b""
    output = installed.run_hooks()
    assert "patched the caBundle" in output and "issued" not in output, output
    assert installed.ca_bundle() == bundle
    installed.admitted()

    # --- helm uninstall: nothing of the release left.
    installed.helm("uninstall", RELEASE, "--wait", "--timeout=120s")
    assert plane.kubectl("get", "mutatingwebhookconfiguration", NAME).returncode != 0
    for kind in ("clusterrole", "clusterrolebinding"):
        assert plane.kubectl("get", kind, f"{NAME}-install").returncode != 0, kind
    listed = plane.helm("list", "--all", "-q", "--namespace", NAMESPACE)
    assert listed.returncode == 0 and RELEASE not in listed.stdout.split()
    left = kubectl_json(plane, "get", "mutatingwebhookconfigurations,clusterroles,"
                        "clusterrolebindings", "-l", "app.kubernetes.io/part-of=backend-injector")
    assert left["items"] == []
    left = kubectl_json(plane, "get", "deployments,services,configmaps,secrets,serviceaccounts,"
                        "roles,rolebindings,cronjobs,poddisruptionbudgets", "-n", NAMESPACE,
                        "-l", "app.kubernetes.io/part-of=backend-injector")
    assert left["items"] == []
    # The namespace Helm made stays, with the TLS Secret the hook made (the CA's key in it):
    # the docs say to delete the namespace after uninstalling.
    secrets = kubectl_json(plane, "get", "secrets", "-n", NAMESPACE)["items"]
    assert [secret["metadata"]["name"] for secret in secrets] == [f"{NAME}-tls"]
    started = time.monotonic()
    kubectl_ok(plane, "delete", "namespace", NAMESPACE, "--timeout=120s")
    installed.timings["namespace deleted after uninstall"] = time.monotonic() - started
    # Pods in the opted-in namespace are admitted again, unmutated: no registration is left
    # to fail closed on a webhook that is gone.
    created = create_pod(plane, installed.opted_in, chart_like_pod("after-uninstall"),
                         "--dry-run=server")
    assert created.returncode == 0, created.stderr
    assert not is_mutated(json.loads(created.stdout))


def apply_slice(plane: ControlPlane, address: str) -> None:
    """The EndpointSlice of a ready webhook pod, in the release namespace."""
    endpoints = endpoint_slice(address)
    endpoints["metadata"]["namespace"] = NAMESPACE
    kubectl_ok(plane, "apply", "-f", "-", input=json.dumps(endpoints))


def replica_sets(plane: ControlPlane) -> list[dict[str, Any]]:
    items = kubectl_json(plane, "get", "replicasets", "-n", NAMESPACE,
                         "-l", "app.kubernetes.io/name=backend-injector")["items"]
    return items  # type: ignore[no-any-return]
