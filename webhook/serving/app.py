"""The HTTP application: the one module that knows FastAPI.

``POST /mutate`` is served by a small ASGI endpoint in front of FastAPI: it is the only hot
path, and going through FastAPI's request, routing and response machinery there costs more
than the review itself. Everything else (``/healthz``, ``/readyz``, ``/metrics``, 404s and
405s) is an ordinary FastAPI route.
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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# The apiserver refuses request bodies over 3 MiB, and an AdmissionReview carries the object
# up to twice (object and oldObject) plus the envelope; controller-runtime settles on 7 MiB
# for the same reason. Anything larger did not come from an apiserver.
DEFAULT_BODY_LIMIT = 7 * 1024 * 1024
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


class MutateEndpoint:
    """Raw ASGI handler for ``/mutate``: read, review, answer, log, count."""

    def __init__(self, handler: AdmissionHandler, metrics: Metrics, body_limit: int,
                 big_reviews: ReviewProcesses | None) -> None:
        self._handler = handler
        self._metrics = metrics
        self._body_limit = body_limit
        self._big_reviews = big_reviews

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            self._metrics.observe_error("method-not-allowed")
            await _send_json(send, 405, {"error": "use POST"}, extra=[(b"allow", b"POST")])
            return
        try:
            body = await self._read_body(scope, receive)
        except BodyTooLarge:
            self._metrics.observe_error("body-too-large")
            await _send_json(send, 413, {"error": f"body exceeds {self._body_limit} bytes"},
                             extra=[(b"connection", b"close")])
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
            return
        except Busy:
            self._metrics.observe_error("busy")
            await _send_json(send, 503, {"error": "too many large reviews waiting; try again"},
                             extra=[(b"retry-after", b"1")])
            return
        seconds = time.perf_counter() - started
        await send_answer(send, 200, outcome.body)
        self._metrics.observe_review(outcome, seconds)
        log_review(outcome, seconds)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            # Refuse early, from the header, without reading what was sent.
            if name == b"content-length" and (not value.isdigit() or int(value) > self._body_limit):
                raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._body_limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


class WebhookApp:
    """Routes ``/mutate`` to the fast endpoint and everything else to FastAPI."""

    def __init__(self, api: FastAPI, mutate: MutateEndpoint) -> None:
        self.api = api
        self._mutate = mutate

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
