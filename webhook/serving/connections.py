"""What a connection may hold: uvicorn's httptools protocol with the limits a webhook needs.

Anything in the cluster network can open a connection to the webhook, and uvicorn, as it
comes, trusts it more than that allows:

* it arms its idle (keep-alive) timeout only after a first response, so a connection that
  completes the TLS handshake and never sends a request stays open forever. Here the idle
  timeout runs from the handshake too;
* at its connection cap it answers every new request 503, so a thousand idle connections deny
  service to the apiserver. Here a new connection over the cap closes the connection that has
  been idle longest instead, so idle connections can never hold the cap; only connections
  with a request in progress count against it, and a request that finds none idle gets 503;
* llhttp has no limit on a request's head and httptools joins the pieces of a header as they
  arrive, so a header of a hundred megabytes is read in full, at a cost that grows with the
  square of its size, on the event loop. Here the bytes of each head are counted as they
  arrive and a head over ``head_limit`` bytes gets 431 without reading the rest;
* a request that trickles in byte by byte holds its connection for as long as it likes. Here
  it must be complete ``request_seconds`` after its first byte, or it gets 408;
* its own error answers (400, 503) are plain text. Here every answer is JSON, as the
  application's are, and each refusal is logged at a bounded rate (``refusals.py``).

The apiserver is unaffected by all of it: it sends a request of a few hundred bytes of head
and its body in one go on each connection it opens, and closes idle connections after 90 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from webhook.serving.coalescing import CoalescingTransport
from webhook.serving.refusals import bound_server_warnings, refusals

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

HEAD_END = b"\r\n\r\n"
# How long a refused connection may take to write its answer before it is cut.
ABORT_AFTER_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds on each connection and on all of them (see SECURITY.md for the values)."""

    # Open connections, and requests in progress. Above it, the connection idle longest goes.
    max_connections: int = 1000
    # The request line and headers together. The apiserver sends a few hundred bytes; Go's
    # own server allows 1 MiB, nginx 32 KiB; 64 KiB leaves room for any proxy's additions.
    head_limit: int = 64 * 1024
    # From a request's first byte to its last. The apiserver sends a whole review at once, and
    # gives up on a webhook after at most 30 s anyway.
    request_seconds: float = 10.0


def protocol_factory(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn is to use, with ``limits`` in force."""

    class Limited(LimitedHttpToolsProtocol):
        pass

    Limited.limits = limits
    # uvicorn's protocol logs a warning of its own for some refusals (an unparsable request).
    bound_server_warnings()
    return Limited


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with idle, head, time and cap limits (see the module)."""

    limits = ConnectionLimits()

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Bytes of the request head seen so far; None while a body is being read.
        self._head_bytes: int | None = 0
        self._tail = b""  # the last bytes of a head, for a blank line split between reads
        self._idle_since: float | None = None  # when the connection last had nothing to do
        self._request_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A response's head and body leave together, as one TLS record (coalescing.py).
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._become_idle()
        if len(self.connections) > self.limits.max_connections:
            self._close_longest_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        super().connection_lost(exc)

    def _become_idle(self) -> None:
        self._idle_since = time.monotonic()
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _close_longest_idle(self) -> None:
        idle = [
            (since, connection) for connection in self.connections
            if isinstance(connection, LimitedHttpToolsProtocol) and connection is not self
            and (since := connection._idle_since) is not None
        ]
        if not idle:
            return
        _, longest = min(idle, key=lambda pair: pair[0])
        # Out of the count now: its connection_lost comes on a later turn of the loop.
        self.connections.discard(longest)
        longest.transport.close()
        refusals.note("connection cap reached: closed the connection idle longest",
                      "idle-closed-at-cap", {"cap": self.limits.max_connections})

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._idle_since is not None:
            self._idle_since = None
            self._request_timer = self.loop.call_later(
                self.limits.request_seconds, self._request_timed_out
            )
        if self._head_bytes is not None:
            end = _head_end(self._tail, data)
            self._head_bytes += len(data) if end < 0 else end
            if self._head_bytes > self.limits.head_limit:
                self._refuse(431, "head-too-large",
                             f"request head exceeds {self.limits.head_limit} bytes")
                return
            self._tail = (self._tail + data[-3:])[-3:]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._tail = b""
        if len(self.connections) > self.limits.max_connections or (
            len(self.tasks) >= self.limits.max_connections
        ):
            # uvicorn starts whatever self.app is at this moment for this request.
            application, self.app = self.app, _unavailable
            try:
                super().on_headers_complete()
            finally:
                self.app = application
            refusals.refused(503, "connection-cap", client=self.client,
                             path=self.scope.get("path"), size=self._request_size())
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_request_timer()
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn found nothing more to do
            self._idle_since = time.monotonic()
        elif self.transport.is_closing() and self._head_bytes is None:
            # Answered before its body was all in (413): the rest of it is not to be read.
            self._refused = True
            self._cancel_request_timer()
            self._abort_when_written()

    # -- refusing -----------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad-http", msg)

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._refuse(408, "request-timeout",
                     f"request not complete within {self.limits.request_seconds:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` with a JSON error and close, reading nothing more; log ``reason``
        (a fixed word) at the refusals' bounded rate."""
        self._refused = True
        self._cancel_request_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # The application is still at this request; it must not write after us.
            self.cycle.response_complete = True
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = orjson.dumps({"error": message})
        self.transport.write(b"".join((
            STATUS_LINE[status],
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode("ascii"),
            b"\r\nconnection: close\r\n\r\n",
            body,
        )))
        # Not close(): a TLS close waits for the client's close_notify and reads, decrypts and
        # throws away everything the client still sends meanwhile, which is what the limit is
        # there to prevent. The answer is on its way once the transport has no more to write.
        self._abort_when_written()
        scope = self.scope or {}
        refusals.refused(status, reason, client=self.client, path=scope.get("path"),
                         size=self._request_size())

    def _request_size(self) -> int | None:
        """The head's bytes while it is being read, else the Content-Length declared."""
        if self._head_bytes:
            return self._head_bytes
        for name, value in (self.scope or {}).get("headers", ()):
            if name == b"content-length" and value.isdigit():
                return int(value)
        return None

    def _abort_when_written(self, waited: float = 0.0) -> None:
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()  # now: every turn of the loop until the abort reads more
        if self.transport.get_write_buffer_size() == 0 or waited >= ABORT_AFTER_SECONDS:
            self.transport.abort()
            return
        self.loop.call_later(0.01, self._abort_when_written, waited + 0.01)

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None


def _head_end(tail: bytes, data: bytes) -> int:
    """How many bytes of ``data`` belong to a head that ends in it (the blank line), or -1."""
    if tail:
        joined = tail + data[:3]
        position = joined.find(HEAD_END)
        if position >= 0:
            return position + len(HEAD_END) - len(tail)
    position = data.find(HEAD_END)
    return position + len(HEAD_END) if position >= 0 else -1


async def _unavailable(scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
    body = orjson.dumps({"error": "too many connections in progress; try again"})
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})

