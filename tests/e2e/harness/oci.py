"""OCI image archives written by hand, for images that no registry can serve here.

An image is one uncompressed layer (a tar of the given files), a config naming the command,
a manifest, and an ``index.json`` whose ``io.containerd.image.name`` annotation is the name
the image gets when containerd imports the archive (``ctr images import``). This is enough
for the node's sandbox (pause) image and for small test images made of static binaries;
images built from a Dockerfile come from a real builder instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class File:
    """A regular file of the image: its content and permission bits."""

    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    """A symbolic link of the image."""

    target: str


Entry = File | Symlink


def _tar_info(name: str, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    # Fixed owner and time, so the same files always give the same layer digest.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def layer_tar(entries: Mapping[str, Entry]) -> bytes:
    """A layer holding ``entries`` (absolute paths), with every parent directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for path in sorted(entries):
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    tar.addfile(_tar_info(directory, type=tarfile.DIRTYPE, mode=0o755))
            name = "/".join(parts)
            entry = entries[path]
            if isinstance(entry, Symlink):
                tar.addfile(_tar_info(name, type=tarfile.SYMTYPE, linkname=entry.target))
            else:
                info = _tar_info(name, size=len(entry.data), mode=entry.mode)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


def write_image_archive(
    archive: Path,
    *,
    name: str,
    entries: Mapping[str, Entry],
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    user: str = "",
    working_dir: str = "/",
) -> Path:
    """Write an OCI image layout as a tar at ``archive``; it imports as image ``name``.

    ``name`` is the full reference containerd will store (for example
    ``localhost/bi-e2e/pause:1``); pods must use the same reference.
    """
    layer = layer_tar(entries)
    environment = {"PATH": DEFAULT_PATH, **(env or {})}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(entrypoint),
            "Cmd": list(cmd),
            "Env": [f"{key}={value}" for key, value in environment.items()],
            "User": user,
            "WorkingDir": working_dir,
        },
        # The layer is stored uncompressed, so its diff ID is its digest.
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }
    config_blob = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": _descriptor(CONFIG_MEDIA_TYPE, config_blob),
        "layers": [_descriptor(LAYER_MEDIA_TYPE, layer)],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                **_descriptor(MANIFEST_MEDIA_TYPE, manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for blob in (layer, config_blob, manifest_blob):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    with tarfile.open(archive, mode="w") as tar:
        tar.addfile(_tar_info("blobs", type=tarfile.DIRTYPE, mode=0o755))
        tar.addfile(_tar_info("blobs/sha256", type=tarfile.DIRTYPE, mode=0o755))
        for member, data in files.items():
            tar.addfile(_tar_info(member, size=len(data), mode=0o644), io.BytesIO(data))
    return archive
