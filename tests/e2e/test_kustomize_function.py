"""The real kustomize runs ``backend-injector inject`` as an exec KRM function.

A kustomization lists, under ``transformers:``, a function config: an object whose
``config.kubernetes.io/function`` annotation says what to run. With
``kustomize build --enable-alpha-plugins --enable-exec`` kustomize runs it with a
``ResourceList`` on stdin (the resources, and the config as ``functionConfig``) and takes the
list it writes back. The annotation's ``exec`` takes a ``path`` and ``args``; a bare name is
looked up on PATH, so the config needs no script beside it:

    exec: {path: backend-injector, args: [inject]}

The resources are the flts chart rendered (Helm 3, ``values-complete.yaml``) into a
kustomization written under tmp_path. Checked, no cluster needed:

* waiters for the external services gone, Kafka's kept, env retargeted, and every resource
  what ``inject -f`` makes of the same manifests; nothing kustomize annotated an item with for
  the function, and not the function config itself, reaches the output;
* the function config's ``data`` is the configuration (here another host for MLflow), and a
  configuration that cannot be used fails the build with the reason on stderr;
* without the command on PATH the build fails naming it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness.admission import clean_environment
from .harness.controlplane import built_paths
from .test_post_renderer import (
    CHART,
    CONSOLE_SCRIPT,
    EXTERNAL,
    HELM_SECONDS,
    VALUES,
    assert_injected,
    documents,
    pod_templates,
)

pytestmark = pytest.mark.e2e

KUSTOMIZE_SECONDS = 120
# The function config, as a user writes it; a test adds `data:` below it when it configures.
FUNCTION_CONFIG = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: backend-injector
  annotations:
    config.kubernetes.io/function: |
      exec:
        path: backend-injector
        args: [inject]
"""
KUSTOMIZATION = """\
resources: [rendered.yaml]
transformers: [inject.yaml]
"""
# What kustomize annotates the items it hands a function with (ids, paths, indexes).
ORCHESTRATOR_PREFIXES = ("config.kubernetes.io/", "internal.config.kubernetes.io/",
                         "kustomize.config.k8s.io/")

Kustomize = Callable[..., subprocess.CompletedProcess[str]]
Keyed = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    """The tests' environment: no BACKEND_INJECTOR_* variables (the function inherits it),
    the console script's directory first on PATH."""
    inherited = clean_environment()
    assert os.access(CONSOLE_SCRIPT, os.X_OK), f"{CONSOLE_SCRIPT}: pip install -e . first"
    inherited["PATH"] = f"{CONSOLE_SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return inherited


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]) -> str:
    """The chart rendered once by the built Helm 3, with its homes in a scratch directory."""
    homes = tmp_path_factory.mktemp("helm-homes")
    env = {**environment, "HELM_CACHE_HOME": str(homes / "cache"),
           "HELM_CONFIG_HOME": str(homes / "config"), "HELM_DATA_HOME": str(homes / "data")}
    result = subprocess.run([built_paths()["helm"], "template", "flts", str(CHART),
                             "--values", str(VALUES)],
                            capture_output=True, text=True, env=env, timeout=HELM_SECONDS,
                            check=True)
    return result.stdout


