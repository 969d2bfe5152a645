"""What one simple command does, and where a program is cut into simple commands."""

from __future__ import annotations

import pytest

from webhook.rules.commands import IDLE, NOTHING, PROBE, WORK, classify
from webhook.rules.segments import command_index, segments


def kind_of(command: str) -> str:
    words = command.split()
    return classify(words, command_index(words)).kind


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("nc -z mlflow 5000", PROBE),
        ("timeout 5 nc -z mlflow 5000", PROBE),
        ("PGPASSWORD=x pg_isready -h postgres", PROBE),
        ("wait-for-it mlflow:5000", PROBE),
        ("dockerize -wait tcp://mlflow:5000", PROBE),
        ("dockerize -template /t:/etc/app.conf -wait tcp://mlflow:5000", WORK),
        ("psql -h postgres -c select", WORK),
        ("psql -h postgres --command=\\q", PROBE),
        ("mysql -h mlflow -e 'select 1'", PROBE),
        ("mysqladmin ping -h mlflow", PROBE),
        ("mysqladmin -h mlflow status version", PROBE),
        ("mysqladmin -h mlflow create db", WORK),
        ("mysqladmin -h mlflow", WORK),
        ("redis-cli -h fastapi-app ping", PROBE),
        ("redis-cli -h fastapi-app FLUSHALL", WORK),
        ("redis-cli", WORK),
        ("echo > /dev/tcp/minio/9000", PROBE),
        ("sleep 2", IDLE),
        ("echo waiting", IDLE),
        ("alembic upgrade head", WORK),
        ("for i in 1 2 3", NOTHING),
        ("do", NOTHING),
        ("", NOTHING),
    ],
)
def test_each_command_has_its_kind(command: str, kind: str) -> None:
    assert kind_of(command) == kind


def test_the_arguments_are_unquoted_and_the_name_is_the_basename() -> None:
    words = ["/usr/bin/nc", "-z", "'mlflow'", '"5000"']
    command = classify(words, command_index(words))
    assert (command.name, command.arguments) == ("nc", ["-z", "mlflow", "5000"])


@pytest.mark.parametrize(
    ("argv", "commands"),
    [
        (["sh", "-c", "until nc -z mlflow 5000; do sleep 2; done # then go"],
         [["until", "nc", "-z", "mlflow", "5000"], ["do", "sleep", "2"], ["done"]]),
        (["wait-for-it", "db:5432", "--", "./migrate"], [["wait-for-it", "db:5432"],
                                                         ["./migrate"]]),
        (["dockerize", "-wait", "tcp://db:5432", "-timeout", "5s", "run", "x"],
         [["dockerize", "-wait", "tcp://db:5432", "-timeout", "5s"], ["run", "x"]]),
        (["sh", "-c", "wait-for mlflow:5000 -- echo ready && exit 0"],
         [["wait-for", "mlflow:5000"], ["echo", "ready"], ["exit", "0"]]),
        (["sh", "-c", "echo ok 2>&1 & sleep 1"], [["echo", "ok", "2>&1"], ["sleep", "1"]]),
    ],
)
def test_programs_are_cut_into_simple_commands(
    argv: list[str], commands: list[list[str]]
) -> None:
    assert [list(segment.words) for segment in segments(argv) if segment.words] == commands
