"""The servers compared by the benchmarks, each on the same uvicorn, TLS and worker count.

* ``limit``: a raw ASGI app that reads the body and returns a fixed AdmissionReview, the most
  this server stack can do;
* ``floor``: a bare FastAPI endpoint returning the same fixed review, the cost of the
  framework's request machinery;
* ``naive``: a FastAPI endpoint running ``benchmarks.naive`` (json, deepcopy, make_patch).

backend-injector itself runs as ``backend-injector serve``, the real command.

Run one with ``python -m benchmarks.variants NAME --port P --tls-cert F --tls-key F``.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from benchmarks import naive
from webhook.serving.server import uvicorn_config
from webhook.serving.tls import CertificatePair
from webhook.settings import Serving

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FIXED_REVIEW = (
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
    b'"response":{"uid":"fixed","allowed":true}}'
)


async def limit_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(FIXED_REVIEW)).encode()),
    ]})
    await send({"type": "http.response.body", "body": FIXED_REVIEW})


def floor_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        await request.body()
        return Response(FIXED_REVIEW, media_type="application/json")

    return app


def naive_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        return Response(naive.review(await request.body()), media_type="application/json")

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


APPS: dict[str, Callable[[], Any]] = {
    "limit": lambda: limit_app,
    "floor": floor_app,
    "naive": naive_app,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=sorted(APPS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    args = parser.parse_args()
    # The webhook's own serving values, so that only the app differs between variants.
    config, _ = uvicorn_config(APPS[args.variant](), Serving(),
                               CertificatePair(args.tls_cert, args.tls_key))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(2048)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
