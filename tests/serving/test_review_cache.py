"""Remembered answers: the same as a fresh review, for the right uid, and only when sure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from webhook.rules.mutate import Rules
from webhook.serving.admission import AdmissionHandler
from webhook.serving.review_cache import ReviewCache

FIXTURES = sorted(Path(__file__).parents[1].glob("fixtures/*/request.json"))


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
    assert len(cache) == 3


def test_the_table_is_bounded_in_bytes() -> None:
    cache: ReviewCache[object] = ReviewCache(budget=64 * 1024)
    handler = AdmissionHandler(Rules(make_settings()), cache=cache)
    body = FIXTURES[0].read_bytes()
    for number in range(200):
        handler.review(body.replace(b"busybox", f"busybox{number}".encode()))
    assert 0 < cache.held_bytes <= 64 * 1024
    assert 0 < len(cache) < 200


def test_an_entry_larger_than_the_largest_is_not_kept() -> None:
    cache: ReviewCache[object] = ReviewCache(largest_entry=1024)
    AdmissionHandler(Rules(make_settings()), cache=cache).review(FIXTURES[0].read_bytes())
    assert len(cache) == 0 and cache.held_bytes == 0


def review_with(request: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "operation": "CREATE", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        **request}}


def test_a_body_in_which_the_uid_occurs_twice_is_not_answered_from_memory() -> None:
    cache: ReviewCache[object] = ReviewCache()
    handler = AdmissionHandler(Rules(make_settings()), cache=cache)
    obj = {"metadata": {"annotations": {"note": "0f0f-request"}}, "spec": {"containers": []}}
    body = json.dumps(review_with({"uid": "0f0f-request", "object": obj})).encode()
    assert cache.key(body) is None
    handler.review(body)
    assert len(cache) == 0


def test_a_uid_spelled_with_escapes_cannot_take_another_uid_back() -> None:
    # The first plain "uid" is an owner's; the request's uid key and value are spelled with
    # escapes, which the parser reads as "uid": "aaaa". The owner's uid equals it, so the
    # first uid *is* the request uid here, but not in a body where only the owner's changed.
    cache: ReviewCache[object] = ReviewCache()
    handler = AdmissionHandler(Rules(make_settings()), cache=cache)

    def body_with_owner(owner: str) -> bytes:
        obj = {"metadata": {"ownerReferences": [{"uid": owner}]}, "spec": {"containers": []}}
        text = json.dumps(review_with({"object": obj, "UID-HERE": "VALUE-HERE"}))
        return text.replace('"UID-HERE": "VALUE-HERE"',
                            r'"\u0075id": "\u0061\u0061\u0061\u0061"').encode()

    first = body_with_owner("aaaa")
    assert json.loads(handler.review(first).body)["response"]["uid"] == "aaaa"
    second = body_with_owner("bbbb")
    assert json.loads(second)["request"]["uid"] == "aaaa"
    assert json.loads(handler.review(second).body)["response"]["uid"] == "aaaa"


def test_escapes_elsewhere_do_not_keep_a_proven_answer_out() -> None:
    # Go's encoder writes & as \u0026, so most reviews from an apiserver hold escapes.
    cache: ReviewCache[object] = ReviewCache()
    handler = AdmissionHandler(Rules(make_settings()), cache=cache)
    body = with_uid(FIXTURES[0].read_bytes(), json.loads(FIXTURES[0].read_bytes())["request"]
                    ["uid"], "1111-2222").replace(b"do sleep", rb"do true \u0026\u0026 sleep")
    handler.review(body)
    assert len(cache) == 1
    again = body.replace(b"1111-2222", b"3333-4444")
    assert json.loads(handler.review(again).body)["response"]["uid"] == "3333-4444"


def test_the_cache_knows_nothing_of_the_review_envelope() -> None:
    # No import cycle: admission uses the cache, the cache imports nothing of the webhook
    # (its wing's package, which imports nothing itself, is loaded on the way).
    code = "import sys, webhook.serving.review_cache; print(sorted(m for m in sys.modules " \
           "if m.startswith('webhook.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert loaded.strip() == "['webhook.serving', 'webhook.serving.review_cache']"


@pytest.mark.parametrize(("escape", "asked"), [(rb"\u0026", False), (rb"\u0061", True)])
def test_the_uid_is_proven_by_a_second_reading_only_where_escapes_could_spell_it(
    escape: bytes, asked: bool
) -> None:
    cache: ReviewCache[object] = ReviewCache()
    body = b'{"request": {"uid": "1111-2222", "note": "' + escape + b'"}}'
    key = cache.key(body)
    assert key is not None
    readings: list[bytes] = []

    def request_uid(probe: bytes) -> str:
        readings.append(probe)
        return str(json.loads(probe)["request"]["uid"])

    cache.put(key, body, b'{"response":{"uid":"1111-2222"}}', object(), 0, request_uid)
    assert bool(readings) is asked
    assert len(cache) == 1
