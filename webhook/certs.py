"""Certificates for the webhook's HTTPS endpoint, built with `cryptography`.

Everything here is pure (PEM bytes in, PEM bytes out, or an answer about them) except
`write_bundle`, which writes a bundle to disk. It is the one module that handles X.509: making
certificates, and the checks `install`, `doctor` and `serve` make on them (does a key belong
to a certificate, did a CA issue it, what a caBundle trusts, what a PEM file holds instead),
and on the host names `certs` is asked to cover.

The kube-apiserver only talks to admission webhooks over TLS and verifies the serving
certificate against the `caBundle` of the MutatingWebhookConfiguration, so a deployment needs
a small private CA and a serving certificate for the Service's DNS names.

Keys are ECDSA P-256: a key is generated in well under a millisecond (RSA 2048 takes tens of
milliseconds and varies widely), the certificates are small, and both Go's crypto/tls (the
kube-apiserver) and OpenSSL (Python clients, curl) accept them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
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

# A PEM file's blocks open with these (`BEGIN EC PRIVATE KEY`, `BEGIN ENCRYPTED PRIVATE KEY`
# and the like all end in the second).
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_PRIVATE_KEY = b"PRIVATE KEY-----"
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
_MAX_DNS_NAME = 253

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


def host_problem(text: str) -> str | None:
    """Why `text` cannot be a subject alternative name (a DNS name or an IP address), or None.

    A DNS name is dot-separated labels of letters, digits and inner hyphens, each at most 63
    characters and 253 in all, the first of which may be the wildcard `*`. A last label of
    digits only is refused: no top-level domain is numeric, so `10.0.0.300` is a mistyped
    address rather than a name.
    """
    if _as_ip_address(text) is not None:
        return None
    labels = text.split(".")
    if text.startswith("*."):
        labels = labels[1:]
    if not text or len(text) > _MAX_DNS_NAME or not all(map(_DNS_LABEL.fullmatch, labels)):
        return f"{text!r} is neither a DNS name nor an IP address"
    if labels[-1].isdigit():
        return f"{text!r} is not an IP address, and a DNS name does not end in digits only"
    return None


def build_ca(*, common_name: str, days: int, now: dt.datetime | None = None) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    return _issue(
        common_name=common_name,
        validity=_validity(now=now, days=days),
        extensions=_ca_extensions(),
    )


def build_serving_certificate(
    *, ca: KeyPair, hostnames: Sequence[str], days: int, now: dt.datetime | None = None
) -> KeyPair:
    """A TLS server certificate for `hostnames`, signed by `ca`.

    The validity is cut at the CA's own expiry: a leaf that outlives its issuer cannot be
    verified anyway, and `not_after` should tell the truth about when renewal is due.
    """
    if not hostnames:
        raise ValueError("a serving certificate needs at least one hostname")
    issuer = _Issuer.of(ca)
    return _issue(
        common_name=hostnames[0],
        validity=issuer.bounded(_validity(now=now, days=days)),
        extensions=_server_extensions(hostnames),
        issuer=issuer,
    )


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
    return _issue(
        common_name=hostnames[0],
        validity=_validity(now=None, days=days),
        extensions=_server_extensions(hostnames),
    )


def not_after(cert_pem: bytes) -> dt.datetime:
    """When the (first) certificate in `cert_pem` expires, as an aware UTC datetime."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def certificate_problem(pem: bytes) -> str | None:
    """What is wrong with bytes meant to hold PEM certificates (a certificate, its chain, a CA
    bundle), phrased to follow the file's name, or None when they hold at least one."""
    if not pem.strip():
        return "is empty"
    if _PEM_CERTIFICATE not in pem:
        if _PEM_PRIVATE_KEY in pem:
            return "holds a private key, not a certificate"
        return f"is not PEM: it has no {_PEM_CERTIFICATE.decode()} line"
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        return "holds a CERTIFICATE block that does not parse as a certificate"
    return None


