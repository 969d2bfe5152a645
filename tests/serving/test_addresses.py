"""The safety net's addresses in the server: asked of DNS in the cluster only, bounded in time,
asked again in the background, and the rules built anew once a name answers."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.server_process import review_body, start_server, stop, write_pair
from webhook.rules.mutate import Rules
from webhook.serving import addresses
from webhook.serving.addresses import (
    IN_CLUSTER_VARIABLE,
    AddressRetry,
    in_cluster,
    lookup_ip,
    resolve,
    starting_addresses,
)
from webhook.serving.admission import AdmissionHandler
from webhook.serving.app import Readiness, create_app
from webhook.serving.metrics import Metrics
from webhook.serving.offload import ReviewProcesses
from webhook.serving.server import _renewer

IN_A_POD = {IN_CLUSTER_VARIABLE: "10.96.0.1"}


def app_pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "broker", "namespace": "flts"},
            "spec": {"containers": [{"name": "broker", "image": "kafka:1"}]}}


def test_only_a_process_in_a_pod_is_in_the_cluster() -> None:
    assert in_cluster(IN_A_POD)
    assert not in_cluster({})
    assert not in_cluster({IN_CLUSTER_VARIABLE: ""})


def test_outside_the_cluster_no_name_is_asked(tmp_path: Path) -> None:
    asked: list[str] = []
    settings = make_settings(tmp_path, services={"minio": {"external": {"host": "10.0.0.9",
                                                                        "port": 9000}}})
    found, unresolved = starting_addresses(settings, {}, lookup=lambda host: asked.append(host))
    assert found == {"10.0.0.9": "10.0.0.9"} and unresolved == [] and asked == []


def test_in_the_cluster_the_names_without_an_address_are_asked() -> None:
    asked: list[str] = []

    def lookup(host: str) -> str:
        asked.append(host)
        return "192.168.65.254"

    found, unresolved = starting_addresses(make_settings(), IN_A_POD, lookup=lookup)
    assert asked == ["host.docker.internal"]
    assert found == {"host.docker.internal": "192.168.65.254"} and unresolved == []


def test_a_name_that_does_not_answer_in_time_is_left_to_the_retry() -> None:
    release = threading.Event()

    def hanging(host: str) -> str:
        release.wait(10)
        return "10.0.0.1"

    started = time.monotonic()
    try:
        found, unresolved = starting_addresses(make_settings(), IN_A_POD, lookup=hanging,
                                               timeout=0.2)
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert found == {} and unresolved == ["host.docker.internal"]


def test_resolve_keeps_the_answers_that_came_and_drops_the_failures() -> None:
    answers = {"a.example": "10.0.0.1", "b.example": None}
    assert resolve(list(answers), timeout=1, lookup=answers.get) == {"a.example": "10.0.0.1"}


def test_lookup_prefers_ipv4_and_answers_none_for_a_name_that_does_not_resolve(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def getaddrinfo(host: str, *_: Any, **__: Any) -> list[Any]:
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 0, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.65.254", 0))]

    monkeypatch.setattr(addresses.socket, "getaddrinfo", getaddrinfo)
    assert lookup_ip("host.docker.internal") == "192.168.65.254"
    assert lookup_ip("nowhere.invalid") is None


def test_localhost_resolves_for_real() -> None:
    assert lookup_ip("localhost") in ("127.0.0.1", "::1")


def test_the_retry_reports_each_new_answer_and_stops_when_all_answered() -> None:
    answers = iter([None, None, "10.0.0.2", "10.0.0.3"])
    renewed: list[dict[str, str]] = []
    retry = AddressRetry(["host.docker.internal"], {"10.0.0.9": "10.0.0.9"}, renewed.append,
                         first_interval=0, interval=0, lookup=lambda host: next(answers))
    asyncio.run(asyncio.wait_for(retry.run(), timeout=5))
    assert renewed == [{"10.0.0.9": "10.0.0.9", "host.docker.internal": "10.0.0.2"}]


async def _post(app: Any, body: bytes) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mutate", "headers": []}
    await app(scope, receive, send)
    answer: dict[str, Any] = json.loads(b"".join(m.get("body", b"") for m in sent
                                                 if m["type"] == "http.response.body"))
    return answer


def test_the_retry_asks_soon_then_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(addresses.asyncio, "sleep", sleep)
    answers = iter([None] * 7 + ["10.0.0.2"])
    retry = AddressRetry(["host.docker.internal"], {}, lambda found: None, first_interval=1,
                         interval=30, lookup=lambda host: next(answers))
    asyncio.run(asyncio.wait_for(retry.run(), timeout=5))
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]


def _patch(answer: dict[str, Any]) -> list[dict[str, Any]]:
    encoded = answer["response"].get("patch")
    return json.loads(base64.b64decode(encoded)) if encoded else []


def test_an_app_answers_with_the_handler_it_was_given_last() -> None:
    settings = make_settings()
    app = create_app(AdmissionHandler(Rules(settings)), metrics=Metrics(),
                     readiness=Readiness(True, "test"))
    body = json.dumps(review_body(app_pod())).encode()
    assert _patch(asyncio.run(_post(app, body))) == []
    app.use_handler(AdmissionHandler(Rules(settings, host_addresses={
        "host.docker.internal": "10.0.0.2"})))
    operations = _patch(asyncio.run(_post(app, body)))
    assert operations[0]["path"] == "/spec/hostAliases"
    assert operations[0]["value"][0]["ip"] == "10.0.0.2"


def test_a_late_answer_reaches_the_reviews_of_a_running_worker() -> None:
    """The retry's report builds the rules anew, for the event loop and the review processes
    alike (server._renewer): the next review gets the entries."""
    settings = make_settings()
    handler = AdmissionHandler(Rules(settings))
    big_reviews = ReviewProcesses(handler)
    app = create_app(handler, metrics=Metrics(), readiness=Readiness(True, "test"),
                     big_reviews=big_reviews)
    answers = iter([None, "10.0.0.3"])
    retry = AddressRetry(["host.docker.internal"], {}, _renewer(settings, app, big_reviews),
                         first_interval=0, lookup=lambda host: next(answers))
    body = json.dumps(review_body(app_pod())).encode()

    async def before_and_after() -> list[list[dict[str, Any]]]:
        big_reviews.start()  # processes already running with the old rules are replaced
        before = _patch(await _post(app, body))
        await asyncio.wait_for(retry.run(), timeout=5)
        # A big review goes to a review process: started with the new rules too.
        in_process = await big_reviews.review(body)
        return [before, _patch(await _post(app, body)), _patch(json.loads(in_process.body))]

    try:
        before, after, big = asyncio.run(before_and_after())
    finally:
        big_reviews.stop(wait=True)
    assert before == []
    assert after[0]["value"][0]["ip"] == big[0]["value"][0]["ip"] == "10.0.0.3"


def _aliases_served(tmp_path: Path, env: dict[str, str]) -> Any:
    server = start_server(tmp_path, "--external-host", "localhost", env=env,
                          tls_dir=write_pair(tmp_path / "tls"))
    try:
        with server.client() as client:
            answer = client.post("/mutate", json=review_body(app_pod())).json()
    finally:
        stop(server)
    operations = _patch(answer)
    return next((o["value"] for o in operations if o["path"] == "/spec/hostAliases"), None)


def test_a_server_in_a_pod_gives_pods_the_ip_its_dns_answers(tmp_path: Path) -> None:
    aliases = _aliases_served(tmp_path, IN_A_POD)
    assert aliases is not None and aliases[0]["ip"] in ("127.0.0.1", "::1")
    assert "mlflow.flts.svc.cluster.local" in aliases[0]["hostnames"]


def test_a_server_outside_a_cluster_asks_no_dns(tmp_path: Path) -> None:
    assert _aliases_served(tmp_path, {IN_CLUSTER_VARIABLE: ""}) is None
