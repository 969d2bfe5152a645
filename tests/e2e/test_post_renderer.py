"""The real Helm 3 runs ``backend-injector inject`` as its post-renderer.

Helm 3 hands a post-renderer the release's rendered manifests on stdin and uses what it writes
on stdout; ``--post-renderer`` names an executable (a path, or a name looked up on PATH) and
each ``--post-renderer-args`` adds one argument. ``helm template`` post-renders exactly as
``install`` and ``upgrade`` do, and needs no cluster, so these tests need none either: the
flts chart with ``values-complete.yaml`` (the pods that hang in Init without the webhook) is
rendered through the project's console script and checked:

* the waiters for the external services are gone, the one for Kafka (in the cluster) stays,
  and every address of MLflow, MinIO and the gateway points at the external backend;
* the pods are those ``inject -f`` makes of the same manifests rendered without the
  post-renderer: Helm adds nothing and loses nothing on the way;
* the post-renderer is found on PATH by its bare name, as the README's command line has it;
* chart hooks are not post-rendered: Helm 3 renders them apart from the release's manifests
  and never passes them to the post-renderer, so a hook Job keeps its waiter (in a cluster
  the webhook still changes a hook's pods as they are created; only the offline twin misses
  them). Helm 4 sends hooks through its post-renderer plugin (test_helm4_plugin.py).

The helpers that check a rendering (``assert_injected`` and the ones it uses) serve the Helm 4
plugin's and the kustomize function's tests too.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.inject import TEMPLATE_PATHS

from .harness.admission import clean_environment
from .harness.controlplane import built_paths

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parent / "chart"
VALUES = CHART / "values-complete.yaml"
# The console script pip installed beside the interpreter running the tests (.venv/bin).
CONSOLE_SCRIPT = Path(sys.executable).parent / "backend-injector"
EXTERNAL = "host.docker.internal"
MANAGED_WAITERS = {"wait-for-mlflow", "wait-for-fastapi", "wait-for-minio"}
IN_CLUSTER_HOSTS = ("mlflow:", "minio:", "fastapi-app:", "fastapi:")
HELM_SECONDS = 120


def helm_environment(homes: Path, **extra: str) -> dict[str, str]:
    """This process's environment with Helm's homes under `homes` and no BACKEND_INJECTOR_*
    variables (what Helm runs inherits it, and they would change its configuration)."""
    environment = clean_environment()
    environment.update(HELM_CACHE_HOME=str(homes / "cache"),
                       HELM_CONFIG_HOME=str(homes / "config"),
                       HELM_DATA_HOME=str(homes / "data"), **extra)
    return environment


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A function running the built Helm 3 with its homes in a scratch directory and an
    environment without BACKEND_INJECTOR_* variables (the post-renderer inherits it)."""
    binary = built_paths()["helm"]
    environment = helm_environment(tmp_path_factory.mktemp("helm-homes"))

    def run(*args: str, path: str | None = None) -> str:
        env = environment if path is None else {**environment, "PATH": path}
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=env,
                                timeout=HELM_SECONDS, check=False)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    yield run


def post_renderer(executable: str) -> tuple[str, ...]:
    return ("--post-renderer", executable, "--post-renderer-args", "inject")


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, pod template) of every workload, in document order."""
    found = []
    for document in docs:
        path = TEMPLATE_PATHS.get(document.get("kind", ""))
        if path is None:
            continue
        template: Any = document
        for key in path:
            template = template[key]
        found.append((document["kind"], template))
    return found


def init_names(template: dict[str, Any]) -> list[str]:
    return [container["name"] for container in template["spec"].get("initContainers", [])]


def comparable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents without the preprocess Job's name, which the chart draws at random on
    every rendering (randAlphaNum), so that two renderings can be compared."""
    copies = copy.deepcopy(docs)
    for document in copies:
        if document["kind"] == "Job":
            document["metadata"].pop("name")
    return copies