def private_key_problem(pem: bytes) -> str | None:
    """What is wrong with bytes meant to hold an unencrypted PEM private key, phrased to follow
    the file's name, or None."""
    if not pem.strip():
        return "is empty"
    if _PEM_PRIVATE_KEY not in pem:
        if _PEM_CERTIFICATE in pem:
            return "holds a certificate, not a private key"
        return "is not PEM: it has no -----BEGIN ... PRIVATE KEY----- line"
    try:
        serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        # The only TypeError here: a key that needs a password nobody can type to a server.
        return "is encrypted with a passphrase, which a server cannot be asked for"
    except (ValueError, UnsupportedAlgorithm):
        return "holds a PRIVATE KEY block that does not parse as a key"
    return None


def key_belongs_to(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the private key is the one the (first) certificate was issued for. Both must
    parse (see `certificate_problem`, `private_key_problem`)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    return _same_public_key(key.public_key(), cert.public_key())


@dataclass(frozen=True)
class PairNames:
    """How `serving_pair_problem` names the three parts in its answers (file or key names)."""

    ca: str = CA_CERT_FILE
    cert: str = CERT_FILE
    key: str = KEY_FILE


def serving_pair_problem(
    *,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    hostnames: Sequence[str],
    now: dt.datetime,
    margin: dt.timedelta,
    names: PairNames = PairNames(),  # noqa: B008 - frozen, so one shared default is safe
) -> str | None:
    """Why a CA, serving certificate and key cannot serve `hostnames` for `margin` more, or
    None when they can. Certificates count as valid `CLOCK_SKEW_ALLOWANCE` early."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        return f"the Secret does not parse: {error}"
    if not _same_public_key(key.public_key(), cert.public_key()):
        return f"{names.key} does not belong to {names.cert}"
    if not _issued_by(cert, ca_cert):
        return f"{names.cert} was not issued by {names.ca}"
    uncovered = [name for name in hostnames if name not in _subject_alternative_names(cert)]
    if uncovered:
        return f"{names.cert} does not cover {', '.join(uncovered)}"
    if cert.not_valid_before_utc > now + CLOCK_SKEW_ALLOWANCE:
        return f"{names.cert} is not valid before {cert.not_valid_before_utc.isoformat()}"
    expires = min(cert.not_valid_after_utc, ca_cert.not_valid_after_utc)
    if expires - now <= margin:
        return f"the certificate expires at {expires.isoformat()}, within {margin.days} days"
    return None


def can_sign_until(cert_pem: bytes, key_pem: bytes, *, now: dt.datetime,
                   until: dt.datetime) -> bool:
    """Whether this CA certificate and key can sign a certificate valid from now to `until`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.ExtensionNotFound):
        return False
    if not constraints.ca or not _same_public_key(key.public_key(), cert.public_key()):
        return False
    return not (cert.not_valid_before_utc > now + CLOCK_SKEW_ALLOWANCE
                or cert.not_valid_after_utc < until)


