"""The server's TLS pieces on their own: the pair served and the handshake's bound.

The context's versions and suites are checked against the running server in
test_hardening.py, where a client would meet them.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
import time
from pathlib import Path

from tests.server_process import write_pair
from webhook.serving.tls import CertificatePair, build_tls_context, handshake_timeout, served_pair
from webhook.settings import Serving

BOUND = 0.3  # seconds: short, so that the test is; far from asyncio's 60 s default


def test_the_pair_given_is_the_pair_served(tmp_path: Path) -> None:
    directory = write_pair(tmp_path / "tls")
    serving = Serving(tls_cert=directory / "tls.crt", tls_key=directory / "tls.key")
    with served_pair(serving) as pair:
        assert pair == CertificatePair(directory / "tls.crt", directory / "tls.key")
    assert pair.cert.exists()  # what the user gave is never removed


def test_without_a_pair_a_private_throwaway_one_lives_as_long_as_the_server() -> None:
    with served_pair(Serving()) as pair:
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
        build_tls_context(pair, None)  # a pair that loads
    assert not pair.cert.exists()
    assert not pair.key.exists()


async def silent_client_closed_after(context: ssl.SSLContext, *, within: bool) -> float | None:
    """Open a TCP connection to a TLS server and send nothing: how long until the server
    closes it (None: still open after a second). The server is made ``within`` a
    ``handshake_timeout(BOUND)`` block, or after one has ended."""
    loop = asyncio.get_running_loop()

    async def create() -> asyncio.Server:
        return await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=context)

    with handshake_timeout(loop, BOUND):
        server = await create() if within else None
    server = server or await create()
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        closed = await asyncio.wait_for(reader.read(1), timeout=1.0)  # no ClientHello sent
    except TimeoutError:
        return None
    finally:
        writer.close()
        server.close()
    assert closed == b""
    return time.monotonic() - started


def test_a_client_that_never_finishes_its_handshake_is_dropped(tmp_path: Path) -> None:
    directory = write_pair(tmp_path / "tls")
    context = build_tls_context(CertificatePair(directory / "tls.crt", directory / "tls.key"),
                                None)
    lasted = asyncio.run(silent_client_closed_after(context, within=True))
    assert lasted is not None and BOUND * 0.5 < lasted < 1.0  # asyncio's own bound is 60 s


def test_the_handshake_bound_applies_only_within_its_block(tmp_path: Path) -> None:
    directory = write_pair(tmp_path / "tls")
    context = build_tls_context(CertificatePair(directory / "tls.crt", directory / "tls.key"),
                                None)
    assert asyncio.run(silent_client_closed_after(context, within=False)) is None
