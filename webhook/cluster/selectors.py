"""Kubernetes label selectors (``matchLabels``, ``matchExpressions``), as the apiserver reads
them: `doctor` asks whether the webhook's namespaceSelector sends a namespace's pods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against `labels`."""
    return (all(labels.get(key) == value
                for key, value in (selector.get("matchLabels") or {}).items())
            and all(expression_holds(expression, labels)
                    for expression in selector.get("matchExpressions") or []))


def expression_holds(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One of ``matchExpressions``; an operator this does not know excludes nothing."""
    key = expression.get("key")
    present = isinstance(key, str) and key in labels
    listed = present and labels.get(str(key)) in (expression.get("values") or [])
    holds = {"In": listed, "NotIn": not listed, "Exists": present, "DoesNotExist": not present}
    return holds.get(str(expression.get("operator")), True)
