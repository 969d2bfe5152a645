"""The e2e suite's cache of expensive build results, outside the clone.

Everything lives under ``${BACKEND_INJECTOR_CACHE:-~/.cache/backend-injector}``, the same root
``tools/build-binaries.sh`` uses. An entry is a directory named after what was built and a
hash of its inputs; it counts only once its ``.complete`` stamp exists, so a build that was
interrupted is redone instead of being taken for a finished one. Builds of one kind hold a
lock, so that two test sessions (or setup.sh and a test session) never build the same thing
at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

STAMP = ".complete"
# Entries of one kind not used for this long are removed when another of that kind is built:
# every edit of the webhook's sources, in every clone, makes a new one.
UNUSED_DAYS = 7


def cache_root() -> Path:
    """The cache's root directory (not created)."""
    configured = os.environ.get("BACKEND_INJECTOR_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "backend-injector"


def content_hash(items: Iterable[Path | str | bytes], root: Path | None = None) -> str:
    """A short hash of files (by path relative to ``root``, and content) and literal values.

    Directories are walked in sorted order, so the hash does not depend on listing order;
    ``__pycache__`` directories are left out, since running the code writes them.
    """
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, bytes):
            digest.update(b"value\0" + item + b"\0")
        elif isinstance(item, str):
            digest.update(b"value\0" + item.encode() + b"\0")
        else:
            files = sorted(_files_under(item)) if item.is_dir() else [item]
            for file in files:
                name = str(file.relative_to(root)) if root else str(file)
                digest.update(b"file\0" + name.encode() + b"\0")
                digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _files_under(directory: Path) -> Iterator[Path]:
    for path in directory.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def is_complete(entry: Path) -> bool:
    """Whether ``entry`` holds a finished build."""
    return (entry / STAMP).is_file()


def mark_complete(entry: Path, note: str = "") -> None:
    """Declare ``entry`` finished; call this last, after every file is in place."""
    (entry / STAMP).write_text(note)


def mark_used(entry: Path) -> None:
    """Record that ``entry`` was just used (its stamp's time), so that prune() keeps it."""
    os.utime(entry / STAMP)


def prune(kept: Path, kind: str, unused_days: float = UNUSED_DAYS) -> list[Path]:
    """Remove the other ``<kind>-<hash>`` entries beside ``kept`` unused for ``unused_days``.

    An entry without a stamp (a build that was interrupted) counts from its directory's time.
    Returns what was removed.
    """
    pattern = re.compile(rf"{re.escape(kind)}-[0-9a-f]{{16}}")
    deadline = time.time() - unused_days * 86400
    removed = []
    for entry in kept.parent.iterdir():
        if entry == kept or not entry.is_dir() or not pattern.fullmatch(entry.name):
            continue
        used = (entry / STAMP) if is_complete(entry) else entry
        if used.stat().st_mtime < deadline:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def locked(kind: str) -> Iterator[None]:
    """Hold the build lock of one kind of entry (``images``, ``backend``...) while inside."""
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fresh_entry(entry: Path) -> Path:
    """Empty ``entry`` of any half-finished build and return it, created."""
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True)
    return entry
