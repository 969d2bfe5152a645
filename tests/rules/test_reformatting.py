"""A script reads the same however it is laid out.

The same commands can be written in many ways that the shell runs alike: a backslash-newline
between two words, more spaces or a tab, blank lines, comment lines, `;` or a newline between
commands. `ProgramReader.read` must give the same reading for each of them (the services it
probes, whether it probes other hosts, whether it does work): the property is checked on
scripts shaped like the `shell-*` fixtures, each laid out at random by hypothesis.

A script is written here as logical lines of words (a quoted string, a `$(...)`, `${...}` or
`((...))` is one word). Between two words goes a gap; after a line goes a separator that ends
a command (`;` or a newline) or, after a keyword that opens a body (`do`, `then`, `{`, `in`,
`;;`...), any white space. Only after a newline may blank and comment lines follow.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from webhook.rules.programs import ProgramReader
from webhook.settings import Endpoint, Service

# Redis is managed here too (as the fixtures' settings do), so that its probes count.
READER = ProgramReader([
    *make_settings().services,
    Service(name="redis", hosts=("redis",), external=Endpoint("host.docker.internal", 6379)),
])
# Words after which a line may end without `;`: the shell is still reading a compound command.
OPENING_WORDS = frozenset({"do", "then", "else", "{", "in", ";;", "&&", "||", "|"})
GAPS = (" ", "   ", "\t", " \\\n", " \\\n\t", "\\\n    ")
COMMAND_ENDS = ("\n", "; ", ";\n", " ;  ")
OPENING_ENDS = ("\n", " ", "  \n")
INDENTS = ("", "  ", "    ", "\t")
# What may follow a newline between two lines. A comment that names hosts and work must not
# count: the shell never runs it.
EXTRA_LINES = (
    "\n",
    "\t\n",
    "# a comment line\n",
    "   # was: until nc -z kafka 9092; do sleep 2; done\n",
    "# psql -h postgres -c 'DROP TABLE runs'\n",
)
SCRIPT_ENDS = ("", "\n", " \n", "\n\n# done\n")
TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Script:
    """A base script: its name, the shell that runs it, its lines of words, its literal env."""

    name: str
    shell: str
    lines: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, text: str) -> list[str]:
        return [self.shell, "-c", text]


def words(line: str) -> tuple[str, ...]:
    """The words of a line, split at white space outside quotes, `$(...)`, `${...}` and
    `((...))`."""
    found: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(line):
        char = line[index]
        if char in " \t":
            if current:
                found.append("".join(current))
                current = []
            index += 1
            continue
        end = _atom_end(line, index)
        current.append(line[index:end])
        index = end
    if current:
        found.append("".join(current))
    return tuple(found)


def _atom_end(line: str, index: int) -> int:
    """Where the indivisible piece that starts at ``index`` ends."""
    char = line[index]
    if char in "'\"":
        closing = index + 1
        while line[closing] != char or (char == '"' and line[closing - 1] == "\\"):
            closing += 1
        return closing + 1
    for opening, pair in (("$(", "()"), ("${", "{}"), ("((", "()")):
        if line.startswith(opening, index):
            return _matching(line, index + 1, pair)
    return index + 1


def _matching(line: str, index: int, pair: str) -> int:
    """The index after the bracket that closes the one at ``index``."""
    depth = 0
    while True:
        char = line[index]
        if char in "'\"":
            index = _atom_end(line, index)
            continue
        depth += (char == pair[0]) - (char == pair[1])
        index += 1
        if depth == 0:
            return index


def script(name: str, text: str, shell: str = "sh", **env: str) -> Script:
    lines = tuple(words(line) for line in text.strip("\n").split("\n"))
    for line in lines:
        # `;` comes from the separator, so that it can be a newline instead.
        assert line and line[-1] != ";", f"{name}: a line is empty or ends with ;"
    return Script(name, shell, lines, tuple(env.items()))


def opens(line: tuple[str, ...]) -> bool:
    """Whether the line ends inside a compound command (`do`, `then`, a case pattern...)."""
    last = line[-1]
    case_pattern = len(line) == 1 and last.endswith(")") and "$(" not in last and "=" not in last
    return last in OPENING_WORDS or case_pattern


# Shaped like the shell-* fixtures (tests/fixtures/shell-*), one logical line per line.
SCRIPTS = [
    script("continuation-pg-isready", """
until pg_isready -h postgres -p 5432 ; do
echo "waiting for postgres"
sleep 2
done
"""),
    script("continuation-wait-for-port", """
set -e
echo "Waiting for minio"
wait-for-port --host=minio --state=inuse --timeout=120 9000
echo "minio is available"
""", shell="bash"),
    script("continuation-between-probes", """
until nc -z -w 2 mlflow 5000 && echo mlflow ok && nc -z -w 2 minio 9000 && echo minio ok ; do
sleep 2
done
"""),
    script("continuation-psql-kept", """
until pg_isready -h postgres -p 5432 ; do sleep 2 ; done
psql -h postgres -U flts -c 'CREATE DATABASE flts_catalog'
"""),
    script("variable-command-pg-isready", """
