"""The MutatingAdmissionPolicy twin admits pods exactly as the webhook's rules would.

Proof through the real apiserver, field by field. For every case pod (the pod templates of
the seed-like chart, rendered with the harness's helm, and a set of edge pods) and for each
policy instance under test:

* the raw pod is created in a namespace bound to the policy, so the apiserver's defaulting
  and the CEL mutate it;
* the same raw pod is defaulted by a server-side dry run in a namespace no policy touches,
  handed to ``Rules`` (what the webhook runs), patched, and created there;

and the two stored pods are compared with only server-assigned fields left out (uid,
timestamps, resourceVersion, managedFields, status, namespace and the random suffix of the
service-account token volume). Both sides went through the same defaulting, so any difference
is a difference between the CEL and the Python rules.

Instances: the embedded default (remove, credentials as values, v1), rewrite mode (v1), and
secretKeyRef credentials with ``add_env_to: all`` through the v1beta1 API.

Besides the chart and the edge pods, the cases hold a pod for each word of the grammar in a
waiter, for each host form of each managed service, and for each spelling of the opt-out;
tests below check what these must show beyond equality (not vacuous).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jsonpatch
import pytest
import yaml

from webhook.inject import TEMPLATE_PATHS
from webhook.policy.objects import build_policy
from webhook.rules.grammar import (
    IDLE_COMMANDS,
    PORT_LAST_TOOLS,
    PROBE_COMMANDS,
    SHELL_KEYWORDS,
    SHELLS,
    WRAPPERS,
)
from webhook.rules.mutate import INJECT_KEY, OPT_OUT_VALUES, STATUS_KEY, Rules
from webhook.settings import Action, CredentialMode, EnvScope, Settings, load_settings

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parent / "chart"
# The second chart, with the waiter shapes public charts write (its README lists them).
SHAPES_CHART = Path(__file__).resolve().parent / "chart-shapes"
BUSYBOX = "busybox:1.35"
# Fields the apiserver assigns per object; everything else must be equal.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation",
                   "namespace", "selfLink")
TOKEN_VOLUME = re.compile(r"kube-api-access-[a-z0-9]+")


class Cluster(Protocol):
    """What this module needs of the harness's control plane."""

    def kubectl(self, *args: str, input: str | None = None,
                timeout: float = 120.0) -> Any: ...

    def helm(self, *args: str, input: str | None = None, timeout: float = 300.0) -> Any: ...


@dataclass(frozen=True)
class Instance:
    """One policy built from one configuration, bound to its own namespace."""

    name: str
    settings: Settings
    api_version: str
    # The namespace label value its binding selects. Not the generated "enabled", so that the
    # webhook, which other e2e tests of the session may install, never sees these namespaces.
    selector_value: str

    @property
    def policy_namespace(self) -> str:
        return f"{self.name}-policy"

    @property
    def plain_namespace(self) -> str:
        return f"{self.name}-webhook"


def _instances() -> list[Instance]:
    default = load_settings(environ={})
    rewrite = dataclasses.replace(default, action=Action.REWRITE)
    secret_ref = dataclasses.replace(
        default,
        credentials=dataclasses.replace(default.credentials, mode=CredentialMode.SECRET_KEY_REF),
        add_env_to=EnvScope.ALL,
    )
    return [
        Instance("bi-remove", default, "admissionregistration.k8s.io/v1", "e2e-remove"),
        Instance("bi-rewrite", rewrite, "admissionregistration.k8s.io/v1", "e2e-rewrite"),
        Instance("bi-secretref", secret_ref, "admissionregistration.k8s.io/v1beta1",
                 "e2e-secretref"),
    ]


INSTANCES = _instances()


# --- the case pods --------------------------------------------------------------------------


