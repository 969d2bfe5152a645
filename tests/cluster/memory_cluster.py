"""An in-memory cluster for the cluster wing's tests: objects by API path, as the client's
generic calls see them."""

from __future__ import annotations

import copy
import urllib.parse
from typing import Any

from webhook.cluster.client import Created


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
