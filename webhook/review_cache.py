"""Answers remembered for reviews that differ only in their uid.

The pods of one ReplicaSet or Job reach admission byte for byte alike: the apiserver fills
in the name, uid and creation time only after admission, so ``generateName`` pods carry none
of them yet. Their reviews differ only in ``request.uid``. The answer is a pure function of
the rest of the body (and the settings, fixed for a handler), so it can be remembered: a
repeat costs a hash instead of parsing, mutating and encoding.

The key is a 128-bit BLAKE2b digest of the body with the first ``"uid":"..."`` value cut out,
together with where it was cut. An entry is only stored after the full review confirmed that
this first uid *was* the request's uid, so a hit, whose body is equal up to the cut at the same
place, has its request uid in that same place. Only uids of plain characters are cut, so they
can be copied into the answer as they are. The table is bounded; the oldest entry goes first.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webhook.admission import ReviewOutcome

_FIRST_UID = re.compile(rb'"uid"\s*:\s*"([A-Za-z0-9-]{1,64})"')
DEFAULT_ENTRIES = 512
# Answers larger than this are not kept: a few hundred of them would cost real memory.
LARGEST_ANSWER = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Entry:
    before_uid: bytes  # the answer up to the uid value
    after_uid: bytes  # and after it
    outcome: ReviewOutcome  # for logs and metrics; body and uid replaced on each hit


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: bytes
    uid: str


class ReviewCache:
    """A bounded map from review bodies (less their uid) to answers."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._size = entries

    def key(self, body: bytes) -> CacheKey | None:
        match = _FIRST_UID.search(body)
        if match is None:
            return None
        start, end = match.span(1)
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(start.to_bytes(8, "little"))
        hasher.update(memoryview(body)[:start])
        hasher.update(memoryview(body)[end:])
        return CacheKey(digest=hasher.digest(), uid=match.group(1).decode("ascii"))

    def get(self, key: CacheKey) -> ReviewOutcome | None:
        entry = self._entries.get(key.digest)
        if entry is None:
            return None
        body = b"".join((entry.before_uid, key.uid.encode("ascii"), entry.after_uid))
        return replace(entry.outcome, body=body, uid=key.uid)

    def put(self, key: CacheKey, outcome: ReviewOutcome) -> None:
        """Remember ``outcome`` if its uid is the one the key cut out and it can be split."""
        if outcome.uid != key.uid or len(outcome.body) > LARGEST_ANSWER:
            return
        marker = b'"uid":"' + key.uid.encode("ascii") + b'"'
        position = outcome.body.find(marker)
        if position < 0:
            return
        split = position + len(marker) - 1
        start = split - len(key.uid)
        self._entries[key.digest] = _Entry(
            before_uid=outcome.body[:start], after_uid=outcome.body[split:], outcome=outcome
        )
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