PG_READY="pg_isready -h postgres -p 5432"
until $PG_READY ; do
echo "waiting for postgres"
sleep 2
done
"""),
    script("variable-command-kept", """
RESET="psql -h postgres -U flts -d flts -c 'DROP TABLE IF EXISTS staging_runs'"
until pg_isready -h postgres -p 5432 ; do sleep 2 ; done
eval "$RESET"
"""),
    script("local-variable-counted-loop", """
RETRY=0
until [ $RETRY -eq 30 ]
do
ADDRESS="minio"
if nc -zv $ADDRESS 9000 ; then
echo "Service minio with address $ADDRESS:9000 is ready"
exit 0
fi
echo "[$RETRY/30] waiting for service minio with address $ADDRESS:9000 to become ready"
sleep 5
RETRY=$(($RETRY + 1))
if [ $RETRY -eq 30 ] ; then
echo "Service minio with address $ADDRESS:9000 is not ready"
exit 1
fi
done
"""),
    script("local-variable-seq", """
ADDRESS=minio
for i in $(seq 1 60) ; do
if nc -zv $ADDRESS 9000 ; then
exit 0
fi
sleep 2
done
exit 1
"""),
    script("local-variable-mc-kept", """
ADDRESS=minio
until nc -z $ADDRESS 9000 ; do echo "waiting for $ADDRESS" ; sleep 2 ; done
mc alias set flts "http://$ADDRESS:9000" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing flts/models
"""),
    script("local-variable-computed-kept", """
ADDRESS=$(cat /etc/flts/tracking-host)
until nc -z "$ADDRESS" 5000 ; do echo "waiting for $ADDRESS" ; sleep 2 ; done
"""),
    script("local-variable-reassigned-kept", """
ADDRESS=minio
if [ -n "$EXTERNAL_S3_HOST" ] ; then
ADDRESS="$EXTERNAL_S3_HOST"
fi
until nc -z "$ADDRESS" 9000 ; do sleep 2 ; done
"""),
    script("function-retry-while-defined", """
retry_while() {
local -r cmd="${1:?cmd is missing}"
local -r attempts="${2:-12}"
local -r pause="${3:-5}"
local status=1
read -r -a command <<< "$cmd"
for ((i = 1 ; i <= attempts ; i+=1 )) ; do
"${command[@]}" && status=0 && break
sleep "$pause"
done
return $status
}
check_host() {
local -r host="${1:-?missing host}"
local -r port="${2:-?missing port}"
if wait-for-port --timeout=5 --host=${host} --state=inuse $port ; then
return 0
else
return 1
fi
}
echo "Checking the tracking server at mlflow:5000"
if ! retry_while "check_host mlflow 5000" ; then
echo "The tracking server did not answer"
exit 1
fi
exit 0
""", shell="bash"),
    script("function-retry-while-sourced-kept", """
set -o errexit
. /opt/bitnami/scripts/libos.sh
check_host() {
local -r host="${1:?missing host}"
local -r port="${2:?missing port}"
wait-for-port --timeout=5 --host="${host}" --state=inuse "${port}"
}
if ! retry_while "check_host mlflow 5000" ; then
exit 1
fi
""", shell="bash"),
    script("function-probe", """
wait_for_gateway() {
until wget -q --spider http://fastapi-app:8000/health ; do
echo "waiting for the gateway"
sleep 2
done
}
wait_for_gateway
"""),
    script("function-migration-kept", """
migrate() {
until nc -z mlflow 5000 ; do sleep 2 ; done
python -m flts.catalog.migrate --tracking-uri "$MLFLOW_TRACKING_URI"
}
migrate
""", MLFLOW_TRACKING_URI="http://mlflow:5000"),
    script("install-apk-netcat", """
apk add --no-cache netcat-openbsd
echo "Waiting for the tracking server..."
until nc -z mlflow.flts.svc.cluster.local 5000 ; do
echo "mlflow is not ready yet - waiting..."
sleep 2
done
echo "mlflow is ready!"
"""),
    script("install-apt-netcat", """
apt-get update && apt-get install -y --no-install-recommends netcat-openbsd && until nc -z minio 9000 ; do echo waiting for minio ; sleep 2 ; done
"""),  # noqa: E501
    script("install-psql-create-kept", """
apk add --no-cache postgresql-client && psql -h postgres -U flts -c 'CREATE DATABASE flts_catalog'
"""),
    script("pipe-redis-ping", """
until redis-cli -h redis -a "$REDIS_PASSWORD" ping | grep PONG ; do echo waiting for redis ; sleep 2 ; done
"""),  # noqa: E501
    script("pipe-wget-health", """
until wget -qO- http://fastapi-app:8000/health | grep -q '"ok"' ; do
echo waiting for the gateway
sleep 2
done
"""),
    script("pipe-redis-set-kept", """
until redis-cli -h redis ping | grep -q PONG ; do sleep 1 ; done
redis-cli -h redis SET flts:schema-version 7
"""),
    script("control-trap-if-elif", """
