"""The server's TLS: the context it serves with, the pair in it, and the handshake's bound.

The context allows TLS 1.2 and 1.3 with forward-secret AEAD suites only, offers HTTP/1.1 by
ALPN and, given a client CA, admits only clients holding a certificate that CA signed. The
pair is the one the settings name or, when they name none, a throw-away self-signed one for
localhost that lives as long as the server. Named files are checked before anything listens,
so that a missing, unreadable or wrong file is one line naming it and what is wrong with it
rather than an error from deep inside the TLS library.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webhook.certs import (
    build_self_signed,
    certificate_problem,
    key_belongs_to,
    private_key_problem,
)
from webhook.settings import ConfigError, Serving

logger = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all of that already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True, slots=True)
class CertificatePair:
    """The files of the certificate served and its key."""

    cert: Path
    key: Path


class TLSFileError(ConfigError):
    """A certificate, key or client CA file that cannot be served with, named, with what is
    wrong with it and what to do (a configuration error: exit 2)."""


def check_tls_files(serving: Serving) -> None:
    """Raise `TLSFileError` unless the certificate and key ``serving`` names can be read, are
    PEM, and belong together, and its client CA, if any, holds certificates."""
    if serving.tls_cert is not None and serving.tls_key is not None:
        cert_pem = _read("TLS certificate", serving.tls_cert, "--tls-cert")
        key_pem = _read("TLS key", serving.tls_key, "--tls-key")
        _refuse("TLS certificate", serving.tls_cert, certificate_problem(cert_pem),
                "--tls-cert", "a PEM certificate")
        _refuse("TLS key", serving.tls_key, private_key_problem(key_pem),
                "--tls-key", "an unencrypted PEM private key")
        if not key_belongs_to(cert_pem, key_pem):
            raise TLSFileError(
                f"the TLS key {serving.tls_key} does not belong to the certificate "
                f"{serving.tls_cert}; give --tls-key the key the certificate was issued for"
            )
    if serving.client_ca is not None:
        ca_pem = _read("client CA", serving.client_ca, "--client-ca")
        _refuse("client CA", serving.client_ca, certificate_problem(ca_pem),
                "--client-ca", "the PEM certificate of the CA")


def _read(what: str, path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSFileError(
            f"cannot read the {what} {path}: {error.strerror or error}; give {flag} a "
            "readable PEM file"
        ) from error


def _refuse(what: str, path: Path, problem: str | None, flag: str, wanted: str) -> None:
    if problem is not None:
        raise TLSFileError(f"the {what} {path} {problem}; give {flag} {wanted}")


def build_tls_context(pair: CertificatePair, client_ca: Path | None) -> ssl.SSLContext:
    """A server context: TLS 1.2+ with modern suites, optional client-certificate checks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(pair.cert, pair.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


@contextlib.contextmanager
def served_pair(serving: Serving) -> Iterator[CertificatePair]:
    """The pair ``serving`` names, checked, or a throw-away self-signed one, removed on
    leaving."""
    check_tls_files(serving)
    if serving.tls_cert is not None and serving.tls_key is not None:
        yield CertificatePair(serving.tls_cert, serving.tls_key)
        return
    with tempfile.TemporaryDirectory(prefix="backend-injector-") as directory:
        generated = build_self_signed(("localhost", "127.0.0.1"))
        pair = CertificatePair(Path(directory) / "tls.crt", Path(directory) / "tls.key")
        pair.cert.write_bytes(generated.cert_pem)
        pair.key.touch(mode=0o600)  # private before the key is in it
        pair.key.write_bytes(generated.key_pem)
        logger.warning(
            "no --tls-cert/--tls-key given: serving a throw-away self-signed certificate for "
            "localhost and 127.0.0.1; the apiserver will not trust it",
            extra={"fields": {"cert": str(pair.cert)}},
        )
        yield pair


@contextlib.contextmanager
def handshake_timeout(loop: asyncio.AbstractEventLoop, seconds: float) -> Iterator[None]:
    """Servers the loop creates meanwhile drop a client that has not finished its handshake
    within ``seconds``.

    The apiserver completes a handshake in milliseconds; asyncio's 60 s default lets sockets
    that never finish one pile up. uvicorn offers no setting for it, so its one call to
    ``create_server`` is given it here.
    """
    create_server = loop.create_server
    loop.create_server = functools.partial(  # type: ignore[method-assign]
        create_server, ssl_handshake_timeout=seconds
    )
    try:
        yield
    finally:
        loop.create_server = create_server  # type: ignore[method-assign]
