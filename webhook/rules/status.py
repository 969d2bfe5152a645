"""The status annotation: the names of what the rules did to a pod, never values.

It is written on every pod the rules change, and read back when the apiserver calls again
(reinvocation) or when a pod made from a mutated one comes by: an earlier pass's account is
merged with the new one, so a second pass that changes nothing writes the same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

STATUS_KEY = "backend-injector/status"
# The status annotation: its lists, and what of an earlier one is read back. Our own is far
# below these (a pod has at most a few dozen containers and managed variables).
STATUS_LISTS = ("removed", "rewritten", "env")
# Written only when it names something (the host names given /etc/hosts entries), so that the
# account of a pod without them reads as it always has.
ALIASED = "aliased"
STATUS_MAX_CHARS = 64 * 1024
STATUS_MAX_NAMES = 256
NAME_MAX_CHARS = 253  # the longest Kubernetes name

# What a pod without our annotation has: read, never changed.
_NO_STATUS: Mapping[str, list[str]] = {key: [] for key in STATUS_LISTS}


def read_status(metadata: Mapping[str, Any]) -> Mapping[str, list[str]]:
    """An earlier pass's status annotation, or empty lists for anything else.

    Anything that is not our own shape (not JSON, nested too deep, larger than any real
    account, the wrong types) counts as absent: the pod is mutated and the annotation
    rewritten. A list that is not a list of names is read as empty; only names of Kubernetes'
    length are kept, from the first STATUS_MAX_NAMES entries of a list. ``ALIASED`` is among
    the keys only when the annotation names something under it.
    """
    value = annotations_of(metadata).get(STATUS_KEY)
    if not isinstance(value, str) or len(value) > STATUS_MAX_CHARS:
        return _NO_STATUS
    status: dict[str, list[str]] = {key: [] for key in STATUS_LISTS}
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:  # also what orjson raises for nesting beyond its limit
        return status
    if isinstance(parsed, dict):
        for key in STATUS_LISTS:
            status[key] = _names(parsed.get(key))
        if aliased := _names(parsed.get(ALIASED)):
            status[ALIASED] = aliased
    return status


def _names(names: Any) -> list[str]:
    """The names of one list of the annotation; anything but a list is none."""
    if not isinstance(names, list):
        return []
    return [
        name for name in names[:STATUS_MAX_NAMES]
        if isinstance(name, str) and len(name) <= NAME_MAX_CHARS
    ]


def status_operation(
    metadata: Mapping[str, Any],
    has_metadata: bool,
    earlier: Mapping[str, list[str]],
    *,
    removed: Sequence[str],
    rewritten: Sequence[str],
    env: Sequence[str],
    aliased: Sequence[str] = (),
) -> dict[str, Any] | None:
    """The operation that adds or merges the status annotation, with the names this pass
    ``removed``, ``rewritten``, set the ``env`` of and gave host ``aliased``; None when the
    annotation already says it all.

    Merging keeps the account of an earlier pass (reinvocation) when a later one adds to it.
    """
    # Clipped as it is read back, so that a second pass writes the same text; the full
    # account of a huge pod is in the admission warnings' counts. (In STATUS_LISTS' order.)
    status = {
        "removed": _union(earlier["removed"], removed)[:STATUS_MAX_NAMES],
        "rewritten": _union(earlier["rewritten"], rewritten)[:STATUS_MAX_NAMES],
        "env": _union(earlier["env"], env)[:STATUS_MAX_NAMES],
    }
    if all_aliased := _union(earlier.get(ALIASED, []), aliased)[:STATUS_MAX_NAMES]:
        status[ALIASED] = all_aliased
    encoded = orjson.dumps(status).decode()
    if annotations_of(metadata).get(STATUS_KEY) == encoded:
        return None
    value: Any
    if not has_metadata:
        path, value = "/metadata", {"annotations": {STATUS_KEY: encoded}}
    elif metadata.get("annotations") is None:
        path, value = "/metadata/annotations", {STATUS_KEY: encoded}
    else:
        path, value = "/metadata/annotations/" + escape_pointer(STATUS_KEY), encoded
    return {"op": "add", "path": path, "value": value}


def annotations_of(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod's annotations, or none when they are not a mapping."""
    annotations = metadata.get("annotations")
    return annotations if isinstance(annotations, dict) else {}


def escape_pointer(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901): `~` and `/` are escaped."""
    return token.replace("~", "~0").replace("/", "~1")


def _union(earlier: list[str], now: Sequence[str]) -> list[str]:
    """``earlier`` then the names of ``now`` it lacks, without repeats; linear in both."""
    seen: set[str] = set()
    union = []
    for name in [*earlier, *now]:
        if name not in seen:
            seen.add(name)
            union.append(name)
    return union


__all__ = ["ALIASED", "STATUS_KEY", "STATUS_LISTS", "annotations_of", "escape_pointer",
           "read_status", "status_operation"]
