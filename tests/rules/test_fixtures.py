"""Fixture tests: AdmissionReview files in, the patched pod compared with a hand-written one.

Each folder under ``tests/fixtures/`` is one case (its name is the test id):

* ``request.json``: an AdmissionReview as kube-apiserver sends it;
* ``expected_pod.json``: ``request.object`` after the returned patch is applied. These files
  were written by reasoning from DESIGN.md and the module docstrings, never produced by
  running the webhook, so that they are an oracle independent of the code;
* ``case.yaml`` (optional): ``settings`` (a configuration document merged over the embedded
  default, as ``--config`` would be), ``expect`` (``patched``, default true;
  ``warnings_contain``, substrings each found in some warning) and ``xfail`` (a reason: the
  code is known to disagree with the fixture; strict, so the mark must go when it is fixed).

The cases are written in ``credentials.mode: value`` unless their ``settings`` choose another
mode (``FIXTURE_BASELINE``): a literal value shows in the expected pod exactly what the rules
put there. The default mode, by reference, has a case of its own (``secret-key-ref``).

Every case is also fed its own output: a second review must return no patch (the apiserver
may call again with reinvocationPolicy IfNeeded). A few cases go through the real CLI too.
"""

from __future__ import annotations

import base64
import copy
import difflib
import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from webhook.rules.mutate import Rules
from webhook.serving.admission import AdmissionHandler
from webhook.settings import ENV_PREFIX, Settings, load_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = FIXTURES.parent.parent
CASE_KEYS = frozenset({"settings", "expect", "xfail"})
EXPECT_KEYS = frozenset({"patched", "warnings_contain"})
# Enough for the real CLI to start, read one review and answer; it normally takes well under 1 s.
CLI_TIMEOUT_SECONDS = 30
CLI_CASES = ("gru-trainer", "rewrite-action", "v1beta1")
# Merged under every case's settings (see the module docstring).
FIXTURE_BASELINE: dict[str, Any] = {"credentials": {"mode": "value"}}


@dataclass(frozen=True)
class Case:
    """One fixture folder, loaded."""

    name: str
    request_bytes: bytes
    review: dict[str, Any]
    expected: Any
    settings: dict[str, Any] = field(default_factory=dict)
    patched: bool = True
    warnings_contain: tuple[str, ...] = ()
    xfail: str | None = None

    @property
    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = self.review["request"]
        return request


def _case_names() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "request.json").is_file())


@functools.cache
def load_case(name: str) -> Case:
    folder = FIXTURES / name
    request_bytes = (folder / "request.json").read_bytes()
    expected = json.loads((folder / "expected_pod.json").read_text("utf-8"))
    case_file = folder / "case.yaml"
    document: dict[str, Any] = {}
    if case_file.is_file():
        document = yaml.safe_load(case_file.read_text("utf-8")) or {}
    # A misspelt key would silently fall back to a default and test the wrong thing.
    assert set(document) <= CASE_KEYS, f"{case_file}: unknown keys {set(document) - CASE_KEYS}"
    expect = document.get("expect") or {}
    assert set(expect) <= EXPECT_KEYS, f"{case_file}: unknown expect keys"
    return Case(
        name=name,
        request_bytes=request_bytes,
        review=json.loads(request_bytes),
        expected=expected,
        settings=_with_baseline(document.get("settings") or {}),
        patched=bool(expect.get("patched", True)),
        warnings_contain=tuple(expect.get("warnings_contain") or ()),
        xfail=document.get("xfail"),
    )


def _with_baseline(settings: dict[str, Any]) -> dict[str, Any]:
    credentials = {**FIXTURE_BASELINE["credentials"], **(settings.get("credentials") or {})}
    return {**settings, "credentials": credentials}


def _params(names: list[str] | tuple[str, ...]) -> list[Any]:
    params = []
    for name in names:
        reason = load_case(name).xfail
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@functools.cache
def _settings(settings_json: str) -> Settings:
    """Settings from a case's document, merged over the embedded default like ``--config``.

    ``environ={}`` keeps the developer's BACKEND_INJECTOR_* variables out of the oracle.
    """
    document = json.loads(settings_json)
    if not document:
        return load_settings(environ={})
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text(yaml.safe_dump(document), encoding="utf-8")
        return load_settings(config_file=config, environ={})


def handler_for(case: Case) -> AdmissionHandler:
    return AdmissionHandler(Rules(_settings(json.dumps(case.settings, sort_keys=True))))


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines(keepends=True)


