"""The certificate watcher: a changed pair reaches the live context, a half-written one never."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

from tests.server_process import write_pair
from webhook.serving.certificate_reload import CertificateWatcher
from webhook.serving.tls import CertificatePair, build_tls_context


def served_certificate(context: ssl.SSLContext) -> bytes:
    """The certificate a new connection to ``context`` is shown, by a handshake in memory."""
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, from_client)
    server = context.wrap_bio(to_server, from_server, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        der = client.getpeercert(binary_form=True) if client.version() else None
        if der:
            return der
    raise AssertionError("the handshake did not finish")


def pem_as_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def mount(tmp_path: Path, version: Path) -> CertificatePair:
    """A Secret volume's layout: the files behind a `..data` symlink that is swapped whole."""
    directory = tmp_path / "mount"
    directory.mkdir()
    (directory / "..data").symlink_to(version)
    for name in ("tls.crt", "tls.key"):
        (directory / name).symlink_to(Path("..data") / name)
    return CertificatePair(directory / "tls.crt", directory / "tls.key")


def swap(pair: CertificatePair, version: Path) -> None:
    new_link = pair.cert.parent / "..data_tmp"
    new_link.symlink_to(version)
    new_link.replace(pair.cert.parent / "..data")


def test_unchanged_files_are_not_reloaded(tmp_path: Path) -> None:
    pair = mount(tmp_path, write_pair(tmp_path / "v1"))
    context = build_tls_context(pair, None)
    watcher = CertificateWatcher(context, pair)
    assert not watcher.check()
    assert served_certificate(context) == pem_as_der(tmp_path / "v1" / "tls.crt")


def test_a_swapped_volume_is_served_to_new_connections(tmp_path: Path) -> None:
    first, second = write_pair(tmp_path / "v1"), write_pair(tmp_path / "v2")
    pair = mount(tmp_path, first)
    context = build_tls_context(pair, None)
    watcher = CertificateWatcher(context, pair)
    swap(pair, second)
    assert watcher.check()
    assert served_certificate(context) == pem_as_der(second / "tls.crt")
    assert not watcher.check()  # once is enough


def test_a_half_written_rotation_keeps_the_old_pair_until_the_key_arrives(
    tmp_path: Path,
) -> None:
    first, second = write_pair(tmp_path / "v1"), write_pair(tmp_path / "v2")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(first / "tls.crt", cert)
    shutil.copyfile(first / "tls.key", key)
    pair = CertificatePair(cert, key)
    context = build_tls_context(pair, None)
    watcher = CertificateWatcher(context, pair)

    cert.write_bytes((second / "tls.crt").read_bytes())  # the new certificate, the old key
    assert not watcher.check()
    assert served_certificate(context) == pem_as_der(first / "tls.crt")

    key.write_bytes((second / "tls.key").read_bytes())
    assert watcher.check()
    assert served_certificate(context) == pem_as_der(second / "tls.crt")


def test_files_missing_mid_rotation_leave_the_live_pair_alone(tmp_path: Path) -> None:
    first = write_pair(tmp_path / "v1")
    pair = mount(tmp_path, first)
    context = build_tls_context(pair, None)
    watcher = CertificateWatcher(context, pair)
    (pair.cert.parent / "..data").unlink()
    assert not watcher.check()
    assert served_certificate(context) == pem_as_der(first / "tls.crt")
