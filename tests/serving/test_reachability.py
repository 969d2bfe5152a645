"""Backend reachability: the checker against real sockets on loopback, its time bound, and
the metrics of a real server whose external backend is half up."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.server_process import start_server, stop, write_pair
from webhook.serving import reachability

LOOPBACK = "127.0.0.1"


@pytest.fixture
def listening() -> Iterator[int]:
    """A TCP port on loopback that accepts connections."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def collect(targets: list[reachability.Target], **options: object
            ) -> dict[str, reachability.Result]:
    results: dict[str, reachability.Result] = {}
    checker = reachability.ReachabilityChecker(
        targets, lambda target, result: results.__setitem__(target.service, result),
        **options)  # type: ignore[arg-type]
    checker.check_once()
    return results


def test_an_open_port_is_up_and_a_closed_one_down(listening: int) -> None:
    results = collect([reachability.Target("mlflow", LOOPBACK, listening),
                       reachability.Target("minio", LOOPBACK, closed_port())])
    assert results["mlflow"].up is True
    assert results["minio"].up is False
    assert 0 < results["mlflow"].seconds < reachability.CHECK_TIMEOUT_SECONDS


def test_a_hanging_check_is_cut_at_the_timeout_and_not_started_twice() -> None:
    release = threading.Event()
    calls: list[str] = []

    def hang(target: reachability.Target, timeout: float) -> None:
        calls.append(target.service)
        release.wait(10)

    target = reachability.Target("gateway", "hangs.invalid", 8000)
    started = time.monotonic()
    results = collect([target], timeout=0.2, connect=hang)
    assert time.monotonic() - started < 2
    assert results["gateway"] == reachability.Result(up=False, seconds=0.2)

    checker = reachability.ReachabilityChecker([target], lambda *_: None, timeout=0.2,
                                               connect=hang)
    checker.check_once()
    checker.check_once()  # the first is still stuck: it is not started again
    assert calls.count("gateway") == 2  # one from `collect`, one from this checker
    release.set()


def test_exposition_is_read_back_by_service() -> None:
    text = (f'{reachability.UP_METRIC}{{service="mlflow"}} 1.0\n'
            f'{reachability.DURATION_METRIC}{{service="mlflow"}} 0.0012\n'
            f'{reachability.UP_METRIC}{{service="minio"}} 0.0\n'
            'backend_injector_reviews_total{operation="CREATE",result="mutated"} 3.0\n')
    assert reachability.parse_exposition(text) == {"mlflow": {"up": 1.0, "seconds": 0.0012},
                                             "minio": {"up": 0.0}}


def test_a_served_webhook_exports_backend_reachability_and_stays_ready(
    tmp_path: Path, listening: int
) -> None:
    down = closed_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"services": {
        "mlflow": {"external": {"host": LOOPBACK, "port": listening}},
        "minio": {"external": {"host": LOOPBACK, "port": down}},
        "fastapi": {"external": {"host": LOOPBACK, "port": down}},
    }}))
    server = start_server(tmp_path, "--config", str(config), tls_dir=write_pair(tmp_path / "tls"))
    try:
        with server.client() as client:
            deadline = time.monotonic() + 10
            while True:
                samples = reachability.parse_exposition(client.get("/metrics").text)
                if len(samples) == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert {service: values["up"] for service, values in samples.items()} == {
                "mlflow": 1.0, "minio": 0.0, "fastapi": 0.0}
            assert all("seconds" in values for values in samples.values())
            # Two of three backends are down; the webhook is ready all the same.
            assert client.get("/readyz").status_code == 200
    finally:
        stop(server)
