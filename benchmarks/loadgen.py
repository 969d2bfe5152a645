"""A small HTTP/1.1-over-TLS load generator for the webhook, on asyncio.

Two modes, both over keep-alive connections as the apiserver uses them:

* closed loop (``rate=None``): each connection sends its next review as soon as the answer
  to the last one is in; this finds the throughput;
* paced (``rate=R``): request *i* is due at ``start + i / R`` and its latency is measured from
  that due time, not from when it was actually sent, so a stalled server is charged for the
  requests that queued behind the stall (no coordinated omission).

Requests are prebuilt bytes and responses are read by Content-Length, so the generator does
as little per request as it can. It only ever connects to the address it is given, which the
benchmarks and tests keep on this machine.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class LoadResult:
    """What a run saw: one latency per answered request, and everything that went wrong."""

    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        bad_status = sum(count for status, count in self.statuses.items() if status != 200)
        return bad_status + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.answered / self.elapsed if self.elapsed else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def build_request(body: bytes, *, path: str = "/mutate", host: str = "localhost") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def parse_head(head: bytes) -> tuple[int, int]:
    """The status and Content-Length (0 if none) of a response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length


async def _read_response(reader: asyncio.StreamReader) -> int:
    status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    connections: int,
    duration: float | None = None,
    count: int | None = None,
    rate: float | None = None,
    context: ssl.SSLContext | None = None,
    server_hostname: str = "localhost",
) -> LoadResult:
    """Send ``requests`` round-robin until ``duration`` seconds or ``count`` requests."""
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    result = LoadResult()
    next_index = 0
    start = time.perf_counter()
    deadline = start + duration if duration is not None else float("inf")

    def take() -> tuple[int, float] | None:
        nonlocal next_index
        index = next_index
        if count is not None and index >= count:
            return None
        due = start + index / rate if rate else time.perf_counter()
        if due >= deadline:
            return None
        next_index += 1
        return index, due

    async def connection() -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=server_hostname
            )
            while (taken := take()) is not None:
                index, due = taken
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(requests[index % len(requests)])
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - due)
                result.statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as error:
            result.errors[error.__class__.__name__] += 1
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    result.elapsed = time.perf_counter() - start
    return result


def run(
    host: str, port: int, requests: list[bytes], **options: object
) -> LoadResult:
    """``run_load`` on a fresh uvloop event loop (for threads and scripts)."""
    import uvloop

    return uvloop.run(run_load(host, port, requests, **options))  # type: ignore[arg-type]
