"""``inject`` as a KRM function: a ResourceList in, the same ResourceList out, its items'
pods mutated as the webhook would.

kustomize and kpt run a function with one ``ResourceList`` (``config.kubernetes.io/v1``) on
stdin and read one back on stdout. Every field of the list and of its items is kept as it
came, annotations included: the orchestrators track each item by theirs
(``config.kubernetes.io/*``, ``internal.config.kubernetes.io/*``,
``kustomize.config.k8s.io/id``), and the rules only ever add to a pod's. What was done goes
into ``results``, one KRM result per note, naming the item and, when its annotations say, its
file; an earlier function's results stay ahead of ours.

The configuration comes from ``functionConfig``: a ConfigMap's ``data`` (the chart's
``config.yaml`` key holding the whole document, or one key per top-level key, each value read
as YAML), or any other object's ``spec`` or ``data``. It is merged over the embedded default
exactly as a ``--config`` file is, by handing it to the settings as one.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from webhook.inject import (
    InjectReport,
    ManifestError,
    dump_document,
    holder_label,
    inject_object,
    load_document,
)
from webhook.rules.mutate import Rules
from webhook.settings import ConfigError, Settings, load_settings

API_VERSION = "config.kubernetes.io/v1"
KIND = "ResourceList"
# The key of the chart's ConfigMap, so that the same object can serve as the functionConfig.
CONFIG_MAP_KEY = "config.yaml"
# Where kustomize and kpt say an item came from.
PATH_ANNOTATIONS = ("config.kubernetes.io/path", "internal.config.kubernetes.io/path")
INDEX_ANNOTATIONS = ("config.kubernetes.io/index", "internal.config.kubernetes.io/index")

# A top-level `kind: ResourceList`, in block or flow (JSON) style. Only text that has one is
# parsed here: everything else is manifests, parsed once, by inject_manifests.
_RESOURCE_LIST_KIND = re.compile(
    r"^kind:[ \t]*[\"']?ResourceList[\"']?[ \t]*$" + r'|"kind"\s*:\s*"ResourceList"',
    re.MULTILINE,
)
_FUNCTION_CONFIG = "functionConfig"


def read_resource_list(text: str) -> dict[str, Any] | None:
    """The ResourceList ``text`` holds, or None when it holds manifests.

    A ResourceList of another version is refused (``ManifestError``) rather than taken for a
    manifest: passed through unchanged, it would look like a function that did its work.
    """
    if not _RESOURCE_LIST_KIND.search(text):
        return None
    try:
        loaded = load_document(text)
    except ManifestError:
        return None  # several documents, or broken ones: inject_manifests reports them
    if not isinstance(loaded, dict) or loaded.get("kind") != KIND:
        return None
    if loaded.get("apiVersion") != API_VERSION:
        raise ManifestError(
            f"a ResourceList of apiVersion {loaded.get('apiVersion')!r} is not read; "
            f"send apiVersion {API_VERSION}"
        )
    items = loaded.get("items")
    if items is not None and not isinstance(items, list):
        raise ManifestError("the ResourceList's items are not a list")
    return loaded


def configuration_of(resource_list: Mapping[str, Any]) -> dict[str, Any] | None:
    """The configuration document the list's ``functionConfig`` holds; None when it holds
    none (absent, or an object without ``spec`` or ``data``), so the defaults apply."""
    config = resource_list.get(_FUNCTION_CONFIG)
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ConfigError(f"{_FUNCTION_CONFIG} is not an object")
    where = f"{_FUNCTION_CONFIG} {holder_label(config)}"
    if config.get("kind") == "ConfigMap":
        return _config_map_document(config.get("data"), where)
    for field in ("spec", "data"):
        if field in config:
            document = config[field]
            if document is not None and not isinstance(document, dict):
                raise ConfigError(f"{where}: {field} is not a mapping of configuration keys")
            return document
    return None


def load_function_settings(
    configuration: Mapping[str, Any] | None,
    *,
    config_file: Path | None,
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings with ``configuration`` in the place of a ``--config`` file.

    The settings read a configuration from a file only, so the document is written to a
    private temporary one; its path, in any message, is replaced by ``functionConfig``.
    """
    if configuration is None:
        return load_settings(config_file=config_file, overrides=overrides, environ=environ)
    if config_file is not None:
        raise ConfigError(f"--config and the {_FUNCTION_CONFIG} both give a configuration; "
                          "give one of them")
    with tempfile.TemporaryDirectory(prefix="backend-injector-") as directory:
        path = Path(directory) / "functionConfig.yaml"
        path.write_text(dump_document(configuration), encoding="utf-8")
        try:
            return load_settings(config_file=path, overrides=overrides, environ=environ)
        except ConfigError as error:
            raise ConfigError(str(error).replace(str(path), _FUNCTION_CONFIG)) from None


