"""The package as a user installs it: a wheel and an sdist built from the source tree.

The distributions are built with ``python -m build`` from a copy of the tree (building writes
an egg-info directory into its source, and other work goes on in the real one), checked with
``twine check --strict``, and their contents compared with the package they were built from.

The wheel is then installed into a clean virtual environment (no system site-packages) with
only its runtime dependencies, fetched by pip from the package index or its cache, which takes
well under two minutes on a warm cache. Running the console script there shows that nothing
the commands import comes from the ``test`` extra.
"""

from __future__ import annotations

import email.message
import email.parser
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Left out of the copy that is built: version control, environments and caches (large, and
# never part of a distribution), and earlier build output.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "*_cache", ".hypothesis", "__pycache__", "*.pyc", "*.egg-info", "build",
    "dist",
)
BUILD_TIMEOUT_SECONDS = 300
INSTALL_TIMEOUT_SECONDS = 300
RUN_TIMEOUT_SECONDS = 60
READY_TIMEOUT_SECONDS = 30
# Imported by the test suite only: none of them may be in the runtime environment.
TEST_ONLY_MODULES = ("pytest", "hypothesis", "httpx", "mypy", "kubernetes_validate")


@dataclass(frozen=True)
class Dists:
    source: Path  # the copy of the tree they were built from
    wheel: Path
    sdist: Path


def run(*command: str | Path, timeout: int, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, failing the test with its output when it fails."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            timeout=timeout, check=False, **kwargs)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    source = tmp_path_factory.mktemp("source") / "backend-injector"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, source, timeout=BUILD_TIMEOUT_SECONDS)
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return Dists(source=source, wheel=wheel, sdist=sdist)


def package_files(source: Path) -> set[str]:
    """Every file of the ``webhook`` package in the tree, relative to the tree: code and data."""
    return {
        path.relative_to(source).as_posix()
        for path in (source / "webhook").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def requirement_key(text: str) -> tuple[str, str, tuple[str, ...]]:
    """A requirement in a form that compares equal however it was spelled."""
    requirement = Requirement(text)
    return (canonicalize_name(requirement.name), str(requirement.specifier),
            tuple(sorted(requirement.extras)))


def test_twine_check_passes(dists: Dists) -> None:
    result = run(sys.executable, "-m", "twine", "check", "--strict", dists.wheel, dists.sdist,
                 timeout=RUN_TIMEOUT_SECONDS)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_sdist_holds_the_package_its_readme_and_license(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    wanted = {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO"} | package_files(dists.source)
    assert not wanted - names, sorted(wanted - names)
    # Only part of the suite could be shipped (not its fixtures, harness or binaries): none is.
    assert not {name for name in names if name.startswith("tests/")}


def test_wheel_carries_every_file_of_the_package(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as archive:
        names = set(archive.namelist())
    missing = package_files(dists.source) - names
    assert not missing, sorted(missing)
    assert not {name for name in names if not name.startswith(("webhook/", "backend_injector-"))}


def test_wheel_requires_the_runtime_dependencies_and_nothing_else(dists: Dists) -> None:
    metadata = wheel_metadata(dists.wheel)
    declared = metadata.get_all("Requires-Dist") or []
    unconditional = {requirement_key(text) for text in declared if Requirement(text).marker is None}
    assert unconditional == {requirement_key(text) for text in PYPROJECT["dependencies"]}
    assert metadata["Version"] == PYPROJECT["version"]
    assert metadata["License-Expression"] == PYPROJECT["license"]


@pytest.fixture(scope="module")
def runtime_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtual environment with the wheel and its runtime dependencies only."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    run(sys.executable, "-m", "venv", venv, timeout=RUN_TIMEOUT_SECONDS)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        dists.wheel, timeout=INSTALL_TIMEOUT_SECONDS)
    return venv


def clean_environment() -> dict[str, str]:
    """This process's environment without what would reach into the project's venv or config."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("BACKEND_INJECTOR_", "KUBERNETES_", "KUBECONFIG", "PYTHON",
                                   "VIRTUAL_ENV"))}


def test_runtime_environment_has_no_test_tools(runtime_venv: Path) -> None:
    found = run(runtime_venv / "bin" / "python", "-c",
                "import importlib.util, sys; "
                "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))",
                *TEST_ONLY_MODULES, timeout=RUN_TIMEOUT_SECONDS, env=clean_environment())
    assert found.stdout.split() == []


def test_every_module_imports_with_runtime_dependencies_only(runtime_venv: Path,
                                                             dists: Dists) -> None:
    # webhook.__main__ runs the command line when imported; the console script covers it.
    script = (
        "import importlib, pkgutil, webhook\n"
        "for module in pkgutil.walk_packages(webhook.__path__, 'webhook.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
        "        print(module.name)\n"
    )
    result = run(runtime_venv / "bin" / "python", "-c", script, timeout=RUN_TIMEOUT_SECONDS,
                 cwd=runtime_venv, env=clean_environment())
    imported = set(result.stdout.split())
    in_tree = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for name in package_files(dists.source) if name.endswith(".py")}
    assert in_tree - {"webhook", "webhook.__main__"} <= imported


def test_console_script_prints_the_version(runtime_venv: Path) -> None:
    result = run(runtime_venv / "bin" / "backend-injector", "--version",
                 timeout=RUN_TIMEOUT_SECONDS, env=clean_environment())
    assert result.stdout.splitlines()[0] == f"backend-injector {PYPROJECT['version']}"


def test_console_script_injects_a_manifest(runtime_venv: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    waiter = {"name": "wait-for-mlflow", "image": "busybox:1.35",
              "command": ["sh", "-c", "until nc -z mlflow 5000; do sleep 2; done"]}
    trainer = {"name": "train", "image": "trainer:1",
               "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}]}
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer"},
        "spec": {"initContainers": [waiter], "containers": [trainer]},
    }))
    result = run(runtime_venv / "bin" / "backend-injector", "inject", "-f", manifest,
                 timeout=RUN_TIMEOUT_SECONDS, env=clean_environment())
    spec = yaml.safe_load(result.stdout)["spec"]
    assert "initContainers" not in spec or not spec["initContainers"]
    env = {variable["name"]: variable for variable in spec["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] not in ("http://mlflow:5000", "")
    assert "MLFLOW_S3_ENDPOINT_URL" in env


@pytest.fixture
def served(runtime_venv: Path, tmp_path: Path) -> Iterator[int]:
    """``backend-injector serve`` from the runtime environment, on a free port; its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [runtime_venv / "bin" / "backend-injector", "serve", "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=clean_environment(), cwd=tmp_path)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=RUN_TIMEOUT_SECONDS)
        log.close()


def test_serve_answers_healthz(served: int) -> None:
    # The server's certificate is its own throw-away one: what is checked here is that it runs.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{served}/healthz", context=context,
                                        timeout=5) as response:
                assert response.status == 200
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
