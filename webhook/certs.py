"""Certificates for the webhook's HTTPS endpoint, built with `cryptography`.

Everything here is pure (PEM bytes in, PEM bytes out) except `write_bundle`, which writes a
bundle to disk. The kube-apiserver only talks to admission webhooks over TLS and verifies the
serving certificate against the `caBundle` of the MutatingWebhookConfiguration, so a deployment
needs a small private CA and a serving certificate for the Service's DNS names.

Keys are ECDSA P-256: a key is generated in well under a millisecond (RSA 2048 takes tens of
milliseconds and varies widely), the certificates are small, and both Go's crypto/tls (the
kube-apiserver) and OpenSSL (Python clients, curl) accept them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

# Certificates start a little in the past so that a node or apiserver whose clock runs behind
# ours does not reject a certificate that was issued a second ago as "not yet valid".
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

_SECRET_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class BundlePaths:
    """Where `write_bundle` put each file."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def service_hostnames(service: str, namespace: str, extra: Iterable[str] = ()) -> list[str]:
    """The names a client may use for a Service, most specific last, then `extra`.

    The kube-apiserver calls the webhook as `SERVICE.NAMESPACE.svc`; the other forms let the
    same certificate serve in-cluster clients that use the short or fully qualified name.
    Duplicates are dropped, order is kept.
    """
    names = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        *extra,
    ]
    return list(dict.fromkeys(names))


def build_ca(*, common_name: str, days: int, now: dt.datetime | None = None) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(now=now, days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_to_pem(cert), key_pem=_key_to_pem(key))


def build_serving_certificate(
    *, ca: KeyPair, hostnames: Sequence[str], days: int, now: dt.datetime | None = None
) -> KeyPair:
    """A TLS server certificate for `hostnames`, signed by `ca`.

    The validity is cut at the CA's own expiry: a leaf that outlives its issuer cannot be
    verified anyway, and `not_after` should tell the truth about when renewal is due.
    """
    if not hostnames:
        raise ValueError("a serving certificate needs at least one hostname")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = _load_signing_key(ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(now=now, days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(not_before, ca_cert.not_valid_before_utc))
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_general_names(hostnames)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_to_pem(cert), key_pem=_key_to_pem(key))


def build_self_signed(
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 1
) -> KeyPair:
    """A throw-away certificate for `serve` started without one (local runs and tests).

    It is its own issuer, so a client trusts it by loading this very certificate as its CA file
    (OpenSSL and Go both accept a self-signed leaf found in the trust store). It is not a CA:
    its key must not be able to vouch for anything else.
    """
    if not hostnames:
        raise ValueError("a self-signed certificate needs at least one hostname")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    not_before, not_after = _validity(now=None, days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_general_names(hostnames)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_to_pem(cert), key_pem=_key_to_pem(key))


def not_after(cert_pem: bytes) -> dt.datetime:
    """When the (first) certificate in `cert_pem` expires, as an aware UTC datetime."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def write_bundle(out_dir: str | os.PathLike[str], *, ca: KeyPair, serving: KeyPair) -> BundlePaths:
    """Write `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `out_dir` (created if needed).

    Each file is written to a temporary name and renamed into place, so a server that reloads
    its certificate never reads half a file; private keys are created 0600 from the start
    rather than chmod-ed afterwards, so they are never readable by others, even briefly.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = BundlePaths(
        ca_cert=directory / CA_CERT_FILE,
        ca_key=directory / CA_KEY_FILE,
        cert=directory / CERT_FILE,
        key=directory / KEY_FILE,
    )
    _write_atomically(paths.ca_cert, ca.cert_pem, mode=_PUBLIC_FILE_MODE)
    _write_atomically(paths.ca_key, ca.key_pem, mode=_SECRET_FILE_MODE)
    _write_atomically(paths.cert, serving.cert_pem, mode=_PUBLIC_FILE_MODE)
    _write_atomically(paths.key, serving.key_pem, mode=_SECRET_FILE_MODE)
    logger.info(
        "wrote certificate bundle",
        extra={
            "fields": {
                "directory": str(directory),
                "not_after": not_after(serving.cert_pem).isoformat(),
            }
        },
    )
    return paths


def _write_atomically(path: Path, content: bytes, *, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates 0600; widen only files that are meant to be public. fchmod is exact,
        # whereas the mode given to open() would be narrowed further by the umask.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _validity(*, now: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    if days <= 0:
        raise ValueError(f"days must be positive, not {days}")
    start = now if now is not None else dt.datetime.now(dt.UTC)
    if start.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return start - CLOCK_SKEW_ALLOWANCE, start + dt.timedelta(days=days)


def _general_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for hostname in dict.fromkeys(hostnames):
        address = _as_ip_address(hostname)
        if address is None:
            names.append(x509.DNSName(hostname))
        else:
            names.append(x509.IPAddress(address))
    return names


def _as_ip_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _load_signing_key(key_pem: bytes) -> SigningKey:
    # A CA made by another tool (openssl, cert-manager) may well be RSA; it signs just as well.
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"cannot sign with a {type(key).__name__}")
    return key


def _cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
