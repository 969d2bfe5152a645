"""The real Helm 4 runs ``backend-injector inject`` through the project's post-renderer plugin.

Helm 4 takes post-renderers only as plugins: ``--post-renderer NAME`` names an installed plugin
of type ``postrenderer/v1``, and ``helm-plugin/`` at the repository's root is one that runs
``backend-injector inject``, found on PATH. These tests install it into Helm homes of their
own (a local directory needs no signature) and render the flts chart with
``values-complete.yaml`` through it; no cluster is needed, ``helm template`` post-renders as
``install`` does. Checked:

* the waiters for the external services are gone, Kafka's stays, the env is retargeted, and
  the pods are those ``inject -f`` makes of the same manifests rendered without the plugin;
* each ``--post-renderer-args`` reaches ``inject`` after its own argument;
* Helm 4 passes chart hooks to the post-renderer (Helm 3 never did): a hook Job loses its
  waiter like any other, and Helm's own bookkeeping annotation does not reach the output;
* without the command on PATH Helm stops with a message naming it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from .harness.controlplane import built_paths
from .test_post_renderer import (
    CHART,
    CONSOLE_SCRIPT,
    EXTERNAL,
    HELM_SECONDS,
    HOOKED_JOBS,
    VALUES,
    assert_injected,
    comparable,
    documents,
    helm_environment,
    init_names,
    pod_templates,
)

pytestmark = pytest.mark.e2e

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "helm-plugin"
PLUGIN = "backend-injector"
# What Helm 4 puts on every document it hands a post-renderer, and takes off again after.
FILENAME_ANNOTATION = "postrenderer.helm.sh/postrender-filename"

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """A function running the built Helm 4, the plugin installed in Helm homes of a scratch
    directory, with the console script's directory first on PATH and no BACKEND_INJECTOR_*
    variables (the plugin's command inherits Helm's environment)."""
    binary = built_paths()["helm4"]
    environment = helm_environment(
        tmp_path_factory.mktemp("helm4-homes"),
        PATH=f"{CONSOLE_SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def run(*args: str, path: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        env = environment if path is None else {**environment, "PATH": path}
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=env,
                                timeout=HELM_SECONDS, check=False)
        if check:
            assert result.returncode == 0, f"helm4 {' '.join(args)}:\n{result.stderr}"
        return result

    assert os.access(CONSOLE_SCRIPT, os.X_OK), f"{CONSOLE_SCRIPT}: pip install -e . first"
    # No --verify=false: Helm 4 verifies signatures of tarballs only, never of a directory.
    installed = run("plugin", "install", str(PLUGIN_DIR))
    assert f"Installed plugin: {PLUGIN}" in installed.stdout
    yield run


def render(helm4: Helm, *args: str) -> str:
    return helm4("template", "flts", str(CHART), "--values", str(VALUES), *args).stdout


def test_the_plugin_is_installed_as_a_post_renderer_of_the_projects_version(helm4: Helm
                                                                            ) -> None:
    listed = helm4("plugin", "list").stdout.splitlines()
    _, plugin_version, plugin_type = next(
        line.split()[:3] for line in listed if line.split()[:1] == [PLUGIN])
    assert (plugin_type, plugin_version) == ("postrenderer/v1", version("backend-injector"))


def test_helm4_through_the_plugin_removes_the_waiters_and_retargets_the_env(helm4: Helm
                                                                           ) -> None:
    plain = pod_templates(documents(render(helm4)))
    post_rendered = pod_templates(documents(render(helm4, "--post-renderer", PLUGIN)))
    assert_injected(plain, post_rendered)


def test_the_plugin_makes_what_inject_f_makes_of_the_same_manifests(helm4: Helm,
                                                                    tmp_path: Path) -> None:
    plain = tmp_path / "rendered.yaml"
    plain.write_text(render(helm4))
    offline = subprocess.run([str(CONSOLE_SCRIPT), "inject", "-f", str(plain)],
                             capture_output=True, text=True, timeout=HELM_SECONDS, check=True)
    by_helm = documents(render(helm4, "--post-renderer", PLUGIN))
    by_inject = documents(offline.stdout)
    assert pod_templates(by_helm) == pod_templates(by_inject)
    assert comparable(by_helm) == comparable(by_inject)
    assert pod_templates(by_inject) != pod_templates(documents(plain.read_text()))


def test_post_renderer_args_reach_inject(helm4: Helm) -> None:
    host = "backend.example"
    plain = pod_templates(documents(render(helm4)))
    post_rendered = pod_templates(documents(render(
        helm4, "--post-renderer", PLUGIN, "--post-renderer-args", f"--external-host={host}")))
    assert_injected(plain, post_rendered, {"MLFLOW_TRACKING_URI": f"http://{host}:5000",
                                           "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:9000",
                                           "GATEWAY_URL": f"http://{host}:8000"})
    assert EXTERNAL not in str(post_rendered)


def test_helm_4_passes_chart_hooks_to_the_post_renderer(helm4: Helm, tmp_path: Path) -> None:
    chart = tmp_path / "hooked"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hooked\nversion: 0.1.0\n")
    (chart / "templates" / "jobs.yaml").write_text(HOOKED_JOBS)
    rendered = {document["metadata"]["name"]: document for document in documents(
        helm4("template", "hooked", str(chart), "--post-renderer", PLUGIN).stdout)}
    assert set(rendered) == {"migrate", "train"}
    for name, job in rendered.items():
        template = job["spec"]["template"]
        assert init_names(template) == [], name
        assert "backend-injector/status" in template["metadata"]["annotations"], name
        assert FILENAME_ANNOTATION not in job["metadata"].get("annotations", {}), name
    # Still a hook: Helm read it back from the post-renderer's output as one.
    assert rendered["migrate"]["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-install,pre-upgrade"}


def test_without_the_command_on_path_helm_stops_naming_it(helm4: Helm, tmp_path: Path
                                                          ) -> None:
    failed = helm4("template", "flts", str(CHART), "--values", str(VALUES),
                   "--post-renderer", PLUGIN, path=str(tmp_path), check=False)
    assert failed.returncode != 0
    assert failed.stdout == ""
    assert f'"{PLUGIN}": executable file not found' in failed.stderr
