"""Answers remembered for reviews that differ only in their uid, bounded in bytes.

The pods of one ReplicaSet or Job reach admission byte for byte alike: the apiserver fills
in the name, uid and creation time only after admission, so ``generateName`` pods carry none
of them yet. Their reviews differ only in ``request.uid``. The answer is a pure function of
the rest of the body (and the settings, fixed for a handler), so it can be remembered: a
repeat costs a hash instead of parsing, mutating and encoding.

The key is a 128-bit BLAKE2b digest of the body with the first ``"uid":"..."`` value cut out,
together with where it was cut. A remembered answer is only ever used for a body in which that
uid occurs exactly once, and an entry is only stored once it is proven that the value at the
cut *is* the request's uid for every body equal up to the cut (see ``put``), so no body can get
another uid back. Only uids of plain characters are cut, so they can be copied into the answer
as they are.

The table is bounded by the bytes it holds (answers, their accounts and a fixed overhead per
entry), not only by its number of entries; the least recently used entry goes first, and an
entry larger than ``LARGEST_ENTRY`` is not kept at all. This module knows nothing of the
review envelope: what it keeps beside an answer (``account``) is the caller's, with the
caller's estimate of its size.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

_FIRST_UID = re.compile(rb'"uid"\s*:\s*"([A-Za-z0-9-]{1,64})"')
# A JSON escape that spells one of the characters of ``uid`` or of a plain uid (- 0-9 A-Z a-z).
_PLAIN_ESCAPE = re.compile(rb"\\u00(?:2[dD]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])")
DEFAULT_ENTRIES = 4096
# All entries together; see SECURITY.md for the memory budget this is part of.
DEFAULT_BUDGET = 8 * 1024 * 1024
# A pod of one ReplicaSet answers in a few kilobytes; much larger answers are rare, and a few
# hundred of them would take the whole budget from the common case.
LARGEST_ENTRY = 64 * 1024
# Bodies larger than this are not looked up: hashing them costs more than it is likely to save.
LARGEST_BODY = 1024 * 1024
# What an entry costs besides its bytes: the table's node, the key, the entry and two bytes
# objects (CPython: about 50 bytes each object, 100 for an OrderedDict node).
ENTRY_OVERHEAD = 400

Account = TypeVar("Account")


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: bytes
    uid: str
    cut: tuple[int, int]  # where the uid value lies in the body


@dataclass(frozen=True, slots=True)
class _Entry(Generic[Account]):
    before_uid: bytes  # the answer up to the uid value
    after_uid: bytes  # and after it
    account: Account
    size: int


class ReviewCache(Generic[Account]):
    """A map from review bodies (less their uid) to answers, bounded in entries and bytes."""

    def __init__(self, entries: int = DEFAULT_ENTRIES, budget: int = DEFAULT_BUDGET,
                 largest_entry: int = LARGEST_ENTRY) -> None:
        self._entries: OrderedDict[bytes, _Entry[Account]] = OrderedDict()
        self._most_entries = entries
        self._budget = budget
        self._largest_entry = min(largest_entry, budget)
        self._held = 0

    @property
    def held_bytes(self) -> int:
        """The bytes accounted to the entries now kept."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, body: bytes) -> CacheKey | None:
        """The key of ``body``, or None when its answer may not be remembered or looked up."""
        if len(body) > LARGEST_BODY:
            return None
        match = _FIRST_UID.search(body)
        if match is None:
            return None
        uid = match.group(1)
        if body.count(uid) != 1:
            return None
        start, end = match.span(1)
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(start.to_bytes(8, "little"))
        hasher.update(memoryview(body)[:start])
        hasher.update(memoryview(body)[end:])
        return CacheKey(digest=hasher.digest(), uid=uid.decode("ascii"), cut=(start, end))

    def get(self, key: CacheKey) -> tuple[bytes, Account] | None:
        """The remembered answer with ``key``'s uid in it, and the account kept beside it."""
        entry = self._entries.get(key.digest)
        if entry is None:
            return None
        self._entries.move_to_end(key.digest)
        return b"".join((entry.before_uid, key.uid.encode("ascii"), entry.after_uid)), entry.account

    def put(
        self,
        key: CacheKey,
        body: bytes,
        answer: bytes,
        account: Account,
        account_size: int,
        request_uid: Callable[[bytes], str | None],
    ) -> None:
        """Remember ``answer`` (given for ``body``, whose request uid is ``key.uid``).

        ``request_uid`` reads the request uid of a body as the review itself does. It is asked
        only when the body holds an escape that spells a letter, digit or hyphen (``\\u0075``):
        without one, ``key.uid`` occurring once means that the value at the cut is the one the
        request's uid was read from. With one, a key or value spelled ``\\u0075id`` could be the
        one read, so the cut is proven by reading a body with another uid at the cut, which
        must come back as the request uid. (Other escapes, such as the ``\\u0026`` Go writes
        for ``&``, spell nothing a uid or its key is made of.)
        """
        marker = b'"uid":"' + key.uid.encode("ascii") + b'"'
        position = answer.find(marker)
        size = len(answer) + account_size + ENTRY_OVERHEAD
        if position < 0 or size > self._largest_entry or self._most_entries == 0:
            return
        if _PLAIN_ESCAPE.search(body) and not self._cut_is_the_request_uid(key, body,
                                                                          request_uid):
            return
        start = position + len(b'"uid":"')
        entry = _Entry(before_uid=answer[:start], after_uid=answer[start + len(key.uid):],
                       account=account, size=size)
        previous = self._entries.pop(key.digest, None)
        if previous is not None:
            self._held -= previous.size
        self._entries[key.digest] = entry
        self._held += size
        while self._held > self._budget or len(self._entries) > self._most_entries:
            _, oldest = self._entries.popitem(last=False)
            self._held -= oldest.size

    @staticmethod
    def _cut_is_the_request_uid(
        key: CacheKey, body: bytes, request_uid: Callable[[bytes], str | None]
    ) -> bool:
        # Any other plain value will do, as long as it differs from the uid: then the uid read
        # from the probe can only have come from the cut.
        other = ("y" if key.uid[0] == "z" else "z") + key.uid[1:]
        start, end = key.cut
        probe = b"".join((body[:start], other.encode("ascii"), body[end:]))
        return request_uid(probe) == other
