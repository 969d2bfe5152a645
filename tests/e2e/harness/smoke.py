"""The smoke image the node tests run: the static ``probe`` program and a page to serve.

Made here (packed by ``oci.py`` from ``tools/probe``), so the node tests depend on no image
built elsewhere. The page carries a token drawn once per session, so an answer that holds it
can only come from a pod of this session.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from . import oci
from .node import NodeBinaries

SMOKE_IMAGE = "localhost/bi-e2e/smoke:1"
# Written into the served page, so the answer cannot come from anything but this pod.
PAGE_TOKEN = secrets.token_hex(8)
# The pod command that serves the page on port 8080.
WEB_COMMAND = ["/probe", "serve", "8080", "/www/index.html"]


def write_smoke_image(archive: Path, binaries: NodeBinaries) -> Path:
    """The probe program and a page carrying PAGE_TOKEN."""
    return oci.write_image_archive(
        archive,
        name=SMOKE_IMAGE,
        entries={
            "/probe": oci.File(binaries.probe.read_bytes(), 0o755),
            "/www/index.html": oci.File(f"smoke {PAGE_TOKEN}\n".encode()),
        },
        entrypoint=["/probe"],
    )
