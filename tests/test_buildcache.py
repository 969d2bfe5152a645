"""The e2e build cache's bookkeeping (tests/e2e/harness/buildcache.py): stamps, hashes and
pruning."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.e2e.harness import buildcache

DAY = 86400.0


def entry(root: Path, name: str, age_days: float | None, complete: bool = True) -> Path:
    """A cache entry last used ``age_days`` ago."""
    path = root / name
    path.mkdir()
    (path / "images.tar").write_bytes(b"x")
    when = time.time() - (age_days or 0) * DAY
    if complete:
        buildcache.mark_complete(path)
        os.utime(path / buildcache.STAMP, (when, when))
    os.utime(path, (when, when))
    return path


def test_prune_removes_only_long_unused_entries_of_the_same_kind(tmp_path: Path) -> None:
    kept = entry(tmp_path, "flts-0000000000000000", 30)
    old = entry(tmp_path, "flts-1111111111111111", 8)
    recent = entry(tmp_path, "flts-2222222222222222", 6)
    crashed = entry(tmp_path, "flts-3333333333333333", 9, complete=False)
    other_kind = entry(tmp_path, "busybox-4444444444444444", 30)
    longer_name = entry(tmp_path, "flts-extra-5555555555555555", 30)

    removed = buildcache.prune(kept, "flts", unused_days=7)

    assert sorted(removed) == sorted([old, crashed])
    assert all(path.exists() for path in (kept, recent, other_kind, longer_name))
    assert not old.exists() and not crashed.exists()


def test_an_entry_in_use_is_not_pruned(tmp_path: Path) -> None:
    kept = entry(tmp_path, "flts-0000000000000000", 0)
    used = entry(tmp_path, "flts-1111111111111111", 30)
    buildcache.mark_used(used)
    assert buildcache.prune(kept, "flts", unused_days=7) == []
    assert used.exists()


def test_an_entry_counts_only_once_stamped(tmp_path: Path) -> None:
    half_built = entry(tmp_path, "flts-0000000000000000", 0, complete=False)
    assert not buildcache.is_complete(half_built)
    buildcache.mark_complete(half_built, "built in 1 s\n")
    assert buildcache.is_complete(half_built)


def test_the_content_hash_follows_content_not_listing_or_location(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for root in (first, second):
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "one.py").write_text("1")
        (root / "pkg" / "two.py").write_text("2")
    (second / "pkg" / "__pycache__").mkdir()
    (second / "pkg" / "__pycache__" / "one.pyc").write_bytes(b"compiled")
    assert (buildcache.content_hash(["v1", first], root=first)
            == buildcache.content_hash(["v1", second], root=second))
    (second / "pkg" / "two.py").write_text("two")
    assert (buildcache.content_hash(["v1", first], root=first)
            != buildcache.content_hash(["v1", second], root=second))
    assert (buildcache.content_hash(["v1", first], root=first)
            != buildcache.content_hash(["v2", first], root=first))