def assert_same(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            _pretty(expected), _pretty(actual), fromfile=f"expected {what}",
            tofile=f"actual {what}",
        ))
        pytest.fail(f"{what} differs from the fixture:\n{diff}", pytrace=False)


def check_envelope(case: Case, response_review: dict[str, Any]) -> list[dict[str, Any]]:
    """The response envelope is right for ``case``; returns the decoded patch (or [])."""
    assert response_review["apiVersion"] == case.review["apiVersion"]
    assert response_review["kind"] == "AdmissionReview"
    assert "request" not in response_review
    response = response_review["response"]
    assert response["uid"] == case.request["uid"]
    assert response["allowed"] is True
    assert "status" not in response  # allowed: there is nothing to explain
    if not case.patched:
        assert "patch" not in response and "patchType" not in response
        return []
    assert response.get("patchType") == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(patch, list) and patch, "a patched response carries operations"
    return patch


def _review_of(case: Case, obj: Any) -> bytes:
    review = copy.deepcopy(case.review)
    review["request"]["object"] = obj
    review["request"]["uid"] = case.request["uid"][:-4] + "beef"
    return json.dumps(review).encode()


@pytest.mark.parametrize("name", _params(_case_names()))
def test_fixture(name: str) -> None:
    case = load_case(name)
    handler = handler_for(case)

    outcome = handler.review(case.request_bytes)
    response_review = json.loads(outcome.body)
    patch = check_envelope(case, response_review)
    warnings = response_review["response"].get("warnings", [])
    for wanted in case.warnings_contain:
        assert any(wanted in warning for warning in warnings), (
            f"no warning contains {wanted!r}: {warnings}"
        )
    if not case.patched and not case.warnings_contain:
        assert warnings == [], "a review that changes nothing has nothing to warn about"

    original = case.request["object"]
    patched = jsonpatch.apply_patch(original, patch) if patch else copy.deepcopy(original)
    assert original == json.loads(case.request_bytes)["request"]["object"], (
        "applying the patch changed the request's own object"
    )
    assert_same(patched, case.expected, "pod")

    # Idempotency: the patched pod, reviewed again, needs nothing more.
    again = json.loads(handler.review(_review_of(case, patched)).body)["response"]
    assert "patch" not in again and "patchType" not in again, (
        "a second review of the patched pod returned a patch: "
        + base64.b64decode(again.get("patch", "")).decode()
    )


def _cli_environment() -> dict[str, str]:
    # The CLI reads BACKEND_INJECTOR_*; the in-process oracle is built with none of them.
    return {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}


@pytest.mark.parametrize("name", _params(CLI_CASES))
def test_cli_review_answers_like_the_handler(name: str, tmp_path: Path) -> None:
    case = load_case(name)
    command = [sys.executable, "-m", "webhook", "--log-level", "warning", "review"]
    if case.settings:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(case.settings), encoding="utf-8")
        command += ["--config", str(config)]
    completed = subprocess.run(
        command, input=case.request_bytes, capture_output=True, cwd=REPO,
        env=_cli_environment(), timeout=CLI_TIMEOUT_SECONDS, check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    in_process = handler_for(case).review(case.request_bytes).body
    assert json.loads(completed.stdout) == json.loads(in_process)
    assert completed.stdout.rstrip(b"\n") == in_process


def test_every_folder_is_a_complete_case() -> None:
    folders = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    assert folders == _case_names(), "a fixture folder has no request.json"
    for name in folders:
        assert (FIXTURES / name / "expected_pod.json").is_file(), f"{name}: no expected_pod.json"


def _scripts(pod: Any) -> list[str]:
    spec = pod.get("spec") or {} if isinstance(pod, dict) else {}
    found = []
    for container in spec.get("initContainers") or []:
        argv = (container.get("command") or []) + (container.get("args") or [])
        if len(argv) >= 3 and argv[0].rsplit("/", 1)[-1] in ("sh", "bash") and argv[1] == "-c":
            found.append(argv[2])
    return found


@pytest.mark.parametrize("name", _case_names())
def test_every_script_the_rules_leave_still_parses_as_shell(name: str) -> None:
    for script in _scripts(load_case(name).expected):
        checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, check=False,
                                 timeout=CLI_TIMEOUT_SECONDS)
        assert checked.returncode == 0, f"{name}: {checked.stderr.decode()}"