def answer(
    resource_list: dict[str, Any], rules: Rules, *, diff_name: str | None = None
) -> InjectReport:
    """Mutate the pods of every item, in place, and add a result for each note."""
    report = InjectReport()
    for item in resource_list.get("items") or ():
        if not isinstance(item, dict):
            continue
        first = len(report.notes)
        inject_object(item, rules, report, diff_name=diff_name)
        label = holder_label(item)
        for note in report.notes[first:]:
            add_result(resource_list, note.text if note.holder == label else str(note),
                       "warning" if note.warning else "info", item=item)
    return report


def add_result(
    resource_list: dict[str, Any], message: str, severity: str,
    *, item: Mapping[str, Any] | None = None,
) -> None:
    """Append a KRM result (severity ``error``, ``warning`` or ``info``), naming ``item``."""
    result: dict[str, Any] = {"message": message, "severity": severity}
    if item is not None:
        result["resourceRef"] = _reference(item)
        if (file := _file(item)) is not None:
            result["file"] = file
    results = resource_list.get("results")
    if not isinstance(results, list):
        results = resource_list["results"] = []
    results.append(result)


def add_configuration_error(resource_list: dict[str, Any], error: ConfigError) -> None:
    """An error result for a configuration that cannot be used, naming the functionConfig."""
    config = resource_list.get(_FUNCTION_CONFIG)
    add_result(resource_list, str(error), "error",
               item=config if isinstance(config, dict) and config.get("kind") else None)


def render(resource_list: Mapping[str, Any]) -> str:
    return dump_document(resource_list)


def _config_map_document(data: Any, where: str) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: data is not a mapping")
    if CONFIG_MAP_KEY in data:
        others = sorted(str(key) for key in data if key != CONFIG_MAP_KEY)
        if others:
            raise ConfigError(f"{where}: data holds {CONFIG_MAP_KEY} and {', '.join(others)}; "
                              f"put the whole configuration in {CONFIG_MAP_KEY} or none of it")
        document = _value(data[CONFIG_MAP_KEY], f"{where}: data.{CONFIG_MAP_KEY}")
        if document is not None and not isinstance(document, dict):
            raise ConfigError(f"{where}: data.{CONFIG_MAP_KEY} does not hold a mapping")
        return document
    # One key per top-level key: ConfigMap values are strings, so each is read as YAML
    # (`action: rewrite`, `waiter_names: "[wait-for-db]"`, a block of `services`).
    return {str(key): _value(value, f"{where}: data.{key}") for key, value in data.items()}


def _value(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or error
        raise ConfigError(f"{where} is not valid YAML: {problem}") from None


def _reference(item: Mapping[str, Any]) -> dict[str, str]:
    metadata = item.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    fields = {"apiVersion": item.get("apiVersion"), "kind": item.get("kind"),
              "name": metadata.get("name"), "namespace": metadata.get("namespace")}
    return {key: str(value) for key, value in fields.items() if value}


def _file(item: Mapping[str, Any]) -> dict[str, Any] | None:
    metadata = item.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return None
    path = next((annotations[key] for key in PATH_ANNOTATIONS if annotations.get(key)), None)
    if path is None:
        return None
    file: dict[str, Any] = {"path": str(path)}
    index = next((annotations[key] for key in INDEX_ANNOTATIONS if annotations.get(key)), None)
    if index is not None and str(index).isdigit():
        file["index"] = int(index)
    return file
