"""The coalescing transport: writes of one loop turn leave as one, nothing is held longer."""

from __future__ import annotations

import asyncio
from typing import Any

from webhook.serving.coalescing import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    async def scenario() -> list[list[bytes]]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"{}")
        seen = [list(real.writes)]
        assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n{}")
        await asyncio.sleep(0)
        seen.append(list(real.writes))
        transport.write(b"next")
        await asyncio.sleep(0)
        seen.append(list(real.writes))
        return seen

    during, after_turn, after_next = asyncio.run(scenario())
    assert during == []
    assert after_turn == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    assert after_next == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"next"]


def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closing, aborting = RecordingTransport(), RecordingTransport()
        first = CoalescingTransport(closing, loop)
        first.write(b"answer")
        first.close()
        second = CoalescingTransport(aborting, loop)
        second.write(b"answer")
        second.abort()
        await asyncio.sleep(0)  # the scheduled turn-end finds nothing held
        return closing, aborting

    closing, aborting = asyncio.run(scenario())
    assert closing.writes == [b"answer"] and closing.closed
    assert aborting.writes == [] and aborting.aborted


def test_nothing_is_written_to_a_closing_transport() -> None:
    async def scenario() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"late")
        real.closed = True
        await asyncio.sleep(0)
        return real

    assert asyncio.run(scenario()).writes == []
