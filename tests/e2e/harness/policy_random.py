"""Random pods for the policy twin's e2e: the shapes readiness loops take, at random.

A grammar of waiters (probes, loops, separators, wrappers) with the awkward corners (quotes,
odd ports, redirections, ``$(``, backticks, Unicode spaces) mixed in, and random env,
annotations and labels around them; the same seed gives the same pods.
"""

from __future__ import annotations

import random
from typing import Any

from webhook.rules.mutate import INJECT_KEY, STATUS_KEY

from .policy_pods import BUSYBOX, app, pod

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
        containers = [app(f"app-{n}", env=_random_env(rng) if rng.random() < 0.8 else None)
                      for n in range(rng.randint(1, 2))]
        pods.append(pod(f"random-{index}", init=[_random_init(rng, n) for n in names],
                        containers=containers, annotations=annotations, labels=labels))
    return pods
