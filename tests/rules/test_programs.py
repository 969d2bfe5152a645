"""How init container programs are read and retargeted."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from webhook.rules.programs import MAX_PROGRAM_CHARS, ProgramReader

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


def test_retarget_moves_the_urls_of_work_and_leaves_messages_alone() -> None:
    script = "echo waiting for mlflow; until nc -z mlflow 5000; do sleep 1; done; " \
             "python migrate.py --uri http://mlflow:5000 --bucket mlflow"
    assert READER.retarget(sh(script)) == sh(
        "echo waiting for mlflow; until nc -z host.docker.internal 5000; do sleep 1; done; "
        "python migrate.py --uri http://host.docker.internal:5000 --bucket mlflow"
    )


def test_work_against_a_service_without_an_external_address_is_left_and_named() -> None:
    argv = sh("psql postgresql://app@postgres:5432/app -c 'CREATE TABLE runs (id int)'")
    assert READER.retarget(argv) is None
    assert READER.unreachable_in_work(argv) == ["postgres"]


def test_mc_alias_follows_minio_and_the_bucket_named_like_a_service_stays() -> None:
    argv = sh("mc alias set local http://minio:9000 \"$U\" \"$P\" && mc mb local/mlflow")
    assert READER.retarget(argv) == sh(
        "mc alias set local http://host.docker.internal:9000 \"$U\" \"$P\" && mc mb local/mlflow")


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
    reading = READER.read(["wait-for", "mlflow:5000,postgres:5432"])
    assert reading.managed == ["mlflow", "postgres"]
    # A URL names its authority only: the query's `postgres` is not a host.
    reading = READER.read(["wget", "-q", "http://mlflow:5000/ready?db=postgres"])
    assert reading.managed == ["mlflow"]


NAMESPACE_FILE = "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"


@pytest.mark.parametrize(
    ("argv", "env", "managed"),
    [
        # The namespace part computed, as the Kubernetes documentation's example writes it.
        (sh(f"until nslookup mlflow.{NAMESPACE_FILE}.svc.cluster.local; do sleep 2; done"),
         {}, ["mlflow"]),
        (sh("until nc -z minio.${POD_NAMESPACE}.svc 9000; do sleep 2; done"), {}, ["minio"]),
        (sh("until nc -z minio.$(POD_NAMESPACE).svc 9000; do sleep 2; done"), {}, ["minio"]),
        # Comments and blank lines are glue.
        (sh("# wait for the tracking server\n\nuntil nc -z mlflow 5000; do\n  # not yet\n"
            "  sleep 2\ndone\n"), {}, ["mlflow"]),
        (sh("until nc -z mlflow 5000; do sleep 2; done # then go; rm -rf /data"), {},
         ["mlflow"]),
        # Liveness queries.
        (sh("until psql -h postgres -U app -c 'SELECT 1'; do sleep 1; done"), {}, ["postgres"]),
        (sh("until PGPASSWORD=x psql -h postgres -c '\\q'; do sleep 1; done"), {},
         ["postgres"]),
        (sh("until mysqladmin ping -h mlflow --silent; do sleep 1; done"), {}, ["mlflow"]),
        (sh("until redis-cli -h fastapi-app -p 6379 ping; do sleep 1; done"), {}, ["fastapi"]),
        (sh("pg_isready -h postgres && psql -h postgres -c 'select 1;'"), {}, ["postgres"]),
        # Hosts through variables, resolved against the container's literal env.
        (sh('until nc -z "$DB_HOST" 5432; do sleep 1; done'), {"DB_HOST": "postgres"},
         ["postgres"]),
        (sh("until nc -z ${TRACKING_HOST} 5000; do sleep 1; done"), {"TRACKING_HOST": "mlflow"},
         ["mlflow"]),
        (["nc", "-z", "$(TRACKING_HOST)", "5000"], {"TRACKING_HOST": "mlflow"}, ["mlflow"]),
        (sh("until nc -z ${DB_HOST:-postgres} 5432; do sleep 1; done"), {}, ["postgres"]),
        # Wait tools.
        (["wait-for-port", "--host=mlflow", "--state=inuse", "--timeout=120", "5000"], {},
         ["mlflow"]),
        (sh("wait-for-port --host minio --timeout 60 9000"), {}, ["minio"]),
        (["dockerize", "-wait", "tcp://mlflow:5000", "-timeout", "60s"], {}, ["mlflow"]),
        (["dockerize", "-wait", "http://fastapi-app:8000/health"], {}, ["fastapi"]),
        (sh("wait-for-it.sh mlflow:5000 -t 60"), {}, ["mlflow"]),
        (["wait-for-it", "minio:9000", "--", "echo", "ready"], {}, ["minio"]),
        (sh("wait-for mlflow:5000 --timeout=30"), {}, ["mlflow"]),
    ],
)
def test_waiters_as_charts_write_them(
    argv: list[str], env: dict[str, str], managed: list[str]
) -> None:
    reading = READER.read(argv, env)
    assert reading.managed == managed
    assert reading.only_waits_for_managed


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (sh("until psql -h postgres -c 'SELECT 1'; do sleep 1; done; "
            "psql -h postgres -c 'CREATE DATABASE mlflow'"), {}),
        (sh("psql -h postgres -f /sql/schema.sql"), {}),
        (sh("mysql -h mlflow -e 'DROP TABLE runs'"), {}),
        (sh("until mysqladmin ping -h mlflow; do sleep 1; done; mysqladmin -h mlflow create db"),
         {}),
        (sh("redis-cli -h fastapi-app FLUSHALL"), {}),
        (sh("until nc -z minio 9000; do sleep 1; done\n# make the bucket\nmc mb local/models"),
         {}),
        (sh("until nc -z minio 9000; do sleep 1; done; chmod -R 777 /data"), {}),
        (["wait-for-it", "mlflow:5000", "--", "python", "migrate.py"], {}),
        (["dockerize", "-wait", "tcp://mlflow:5000", "python", "migrate.py"], {}),
        (["dockerize", "-template", "/t:/etc/app.conf", "-wait", "tcp://mlflow:5000"], {}),
        # `kubectl wait` waits for an object, not a host: it is not read as a probe.
        (sh("kubectl wait --for=condition=ready pod -l app=mlflow --timeout=120s"), {}),
        # A variable that cannot be resolved may be any host (kafka): never a pure wait.
        (sh("until nc -z mlflow 5000 && nc -z $BROKER 9092; do sleep 1; done"), {}),
        (sh("until nc -z $BROKER 9092; do sleep 1; done"), {"BROKER": "kafka"}),
    ],
)
def test_work_and_other_hosts_beside_the_new_shapes_keep_the_container(
    argv: list[str], env: dict[str, str]
) -> None:
    assert not READER.read(argv, env).only_waits_for_managed


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (sh(f"until nslookup mlflow.{NAMESPACE_FILE}.svc.cluster.local; do sleep 2; done"), {},
         sh("until nslookup host.docker.internal; do sleep 2; done")),
        (sh("until nc -z minio.${POD_NAMESPACE}.svc 9000; do sleep 2; done"), {},
         sh("until nc -z host.docker.internal 9000; do sleep 2; done")),
        (sh('until nc -z "$API_HOST" "$API_PORT"; do sleep 1; done'),
         {"API_HOST": "fastapi-app", "API_PORT": "80"},
         sh("until nc -z host.docker.internal 8000; do sleep 1; done")),
        (sh("until nc -z ${API_HOST:-fastapi-app} 80; do sleep 1; done"), {},
         sh("until nc -z host.docker.internal 8000; do sleep 1; done")),
        (["nc", "-z", "$(API_HOST)", "80"], {"API_HOST": "fastapi-app"},
         ["nc", "-z", "host.docker.internal", "8000"]),
        (["wait-for-port", "--host=fastapi-app", "--state=inuse", "--timeout=120", "80"], {},
         ["wait-for-port", "--host=host.docker.internal", "--state=inuse", "--timeout=120",
          "8000"]),
        (sh("until redis-cli -h fastapi-app -p 80 ping; do sleep 1; done"), {},
         sh("until redis-cli -h host.docker.internal -p 8000 ping; do sleep 1; done")),
        (["dockerize", "-wait", "tcp://fastapi-app:80", "-timeout", "60s"], {},
         ["dockerize", "-wait", "tcp://host.docker.internal:8000", "-timeout", "60s"]),
        (["wait-for-it", "mlflow:5000", "--", "python", "migrate.py", "--uri", "http://mlflow"],
         {}, ["wait-for-it", "host.docker.internal:5000", "--", "python", "migrate.py", "--uri",
              "http://host.docker.internal:5000"]),
        # Comments keep their text, even when they name a host.
        (sh("# wait for mlflow:5000\nuntil nc -z mlflow 5000; do sleep 2; done"), {},
         sh("# wait for mlflow:5000\nuntil nc -z host.docker.internal 5000; do sleep 2; done")),
    ],
)
def test_retargeting_the_new_shapes_replaces_the_whole_host(
    argv: list[str], env: dict[str, str], expected: list[str]
) -> None:
    once = READER.retarget(argv, env)
    assert once == expected
    assert READER.retarget(once, env) is None
    reading = READER.read(once, env)
    assert reading.probes_external and reading.managed == []


def test_an_unresolvable_host_variable_is_not_rewritten() -> None:
    argv = sh('until nc -z "$DB_HOST" 5000; do sleep 1; done')
    assert READER.retarget(argv, {}) is None


def test_a_program_over_the_limit_is_not_read() -> None:
    script = "until nc -z mlflow 5000; do sleep 2; done;" * (MAX_PROGRAM_CHARS // 40 + 1)
    reading = READER.read(sh(script))
    assert reading.not_read and not reading.only_waits_for_managed
    assert READER.retarget(sh(script)) is None
    loop = "until nc -z mlflow 5000; do sleep 2; done;"
    under_the_limit = loop * ((MAX_PROGRAM_CHARS - 10) // len(loop))
    assert READER.read(sh(under_the_limit)).only_waits_for_managed


def test_env_values_that_are_addresses_of_managed_hosts_are_retargeted() -> None:
    assert READER.retarget_value("http://fastapi-app:8000/api") == (
        "http://host.docker.internal:8000/api", [])
    assert READER.retarget_value("mlflow:5000") == ("host.docker.internal:5000", [])
    assert READER.retarget_value("postgresql://u@postgres:5432/db") == (None, ["postgres"])
    assert READER.retarget_value("kafka:9092") == (None, [])
    assert READER.retarget_value("see mlflow:5000 for runs") == (None, [])
    assert READER.retarget_value("mlflow") == (None, [])


def test_only_the_host_part_of_an_address_is_retargeted() -> None:
    assert READER.retarget_value("http://mlflow@minio:9000/mlflow?next=fastapi") == (
        "http://mlflow@host.docker.internal:9000/mlflow?next=fastapi", [])
    assert READER.retarget_value("kafka:9092,mlflow:5000") == (
        "kafka:9092,host.docker.internal:5000", [])
    assert READER.retarget_value("http://fastapi-app/api") == (
        "http://host.docker.internal:8000/api", [])
    assert READER.retarget_value("s3://models/mlflow:5000") == (None, [])


@pytest.mark.parametrize(
    "script",
    [
        "until nslookup mlflow.$(cat /run/secrets/ns).svc.cluster.local; do sleep 2; done",
        "until nc -z mlflow.$NS 5000; do sleep 2; done",
        "until nc -z mlflow.`hostname -d` 5000; do sleep 2; done",
    ],
)
def test_a_host_part_computed_otherwise_is_not_that_host(script: str) -> None:
    # Not the namespace file, nor a variable before `.svc`: what the host becomes is unknown,
    # so it is never retargeted into `host.docker.internal.$(...)`, and the container stays.
    reading = READER.read(sh(script))
    assert reading.managed == []
    assert not reading.only_waits_for_managed
    assert READER.retarget(sh(script)) is None
