"""An in-memory cluster for the cluster wing's tests: objects by API path, as the client's
generic calls see them."""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Callable
from typing import Any

import jsonpatch

from webhook.cluster.client import Created, JsonObject, PatchOperation
from webhook.rules.mutate import STATUS_KEY


class MemoryCluster:
    """Objects by API path, as the adapter's generic calls see them."""

    server = "https://memory.invalid"
    context = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self._version = 0

    def version(self) -> dict[str, Any]:
        return {"gitVersion": "v1.37.2"}

    def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(f"GET {path}")
        collection, _, query = path.partition("?")
        if query and path not in self.objects:  # a test may store a list answer itself
            return self._list(collection, urllib.parse.parse_qs(query))
        found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
        self.calls.append(f"POST {path}")
        named = f"{path}/{body['metadata']['name']}"
        assert named not in self.objects
        self._store(named, body)
        return Created(object=copy.deepcopy(body))

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"PUT {path}")
        current = self.objects[path]
        assert body["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        return self._store(path, body)

    def delete(self, path: str) -> bool:
        self.calls.append(f"DELETE {path}")
        return self.objects.pop(path, None) is not None

    def _list(self, collection: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """The objects right under `collection` whose labels hold every ``k=v`` of the
        ``labelSelector`` (the only selector form the code under test sends)."""
        wanted = dict(term.split("=", 1) for selector in query.get("labelSelector", [])
                      for term in selector.split(","))
        items = []
        for path, body in sorted(self.objects.items()):
            if path.rpartition("/")[0] != collection:
                continue
            labels = body.get("metadata", {}).get("labels") or {}
            if all(labels.get(key) == value for key, value in wanted.items()):
                items.append(copy.deepcopy(body))
        return {"kind": "List", "items": items}

    def _store(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.objects[path] = stored
        return copy.deepcopy(stored)


def webhook_admits(body: JsonObject) -> Created:
    """A dry-run pod as a ready webhook returns it: with its status annotation."""
    admitted = copy.deepcopy(body)
    admitted.setdefault("metadata", {}).setdefault("annotations", {})[STATUS_KEY] = "{}"
    return Created(object=admitted, warnings=["removed init containers wait-for-mlflow"])


class WorkloadCluster(MemoryCluster):
    """MemoryCluster with what restarting workloads needs: collections listed without a
    selector, JSON Patch, deletions with options in the query (recorded in `deleted`), and
    dry-run creates answered by `dry_run_answer` (a ready webhook's, by default)."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []
        self.dry_run_answer: Callable[[JsonObject], Created] = webhook_admits

    def get(self, path: str) -> dict[str, Any] | None:
        if "?" not in path and path not in self.objects and any(
                stored.rpartition("/")[0] == path for stored in self.objects):
            self.calls.append(f"GET {path}")
            return self._list(path, {})
        return super().get(path)

    def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
        if dry_run:
            self.calls.append(f"POST {path}?dryRun=All")
            return self.dry_run_answer(body)
        return super().create(path, body)

    def patch(self, path: str, operations: list[PatchOperation]) -> JsonObject:
        self.calls.append(f"PATCH {path}")
        patched = jsonpatch.apply_patch(self.objects[path], operations)
        return self._store(path, patched)

    def delete(self, path: str) -> bool:
        self.deleted.append(path)
        return super().delete(path.partition("?")[0])
