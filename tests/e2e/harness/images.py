"""Container images for the node e2e, built here because no registry is reachable.

Three archives, each an OCI image layout in a tar that ``ctr -n k8s.io images import`` takes,
with every image named as the kubelet will ask for it (``busybox:1.35`` is
``docker.io/library/busybox:1.35``):

- the webhook, built by buildah from the project's own Dockerfile, so that every step of it
  really runs, under the names the manifests use (``backend-injector:0.1.0`` in base/ and
  the docker-desktop overlay's ``backend-injector:dev``);
- ``busybox:1.35``: Debian's busybox 1.35 and a ``nc`` that has ``-z`` (tools/images/busybox);
- the flts chart's own images (preprocess, train, eval, inference, and Kafka), stand-ins
  that do to the backend what the real ones do (tools/images/flts).

The Dockerfile's ``FROM`` image (the Python base) is made locally: debootstrap's minimal
bookworm with python3 and python3-venv, from the mirror this machine's apt already uses.
Builds run in a throw-away buildah storage (vfs driver, chroot isolation) and pip inside them
trusts this machine's CA bundle through read-only mounts, never copied into an image.

Each result is cached under ``~/.cache/backend-injector/images/<name>-<hash of its inputs>/``,
so a warm run only reads a few small files:

    for image in images.all_images():
        node.import_image(image.archive)   # the same archive may hold several images

``python -m tests.e2e.harness.images build`` builds everything ahead of a test run (setup.sh --all).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from . import buildcache
from .buildah import CONTAINERD_NAME, Buildah, Publish, machine_as_found, run_logged

# Made in buildah.py; the tests know them from here.
from .buildah import Image as Image
from .buildah import ImageError as ImageError

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "Dockerfile"
SOURCES = REPO_ROOT / "tools" / "images"
CHART_VALUES = REPO_ROOT / "tests" / "e2e" / "chart" / "values.yaml"
WEBHOOK_CHART_VALUES = REPO_ROOT / "charts" / "backend-injector" / "values.yaml"

# Bump when the way images are made changes (what the hashes of the inputs cannot see).
RECIPE = "1"

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
# The flts chart's images: each is the stand-in image of tools/images/flts with its own
# configuration (the role as CMD), named as the chart's values.yaml names it at SECTION.KEY.
FLTS_ROLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "preprocess": ("images", "preprocess", {"Cmd": ["preprocess"]}),
    "train": ("images", "train", {"Cmd": ["train"]}),
    "eval": ("images", "eval", {"Cmd": ["eval"]}),
    "inference": ("images", "inference",
                  {"Cmd": ["inference"], "ExposedPorts": {"8080/tcp": {}}}),
    "kafka": ("kafka", "image",
              {"Cmd": ["kafka"], "ExposedPorts": {"9092/tcp": {}, "9093/tcp": {}}}),
}

def qualified(name: str) -> str:
    """The reference as containerd's CRI normalises it: ``busybox:1.35`` ->
    ``docker.io/library/busybox:1.35``."""
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"


# --- what to build, read from the repository ---------------------------------------------------


def dockerfile_base() -> str:
    """The image the Dockerfile's first stage starts ``FROM``, fully qualified."""
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            return qualified(words[1])
    raise ImageError(f"{DOCKERFILE} has no FROM line")


