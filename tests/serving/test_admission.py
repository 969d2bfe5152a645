"""The review envelope: versions, uid echo, patches only when needed, clear refusals."""

from __future__ import annotations

import base64
import json
from dataclasses import fields, replace
from typing import Any

import jsonpatch
import pytest

from tests.conftest import make_settings, pod
from webhook.rules.mutate import Mutation, Rules
from webhook.serving.admission import (
    WARNING_LENGTH,
    AdmissionHandler,
    EnvelopeError,
    ReviewOutcome,
    without_operations,
)

HANDLER = AdmissionHandler(Rules(make_settings()))  # the default excludes kube-system


def review(
    obj: Any = None, *, operation: str = "CREATE", kind: str = "Pod", namespace: str = "flts",
    api_version: str = "admission.k8s.io/v1",
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "namespace": namespace,
            "operation": operation,
            "object": pod() if obj is None else obj,
        },
    }


def answer(body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(HANDLER.review(json.dumps(body).encode()).body)
    return result


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_answers_in_the_version_asked_with_the_uid(api_version: str) -> None:
    response = answer(review(api_version=api_version))
    assert response["apiVersion"] == api_version
    assert response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["response"]["allowed"] is True
    assert response["response"]["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["response"]["patch"]))
    jsonpatch.apply_patch(pod(), patch)  # applies cleanly


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_other_operations_are_allowed_untouched(operation: str) -> None:
    assert answer(review(operation=operation))["response"] == {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True
    }


def test_other_kinds_are_allowed_untouched() -> None:
    response = answer(review({"spec": {"template": pod()}}, kind="Deployment"))["response"]
    assert "patch" not in response


def test_excluded_namespace_is_never_patched() -> None:
    assert "patch" not in answer(review(namespace="kube-system"))["response"]


def test_the_excluded_namespaces_are_those_of_the_settings_the_rules_were_built_with() -> None:
    settings = replace(make_settings(), excluded_namespaces=frozenset({"flts"}))
    handler = AdmissionHandler(Rules(settings))
    body = json.dumps(review(namespace="flts")).encode()
    assert HANDLER.review(body).result == "mutated"
    for each in (handler, handler.without_cache()):  # the review processes' copy too
        outcome = each.review(body)
        assert outcome.result == "excluded"
        assert "patch" not in json.loads(outcome.body)["response"]


def test_warnings_name_what_changed_briefly() -> None:
    warnings = answer(review())["response"]["warnings"]
    assert any("removed init containers wait-for-mlflow" in w for w in warnings)
    assert all(len(w) <= WARNING_LENGTH for w in warnings)
    assert not any("minioadmin" in w or "host.docker.internal" in w for w in warnings)


def test_a_pod_it_cannot_read_is_allowed_unchanged_with_a_warning() -> None:
    response = answer(review({"spec": {"containers": "not a list"}}))["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert "left unchanged" in response["warnings"][0]


def test_a_bug_in_the_rules_still_gets_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Rules, obj: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Rules, "mutate_pod", broken)
    handler = AdmissionHandler(Rules(make_settings()))
    response = json.loads(handler.review(json.dumps(review()).encode()).body)["response"]
    assert response["allowed"] is True
    assert "internal error" in response["warnings"][0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionRevi',
        b"\xff\xfe{}",
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": NaN}',
        b'{"apiVersion": "v1", "kind": "Pod"}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}',
        b"[" * 200_000 + b"]" * 200_000,
    ],
)
def test_bodies_that_are_not_reviews_are_refused(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        HANDLER.review(body)


def test_an_account_keeps_every_field_but_the_answer_and_the_operations() -> None:
    handler = AdmissionHandler(Rules(make_settings()))
    body = json.dumps(review(pod())).encode()
    outcome = handler.review(body)
    assert outcome.mutation is not None and outcome.mutation.operations
    account = without_operations(outcome)
    assert account.body == b""
    for item in fields(ReviewOutcome):
        if item.name not in ("body", "mutation"):
            assert getattr(account, item.name) == getattr(outcome, item.name), item.name
    assert account.mutation is not None
    assert len(account.mutation.operations) == len(outcome.mutation.operations)
    for item in fields(Mutation):
        if item.name not in ("operations", "_env_set"):
            assert getattr(account.mutation, item.name) == getattr(outcome.mutation,
                                                                   item.name), item.name
    # A repeat is answered from the cache with the account's fields and its own uid.
    other_uid = "805ab4f5-6393-11e8-b7cc-42010a800002"
    again = handler.review(body.replace(b"705ab4f5-6393-11e8-b7cc-42010a800002",
                                        other_uid.encode()))
    assert again.uid == other_uid and again.result == outcome.result
    assert json.loads(again.body)["response"]["uid"] == other_uid
    assert again.mutation is not None and again.mutation.changed
