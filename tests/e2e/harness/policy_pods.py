"""The case pods of the policy twin's e2e: each a pod as a user or a chart writes it.

The pod templates of the e2e charts (rendered with the harness's helm), pods at the edges of
the rules (opt-outs, env shapes, many ways to wait), a waiter for each word of the grammar, for
each host form of each managed service, and for each spelling of the opt-out.

Pods are written with a small vocabulary, also used by the tests for pods of their own:
``pod`` with containers from ``init`` (an init container running a command), ``sh`` (one
running a shell script), ``app`` (the pod's main container) and ``env`` (a variable).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from webhook.inject import TEMPLATE_PATHS
from webhook.rules.grammar import (
    IDLE_COMMANDS,
    PORT_LAST_TOOLS,
    PROBE_COMMANDS,
    SHELL_KEYWORDS,
    SHELLS,
    WRAPPERS,
)
from webhook.rules.mutate import INJECT_KEY, OPT_OUT_VALUES, STATUS_KEY
from webhook.settings import Settings

if TYPE_CHECKING:
    from .policy_twin import Cluster

E2E_DIR = Path(__file__).resolve().parents[1]
CHART = E2E_DIR / "chart"
# The second chart, with the waiter shapes public charts write (its README lists them).
SHAPES_CHART = E2E_DIR / "chart-shapes"
BUSYBOX = "busybox:1.35"


def init(name: str, command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": BUSYBOX, **extra}
    if command is not None:
        container["command"] = command
    return container


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return init(name, ["sh", "-c", script], **extra)


def app(name: str = "app", env: list[dict[str, Any]] | None = None,
        **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "flts/train:latest", **extra}
    if env is not None:
        container["env"] = env
    return container


def env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def pod(name: str, *, init: list[dict[str, Any]] | None = None,
        containers: list[dict[str, Any]] | None = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    if labels:
        metadata["labels"] = labels
    spec: dict[str, Any] = {"containers": containers or [app(env=[env("MODEL_TYPE", "gru")])]}
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


IN_CLUSTER_ENV = [
    env("MODEL_TYPE", "gru"),
    env("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
    env("MLFLOW_S3_ENDPOINT_URL", "http://minio:9000"),
    env("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
    env("AWS_ACCESS_KEY_ID", "minioadmin"),
    env("AWS_SECRET_ACCESS_KEY", "minioadmin"),
]
KAFKA_WAIT = sh("wait-for-kafka", "until nc -z kafka 9092; do sleep 2; done")
POD_NAMESPACE = {"name": "POD_NAMESPACE",
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}


def edge_pods() -> list[dict[str, Any]]:
    """Pods at the edges of the rules: opt-outs, env shapes, and many ways to wait."""
    waiters: dict[str, list[dict[str, Any]]] = {
        "exec-form": [init("probe", ["nc", "-z", "mlflow", "5000"])],
        "exec-form-port-80": [init("probe", ["nc", "-z", "fastapi-app", "80"])],
        "script-in-args": [init("probe", ["/bin/sh", "-c"],
                                args=["until nc -z mlflow 5000; do sleep 2; done"])],
        "args-only": [init("probe", args=["sh", "-c",
                                          "until nc -z minio 9000; do sleep 1; done"])],
        "flags-ec": [init("probe", ["sh", "-ec", "for i in $(seq 1 30); do nc -z fastapi 8000"
                                                 " && exit 0; sleep 1; done; exit 1"])],
        "dev-tcp": [init("probe", ["bash", "-c", "until (echo > /dev/tcp/minio/9000) 2>&1;"
                                                 " do sleep 1; done"])],
        "dev-tcp-postgres": [init("probe", ["bash", "-c", "until echo > /dev/tcp/postgres/5432;"
                                                          " do sleep 1; done &>/dev/null"])],
        "wget-fqdn": [sh("probe", "until wget -q -O- http://mlflow.flts.svc.cluster.local:5000"
                                  "/health; do sleep 1; done")],
        "curl-no-port": [sh("probe", "until curl -sf http://fastapi-app/healthz; do sleep 1;"
                                     " done")],
        "curl-no-scheme": [sh("probe", "until curl -sf minio.flts:9000/minio/health/live;"
                                       " do sleep 1; done")],
        "nslookup": [sh("probe", "until nslookup mlflow.flts.svc; do sleep 2; done")],
        "pg-isready": [sh("probe", "until pg_isready -h postgres -p 5432; do sleep 1; done")],
        "quoted-host": [sh("probe", "until nc -z 'mlflow' \"5000\"; do sleep 2; done")],
        "multi-line": [sh("probe", "echo waiting\nwhile ! nc -z -w 1 minio 9000\ndo\n  sleep 1\n"
                                   "done\necho up\n")],
        "background-and-wait": [sh("probe", "nc -z mlflow 5000 & wait")],
        "two-managed": [sh("probe", "until nc -z mlflow 5000 && nc -z minio 9000; do sleep 1;"
                                    " done")],
        "managed-and-postgres": [sh("probe", "until nc -z mlflow 5000 && pg_isready -h postgres;"
                                             " do sleep 1; done")],
        # One word naming two services: both count, so the first pass decides (removed: postgres
        # has no external address; retargeted: both have one).
        "one-word-two-services": [sh("probe", "until wget -q http://mlflow:5000/ready?db=postgres;"
                                              " do sleep 1; done")],
        "one-word-two-services-exec": [init("probe", ["sh", "-e", "until wget -q"
                                                      " http://mlflow:5000/ready?db=postgres;"
                                                      " do sleep 1; done"])],
        "one-word-two-retargetable": [sh("probe", "until curl -sf http://minio:9000/x?next=mlflow;"
                                                  " do sleep 1; done")],
        "managed-and-kafka": [sh("probe", "until nc -z mlflow 5000 && nc -z kafka 9092; do sleep"
                                          " 1; done")],
        "wait-then-migrate": [sh("migrate", "until nc -z mlflow 5000; do sleep 1; done;"
                                            " python migrate.py --uri http://mlflow:5000")],
        "postgres-then-migrate": [sh("migrate", "until nc -z postgres 5432; do sleep 1; done;"
                                                " alembic upgrade head")],
        "mentions-only": [sh("migrate", "python migrate.py --tracking-uri http://mlflow:5000")],
        "not-a-service": [sh("probe", "until nc -z mlflow.example.com 5000; do sleep 2; done"),
                          sh("probe2", "until nc -z mlflowx 5000; do sleep 2; done")],
        "named-waits-kafka": [sh("wait-for-fastapi", "until nc -z kafka 9092; do sleep 2; done")],
        "already-external": [sh("wait-for-mlflow", "until nc -z host.docker.internal 5000;"
                                                   " do sleep 2; done")],
        "external-unnamed": [sh("probe", "until nc -z host.docker.internal 5000; do sleep 2;"
                                         " done")],
        "all-removed": [sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"),
                        sh("wait-for-fastapi", "until nc -z fastapi-app 8000; do sleep 2;"
                                               " done")],
        # Redirections the grammar hangs elsewhere than the shell does; both twins follow
        # the shell.
        "connection-after-a-list": [sh("probe", "until true && echo > /dev/tcp/mlflow/5000;"
                                                " do sleep 1; done")],
        "connection-in-a-substitution": [sh("probe", "until `echo > /dev/tcp/mlflow/5000`; do"
                                                     " sleep 1; done")],
        "words-after-a-redirection": [sh("probe", "until nc 2>&1 -z mlflow 5000; do sleep 1;"
                                                  " done")],
        "subshell-dollar": [sh("probe", "until [ \"$(nc -z mlflow 5000 && echo ok)\" = ok ];"
                                        " do sleep 1; done")],
        "http-url-port-word": [sh("probe", "until wget -qO- http://minio 9000; do sleep 1;"
                                           " done")],
        "host-port-slash": [sh("probe", "until nc -z mlflow/5000; do sleep 1; done")],
        "kept-with-env": [sh("wait-for-kafka-too", "until nc -z kafka 9092; do sleep 2; done",
                             env=[env("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
                                  env("OTHER", "x")])],
        # Shapes of the rules' second version that the policy follows exactly (docs/policy.md).
        "comments": [sh("probe", "# the tracking server; then (the gateway)\n\n"
                                 "until nc -z mlflow 5000; do # not yet\n  sleep 2\ndone\n"
                                 "nc -z fastapi-app 8000 # mlflow:5000 in a comment")],
        "comment-then-work": [sh("migrate", "until nc -z minio 9000; do sleep 1; done\n"
                                            "# make the bucket\nmc mb local/models")],
        "liveness-psql": [sh("probe", "until psql -h postgres -c 'SELECT 1'; do sleep 1; done")],
        "liveness-psql-long": [sh("probe", "until psql -h postgres --command='select 1;';"
                                           " do sleep 1; done")],
        "liveness-then-create": [sh("create-db", "until pg_isready -h postgres; do sleep 1;"
                                                 " done; psql -h postgres -c 'CREATE DB m'")],
        "liveness-mysqladmin": [sh("probe", "until mysqladmin ping -h mlflow --silent; do sleep"
                                            " 1; done")],
        "mysqladmin-create": [sh("probe", "mysqladmin -h mlflow create runs")],
        "liveness-redis": [sh("probe", "until redis-cli -h minio ping; do sleep 1; done")],
        "redis-flush": [sh("probe", "until nc -z minio 9000; do sleep 1; done;"
                                    " redis-cli -h minio FLUSHALL")],
        "variable-namespace": [sh("probe", "until nc -z minio.${POD_NAMESPACE}.svc 9000; do"
                                           " sleep 2; done", env=[POD_NAMESPACE])],
        "resolved-variable": [sh("probe", 'until nc -z "$TRACKING_HOST" 5000; do sleep 1; done',
                                 env=[env("TRACKING_HOST", "mlflow")])],
        "variables-in-a-word": [sh("probe", "until nc -z $API_HOST:$API_PORT; do sleep 1; done",
                                   env=[env("API_HOST", "fastapi-app"), env("API_PORT", "80")])],
        "variable-host-and-port": [sh("probe", 'until nc -z "${API_HOST}" "$API_PORT" -w $T;'
                                               " do sleep 1; done",
                                      env=[env("API_HOST", "fastapi-app"),
                                           env("API_PORT", "80"), env("T", "a b")])],
        "variable-then-work": [sh("migrate", 'until nc -z "$TRACKING_HOST" 5000; do sleep 1;'
                                             " done; alembic upgrade head",
                                  env=[env("TRACKING_HOST", "mlflow")])],
        "kubelet-variable": [init("probe", ["nc", "-z", "$(TRACKING_HOST)", "5000"],
                                  env=[env("TRACKING_HOST", "mlflow")])],
        "kubelet-variable-script": [sh("probe", "until nc -z $(TRACKING_HOST) 5000; do sleep 1;"
                                                " done", env=[env("TRACKING_HOST", "minio")])],
        "kubelet-escape": [sh("probe", "until nc -z $$(TRACKING_HOST) 5000; do sleep 1; done",
                              env=[env("TRACKING_HOST", "mlflow")])],
        "kubelet-undefined": [init("probe", ["nc", "-z", "$(NOT_SET)", "5000"])],
        "default-variable": [sh("probe", "until pg_isready -h ${DB_HOST:-postgres}; do sleep 1;"
                                         " done")],
        "unresolved-variable": [sh("probe", "until nc -z mlflow 5000 && nc -z $BROKER 9092;"
                                            " do sleep 1; done")],
        "dockerize": [init("probe", ["dockerize", "-wait", "tcp://minio:9000", "-wait",
                                     "http://fastapi-app:8000/health", "-timeout", "60s"])],
        "wait-for-it-bare": [init("probe", ["wait-for-it.sh", "mlflow:5000", "-t", "60"])],
        "dockerize-template": [init("render", ["dockerize", "-template", "/t:/etc/app.conf",
                                               "-wait", "tcp://mlflow:5000"])],
        "kubectl-wait": [sh("probe", "kubectl wait --for=condition=ready pod -l app=mlflow")],
        "env-in-init": [sh("migrate", "alembic upgrade head",
                           env=[env("TRACKING", "http://mlflow:5000/api"),
                                env("DATABASE_URL", "postgresql://u@postgres:5432/db")])],
        # Shapes of the webhook's shell reader that the policy follows exactly
        # (docs/policy.md): continuation lines, setup and filters that are idle, HTTP calls
        # and files written that are work, the URLs of work retargeted, what does not parse.
        "continuation": [sh("probe", "until pg_isready \\\n  -h postgres \\\n  -p 5432; do"
                                     " sleep 1; done")],
        "continuation-port": [sh("probe", "until nc -z fastapi-app \\\n  80; do sleep 1; done")],
        "install-probe-tool": [sh("probe", "apk add --no-cache netcat-openbsd\n"
                                           "until nc -z mlflow 5000; do sleep 1; done")],
        "install-other": [sh("probe", "apk add --no-cache jq && until nc -z mlflow 5000; do"
                                      " sleep 1; done")],
        "output-filter": [sh("probe", "until redis-cli -h minio ping | grep -q PONG; do sleep 1;"
                                      " done")],
        "http-post": [sh("migrate", "until nc -z mlflow 5000; do sleep 1; done; curl -X POST"
                                    " http://mlflow:5000/api/2.0/mlflow/experiments/create"
                                    " -d '{\"name\": \"x\"}'")],
        "http-read-method": [sh("probe", "until curl -sf -X GET http://mlflow:5000/health; do"
                                         " sleep 1; done")],
        "wget-post": [sh("probe", "until wget -q --post-data=ping http://fastapi-app:8000/x; do"
                                  " sleep 1; done")],
        "writes-file": [sh("probe", "until nc -z mlflow 5000; do sleep 1; done; echo ready >"
                                    " /shared/ready")],
        "writes-nothing": [sh("probe", "until nc -z mlflow 5000 >/dev/null 2>&1; do sleep 1;"
                                       " done; echo up >&2")],
        "substitution-as-command": [sh("probe", "until $(nc -z mlflow 5000); do sleep 1; done")],
        "assignment-before-work": [sh("migrate", "until nc -z mlflow 5000; do sleep 1; done;"
                                                 " MLFLOW_TRACKING_URI=http://mlflow:5000 python"
                                                 " train.py --models http://minio:9000/m")],
        "unclosed-quote": [sh("probe", "until nc -z 'mlflow 5000; do sleep 1; done")],
        "read-write-redirection": [sh("probe", "exec 3<>/dev/tcp/mlflow/5000")],
        "missing-done": [sh("probe", "until nc -z mlflow 5000; do sleep 1;")],
    }
    pods = [
        pod(f"wait-{case}", init=init + ([] if case == "all-removed" else [KAFKA_WAIT]),
            containers=[app(env=list(IN_CLUSTER_ENV))])
        for case, init in waiters.items()
    ]
    chart_like = [sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"), KAFKA_WAIT]
    pods += [
        pod("opt-out-annotation", init=chart_like, annotations={INJECT_KEY: "false"}),
        pod("opt-out-label", init=chart_like, labels={INJECT_KEY: "false"}),
        pod("opt-out-spelling", init=chart_like, annotations={INJECT_KEY: " Off "}),
        pod("opt-in-explicit", init=chart_like, annotations={INJECT_KEY: "true"}),
        pod("no-env", init=chart_like, containers=[app()]),
        pod("no-init", containers=[app(env=list(IN_CLUSTER_ENV))]),
        pod("duplicate-env", containers=[app(env=[
            env("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
            env("AWS_ACCESS_KEY_ID", "a"),
            env("MODEL_TYPE", "gru"),
            env("MLFLOW_TRACKING_URI", "http://other:5000"),
            env("AWS_ACCESS_KEY_ID", "b"),
            env("AWS_ACCESS_KEY_ID", "c"),
        ])]),
        pod("value-from", containers=[app(env=[
            {"name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "minio", "key": "user"}}},
            {"name": "MLFLOW_TRACKING_URI",
            "valueFrom": {"configMapKeyRef": {"name": "urls", "key": "mlflow"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            env("DERIVED", "$(MLFLOW_TRACKING_URI)/api"),
        ])]),
        pod("several-containers", init=chart_like, containers=[
            app("trainer", env=list(IN_CLUSTER_ENV)),
            app("exporter", env=[env("GATEWAY_URL", "http://fastapi-app:8000")]),
            app("bare"),
        ]),
        pod("native-sidecar", init=[
            sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"),
            init("log-shipper", ["sh", "-c", "tail -f /dev/null"], restartPolicy="Always",
                env=[env("MLFLOW_TRACKING_URI", "http://mlflow:5000")]),
            init("bare-sidecar", ["sh", "-c", "tail -f /dev/null"], restartPolicy="Always"),
        ], containers=[app(env=list(IN_CLUSTER_ENV))]),
        pod("earlier-status", init=chart_like, annotations={
            STATUS_KEY: '{"removed":["wait-for-old"],"rewritten":[],"env":["GATEWAY_URL"]}',
        }, containers=[app(env=list(IN_CLUSTER_ENV))]),
        pod("foreign-status", init=chart_like, annotations={STATUS_KEY: "not json"}),
        # Env only where it belongs: a broker beside a trainer gets nothing, a gateway variable
        # of another name is retargeted, a database URL of postgres left, a dashboard that
        # waits for kafka only left alone.
        pod("env-broker-beside-trainer", containers=[
            app("trainer", env=list(IN_CLUSTER_ENV)),
            app("kafka", env=[env("KAFKA_CFG_ADVERTISED_LISTENERS", "PLAINTEXT://kafka:9092")]),
        ]),
        pod("env-gateway-other-name", containers=[app("inference", env=[
            env("FASTAPI_URL", "http://fastapi-app:8000/api"), env("LOG_LEVEL", "info")])]),
        pod("env-address-list", containers=[app("exporter", env=[
            env("TARGETS", "kafka:9092,mlflow:5000,http://u@minio/bucket?x=mlflow")])]),
        pod("env-postgres-url", containers=[app("eval", env=[
            env("DATABASE_URL", "postgresql://mlflow@postgres:5432/mlflow")])]),
        pod("env-not-used", init=[KAFKA_WAIT], containers=[app("dashboard")]),
        pod("env-host-in-args", containers=[app("client", args=["--tracking", "mlflow:5000"])]),
        # App containers' programs: the URLs of their work retargeted, bare hosts left.
        pod("app-args-url", containers=[app("trainer", args=["--tracking-uri",
                                                             "http://mlflow:5000"])]),
        pod("app-script", containers=[app("server", command=[
            "sh", "-c", "python serve.py --uri http://mlflow.flts.svc:5000/api && curl -X POST"
            " http://minio:9000/b"])]),
        pod("app-bare-host", containers=[app("client", args=["--host", "mlflow", "--port",
                                                             "5000"])]),
        pod("app-probe-and-work", containers=[app("server", command=[
            "sh", "-c", "until nc -z fastapi-app 80; do sleep 1; done; exec python serve.py"])]),
        pod("env-waited-by-status", containers=[app("late")], annotations={
            STATUS_KEY: '{"removed":["wait-for-mlflow"],"rewritten":[],"env":[]}'}),
    ]
    return pods


# A marker of what a case pod tests, carried on both sides (so it is compared too).
CASE_ANNOTATION = "e2e/case"


# A probe behind each shell keyword, each written as valid shell (the webhook reads scripts
# with a shell parser, and a script that does not parse is kept as work).
_KEYWORD_PROBE = "nc -z fastapi 8000"
KEYWORD_SCRIPTS = {
    "until": f"until {_KEYWORD_PROBE}; do sleep 1; done",
    "while": f"while ! {_KEYWORD_PROBE}; do sleep 1; done",
    "do": f"until {_KEYWORD_PROBE}; do sleep 1; done",
    "done": f"while true; do {_KEYWORD_PROBE} && break; sleep 1; done",
    "if": f"if {_KEYWORD_PROBE}; then echo up; fi",
    "then": f"if true; then {_KEYWORD_PROBE}; fi",
    "else": f"if false; then echo no; else {_KEYWORD_PROBE}; fi",
    "elif": f"if false; then echo no; elif {_KEYWORD_PROBE}; then echo up; fi",
    "fi": f"if {_KEYWORD_PROBE}; then :; fi",
    "!": f"if ! {_KEYWORD_PROBE}; then exit 1; fi",
    "{": f"{{ {_KEYWORD_PROBE}; }}",
    "}": f"{{ sleep 1; {_KEYWORD_PROBE}; }}",
    "exec": f"exec {_KEYWORD_PROBE}",
    "time": f"time {_KEYWORD_PROBE}",
    "esac": f"case x in x) {_KEYWORD_PROBE};; esac",
}


# Probe commands called the way they take a host: dockerize runs its first plain word as a
# command of its own, so it is given the address by its option.
_PROBE_CALLS = {"dockerize": "dockerize -wait tcp://mlflow:5000"}


def _idle_call(word: str) -> str:
    """An idle command called with one argument, as valid shell (`[ 1 ]`)."""
    closing = {"[": " ]", "[[": " ]]"}.get(word, "")
    return f"{word} 1{closing}"


def grammar_pods() -> list[dict[str, Any]]:
    """A waiter for each word of the grammar: each probe command and wait tool probing a
    managed host, each idle command in a readiness loop, each wrapper and shell in front of a
    probe, each shell keyword before one."""
    scripts = [f"until {_PROBE_CALLS.get(word, f'{word} mlflow 5000')}; do sleep 1; done"
               for word in sorted(PROBE_COMMANDS)]
    scripts += [f"until nc -z minio 9000; do {_idle_call(word)}; done"
                for word in sorted(IDLE_COMMANDS)]
    scripts += [f"{word} 5 nc -z fastapi-app 8000" for word in sorted(WRAPPERS | SHELLS)]
    scripts += [KEYWORD_SCRIPTS[word] for word in sorted(SHELL_KEYWORDS)]
    return [pod(f"word-{index}", init=[sh("probe", script), KAFKA_WAIT],
                containers=[app(env=list(IN_CLUSTER_ENV))],
                annotations={CASE_ANNOTATION: script})
            for index, script in enumerate(scripts)]


# Waiters whose port is given apart from their host, which in rewrite mode the policy removes
# instead of retargeting (docs/policy.md): pod name -> that init container. The second chart
# has one, and so has the grammar's pod for each tool that takes its port last.
PORT_APART_IN_REWRITE = {"chart-deployment-tracker": "wait-for-store"} | {
    pod["metadata"]["name"]: "probe" for pod in grammar_pods()
    if pod["metadata"]["annotations"][CASE_ANNOTATION].split()[1] in PORT_LAST_TOOLS
}


def service_pods(settings: Settings) -> list[dict[str, Any]]:
    """A waiter for each host of each managed service, bare and fully qualified."""
    pods = []
    for service in settings.services:
        for host in service.hosts:
            for form in (host, f"{host}.flts.svc.cluster.local"):
                pods.append(pod(
                    f"service-{service.name}-{len(pods)}",
                    init=[sh("probe", f"until nc -z {form} 1234; do sleep 1; done"), KAFKA_WAIT],
                    containers=[app(env=list(IN_CLUSTER_ENV))],
                    annotations={CASE_ANNOTATION: service.name}))
    return pods


def opt_out_pods() -> list[dict[str, Any]]:
    """The chart's waiter in a pod opted out by each spelling, as annotation and as label
    (label values cannot hold white space)."""
    chart_like = [sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"), KAFKA_WAIT]
    pods = []
    for value in sorted(OPT_OUT_VALUES):
        for spelling in (value, value.upper(), f" {value.title()} "):
            pods.append(pod(f"opt-out-{len(pods)}", init=chart_like,
                            containers=[app(env=list(IN_CLUSTER_ENV))],
                            annotations={INJECT_KEY: spelling, CASE_ANNOTATION: "opt-out"}))
        for spelling in (value, value.upper()):
            pods.append(pod(f"opt-out-{len(pods)}", init=chart_like,
                            containers=[app(env=list(IN_CLUSTER_ENV))],
                            annotations={CASE_ANNOTATION: "opt-out"},
                            labels={INJECT_KEY: spelling}))
    return pods



def chart_pods(cluster: Cluster) -> list[dict[str, Any]]:
    """A Pod for each pod template of the charts (as its controller would create it): the
    flts chart's, rendered with both the default values and values-complete.yaml, and the
    second chart."""
    pods: dict[str, dict[str, Any]] = {}
    for release, chart, values in (
        ("flts", CHART, []), ("flts", CHART, ["-f", str(CHART / "values-complete.yaml")]),
        ("shapes", SHAPES_CHART, []),
    ):
        rendered = cluster.helm("template", release, str(chart), *values)
        assert rendered.returncode == 0, rendered.stderr
        for document in yaml.safe_load_all(rendered.stdout):
            if not isinstance(document, dict) or document.get("kind") not in TEMPLATE_PATHS:
                continue
            template: Any = document
            for key in TEMPLATE_PATHS[document["kind"]]:
                template = template[key]
            name = f"chart-{document['kind'].lower()}-{document['metadata']['name']}"
            metadata = {"name": name, **{k: v for k, v in (template.get("metadata") or {}).items()
                                         if k in ("labels", "annotations")}}
            pods[name] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                          "spec": copy.deepcopy(template["spec"])}
    return list(pods.values())