def webhook_names() -> list[str]:
    """Every name the manifests and the webhook's chart give its image (base/'s, tags)."""
    manifests = REPO_ROOT / "manifests"
    names: set[str] = set()
    for path in sorted(manifests.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            names.update(image for image in _images_in(document)
                         if _repository(image) == "backend-injector")
            if path.name == "kustomization.yaml":
                for entry in (document or {}).get("images", []):
                    if entry.get("name") == "backend-injector" and "newTag" in entry:
                        names.add(f"{entry.get('newName', entry['name'])}:{entry['newTag']}")
    # The webhook's own Helm chart names it as repository and tag.
    chart_image = yaml.safe_load(WEBHOOK_CHART_VALUES.read_text()).get("image", {})
    if chart_image.get("repository") and chart_image.get("tag"):
        names.add(f"{chart_image['repository']}:{chart_image['tag']}")
    if not names:
        raise ImageError(f"no backend-injector image named under {manifests}")
    return sorted(qualified(name) for name in names)


def _repository(image: str) -> str:
    """The last path component of an image reference, without tag or digest."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def _images_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images_in(item)


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(CHART_VALUES.read_text())
    return values


# --- the cache --------------------------------------------------------------------------------


def _images_cache() -> Path:
    return buildcache.cache_root() / "images"


def _cached(entry: Path) -> list[Image] | None:
    if not buildcache.is_complete(entry):
        return None
    buildcache.mark_used(entry)
    listing = json.loads((entry / "images.json").read_text())
    return [Image(item["name"], entry / "images.tar", item["config"]) for item in listing]


Recipe = Callable[["Buildah", Path], list[Publish]]
"""Builds images from a context directory; says what to publish under which names."""


def _build_group(kind: str, sources: dict[str, Path], keys: Sequence[str], build: Recipe,
                 stream: IO[str] | None) -> list[Image]:
    """Return the cached images of ``kind``, or make them with ``build(builder, context)``.

    ``sources`` (name in the context -> file or directory) are copied into a context of
    their own first and hashed as copied, so that an edit made while a build runs can
    neither leak into it nor be cached under the wrong key.
    """
    with tempfile.TemporaryDirectory(prefix=f"backend-injector-{kind}-") as snapshot:
        context = Path(snapshot)
        for name, source in sources.items():
            if source.is_dir():
                shutil.copytree(source, context / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, context / name)
        key = buildcache.content_hash([RECIPE, *keys, context], root=context)
        entry = _images_cache() / f"{kind}-{key}"
        cached = _cached(entry)
        if cached is not None:
            return cached
        output = stream if stream is not None else sys.stderr
        with buildcache.locked("images"):
            cached = _cached(entry)
            if cached is not None:
                return cached
            buildcache.fresh_entry(entry)
            print(f"images: building {kind} into {entry}", file=output, flush=True)
            started = time.monotonic()
            with Buildah(entry / "build.log", _images_cache() / ".work") as builder:
                images = builder.archive(build(builder, context), entry / "images.tar")
            (entry / "images.json").write_text(json.dumps(
                [{"name": image.name, "config": image.config} for image in images], indent=1))
            elapsed = time.monotonic() - started
            buildcache.mark_complete(entry, f"built in {elapsed:.0f} s\n")
            print(f"images: built {kind} in {elapsed:.0f} s", file=output, flush=True)
            for removed in buildcache.prune(entry, kind):
                print(f"images: removed {removed}, unused for {buildcache.UNUSED_DAYS} days",
                      file=output, flush=True)
            return images


# --- the local base -------------------------------------------------------------------------


def apt_mirror(suite: str = BASE_SUITE) -> str:
    """The Debian mirror this machine's apt takes ``suite``'s main component from."""
    sources = Path("/etc/apt")
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in stanza.splitlines()
                                           if line and not line.startswith(("#", " ")))
                }
                if ("deb" in fields.get("types", "").split()
                        and suite in fields.get("suites", "").split()
                        and "main" in fields.get("components", "").split()):
                    return fields["uris"].split()[0]
        elif path.suffix == ".list":
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite \
                        and "main" in words[3:]:
                    return words[1]
    raise ImageError(f"no apt source for {suite} main in {sources}")


def base_rootfs(stream: IO[str] | None = None) -> Path:
    """The local stand-in for the Dockerfile's base image, as a root filesystem tar.

    debootstrap's minbase of bookworm with python3 and python3-venv, and ``python`` linked to
    ``python3`` as in the official image (the Dockerfile runs ``python -m venv``).
    """
    arch = platform.machine()
    key = buildcache.content_hash([RECIPE, BASE_SUITE, *BASE_PACKAGES, arch])
    entry = _images_cache() / f"python-base-{key}"
    rootfs_tar = entry / "rootfs.tar"
    if buildcache.is_complete(entry):
        buildcache.mark_used(entry)
        return rootfs_tar
    output = stream if stream is not None else sys.stderr
    with buildcache.locked("images"):
        if buildcache.is_complete(entry):
            return rootfs_tar
        buildcache.fresh_entry(entry)
        mirror = apt_mirror()
        print(f"images: debootstrap {BASE_SUITE} from {mirror}", file=output, flush=True)
        started = time.monotonic()
        rootfs = entry / "rootfs"
        with machine_as_found():
            run_logged(["nice", "-n", "10", "debootstrap", "--variant=minbase",
                        f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, str(rootfs), mirror],
                       entry / "debootstrap.log")
        # What an image does not carry: package downloads and lists.
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        (rootfs / "usr/bin/python").symlink_to("python3")
        run_logged(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(rootfs_tar), "."],
             entry / "debootstrap.log")
        shutil.rmtree(rootfs)
        elapsed = time.monotonic() - started
        buildcache.mark_complete(entry, f"built in {elapsed:.0f} s\n")
        print(f"images: base built in {elapsed:.0f} s", file=output, flush=True)
    return rootfs_tar


# --- the images -----------------------------------------------------------------------------


def webhook_images(stream: IO[str] | None = None) -> list[Image]:
    """The webhook's image from the Dockerfile, once per name the manifests use."""
    base = base_rootfs(stream)
    names = webhook_names()

    def build(builder: Buildah, context: Path) -> list[Publish]:
        builder.load_base(base, dockerfile_base())
        builder.bud(context, context / DOCKERFILE.name, tag=names[0])
        return [Publish(names[0], name) for name in names]

    return _build_group("backend-injector", _dockerfile_context(), [base.parent.name, *names],
                        build, stream)


def _dockerfile_context() -> dict[str, Path]:
    """What the Dockerfile's build sees: itself, .dockerignore and what that lets in."""
    ignore = REPO_ROOT / ".dockerignore"
    context = {DOCKERFILE.name: DOCKERFILE, ignore.name: ignore}
    for line in ignore.read_text().splitlines():
        if line.startswith("!"):
            name = line[1:].strip().rstrip("/")
            if (REPO_ROOT / name).exists():
                context[name] = REPO_ROOT / name
    return context


def busybox_images(stream: IO[str] | None = None) -> list[Image]:
    """``busybox:1.35`` (the name the chart's values give it) with a working ``nc -z``."""
    name = qualified(chart_values()["images"]["busybox"])
    versions = [_package_version(package) for package in ("busybox", "libc6")]

    def build(builder: Buildah, context: Path) -> list[Publish]:
        _busybox_rootfs(context / "rootfs", context / "nc.c", builder.log)
        builder.bud(context, context / "Containerfile", tag=name)
        return [Publish(name, name)]

    return _build_group("busybox", {"nc.c": SOURCES / "busybox" / "nc.c",
                                    "Containerfile": SOURCES / "busybox" / "Containerfile"},
                        [name, *versions, _gcc_version()], build, stream)


def _busybox_rootfs(rootfs: Path, nc_source: Path, log: Path) -> None:
    """Debian's (dynamic) busybox and its libraries, applet links, and nc.c compiled."""
    busybox = Path("/bin/busybox")
    # Not busybox-static: its shell always runs its own nc applet, whatever PATH holds.
    for library in _shared_libraries(busybox):
        target = rootfs / library.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library.resolve(), target)
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, bin_dir / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet not in ("busybox", "nc"):
            (bin_dir / applet).symlink_to("busybox")
    # Linked against the same glibc as the busybox beside it, whose libraries the image has.
    run_logged(["gcc", "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(bin_dir / "nc"),
          str(nc_source)], log)
    etc = rootfs / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/home:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    for directory, mode in (("tmp", 0o1777), ("root", 0o700), ("home", 0o755)):
        (rootfs / directory).mkdir(mode=mode)
        (rootfs / directory).chmod(mode)


