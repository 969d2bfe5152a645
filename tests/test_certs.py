"""Tests for webhook.certs: what is inside the certificates, the chain, and the files on disk."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook import certs

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
HOSTNAMES = certs.service_hostnames("backend-injector", "backend-injector")


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.build_ca(common_name="backend-injector-ca", days=365, now=NOW)


@pytest.fixture(scope="module")
def serving(ca: certs.KeyPair) -> certs.KeyPair:
    return certs.build_serving_certificate(ca=ca, hostnames=HOSTNAMES, days=365, now=NOW)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)


def test_service_hostnames_are_the_four_service_forms_then_extras() -> None:
    assert certs.service_hostnames("svc", "ns", extra=["svc.example.org", "svc"]) == [
        "svc",
        "svc.ns",
        "svc.ns.svc",
        "svc.ns.svc.cluster.local",
        "svc.example.org",
    ]


def test_ca_is_a_ca_limited_to_signing_leaves(ca: certs.KeyPair) -> None:
    cert = load(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)


def test_serving_certificate_names_exactly_the_service_hostnames(serving: certs.KeyPair) -> None:
    assert dns_names(load(serving.cert_pem)) == HOSTNAMES


def test_serving_certificate_is_a_tls_server_leaf(serving: certs.KeyPair) -> None:
    cert = load(serving.cert_pem)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not usage.key_encipherment  # an ECDSA key cannot encipher
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_serving_certificate_chains_to_the_ca(ca: certs.KeyPair, serving: certs.KeyPair) -> None:
    load(serving.cert_pem).verify_directly_issued_by(load(ca.cert_pem))


def test_serving_certificate_does_not_chain_to_another_ca(serving: certs.KeyPair) -> None:
    other = certs.build_ca(common_name="backend-injector-ca", days=365, now=NOW)
    with pytest.raises(InvalidSignature):
        load(serving.cert_pem).verify_directly_issued_by(load(other.cert_pem))


def test_validity_window_starts_slightly_before_now_and_lasts_the_days(
    serving: certs.KeyPair,
) -> None:
    cert = load(serving.cert_pem)
    assert cert.not_valid_before_utc == NOW - certs.CLOCK_SKEW_ALLOWANCE
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    assert certs.not_after(serving.cert_pem) == NOW + dt.timedelta(days=365)


def test_serving_certificate_never_outlives_its_ca(ca: certs.KeyPair) -> None:
    leaf = certs.build_serving_certificate(ca=ca, hostnames=["a"], days=3650, now=NOW)
    assert certs.not_after(leaf.cert_pem) == certs.not_after(ca.cert_pem)


def test_extra_ip_address_becomes_an_ip_san(ca: certs.KeyPair) -> None:
    hostnames = certs.service_hostnames("svc", "ns", extra=["10.96.0.42", "::1", "svc.local"])
    cert = load(certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=1).cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.96.0.42"),
        ipaddress.ip_address("::1"),
    ]
    assert "10.96.0.42" not in san.get_values_for_type(x509.DNSName)
    assert "svc.local" in san.get_values_for_type(x509.DNSName)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        certs.build_ca(common_name="x", days=1, now=dt.datetime(2026, 1, 1))


def test_no_hostnames_is_refused(ca: certs.KeyPair) -> None:
    with pytest.raises(ValueError, match="hostname"):
        certs.build_serving_certificate(ca=ca, hostnames=[], days=1)


def test_write_bundle_writes_four_files_with_private_keys_0600(
    tmp_path: Path, ca: certs.KeyPair, serving: certs.KeyPair
) -> None:
    paths = certs.write_bundle(tmp_path / "out", ca=ca, serving=serving)
    assert paths.ca_cert.read_bytes() == ca.cert_pem
    assert paths.ca_key.read_bytes() == ca.key_pem
    assert paths.cert.read_bytes() == serving.cert_pem
    assert paths.key.read_bytes() == serving.key_pem
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ca.crt",
        "ca.key",
        "tls.crt",
        "tls.key",
    ]


def test_write_bundle_replaces_an_existing_bundle(
    tmp_path: Path, ca: certs.KeyPair, serving: certs.KeyPair
) -> None:
    (tmp_path / "tls.key").write_bytes(b"old")
    (tmp_path / "tls.key").chmod(0o644)
    paths = certs.write_bundle(tmp_path, ca=ca, serving=serving)
    assert paths.key.read_bytes() == serving.key_pem
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_self_signed_certificate_covers_localhost_and_loopback() -> None:
    cert = load(certs.build_self_signed().cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=1) + certs.CLOCK_SKEW_ALLOWANCE


def test_self_signed_and_ca_signed_leaves_carry_the_same_extensions(ca: certs.KeyPair) -> None:
    hostnames = ["svc.local", "10.1.1.1"]
    signed = load(certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=1).cert_pem)
    alone = load(certs.build_self_signed(hostnames).cert_pem)

    def profile(cert: x509.Certificate) -> list[tuple[x509.ObjectIdentifier, bool, object]]:
        identifiers = (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier)
        return [(e.oid, e.critical, e.value) for e in cert.extensions
                if not isinstance(e.value, identifiers)]

    assert profile(signed) == profile(alone)
    assert signed.subject == alone.subject
    for cert in (signed, alone):
        own = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert own == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    authority = signed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_key_id = load(ca.cert_pem).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert authority.key_identifier == ca_key_id.value.digest
    with pytest.raises(x509.ExtensionNotFound):
        alone.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_a_client_trusting_the_self_signed_certificate_completes_a_handshake(
    tmp_path: Path, server_hostname: str
) -> None:
    pair = certs.build_self_signed()
    handshake(tmp_path, served=pair, trusted=pair.cert_pem, server_hostname=server_hostname)


def test_a_client_trusting_the_ca_completes_a_handshake_with_the_serving_certificate(
    tmp_path: Path,
) -> None:
    ca = certs.build_ca(common_name="test-ca", days=1)
    leaf = certs.build_serving_certificate(ca=ca, hostnames=["localhost"], days=1)
    handshake(tmp_path, served=leaf, trusted=ca.cert_pem, server_hostname="localhost")


def handshake(
    tmp_path: Path, *, served: certs.KeyPair, trusted: bytes, server_hostname: str
) -> None:
    """Serve `served` on loopback; connect with a strict client trusting `trusted`, or raise."""
    cert_file, key_file, ca_file = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca"
    cert_file.write_bytes(served.cert_pem)
    key_file.write_bytes(served.key_pem)
    ca_file.write_bytes(trusted)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cafile=str(ca_file))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        thread = threading.Thread(target=accept_one, args=(listener, server_context), daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.sendall(b"x")
        thread.join(timeout=5)


def accept_one(listener: socket.socket, context: ssl.SSLContext) -> None:
    connection, _ = listener.accept()
    listener.settimeout(5)
    try:
        with context.wrap_socket(connection, server_side=True) as tls:
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass  # the client side reports the failure that matters


# --- what a user hands over: host names and PEM files ---------------------------------------


@pytest.mark.parametrize(
    "host", ["svc", "svc.example.org", "*.example.org", "xn--bcher-kva.example", "10.0.0.1",
             "::1", "fd00::a:1", "a-b.c", "UPPER.example", "a" * 63 + ".example"])
def test_dns_names_and_ip_addresses_are_hosts(host: str) -> None:
    assert certs.host_problem(host) is None


@pytest.mark.parametrize(
    "host", ["not a host!", "", "-svc", "svc-", "a..b", "host.", "a_b", "a" * 64, "*",
             "a.*.b", "bücher.example", "10.0.0.300", "1.2.3", ("a" * 60 + ".") * 5])
def test_anything_else_is_refused_with_what_it_is_not(host: str) -> None:
    problem = certs.host_problem(host)
    assert problem is not None and repr(host) in problem


def test_a_near_address_is_called_a_mistyped_address() -> None:
    assert "not an IP address" in str(certs.host_problem("10.0.0.300"))


def test_every_accepted_host_makes_a_certificate(ca: certs.KeyPair) -> None:
    hosts = ["*.example.org", "xn--bcher-kva.example", "fd00::a:1", "UPPER.example"]
    assert all(certs.host_problem(host) is None for host in hosts)
    certs.build_serving_certificate(ca=ca, hostnames=hosts, days=1, now=NOW)


def test_certificates_and_bundles_are_certificates(ca: certs.KeyPair,
                                                   serving: certs.KeyPair) -> None:
    assert certs.certificate_problem(serving.cert_pem) is None
    assert certs.certificate_problem(serving.cert_pem + ca.cert_pem) is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"hello", "is not PEM: it has no -----BEGIN CERTIFICATE----- line"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "holds a CERTIFICATE block that does not parse as a certificate"),
    ],
)
def test_what_is_not_a_certificate_is_said(content: bytes, problem: str) -> None:
    assert certs.certificate_problem(content) == problem


def test_a_key_where_a_certificate_belongs_is_called_a_key(serving: certs.KeyPair) -> None:
    assert certs.certificate_problem(serving.key_pem) == "holds a private key, not a certificate"
    assert certs.private_key_problem(serving.cert_pem) == (
        "holds a certificate, not a private key")


def test_private_keys_in_every_usual_encoding_are_keys(serving: certs.KeyPair) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ec_key = serialization.load_pem_private_key(serving.key_pem, password=None)
    traditional = ec_key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())
    assert traditional.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    for key in (serving.key_pem, traditional, rsa_key):
        assert certs.private_key_problem(key) is None


def test_an_encrypted_key_is_called_encrypted(serving: certs.KeyPair) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(serving.key_pem, password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"passphrase"))
    assert "is encrypted with a passphrase" in str(certs.private_key_problem(encrypted))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"hello", "is not PEM: it has no -----BEGIN ... PRIVATE KEY----- line"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
         "holds a PRIVATE KEY block that does not parse as a key"),
    ],
)
def test_what_is_not_a_key_is_said(content: bytes, problem: str) -> None:
    assert certs.private_key_problem(content) == problem


def test_a_key_belongs_only_to_its_own_certificate(ca: certs.KeyPair,
                                                  serving: certs.KeyPair) -> None:
    assert certs.key_belongs_to(serving.cert_pem, serving.key_pem)
    assert certs.key_belongs_to(ca.cert_pem, ca.key_pem)
    assert not certs.key_belongs_to(serving.cert_pem, ca.key_pem)
    # A chain is judged by its first certificate, the one served.
    assert certs.key_belongs_to(serving.cert_pem + ca.cert_pem, serving.key_pem)