@pytest.fixture
def kustomize(environment: dict[str, str]) -> Iterator[Kustomize]:
    """A function running ``kustomize build`` of a directory with exec functions enabled."""
    binary = built_paths()["kustomize"]

    def run(directory: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
        env = environment if path is None else {**environment, "PATH": path}
        return subprocess.run([binary, "build", "--enable-alpha-plugins", "--enable-exec",
                               str(directory)],
                              capture_output=True, text=True, env=env,
                              timeout=KUSTOMIZE_SECONDS, check=False)

    yield run


def kustomization(directory: Path, rendered: str, data: str = "") -> Path:
    """A kustomization of the rendered chart, transformed by backend-injector configured by
    ``data`` (the function config's `data:` block, as YAML text; none when empty)."""
    directory.mkdir()
    (directory / "rendered.yaml").write_text(rendered)
    (directory / "kustomization.yaml").write_text(KUSTOMIZATION)
    (directory / "inject.yaml").write_text(FUNCTION_CONFIG + data)
    return directory


def keyed(text: str) -> Keyed:
    """The documents by (kind, name): kustomize sorts what it prints."""
    return {(document["kind"], document["metadata"]["name"]): document
            for document in documents(text)}


def templates_in_order(by_key: Keyed, keys: list[tuple[str, str]]
                       ) -> list[tuple[str, dict[str, Any]]]:
    return pod_templates([by_key[key] for key in keys])


def built(kustomize: Kustomize, directory: Path) -> str:
    result = kustomize(directory)
    assert result.returncode == 0, f"kustomize build {directory}:\n{result.stderr}"
    return result.stdout


def test_kustomize_runs_inject_as_a_function(kustomize: Kustomize, rendered: str,
                                              tmp_path: Path) -> None:
    plain = keyed(rendered)
    by_kustomize = keyed(built(kustomize, kustomization(tmp_path / "app", rendered)))
    keys = sorted(plain)
    assert sorted(by_kustomize) == keys  # the function config is not among them
    assert_injected(templates_in_order(plain, keys), templates_in_order(by_kustomize, keys))
    for key, document in by_kustomize.items():
        annotations = document["metadata"].get("annotations", {})
        assert not [name for name in annotations if name.startswith(ORCHESTRATOR_PREFIXES)], key


def test_the_function_makes_what_inject_f_makes_of_the_same_manifests(
    kustomize: Kustomize, rendered: str, tmp_path: Path
) -> None:
    directory = kustomization(tmp_path / "app", rendered)
    offline = subprocess.run([str(CONSOLE_SCRIPT), "inject", "-f",
                              str(directory / "rendered.yaml")],
                             capture_output=True, text=True, timeout=KUSTOMIZE_SECONDS,
                             check=True)
    by_inject = keyed(offline.stdout)
    assert keyed(built(kustomize, directory)) == by_inject
    assert by_inject != keyed(rendered)


def test_the_function_config_is_the_configuration(kustomize: Kustomize, rendered: str,
                                                  tmp_path: Path) -> None:
    # One key per top-level key of the configuration; `services` is merged over the
    # default's, so MinIO and the gateway keep the default host.
    data = ("data:\n"
            "  services: |\n"
            "    mlflow: {hosts: [mlflow], external: {host: mlflow.example, port: 5000}}\n")
    plain = keyed(rendered)
    by_kustomize = keyed(built(kustomize, kustomization(tmp_path / "app", rendered, data)))
    keys = sorted(plain)
    assert_injected(templates_in_order(plain, keys), templates_in_order(by_kustomize, keys),
                    {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
                     "MLFLOW_S3_ENDPOINT_URL": f"http://{EXTERNAL}:9000",
                     "GATEWAY_URL": f"http://{EXTERNAL}:8000"})


def test_a_configuration_that_cannot_be_used_fails_the_build(kustomize: Kustomize,
                                                            rendered: str,
                                                            tmp_path: Path) -> None:
    data = "data:\n  action: shout\n"
    failed = kustomize(kustomization(tmp_path / "app", rendered, data))
    assert failed.returncode != 0
    assert failed.stdout == ""
    # inject's own message, which kustomize passes on: where, and the value it refused.
    assert "functionConfig: action" in failed.stderr and "'shout'" in failed.stderr


def test_without_the_command_on_path_the_build_fails_naming_it(kustomize: Kustomize,
                                                              rendered: str,
                                                              tmp_path: Path) -> None:
    failed = kustomize(kustomization(tmp_path / "app", rendered), path=str(tmp_path))
    assert failed.returncode != 0
    assert failed.stdout == ""
    assert '"backend-injector": executable file not found' in failed.stderr
