"""Tests for webhook.cluster.install: the reissue decision, the reconcile loop against a fake
cluster, and the real client wiring against a tiny fake apiserver on loopback."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from webhook import certs
from webhook.cluster import client as cluster
from webhook.cluster import install

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
MARGIN = dt.timedelta(days=30)
NAMESPACE = "backend-injector"
SERVICE = "backend-injector"
SECRET = "backend-injector-tls"
WEBHOOK_CONFIG = "backend-injector"
HOSTNAMES = certs.service_hostnames(SERVICE, NAMESPACE)


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def secret_data(
    *, ca: certs.KeyPair, serving: certs.KeyPair, with_ca_key: bool = True
) -> dict[str, str]:
    data = {
        "ca.crt": b64(ca.cert_pem),
        "tls.crt": b64(serving.cert_pem),
        "tls.key": b64(serving.key_pem),
    }
    if with_ca_key:
        data["ca.key"] = b64(ca.key_pem)
    return data


def issue(
    *, days: int = 365, ca_days: int = 3650, hostnames: list[str] = HOSTNAMES, at: dt.datetime = NOW
) -> tuple[certs.KeyPair, certs.KeyPair]:
    ca = certs.build_ca(common_name="test-ca", days=ca_days, now=at)
    return ca, certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=days, now=at)


def webhook_configuration(*bundles: str | None) -> dict[str, Any]:
    webhooks = []
    for index, bundle in enumerate(bundles or (None,)):
        client_config: dict[str, Any] = {
            "service": {"name": SERVICE, "namespace": NAMESPACE, "path": "/mutate"}
        }
        if bundle is not None:
            client_config["caBundle"] = bundle
        webhooks.append(
            {"name": f"hook{index}.backend-injector.svc", "clientConfig": client_config}
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": webhooks,
    }


def bundle_certificates(configuration: dict[str, Any], index: int = 0) -> list[bytes]:
    pem = unb64(configuration["webhooks"][index]["clientConfig"]["caBundle"])
    return [
        cert.public_bytes(serialization.Encoding.PEM)
        for cert in x509.load_pem_x509_certificates(pem)
    ]


class FakeCluster:
    """An in-memory `webhook.cluster.client.Cluster` (the calls install makes) that records what was
    written."""

    def __init__(
        self, *, secret: dict[str, Any] | None = None, configuration: dict[str, Any] | None = None
    ) -> None:
        self.secret = copy.deepcopy(secret)
        self.configuration = copy.deepcopy(configuration)
        self.writes: list[str] = []
        self.replaced_bodies: list[dict[str, Any]] = []

    def read_secret(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.secret)

    def create_secret(self, *, namespace: str, body: dict[str, Any]) -> None:
        assert self.secret is None
        self.writes.append("create")
        self.secret = copy.deepcopy(body)

    def replace_secret(self, *, namespace: str, name: str, body: dict[str, Any]) -> None:
        assert self.secret is not None
        self.writes.append("replace")
        self.replaced_bodies.append(copy.deepcopy(body))
        self.secret = copy.deepcopy(body)

    def read_webhook_configuration(self, *, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.configuration)

    def patch_webhook_configuration(self, *, name: str, operations: list[dict[str, Any]]) -> None:
        self.writes.append("patch")
        self.configuration = jsonpatch.apply_patch(self.configuration, operations)


def reconcile(
    cluster: FakeCluster, *, now: dt.datetime = NOW, **overrides: Any
) -> install.InstallResult:
    arguments: dict[str, Any] = {
        "namespace": NAMESPACE,
        "service": SERVICE,
        "secret_name": SECRET,
        "webhook_config_name": WEBHOOK_CONFIG,
        "days": 365,
        "renew_within_days": 30,
        "now": now,
    }
    arguments.update(overrides)
    return install.reconcile(cluster, **arguments)


def tls_secret_object(data: dict[str, str], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE, "resourceVersion": "7", **metadata},
        "type": "kubernetes.io/tls",
        "data": data,
    }


# --- needs_reissue


def test_a_valid_secret_needs_nothing() -> None:
    ca, serving = issue()
    assert (
        install.needs_reissue(secret_data(ca=ca, serving=serving), HOSTNAMES, NOW, MARGIN) is None
    )


def test_a_missing_secret_needs_a_certificate() -> None:
    assert install.needs_reissue(None, HOSTNAMES, NOW, MARGIN) == "the Secret does not exist"


def test_missing_keys_are_named() -> None:
    ca, serving = issue()
    data = secret_data(ca=ca, serving=serving)
    del data["tls.key"]
    data["ca.crt"] = ""
    assert install.needs_reissue(data, HOSTNAMES, NOW, MARGIN) == "the Secret lacks ca.crt, tls.key"


@pytest.mark.parametrize(
    ("key", "value"),
    [("tls.crt", "not base64!"), ("tls.crt", b64(b"not a certificate")), ("tls.key", b64(b"junk"))],
)
def test_unparsable_content_needs_a_certificate(key: str, value: str) -> None:
    ca, serving = issue()
    data = secret_data(ca=ca, serving=serving) | {key: value}
    reason = install.needs_reissue(data, HOSTNAMES, NOW, MARGIN)
    assert reason is not None and reason.startswith("the Secret does not parse")


def test_a_key_of_another_certificate_needs_a_certificate() -> None:
    ca, serving = issue()
    _, other = issue()
    data = secret_data(ca=ca, serving=serving) | {"tls.key": b64(other.key_pem)}
    assert (
        install.needs_reissue(data, HOSTNAMES, NOW, MARGIN) == "tls.key does not belong to tls.crt"
    )


def test_a_certificate_from_another_ca_needs_a_certificate() -> None:
    _, serving = issue()
    other_ca, _ = issue()
    data = secret_data(ca=other_ca, serving=serving)
    assert install.needs_reissue(data, HOSTNAMES, NOW, MARGIN) == "tls.crt was not issued by ca.crt"


def test_a_certificate_for_other_hostnames_needs_a_certificate() -> None:
    ca, serving = issue(hostnames=certs.service_hostnames("backend-injector", "elsewhere"))
    reason = install.needs_reissue(secret_data(ca=ca, serving=serving), HOSTNAMES, NOW, MARGIN)
    assert reason == (
        "tls.crt does not cover backend-injector.backend-injector, "
        "backend-injector.backend-injector.svc, backend-injector.backend-injector.svc.cluster.local"
    )


def test_a_certificate_expiring_within_the_margin_needs_renewal() -> None:
    ca, serving = issue(days=365)
    data = secret_data(ca=ca, serving=serving)
    just_inside = NOW + dt.timedelta(days=365 - 30)
    just_outside = just_inside - dt.timedelta(seconds=1)
    assert install.needs_reissue(data, HOSTNAMES, just_outside, MARGIN) is None
    reason = install.needs_reissue(data, HOSTNAMES, just_inside, MARGIN)
    assert reason is not None and "within 30 days" in reason


def test_a_ca_expiring_within_the_margin_needs_renewal_too() -> None:
    ca, serving = issue(days=365, ca_days=40)
    reason = install.needs_reissue(
        secret_data(ca=ca, serving=serving), HOSTNAMES, NOW + dt.timedelta(days=11), MARGIN
    )
    assert reason is not None and "within 30 days" in reason


def test_a_certificate_from_the_future_needs_a_certificate() -> None:
    ca, serving = issue(at=NOW + dt.timedelta(days=2))
    reason = install.needs_reissue(secret_data(ca=ca, serving=serving), HOSTNAMES, NOW, MARGIN)
    assert reason is not None and "not valid before" in reason


# --- ca_bundle_operations


def test_only_webhooks_that_lack_the_ca_are_patched_and_each_change_is_guarded() -> None:
    ca, _ = issue()
    configuration = webhook_configuration(b64(ca.cert_pem), None, b64(b"garbage"))
    operations = install.ca_bundle_operations(configuration, ca_pem=ca.cert_pem)
    assert [operation["path"] for operation in operations] == [
        "/webhooks/1/name",
        "/webhooks/1/clientConfig/caBundle",
        "/webhooks/2/name",
        "/webhooks/2/clientConfig/caBundle",
    ]
    assert operations[0] == {
        "op": "test",
        "path": "/webhooks/1/name",
        "value": "hook1.backend-injector.svc",
    }
    patched = jsonpatch.apply_patch(configuration, operations)
    assert all(bundle_certificates(patched, index) == [ca.cert_pem] for index in range(3))


def test_a_bundle_that_already_contains_the_ca_among_others_is_left_alone() -> None:
    ca, _ = issue()
    old, _ = issue()
    configuration = webhook_configuration(b64(ca.cert_pem + old.cert_pem))
    assert install.ca_bundle_operations(configuration, ca_pem=ca.cert_pem) == []


# --- reconcile


def test_first_run_issues_creates_the_secret_and_patches_the_bundle_second_run_does_nothing() -> (
    None
):
    cluster = FakeCluster(configuration=webhook_configuration())
    first = reconcile(cluster)
    assert (first.issued, first.secret_updated, first.webhook_patched) == (True, True, True)
    assert first.reason == "the Secret does not exist"
    assert first.not_after == NOW + dt.timedelta(days=365)
    assert cluster.writes == ["create", "patch"]
    assert cluster.secret is not None and cluster.configuration is not None
    assert cluster.secret["type"] == "kubernetes.io/tls"
    assert sorted(cluster.secret["data"]) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert bundle_certificates(cluster.configuration) == [unb64(cluster.secret["data"]["ca.crt"])]
    assert install.needs_reissue(cluster.secret["data"], HOSTNAMES, NOW, MARGIN) is None

    second = reconcile(cluster, now=NOW + dt.timedelta(days=1))
    assert (second.issued, second.secret_updated, second.webhook_patched) == (False, False, False)
    assert not second.changed
    assert second.summary().startswith("nothing to do")
    assert cluster.writes == ["create", "patch"]


def test_the_ca_lives_ten_times_longer_than_the_serving_certificate() -> None:
    cluster = FakeCluster(configuration=webhook_configuration())
    reconcile(cluster)
    assert cluster.secret is not None
    ca_not_after = certs.not_after(unb64(cluster.secret["data"]["ca.crt"]))
    assert ca_not_after == NOW + dt.timedelta(days=3650)


def test_renewal_reuses_a_healthy_ca_so_the_bundle_does_not_change() -> None:
    ca, serving = issue(days=365, ca_days=3650)
    cluster = FakeCluster(
        secret=tls_secret_object(secret_data(ca=ca, serving=serving), annotations={"team": "ml"}),
        configuration=webhook_configuration(b64(ca.cert_pem)),
    )
    later = NOW + dt.timedelta(days=340)
    result = reconcile(cluster, now=later)
    assert (result.issued, result.secret_updated, result.webhook_patched) == (True, True, False)
    assert result.not_after == later + dt.timedelta(days=365)
    assert cluster.writes == ["replace"]
    assert cluster.secret is not None
    assert unb64(cluster.secret["data"]["ca.crt"]) == ca.cert_pem
    assert unb64(cluster.secret["data"]["tls.crt"]) != serving.cert_pem
    replaced = cluster.replaced_bodies[0]["metadata"]
    assert replaced["resourceVersion"] == "7"  # optimistic concurrency
    assert replaced["annotations"] == {"team": "ml"}


def test_a_ca_that_cannot_outlive_the_next_certificate_is_replaced_and_kept_in_the_bundle() -> None:
    ca, serving = issue(days=365, ca_days=365)
    cluster = FakeCluster(
        secret=tls_secret_object(secret_data(ca=ca, serving=serving)),
        configuration=webhook_configuration(b64(ca.cert_pem)),
    )
    later = NOW + dt.timedelta(days=340)
    result = reconcile(cluster, now=later)
    assert (result.issued, result.webhook_patched) == (True, True)
    assert cluster.secret is not None and cluster.configuration is not None
    new_ca = unb64(cluster.secret["data"]["ca.crt"])
    assert new_ca != ca.cert_pem
    # The pods still serve the old certificate until they reload: trust both meanwhile.
    assert bundle_certificates(cluster.configuration) == [new_ca, ca.cert_pem]
    again = reconcile(cluster, now=later + dt.timedelta(minutes=5))
    assert not again.changed


def test_a_secret_without_the_ca_key_gets_a_new_ca() -> None:
    ca, serving = issue(hostnames=["someone-else"])
    cluster = FakeCluster(
        secret=tls_secret_object(secret_data(ca=ca, serving=serving, with_ca_key=False)),
        configuration=webhook_configuration(b64(ca.cert_pem)),
    )
    reconcile(cluster)
    assert cluster.secret is not None
    assert unb64(cluster.secret["data"]["ca.crt"]) != ca.cert_pem


def test_deleting_the_secret_rotates_the_ca_and_drops_the_old_one() -> None:
    cluster = FakeCluster(configuration=webhook_configuration())
    reconcile(cluster)
    assert cluster.secret is not None
    old_ca = unb64(cluster.secret["data"]["ca.crt"])
    cluster.secret = None
    reconcile(cluster)
    assert cluster.secret is not None and cluster.configuration is not None
    new_ca = unb64(cluster.secret["data"]["ca.crt"])
    assert new_ca != old_ca
    assert bundle_certificates(cluster.configuration) == [new_ca]


def test_a_missing_webhook_configuration_is_an_error_and_writes_nothing() -> None:
    cluster = FakeCluster()
    with pytest.raises(install.InstallError, match="install the webhook first"):
        reconcile(cluster)
    assert cluster.writes == []


def test_a_secret_of_another_type_is_an_error() -> None:
    secret = tls_secret_object({}) | {"type": "Opaque"}
    cluster = FakeCluster(secret=secret, configuration=webhook_configuration())
    with pytest.raises(install.InstallError, match="has type 'Opaque'"):
        reconcile(cluster)
    assert cluster.writes == []


def test_a_margin_as_long_as_the_validity_is_refused() -> None:
    with pytest.raises(install.InstallError, match="must be less than --days"):
        reconcile(FakeCluster(configuration=webhook_configuration()), days=30, renew_within_days=30)


# --- install() through the real client, against a fake apiserver


class FakeApiServer(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for `install`: Secrets and one webhook configuration."""

    secrets: dict[str, dict[str, Any]]
    configurations: dict[str, dict[str, Any]]
    requests: list[str]

    SECRET = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/?]+))?")
    CONFIGURATION = re.compile(
        r"^/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/(?P<name>[^/?]+)"
    )

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        if match := self.SECRET.match(self.path):
            self.reply_with(self.secrets.get(f"{match['ns']}/{match['name']}"))
        elif match := self.CONFIGURATION.match(self.path):
            self.reply_with(self.configurations.get(match["name"]))
        else:
            self.reply(404, {"kind": "Status", "code": 404})

    def do_POST(self) -> None:
        self.requests.append(f"POST {self.path}")
        match = self.SECRET.match(self.path)
        assert match is not None
        body = self.body()
        self.secrets[f"{match['ns']}/{body['metadata']['name']}"] = body
        self.reply(201, body)

    def do_PUT(self) -> None:
        self.requests.append(f"PUT {self.path}")
        match = self.SECRET.match(self.path)
        assert match is not None
        self.secrets[f"{match['ns']}/{match['name']}"] = self.body()
        self.reply(200, self.body_cache)

    def do_PATCH(self) -> None:
        self.requests.append(f"PATCH {self.path} {self.headers['Content-Type']}")
        match = self.CONFIGURATION.match(self.path)
        assert match is not None
        assert self.headers["Content-Type"] == "application/json-patch+json"
        patched = jsonpatch.apply_patch(self.configurations[match["name"]], self.body())
        self.configurations[match["name"]] = patched
        self.reply(200, patched)

    def body(self) -> Any:
        if not hasattr(self, "body_cache"):
            self.body_cache = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        return self.body_cache

    def reply_with(self, found: dict[str, Any] | None) -> None:
        if found is None:
            self.reply(
                404, {"kind": "Status", "apiVersion": "v1", "code": 404, "reason": "NotFound"}
            )
        else:
            self.reply(200, found)

    def reply(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def fake_apiserver(tmp_path: Path) -> Iterator[tuple[type[FakeApiServer], Path]]:
    handler = type(
        "Handler",
        (FakeApiServer,),
        {
            "secrets": {},
            "configurations": {WEBHOOK_CONFIG: webhook_configuration()},
            "requests": [],
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "fake", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    try:
        yield handler, kubeconfig
    finally:
        server.shutdown()
        server.server_close()


def test_install_through_the_kubernetes_client_is_idempotent(
    fake_apiserver: tuple[type[FakeApiServer], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, kubeconfig = fake_apiserver
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    arguments: dict[str, Any] = {
        "namespace": NAMESPACE,
        "service": SERVICE,
        "secret_name": SECRET,
        "webhook_config_name": WEBHOOK_CONFIG,
        "days": 365,
        "renew_within_days": 30,
        "kubeconfig": str(kubeconfig),
        "context": "fake",
    }
    first = install.install(**arguments)
    assert (first.issued, first.secret_updated, first.webhook_patched) == (True, True, True)
    assert [request.split(" ")[0] for request in handler.requests] == [
        "GET",
        "GET",
        "POST",
        "PATCH",
    ]
    assert handler.requests[-1].endswith("application/json-patch+json")
    secret = handler.secrets[f"{NAMESPACE}/{SECRET}"]
    assert secret["type"] == "kubernetes.io/tls"
    assert bundle_certificates(handler.configurations[WEBHOOK_CONFIG]) == [
        unb64(secret["data"]["ca.crt"])
    ]

    handler.requests.clear()
    second = install.install(**arguments)
    assert not second.changed
    assert [request.split(" ")[0] for request in handler.requests] == ["GET", "GET"]


def test_install_reports_missing_rights_as_an_install_error(
    fake_apiserver: tuple[type[FakeApiServer], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, kubeconfig = fake_apiserver

    def forbidden(self: FakeApiServer) -> None:
        self.reply(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})

    monkeypatch.setattr(handler, "do_POST", forbidden)
    with pytest.raises(cluster.ClusterError, match=r"cannot create Secret .*: forbidden"):
        install.install(
            namespace=NAMESPACE,
            service=SERVICE,
            secret_name=SECRET,
            webhook_config_name=WEBHOOK_CONFIG,
            days=365,
            renew_within_days=30,
            kubeconfig=str(kubeconfig),
        )


def test_an_unusable_kubeconfig_is_an_install_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    with pytest.raises(cluster.ClusterError, match=r"kubeconfig .*missing"):
        cluster.connect(kubeconfig=str(kubeconfig), context="missing")


class WarningApiServer(BaseHTTPRequestHandler):
    """Answers a dry-run pod create as the apiserver does: the object and Warning headers."""

    paths: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.paths.append(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Warning", '299 - "backend-injector: removed init containers '
                                    'wait-for-mlflow"')
        self.send_header("Warning", '299 - "a \\"quoted\\" word"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_adapter_reads_admission_warnings_of_a_dry_run(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WarningApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "c",
    }))
    try:
        with cluster.connected(kubeconfig=str(kubeconfig)) as adapter:
            assert adapter.namespace == "ml"
            created = adapter.create("/api/v1/namespaces/ml/pods",
                                     {"kind": "Pod", "metadata": {"generateName": "p-"}},
                                     dry_run=True)
    finally:
        server.shutdown()
        server.server_close()
    assert WarningApiServer.paths == ["/api/v1/namespaces/ml/pods?dryRun=All"]
    assert created.object == {"kind": "Pod", "metadata": {"generateName": "p-"}}
    assert created.warnings == ["backend-injector: removed init containers wait-for-mlflow",
                                'a "quoted" word']


def test_a_secret_replaced_by_hand_keeps_the_served_ca_in_the_bundle() -> None:
    cluster = FakeCluster(configuration=webhook_configuration())
    reconcile(cluster)
    assert cluster.secret is not None and cluster.configuration is not None
    served_ca = unb64(cluster.secret["data"]["ca.crt"])
    # A person makes a new CA and certificate elsewhere and puts them in the Secret.
    ca = certs.build_ca(common_name="by hand", days=3650, now=NOW)
    serving = certs.build_serving_certificate(ca=ca, hostnames=HOSTNAMES, days=365, now=NOW)
    cluster.secret = install.tls_secret(namespace=NAMESPACE, name=SECRET, ca=ca, serving=serving)
    result = reconcile(cluster)
    assert not result.issued and result.webhook_patched
    assert bundle_certificates(cluster.configuration) == [ca.cert_pem, served_ca]
