"""`backend-injector dev` without a cluster: the URL, the registration, and its lifecycle
against an in-memory cluster, and how one left behind is told live or stale. The real thing
runs in tests/e2e/test_dev.py."""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.memory_cluster import MemoryCluster
from webhook import certs
from webhook.cluster import dev
from webhook.cluster.client import webhook_configuration_path
from webhook.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "manifests" / "base" / "mutatingwebhookconfiguration.yaml"


DEV_PATH = webhook_configuration_path(dev.DEV_CONFIGURATION)


def test_the_default_url_is_docker_desktops_host_and_listens_on_loopback_only() -> None:
    # Docker Desktop delivers host.docker.internal's connections to the host's loopback.
    target = dev.parse_url(dev.DEFAULT_URL)
    assert (target.host, target.port, target.listen_host) == (
        "host.docker.internal", 8443, "127.0.0.1")


@pytest.mark.parametrize(("url", "listen"), [
    ("https://192.168.49.1:8443/mutate", "192.168.49.1"),  # the address itself, no wider
    ("https://[fd00::1]:8443/mutate", "fd00::1"),
    ("https://HOST.DOCKER.INTERNAL:8443/mutate", "127.0.0.1"),
    ("https://host.minikube.internal:8443/mutate", "0.0.0.0"),  # resolved in the VM only
])
def test_the_listen_address_is_the_narrowest_the_cluster_reaches(url: str, listen: str) -> None:
    assert dev.parse_url(url).listen_host == listen


def test_a_loopback_url_is_listened_on_at_loopback_only() -> None:
    target = dev.parse_url("https://127.0.0.1:18443/mutate")
    assert (target.host, target.port, target.listen_host) == ("127.0.0.1", 18443, "127.0.0.1")
    assert dev.parse_url("https://127.0.0.1:1/m", listen_host="0.0.0.0").listen_host == "0.0.0.0"


@pytest.mark.parametrize("url", ["http://host.docker.internal:8443/mutate", "https:///mutate",
                                 "https://h:8443/mutate?x=1", "https://h:port/mutate"])
def test_urls_the_apiserver_would_refuse_are_refused(url: str) -> None:
    with pytest.raises(dev.DevError, match="--url"):
        dev.parse_url(url)


def test_the_registration_fails_open_by_url_with_the_deployed_selectors() -> None:
    target = dev.parse_url(dev.DEFAULT_URL)
    body = dev.registration(target, b"CA PEM")
    (webhook,) = body["webhooks"]
    assert body["metadata"]["name"] == "backend-injector-dev"
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["clientConfig"] == {"url": dev.DEFAULT_URL,
                                       "caBundle": base64.b64encode(b"CA PEM").decode()}
    deployed = yaml.safe_load(MANIFEST.read_text())
    (deployed_webhook,) = deployed["webhooks"]
    assert deployed["metadata"]["name"] != body["metadata"]["name"]
    assert deployed_webhook["name"] != webhook["name"]
    for key in ("namespaceSelector", "objectSelector", "rules", "sideEffects",
                "reinvocationPolicy", "matchPolicy", "admissionReviewVersions"):
        assert webhook[key] == deployed_webhook[key], key
    annotations = body["metadata"]["annotations"]
    assert annotations[dev.PID_ANNOTATION] == str(os.getpid())
    assert annotations[dev.HOST_ANNOTATION] == socket.gethostname()


def test_register_creates_and_unregister_deletes_its_own() -> None:
    cluster = MemoryCluster()
    body = dev.registration(dev.parse_url(dev.DEFAULT_URL), b"ca")
    assert dev.register(cluster, body) is False
    assert DEV_PATH in cluster.objects
    assert dev.unregister(cluster) is True
    assert DEV_PATH not in cluster.objects
    assert dev.unregister(cluster) is False


def test_a_stale_registration_is_replaced_not_duplicated() -> None:
    cluster = MemoryCluster()
    stale = dev.registration(dev.parse_url("https://127.0.0.1:9/mutate"), b"old")
    stale["metadata"]["annotations"][dev.PID_ANNOTATION] = "1"
    cluster.create(webhook_configuration_path(), stale)
    fresh = dev.registration(dev.parse_url(dev.DEFAULT_URL), b"new")
    assert dev.register(cluster, fresh) is True
    stored = cluster.objects[DEV_PATH]
    assert stored["webhooks"][0]["clientConfig"]["url"] == dev.DEFAULT_URL
    assert stored["metadata"]["annotations"][dev.PID_ANNOTATION] == str(os.getpid())


