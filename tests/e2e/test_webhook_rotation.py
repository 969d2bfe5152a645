"""Certificate rotation with the webhook left running, observed through a real kube-apiserver.

The webhook is deployed from the project's own manifests (the ``deployment`` fixture,
conftest.py and harness/deploy.py). While a thread keeps creating pods in an opted-in
namespace, the certificate is renewed by ``backend-injector install`` or replaced by hand, the
running webhook picks up the new files, and not one pod is refused on the way.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .harness.admission import (
    BACKEND_INJECTOR,
    chart_like_pod,
    create_pod,
    is_mutated,
    kubectl_ok,
    run,
    wait_for,
)
from .harness.deploy import (
    NAMESPACE,
    SERVICE,
    WEBHOOK_PORT,
    Deployment,
    ca_fingerprints,
    tls_secret,
)

pytestmark = pytest.mark.e2e


def served_certificate(address: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


class PodCreator:
    """Creates a pod in the opted-in namespace every few tenths of a second, in a thread,
    and keeps every outcome: the proof that a rotation never refused one."""

    def __init__(self, deployment: Deployment) -> None:
        self._deployment = deployment
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.outcomes: list[tuple[str, int, str]] = []

    def __enter__(self) -> PodCreator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def create(self, step: str) -> None:
        result = create_pod(self._deployment.plane, self._deployment.opted_in,
                            chart_like_pod(f"rotation-{uuid.uuid4().hex[:8]}"))
        mutated = result.returncode == 0 and is_mutated(json.loads(result.stdout))
        self.outcomes.append((step, result.returncode, "" if mutated else result.stderr))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.create("background")

    def failures(self) -> list[tuple[str, int, str]]:
        return [outcome for outcome in self.outcomes if outcome[1] != 0 or outcome[2]]


def wait_for_served(deployment: Deployment, cert_pem: bytes) -> None:
    wanted = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    wait_for(lambda: served_certificate(deployment.netns.address, WEBHOOK_PORT) == wanted,
             "the webhook to serve the new certificate")


def test_ca_rotation_by_install_keeps_every_pod_admitted(deployment: Deployment) -> None:
    """install renews with a new CA (the current one cannot outlive a 365-day certificate),
    keeps the old CA in the caBundle, and the running webhook picks up the new files."""
    old_ca = deployment.secret_files()["ca.crt"]
    with PodCreator(deployment) as creator:
        creator.create("before")
        # The current certificate (365 days, from `certs`) is due within a 365-day margin, and
        # its CA, which `certs` makes with the same 365 days, cannot outlive a new 366-day
        # certificate: install must make a new CA as well.
        output = deployment.install("--days", "366", "--renew-within-days", "365")
        assert "issued a new serving certificate" in output and "patched the caBundle" in output
        files = deployment.secret_files()
        assert files["ca.crt"] != old_ca
        assert ca_fingerprints(deployment.ca_bundle()) == (
            ca_fingerprints(files["ca.crt"]) + ca_fingerprints(old_ca))
        creator.create("after install")
        deployment.volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})
        wait_for_served(deployment, files["tls.crt"])
        creator.create("after the swap")
    assert not creator.failures(), creator.failures()
    assert len(creator.outcomes) >= 4


def test_replacing_the_secret_with_a_new_ca_then_install_keeps_every_pod_admitted(
    deployment: Deployment,
) -> None:
    """The rotation a person does by hand: `certs` to a new directory, replace the Secret,
    `install`, and the webhook picks up the new files."""
    served_ca = deployment.secret_files()["ca.crt"]
    certs_dir = deployment.work / f"certs-{uuid.uuid4().hex[:6]}"
    run(BACKEND_INJECTOR, "certs", "--service", SERVICE, "--namespace", NAMESPACE,
        "--out", str(certs_dir))
    files = {name: (certs_dir / name).read_bytes()
             for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
    try:
        with PodCreator(deployment) as creator:
            creator.create("before")
            kubectl_ok(deployment.plane, "replace", "-f", "-",
                       input=json.dumps(tls_secret(files)))
            creator.create("after replacing the Secret")
            output = deployment.install()
            assert "issued" not in output and "patched the caBundle" in output, output
            bundle = ca_fingerprints(deployment.ca_bundle())
            # As long as the webhook serves the old files, the old CA must still be trusted.
            time.sleep(1)
            creator.create("after install")
            deployment.volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})
            wait_for_served(deployment, files["tls.crt"])
            creator.create("after the swap")
        assert bundle[0] == ca_fingerprints(files["ca.crt"])[0]
        assert (ca_fingerprints(served_ca)[0] in bundle, creator.failures()) == (True, [])
    finally:
        # Whatever happened, leave the webhook serving what the caBundle trusts.
        deployment.volume.publish({name: files[name] for name in ("tls.crt", "tls.key")})
        wait_for_served(deployment, files["tls.crt"])
        deployment.wait_until_injecting()
