"""The offline twin: rendered manifests in, mutated manifests out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import make_settings
from webhook.inject import inject_manifests, unified_diff
from webhook.mutate import Rules

RENDERED = """\
---
# Source: flts/templates/training-services.yaml
apiVersion: v1
kind: Service
metadata:
  name: train-gru
spec:
  ports: [{port: 80}]
---
# Source: flts/templates/training-services.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: train-gru
spec:
  template:
    metadata:
      labels: {app: train-gru}
    spec:
      initContainers:
        - name: wait-for-mlflow
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z mlflow 5000; do sleep 2; done']
        - name: wait-for-kafka
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z kafka 9092; do sleep 2; done']
      containers:
        - name: train-gru
          image: flts/train
          env:
            - {name: MLFLOW_TRACKING_URI, value: "http://mlflow:5000"}
---
# Source: flts/templates/pipeline.yaml
apiVersion: batch/v1
kind: CronJob
metadata:
  name: preprocess
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          initContainers:
            - name: wait-for-fastapi
              image: busybox:1.35
              command: ['sh', '-c', 'until nc -z fastapi-app 8000; do sleep 2; done']
          containers:
            - {name: preprocess, image: flts/preprocess}
"""


def documents(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_every_pod_template_is_mutated_and_the_rest_kept_as_written() -> None:
    out, report = inject_manifests(RENDERED, Rules(make_settings()))
    service, deployment, cronjob = documents(out)
    assert service["kind"] == "Service"
    assert "# Source: flts/templates/training-services.yaml\napiVersion: v1\nkind: Service" in out
    template = deployment["spec"]["template"]
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["wait-for-kafka"]
    assert template["metadata"]["labels"] == {"app": "train-gru"}
    assert "backend-injector/status" in template["metadata"]["annotations"]
    job_pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "initContainers" not in job_pod
    assert {e["name"] for e in job_pod["containers"][0]["env"]} >= {"GATEWAY_URL"}
    assert report.mutated == ["Deployment/train-gru", "CronJob/preprocess"]
    assert out.count("# Source:") == 3


def test_injecting_twice_changes_nothing() -> None:
    rules = Rules(make_settings())
    once, _ = inject_manifests(RENDERED, rules)
    twice, report = inject_manifests(once, rules)
    assert twice == once
    assert report.mutated == []


def test_diff_shows_only_the_changes() -> None:
    out, _ = inject_manifests(RENDERED, Rules(make_settings()))
    diff = unified_diff(RENDERED, out, "rendered.yaml")
    assert "-        - name: wait-for-mlflow" in diff
    assert "kind: Service" not in "".join(
        line for line in diff.splitlines() if line.startswith(("+", "-"))
    )


def test_cli_inject_reads_stdin_and_reports_on_stderr(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", "-"],
        input=RENDERED, capture_output=True, text=True, check=True,
    )
    assert len(documents(result.stdout)) == 3
    assert "Deployment/train-gru: removed init containers wait-for-mlflow" in result.stderr
    assert "minioadmin" not in result.stderr


def test_cli_inject_refuses_broken_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\nspec: [\n")
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", str(broken)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr


def test_cli_policy_prints_the_policy_and_its_binding() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "policy", "--api-version",
         "admissionregistration.k8s.io/v1beta1"],
        capture_output=True, text=True, check=True,
    )
    kinds = [(doc["apiVersion"], doc["kind"]) for doc in documents(result.stdout)]
    assert kinds == [
        ("admissionregistration.k8s.io/v1beta1", "MutatingAdmissionPolicy"),
        ("admissionregistration.k8s.io/v1beta1", "MutatingAdmissionPolicyBinding"),
    ]
