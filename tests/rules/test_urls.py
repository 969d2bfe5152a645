"""The URL reader: what in an address is a host, and that retargeting touches nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from webhook.rules.hosts import ManagedHosts
from webhook.rules.urls import URL_IN_TEXT, connects, read_address, value_addresses

SERVICES = make_settings().services
HOSTS = ManagedHosts(SERVICES)
EXTERNAL = {s.name: str(s.external) for s in SERVICES if s.external is not None}
# Schemes that name a bucket, a container or a path, never a host to connect to.
STORAGE_SCHEMES = ("s3", "s3a", "gs", "gcs", "wasbs", "abfss", "file", "hf", "dbfs")


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port"),
    [
        ("http://minio:9000/minio/health/live", "http", "minio", "9000"),
        ("s3://mlflow/artifacts", "s3", "mlflow", None),
        ("postgresql://mlflow:secret@postgres:5432/db", "postgresql", "postgres", "5432"),
        ("postgresql://u:p@ss@postgres/db", "postgresql", "postgres", None),
        ("jdbc:postgresql://postgres:5432/db", "postgresql", "postgres", "5432"),
        ("mlflow:5000", None, "mlflow", "5000"),
        ("mlflow:5000/api?x=1", None, "mlflow", "5000"),
        ("http://mlflow:${MLFLOW_PORT}/health", "http", "mlflow", "${MLFLOW_PORT}"),
        ("http://mlflow.${NS}.svc:5000", "http", "mlflow.${NS}.svc", "5000"),
    ],
)
def test_an_address_is_read_into_scheme_host_and_port(
    text: str, scheme: str | None, host: str, port: str | None
) -> None:
    address = read_address(text)
    assert address is not None
    assert (address.scheme, address.host, address.port) == (scheme, host, port)
    assert text[address.start : address.end] == host + (f":{port}" if port else "")


@pytest.mark.parametrize(
    "text",
    ["http://mlflow:abc/x", "http://[::1]:5000/", "mlflow:123456", "see mlflow", "mlflow@", ""],
)
def test_what_is_not_an_address_is_none(text: str) -> None:
    assert read_address(text) is None


@pytest.mark.parametrize(
    ("scheme", "connecting"),
    [
        ("http", True), ("HTTPS", True), ("tcp", True), ("hdfs", True), ("grpc", True),
        ("postgresql+psycopg2", True), ("mysql+pymysql", True), ("rediss", True),
        ("mlflow-artifacts", True),
        *((scheme, False) for scheme in STORAGE_SCHEMES),
        ("mongodb+srv", False), ("unix", False), ("PLAINTEXT", False), ("anything", False),
    ],
)
def test_only_schemes_that_connect_name_a_host(scheme: str, connecting: bool) -> None:
    assert connects(scheme) is connecting
    address = read_address(f"{scheme}://mlflow:5000/x")
    assert address is not None and address.names_host is connecting


def test_a_host_without_scheme_is_one_only_with_a_port() -> None:
    found = [(a.host, a.port) for a in value_addresses("kafka-0:9092,kafka-1:9092,mlflow")]
    assert found == [("kafka-0", "9092"), ("kafka-1", "9092")]


def test_each_item_of_a_value_is_read_from_its_start() -> None:
    value = "s3://mlflow/x,http://u@minio/bucket?x=mlflow,jdbc:mysql://mysql/db,x=mlflow:5000"
    found = [(value[a.start : a.end], a.scheme) for a in value_addresses(value)]
    assert found == [("minio", "http"), ("mysql", "mysql")]


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("wget -qO- http://minio:9000/minio/health/live ", ["http://minio:9000/minio/health/live"]),
        ("curl -sf minio.flts:9000/minio/health/live", ["minio.flts:9000/minio/health/live"]),
        ("dockerize -wait=tcp://mlflow:5000 -wait 'http://x/y' z", ["tcp://mlflow:5000",
                                                                    "http://x/y"]),
        ("wget http://mlflow:5000;echo", ["http://mlflow:5000"]),
        ("a http://x/p,mlflow:5000/q", ["http://x/p", "mlflow:5000/q"]),
        # `xhttp` is a scheme of its own, unknown.
        ("xhttp://mlflow", ["xhttp://mlflow"]),
        # Not URLs: inside a word, a bare host:port, bash's /dev/tcp.
        ("_http://mlflow nc -z mlflow:5000 /dev/tcp/minio/9000", []),
    ],
)
def test_urls_in_a_probe_s_text(text: str, urls: list[str]) -> None:
    assert [m.group() for m in re.finditer(URL_IN_TEXT, text)] == urls


# --- property: retargeting a URL changes nothing but its authority ---------------------------


@dataclass(frozen=True)
class GeneratedUrl:
    text: str
    authority: tuple[int, int]  # the span of host and port
    scheme: str
    host: str
    port: str


MANAGED_HOSTS = ("mlflow", "mlflow.flts", "minio.flts.svc.cluster.local", "fastapi-app", "fastapi",
                 "postgres")
OTHER_HOSTS = ("kafka", "mlflow-db", "mlflow.example.com", "xminio", "10.0.0.7")
NAMES = MANAGED_HOSTS + OTHER_HOSTS
# What a path, query or fragment may hold: anything but white space, quotes and commas, which
# end an address; managed names included.
PATH_PARTS = st.lists(st.sampled_from([*NAMES, "/", "?", "#", "&", "=", ":5000", "@", ".", "-",
                                       "health", "%2F", "$x", ";", "+", "~"]),
                      max_size=8).map("".join)


@st.composite
def urls(draw: st.DrawFn) -> GeneratedUrl:
    scheme = draw(st.sampled_from(["http", "HTTPS", "tcp", "postgresql+psycopg2", "jdbc:mysql",
                                   "mlflow-artifacts", *STORAGE_SCHEMES, "mongodb+srv",
                                   "PLAINTEXT", "unknown"]))
    user = draw(st.sampled_from(["", "mlflow@", "minio:secret@", "u:p@ss@", "fastapi-app:@"]))
    host = draw(st.sampled_from(NAMES))
    port = draw(st.sampled_from(["", ":5000", ":80", ":${PORT}"]))
    path = draw(st.one_of(st.just(""), PATH_PARTS.map(lambda p: "/" + p),
                          PATH_PARTS.map(lambda p: "?" + p), PATH_PARTS.map(lambda p: "#" + p)))
    start = len(scheme) + len("://") + len(user)
    end = start + len(host) + len(port)
    return GeneratedUrl(f"{scheme}://{user}{host}{port}{path}", (start, end),
                        scheme.removeprefix("jdbc:"), host, port.removeprefix(":"))


def service_of(host: str) -> str | None:
    if host not in MANAGED_HOSTS:
        return None
    return next(s.name for s in SERVICES if host.split(".")[0] in s.hosts)


def expected(url: GeneratedUrl) -> str:
    """What the URL becomes, written from its parts: the authority of a connecting scheme
    naming a managed service with an external address is that address, all else as it was."""
    start, end = url.authority
    service = service_of(url.host)
    if not connects(url.scheme) or service not in EXTERNAL:
        return url.text
    return url.text[:start] + EXTERNAL[service] + url.text[end:]


@settings(max_examples=500, deadline=None)
@given(urls())
def test_retargeting_a_url_changes_nothing_but_its_authority(url: GeneratedUrl) -> None:
    start, end = url.authority
    for retargeted in (HOSTS.retarget_value(url.text)[0] or url.text,
                       HOSTS.retarget_text(url.text)):
        assert retargeted.startswith(url.text[:start])
        assert retargeted.endswith(url.text[end:])
        assert retargeted == expected(url)
        if url.scheme in STORAGE_SCHEMES:
            assert retargeted == url.text
    # In a probe too, and a second pass has nothing left to do.
    probe = f"until wget -qO- '{url.text}'; do sleep 1; done"
    once = HOSTS.retarget_probe(probe, "wget")
    assert once == f"until wget -qO- '{expected(url)}'; do sleep 1; done"
    assert HOSTS.retarget_probe(once, "wget") == once


@settings(max_examples=300, deadline=None)
@given(urls())
def test_a_url_names_the_service_of_its_authority_only(url: GeneratedUrl) -> None:
    service = service_of(url.host) if connects(url.scheme) else None
    assert [s.name for s in HOSTS.services_in(url.text)] == ([service] if service else [])
