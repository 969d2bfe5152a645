"""Building images with buildah in a storage of its own, and writing them into one OCI archive
that ``ctr images import`` takes, every image under the name the kubelet will ask for.

``images.py`` says what to build; this module does the building and the packing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The machine's CA bundle and pip's configuration naming it: package registries are reached
# through a TLS chain only this bundle trusts.
BUILD_MOUNTS = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf"))

REF_NAME = "org.opencontainers.image.ref.name"
# containerd names an imported image after this annotation (the OCI one may be a bare tag).
CONTAINERD_NAME = "io.containerd.image.name"
# What an image build writes outside its own directories whatever it is told: buildah's
# network backend run directory and the blob-info cache of containers/image, and libmount's
# /run/mount/utab (debootstrap mounts /proc in the new root with mount(8)). buildah's network
# configuration (/etc/cni/net.d by default) goes to its work directory through
# CONTAINERS_CONF. A build removes those of these it created (`machine_as_found`), so that
# image builds, like the node, leave a machine as they found it.
MACHINE_PATHS = (Path("/run/containers"), Path("/var/lib/containers"), Path("/run/mount"))


@contextlib.contextmanager
def machine_as_found() -> Iterator[None]:
    """Remove, on the way out, those of ``MACHINE_PATHS`` that did not exist on the way in.

    Builds run one at a time (the images lock), so nothing else is using what goes.
    """
    absent = [path for path in MACHINE_PATHS if not path.exists()]
    try:
        yield
    finally:
        for path in absent:
            shutil.rmtree(path, ignore_errors=True)


class ImageError(RuntimeError):
    """An image could not be built."""


@dataclass(frozen=True)
class Publish:
    """A locally built image to write into the archive as ``name``, its config amended."""

    local: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    """One image in an archive, by the fully qualified name containerd will list it under."""

    name: str
    archive: Path
    config: dict[str, Any]
    """The OCI image configuration's ``config`` object: User, Entrypoint, Cmd, Env..."""


class Buildah:
    """buildah with a storage of its own, removed on exit (the results are archives)."""

    def __init__(self, log: Path, work_root: Path) -> None:
        self.log = log
        # Only one build runs at a time (the images lock): anything here is a crashed one's.
        shutil.rmtree(work_root, ignore_errors=True)
        work_root.mkdir(parents=True)
        self.work = Path(tempfile.mkdtemp(dir=work_root))
        self._undo = contextlib.ExitStack()
        self._undo.enter_context(machine_as_found())
        self._containers_conf = self.work / "containers.conf"
        network = self.work / "network"
        network.mkdir()
        self._containers_conf.write_text(f'[network]\nnetwork_config_dir = "{network}"\n')

    def __enter__(self) -> Buildah:
        return self

    def __exit__(self, *_: object) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self._undo.close()

    def run(self, *args: str) -> str:
        command = ["nice", "-n", "10", "buildah", "--root", str(self.work / "root"),
                   "--runroot", str(self.work / "run"), "--storage-driver", "vfs", *args]
        return run_logged(command, self.log, env={"TMPDIR": str(self.work),
                                                  "CONTAINERS_CONF": str(self._containers_conf)})

    def load_base(self, rootfs_tar: Path, name: str) -> None:
        """Commit the base's root filesystem under the name the Dockerfile asks for."""
        container = self.run("from", "scratch").strip().splitlines()[-1]
        self.run("add", container, str(rootfs_tar), "/")
        self.run("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                 "/sbin:/bin", "--env", "LANG=C.UTF-8", "--cmd", '["python3"]', container)
        self.run("commit", "--quiet", container, name)
        self.run("rm", container)

    def bud(self, context: Path, containerfile: Path, *, tag: str,
            build_args: dict[str, str] | None = None) -> None:
        """Build ``containerfile`` with only local images, the CA bundle mounted for pip."""
        args = ["bud", "--isolation", "chroot", "--pull=never", "--layers=false",
                "--file", str(containerfile), "--tag", tag]
        for mount in BUILD_MOUNTS:
            if mount.exists():
                args += ["--volume", f"{mount}:{mount}:ro"]
        for name, value in (build_args or {}).items():
            args += ["--build-arg", f"{name}={value}"]
        self.run(*args, str(context))

    def archive(self, published: list[Publish], archive: Path) -> list[Image]:
        """Write the images into one OCI archive whose images share their blobs.

        An image published with config changes gets a config and a manifest of its own over
        the same layers: what a one-line ``CMD`` stage would give, without buildah copying
        the whole root filesystem (vfs) to commit it.
        """
        layout = self.work / "layout"
        for local in dict.fromkeys(item.local for item in published):
            self.run("push", "--quiet", local, f"oci:{layout}:{local}")
        index = json.loads((layout / "index.json").read_text())
        pushed = {descriptor["annotations"][REF_NAME]: descriptor
                  for descriptor in index["manifests"]}
        descriptors, images = [], []
        for item in published:
            source = pushed[item.local]
            manifest = _blob(layout, source["digest"])
            config = _blob(layout, manifest["config"]["digest"])
            reference = {"digest": source["digest"], "size": source["size"]}
            if item.config:
                config = config | {"config": config.get("config", {}) | item.config}
                manifest = manifest | {"config": manifest["config"] | _put_blob(layout, config)}
                reference = _put_blob(layout, manifest)
            descriptors.append({
                "mediaType": source["mediaType"], **reference,
                "annotations": {REF_NAME: item.name, CONTAINERD_NAME: item.name},
                # So that `ctr import` matches the node's platform without reading configs.
                "platform": {"architecture": config["architecture"], "os": config["os"]},
            })
            images.append(Image(item.name, archive, config.get("config", {})))
        index["manifests"] = descriptors
        (layout / "index.json").write_text(json.dumps(index))
        _drop_unreferenced_blobs(layout, descriptors)
        with tarfile.open(archive, "w") as tar:
            for path in sorted(layout.iterdir()):
                tar.add(path, arcname=path.name)
        return images


def _put_blob(layout: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Store a JSON document as a blob; return its digest and size for a descriptor."""
    content = json.dumps(document, separators=(",", ":")).encode()
    digest = hashlib.sha256(content).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(content)
    return {"digest": f"sha256:{digest}", "size": len(content)}


def _drop_unreferenced_blobs(layout: Path, descriptors: list[dict[str, Any]]) -> None:
    """Remove the configs and manifests that only the pushed, unpublished images used."""
    referenced = set()
    for descriptor in descriptors:
        manifest = _blob(layout, descriptor["digest"])
        referenced |= {descriptor["digest"], manifest["config"]["digest"],
                       *(layer["digest"] for layer in manifest["layers"])}
    for path in (layout / "blobs" / "sha256").iterdir():
        if f"sha256:{path.name}" not in referenced:
            path.unlink()


def _blob(layout: Path, digest: str) -> dict[str, Any]:
    algorithm, value = digest.split(":", 1)
    document: dict[str, Any] = json.loads((layout / "blobs" / algorithm / value).read_text())
    return document


def run_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``command``, its output appended to ``log``; on failure raise with the log's end."""
    with open(log, "a") as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        started = time.monotonic()
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=output, text=True, check=False,
                                env=os.environ | (env or {}))
        output.write(f"{result.stdout}# {time.monotonic() - started:.1f} s\n")
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ImageError(f"{command[0:5]}... failed with exit code {result.returncode}; "
                         f"end of {log}:\n{tail}")
    return result.stdout
