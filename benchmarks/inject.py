"""``python -m benchmarks.inject``: ``backend-injector inject`` on a big ``helm template``.

The input is what ``helm template`` of a large chart prints: 2,000 Deployments shaped like the
flts chart's trainers (two waiters and the backend env), each behind a
``# Source:`` comment, about 1.7 MB in all. It is injected in-process with PyYAML's libyaml
loader and dumper (what ``inject`` uses when PyYAML has them) and with the pure-Python ones
(the fallback, and what ``inject`` used before), alternating rounds; the figure is the ratio
of the medians. Both must produce the same documents. Writes ``results/inject.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import yaml

from webhook import inject
from webhook.rules.mutate import Rules
from webhook.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results"

DEPLOYMENT = """\
---
# Source: flts/templates/training-{index}.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: train-{index}
  labels: {{app.kubernetes.io/name: flts}}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: train-{index}
  template:
    metadata:
      labels:
        app: train-{index}
    spec:
      initContainers:
        - name: wait-for-mlflow
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z mlflow 5000; do sleep 2; done']
        - name: wait-for-fastapi
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z fastapi-app 8000; do sleep 2; done']
      containers:
        - name: train
          image: "flts/train:1.0.0"
          env:
            - name: MLFLOW_TRACKING_URI
              value: "http://mlflow:5000"
            - name: MLFLOW_S3_ENDPOINT_URL
              value: "http://minio:9000"
"""


def rendered(count: int) -> str:
    return "".join(DEPLOYMENT.format(index=index) for index in range(count))


def timed(text: str, rules: Rules, *, libyaml: bool) -> tuple[float, str]:
    saved = inject._Loader, inject._Dumper
    if not libyaml:
        inject._Loader, inject._Dumper = yaml.SafeLoader, yaml.SafeDumper
    try:
        started = time.perf_counter()
        out, report = inject.inject_manifests(text, rules)
        seconds = time.perf_counter() - started
    finally:
        inject._Loader, inject._Dumper = saved
    assert len(report.mutated) == text.count("kind: Deployment")
    return seconds, out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inject", allow_abbrev=False)
    parser.add_argument("--deployments", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not getattr(yaml, "__with_libyaml__", False):
        parser.error("PyYAML was built without libyaml: there is nothing to compare")
    text = rendered(args.deployments)
    rules = Rules(load_settings(environ={}))
    seconds: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, str] = {}
    for _ in range(args.rounds):
        for libyaml in (False, True):
            elapsed, outputs[libyaml] = timed(text, rules, libyaml=libyaml)
            seconds[libyaml].append(elapsed)
    # Emitters may differ in layout, never in content.
    assert list(yaml.safe_load_all(outputs[True])) == list(yaml.safe_load_all(outputs[False]))
    pure, fast = statistics.median(seconds[False]), statistics.median(seconds[True])
    report = "\n".join([
        "# inject on a big helm template",
        "",
        f"{args.deployments} Deployments, {len(text.encode()) / 1e6:.2f} MB, "
        f"median of {args.rounds} rounds, Python {platform.python_version()}, "
        f"{platform.machine()}.",
        "",
        "| YAML loader and dumper | seconds | ratio |",
        "| --- | ---: | ---: |",
        f"| pure Python (SafeLoader/SafeDumper, the fallback) | {pure:.2f} | 1.00 |",
        f"| libyaml (CSafeLoader/CSafeDumper) | {fast:.2f} | {fast / pure:.2f} |",
        "",
    ])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inject.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