def _init(name: str, command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": BUSYBOX, **extra}
    if command is not None:
        container["command"] = command
    return container


def _sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return _init(name, ["sh", "-c", script], **extra)


def _app(name: str = "app", env: list[dict[str, Any]] | None = None,
         **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "flts/train:latest", **extra}
    if env is not None:
        container["env"] = env
    return container


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _pod(name: str, *, init: list[dict[str, Any]] | None = None,
         containers: list[dict[str, Any]] | None = None,
         annotations: dict[str, str] | None = None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    if labels:
        metadata["labels"] = labels
    spec: dict[str, Any] = {"containers": containers or [_app(env=[_env("MODEL_TYPE", "gru")])]}
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


IN_CLUSTER_ENV = [
    _env("MODEL_TYPE", "gru"),
    _env("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
    _env("MLFLOW_S3_ENDPOINT_URL", "http://minio:9000"),
    _env("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
    _env("AWS_ACCESS_KEY_ID", "minioadmin"),
    _env("AWS_SECRET_ACCESS_KEY", "minioadmin"),
]
KAFKA_WAIT = _sh("wait-for-kafka", "until nc -z kafka 9092; do sleep 2; done")
POD_NAMESPACE = {"name": "POD_NAMESPACE",
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}


def edge_pods() -> list[dict[str, Any]]:
    """Pods at the edges of the rules: opt-outs, env shapes, and many ways to wait."""
    waiters: dict[str, list[dict[str, Any]]] = {
        "exec-form": [_init("probe", ["nc", "-z", "mlflow", "5000"])],
        "exec-form-port-80": [_init("probe", ["nc", "-z", "fastapi-app", "80"])],
        "script-in-args": [_init("probe", ["/bin/sh", "-c"],
                                 args=["until nc -z mlflow 5000; do sleep 2; done"])],
        "args-only": [_init("probe", args=["sh", "-c",
                                           "until nc -z minio 9000; do sleep 1; done"])],
        "flags-ec": [_init("probe", ["sh", "-ec", "for i in $(seq 1 30); do nc -z fastapi 8000"
                                                  " && exit 0; sleep 1; done; exit 1"])],
        "dev-tcp": [_init("probe", ["bash", "-c", "until (echo > /dev/tcp/minio/9000) 2>&1;"
                                                  " do sleep 1; done"])],
        "dev-tcp-postgres": [_init("probe", ["bash", "-c", "until echo > /dev/tcp/postgres/5432;"
                                                           " do sleep 1; done &>/dev/null"])],
        "timeout-wrapper": [_sh("probe", "timeout 60 sh -c 'until nc -z mlflow 5000; do sleep 1;"
                                         " done'")],
        "wget-fqdn": [_sh("probe", "until wget -q -O- http://mlflow.flts.svc.cluster.local:5000"
                                   "/health; do sleep 1; done")],
        "curl-no-port": [_sh("probe", "until curl -sf http://fastapi-app/healthz; do sleep 1;"
                                      " done")],
        "curl-no-scheme": [_sh("probe", "until curl -sf minio.flts:9000/minio/health/live;"
                                        " do sleep 1; done")],
        "nslookup": [_sh("probe", "until nslookup mlflow.flts.svc; do sleep 2; done")],
        "pg-isready": [_sh("probe", "until pg_isready -h postgres -p 5432; do sleep 1; done")],
        "quoted-host": [_sh("probe", "until nc -z 'mlflow' \"5000\"; do sleep 2; done")],
        "multi-line": [_sh("probe", "echo waiting\nwhile ! nc -z -w 1 minio 9000\ndo\n  sleep 1\n"
                                    "done\necho up\n")],
        "background-and-wait": [_sh("probe", "nc -z mlflow 5000 & wait")],
        "two-managed": [_sh("probe", "until nc -z mlflow 5000 && nc -z minio 9000; do sleep 1;"
                                     " done")],
        "managed-and-postgres": [_sh("probe", "until nc -z mlflow 5000 && pg_isready -h postgres;"
                                              " do sleep 1; done")],
        # One word naming two services: both count, so the first pass decides (removed: postgres
        # has no external address; retargeted: both have one).
        "one-word-two-services": [_sh("probe", "until wget -q http://mlflow:5000/ready?db=postgres;"
                                               " do sleep 1; done")],
        "one-word-two-services-exec": [_init("probe", ["sh", "-e", "until wget -q"
                                                       " http://mlflow:5000/ready?db=postgres;"
                                                       " do sleep 1; done"])],
        "one-word-two-retargetable": [_sh("probe", "until curl -sf http://minio:9000/x?next=mlflow;"
                                                   " do sleep 1; done")],
        "managed-and-kafka": [_sh("probe", "until nc -z mlflow 5000 && nc -z kafka 9092; do sleep"
                                           " 1; done")],
        "wait-then-migrate": [_sh("migrate", "until nc -z mlflow 5000; do sleep 1; done;"
                                             " python migrate.py --uri http://mlflow:5000")],
        "postgres-then-migrate": [_sh("migrate", "until nc -z postgres 5432; do sleep 1; done;"
                                                 " alembic upgrade head")],
        "mentions-only": [_sh("migrate", "python migrate.py --tracking-uri http://mlflow:5000")],
        "not-a-service": [_sh("probe", "until nc -z mlflow.example.com 5000; do sleep 2; done"),
                          _sh("probe2", "until nc -z mlflowx 5000; do sleep 2; done")],
        "named-waits-kafka": [_sh("wait-for-fastapi", "until nc -z kafka 9092; do sleep 2; done")],
        "already-external": [_sh("wait-for-mlflow", "until nc -z host.docker.internal 5000;"
                                                    " do sleep 2; done")],
        "external-unnamed": [_sh("probe", "until nc -z host.docker.internal 5000; do sleep 2;"
                                          " done")],
        "all-removed": [_sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"),
                        _sh("wait-for-fastapi", "until nc -z fastapi-app 8000; do sleep 2;"
                                                " done")],
        "subshell-dollar": [_sh("probe", "until [ \"$(nc -z mlflow 5000 && echo ok)\" = ok ];"
                                         " do sleep 1; done")],
        "http-url-port-word": [_sh("probe", "until wget -qO- http://minio 9000; do sleep 1;"
                                            " done")],
        "host-port-slash": [_sh("probe", "until nc -z mlflow/5000; do sleep 1; done")],
        "kept-with-env": [_sh("wait-for-kafka-too", "until nc -z kafka 9092; do sleep 2; done",
                              env=[_env("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
                                   _env("OTHER", "x")])],
        # Shapes of the rules v2 that the policy follows exactly (docs/policy.md).
        "comments": [_sh("probe", "# the tracking server; then (the gateway)\n\n"
                                  "until nc -z mlflow 5000; do # not yet\n  sleep 2\ndone\n"
                                  "nc -z fastapi-app 8000 # mlflow:5000 in a comment")],
        "comment-then-work": [_sh("migrate", "until nc -z minio 9000; do sleep 1; done\n"
                                             "# make the bucket\nmc mb local/models")],
        "liveness-psql": [_sh("probe", "until psql -h postgres -c 'SELECT 1'; do sleep 1; done")],
        "liveness-psql-long": [_sh("probe", "until psql -h postgres --command='select 1;';"
                                            " do sleep 1; done")],
        "liveness-then-create": [_sh("create-db", "until pg_isready -h postgres; do sleep 1;"
                                                  " done; psql -h postgres -c 'CREATE DB m'")],
        "liveness-mysqladmin": [_sh("probe", "until mysqladmin ping -h mlflow --silent; do sleep"
                                             " 1; done")],
        "mysqladmin-create": [_sh("probe", "mysqladmin -h mlflow create runs")],
        "liveness-redis": [_sh("probe", "until redis-cli -h minio ping; do sleep 1; done")],
        "redis-flush": [_sh("probe", "until nc -z minio 9000; do sleep 1; done;"
                                     " redis-cli -h minio FLUSHALL")],
        "variable-namespace": [_sh("probe", "until nc -z minio.${POD_NAMESPACE}.svc 9000; do"
                                            " sleep 2; done", env=[POD_NAMESPACE])],
        "resolved-variable": [_sh("probe", 'until nc -z "$TRACKING_HOST" 5000; do sleep 1; done',
                                  env=[_env("TRACKING_HOST", "mlflow")])],
        "variables-in-a-word": [_sh("probe", "until nc -z $API_HOST:$API_PORT; do sleep 1; done",
                                    env=[_env("API_HOST", "fastapi-app"), _env("API_PORT", "80")])],
        "variable-host-and-port": [_sh("probe", 'until nc -z "${API_HOST}" "$API_PORT" -w $T;'
                                                " do sleep 1; done",
                                       env=[_env("API_HOST", "fastapi-app"),
                                            _env("API_PORT", "80"), _env("T", "a b")])],
        "variable-then-work": [_sh("migrate", 'until nc -z "$TRACKING_HOST" 5000; do sleep 1;'
                                              " done; alembic upgrade head",
                                   env=[_env("TRACKING_HOST", "mlflow")])],
        "kubelet-variable": [_init("probe", ["nc", "-z", "$(TRACKING_HOST)", "5000"],
                                   env=[_env("TRACKING_HOST", "mlflow")])],
        "kubelet-variable-script": [_sh("probe", "until nc -z $(TRACKING_HOST) 5000; do sleep 1;"
                                                 " done", env=[_env("TRACKING_HOST", "minio")])],
        "kubelet-escape": [_sh("probe", "until nc -z $$(TRACKING_HOST) 5000; do sleep 1; done",
                               env=[_env("TRACKING_HOST", "mlflow")])],
        "kubelet-undefined": [_init("probe", ["nc", "-z", "$(NOT_SET)", "5000"])],
        "default-variable": [_sh("probe", "until pg_isready -h ${DB_HOST:-postgres}; do sleep 1;"
                                          " done")],
        "unresolved-variable": [_sh("probe", "until nc -z mlflow 5000 && nc -z $BROKER 9092;"
                                             " do sleep 1; done")],
        "dockerize": [_init("probe", ["dockerize", "-wait", "tcp://minio:9000", "-wait",
                                      "http://fastapi-app:8000/health", "-timeout", "60s"])],
        "wait-for-it-bare": [_init("probe", ["wait-for-it.sh", "mlflow:5000", "-t", "60"])],
        "dockerize-template": [_init("render", ["dockerize", "-template", "/t:/etc/app.conf",
                                                "-wait", "tcp://mlflow:5000"])],
        "kubectl-wait": [_sh("probe", "kubectl wait --for=condition=ready pod -l app=mlflow")],
        "env-in-init": [_sh("migrate", "alembic upgrade head",
                            env=[_env("TRACKING", "http://mlflow:5000/api"),
                                 _env("DATABASE_URL", "postgresql://u@postgres:5432/db")])],
    }
    pods = [
        _pod(f"wait-{case}", init=init + ([] if case == "all-removed" else [KAFKA_WAIT]),
             containers=[_app(env=list(IN_CLUSTER_ENV))])
        for case, init in waiters.items()
    ]
    chart_like = [_sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"), KAFKA_WAIT]
    pods += [
        _pod("opt-out-annotation", init=chart_like, annotations={INJECT_KEY: "false"}),
        _pod("opt-out-label", init=chart_like, labels={INJECT_KEY: "false"}),
        _pod("opt-out-spelling", init=chart_like, annotations={INJECT_KEY: " Off "}),
        _pod("opt-in-explicit", init=chart_like, annotations={INJECT_KEY: "true"}),
        _pod("no-env", init=chart_like, containers=[_app()]),
        _pod("no-init", containers=[_app(env=list(IN_CLUSTER_ENV))]),
        _pod("duplicate-env", containers=[_app(env=[
            _env("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
            _env("AWS_ACCESS_KEY_ID", "a"),
            _env("MODEL_TYPE", "gru"),
            _env("MLFLOW_TRACKING_URI", "http://other:5000"),
            _env("AWS_ACCESS_KEY_ID", "b"),
            _env("AWS_ACCESS_KEY_ID", "c"),
        ])]),
        _pod("value-from", containers=[_app(env=[
            {"name": "AWS_ACCESS_KEY_ID",
             "valueFrom": {"secretKeyRef": {"name": "minio", "key": "user"}}},
            {"name": "MLFLOW_TRACKING_URI",
             "valueFrom": {"configMapKeyRef": {"name": "urls", "key": "mlflow"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            _env("DERIVED", "$(MLFLOW_TRACKING_URI)/api"),
        ])]),
        _pod("several-containers", init=chart_like, containers=[
            _app("trainer", env=list(IN_CLUSTER_ENV)),
            _app("exporter", env=[_env("GATEWAY_URL", "http://fastapi-app:8000")]),
            _app("bare"),
        ]),
        _pod("native-sidecar", init=[
            _sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"),
            _init("log-shipper", ["sh", "-c", "tail -f /dev/null"], restartPolicy="Always",
                  env=[_env("MLFLOW_TRACKING_URI", "http://mlflow:5000")]),
            _init("bare-sidecar", ["sh", "-c", "tail -f /dev/null"], restartPolicy="Always"),
        ], containers=[_app(env=list(IN_CLUSTER_ENV))]),
        _pod("earlier-status", init=chart_like, annotations={
            STATUS_KEY: '{"removed":["wait-for-old"],"rewritten":[],"env":["GATEWAY_URL"]}',
        }, containers=[_app(env=list(IN_CLUSTER_ENV))]),
        _pod("foreign-status", init=chart_like, annotations={STATUS_KEY: "not json"}),
        # Env only where it belongs: a broker beside a trainer gets nothing, a gateway variable
        # of another name is retargeted, a database URL of postgres left, a dashboard that
        # waits for kafka only left alone.
        _pod("env-broker-beside-trainer", containers=[
            _app("trainer", env=list(IN_CLUSTER_ENV)),
            _app("kafka", env=[_env("KAFKA_CFG_ADVERTISED_LISTENERS", "PLAINTEXT://kafka:9092")]),
        ]),
        _pod("env-gateway-other-name", containers=[_app("inference", env=[
            _env("FASTAPI_URL", "http://fastapi-app:8000/api"), _env("LOG_LEVEL", "info")])]),
        _pod("env-address-list", containers=[_app("exporter", env=[
            _env("TARGETS", "kafka:9092,mlflow:5000,http://u@minio/bucket?x=mlflow")])]),
        _pod("env-postgres-url", containers=[_app("eval", env=[
            _env("DATABASE_URL", "postgresql://mlflow@postgres:5432/mlflow")])]),
        _pod("env-not-used", init=[KAFKA_WAIT], containers=[_app("dashboard")]),
        _pod("env-host-in-args", containers=[_app("client", args=["--tracking", "mlflow:5000"])]),
        _pod("env-waited-by-status", containers=[_app("late")], annotations={
            STATUS_KEY: '{"removed":["wait-for-mlflow"],"rewritten":[],"env":[]}'}),
    ]
    return pods


# A marker of what a case pod tests, carried on both sides (so it is compared too).
CASE_ANNOTATION = "e2e/case"


def grammar_pods() -> list[dict[str, Any]]:
    """A waiter for each word of the grammar: each probe command and wait tool probing a
    managed host, each idle command in a readiness loop, each wrapper and shell in front of a
    probe, each shell keyword before one."""
    scripts = [f"until {word} mlflow 5000; do sleep 1; done" for word in sorted(PROBE_COMMANDS)]
    scripts += [f"until nc -z minio 9000; do {word} 1; done" for word in sorted(IDLE_COMMANDS)]
    scripts += [f"{word} 5 nc -z fastapi-app 8000" for word in sorted(WRAPPERS | SHELLS)]
    scripts += [f"{word} nc -z fastapi 8000" for word in sorted(SHELL_KEYWORDS)]
    return [_pod(f"word-{index}", init=[_sh("probe", script), KAFKA_WAIT],
                 containers=[_app(env=list(IN_CLUSTER_ENV))],
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
                pods.append(_pod(
                    f"service-{service.name}-{len(pods)}",
                    init=[_sh("probe", f"until nc -z {form} 1234; do sleep 1; done"), KAFKA_WAIT],
                    containers=[_app(env=list(IN_CLUSTER_ENV))],
                    annotations={CASE_ANNOTATION: service.name}))
    return pods


def opt_out_pods() -> list[dict[str, Any]]:
    """The chart's waiter in a pod opted out by each spelling, as annotation and as label
    (label values cannot hold white space)."""
    chart_like = [_sh("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"), KAFKA_WAIT]
    pods = []
    for value in sorted(OPT_OUT_VALUES):
        for spelling in (value, value.upper(), f" {value.title()} "):
            pods.append(_pod(f"opt-out-{len(pods)}", init=chart_like,
                             containers=[_app(env=list(IN_CLUSTER_ENV))],
                             annotations={INJECT_KEY: spelling, CASE_ANNOTATION: "opt-out"}))
        for spelling in (value, value.upper()):
            pods.append(_pod(f"opt-out-{len(pods)}", init=chart_like,
                             containers=[_app(env=list(IN_CLUSTER_ENV))],
                             annotations={CASE_ANNOTATION: "opt-out"},
                             labels={INJECT_KEY: spelling}))
    return pods


# Random pods: a grammar of the shapes readiness loops take, with the awkward corners
# (quotes, odd ports, redirections, `$(`, backticks, Unicode spaces) mixed in.
_HOSTS = ("mlflow", "mlflow.flts", "mlflow.flts.svc", "mlflow.flts.svc.cluster.local", "minio",
          "fastapi-app", "fastapi", "postgres", "kafka", "host.docker.internal",
          "HOST.DOCKER.INTERNAL", "mlflowx", "x-mlflow", "mlflow.", "mlflow.NS", "mlflow-db",
          "'mlflow'", '"minio"', "10.0.0.1", "$HOST", "mlflow.flts.other")
_PORTS = ("", ":5000", ":80", "/5000", " 5000", " 9000", "\t8000", ":123456", " 80x", "/",
          " 5000/", ":${MLFLOW_PORT}", "/$MINIO_PORT", ":$PORT}", ":${1}")
_SEPARATORS = ("; ", " && ", " || ", " | ", " & ", "\n", " ;", "&&", "\u00a0;\u00a0")
_IDLE_OR_WORK = ("sleep 2", "echo waiting for mlflow", "true", ":", "exit 1", "X=1", "[ -f /x ]",
                 "date", "printf ok", "cat /etc/hosts", "ls /data", "alembic upgrade head",
                 "python migrate.py --uri http://mlflow:5000", "mc alias set m http://minio:9000",
                 ">/tmp/x", "2>&1")


def _random_probe(rng: random.Random) -> str:
    host, port = rng.choice(_HOSTS), rng.choice(_PORTS)
    return rng.choice((
        f"nc -z {host}{port}", f"nc -zv -w 1 {host}{port}", f"wget -q -O- http://{host}{port}/h",
        f"curl -sf {host}{port}", f"curl -sf https://user@{host}{port}/x",
        f"echo > /dev/tcp/{host}/5000", f"pg_isready -h {host}", f"nslookup {host}",
        f"timeout 5 nc -z {host}{port}", f"env X=1 nc -z {host}{port}", f"busybox nc {host}{port}",
        f"/usr/bin/nc -z {host}{port}", f"nc -z {host}{port} 2>&1", f"nc -z {host}{port} >&2",
        f"nc -z {host}{port} >/dev/null 2>&1", f"nc -z {host}{port} &>/dev/null",
    ))


def _random_script(rng: random.Random) -> str:
    body = _random_probe(rng)
    for _ in range(rng.randint(0, 3)):
        step = _random_probe(rng) if rng.random() < 0.6 else rng.choice(_IDLE_OR_WORK)
        body += rng.choice(_SEPARATORS) + step
    return rng.choice((
        "{}", "until {}; do sleep 2; done", "while ! {}; do sleep 1; done",
        "for i in $(seq 1 30); do {} && exit 0; sleep 1; done; exit 1",
        'until [ "$({})" ]; do sleep 1; done', "until `{}`; do sleep 1; done", "( {} ) || exit 1",
    )).format(body)


def _random_init(rng: random.Random, name: str) -> dict[str, Any]:
    shape = rng.random()
    if shape < 0.55:
        flag = rng.choice(("-c", "-ec", "-xc", "-c", "-e"))  # `-e` alone: not a script at all
        program = {"command": [rng.choice(("sh", "/bin/sh", "bash", "ash")), flag,
                               _random_script(rng)]}
    elif shape < 0.7:
        program = {"command": ["sh", "-c"], "args": [_random_script(rng)]}
    elif shape < 0.85:
        program = {"command": _random_probe(rng).split()}
    else:
        program = {"args": _random_probe(rng).split()}
    container: dict[str, Any] = {"name": name, "image": BUSYBOX, **program}
    if rng.random() < 0.15:
        container["restartPolicy"] = "Always"
    if rng.random() < 0.3:
        container["env"] = _random_env(rng)
    return container


_ENV_NAMES = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "GATEWAY_URL", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "MODEL_TYPE", "KAFKA_BOOTSTRAP_SERVERS")
_ENV_VALUES: tuple[dict[str, Any], ...] = (
    {"value": "http://mlflow:5000"}, {"value": "http://host.docker.internal:5000"},
    {"value": "minioadmin"}, {"value": "x"},
    {"valueFrom": {"secretKeyRef": {"name": "backend-injector-credentials",
                                    "key": "access-key-id"}}},
    {"valueFrom": {"secretKeyRef": {"name": "minio", "key": "user"}}},
    {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
)


def _random_env(rng: random.Random) -> list[dict[str, Any]]:
    return [{"name": rng.choice(_ENV_NAMES), **rng.choice(_ENV_VALUES)}
            for _ in range(rng.randint(0, 6))]


def random_pods(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pods = []
    for index in range(count):
        names = rng.sample(("wait-for-mlflow", "wait-for-fastapi", "probe", "init", "migrate",
                            "sidecar"), rng.randint(0, 3))
        annotations = rng.choice((
            {}, {}, {INJECT_KEY: "false"}, {INJECT_KEY: " No"}, {INJECT_KEY: "enabled"},
            {STATUS_KEY: '{"removed":["old"],"rewritten":[],"env":["GATEWAY_URL"]}'},
            {STATUS_KEY: "[]"}, {"other": "x"},
        ))
        labels = rng.choice(({}, {}, {}, {INJECT_KEY: "false"}, {INJECT_KEY: "off"}))
        containers = [_app(f"app-{n}", env=_random_env(rng) if rng.random() < 0.8 else None)
                      for n in range(rng.randint(1, 2))]
        pods.append(_pod(f"random-{index}", init=[_random_init(rng, n) for n in names],
                         containers=containers, annotations=annotations, labels=labels))
    return pods


def chart_pods(cluster: Cluster) -> list[dict[str, Any]]:
    """A Pod for each pod template of the charts (as its controller would create it): the
    seed's, rendered with both the default values and values-complete.yaml, and the second
    chart."""
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


# --- talking to the apiserver --------------------------------------------------------------


def _kubectl_json(cluster: Cluster, *args: str, input: str | None = None) -> Any:
    """kubectl's output as JSON; several objects (a created List) come back as a List."""
    result = cluster.kubectl(*args, "-o", "json", input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    decoder, text, position, objects = json.JSONDecoder(), result.stdout, 0, []
    while text[position:].strip():
        obj, end = decoder.raw_decode(text, position)
        objects.append(obj)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return objects[0] if len(objects) == 1 else {"kind": "List", "items": objects}


def _as_list(pods: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})


def _items(created: Any) -> list[dict[str, Any]]:
    return list(created["items"]) if created.get("kind") == "List" else [created]


def create_pods(cluster: Cluster, namespace: str, pods: list[dict[str, Any]],
                *, dry_run: bool = False) -> dict[str, dict[str, Any]]:
    """Create ``pods`` in ``namespace`` in one request per pod (kubectl batches them); return
    the stored (or, with ``dry_run``, the would-be stored) pods by name."""
    args = ["create", "-n", namespace, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    created = _kubectl_json(cluster, *args, input=_as_list(pods))
    return {pod["metadata"]["name"]: pod for pod in _items(created)}


def webhook_pod(defaulted: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """What the webhook makes of a pod as the apiserver hands it over (defaulted), ready to
    be created again: its patch applied, server-assigned fields dropped."""
    pod = copy.deepcopy(defaulted)
    pod.pop("status", None)
    for key in SERVER_METADATA:
        pod["metadata"].pop(key, None)
    mutation = rules.mutate_pod(pod)
    return jsonpatch.apply_patch(pod, mutation.operations) if mutation.changed else pod


def normalized(pod: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored pod that admission decides, with per-object noise removed."""
    metadata = {k: v for k, v in pod["metadata"].items() if k not in SERVER_METADATA}
    text = TOKEN_VOLUME.sub("kube-api-access-X", json.dumps(pod["spec"], sort_keys=True))
    return {"metadata": metadata, "spec": json.loads(text)}


def differences(left: dict[str, Any], right: dict[str, Any]) -> str:
    a = json.dumps(left, indent=1, sort_keys=True).splitlines()
    b = json.dumps(right, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "webhook rules", "policy", lineterm="", n=2))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def install(cluster: Cluster, instance: Instance) -> None:
    """The instance's policy and binding, its two namespaces, and (for secretKeyRef) the
    Secret; returns once the apiserver enforces the policy."""
    policy, binding = build_policy(instance.settings, api_version=instance.api_version,
                                   name=instance.name)
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector[0] == {"key": INJECT_KEY, "operator": "In", "values": ["enabled"]}
    selector[0]["values"] = [instance.selector_value]
    for namespace, labels in ((instance.policy_namespace, {INJECT_KEY: instance.selector_value}),
                              (instance.plain_namespace, {})):
        _kubectl_json(cluster, "create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels}}))
    _kubectl_json(cluster, "create", "-f", "-", input=_as_list([policy, binding]))
    probe = _pod("policy-ready", init=[_sh("wait-for-mlflow", "nc -z mlflow 5000")])

    def enforced() -> bool:
        result = cluster.kubectl("create", "-n", instance.policy_namespace, "-f", "-",
                                 "--dry-run=server", "-o", "json", input=json.dumps(probe))
        return result.returncode == 0 and STATUS_KEY in json.loads(result.stdout)[
            "metadata"].get("annotations", {})

    wait_until(enforced, f"policy {instance.name} to be enforced")


@dataclass
class Comparison:
    """Stored pods of one instance, by name: through the policy and through the rules."""

    instance: Instance
    policy: dict[str, dict[str, Any]]
    webhook: dict[str, dict[str, Any]]
    raw: dict[str, dict[str, Any]]


def compare(cluster: Cluster, instance: Instance, pods: list[dict[str, Any]]) -> Comparison:
    rules = Rules(instance.settings)
    through_policy = create_pods(cluster, instance.policy_namespace, pods)
    defaulted = create_pods(cluster, instance.plain_namespace, pods, dry_run=True)
    expected = [webhook_pod(defaulted[pod["metadata"]["name"]], rules) for pod in pods]
    through_rules = create_pods(cluster, instance.plain_namespace, expected)
    return Comparison(instance, through_policy, through_rules,
                      {pod["metadata"]["name"]: pod for pod in pods})


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(control_plane: Cluster) -> list[dict[str, Any]]:
    return (chart_pods(control_plane) + edge_pods() + grammar_pods()
            + service_pods(INSTANCES[0].settings) + opt_out_pods())


@pytest.fixture(scope="module")
def comparisons(control_plane: Cluster,
                cases: list[dict[str, Any]]) -> Iterator[dict[str, Comparison]]:
    for instance in INSTANCES:
        install(control_plane, instance)
    yield {instance.name: compare(control_plane, instance, cases) for instance in INSTANCES}
    for instance in INSTANCES:
        control_plane.kubectl("delete", "mutatingadmissionpolicybinding,mutatingadmissionpolicy",
                              instance.name, "--ignore-not-found")
        control_plane.kubectl("delete", "namespace", instance.policy_namespace,
                              instance.plain_namespace, "--wait=false", "--ignore-not-found")


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_policy_and_webhook_rules_store_the_same_pods(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    comparison = comparisons[instance.name]
    assert set(comparison.policy) == set(comparison.webhook) == set(comparison.raw)
    assert set(PORT_APART_IN_REWRITE) <= set(comparison.raw)

    def expected(name: str) -> dict[str, Any]:
        pod = normalized(comparison.webhook[name])
        if instance.settings.action is Action.REWRITE and name in PORT_APART_IN_REWRITE:
            pod = removed_instead(pod, PORT_APART_IN_REWRITE[name])
        return pod

    unequal = {
        name: differences(expected(name), normalized(pod))
        for name, pod in comparison.policy.items()
        if normalized(pod) != expected(name)
    }
    assert not unequal, "\n\n".join(f"== {name}\n{diff}" for name, diff in unequal.items())


def removed_instead(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """``pod`` with init container ``name`` removed rather than retargeted, status and all."""
    pod = copy.deepcopy(pod)
    pod["spec"]["initContainers"] = [c for c in pod["spec"]["initContainers"]
                                     if c["name"] != name]
    annotations = pod["metadata"]["annotations"]
    status = json.loads(annotations[STATUS_KEY])
    assert name in status["rewritten"], status
    status["rewritten"].remove(name)
    status["removed"].append(name)
    annotations[STATUS_KEY] = json.dumps(status, separators=(",", ":"))
    return pod


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_the_comparison_is_not_vacuous(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Most cases are changed, and the chart's trainers lose their wait-for-mlflow."""
    comparison = comparisons[instance.name]
    changed = [name for name, pod in comparison.policy.items()
               if STATUS_KEY in pod["metadata"].get("annotations", {})]
    assert len(changed) > len(comparison.policy) * 2 // 3
    trainer = comparison.policy["chart-deployment-train-gru"]
    names = [c["name"] for c in trainer["spec"].get("initContainers", [])]
    if instance.settings.action is Action.REMOVE:
        assert names == ["wait-for-kafka"]
    else:
        assert "wait-for-mlflow" in names
        assert "host.docker.internal" in json.dumps(trainer["spec"]["initContainers"])
    for name in ("opt-out-annotation", "opt-out-label", "opt-out-spelling"):
        assert STATUS_KEY not in comparison.policy[name]["metadata"].get("annotations", {})


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_a_second_pass_changes_nothing(
    control_plane: Cluster, comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Pods that the policy already mutated, created again through it, come out unchanged:
    the CEL guards every operation on equality, so reinvocation is a no-op."""
    comparison = comparisons[instance.name]
    again = []
    for name, pod in comparison.policy.items():
        copy_of = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {k: v for k, v in pod["metadata"].items()
                                if k in ("labels", "annotations")} | {"name": f"again-{name}"},
                   "spec": copy.deepcopy(pod["spec"])}
        again.append(copy_of)
    stored = create_pods(control_plane, instance.policy_namespace, again)
    rules = Rules(instance.settings)
    assert not [name for name, pod in comparison.policy.items() if rules.mutate_pod(pod).changed]
    changed = {}
    for name, pod in comparison.policy.items():
        first, second = normalized(pod), normalized(stored[f"again-{name}"])
        second["metadata"]["name"] = name
        if first != second:
            changed[name] = differences(first, second)
    assert not changed, "\n\n".join(f"== {name}\n{diff}" for name, diff in changed.items())


def _status(pod: dict[str, Any]) -> dict[str, list[str]]:
    status: dict[str, list[str]] = json.loads(pod["metadata"]["annotations"][STATUS_KEY])
    return status


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_every_opt_out_spelling_leaves_the_pod_alone(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    comparison = comparisons[instance.name]
    opted_out = [name for name, pod in comparison.raw.items()
                 if pod["metadata"].get("annotations", {}).get(CASE_ANNOTATION) == "opt-out"]
    assert len(opted_out) == len(OPT_OUT_VALUES) * 5
    for name in opted_out:
        stored = comparison.policy[name]
        assert STATUS_KEY not in stored["metadata"]["annotations"], name
        assert [c["name"] for c in stored["spec"]["initContainers"]] == [
            "wait-for-mlflow", "wait-for-kafka"], name
        assert stored["spec"]["containers"][0]["env"] == IN_CLUSTER_ENV, name


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_every_service_is_recognised_in_each_host_form(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Each managed service's waiter is removed, or in rewrite mode retargeted at the
    external address (removed when the service has none), whichever host form names it."""
    comparison = comparisons[instance.name]
    services = {service.name: service for service in instance.settings.services}
    checked = set()
    for name, raw in comparison.raw.items():
        service = services.get(raw["metadata"].get("annotations", {}).get(CASE_ANNOTATION, ""))
        if service is None or not name.startswith("service-"):
            continue
        checked.add(service.name)
        stored = comparison.policy[name]
        status = _status(stored)
        kept = {c["name"]: c for c in stored["spec"]["initContainers"]}
        if instance.settings.action is Action.REMOVE or service.external is None:
            assert "probe" in status["removed"] and "probe" not in kept, name
        else:
            assert "probe" in status["rewritten"], name
            assert f"{service.external.host} {service.external.port}" in kept["probe"][
                "command"][2], name
    assert checked == set(services)


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_an_earlier_status_is_merged_not_overwritten(
    comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """The names of an earlier status come first and stay; this pass's are added once."""
    earlier = json.loads(comparisons[instance.name].raw["earlier-status"]["metadata"][
        "annotations"][STATUS_KEY])
    status = _status(comparisons[instance.name].policy["earlier-status"])
    for key, names in status.items():
        assert names[:len(earlier[key])] == earlier[key], key
        assert len(names) == len(set(names)), key
    assert len(status["removed"]) + len(status["rewritten"]) > 1
    assert len(status["env"]) > len(earlier["env"])


def test_excluded_namespaces_are_never_mutated(control_plane: Cluster,
                                               comparisons: dict[str, Comparison]) -> None:
    """A namespace on the excluded list is left alone even when labelled to opt in."""
    instance = INSTANCES[0]
    excluded = sorted(instance.settings.excluded_namespaces - {"kube-system", "kube-public",
                                                              "kube-node-lease"})[0]
    _kubectl_json(control_plane, "create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": excluded, "labels": {INJECT_KEY: instance.selector_value}}}))
    try:
        pod = _pod("untouched", init=[_sh("wait-for-mlflow", "nc -z mlflow 5000")])
        stored = create_pods(control_plane, excluded, [pod], dry_run=True)["untouched"]
        assert STATUS_KEY not in stored["metadata"].get("annotations", {})
        assert stored["spec"]["initContainers"][0]["name"] == "wait-for-mlflow"
    finally:
        control_plane.kubectl("delete", "namespace", excluded, "--wait=false")


def test_only_create_is_mutated(control_plane: Cluster,
                                comparisons: dict[str, Comparison]) -> None:
    """A pod stored before its namespace opted in is not touched by a later UPDATE (had the
    policy matched UPDATE, it would change the immutable spec and the update would fail)."""
    namespace, name = "bi-update", "stored-before"
    _kubectl_json(control_plane, "create", "namespace", namespace)
    try:
        pod = _pod(name, init=[_sh("wait-for-mlflow", "nc -z mlflow 5000")],
                   containers=[_app(env=list(IN_CLUSTER_ENV))])
        before = create_pods(control_plane, namespace, [pod])[name]
        _kubectl_json(control_plane, "label", "namespace", namespace,
                      f"{INJECT_KEY}={INSTANCES[0].selector_value}")
        time.sleep(2)  # the policy's namespace cache follows the label
        after = _kubectl_json(control_plane, "label", "pod", "-n", namespace, name,
                              "e2e/updated=yes")
        assert after["spec"] == before["spec"]
        assert STATUS_KEY not in after["metadata"].get("annotations", {})
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


RANDOM_SEED = int(os.environ.get("BACKEND_INJECTOR_E2E_SEED", "20261126"))
RANDOM_COUNT = 300


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_random_pods_follow_the_rules_step_for_step(
    control_plane: Cluster, comparisons: dict[str, Comparison], instance: Instance
) -> None:
    """Random pods (server-side dry runs): the policy stores what the rules give when applied
    as the apiserver applies a policy, that is once and, since the first pass changed the pod
    and reinvocationPolicy is IfNeeded, once more on the result.

    Where the rules are idempotent that is exactly the webhook's pod. Where they are not (a
    bug in the rules, not in the CEL), the policy and the webhook differ; how often is
    reported as a warning.
    """
    rules = Rules(instance.settings)
    pods = random_pods(RANDOM_SEED, RANDOM_COUNT)
    through_policy = create_pods(control_plane, instance.policy_namespace, pods, dry_run=True)
    defaulted = create_pods(control_plane, instance.plain_namespace, pods, dry_run=True)
    unequal, not_idempotent = {}, []
    for pod in pods:
        name = pod["metadata"]["name"]
        once = webhook_pod(defaulted[name], rules)
        twice = webhook_pod(once, rules)
        if normalized(twice) != normalized(once):
            not_idempotent.append(name)
        if normalized(twice) != normalized(through_policy[name]):
            unequal[name] = differences(normalized(twice), normalized(through_policy[name]))
    assert not unequal, f"seed {RANDOM_SEED}:\n" + "\n\n".join(
        f"== {name}: {json.dumps(next(p for p in pods if p['metadata']['name'] == name))}\n{diff}"
        for name, diff in unequal.items()
    )
    if not_idempotent:
        warnings.warn(
            f"{instance.name}: the rules are not idempotent on {len(not_idempotent)} of"
            f" {RANDOM_COUNT} random pods (seed {RANDOM_SEED}), so there the policy (applied"
            f" twice by the apiserver) and the webhook differ: {', '.join(not_idempotent[:8])}",
            stacklevel=1,
        )


def test_variable_ports_and_quoted_hosts_are_idempotent(
    control_plane: Cluster, comparisons: dict[str, Comparison]
) -> None:
    """Once a known difference: in rewrite mode a named waiter probing `mlflow:${MLFLOW_PORT}`
    was retargeted by a first pass (to `...:5000:${MLFLOW_PORT}`) and removed by a second,
    which the policy, run twice by the apiserver, did and the webhook did not. The rules now
    replace a variable port and find the external host inside quotes, so a second pass keeps
    the waiter, and the policy stores what the webhook does."""
    instance = next(i for i in INSTANCES if i.settings.action is Action.REWRITE)
    rules = Rules(instance.settings)
    waiters = {
        "wait-for-mlflow": ("until curl -sf http://mlflow:${MLFLOW_PORT}/health; do sleep 2;"
                            " done"),
        "wait-for-fastapi": 'until nc -z "fastapi"/$FASTAPI_PORT; do sleep 2; done',
    }
    pod = _pod("port-variable",
               init=[_sh(name, script) for name, script in waiters.items()] + [KAFKA_WAIT],
               containers=[_app(env=list(IN_CLUSTER_ENV))])
    through_policy = create_pods(control_plane, instance.policy_namespace, [pod],
                                 dry_run=True)["port-variable"]
    defaulted = create_pods(control_plane, instance.plain_namespace, [pod],
                            dry_run=True)["port-variable"]
    once = webhook_pod(defaulted, rules)
    twice = webhook_pod(once, rules)
    assert [c["name"] for c in once["spec"]["initContainers"]] == [
        "wait-for-mlflow", "wait-for-fastapi", "wait-for-kafka"]
    scripts = [c["command"][2] for c in once["spec"]["initContainers"][:2]]
    assert scripts == [
        "until curl -sf http://host.docker.internal:5000/health; do sleep 2; done",
        # The quote stands between host and port, so the port is not the host's: kept as is.
        'until nc -z "host.docker.internal"/$FASTAPI_PORT; do sleep 2; done',
    ]
    assert normalized(twice) == normalized(once)
    assert normalized(through_policy) == normalized(once)


# Shapes the webhook reads and the policy does not follow, with what docs/policy.md says the
# policy does instead: "kept" (the init container exactly as written), "removed", "retargeted"
# (kept, its probe pointed at the external address) or "same" (the webhook's pod), for remove
# and rewrite mode.
DEGRADED: dict[str, tuple[dict[str, Any], dict[Action, str]]] = {
    "computed-namespace": (_sh("probe", "until nslookup mlflow.$(cat /var/run/secrets/"
                                        "kubernetes.io/serviceaccount/namespace).svc.cluster.local;"
                                        " do sleep 2; done"),
                           {Action.REMOVE: "kept", Action.REWRITE: "kept"}),
    "wait-tool-command": (_init("probe", ["wait-for-it", "mlflow:5000", "--", "echo", "up"]),
                          {Action.REMOVE: "kept", Action.REWRITE: "kept"}),
    "port-apart": (_init("probe", ["wait-for-port", "--host=fastapi-app", "--state=inuse", "80"]),
                   {Action.REMOVE: "same", Action.REWRITE: "removed"}),
}


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda instance: instance.name)
def test_the_policy_degrades_as_documented_where_it_does_not_follow(
    control_plane: Cluster, comparisons: dict[str, Comparison], instance: Instance
) -> None:
    rules = Rules(instance.settings)
    pods = [_pod(f"degraded-{name}", init=[container],
                 containers=[_app(env=list(IN_CLUSTER_ENV))])
            for name, (container, _) in DEGRADED.items()]
    through_policy = create_pods(control_plane, instance.policy_namespace, pods, dry_run=True)
    defaulted = create_pods(control_plane, instance.plain_namespace, pods, dry_run=True)
    wrong = {}
    for name, (container, expected) in DEGRADED.items():
        pod_name = f"degraded-{name}"
        policy_pod = through_policy[pod_name]
        webhook = webhook_pod(defaulted[pod_name], rules)
        outcome = expected[instance.settings.action]
        stored = {c["name"]: c for c in policy_pod["spec"].get("initContainers", [])}
        program = stored["probe"].get("command", []) + stored["probe"].get("args", []) \
            if "probe" in stored else None
        written = container.get("command", []) + container.get("args", [])
        if outcome == "same":
            ok = normalized(webhook) == normalized(policy_pod)
        elif outcome == "removed":
            ok = program is None
        elif outcome == "kept":
            ok = program == written
        else:
            ok = program is not None and "host.docker.internal" in " ".join(program)
        # A degradation is a difference from the webhook, or it would not need documenting.
        real = outcome == "same" or normalized(webhook) != normalized(policy_pod)
        if not (ok and real):
            wrong[name] = f"expected {outcome}; policy stored {program}"
    assert not wrong, wrong
