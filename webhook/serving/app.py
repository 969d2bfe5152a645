"""The HTTP application: the one module that knows FastAPI.

``POST /mutate`` is served by a small ASGI endpoint in front of FastAPI: it is the only hot
path, and going through FastAPI's request, routing and response machinery there costs more
than the review itself. Everything else (``/healthz``, ``/readyz``, ``/metrics``, 404s and
405s) is an ordinary FastAPI route. What ``/mutate`` refuses (400, 405, 413, 503) is logged at
a bounded rate (``refusals.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from webhook.serving.admission import AdmissionHandler, EnvelopeError, ReviewOutcome
from webhook.serving.logs import ReviewLog, bounded_fields
from webhook.serving.metrics import Metrics
from webhook.serving.offload import OFFLOAD_THRESHOLD, Busy, ReviewProcesses
from webhook.serving.refusals import refusals

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# The largest body a CREATE review can be. The apiserver refuses request bodies over 3 MiB,
# and the webhook is registered for CREATE only, whose review carries the object once
# (oldObject is null) beside an envelope of about a KiB: the request's kind, resource and
# options, and who asked (userInfo). One MiB more covers an envelope a thousand times that, or
# what the apiserver adds to the object as it encodes it for the webhook (defaulted fields,
# metadata, characters it escapes), for any pod not built to grow there (SECURITY.md). A larger
# body did not come from an apiserver: it is refused from its Content-Length, or as soon as a
# chunked body passes the limit, before it can wait for the review process.
OBJECT_LIMIT = 3 * 1024 * 1024
ENVELOPE_ALLOWANCE = 1024 * 1024
DEFAULT_BODY_LIMIT = OBJECT_LIMIT + ENVELOPE_ALLOWANCE
# Answers larger than this are written in pieces of this size.
SEND_CHUNK = 256 * 1024

review_log = ReviewLog("webhook.review")


@dataclass(slots=True)
class Readiness:
    """Whether the server should get traffic; false until serving and again when draining."""

    ready: bool = False
    reason: str = "starting"

    def set(self, ready: bool, reason: str) -> None:
        self.ready = ready
        self.reason = reason


class BodyTooLarge(Exception):
    """The request body exceeds the limit (HTTP 413)."""

    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size  # the Content-Length declared, or the bytes read; None if unreadable


class MutateEndpoint:
    """Raw ASGI handler for ``/mutate``: read, review, answer, log, count."""

    def __init__(self, handler: AdmissionHandler, metrics: Metrics, body_limit: int,
                 big_reviews: ReviewProcesses | None) -> None:
        self._handler = handler
        self._metrics = metrics
        self._body_limit = body_limit
        self._big_reviews = big_reviews

    def use_handler(self, handler: AdmissionHandler) -> None:
        """Answer with ``handler`` from the next review on (called on the event loop)."""
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            self._metrics.observe_error("method-not-allowed")
            await _send_json(send, 405, {"error": "use POST"}, extra=[(b"allow", b"POST")])
            _refused(scope, 405, "method-not-allowed", _declared_length(scope))
            return
        try:
            body = await self._read_body(scope, receive)
        except BodyTooLarge as error:
            self._metrics.observe_error("body-too-large")
            await _send_json(send, 413, {"error": f"body exceeds {self._body_limit} bytes"},
                             extra=[(b"connection", b"close")])
            _refused(scope, 413, "body-too-large", error.size)
            return
        started = time.perf_counter()
        try:
            if len(body) <= OFFLOAD_THRESHOLD:
                outcome = self._handler.review(body)
            elif self._big_reviews is not None:
                outcome = await self._big_reviews.review(body)
            else:
                # Without review processes (the app embedded elsewhere), a thread at least
                # lets other requests be read meanwhile.
                outcome = await asyncio.to_thread(self._handler.review, body)
        except EnvelopeError as error:
            self._metrics.observe_error("bad-request")
            await _send_json(send, 400, {"error": str(error)})
            _refused(scope, 400, error.reason, len(body))
            return
        except Busy:
            self._metrics.observe_error("busy")
            await _send_json(send, 503, {"error": "too many large reviews waiting; try again"},
                             extra=[(b"retry-after", b"1")])
            _refused(scope, 503, "busy", len(body))
            return
        seconds = time.perf_counter() - started
        await send_answer(send, 200, outcome.body)
        self._metrics.observe_review(outcome, seconds)
        log_review(outcome, seconds)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            # Refuse early, from the header, without reading what was sent.
            if name == b"content-length" and (not value.isdigit() or int(value) > self._body_limit):
                raise BodyTooLarge(int(value) if value.isdigit() else None)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._body_limit:
                raise BodyTooLarge(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


class WebhookApp:
    """Routes ``/mutate`` to the fast endpoint and everything else to FastAPI."""

    def __init__(self, api: FastAPI, mutate: MutateEndpoint) -> None:
        self.api = api
        self._mutate = mutate

    def use_handler(self, handler: AdmissionHandler) -> None:
        """Answer ``/mutate`` with ``handler`` from the next review on (on the event loop)."""
        self._mutate.use_handler(handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mutate":
            await self._mutate(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(
    handler: AdmissionHandler,
    *,
    metrics: Metrics,
    readiness: Readiness,
    body_limit: int = DEFAULT_BODY_LIMIT,
    big_reviews: ReviewProcesses | None = None,
) -> WebhookApp:
    """Build the ASGI application around a ready AdmissionHandler.

    Reviews over ``OFFLOAD_THRESHOLD`` bytes go to ``big_reviews`` (see webhook/serving/offload.py).
    """
    api = FastAPI(title="backend-injector", docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        status = 200 if readiness.ready else 503
        return JSONResponse({"ready": readiness.ready, "reason": readiness.reason}, status)

    @api.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    return WebhookApp(api, MutateEndpoint(handler, metrics, body_limit, big_reviews))


def _refused(scope: Scope, status: int, reason: str, size: int | None) -> None:
    refusals.refused(status, reason, client=scope.get("client"), path=scope["path"], size=size)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def log_review(outcome: ReviewOutcome, seconds: float) -> None:
    mutation = outcome.mutation
    fields: dict[str, Any] = {
        "uid": outcome.uid,
        "operation": outcome.operation,
        "namespace": outcome.namespace,
        "pod": outcome.pod,
        "result": outcome.result,
        "duration_ms": round(seconds * 1000, 3),
    }
    if outcome.dry_run:
        fields["dry_run"] = True
    if mutation is not None and mutation.changed:
        fields["removed"] = mutation.removed
        fields["rewritten"] = mutation.rewritten
        fields["env"] = mutation.env
        if mutation.aliased:
            fields["aliased"] = mutation.aliased
    if mutation is not None and mutation.skipped:
        fields["skipped"] = mutation.skipped
    review_log.info("review", bounded_fields(fields))


async def _send_json(
    send: Send, status: int, content: dict[str, Any], *, extra: Headers | None = None
) -> None:
    await send_answer(send, status, orjson.dumps(content), extra=extra)


async def send_answer(
    send: Send, status: int, body: bytes, *, extra: Headers | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if len(body) <= SEND_CHUNK:
        await send({"type": "http.response.body", "body": body})
        return
    # A big answer is encrypted as it is written; in pieces, with other requests served in
    # between, it holds the event loop for a fraction of a millisecond at a time.
    view = memoryview(body)
    for start in range(0, len(body), SEND_CHUNK):
        piece = bytes(view[start:start + SEND_CHUNK])
        await send({"type": "http.response.body", "body": piece,
                    "more_body": start + SEND_CHUNK < len(body)})
        await asyncio.sleep(0)
