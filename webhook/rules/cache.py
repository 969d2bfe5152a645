"""Readings of programs remembered, bounded by the characters of what they remember.

The pods of one workload carry the same init containers over and over, so a program read
once need not be read again. Each cache keeps at most ``CACHE_BYTES`` of programs (and the
env values they refer to); the oldest go first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

# Each cache of readings keeps at most this many bytes of programs; a program above
# CACHE_ENTRY_CHARS is not worth keeping (real ones repeat and are short).
CACHE_BYTES = 4 * 1024 * 1024
CACHE_ENTRY_CHARS = 16 * 1024

_Value = TypeVar("_Value")
# A program's elements, and the container's literal env when the program refers to it.
ProgramKey = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


def program_key(argv: Sequence[str], env: Mapping[str, str] | None) -> ProgramKey:
    """What a reading of ``argv`` depends on."""
    # The env only matters to a program that refers to variables.
    if env and any("$" in element for element in argv):
        return tuple(argv), tuple(sorted(env.items()))
    return tuple(argv), ()


def env_size(key: ProgramKey) -> int:
    """The characters of the env in ``key``, counted against a cache's budget."""
    return sum(len(name) + len(value) for name, value in key[1])


class BoundedCache(Generic[_Value]):
    """Remembered results, bounded by the characters of their keys; the oldest go first."""

    def __init__(self, budget: int = CACHE_BYTES, largest: int = CACHE_ENTRY_CHARS) -> None:
        self._entries: dict[ProgramKey, tuple[int, _Value]] = {}
        self._size = 0
        self._budget = budget
        self._largest = largest

    def get(self, key: ProgramKey) -> tuple[bool, _Value | None]:
        found = self._entries.get(key)
        return (False, None) if found is None else (True, found[1])

    def put(self, key: ProgramKey, size: int, value: _Value) -> None:
        if size > self._largest or key in self._entries:
            return
        self._entries[key] = (size, value)
        self._size += size
        while self._size > self._budget:
            oldest = next(iter(self._entries))
            self._size -= self._entries.pop(oldest)[0]

    @property
    def size(self) -> int:
        return self._size


__all__ = ["CACHE_BYTES", "CACHE_ENTRY_CHARS", "BoundedCache", "ProgramKey", "env_size",
           "program_key"]
