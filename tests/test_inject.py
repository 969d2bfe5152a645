"""The offline twin: rendered manifests in, mutated manifests out."""

from __future__ import annotations

import os
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


def test_cli_inject_diff_prints_only_the_changed_documents_and_exits_1(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(RENDERED)
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", str(rendered), "--diff"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stderr  # as diff(1): there are differences
    assert result.stdout.startswith(f"--- {rendered}: Deployment/train-gru (as given)")
    assert "Service" not in result.stdout


def test_cli_inject_diff_exits_0_when_nothing_changes(tmp_path: Path) -> None:
    once, _ = inject_manifests(RENDERED, Rules(make_settings()))
    injected = tmp_path / "injected.yaml"
    injected.write_text(once)
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", str(injected), "--diff"],
        capture_output=True, text=True,
    )
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


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


# --- the chart's own credentials ------------------------------------------------------------

CHART_WITH_CREDENTIALS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: train-gru}
spec:
  template:
    spec:
      initContainers:
        - name: wait-for-mlflow
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z mlflow 5000; do sleep 2; done']
          env:
            - {name: AWS_SECRET_ACCESS_KEY, value: waiter-own-secret}
      containers:
        - name: trainer
          image: flts/train
          env:
            - {name: AWS_ACCESS_KEY_ID, value: chart-own-key}
            - {name: AWS_SECRET_ACCESS_KEY, value: minioadmin}
        - name: sidecar
          image: flts/sidecar
"""


def test_replacing_a_charts_own_credential_is_a_warning_naming_variable_and_container(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, credentials={"mode": "value"})
    out, report = inject_manifests(CHART_WITH_CREDENTIALS, Rules(settings))
    assert report.replaced_credentials == ["Deployment/train-gru"]
    warnings = [note for note in report.notes if note.warning]
    # The secret key already had the webhook's value, and the waiter that had its own is gone:
    # only the access key of the trainer was replaced.
    assert [str(note) for note in warnings] == [
        "Deployment/train-gru: replaced the chart's own AWS_ACCESS_KEY_ID in trainer"]
    assert "chart-own-key" not in "".join(report.warnings)
    trainer = documents(out)[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "AWS_ACCESS_KEY_ID", "value": "minioadmin"} in trainer["env"]


def test_credentials_the_chart_already_has_right_are_not_reported(tmp_path: Path) -> None:
    text = CHART_WITH_CREDENTIALS.replace("chart-own-key", "minioadmin")
    settings = make_settings(tmp_path, credentials={"mode": "value"})
    _, report = inject_manifests(text, Rules(settings))
    assert report.mutated == ["Deployment/train-gru"]
    assert report.replaced_credentials == []
    assert not [note for note in report.notes if note.warning]


def test_secret_key_references_replacing_values_are_reported() -> None:
    _, report = inject_manifests(CHART_WITH_CREDENTIALS, Rules(make_settings()))
    assert [str(note) for note in report.notes if note.warning] == [
        "Deployment/train-gru: replaced the chart's own AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY in trainer"]


def test_credentials_left_alone_are_never_reported(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, credentials={"mode": "none"})
    _, report = inject_manifests(CHART_WITH_CREDENTIALS, Rules(settings))
    assert report.mutated == ["Deployment/train-gru"]
    assert report.replaced_credentials == []


def run_inject(*args: str, stdin: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith("BACKEND_INJECTOR_")}
    return subprocess.run([sys.executable, "-m", "webhook", "inject", *args], input=stdin,
                          capture_output=True, text=True, env={**clean, **(env or {})})


def test_cli_warns_as_serve_does_when_development_credentials_replace_the_charts(
        tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("credentials: {mode: value}\n")
    result = run_inject("--config", str(config), stdin=CHART_WITH_CREDENTIALS)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert ("backend-injector: Deployment/train-gru: replaced the chart's own "
            "AWS_ACCESS_KEY_ID in trainer") in lines
    assert lines[-1].startswith(
        "backend-injector: the S3 credentials are MinIO's development default; set "
        "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE")
    assert "chart-own-key" not in result.stderr


def test_cli_names_the_replacement_but_not_development_credentials_when_given_real_ones(
) -> None:
    result = run_inject(stdin=CHART_WITH_CREDENTIALS, env={
        "BACKEND_INJECTOR_ACCESS_KEY_ID": "team-key", "BACKEND_INJECTOR_SECRET_ACCESS_KEY": "s3"})
    assert result.returncode == 0, result.stderr
    assert "replaced the chart's own AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in result.stderr
    assert "development default" not in result.stderr
    assert "team-key" not in result.stderr


def test_cli_says_nothing_of_development_credentials_when_no_chart_credential_is_replaced(
) -> None:
    result = run_inject(stdin=RENDERED)
    assert result.returncode == 0, result.stderr
    assert "development default" not in result.stderr


def test_inject_without_a_file_reads_stdin_as_helm_runs_a_post_renderer() -> None:
    result = run_inject(stdin=RENDERED)
    assert result.returncode == 0, result.stderr
    assert documents(result.stdout) == documents(inject_manifests(
        RENDERED, Rules(make_settings()))[0])


def test_multi_line_strings_are_written_as_blocks_and_read_back_the_same() -> None:
    script = "set -e\nuntil nc -z kafka 9092; do\n  sleep 2\ndone\nmigrate  \n"
    text = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [
            # Its env uses the backend, so the pod is changed and written out again.
            {"name": "a", "image": "x", "command": ["sh", "-c", script],
             "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}]},
            {"name": "b", "image": "x", "command": ["sh", "-c", "echo one\necho two\n"]}]}})
    out, _ = inject_manifests(text, Rules(make_settings()))
    pod = documents(out)[0]
    # The first keeps its trailing spaces, which a block cannot hold: quoted, not lost.
    assert pod["spec"]["containers"][0]["command"][2] == script
    assert "- |\n" in out and "echo one\n" in out