set -e
trap 'echo "interrupted while waiting for mlflow" >&2; exit 1' TERM INT
for attempt in $(seq 1 60) ; do
if nc -z mlflow 5000 ; then
echo "mlflow is up"
exit 0
elif [ "$attempt" -eq 60 ] ; then
echo "mlflow did not come up" >&2
exit 1
else
sleep 2
fi
done
"""),
    script("control-case", """
case "${WAIT_MODE:-tcp}" in
dns)
until nslookup mlflow ; do sleep 2 ; done ;;
*)
until nc -z mlflow 5000 ; do sleep 2 ; done ;;
esac
"""),
    script("control-subshell", """
until (nc -vz -w 1 mlflow 5000) ; do
echo "waiting for mlflow" ; sleep 1
done
until (nc -vz -w 1 minio 9000) ; do
echo "waiting for minio" ; sleep 1
done
"""),
    script("computed-namespace-redis-kept", """
until nc -z mlflow 5000 ; do sleep 2 ; done
until (nc -vz -w 1 "release-redis-master.$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc.cluster.local" 6379) ; do sleep 2 ; done
"""),  # noqa: E501
    script("computed-host-kafka-kept", """
until (nc -vz -w 1 "mlflow.$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc.cluster.local" 5000) ; do
echo "waiting for mlflow" ; sleep 1
done
KAFKA_HOST=$(echo $KAFKA_BROKERS | cut -f1 -d:) KAFKA_PORT=$(echo $KAFKA_BROKERS | cut -f2 -d:)
until (nc -vz -w 1 "$KAFKA_HOST.$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc.cluster.local" $KAFKA_PORT) ; do
echo "waiting for kafka" ; sleep 1
done
""", KAFKA_BROKERS="kafka:9092"),  # noqa: E501
    script("curl-post-kept", """
until curl -sf -X POST http://fastapi-app:8000/api/v1/models/warm-up ; do echo "gateway not ready" ; sleep 5 ; done
"""),  # noqa: E501
]


def plain(base: Script) -> str:
    """The script laid out the plain way: one space between words, a newline after lines."""
    return "\n".join(" ".join(line) for line in base.lines) + "\n"


@st.composite
def layouts(draw: st.DrawFn, base: Script) -> str:
    """``base`` laid out another way the shell runs alike."""
    pieces: list[str] = []
    at_line_start = True
    for number, line in enumerate(base.lines):
        if at_line_start:
            pieces.append(draw(st.sampled_from(INDENTS)))
        for index, word in enumerate(line):
            if index:
                pieces.append(draw(st.sampled_from(GAPS)))
            pieces.append(word)
        if number == len(base.lines) - 1:
            pieces.append(draw(st.sampled_from(SCRIPT_ENDS)))
            break
        end = draw(st.sampled_from(OPENING_ENDS if opens(line) else COMMAND_ENDS))
        pieces.append(end)
        at_line_start = end.endswith("\n")
        if at_line_start:
            pieces += draw(st.lists(st.sampled_from(EXTRA_LINES), max_size=3))
    return "".join(pieces)


def extreme_layouts(base: Script) -> list[str]:
    """The sparest and the most spread-out layouts, to check the layouts are still shell."""
    spare = " ".join(" ".join(line) + ("" if opens(line) else " ;") for line in base.lines)
    spread = ""
    for line in base.lines:
        spread += "\t" + " \\\n\t".join(line) + "\n" + "".join(EXTRA_LINES)
    return [spare.rstrip(" ;"), spread]


def reading_of(base: Script, text: str) -> tuple[list[str], bool, bool]:
    reading = READER.read(base.argv(text), dict(base.env))
    return list(reading.managed), reading.probes_other_hosts, reading.does_work


@settings(deadline=None)
@given(data=st.data(), base=st.sampled_from(SCRIPTS))
def test_a_script_reads_the_same_however_it_is_laid_out(data: st.DataObject,
                                                        base: Script) -> None:
    text = data.draw(layouts(base), label="layout")
    note(f"{base.name}: {text!r}")
    assert reading_of(base, text) == reading_of(base, plain(base))


@pytest.mark.parametrize("base", SCRIPTS, ids=lambda base: base.name)
def test_the_sparest_and_the_most_spread_out_layouts_read_the_same(base: Script) -> None:
    """The two extremes of the property, on every script, whatever hypothesis draws."""
    for text in extreme_layouts(base):
        assert reading_of(base, text) == reading_of(base, plain(base)), repr(text)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash to check the layouts with")
@pytest.mark.parametrize("base", SCRIPTS, ids=lambda base: base.name)
def test_the_layouts_are_shell_that_parses(base: Script) -> None:
    """The property above is only as good as its layouts: each one must be a valid script."""
    for text in [plain(base), *extreme_layouts(base)]:
        checked = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True,
                                 timeout=TIMEOUT_SECONDS, check=False)
        assert checked.returncode == 0, f"{base.name}: {checked.stderr}\n{text}"


def test_the_layouts_differ_from_the_plain_script() -> None:
    """A layout strategy that only ever drew the plain text would check nothing."""
    base = SCRIPTS[0]
    assert all(text != plain(base) for text in extreme_layouts(base))