def test_a_registration_taken_over_by_another_process_is_left_alone() -> None:
    cluster = MemoryCluster()
    body = dev.registration(dev.parse_url(dev.DEFAULT_URL), b"ca")
    body["metadata"]["annotations"][dev.PID_ANNOTATION] = str(os.getpid() + 1)
    cluster.create(webhook_configuration_path(), body)
    assert dev.unregister(cluster) is False
    assert DEV_PATH in cluster.objects


def test_the_dev_certificate_is_for_the_url_host_and_signed_by_the_registered_ca(
    tmp_path: Path,
) -> None:
    target = dev.parse_url(dev.DEFAULT_URL)
    with dev.dev_certificates(target, tmp_path) as paths:
        problem = certs.serving_pair_problem(
            ca_pem=paths.ca_cert.read_bytes(), cert_pem=paths.cert.read_bytes(),
            key_pem=paths.key.read_bytes(), hostnames=["host.docker.internal", "127.0.0.1"],
            now=dt.datetime.now(dt.UTC), margin=dt.timedelta(days=1),
        )
    assert problem is None


def test_a_registration_reads_back_who_made_it_and_where() -> None:
    body = dev.registration(dev.parse_url(dev.DEFAULT_URL), b"ca",
                            now=dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC))
    read = dev.DevRegistration.read(body)
    assert read.url == dev.DEFAULT_URL
    assert read.made_by_this_process()
    assert read.owner == (f"pid {os.getpid()} on {socket.gethostname()}, "
                          "since 2026-01-05T09:00:00+00:00")
    assert dev.DevRegistration.read({}).owner == "pid ? on ?, since ?"


def registration_at(url: str, *, pid: str, host: str) -> dev.DevRegistration:
    return dev.DevRegistration(url=url, host=host, pid=pid, started="2026-01-05T09:00:00+00:00")


# Never resolves (RFC 2606), so only the process can tell whether dev still runs.
UNRESOLVABLE_URL = "https://dev-host.invalid:8443/mutate"
NO_SUCH_PID = "99999999"  # above any pid_max


def test_an_unresolvable_registration_is_judged_by_its_process_on_this_machine() -> None:
    here = socket.gethostname()
    assert registration_at(UNRESOLVABLE_URL, pid=str(os.getpid()), host=here
                           ).liveness() is dev.Liveness.LIVE
    assert registration_at(UNRESOLVABLE_URL, pid=NO_SUCH_PID, host=here
                           ).liveness() is dev.Liveness.STALE
    assert registration_at(UNRESOLVABLE_URL, pid="", host=here).liveness() is dev.Liveness.STALE
    assert registration_at(UNRESOLVABLE_URL, pid=str(os.getpid()), host=here + "-elsewhere"
                           ).liveness() is dev.Liveness.UNKNOWN


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[int]:
    """A loopback port that completes one TLS handshake with a dev certificate."""
    with dev.dev_certificates(dev.parse_url("https://127.0.0.1:1/mutate"), tmp_path) as paths:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(paths.cert, paths.key)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer_once() -> None:
            connection, _ = server.accept()
            with context.wrap_socket(connection, server_side=True):
                pass

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        yield int(server.getsockname()[1])
        thread.join(timeout=5)


def test_a_registration_whose_url_answers_tls_is_live(tls_port: int) -> None:
    url = f"https://127.0.0.1:{tls_port}/mutate"
    assert registration_at(url, pid=NO_SUCH_PID, host="elsewhere").liveness() is dev.Liveness.LIVE


def test_a_registration_whose_url_nothing_answers_is_stale() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = int(unused.getsockname()[1])
    url = f"https://127.0.0.1:{port}/mutate"
    assert registration_at(url, pid=str(os.getpid()), host=socket.gethostname()
                           ).liveness() is dev.Liveness.STALE


@pytest.mark.parametrize(("platform", "url"), [
    ("docker-desktop", "https://host.docker.internal:8443/mutate"),
    ("minikube", "https://host.minikube.internal:8443/mutate"),
    ("k3d", "https://host.k3d.internal:8443/mutate"),
])
def test_dev_registers_at_the_platforms_name_for_this_machine(platform: str, url: str) -> None:
    from webhook.cli import _dev_url

    settings = load_settings(environ={}, overrides={"platform": platform})
    assert _dev_url(settings) == url


def test_on_kind_dev_asks_for_the_url() -> None:
    from webhook.cli import _dev_url
    from webhook.settings import ConfigError

    settings = load_settings(environ={}, overrides={"platform": "kind",
                                                    "external_host": "172.18.0.1"})
    with pytest.raises(ConfigError, match="give --url"):
        _dev_url(settings)
