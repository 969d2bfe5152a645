"""Remembered answers: the same as a fresh review, for the right uid, and only when sure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_settings
from webhook.admission import AdmissionHandler
from webhook.mutate import Rules
from webhook.review_cache import ReviewCache

FIXTURES = sorted(Path(__file__).parent.glob("fixtures/*/request.json"))


def with_uid(body: bytes, old: str, new: str) -> bytes:
    return body.replace(f'"uid": "{old}"'.encode(), f'"uid": "{new}"'.encode(), 1)


@pytest.mark.parametrize("request_file", FIXTURES, ids=lambda path: path.parent.name)
def test_a_remembered_answer_equals_a_fresh_one(request_file: Path) -> None:
    body = request_file.read_bytes()
    uid = json.loads(body)["request"]["uid"]
    cached = AdmissionHandler(Rules(make_settings()))
    cached.review(body)  # remembered
    again = with_uid(body, uid, "0f0f0f0f-1111-2222-3333-444455556666")
    fresh = AdmissionHandler(Rules(make_settings()), cache=ReviewCache(entries=0))
    remembered, computed = cached.review(again), fresh.review(again)
    assert remembered.body == computed.body
    assert remembered.uid == "0f0f0f0f-1111-2222-3333-444455556666"
    assert remembered.result == computed.result


def test_a_different_object_is_not_answered_from_memory() -> None:
    body = FIXTURES[0].read_bytes()
    handler = AdmissionHandler(Rules(make_settings()))
    first = handler.review(body)
    changed = body.replace(b"busybox", b"alpine")
    assert handler.review(changed).body == AdmissionHandler(
        Rules(make_settings()), cache=ReviewCache(entries=0)
    ).review(changed).body
    assert first.body != b""


def test_a_first_uid_that_is_not_the_request_uid_is_never_remembered() -> None:
    cache = ReviewCache()
    handler = AdmissionHandler(Rules(make_settings()), cache=cache)
    # The object comes first here, so the first "uid" is the owner's, not the request's.
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "object": {"metadata": {"ownerReferences": [{"uid": "owner-1"}]},
                   "spec": {"containers": [{"name": "app"}]}},
        "uid": "request-1", "operation": "CREATE",
        "kind": {"group": "", "version": "v1", "kind": "Pod"}}}
    body = json.dumps(review).encode()
    handler.review(body)
    key = cache.key(body)
    assert key is not None and key.uid == "owner-1"
    assert cache.get(key) is None
    other = body.replace(b"request-1", b"request-2")
    assert json.loads(handler.review(other).body)["response"]["uid"] == "request-2"


def test_the_table_is_bounded() -> None:
    cache = ReviewCache(entries=3)
    handler = AdmissionHandler(Rules(make_settings()), cache=cache)
    body = FIXTURES[0].read_bytes()
    for number in range(10):
        handler.review(body.replace(b"busybox", f"busybox{number}".encode()))
    assert len(cache._entries) == 3
