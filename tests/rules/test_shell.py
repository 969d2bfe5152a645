"""The shell reader: scripts read as the shell runs them, and what it refuses to read."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from webhook.rules.programs import ProgramReader
from webhook.rules.shell import MAX_COMMANDS, MAX_DEPTH, read_script

READER = ProgramReader(make_settings().services)


def words_of(script: str, env: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    reading = read_script(script, env or {})
    assert reading is not None, script
    return [command.words for command in reading.commands]


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_continuation_lines_join_a_probe_into_one_command() -> None:
    script = "pg_isready \\\n  -h postgres \\\n  -p 5432"
    assert words_of(script) == [("pg_isready", "-h", "postgres", "-p", "5432")]


def test_a_continuation_inside_a_word_joins_the_word_as_the_shell_does() -> None:
    assert words_of("nc -z mlflow\\\n5000") == [("nc", "-z", "mlflow5000")]


def test_a_command_held_in_a_variable_runs_as_its_words() -> None:
    script = 'PG_READY="pg_isready -h postgres"; until $PG_READY; do sleep 2; done'
    assert words_of(script)[0] == ("pg_isready", "-h", "postgres")


def test_a_script_local_host_is_followed_into_the_probe() -> None:
    script = ("ADDRESS=minio; for i in $(seq 1 60); do if nc -zv $ADDRESS 9000; then exit 0;"
              " fi; sleep 2; done; exit 1")
    assert ("nc", "-zv", "minio", "9000") in words_of(script)


def test_a_variable_given_two_values_stays_unresolved() -> None:
    script = "HOST=mlflow\nif [ -n \"$X\" ]; then HOST=kafka; fi\nnc -z $HOST 5000"
    assert ("nc", "-z", "$HOST", "5000") in words_of(script)


def test_a_function_is_followed_at_its_call_with_its_arguments() -> None:
    script = ("check_host() { local host=$1; local port=$2; wait-for-port --host=${host} "
              "--state=inuse ${port}; }\ncheck_host mlflow 5000\ncheck_host minio 9000")
    probes = [w for w in words_of(script) if w[0] == "wait-for-port"]
    assert probes == [("wait-for-port", "--host=mlflow", "--state=inuse", "5000"),
                      ("wait-for-port", "--host=minio", "--state=inuse", "9000")]


def test_a_function_defined_but_never_called_runs_nothing() -> None:
    assert words_of("migrate() { psql -c 'DROP TABLE runs'; }\nnc -z mlflow 5000") == [
        ("nc", "-z", "mlflow", "5000")
    ]


def test_bitnami_retry_while_reads_its_command_string() -> None:
    script = (". /opt/bitnami/scripts/libos.sh\ncheck_host() { wait-for-port --host=$1 "
              "--state=inuse $2; }\nretry_while \"check_host mlflow-tracking 80\"")
    assert ("wait-for-port", "--host=mlflow-tracking", "--state=inuse", "80") in words_of(script)


def test_a_nested_shell_behind_a_wrapper_is_read() -> None:
    script = "timeout 60 sh -c 'until nc -z mlflow 5000; do sleep 1; done'"
    assert words_of(script) == [("nc", "-z", "mlflow", "5000"), ("sleep", "1")]


def test_command_substitutions_run_their_commands() -> None:
    assert ("curl", "-X", "POST", "http://x") in words_of("echo $(curl -X POST http://x)")


def test_a_redirection_to_dev_tcp_is_part_of_its_command() -> None:
    assert words_of("until echo > /dev/tcp/mlflow/5000; do sleep 1; done")[0] == (
        "echo", "/dev/tcp/mlflow/5000")


@pytest.mark.parametrize(
    ("script", "writes"),
    [
        ("nc -z mlflow 5000 > /dev/null 2>&1", False),
        ("nc -z mlflow 5000 >&2", False),
        ("echo ready > /shared/ready", True),
        ("cat <<EOF > /config/app.yaml\ntracking: http://mlflow:5000\nEOF", True),
        ("cat <<EOF\nwaiting\nEOF", False),
    ],
)
def test_writing_a_file_is_noticed(script: str, writes: bool) -> None:
    reading = read_script(script, {})
    assert reading is not None and reading.writes_files is writes


@pytest.mark.parametrize(
    "script",
    [
        "exec 3<>/dev/tcp/minio/9000",  # a redirection the grammar does not know
        "until nc -z mlflow 5000; do sleep 2",  # never closed
        "echo 'unterminated",
    ],
)
def test_what_does_not_parse_is_not_read(script: str) -> None:
    assert read_script(script, {}) is None


def test_calls_nested_too_deep_are_not_read() -> None:
    script = "\n".join(f"f{i}() {{ f{i + 1}; }}" for i in range(MAX_DEPTH + 2)) + "\nf0"
    assert read_script(script, {}) is None


def test_functions_that_multiply_their_calls_are_bounded() -> None:
    # Each level calls the next four times: 4**6 calls in all, far over the bound.
    lines = [f"f{i}() {{ f{i + 1}; f{i + 1}; f{i + 1}; f{i + 1}; }}" for i in range(6)]
    script = "\n".join([*lines, "f6() { sleep 1; }", "f0"])
    assert 4**6 > MAX_COMMANDS
    assert read_script(script, {}) is None


def test_assignment_lines_before_comments_are_not_taken_for_a_command_prefix() -> None:
    # The grammar alone reads `until` here as the name of a command prefixed by A and B.
    script = "A=1 B=2\n\t\n# a comment\n\tuntil (nc -z mlflow 5000); do sleep 1; done"
    assert words_of(script) == [("nc", "-z", "mlflow", "5000"), ("sleep", "1")]


def test_spans_point_at_the_probe_as_written() -> None:
    script = "set -e\nwait-for-port \\\n  --host=minio \\\n  9000\necho ok"
    reading = read_script(script, {})
    assert reading is not None
    probe = reading.commands[1]
    assert probe.span is not None
    assert script[probe.span[0] : probe.span[1]] == "wait-for-port \\\n  --host=minio \\\n  9000"


@pytest.mark.parametrize(
    "script",
    [
        "apk add --no-cache netcat-openbsd && until nc -z mlflow 5000; do sleep 2; done",
        "apt-get update && apt-get install -y netcat-openbsd && until nc -z mlflow 5000; do "
        "sleep 2; done",
        "until redis-cli -h mlflow ping | grep -q PONG; do sleep 1; done",
        "set -e\ntrap 'exit 1' TERM\nuntil nc -z mlflow 5000; do sleep 2; done",
        "retry() { until nc -z $1 $2; do sleep 2; done; }\nretry mlflow 5000",
        "PROBE='nc -z mlflow 5000'; until $PROBE; do sleep 1; done",
    ],
)
def test_setup_and_glue_around_a_probe_leave_a_pure_waiter(script: str) -> None:
    reading = READER.read(sh(script))
    assert reading.managed == ["mlflow"]
    assert reading.only_waits_for_managed, reading


@pytest.mark.parametrize(
    "script",
    [
        "apk add --no-cache postgresql-client && psql -h postgres -c 'CREATE DATABASE x'",
        "apk add --no-cache jq && until nc -z mlflow 5000; do sleep 2; done",
        "until curl -sf -X POST http://mlflow:5000/api/warm-up; do sleep 5; done",
        "until wget --post-data=x http://mlflow:5000/api; do sleep 5; done",
        "until nc -z mlflow 5000; do sleep 2; done; echo ready > /shared/ready",
        "MIGRATE=\"psql -h postgres -c 'DROP TABLE runs'\"; until nc -z mlflow 5000; do sleep 2;"
        " done; $MIGRATE",
        # A probe, then a wait for a host written with a computed namespace: kept.
        "until nc -z mlflow 5000; do sleep 2; done; until (nc -vz -w 1 \"release-redis-master."
        "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc.cluster.local\" "
        "6379); do sleep 2; done",
        "python3 -c 'import socket; socket.create_connection((\"mlflow\", 5000))'",
    ],
)
def test_work_and_other_hosts_keep_the_container(script: str) -> None:
    assert not READER.read(sh(script)).only_waits_for_managed


def test_a_probe_reached_through_a_function_is_not_rewritten_in_place() -> None:
    argv = sh("check() { nc -z $1 $2; }\nuntil check mlflow 5000; do sleep 1; done")
    assert READER.read(argv).only_waits_for_managed
    assert not READER.retargets_fully(argv)


def test_a_probe_with_literal_words_in_a_function_is_rewritten_where_it_is_written() -> None:
    argv = sh("wait_for() { until nc -z mlflow 5000; do sleep 1; done; }\nwait_for")
    assert READER.retarget(argv) == sh(
        "wait_for() { until nc -z host.docker.internal 5000; do sleep 1; done; }\nwait_for")
    assert READER.retargets_fully(argv)


def test_a_continued_probe_keeps_its_lines_when_rewritten() -> None:
    argv = sh("wait-for-port \\\n  --host=minio \\\n  --state=inuse \\\n  9000")
    assert READER.retarget(argv) == sh(
        "wait-for-port \\\n  --host=host.docker.internal \\\n  --state=inuse \\\n  9000")


@pytest.mark.parametrize(
    "script",
    [
        "echo " + "$(" * 5000 + "true" + ")" * 5000,
        "(" * 8000 + "true" + ")" * 8000,
        "{ " * 5000 + "true; " + "} " * 5000,
        "true;" * (MAX_COMMANDS + 1),
    ],
    ids=["substitutions", "subshells", "braces", "commands"],
)
def test_hostile_nesting_and_length_are_not_read(script: str) -> None:
    assert read_script(script, {}) is None


def test_a_connection_after_a_list_belongs_to_its_last_command() -> None:
    # The grammar hangs the redirection on `true && echo`; the shell gives it to `echo`.
    assert words_of("until true && echo > /dev/tcp/mlflow/5000; do sleep 1; done")[1] == (
        "echo", "/dev/tcp/mlflow/5000")


def test_words_after_a_redirection_are_arguments() -> None:
    assert words_of("until nc 2>&1 -z mlflow 5000; do sleep 1; done")[0] == (
        "nc", "-z", "mlflow", "5000")


def test_a_computed_command_is_work() -> None:
    reading = read_script("until `echo > /dev/tcp/mlflow/5000`; do sleep 1; done", {})
    assert reading is not None and reading.runs_computed_command


def test_a_command_holding_a_substitution_is_retargeted_whole() -> None:
    argv = sh("until nslookup mlflow.$(cat /var/run/secrets/kubernetes.io/serviceaccount/"
              "namespace).svc.cluster.local; do sleep 2; done")
    assert READER.retarget(argv) == sh("until nslookup host.docker.internal; do sleep 2; done")
