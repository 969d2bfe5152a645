"""Managed hosts in probes and env values, read through the URL reader."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from webhook.rules.hosts import ManagedHosts

HOSTS = ManagedHosts(make_settings().services)


@pytest.mark.parametrize(
    ("probe", "retargeted"),
    [
        # A path segment that spells a host stays: only the authority is retargeted.
        ("until wget -qO- http://minio:9000/minio/health/live; do sleep 2; done",
         "until wget -qO- http://host.docker.internal:9000/minio/health/live; do sleep 2; done"),
        ("until curl -sf minio.flts:9000/minio/health/live; do sleep 1; done",
         "until curl -sf host.docker.internal:9000/minio/health/live; do sleep 1; done"),
        ("wget -q http://kafka:9092/mlflow?next=fastapi#minio",
         "wget -q http://kafka:9092/mlflow?next=fastapi#minio"),
        ("curl -sf 'http://fastapi-app/healthz?db=postgres'",
         "curl -sf 'http://host.docker.internal:8000/healthz?db=postgres'"),
        # A user name is not a host.
        ("curl -sf http://mlflow@minio:9000/x", "curl -sf http://mlflow@host.docker.internal:9000/x"),
        # A bucket is not a host, nor anything in a URL of an unknown scheme.
        ("aws s3 ls s3://mlflow/artifacts --endpoint-url http://minio:9000",
         "aws s3 ls s3://mlflow/artifacts --endpoint-url http://host.docker.internal:9000"),
        ("dockerize -wait unix://mlflow -wait PLAINTEXT://minio:9000",
         "dockerize -wait unix://mlflow -wait PLAINTEXT://minio:9000"),
        # Bare hosts are hosts, with their ports.
        ("until nc -z mlflow 5000; do sleep 2; done",
         "until nc -z host.docker.internal 5000; do sleep 2; done"),
        ("nc -z mlflow:5000 && echo > /dev/tcp/minio/9000",
         "nc -z host.docker.internal:5000 && echo > /dev/tcp/host.docker.internal/9000"),
        ("dockerize -wait tcp://mlflow -wait=http://fastapi:80/x",
         "dockerize -wait tcp://host.docker.internal:5000 -wait=http://host.docker.internal:8000/x"),
    ],
)
def test_probes_are_retargeted_at_their_authority_only(probe: str, retargeted: str) -> None:
    assert HOSTS.retarget_probe(probe, probe.split()[0]) == retargeted
    assert HOSTS.retarget_probe(retargeted, probe.split()[0]) == retargeted


@pytest.mark.parametrize(
    ("word", "services"),
    [
        ("http://minio:9000/minio/health/live", ["minio"]),
        ("s3://mlflow/x", []),
        ("gs://mlflow/x", []),
        ("http://mlflow@minio:9000/postgres?fastapi", ["minio"]),
        ("'tcp://mlflow:5000'", ["mlflow"]),
        ("mlflow:5000,postgres:5432", ["mlflow", "postgres"]),
        ("--tracking-uri=http://mlflow:5000", ["mlflow"]),
        ("/dev/tcp/minio/9000", ["minio"]),
        ("mlflow", ["mlflow"]),
        ("http://host.docker.internal:9000/minio/health/live", []),
    ],
)
def test_a_word_names_hosts_not_paths(word: str, services: list[str]) -> None:
    assert [s.name for s in HOSTS.services_in(word)] == services


@pytest.mark.parametrize(
    ("value", "retargeted", "unreachable"),
    [
        ("s3://mlflow/artifacts", None, []),
        ("s3://mlflow", None, []),
        ("gs://mlflow/models", None, []),
        ("file:///mlflow/mlruns", None, []),
        ("wasbs://mlflow@minio.blob.core.windows.net/x", None, []),
        ("mongodb+srv://mlflow/x", None, []),
        ("PLAINTEXT://mlflow:5000", None, []),
        ("http://minio:9000/minio/health/live", "http://host.docker.internal:9000/minio/health/live",
         []),
        ("HTTP://mlflow:5000", "HTTP://host.docker.internal:5000", []),
        ("mlflow-artifacts://mlflow:5000/artifacts",
         "mlflow-artifacts://host.docker.internal:5000/artifacts", []),
        ("hdfs://mlflow/data", "hdfs://host.docker.internal:5000/data", []),
        ("postgresql://mlflow:secret@postgres:5432/db", None, ["postgres"]),
        ("postgresql+psycopg2://minio:pw@postgres/mlflow", None, ["postgres"]),
        ("jdbc:postgresql://postgres:5432/mlflow", None, ["postgres"]),
        ("http://es-0:9200/,http://fastapi-app/x,s3://minio/y",
         "http://es-0:9200/,http://host.docker.internal:8000/x,s3://minio/y", []),
        ("mlflow:${PORT}/api", "host.docker.internal:5000/api", []),
    ],
)
def test_env_values_are_retargeted_at_their_authority_only(
    value: str, retargeted: str | None, unreachable: list[str]
) -> None:
    assert HOSTS.retarget_value(value) == (retargeted, unreachable)
    if retargeted is not None:
        assert HOSTS.retarget_value(retargeted) == (None, [])


def test_a_host_anywhere_still_ties_a_container_to_the_backend() -> None:
    # Which containers use the backend is a question of mentions, not of addresses.
    assert HOSTS.names_managed_host("s3://mlflow/artifacts")
    assert not HOSTS.names_managed_host("s3://models/mlflow-db")
