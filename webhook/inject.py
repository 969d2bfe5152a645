"""The offline twin: rendered manifests in, the same manifests with every pod mutated out.

Like ``istioctl kube-inject``: feed it ``helm template`` output and see (or apply) what the
webhook would do, without a cluster. Each pod spec is handed to the same rules the webhook
uses, wrapped as a pod, and the resulting patch is applied to it. Documents that hold no pod,
or whose pods need nothing, are written back byte for byte, comments included.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import yaml

from webhook.rules.mutate import PodShapeError, Rules
from webhook.settings import yaml_problem

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


# libyaml's loader and dumper are about ten times faster than PyYAML's pure-Python ones on a
# big `helm template`; the pure ones are the fallback where PyYAML was built without libyaml.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class ManifestError(ValueError):
    """A document could not be read as YAML; ``line`` is 1-based, in the whole input."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line

    def located(self, name: str) -> str:
        """``name:line: message``, as compilers write it, so editors can jump there."""
        return f"{name}:{self.line}: {self}" if self.line is not None else f"{name}: {self}"


@dataclass(slots=True)
class InjectReport:
    """What was changed, by document: names only; ``diff`` when one was asked for."""

    mutated: list[str] = field(default_factory=list)  # "Kind/name" of each changed pod holder
    warnings: list[str] = field(default_factory=list)
    diff: str = ""


def inject_manifests(
    text: str, rules: Rules, *, diff_name: str | None = None
) -> tuple[str, InjectReport]:
    """Mutate every pod and pod template in a multi-document YAML stream.

    With ``diff_name`` the report also holds a unified diff of the changed documents only,
    each side written by the same dumper: the diff then shows what the webhook changed and
    not how the dumper's quoting, indentation or flow style differs from the input's.
    """
    report = InjectReport()
    out = []
    diffs = []
    for number, (first_line, document) in enumerate(_split_documents(text), start=1):
        loaded = _load(document, number=number, first_line=first_line)
        before = _dump(loaded) if diff_name is not None and isinstance(loaded, dict) else ""
        if not isinstance(loaded, dict) or not _mutate_object(loaded, rules, report):
            out.append(document)
            continue
        after = _dump(loaded)
        out.append(_leading_comments(document) + after)
        if diff_name is not None:
            label = f"{diff_name}: {loaded.get('kind')}/{_name_of(loaded)}"
            diffs.append(_unified(before, after, f"{label} (as given)", f"{label} (injected)"))
    report.diff = "".join(diffs)
    return "---\n".join(out) if len(out) > 1 else "".join(out), report


def unified_diff(before: str, after: str, name: str) -> str:
    """A plain text diff of two renderings (the CLI's ``--diff`` uses the normalised one)."""
    return _unified(before, after, f"{name} (as given)", f"{name} (injected)")


def _unified(before: str, after: str, from_label: str, to_label: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=from_label,
            tofile=to_label,
        )
    )


def _load(document: str, *, number: int, first_line: int) -> Any:
    try:
        return yaml.load(document, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as error:
        mark, problem = yaml_problem(error)
        line = first_line + mark.line if mark is not None else None
        raise ManifestError(f"document {number} is not valid YAML: {problem}",
                            line=line) from error
    except yaml.YAMLError as error:
        raise ManifestError(f"document {number} is not valid YAML: {error}",
                            line=first_line) from error


def _dump(loaded: Any) -> str:
    return yaml.dump(loaded, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


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
    """Each pod in ``obj`` as (label, pod-shaped view, function that writes a result back).

    The view shares its dicts with ``obj``: the rules only read it, and the patch is applied
    to a copy (``jsonpatch`` copies), so one copy is made per changed pod and none otherwise.
    """
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

        yield label, obj, write_pod
        return
    path = TEMPLATE_PATHS.get(str(kind))
    template = _follow(obj, path) if path else None
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return
    pod_like = {"metadata": template.get("metadata") or {}, "spec": template["spec"]}

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


def _split_documents(text: str) -> list[tuple[int, str]]:
    """The documents of a YAML stream as (1-based line of their first line, text), without
    their `---` lines, so that an error inside one can be reported at its line in the file."""
    documents: list[tuple[int, str]] = []
    start, line = 0, 1
    for match in _DOCUMENT_START.finditer(text):
        documents.append((line, text[start:match.start()]))
        line += text.count("\n", start, match.end()) + 1
        start = match.end() + 1
    documents.append((line, text[start:]))
    cleaned = []
    for index, (first_line, piece) in enumerate(documents):
        if index:
            stripped = piece.lstrip("\n")
            first_line += len(piece) - len(stripped)
            piece = stripped
        cleaned.append((first_line, piece))
    if cleaned and not cleaned[0][1].strip() and len(cleaned) > 1:
        cleaned = cleaned[1:]
    return [(first_line, doc if doc.endswith("\n") or not doc else doc + "\n")
            for first_line, doc in cleaned]


def _leading_comments(document: str) -> str:
    """The comment lines before a document's content (`# Source: chart/templates/x.yaml`)."""
    lines = []
    for line in document.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    return "".join(lines)
