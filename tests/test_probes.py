"""How init container programs are read and retargeted."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from webhook.probes import ProgramReader

READER = ProgramReader(make_settings().services)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


@pytest.mark.parametrize(
    ("argv", "managed"),
    [
        (sh("until nc -z mlflow 5000; do sleep 2; done"), ["mlflow"]),
        (sh("until nc -z fastapi-app 8000; do echo waiting; sleep 2; done"), ["fastapi"]),
        (sh("while ! nc -z -w 1 minio.flts 9000; do sleep 1; done"), ["minio"]),
        (sh("until wget -q -O- http://mlflow.flts.svc:5000/health; do sleep 1; done"), ["mlflow"]),
        (sh("until curl -sf http://mlflow.flts.svc.cluster.local:5000/; do sleep 1; done"),
         ["mlflow"]),
        (["bash", "-c", "until (echo > /dev/tcp/postgres/5432) 2>/dev/null; do sleep 1; done"],
         ["postgres"]),
        (sh("until pg_isready -h postgres -p 5432; do sleep 1; done"), ["postgres"]),
        (sh("until nslookup mlflow; do sleep 2; done"), ["mlflow"]),
        (["nc", "-z", "mlflow", "5000"], ["mlflow"]),
        (sh("timeout 60 sh -c 'until nc -z mlflow 5000; do sleep 1; done'"), ["mlflow"]),
        (["sh", "-ec", "for i in $(seq 1 30); do nc -z fastapi 8000 && exit 0; sleep 1; done; "
          "exit 1"], ["fastapi"]),
    ],
)
def test_pure_waiters_are_recognised(argv: list[str], managed: list[str]) -> None:
    reading = READER.read(argv)
    assert reading.managed == managed
    assert reading.only_waits_for_managed


@pytest.mark.parametrize(
    "argv",
    [
        sh("until nc -z kafka 9092; do sleep 2; done"),
        sh("until nc -z mlflow-db 5432; do sleep 2; done"),  # a different host
        sh("until nc -z mlflowx 5000; do sleep 2; done"),
        sh("until nc -z mlflow.example.com 5000; do sleep 2; done"),  # not a Service name
        sh("python migrate.py --tracking-uri http://mlflow:5000"),  # mentions, never waits
        sh("echo mlflow is external now"),
        ["alembic", "upgrade", "head"],
        [],
    ],
)
def test_programs_that_do_not_wait_for_a_managed_service(argv: list[str]) -> None:
    assert not READER.read(argv).only_waits_for_managed


def test_waiting_and_working_is_not_a_pure_wait() -> None:
    reading = READER.read(sh("until nc -z postgres 5432; do sleep 1; done; alembic upgrade head"))
    assert reading.managed == ["postgres"]
    assert reading.does_work
    assert not reading.only_waits_for_managed


def test_waiting_for_kafka_too_is_not_a_pure_wait() -> None:
    reading = READER.read(sh("until nc -z mlflow 5000 && nc -z kafka 9092; do sleep 1; done"))
    assert reading.managed == ["mlflow"]
    assert reading.probes_other_hosts


def test_dev_tcp_to_kafka_counts_as_another_host() -> None:
    reading = READER.read(["bash", "-c", "until echo > /dev/tcp/kafka/9092; do sleep 1; done"])
    assert reading.managed == []
    assert reading.probes_other_hosts


def test_probe_of_the_external_address_is_noticed() -> None:
    reading = READER.read(sh("until nc -z host.docker.internal 5000; do sleep 2; done"))
    assert reading.managed == []
    assert reading.probes_external


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (sh("until nc -z mlflow 5000; do sleep 2; done"),
         sh("until nc -z host.docker.internal 5000; do sleep 2; done")),
        (sh("until wget -q -O- http://mlflow.flts.svc:5000/health; do sleep 1; done"),
         sh("until wget -q -O- http://host.docker.internal:5000/health; do sleep 1; done")),
        (sh("until curl -sf http://fastapi-app/healthz; do sleep 1; done"),
         sh("until curl -sf http://host.docker.internal:8000/healthz; do sleep 1; done")),
        (["bash", "-c", "until echo > /dev/tcp/minio/9000; do sleep 1; done"],
         ["bash", "-c", "until echo > /dev/tcp/host.docker.internal/9000; do sleep 1; done"]),
        (["nc", "-z", "fastapi-app", "80"], ["nc", "-z", "host.docker.internal", "8000"]),
        (sh("until nslookup mlflow.flts.svc.cluster.local; do sleep 2; done"),
         sh("until nslookup host.docker.internal; do sleep 2; done")),
    ],
)
def test_retarget_points_probes_at_the_external_address(
    argv: list[str], expected: list[str]
) -> None:
    assert READER.retarget(argv) == expected


def test_retarget_leaves_work_and_messages_alone() -> None:
    script = "echo waiting for mlflow; until nc -z mlflow 5000; do sleep 1; done; " \
             "python migrate.py --uri http://mlflow:5000"
    assert READER.retarget(sh(script)) == sh(
        "echo waiting for mlflow; until nc -z host.docker.internal 5000; do sleep 1; done; "
        "python migrate.py --uri http://mlflow:5000"
    )


def test_retarget_keeps_hosts_without_an_external_address() -> None:
    assert READER.retarget(sh("until pg_isready -h postgres; do sleep 1; done")) is None


def test_retarget_of_a_retargeted_program_changes_nothing() -> None:
    once = READER.retarget(sh("until nc -z mlflow 5000; do sleep 2; done"))
    assert once is not None
    assert READER.retarget(once) is None


def test_script_in_args_with_shell_in_command() -> None:
    argv = ["/bin/sh", "-c", "until nc -z mlflow 5000; do sleep 2; done"]
    assert READER.read(argv).only_waits_for_managed
    split = ["/bin/sh", "-c"] + ["until nc -z mlflow 5000; do sleep 2; done"]
    assert READER.retarget(split) == [
        "/bin/sh", "-c", "until nc -z host.docker.internal 5000; do sleep 2; done"
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (sh("until curl -sf http://mlflow:${MLFLOW_PORT}/health; do sleep 1; done"),
         sh("until curl -sf http://host.docker.internal:5000/health; do sleep 1; done")),
        (["bash", "-c", "until echo > /dev/tcp/minio/$MINIO_PORT; do sleep 1; done"],
         ["bash", "-c", "until echo > /dev/tcp/host.docker.internal/9000; do sleep 1; done"]),
    ],
)
def test_a_port_given_as_a_variable_is_replaced_too(argv: list[str], expected: list[str]) -> None:
    assert READER.retarget(argv) == expected


@pytest.mark.parametrize(
    "script",
    [
        "until curl -sf http://mlflow:${MLFLOW_PORT}/health; do sleep 1; done",
        "until curl -sf '\"mlflow\":5000'; do sleep 1; done",
        "until nc -z mlflow._x 5000; do sleep 1; done",
    ],
)
def test_a_retargeted_probe_is_recognised_as_external(script: str) -> None:
    once = READER.retarget(sh(script))
    assert once is not None
    reading = READER.read(once)
    assert reading.probes_external
    assert reading.managed == []


def test_a_word_naming_two_services_counts_both() -> None:
    reading = READER.read(["wget", "-q", "http://mlflow:5000/ready?db=postgres"])
    assert reading.managed == ["mlflow", "postgres"]
