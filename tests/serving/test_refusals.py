"""Refusals in the log: each reason at a bounded rate, with the count of what was left out.

The bound is checked on the limit itself with a clock the test moves, on the records the
refusal log writes, and on a real server sent a flood of bodies that are not reviews.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import adversarial as attacks
from tests.conftest import pod
from tests.server_process import Server, review_body, start_server, stop, write_pair
from webhook.serving.app import DEFAULT_BODY_LIMIT
from webhook.serving.offload import OFFLOAD_THRESHOLD
from webhook.serving.refusals import (
    LINES_PER_SECOND,
    MOST_KEYS,
    OTHER,
    BoundedWarnings,
    RateLimit,
    RefusalLog,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("test.refused")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", {})
    assert isinstance(fields, dict)
    return fields


# -- the limit ---------------------------------------------------------------------------------


def test_each_key_gets_its_lines_a_second_and_the_next_line_counts_the_rest() -> None:
    clock = Clock()
    limit = RateLimit(per_second=3, clock=clock)
    first_second = [limit.admit("not-json") for _ in range(10)]
    assert first_second == [0, 0, 0] + [None] * 7
    # Another reason has a budget of its own.
    assert limit.admit("body-too-large") == 0
    clock.now += 1.0
    assert limit.admit("not-json") == 7  # the seven left out, said once
    assert limit.admit("not-json") == 0
    clock.now += 5.0
    assert limit.admit("not-json") == 0


def test_lines_over_any_span_stay_within_the_rate() -> None:
    clock = Clock()
    limit = RateLimit(per_second=LINES_PER_SECOND, clock=clock)
    written = suppressed = 0
    for _ in range(10_000):  # ten thousand refusals over ten seconds
        clock.now += 0.001
        admitted = limit.admit("not-json")
        if admitted is None:
            continue
        written += 1
        suppressed += admitted
    seconds = 10
    assert written <= LINES_PER_SECOND * (seconds + 1)
    # Every refusal is either a line or counted in a later one, except those of the last
    # second, which the next line (none here) would count.
    assert written + suppressed >= 10_000 - 1000


def test_unforeseen_keys_share_one_count_past_the_most_kept() -> None:
    clock = Clock()
    limit = RateLimit(per_second=1, clock=clock)
    for number in range(MOST_KEYS):
        assert limit.admit(f"key-{number}") == 0
    # Every new key from here on is OTHER, and OTHER has one line a second like any key.
    assert limit.admit("one-more") == 0
    assert limit.admit("yet-another") is None
    clock.now += 1.0
    assert limit.admit(OTHER) == 1


# -- the refusal log ---------------------------------------------------------------------------


def test_a_refusal_line_says_why_who_where_and_how_much(records: Records) -> None:
    log = RefusalLog(RateLimit(per_second=2, clock=Clock()), logger_name="test.refused")
    log.refused(413, "body-too-large", client=("10.1.2.3", 51234), path="/mutate",
                size=5 * 1024 * 1024)
    log.refused(400, "not-json", client=("fd00::7", 443), path="/" + "x" * 5000, size=12)
    first, second = records.records
    assert first.getMessage() == "request refused"
    assert first.levelno == logging.WARNING
    assert fields_of(first) == {"status": 413, "reason": "body-too-large",
                                "client": "10.1.2.3:51234", "path": "/mutate",
                                "size": 5 * 1024 * 1024}
    assert fields_of(second)["client"] == "[fd00::7]:443"
    assert len(fields_of(second)["path"]) < 300  # clipped, saying how much was left out


def test_a_flood_of_one_reason_writes_the_bound_and_then_the_count(records: Records) -> None:
    clock = Clock()
    log = RefusalLog(RateLimit(per_second=LINES_PER_SECOND, clock=clock),
                     logger_name="test.refused")
    for _ in range(500):
        log.refused(400, "not-json", client=("127.0.0.1", 1), path="/mutate", size=3)
    log.refused(413, "body-too-large", client=("127.0.0.1", 1), path="/mutate", size=9)
    assert len(records.records) == LINES_PER_SECOND + 1
    clock.now += 1.0
    log.refused(400, "not-json", client=("127.0.0.1", 1), path="/mutate", size=3)
    last = fields_of(records.records[-1])
    assert last["reason"] == "not-json"
    assert last["suppressed"] == 500 - LINES_PER_SECOND
    assert all("suppressed" not in fields_of(record) for record in records.records[:-1])


def test_uvicorns_own_warnings_are_held_to_the_rate_of_their_message(records: Records) -> None:
    clock = Clock()
    logger = logging.getLogger("test.refused")
    bounded = BoundedWarnings(RateLimit(per_second=2, clock=clock))
    logger.addFilter(bounded)
    try:
        for _ in range(50):
            logger.warning("Invalid HTTP request received.")
        logger.info("Started server process [%d]", 1)  # below warning: never held
        clock.now += 1.0
        logger.warning("Invalid HTTP request received.")
    finally:
        logger.removeFilter(bounded)
    messages = [record.getMessage() for record in records.records]
    assert messages.count("Invalid HTTP request received.") == 3
    assert "Started server process [1]" in messages
    assert fields_of(records.records[-1]) == {"suppressed": 48}


# -- a real server -----------------------------------------------------------------------------


@pytest.fixture
def flooded(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path, tls_dir=write_pair(tmp_path / "tls"))
    yield running
    stop(running)


def refusal_lines(server: Server) -> list[dict[str, Any]]:
    return [line for line in server.log_lines() if line["message"] == "request refused"]


def test_a_flood_of_bad_bodies_logs_at_the_bound_and_counts_the_rest(flooded: Server) -> None:
    marker = "body-content-never-logged"
    sent = 400
    started = time.monotonic()
    with flooded.client() as client:
        for _ in range(sent):
            assert client.post("/mutate", content=f"{marker} not json".encode()).status_code == 400
        seconds = time.monotonic() - started
        time.sleep(1.1)  # a new second: the next line carries the count of those left out
        assert client.post("/mutate", content=marker.encode()).status_code == 400
        # Another reason, in the same second as the flood's end, has lines of its own.
        too_large = client.post("/mutate", content=b"{" * (DEFAULT_BODY_LIMIT + 1))
        assert too_large.status_code == 413
    time.sleep(0.3)
    lines = refusal_lines(flooded)
    not_json = [line for line in lines if line["reason"] == "not-json"]
    print(f"\n[measured] {sent + 1} bad bodies in {seconds:.1f} s: {len(not_json)} lines")
    assert len(not_json) <= LINES_PER_SECOND * (int(seconds) + 2) + 1
    assert len(not_json) + sum(line.get("suppressed", 0) for line in not_json) == sent + 1
    assert not_json[-1].get("suppressed", 0) > 0
    first = not_json[0]
    assert first["status"] == 400 and first["path"] == "/mutate"
    assert first["client"].startswith("127.0.0.1:")
    assert first["size"] == len(f"{marker} not json")
    (large,) = [line for line in lines if line["reason"] == "body-too-large"]
    assert large["status"] == 413 and large["size"] == DEFAULT_BODY_LIMIT + 1
    assert marker not in flooded.log.read_text()


def test_each_kind_of_bad_review_is_logged_with_its_reason(flooded: Server) -> None:
    bodies = {
        "empty-body": b"",
        "not-an-object": b"[]",
        "not-a-review": json.dumps({"kind": "Pod"}).encode(),
        "no-request": json.dumps({"kind": "AdmissionReview",
                                  "apiVersion": "admission.k8s.io/v1"}).encode(),
    }
    with flooded.client() as client:
        for body in bodies.values():
            assert client.post("/mutate", content=body).status_code == 400
        assert client.get("/mutate").status_code == 405
        assert client.post("/mutate", json=review_body(pod())).status_code == 200
        # Over the offload threshold: refused by the review process, its reason sent back.
        big = client.post("/mutate", content=b"[" + b" " * OFFLOAD_THRESHOLD + b"x")
        assert big.status_code == 400
    time.sleep(0.3)
    lines = refusal_lines(flooded)
    assert [line["reason"] for line in lines] == [*bodies, "method-not-allowed", "not-json"]
    assert lines[-1]["size"] == OFFLOAD_THRESHOLD + 2


def test_a_flood_of_unparsable_requests_is_logged_at_the_bound(flooded: Server) -> None:
    port = int(flooded.url.rsplit(":", 1)[1])
    sent = 40
    started = time.monotonic()
    for _ in range(sent):
        status, _ = attacks.request_once(port, b"NOT HTTP AT ALL\r\n\r\n", 5)
        assert status == 400
    seconds = time.monotonic() - started
    time.sleep(0.3)
    bound = LINES_PER_SECOND * (int(seconds) + 2)
    bad_http = [line for line in refusal_lines(flooded) if line["reason"] == "bad-http"]
    # uvicorn says so too, in a line of its own, held to the same rate.
    uvicorn_said = [line for line in flooded.log_lines()
                    if line["message"] == "Invalid HTTP request received."]
    print(f"\n[measured] {sent} unparsable requests in {seconds:.1f} s: {len(bad_http)} "
          f"refusal lines, {len(uvicorn_said)} of uvicorn's")
    assert 1 <= len(bad_http) <= bound
    assert len(uvicorn_said) <= bound
    assert bad_http[0]["status"] == 400 and bad_http[0]["client"].startswith("127.0.0.1:")
