"""No credential value reaches whoever asks, out of the box.

A real ``serve`` process holds real-looking S3 credentials (given as its deployment gives them,
through ``BACKEND_INJECTOR_*``) and the embedded default configuration. Strangers post reviews
to it: pods of other namespaces, other users, anonymous ones, dry runs, the older API version,
pods that carry credentials of their own or expand them into their command, malformed bodies.
No answer holds either value, in clear or in base64 (the patch is base64 of JSON); nor does
any line the server logged, nor what ``review``, ``inject`` (plain and as a KRM function),
``policy`` and ``config`` print with the same credentials.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_process import run_cli
from tests.conftest import pod, waiter
from tests.server_process import Server, review_body, start_server, stop, write_pair

ACCESS = "AKIA-REAL-LOOKING-ID-7731"
SECRET = "wJalr-real-looking-secret-4419"
ENVIRONMENT = {"BACKEND_INJECTOR_ACCESS_KEY_ID": ACCESS,
               "BACKEND_INJECTOR_SECRET_ACCESS_KEY": SECRET}
STRANGERS = (
    {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
    {"username": "mallory", "groups": ["system:authenticated"]},
    {"username": "system:serviceaccount:other:default",
     "groups": ["system:serviceaccounts", "system:serviceaccounts:other"]},
)
NAMESPACES = ("flts", "default", "other", "not-opted-in")


def forms(value: str) -> tuple[str, ...]:
    """The value as it could appear: in clear, and in base64 from any of three alignments
    (inside a longer base64 text the value's own encoding shifts with its offset)."""
    found = [value]
    for pad in range(3):
        encoded = base64.b64encode(b"x" * pad + value.encode()).decode()
        skip = (pad * 4 + 2) // 3 + 1  # drop the characters that mix in the padding bytes
        found.append(encoded[skip:-4])
    return tuple(found)


def leaks(text: str) -> list[str]:
    return [form for value in (ACCESS, SECRET) for form in forms(value) if form in text]


def stranger_pods() -> Iterator[dict[str, Any]]:
    yield pod()  # the chart's trainer: waiters for mlflow and kafka
    trainer = pod()
    trainer["spec"]["containers"][0]["env"] += [
        {"name": "AWS_ACCESS_KEY_ID", "value": "chart-own"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "chart-own"}]
    yield trainer
    expanding = pod(init=[waiter("wait-for-minio", "until nc -z minio 9000; do sleep 1; done")])
    expanding["spec"]["containers"][0]["command"] = [
        "sh", "-c", "echo $(AWS_SECRET_ACCESS_KEY) $(AWS_ACCESS_KEY_ID); mc ls"]
    yield expanding
    yield pod(init=[], containers=[{"name": "app", "image": "app"}])


def reviews() -> Iterator[dict[str, Any]]:
    number = 0
    for namespace in NAMESPACES:
        for stranger in STRANGERS:
            for obj in stranger_pods():
                number += 1
                body = review_body(obj, f"stranger-{number}")
                body["request"].update(namespace=namespace, userInfo=stranger,
                                       dryRun=number % 2 == 0)
                yield body
    older = review_body(pod(), "older-api")
    older["apiVersion"] = "admission.k8s.io/v1beta1"
    yield older


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("stranger-server")
    running = start_server(directory, tls_dir=write_pair(directory / "tls"), env=ENVIRONMENT)
    yield running
    stop(running)


def test_no_answer_to_a_stranger_holds_a_credential(server: Server) -> None:
    answered = 0
    with server.client() as client:
        for body in reviews():
            response = client.post("/mutate", json=body)
            assert response.status_code == 200, response.text
            answer = response.json()["response"]
            patch = base64.b64decode(answer.get("patch") or "").decode()
            assert not leaks(response.text + patch), (body["request"]["uid"], patch)
            answered += bool(patch)
        for broken in (b"{", b'{"request": {"object": ' + SECRET.encode() + b"}}", b"[]"):
            response = client.post("/mutate", content=broken,
                                   headers={"content-type": "application/json"})
            assert response.status_code in (200, 400)
            assert SECRET not in response.text
    # Most reviews were mutated: the answers were real ones, not refusals.
    assert answered >= len(NAMESPACES) * len(STRANGERS) * 3


def test_the_pods_are_told_where_to_read_the_credentials(server: Server) -> None:
    with server.client() as client:
        response = client.post("/mutate", json=review_body(pod(), "by-reference"))
    patch = json.loads(base64.b64decode(response.json()["response"]["patch"]))
    env = [op["value"] for op in patch if op["path"].endswith("/env/-")] + [
        entry for op in patch if op["path"].endswith("/env") for entry in op["value"]]
    references = {entry["name"]: entry["valueFrom"]["secretKeyRef"] for entry in env
                  if entry.get("name", "").startswith("AWS_")}
    assert references == {
        "AWS_ACCESS_KEY_ID": {"name": "backend-injector-credentials", "key": "access-key-id"},
        "AWS_SECRET_ACCESS_KEY": {"name": "backend-injector-credentials",
                                  "key": "secret-access-key"},
    }


def test_no_log_line_holds_a_credential(server: Server) -> None:
    with server.client() as client:
        for body in reviews():
            client.post("/mutate", json=body)
    stop(server)
    text = server.log.read_text()
    assert "review" in text  # the server did log the reviews
    assert not leaks(text)


def manifests() -> str:
    template = {"metadata": {"labels": {"app": "train"}}, "spec": next(stranger_pods())["spec"]}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "train", "namespace": "other"},
                  "spec": {"selector": {"matchLabels": {"app": "train"}},
                           "template": template}}
    return yaml.safe_dump(deployment)


@pytest.mark.parametrize("command", [
    ("review",), ("inject",), ("inject", "--diff"), ("policy",), ("inject", "krm"),
    ("config",),
])
def test_no_command_prints_a_credential(command: tuple[str, ...]) -> None:
    if command == ("review",):
        result = run_cli("review", stdin=json.dumps(review_body(pod(), "cli")), env=ENVIRONMENT)
    elif command == ("inject", "krm"):
        listed = {"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList",
                  "items": [yaml.safe_load(manifests())]}
        result = run_cli("inject", stdin=yaml.safe_dump(listed), env=ENVIRONMENT)
    elif command[0] == "inject":
        result = run_cli(*command, stdin=manifests(), env=ENVIRONMENT)
    else:
        result = run_cli(*command, env=ENVIRONMENT)
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.strip(), "the command printed nothing to check"
    assert not leaks(result.stdout + result.stderr)


def test_value_mode_is_the_explicit_exception_and_says_so(tmp_path: Path) -> None:
    """The check above can fail: in value mode the same inject carries the values, and
    warns that it does."""
    config = tmp_path / "value.yaml"
    config.write_text("credentials: {mode: value}\n")
    result = run_cli("inject", "--config", str(config), stdin=manifests(), env=ENVIRONMENT)
    assert leaks(result.stdout)
    assert "credentials.mode is value" in result.stderr


def test_serve_in_value_mode_warns_at_start_naming_the_exposure(tmp_path: Path) -> None:
    config = tmp_path / "value.yaml"
    config.write_text("credentials: {mode: value}\n")
    running = start_server(tmp_path, "--config", str(config),
                           tls_dir=write_pair(tmp_path / "tls"), env=ENVIRONMENT)
    stop(running)
    warnings = [line["message"] for line in running.log_lines()
                if line.get("level") == "warning"]
    assert any("credentials.mode is value" in text and "every answer of /mutate" in text
               for text in warnings), warnings
    assert not leaks(running.log.read_text())
