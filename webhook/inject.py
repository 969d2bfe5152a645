"""The offline twin: rendered manifests in, the same manifests with every pod mutated out.

Like ``istioctl kube-inject``: feed it ``helm template`` output and see (or apply) what the
webhook would do, without a cluster. Each pod spec is handed to the same rules the webhook
uses, wrapped as a pod, and the resulting patch is applied to it. Documents that hold no pod,
or whose pods need nothing, are written back byte for byte, comments included.

``inject_object`` does the same for one loaded object; the KRM function (``krm.py``) uses it
on each item of a ResourceList. Where a pod carried credential variables of its own that the
patch changed, the report says so: the chart's own credentials are then gone from it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import yaml

from webhook.rules.mutate import PodShapeError, Rules
from webhook.settings import ACCESS_KEY_ENV, SECRET_KEY_ENV, yaml_problem

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
_CREDENTIAL_NAMES = (ACCESS_KEY_ENV, SECRET_KEY_ENV)
_CONTAINER_LISTS = ("initContainers", "containers")


# libyaml's loader and dumper are about ten times faster than PyYAML's pure-Python ones on a
# big `helm template`; the pure ones are the fallback where PyYAML was built without libyaml.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # A script or a kustomize id spread over lines reads as it was written (`|`), not as one
    # quoted line with its breaks doubled; the emitter quotes what a block cannot hold.
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    """The safe dumper, multi-line strings in block style."""


_Dumper.add_representer(str, _represent_str)


class ManifestError(ValueError):
    """A document could not be read as YAML; ``line`` is 1-based, in the whole input."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line

    def located(self, name: str) -> str:
        """``name:line: message``, as compilers write it, so editors can jump there."""
        return f"{name}:{self.line}: {self}" if self.line is not None else f"{name}: {self}"


@dataclass(frozen=True, slots=True)
class Note:
    """One thing said of one pod holder ("Kind/name"): a change made, or a warning (a pod left
    unchanged, the chart's own credentials replaced). Names only, never values."""

    holder: str
    text: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.holder}: {self.text}"


@dataclass(slots=True)
class InjectReport:
    """What was changed, by pod holder: names only; the diff when one was asked for."""

    mutated: list[str] = field(default_factory=list)  # "Kind/name" of each changed pod holder
    notes: list[Note] = field(default_factory=list)
    # "Kind/name" of each holder whose own credential variables the patch replaced.
    replaced_credentials: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Every note as the line the CLI writes to stderr."""
        return [str(note) for note in self.notes]

    @property
    def diff(self) -> str:
        return "".join(self.diffs)


def inject_manifests(
    text: str, rules: Rules, *, diff_name: str | None = None
) -> tuple[str, InjectReport]:
    """Mutate every pod and pod template in a multi-document YAML stream.

    With ``diff_name`` the report also holds a unified diff of the changed documents only
    (see ``inject_object``).
    """
    report = InjectReport()
    out = []
    for number, (first_line, document) in enumerate(_split_documents(text), start=1):
        loaded = load_document(document, number=number, first_line=first_line)
        if not isinstance(loaded, dict) or not inject_object(loaded, rules, report,
                                                             diff_name=diff_name):
            out.append(document)
            continue
        out.append(_leading_comments(document) + dump_document(loaded))
    return "---\n".join(out) if len(out) > 1 else "".join(out), report


def inject_object(
    obj: dict[str, Any], rules: Rules, report: InjectReport, *, diff_name: str | None = None
) -> bool:
    """Mutate every pod in one loaded object, in place; True when anything changed.

    With ``diff_name`` a unified diff of the object is added to the report when it changed,
    each side written by the same dumper: the diff then shows what the webhook changed and not
    how the dumper's quoting, indentation or flow style differs from the input's.
    """
    before = dump_document(obj) if diff_name is not None else ""
    if not _mutate_object(obj, rules, report):
        return False
    if diff_name is not None:
        label = f"{diff_name}: {holder_label(obj)}"
        report.diffs.append(_unified(before, dump_document(obj), f"{label} (as given)",
                                     f"{label} (injected)"))
    return True


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


def load_document(document: str, *, number: int = 1, first_line: int = 1) -> Any:
    """One YAML document, loaded safely; ``ManifestError`` names the line in the whole input
    (``first_line`` is where the document starts in it, ``number`` its place)."""
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


def dump_document(loaded: Any) -> str:
    """One document as YAML, keys in their order."""
    return yaml.dump(loaded, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _mutate_object(obj: dict[str, Any], rules: Rules, report: InjectReport) -> bool:
    changed = False
    for holder, pod_like, write_back in _pods_in(obj):
        namespace = _namespace_of(obj)
        if namespace in rules.settings.excluded_namespaces:
            continue
        try:
            mutation = rules.mutate_pod(pod_like, namespace=namespace or None)
        except PodShapeError as error:
            report.notes.append(Note(holder, f"left unchanged: {error}", warning=True))
            continue
        if not mutation.changed:
            continue
        patched = jsonpatch.apply_patch(pod_like, mutation.operations)
        replaced = _replaced_credentials(pod_like, patched)
        write_back(patched)
        report.mutated.append(holder)
        report.notes.extend(Note(holder, line) for line in mutation.describe())
        if replaced:
            report.replaced_credentials.append(holder)
            report.notes.append(Note(holder, replaced, warning=True))
        changed = True
    return changed


def _replaced_credentials(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The note `replaced the chart's own NAMES in CONTAINERS` when containers that carried
    credential variables before the patch carry other entries for them after it; else None.

    Read from the pod itself, before and after, rather than from the rules' account, which
    says what was set but not whether the pod had a value of its own.
    """
    names: dict[str, None] = {}
    containers: dict[str, None] = {}
    for listed in _CONTAINER_LISTS:
        after_env = dict(_envs(after, listed))
        for container_name, env in _envs(before, listed):
            kept = after_env.get(container_name)
            if kept is None:
                continue  # the container went (a waiter): nothing of it was replaced
            for name in _CREDENTIAL_NAMES:
                if name in env and env[name] != kept.get(name):
                    names[name] = None
                    containers[container_name] = None
    if not names:
        return None
    return f"replaced the chart's own {', '.join(names)} in {', '.join(containers)}"


def _envs(pod: dict[str, Any], listed: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(container name, its env as name -> entry) for each container of a list; of duplicate
    names the last entry, the one Kubernetes uses."""
    spec = pod.get("spec")
    containers = spec.get(listed) if isinstance(spec, dict) else None
    for container in containers if isinstance(containers, list) else ():
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            continue
        env = container.get("env")
        entries: dict[str, dict[str, Any]] = {}
        for entry in env if isinstance(env, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                entries[entry["name"]] = entry
        yield container["name"], entries


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
    label = holder_label(obj)
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


def holder_label(obj: Mapping[str, Any]) -> str:
    """``Kind/name``, as notes and diffs name an object (``?`` for a missing name)."""
    return f"{obj.get('kind')}/{_name_of(obj)}"


def _name_of(obj: Mapping[str, Any]) -> str:
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