def _shared_libraries(binary: Path) -> list[Path]:
    listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             check=True).stdout
    return [Path(match) for match in re.findall(r"(/\S+) \(0x", listing)]


def _package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise ImageError(f"Debian package {package} is not installed (tools/setup.sh --all)")
    return f"{package}={result.stdout}"


def _gcc_version() -> str:
    return subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True,
                          check=True).stdout.strip()


def flts_images(stream: IO[str] | None = None) -> list[Image]:
    """The stand-ins for the chart's preprocess, train, eval, inference and Kafka images."""
    base = base_rootfs(stream)
    values = chart_values()
    roles = {qualified(values[section][key]): config
             for section, key, config in FLTS_ROLES.values()}
    local = "localhost/flts-standin:build"

    def build(builder: Buildah, context: Path) -> list[Publish]:
        builder.load_base(base, dockerfile_base())
        builder.bud(context, context / "Containerfile", tag=local,
                    build_args={"BASE": dockerfile_base()})
        return [Publish(local, name, config) for name, config in roles.items()]

    sources = SOURCES / "flts"
    return _build_group("flts", {path.name: path for path in sources.iterdir()
                                 if path.name != "__pycache__"},
                        [base.parent.name, json.dumps(roles, sort_keys=True)], build, stream)


def chart_images(stream: IO[str] | None = None) -> list[Image]:
    """Every image the flts chart runs with values-complete.yaml."""
    return busybox_images(stream) + flts_images(stream)