def fingerprint(cert_pem: bytes) -> bytes:
    """SHA-256 of the (first) certificate's DER encoding."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())


def bundle_fingerprints(bundle_pem: bytes) -> set[bytes]:
    """The fingerprints of every certificate in a PEM bundle; none for an unreadable one."""
    if not bundle_pem:
        return set()
    try:
        return {cert.fingerprint(hashes.SHA256())
                for cert in x509.load_pem_x509_certificates(bundle_pem)}
    except ValueError:
        return set()  # an unreadable bundle trusts nothing


def bundle_expiries(bundle_pem: bytes) -> list[tuple[str, dt.datetime]]:
    """(subject common name, notAfter) of each certificate in a PEM bundle, in order."""
    try:
        certificates = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError:
        return []
    return [(_common_name(cert), cert.not_valid_after_utc) for cert in certificates]


def first_valid_certificate(
    bundle_pem: bytes, *, other_than: bytes, now: dt.datetime
) -> bytes | None:
    """The first certificate of a PEM bundle that has not expired and whose fingerprint is not
    `other_than`, as PEM; None if there is none."""
    if not bundle_pem:
        return None
    try:
        certificates = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError:
        return None
    for cert in certificates:
        if cert.fingerprint(hashes.SHA256()) != other_than and cert.not_valid_after_utc > now:
            return cert.public_bytes(serialization.Encoding.PEM)
    return None


def verification_problem(
    cert_pem: bytes, bundle_pem: bytes, *, hostname: str, now: dt.datetime | None = None
) -> str | None:
    """Why a client trusting `bundle_pem` (a caBundle) would refuse `cert_pem` served as
    `hostname`, or None when it would accept it: the chain, the validity and the name, as
    the kube-apiserver checks them."""
    from cryptography.x509 import verification

    try:
        anchors = x509.load_pem_x509_certificates(bundle_pem) if bundle_pem else []
    except ValueError:
        return "the caBundle is not PEM certificates"
    if not anchors:
        return "the caBundle is empty"
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "the served certificate does not parse"
    address = _as_ip_address(hostname)
    subject: x509.DNSName | x509.IPAddress = (
        x509.DNSName(hostname) if address is None else x509.IPAddress(address))
    builder = verification.PolicyBuilder().store(verification.Store(anchors))
    builder = builder.time(now if now is not None else dt.datetime.now(dt.UTC))
    try:
        builder.build_server_verifier(subject).verify(leaf, [])
    except verification.VerificationError as error:
        reason = str(error).split(" (encountered processing", 1)[0]
        return f"the caBundle does not verify the certificate served as {hostname}: {reason}"
    return None


def pem_from_base64(field: str | None) -> bytes:
    """PEM bytes from a base64 API field (a caBundle, a Secret's ``tls.crt``); empty when the
    field is absent or not base64, which trusts or proves nothing."""
    if not field:
        return b""
    try:
        return base64.b64decode(field, validate=True)
    except binascii.Error:
        return b""


def der_to_pem(der: bytes) -> bytes:
    """A DER certificate (as `ssl` hands out a peer's) as PEM."""
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _common_name(cert: x509.Certificate) -> str:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else cert.subject.rfc4514_string()


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _same_public_key(first: PublicKeyTypes, second: PublicKeyTypes) -> bool:
    return _public_key_der(first) == _public_key_der(second)


def _public_key_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject_alternative_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    addresses = {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)) | addresses


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


# --- the one certificate builder, and what each kind of certificate carries -----------------

_Validity = tuple[dt.datetime, dt.datetime]


class _Extension(NamedTuple):
    """An extension to write, and whether a client that does not know it must refuse."""

    value: x509.ExtensionType
    critical: bool


@dataclass(frozen=True)
class _Issuer:
    """A CA signing another key's certificate: the name it signs as, its key, and its own
    validity, which bounds what it signs."""

    name: x509.Name
    key: SigningKey
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, ca: KeyPair) -> _Issuer:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        return cls(name=cert.subject, key=_load_signing_key(ca.key_pem),
                   not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    def bounded(self, validity: _Validity) -> _Validity:
        """`validity` cut to the issuer's own."""
        starts, ends = validity
        return max(starts, self.not_before), min(ends, self.not_after)


def _issue(
    *, common_name: str, validity: _Validity, extensions: Sequence[_Extension],
    issuer: _Issuer | None = None,
) -> KeyPair:
    """A new key and its certificate, signed by `issuer` or, without one, by the key itself.

    The key identifiers follow `extensions`; the authority's is written only when another key
    signs, since a self-signed certificate's would just repeat its own.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    starts, ends = validity
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(starts)
        .not_valid_after(ends)
    )
    identifiers = [_Extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)]
    if issuer is not None:
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        identifiers.append(_Extension(authority, False))
    for extension in [*extensions, *identifiers]:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    cert = builder.sign(key if issuer is None else issuer.key, hashes.SHA256())
    return KeyPair(cert_pem=_cert_to_pem(cert), key_pem=_key_to_pem(key))


def _ca_extensions() -> list[_Extension]:
    """A CA that may sign leaf certificates only (path length 0), and revocation lists."""
    return [
        _Extension(x509.BasicConstraints(ca=True, path_length=0), True),
        _Extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), True),
    ]


def _server_extensions(hostnames: Sequence[str]) -> list[_Extension]:
    """A TLS server leaf for `hostnames`: not a CA, and its key only signs (an ECDSA key
    cannot encipher)."""
    return [
        _Extension(x509.SubjectAlternativeName(_general_names(hostnames)), False),
        _Extension(x509.BasicConstraints(ca=False, path_length=None), True),
        _Extension(_key_usage(digital_signature=True), True),
        _Extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]


def _validity(*, now: dt.datetime | None, days: int) -> _Validity:
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
