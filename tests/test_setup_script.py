"""tools/setup.sh as a user meets it: the interpreter check, and a .venv it repairs.

Each case runs a copy of the script in a small repository of its own under tmp_path (a
pyproject.toml for a one-module package), so that the project's own .venv is never touched.
The cases that make a virtual environment install that package with pip, as the script does
for the project; the interpreter cases stop before anything is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "setup.sh"
SETUP_TIMEOUT_SECONDS = 300
USAGE_ERROR = 2

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "setup-probe"
version = "0"

[project.optional-dependencies]
test = []

[tool.setuptools]
py-modules = ["setup_probe"]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with tools/setup.sh and a one-module package, and no .venv yet."""
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    (root / "tools" / "setup.sh").write_text(SCRIPT.read_text())
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "setup_probe.py").write_text('"""Installed by the setup script under test."""\n')
    return root


def setup(repo: Path, *args: str, python: str | Path | None = None,
          ) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHON", "VIRTUAL_ENV")}
    if python is not None:
        environment["PYTHON"] = str(python)
    return subprocess.run(["bash", str(repo / "tools" / "setup.sh"), *args], cwd=repo,
                          env=environment, capture_output=True, text=True,
                          timeout=SETUP_TIMEOUT_SECONDS, check=False)


def fake_python(path: Path, body: str) -> Path:
    """An executable that stands in for an interpreter: a shell script with ``body``."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def probe_runs(repo: Path) -> bool:
    """Whether .venv's python runs and imports the package the script installed."""
    result = subprocess.run([repo / ".venv" / "bin" / "python", "-c", "import setup_probe"],
                            cwd=repo.parent, capture_output=True, timeout=60, check=False)
    return result.returncode == 0


def test_an_old_python_is_named_in_one_line_with_the_way_to_choose(repo: Path) -> None:
    old = fake_python(repo.parent / "python3.10", "echo 3.10")
    line = one_line(setup(repo, python=old), USAGE_ERROR)
    assert f"{old} is Python 3.10" in line
    assert "3.11" in line and "PYTHON=" in line
    assert not (repo / ".venv").exists()


def test_an_interpreter_that_does_not_run_is_named(repo: Path) -> None:
    broken = fake_python(repo.parent / "python3", "exit 127")
    line = one_line(setup(repo, python=broken), USAGE_ERROR)
    assert f"{broken} does not run as Python" in line and "PYTHON=" in line
    assert not (repo / ".venv").exists()


def test_a_missing_interpreter_is_named(repo: Path) -> None:
    line = one_line(setup(repo, python="no-such-python3.11"), USAGE_ERROR)
    assert "'no-such-python3.11' was not found" in line and "PYTHON=" in line


def test_an_unknown_argument_is_refused(repo: Path) -> None:
    line = one_line(setup(repo, "--everything"), USAGE_ERROR)
    assert "--everything" in line and "--test" in line


def stamps(repo: Path) -> list[str]:
    """The extent each install stamp records: ``run`` or ``test``."""
    return [path.name.rsplit("-", 1)[1] for path in (repo / ".venv").glob(".installed-*")]


def test_each_extent_is_installed_once(repo: Path) -> None:
    first = setup(repo, python=sys.executable)
    assert first.returncode == 0, first.stderr
    assert probe_runs(repo) and stamps(repo) == ["run"]
    # What it says is its own, one line a step: pip and setuptools stay quiet when all is well.
    assert all(line.startswith("setup: ") for line in first.stderr.splitlines()), first.stderr
    again = setup(repo, python=sys.executable)
    assert (again.returncode, again.stderr) == (0, "")
    with_tests = setup(repo, "--test", python=sys.executable)
    assert with_tests.returncode == 0, with_tests.stderr
    assert "[test]" in with_tests.stderr and stamps(repo) == ["test"]
    # What --test installed includes what running needs: a plain run has nothing to do.
    plain = setup(repo, python=sys.executable)
    assert (plain.returncode, plain.stderr) == (0, "")


def broken_venv(repo: Path) -> Path:
    """The directory of a .venv with no python in it yet: the case writes the one it needs."""
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    return bin_dir / "python"


def test_a_venv_whose_python_is_a_dangling_link_is_made_again(repo: Path) -> None:
    broken_venv(repo).symlink_to(repo.parent / "gone" / "python3.11")
    result = setup(repo, python=sys.executable)
    assert result.returncode == 0, result.stderr
    assert "no working bin/python" in result.stderr and "making it again" in result.stderr
    assert probe_runs(repo)


def test_a_venv_made_by_an_old_python_is_made_again(repo: Path) -> None:
    fake_python(broken_venv(repo), "echo 3.9")
    result = setup(repo, python=sys.executable)
    assert result.returncode == 0, result.stderr
    assert "made by Python 3.9" in result.stderr and "making it again" in result.stderr
    assert probe_runs(repo)
