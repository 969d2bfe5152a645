"""The offline twin: rendered manifests in, mutated manifests out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_settings
from webhook import inject
from webhook.inject import ManifestError, inject_manifests, unified_diff
from webhook.rules.mutate import Rules

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


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines()
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]


def test_diff_shows_only_what_the_webhook_changed() -> None:
    _, report = inject_manifests(RENDERED, Rules(make_settings()), diff_name="rendered.yaml")
    changed = changed_lines(report.diff)
    assert "-      - name: wait-for-mlflow" in changed
    assert any("GATEWAY_URL" in line for line in changed if line.startswith("+"))
    # The kafka waiter is written in flow style (`command: ['sh', ...]`) and the dumper writes
    # block style: a diff of the raw text would show it as changed although nothing was.
    assert not [line for line in changed if "kafka" in line], changed
    assert not [line for line in changed if "train-gru" in line], changed
    headers = [line for line in report.diff.splitlines() if line.startswith(("+++", "---"))]
    assert headers == [
        "--- rendered.yaml: Deployment/train-gru (as given)",
        "+++ rendered.yaml: Deployment/train-gru (injected)",
        "--- rendered.yaml: CronJob/preprocess (as given)",
        "+++ rendered.yaml: CronJob/preprocess (injected)",
    ]


def test_a_raw_diff_would_show_layout_changes_the_normalised_one_hides() -> None:
    out, report = inject_manifests(RENDERED, Rules(make_settings()), diff_name="rendered.yaml")
    raw = changed_lines(unified_diff(RENDERED, out, "rendered.yaml"))
    assert [line for line in raw if "kafka" in line]
    assert len(changed_lines(report.diff)) < len(raw)


def test_no_diff_when_nothing_changes() -> None:
    rules = Rules(make_settings())
    once, _ = inject_manifests(RENDERED, rules)
    _, report = inject_manifests(once, rules, diff_name="once.yaml")
    assert report.diff == ""


def test_cli_inject_diff_prints_only_the_changed_documents(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(RENDERED)
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", str(rendered), "--diff"],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.startswith(f"--- {rendered}: Deployment/train-gru (as given)")
    assert "Service" not in result.stdout


def test_a_yaml_error_names_its_line_in_the_whole_stream() -> None:
    text = "kind: ConfigMap\n---\n# c\n\nkind: Pod\nspec: {a: [}\n"
    with pytest.raises(ManifestError) as caught:
        inject_manifests(text, Rules(make_settings()))
    assert caught.value.line == 6
    assert caught.value.located("x.yaml").startswith("x.yaml:6: document 2 is not valid YAML")


def test_both_yaml_implementations_give_the_same_documents(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    fast, _ = inject_manifests(RENDERED, Rules(make_settings()))
    monkeypatch.setattr(inject, "_Loader", yaml.SafeLoader)
    monkeypatch.setattr(inject, "_Dumper", yaml.SafeDumper)
    pure, _ = inject_manifests(RENDERED, Rules(make_settings()))
    assert documents(pure) == documents(fast)


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
