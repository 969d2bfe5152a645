"""The offline twin: rendered manifests in, the same manifests with every pod mutated out.

Like ``istioctl kube-inject``: feed it ``helm template`` output and see (or apply) what the
webhook would do, without a cluster. Each pod spec is handed to the same rules the webhook
uses, wrapped as a pod, and the resulting patch is applied to it. Documents that hold no pod,
or whose pods need nothing, are written back byte for byte, comments included.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import yaml

from webhook.mutate import PodShapeError, Rules

# Where each workload kind keeps its pod template.
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_DOCUMENT_START = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)


class ManifestError(ValueError):
    """A document could not be read as YAML."""


@dataclass(slots=True)
class InjectReport:
    """What was changed, by document: names only."""

    mutated: list[str] = field(default_factory=list)  # "Kind/name" of each changed pod holder
    warnings: list[str] = field(default_factory=list)


def inject_manifests(text: str, rules: Rules) -> tuple[str, InjectReport]:
    """Mutate every pod and pod template in a multi-document YAML stream."""
    report = InjectReport()
    documents = _split_documents(text)
    out = []
    for index, document in enumerate(documents):
        try:
            loaded = yaml.safe_load(document)
        except yaml.YAMLError as error:
            raise ManifestError(f"document {index + 1} is not valid YAML: {error}") from error
        if not isinstance(loaded, dict) or not _mutate_object(loaded, rules, report):
            out.append(document)
            continue
        out.append(_leading_comments(document) + yaml.safe_dump(loaded, sort_keys=False))
    return "---\n".join(out) if len(out) > 1 else "".join(out), report


def unified_diff(before: str, after: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{name} (as given)",
            tofile=f"{name} (injected)",
        )
    )


def _mutate_object(obj: dict[str, Any], rules: Rules, report: InjectReport) -> bool:
    changed = False
    for holder, pod_like, write_back in _pods_in(obj):
        namespace = _namespace_of(obj)
        if namespace in rules.settings.excluded_namespaces:
            continue
        try:
            mutation = rules.mutate_pod(pod_like)
        except PodShapeError as error:
            report.warnings.append(f"{holder}: left unchanged: {error}")
            continue
        if not mutation.changed:
            continue
        patched = jsonpatch.apply_patch(pod_like, mutation.operations)
        write_back(patched)
        report.mutated.append(holder)
        report.warnings.extend(f"{holder}: {line}" for line in mutation.describe())
        changed = True
    return changed


PodSite = tuple[str, dict[str, Any], Callable[[dict[str, Any]], None]]


def _pods_in(obj: dict[str, Any]) -> Iterator[PodSite]:
    """Each pod in ``obj`` as (label, pod-shaped copy, function that writes a result back)."""
    kind = obj.get("kind")
    if kind == "List" and isinstance(obj.get("items"), list):
        for item in obj["items"]:
            if isinstance(item, dict):
                yield from _pods_in(item)
        return
    label = f"{kind}/{_name_of(obj)}"
    if kind == "Pod":

        def write_pod(patched: dict[str, Any]) -> None:
            obj.clear()
            obj.update(patched)

        yield label, copy.deepcopy(obj), write_pod
        return
    path = TEMPLATE_PATHS.get(str(kind))
    template = _follow(obj, path) if path else None
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return
    pod_like = {"metadata": copy.deepcopy(template.get("metadata") or {}),
                "spec": copy.deepcopy(template["spec"])}

    def write_template(patched: dict[str, Any]) -> None:
        template["metadata"] = patched["metadata"]
        template["spec"] = patched["spec"]

    yield label, pod_like, write_template


def _follow(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, MutableMapping):
            return None
        node = node.get(key)
    return node


def _name_of(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return str(name) if name else "?"


def _namespace_of(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return str(namespace) if namespace else ""


def _split_documents(text: str) -> list[str]:
    """The documents of a YAML stream as text, without their `---` lines."""
    pieces = _DOCUMENT_START.split(text)
    documents = [piece.lstrip("\n") if i else piece for i, piece in enumerate(pieces)]
    if documents and not documents[0].strip() and len(documents) > 1:
        documents = documents[1:]
    return [doc if doc.endswith("\n") or not doc else doc + "\n" for doc in documents]


def _leading_comments(document: str) -> str:
    """The comment lines before a document's content (`# Source: chart/templates/x.yaml`)."""
    lines = []
    for line in document.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    return "".join(lines)
