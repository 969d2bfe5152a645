"""Random pods for the policy twin's e2e: the shapes readiness loops take, at random.

A grammar of waiters (probes, loops, separators, wrappers) with the awkward corners (quotes,
odd ports, redirections, ``$(``, backticks, continuation lines, a Unicode space between a
host and its port) mixed in, work beside them (URLs in commands, files written, HTTP calls
that send, probe tools installed, output filtered), app containers whose programs name the
services, and random env, annotations and labels around them; the same start of the random
generator gives the same pods.

Every script is valid shell of the kind both twins read (the webhook with a shell parser, the
policy by separators): the shapes the policy does not follow (functions, script variables,
nested command strings) are left to the degraded cases of the e2e test.
"""

from __future__ import annotations

import random
from typing import Any

from webhook.rules.mutate import INJECT_KEY, STATUS_KEY

from .policy_pods import BUSYBOX, app, pod

# Random pods: a grammar of the shapes readiness loops take, with the awkward corners
# (quotes, odd ports, redirections, `$(`, backticks, continuations) mixed in.
_HOSTS = ("mlflow", "mlflow.flts", "mlflow.flts.svc", "mlflow.flts.svc.cluster.local", "minio",
          "fastapi-app", "fastapi", "postgres", "kafka", "host.docker.internal",
          "HOST.DOCKER.INTERNAL", "mlflowx", "x-mlflow", "mlflow.", "mlflow.NS", "mlflow-db",
          "'mlflow'", '"minio"', "10.0.0.1", "$HOST", "mlflow.flts.other")
# A no-break space is no separator to the shell: `mlflow\u00a05000` is one word, whose host both
# twins read as `mlflow` followed by the port.
_PORTS = ("", ":5000", ":80", "/5000", " 5000", " 9000", "\t8000", ":123456", " 80x", "/",
          " 5000/", ":${MLFLOW_PORT}", "/$MINIO_PORT", ":$PORT", ":${1}", " \\\n 5000",
          "\u00a09000")
_SEPARATORS = ("; ", " && ", " || ", " | ", " & ", "\n", " ;", "&&", " \\\n&& ")
_IDLE_OR_WORK = ("sleep 2", "echo waiting for mlflow", "true", ":", "exit 1", "X=1", "[ -f /x ]",
                 "date", "printf ok", "cat /etc/hosts", "ls /data", "alembic upgrade head",
                 "python migrate.py --uri http://mlflow:5000", "mc alias set m http://minio:9000",
                 ">/tmp/x", "2>&1", "echo ok > /shared/ready", "date >>/tmp/log 2>&1",
                 "echo up >/dev/null", "grep -q PONG", "head -n 1", "wc -l",
                 "apk add --no-cache netcat-openbsd", "apt-get install -y curl", "apk add jq",
                 "curl -X POST http://mlflow:5000/api/2.0/x", "curl -sf -d @f http://minio:9000/b",
                 "wget --post-data=x http://fastapi-app:8000/y", "curl -XGET http://mlflow:5000/h",
                 "MC_HOST=x mc ls minio/bucket")


def _random_probe(rng: random.Random, *, connections: bool = True) -> str:
    """A probe; with ``connections``, bash's `/dev/tcp` among the forms."""
    host, port = rng.choice(_HOSTS), rng.choice(_PORTS)
    # In a URL the host is not quoted: the webhook's parser splits `http://"minio":$PORT/h`
    # after the `$`, which the shell does not (a known difference of the parser, not of the
    # policy).
    url_host = host.strip("'\"")
    forms = [
        f"nc -z {host}{port}", f"nc -zv -w 1 {host}{port}",
        f"wget -q -O- http://{url_host}{port}/h", f"curl -sf {host}{port}",
        f"curl -sf https://user@{url_host}{port}/x", f"pg_isready -h {host}", f"nslookup {host}",
        f"timeout 5 nc -z {host}{port}", f"env X=1 nc -z {host}{port}", f"busybox nc {host}{port}",
        f"/usr/bin/nc -z {host}{port}", f"nc -z {host}{port} 2>&1", f"nc -z {host}{port} >&2",
        f"nc -z {host}{port} >/dev/null 2>&1", f"nc -z {host}{port} &>/dev/null",
        f"pg_isready \\\n  -h {host}", f"curl -sfX HEAD http://{url_host}{port}/h",
        f"redis-cli -h {host} ping | grep -q PONG",
    ]
    if connections:
        forms.append(f"(echo > /dev/tcp/{host}/5000)")
    return rng.choice(forms)


# The loops around the probes. A command substitution run as a command (`until `...``) is
# work to the webhook, unless its text holds a bash connection, which makes it a probe of
# whatever hosts the text names: the policy does not follow that, so no connection goes in
# there; nor an assignment, which the webhook's parser does not read inside backticks.
_LOOPS = ("{}", "until {}; do sleep 2; done", "while ! {}; do sleep 1; done",
          "for i in $(seq 1 30); do {} && exit 0; sleep 1; done; exit 1",
          'until [ "$( {} )" ]; do sleep 1; done', "until `{}`; do sleep 1; done",
          "( {} ) || exit 1")
_RUN_AS_COMMAND = "until `{}`; do sleep 1; done"
_ASSIGNMENTS = frozenset(step for step in _IDLE_OR_WORK if step.startswith("X="))


def _random_script(rng: random.Random) -> str:
    loop = rng.choice(_LOOPS)
    plain = loop != _RUN_AS_COMMAND
    steps = [step for step in _IDLE_OR_WORK if plain or step not in _ASSIGNMENTS]
    body = _random_probe(rng, connections=plain)
    for _ in range(rng.randint(0, 3)):
        step = (_random_probe(rng, connections=plain) if rng.random() < 0.6
                else rng.choice(steps))
        body += rng.choice(_SEPARATORS) + step
    return loop.format(body)


# What app containers run: URLs of the services in their arguments (retargeted where a
# command does work with them), and scripts.
_APP_URLS = ("http://mlflow:5000", "http://minio:9000/bucket", "mlflow:5000", "s3://mlflow/x",
             "http://postgres:5432/db", "http://fastapi-app/x", "tcp://kafka:9092",
             "http://mlflow.flts.svc:5000/api", "http://host.docker.internal:5000")


def _random_app_program(rng: random.Random) -> dict[str, Any]:
    shape = rng.random()
    if shape < 0.4:
        return {}
    if shape < 0.55:
        return {"args": ["--tracking-uri", rng.choice(_APP_URLS)]}
    if shape < 0.7:
        return {"command": ["python", "train.py", "--uri", rng.choice(_APP_URLS)]}
    if shape < 0.8:
        return {"command": _random_probe(rng).split()}
    return {"command": ["sh", "-c"],
            "args": [f"{_random_script(rng)}; python serve.py --uri {rng.choice(_APP_URLS)}"]}


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
        containers = [app(f"app-{n}", env=_random_env(rng) if rng.random() < 0.8 else None,
                          **_random_app_program(rng))
                      for n in range(rng.randint(1, 2))]
        pods.append(pod(f"random-{index}", init=[_random_init(rng, n) for n in names],
                        containers=containers, annotations=annotations, labels=labels))
    return pods
