"""The webhook deployed from the project's own manifests onto the e2e control plane.

The Namespace, ConfigMap, credentials Secret, Service and MutatingWebhookConfiguration come
from ``kubectl kustomize manifests/overlays/docker-desktop`` (the Deployment and the install
Job are left out: there is no kubelet to run them); ``backend-injector certs`` makes the
certificate, the TLS Secret is created from its files and ``backend-injector install`` puts the
CA into the caBundle. The server is ``backend-injector serve`` with the ConfigMap's
configuration and the Secret's credentials, inside a network namespace of its own (see
webhook_host.py), reached by the apiserver through the Service and a hand-made EndpointSlice,
as a pod would be. Its log (one JSON line per review) is kept in the control plane's log
directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .admission import (
    BACKEND_INJECTOR,
    apply,
    chart_like_pod,
    create_pod,
    is_mutated,
    kubectl_json,
    kubectl_ok,
    new_namespace,
    opted_in_labels,
    run,
    settle_namespace,
    wait_for,
)
from .controlplane import REPO_ROOT, ControlPlane
from .webhook_host import NetworkNamespace, SecretVolume, ServerProcess

OVERLAY = REPO_ROOT / "manifests" / "overlays" / "docker-desktop"
NAMESPACE = "backend-injector"
SERVICE = "backend-injector"
TLS_SECRET = "backend-injector-tls"
WEBHOOK_CONFIG = "backend-injector"
WEBHOOK_NAME = "inject.backend-injector.svc"
WEBHOOK_PORT = 8443
# The kinds of the rendered overlay that make sense without a kubelet; the Deployment, the
# install Job/CronJob and their RBAC are what a node would run.
APPLIED_KINDS = ("Namespace", "ConfigMap", "Secret", "Service", "MutatingWebhookConfiguration")


def ca_fingerprints(bundle_pem: bytes) -> list[str]:
    return [cert.fingerprint(hashes.SHA256()).hex()
            for cert in x509.load_pem_x509_certificates(bundle_pem)]


@dataclass
class Deployment:
    """The webhook as deployed for this module, and the means to observe and disturb it."""

    plane: ControlPlane
    netns: NetworkNamespace
    server: ServerProcess
    volume: SecretVolume
    work: Path
    config: Path
    serve_env: dict[str, str]
    ca_pem: bytes
    install_output: str
    opted_in: str
    extra_servers: list[ServerProcess] = field(default_factory=list)

    def reviews(self, **match: Any) -> list[dict[str, Any]]:
        """The webhook's review log lines, optionally only those whose fields equal `match`."""
        return [record for record in self.server.records()
                if record.get("message") == "review"
                and all(record.get(key) == value for key, value in match.items())]

    def secret_files(self) -> dict[str, bytes]:
        secret = kubectl_json(self.plane, "get", "secret", TLS_SECRET, "-n", NAMESPACE)
        return {key: base64.b64decode(value) for key, value in secret["data"].items()}

    def ca_bundle(self) -> bytes:
        configuration = kubectl_json(self.plane, "get", "mutatingwebhookconfiguration",
                                     WEBHOOK_CONFIG)
        return base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"])

    def install(self, *args: str) -> str:
        return run(BACKEND_INJECTOR, "install", "--kubeconfig", str(self.plane.kubeconfig), *args)

    def wait_until_injecting(self) -> None:
        """Until a dry-run pod in the opted-in namespace comes back mutated."""

        def mutated() -> bool:
            result = create_pod(self.plane, self.opted_in, chart_like_pod("probe"),
                                "--dry-run=server")
            return result.returncode == 0 and is_mutated(json.loads(result.stdout))

        wait_for(mutated, "the apiserver to call backend-injector")


def rendered_overlay(plane: ControlPlane) -> list[dict[str, Any]]:
    text = kubectl_ok(plane, "kustomize", str(OVERLAY))
    return [document for document in yaml.safe_load_all(text) if document]


def endpoint_slice(address: str) -> dict[str, Any]:
    """What the EndpointSlice controller would publish for a ready webhook pod at `address`."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "backend-injector-e2e",
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                # Not the controller's value, so the controller leaves this slice alone.
                "endpointslice.kubernetes.io/managed-by": "e2e.backend-injector",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": WEBHOOK_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


@contextlib.contextmanager
def deployed_webhook(plane: ControlPlane, work: Path) -> Iterator[Deployment]:
    """The webhook deployed on `plane`, torn down on exit (also used by the benchmarks)."""
    objects = [obj for obj in rendered_overlay(plane) if obj["kind"] in APPLIED_KINDS]
    assert sorted(obj["kind"] for obj in objects) == sorted(APPLIED_KINDS), objects
    netns: NetworkNamespace | None = None
    server: ServerProcess | None = None
    extra: list[ServerProcess] = []
    try:
        settle_namespace(plane, NAMESPACE)
        apply(plane, *objects)

        # The server runs with what the Deployment would mount: the ConfigMap's configuration
        # and the credentials Secret's files.
        config_map = next(obj for obj in objects if obj["kind"] == "ConfigMap")
        config = work / "config.yaml"
        config.write_text(config_map["data"]["config.yaml"])
        credentials = next(obj for obj in objects if obj["kind"] == "Secret")
        credentials_dir = work / "credentials"
        credentials_dir.mkdir()
        for key, value in credentials["stringData"].items():
            (credentials_dir / key).write_text(value)
        serve_env = {
            "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE": str(credentials_dir / "access-key-id"),
            "BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE": str(credentials_dir / "secret-access-key"),
        }

        certs_dir = work / "certs-initial"
        run(BACKEND_INJECTOR, "certs", "--service", SERVICE, "--namespace", NAMESPACE,
            "--out", str(certs_dir))
        files = {name: (certs_dir / name).read_bytes()
                 for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
        apply(plane, tls_secret(files))
        volume = SecretVolume(work / "tls")
        volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})

        netns = NetworkNamespace.create()
        server = ServerProcess(
            "webhook",
            [BACKEND_INJECTOR, "serve", "--config", str(config),
             "--host", netns.address, "--port", str(WEBHOOK_PORT),
             "--tls-cert", str(volume.path("tls.crt")), "--tls-key", str(volume.path("tls.key"))],
            netns=netns, port=WEBHOOK_PORT, log_path=plane.log_dir / "webhook.log", env=serve_env,
        )
        server.start()
        apply(plane, endpoint_slice(netns.address))

        opted_in = new_namespace(plane, "opted-in", opted_in_labels())
        deployment = Deployment(
            plane=plane, netns=netns, server=server, volume=volume, work=work, config=config,
            serve_env=serve_env, ca_pem=files["ca.crt"], install_output="", opted_in=opted_in,
            extra_servers=extra,
        )
        deployment.install_output = deployment.install()
        deployment.wait_until_injecting()
        yield deployment
    finally:
        # The webhook fails closed: its configuration goes first, so that nothing after this
        # module meets a webhook that no longer answers.
        plane.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIG,
                      "--ignore-not-found")
        plane.kubectl("delete", "endpointslice", "backend-injector-e2e", "-n", NAMESPACE,
                      "--ignore-not-found")
        for process in [*extra, *([server] if server else [])]:
            process.stop()
        if netns is not None:
            netns.delete()
        # Leave no trace of the deployment for later modules (they may create the namespace).
        plane.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=60s")


def tls_secret(files: dict[str, bytes]) -> dict[str, Any]:
    """The Secret `install` reads: type kubernetes.io/tls with the CA and its key beside."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TLS_SECRET, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {name: base64.b64encode(content).decode() for name, content in files.items()},
    }
