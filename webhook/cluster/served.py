"""What the webhook serves where the apiserver calls it: its certificate, and its /metrics.

`fetch_served` takes the certificate without trusting it, so that doctor can judge it as the
apiserver would (with `webhook.certs`); `fetch_https` reads a page trusting only the caBundle.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import urllib3

from webhook import certs

TLS_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Served:
    """What answered TLS where the apiserver calls the webhook."""

    cert_pem: bytes | None
    hostname: str
    where: str
    error: str | None = None


def unverified_tls_context() -> ssl.SSLContext:
    """TLS that accepts any certificate: for asking what is served, or whether anything is."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fetch_served(address: str, port: int, *, hostname: str, where: str) -> Served:
    """The certificate served at address:port for SNI `hostname`, without trusting it yet."""
    try:
        with socket.create_connection((address, port), timeout=TLS_TIMEOUT_SECONDS) as raw, \
                unverified_tls_context().wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return Served(cert_pem=None, hostname=hostname, where=where, error=reason)
    if der is None:
        return Served(cert_pem=None, hostname=hostname, where=where, error="no certificate")
    return Served(cert_pem=certs.der_to_pem(der), hostname=hostname, where=where)


def fetch_https(base: str, path: str, bundle_pem: bytes, *, hostname: str) -> str:
    """GET `base` + `path`, trusting only `bundle_pem` for `hostname`."""
    context = ssl.create_default_context(cadata=bundle_pem.decode("ascii", errors="replace")
                                         or None)
    pool = urllib3.PoolManager(ssl_context=context, retries=False, server_hostname=hostname,
                               assert_hostname=hostname,
                               timeout=urllib3.Timeout(connect=TLS_TIMEOUT_SECONDS, read=5))
    try:
        response = pool.request("GET", base.rstrip("/") + path)
    except urllib3.exceptions.HTTPError as error:
        raise OSError(str(getattr(error, "reason", None) or error)) from None
    finally:
        pool.clear()
    if response.status != 200:
        raise OSError(f"GET {path} answered {response.status}")
    return str(response.data.decode("utf-8", errors="replace"))


def host_port(address: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets as URLs want it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