def all_images(stream: IO[str] | None = None) -> list[Image]:
    """The webhook's images and the chart's."""
    return webhook_images(stream) + chart_images(stream)


def archives(images: Iterable[Image]) -> list[Path]:
    """Each archive once, in order: what to import for ``images``."""
    return list(dict.fromkeys(image.archive for image in images))


def unpack(image: Image, rootfs: Path) -> None:
    """Extract ``image``'s layers from its archive into ``rootfs``, as a snapshotter would.

    For tests that look inside an image or run its programs under ``chroot``.
    """
    with tarfile.open(image.archive) as archive:
        def read(digest: str) -> IO[bytes]:
            member = archive.extractfile("blobs/" + digest.replace(":", "/"))
            if member is None:
                raise ImageError(f"{image.archive} lacks blob {digest}")
            return member

        index = json.load(_read_index(archive))
        [descriptor] = [d for d in index["manifests"]
                        if d["annotations"].get(CONTAINERD_NAME) == image.name]
        manifest = json.load(read(descriptor["digest"]))
        rootfs.mkdir(parents=True, exist_ok=True)
        for layer in manifest["layers"]:
            blob = read(layer["digest"])
            with (tarfile.open(fileobj=blob, mode="r|gz") if layer["mediaType"].endswith("+gzip")
                  else tarfile.open(fileobj=blob, mode="r|")) as tar:
                for member in tar:
                    _apply(tar, member, rootfs)


def _read_index(archive: tarfile.TarFile) -> IO[bytes]:
    member = archive.extractfile("index.json")
    if member is None:
        raise ImageError("the archive has no index.json")
    return member


def _apply(tar: tarfile.TarFile, member: tarfile.TarInfo, rootfs: Path) -> None:
    """One layer entry: a whiteout removes what lower layers put there; others extract."""
    path = Path(member.name)
    if path.name == ".wh..wh..opq":
        for child in (rootfs / path.parent).glob("*"):
            _remove(child)
    elif path.name.startswith(".wh."):
        _remove(rootfs / path.parent / path.name[len(".wh."):])
    else:
        target = rootfs / path
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        # Our own archive: links may point anywhere inside the image, devices are kept.
        tar.extract(member, rootfs, filter="fully_trusted")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def main(argv: list[str]) -> int:
    """``build``: build (or find) every image and print each name and archive."""
    if argv != ["build"]:
        print("usage: python -m tests.e2e.harness.images build", file=sys.stderr)
        return 2
    try:
        images = all_images(sys.stderr)
    except ImageError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    for image in images:
        print(f"{image.name} {image.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
