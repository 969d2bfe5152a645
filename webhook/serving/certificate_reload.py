"""Certificate rotation without a restart: the served pair is reloaded when its files change.

Each worker polls the files behind the paths once a second. When the Secret changes (by
``backend-injector install`` or cert-manager's renewal), the kubelet swaps the volume's
``..data`` symlink in one rename, which shows here as new files. The new pair is loaded in a
scratch context first and only then into the live one, so new connections get the new
certificate while those in flight keep theirs, and a half-written rotation never reaches a
client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

from webhook.serving.tls import CertificatePair

logger = logging.getLogger(__name__)

# A rotated certificate is served within a second; a stat of two files a second costs nothing.
CERTIFICATE_POLL_SECONDS = 1.0

Signature = tuple[tuple[int, int, int], ...]


class CertificateWatcher:
    """Reloads the certificate pair into a live context when the files change."""

    def __init__(self, context: ssl.SSLContext, pair: CertificatePair) -> None:
        self._context = context
        self._pair = pair
        self._seen = self._signature()

    def _signature(self) -> Signature | None:
        try:
            # os.stat follows symlinks, so a swapped `..data` link shows as a new inode.
            stats = [os.stat(self._pair.cert), os.stat(self._pair.key)]
        except OSError:
            return None  # mid-swap; the next poll sees the finished state
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def check(self) -> bool:
        """Reload if the files changed and form a valid pair. True when a reload happened."""
        signature = self._signature()
        if signature is None or signature == self._seen:
            return False
        try:
            # A half-written rotation (new certificate, old key) must not reach the live
            # context: a failed load there would leave it with a mismatched pair.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self._pair.cert,
                                                                    self._pair.key)
            self._context.load_cert_chain(self._pair.cert, self._pair.key)
        except (OSError, ssl.SSLError) as error:
            # Not remembered as seen: the next poll tries again, and succeeds once the
            # rotation is complete.
            logger.warning("certificate change not loaded yet: %s", error.__class__.__name__)
            return False
        self._seen = signature
        logger.info("certificate reloaded", extra={"fields": {"cert": str(self._pair.cert)}})
        return True

    async def watch(self) -> None:
        """Check once a poll interval, until cancelled."""
        while True:
            await asyncio.sleep(CERTIFICATE_POLL_SECONDS)
            self.check()