def assert_injected(plain: list[tuple[str, dict[str, Any]]],
                    injected: list[tuple[str, dict[str, Any]]],
                    external: dict[str, str] | None = None) -> None:
    """The pod templates ``injected`` (in the same order as ``plain``, the chart's own) lost
    the waiters for the external services, kept Kafka's, and point every address at the
    external backend: ``external`` maps MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL and
    GATEWAY_URL to their expected values (the default host's when None)."""
    expected = external or {"MLFLOW_TRACKING_URI": f"http://{EXTERNAL}:5000",
                            "MLFLOW_S3_ENDPOINT_URL": f"http://{EXTERNAL}:9000",
                            "GATEWAY_URL": f"http://{EXTERNAL}:8000"}
    assert [kind for kind, _ in injected] == [kind for kind, _ in plain]
    waited = 0
    for (kind, before), (_, after) in zip(plain, injected, strict=True):
        waiters = init_names(before)
        assert init_names(after) == [name for name in waiters if name not in MANAGED_WAITERS]
        for container in after["spec"]["containers"]:
            for entry in container.get("env", []):
                value = str(entry.get("value"))
                assert not any(host in value for host in IN_CLUSTER_HOSTS), (kind, entry)
        if not set(waiters) & MANAGED_WAITERS:
            continue  # Kafka itself: nothing of it waits for the external backend
        waited += 1
        assert "wait-for-kafka" in init_names(after), kind  # Kafka runs in the cluster
        assert "backend-injector/status" in after["metadata"]["annotations"]
        for container in after["spec"]["containers"]:
            env = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
            assert {name: env.get(name) for name in expected} == expected, kind
    assert waited >= 6  # the trainers, eval, preprocess and inference


def test_helm_template_through_inject_removes_the_waiters_and_retargets_the_env(helm: Any
                                                                               ) -> None:
    assert os.access(CONSOLE_SCRIPT, os.X_OK), f"{CONSOLE_SCRIPT}: pip install -e . first"
    plain = pod_templates(documents(helm("template", "flts", str(CHART), "--values",
                                         str(VALUES))))
    post_rendered = pod_templates(documents(helm(
        "template", "flts", str(CHART), "--values", str(VALUES),
        *post_renderer(str(CONSOLE_SCRIPT)))))
    assert_injected(plain, post_rendered)


def test_the_post_rendered_pods_are_what_inject_f_makes_of_the_same_manifests(
    helm: Any, tmp_path: Path
) -> None:
    plain = tmp_path / "rendered.yaml"
    plain.write_text(helm("template", "flts", str(CHART), "--values", str(VALUES)))
    offline = subprocess.run([str(CONSOLE_SCRIPT), "inject", "-f", str(plain)],
                             capture_output=True, text=True, timeout=HELM_SECONDS, check=True)
    post_rendered = helm("template", "flts", str(CHART), "--values", str(VALUES),
                         *post_renderer(str(CONSOLE_SCRIPT)))
    by_helm, by_inject = documents(post_rendered), documents(offline.stdout)
    assert pod_templates(by_helm) == pod_templates(by_inject)
    assert comparable(by_helm) == comparable(by_inject)
    assert pod_templates(by_inject) != pod_templates(documents(plain.read_text()))


def test_the_post_renderer_is_found_on_path_by_its_name(helm: Any) -> None:
    path = f"{CONSOLE_SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    by_name = documents(helm("template", "flts", str(CHART), "--values", str(VALUES),
                             *post_renderer("backend-injector"), path=path))
    by_path = documents(helm("template", "flts", str(CHART), "--values", str(VALUES),
                             *post_renderer(str(CONSOLE_SCRIPT))))
    assert comparable(by_name) == comparable(by_path)
    assert any("backend-injector/status" in template["metadata"].get("annotations", {})
               for _, template in pod_templates(by_name))


HOOKED_JOBS = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
spec:
  template:
    spec:
      restartPolicy: Never
      initContainers:
        - name: wait-for-mlflow
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z mlflow 5000; do sleep 2; done']
      containers:
        - {name: migrate, image: flts/migrate}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: train
spec:
  template:
    spec:
      restartPolicy: Never
      initContainers:
        - name: wait-for-mlflow
          image: busybox:1.35
          command: ['sh', '-c', 'until nc -z mlflow 5000; do sleep 2; done']
      containers:
        - {name: train, image: flts/train}
"""


def test_helm_3_does_not_pass_chart_hooks_to_the_post_renderer(helm: Any, tmp_path: Path
                                                               ) -> None:
    chart = tmp_path / "hooked"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hooked\nversion: 0.1.0\n")
    (chart / "templates" / "jobs.yaml").write_text(HOOKED_JOBS)
    rendered = {document["metadata"]["name"]: document for document in documents(
        helm("template", "hooked", str(chart), *post_renderer(str(CONSOLE_SCRIPT))))}
    assert set(rendered) == {"migrate", "train"}  # template prints hooks after the manifests
    train = rendered["train"]["spec"]["template"]
    assert init_names(train) == []
    assert "backend-injector/status" in train["metadata"]["annotations"]
    hook = rendered["migrate"]["spec"]["template"]
    assert init_names(hook) == ["wait-for-mlflow"]
    assert "metadata" not in hook
