"""Unknown keys in a configuration document, found by walking the configuration schema.

Only keys are judged here (a typo gets the nearest valid name); values are checked where
settings are built, with messages of their own.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any


def unknown_key(document: Any, schema: Mapping[str, Any], path: str = "") -> str | None:
    """The first key of `document`, at any depth, that `schema` (a JSON Schema of objects with
    ``additionalProperties: false``) does not allow, as ``unknown key PATH (did you mean
    NEAREST?)``; None when every key is known. Only keys are judged here; values are checked
    where settings are built, with messages of their own."""
    if isinstance(document, list) and isinstance(schema.get("items"), Mapping):
        return _unknown_in_items(document, schema["items"], path)
    if not isinstance(document, Mapping):
        return None
    object_schema = _object_alternative(schema)
    if object_schema is None:
        return None
    return _unknown_in_object(document, object_schema, path)


def _unknown_in_items(items: list[Any], item_schema: Mapping[str, Any], path: str) -> str | None:
    for index, item in enumerate(items):
        if (problem := unknown_key(item, item_schema, f"{path}[{index}]")) is not None:
            return problem
    return None


def _unknown_in_object(document: Mapping[Any, Any], object_schema: Mapping[str, Any],
                       path: str) -> str | None:
    properties: Mapping[str, Any] = object_schema.get("properties") or {}
    patterns: Mapping[str, Any] = object_schema.get("patternProperties") or {}
    for key, value in document.items():
        where = f"{path}.{key}" if path else str(key)
        child = _schema_of_key(str(key), object_schema, properties, patterns)
        if child is None:
            return _unknown(where, str(key), properties, patterns)
        if (problem := unknown_key(value, child, where)) is not None:
            return problem
    return None


def _schema_of_key(key: str, object_schema: Mapping[str, Any], properties: Mapping[str, Any],
                   patterns: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema a key's value must follow: its property, else the first pattern it matches,
    else additionalProperties; None when the object allows no such key."""
    child = properties.get(key)
    if child is not None:
        return child  # type: ignore[no-any-return]
    for pattern, sub in patterns.items():
        if re.search(pattern, key):
            return sub  # type: ignore[no-any-return]
    additional = object_schema.get("additionalProperties", True)
    if additional is False:
        return None
    return additional if isinstance(additional, Mapping) else {}


def _object_alternative(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema itself if it describes an object, else its object branch of oneOf/anyOf."""
    if schema.get("type") == "object" or "properties" in schema or "patternProperties" in schema:
        return schema
    for keyword in ("oneOf", "anyOf"):
        for alternative in schema.get(keyword) or []:
            if isinstance(alternative, Mapping) and _object_alternative(alternative) is not None:
                return _object_alternative(alternative)
    return None


def _unknown(where: str, key: str, properties: Mapping[str, Any],
             patterns: Mapping[str, Any]) -> str:
    if patterns and not properties:
        rule = " or ".join(patterns)
        return f"{where}: {key!r} is not a valid name here (it must match {rule})"
    nearest = difflib.get_close_matches(key, list(properties), n=1, cutoff=0.6)
    if nearest:
        return f"unknown key {where} (did you mean {nearest[0]}?)"
    return f"unknown key {where} (valid here: {', '.join(sorted(properties))})"
