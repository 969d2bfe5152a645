"""Review log lines: written by the end of the loop turn that made them, in order with every
other record, and none lost when a server (one worker or several) is stopped."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import pod
from tests.server_process import review_body, start_server, stop, write_pair
from webhook.serving.logs import HELD_LINES_BYTES, ReviewLog, configure_logging


@pytest.fixture
def stream() -> Iterator[io.TextIOWrapper]:
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    import sys

    target = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    real, sys.stderr = sys.stderr, target
    try:
        configure_logging("INFO", "json")
    finally:
        sys.stderr = real
    yield target
    logging.getLogger().handlers[:], level = saved
    logging.getLogger().setLevel(level)


def written(stream: io.TextIOWrapper) -> list[str]:
    stream.flush()
    raw = stream.buffer
    assert isinstance(raw, io.BytesIO)
    return [json.loads(line)["message"] for line in raw.getvalue().decode().splitlines()]


def test_lines_of_one_turn_are_written_when_it_ends_and_before_any_other_record(
    stream: io.TextIOWrapper,
) -> None:
    log = ReviewLog("webhook.review")

    async def turn() -> tuple[list[str], list[str], list[str]]:
        log.info("first", {"uid": "a"})
        log.info("second", {"uid": "b"})
        held = written(stream)
        logging.getLogger("webhook.other").warning("third")
        in_order = written(stream)
        log.info("fourth", {"uid": "c"})
        await asyncio.sleep(0)
        return held, in_order, written(stream)

    held, in_order, after_turn = asyncio.run(turn())
    assert held == []
    assert in_order == ["first", "second", "third"]
    assert after_turn == ["first", "second", "third", "fourth"]


def test_outside_an_event_loop_and_past_the_byte_bound_lines_are_written_at_once(
    stream: io.TextIOWrapper,
) -> None:
    log = ReviewLog("webhook.review")
    log.info("outside", {})
    assert written(stream) == ["outside"]

    async def many() -> int:
        big = "x" * 1000
        count = HELD_LINES_BYTES // 1000 + 1
        for number in range(count):
            log.info(f"line {number}", {"pod": big})
        return len(written(stream))

    assert asyncio.run(many()) > 1  # written before the turn ended


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stopped_server_has_logged_every_review(tmp_path: Path, workers: str) -> None:
    running = start_server(tmp_path, "--workers", workers, tls_dir=write_pair(tmp_path / "tls"))
    uids = [f"uid-{number}" for number in range(200)]
    try:
        with running.client() as client:
            for uid in uids:
                answer = client.post("/mutate", json=review_body(pod(), uid=uid))
                assert answer.status_code == 200
    finally:
        stop(running)  # at once: the last answers' lines may still be held
    # Every line read as JSON: a line cut or interleaved with another worker's loses its uid.
    lines = [json.loads(text) for text in running.log.read_text().splitlines()]
    logged = [line["uid"] for line in lines if line["message"] == "review"]
    assert sorted(logged) == sorted(uids)
