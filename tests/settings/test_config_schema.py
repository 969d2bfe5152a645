"""The configuration model (webhook/settings/schema.py) and config.py cannot drift apart.

The embedded default and the documented examples validate against the model; every key and
enum value the model declares is accepted by config.py; the enums are the same on both
sides; the model's defaults are config.py's defaults; and the model is strict at every depth.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from webhook.settings import Action, CredentialMode, Credentials, default_document, load_settings
from webhook.settings import schema as config_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA = config_schema.config_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

Path_ = tuple[str, ...]


def errors(document: Any) -> list[str]:
    return [f"{list(error.absolute_path)}: {error.message}"
            for error in VALIDATOR.iter_errors(document)]


def object_schemas(schema: dict[str, Any], path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every subschema that describes an object, with where it sits."""
    if schema.get("type") == "object":
        yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from object_schemas(sub, (*path, key))
    for pattern, sub in schema.get("patternProperties", {}).items():
        yield from object_schemas(sub, (*path, f"<{pattern}>"))
    for sub in schema.get("oneOf", []):
        yield from object_schemas(sub, path)


def example_key(mapping_schema: dict[str, Any]) -> str:
    """A key for a user-keyed mapping: the first one of its documented example."""
    return next(iter(mapping_schema["examples"][0]))


def sample_values(schema: dict[str, Any]) -> list[Any]:
    """Values the schema declares as valid: its enum, default, examples, each alternative."""
    if "enum" in schema:
        return list(schema["enum"])
    if "oneOf" in schema:
        return [value for sub in schema["oneOf"] for value in sample_values(sub)]
    if schema.get("type") == "null":
        return [None]
    values = [schema["default"]] if "default" in schema else []
    values += schema.get("examples", [])
    if not values and schema.get("type") == "object":
        values = [{key: sample_values(schema["properties"][key])[0]
                   for key in schema.get("required", [])}]
    return values


def declared_leaves(schema: dict[str, Any], path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """(path, value) for every key the model declares and every value it names for it."""
    children = dict(schema.get("properties", {}))
    for sub in schema.get("patternProperties", {}).values():
        children[example_key(schema)] = sub
    for sub in schema.get("oneOf", []):
        if sub.get("type") == "object":
            yield from declared_leaves(sub, path)
    for key, sub in children.items():
        for value in sample_values(sub):
            yield (*path, key), value
        if sub.get("type") == "object" or "oneOf" in sub:
            yield from declared_leaves(sub, (*path, key))


def child_schema(schema: dict[str, Any], key: str) -> dict[str, Any]:
    for alternative in [schema, *schema.get("oneOf", [])]:
        if key in alternative.get("properties", {}):
            return alternative["properties"][key]  # type: ignore[no-any-return]
        patterned = alternative.get("patternProperties", {})
        for pattern, sub in patterned.items():
            if re.match(pattern, key):
                return sub  # type: ignore[no-any-return]
    raise KeyError(key)


def with_value(document: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    """`document` with `value` at `path`; a missing parent is filled with a valid sample."""
    changed = copy.deepcopy(document)
    target, schema = changed, SCHEMA
    for key in path[:-1]:
        schema = child_schema(schema, key)
        if not isinstance(target.get(key), dict):
            target[key] = next(v for v in sample_values(schema) if isinstance(v, dict))
        target = target[key]
    target[path[-1]] = value
    return changed


def load_document(tmp_path: Path, document: dict[str, Any]) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_settings(config_file=path, environ={})


def test_the_model_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_callers_get_their_own_copy() -> None:
    mine = config_schema.config_schema()
    mine["properties"]["action"]["enum"].append("delete")
    assert config_schema.config_schema() == SCHEMA


def test_the_embedded_default_validates() -> None:
    assert errors(default_document()) == []


def test_the_readme_configuration_example_validates() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    assert errors(yaml.safe_load(block[1])) == []


def test_the_kustomize_configmap_validates() -> None:
    configmap = yaml.safe_load((REPO / "manifests/base/configmap.yaml").read_text())
    assert errors(yaml.safe_load(configmap["data"]["config.yaml"])) == []


def test_every_object_refuses_unknown_keys_and_every_property_is_described() -> None:
    found = list(object_schemas(SCHEMA))
    assert len(found) >= 5  # top level, services, a service, external, env, credentials
    for path, schema in found:
        assert schema.get("additionalProperties") is False, path
        assert schema.get("description"), path
        for key, sub in schema.get("properties", {}).items():
            assert sub.get("description"), (*path, key)


@pytest.mark.parametrize(
    "path",
    [(), ("services", "mlflow"), ("services", "mlflow", "external"), ("credentials",)],
    ids=lambda path: ".".join(path) or "top",
)
def test_an_unknown_key_is_refused_at_each_depth(path: Path_) -> None:
    document = with_value(default_document(), (*path, "colour"), "blue")
    assert errors(document), path


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("action",), "delete"),
        (("services", "mlflow", "external", "port"), 0),
        (("services", "mlflow", "external"), {"host": "example.com"}),
        (("services", "Bad_Name"), {"hosts": ["x"]}),
        (("env", "AWS_SECRET_ACCESS_KEY"), "x"),
        (("env", "1BAD"), "x"),
        (("credentials", "mode"), "plain"),
        (("waiter_names",), "wait-for-mlflow"),
    ],
)
def test_wrong_values_are_refused(path: Path_, value: Any) -> None:
    assert errors(with_value(default_document(), path, value))


LEAVES = list(declared_leaves(SCHEMA))


def test_every_key_the_model_declares_is_exercised() -> None:
    paths = {path for path, _ in LEAVES}
    top = set(SCHEMA["properties"])
    assert {path[0] for path in paths} == top
    assert ("credentials", "secret_access_key_key") in paths
    assert ("services", "redis", "external", "port") in paths


@pytest.mark.parametrize(
    ("path", "value"), LEAVES, ids=[f"{'.'.join(path)}={value!r}"[:60] for path, value in LEAVES]
)
def test_config_py_accepts_every_declared_key_and_value(
    tmp_path: Path, path: Path_, value: Any
) -> None:
    document = with_value(default_document(), path, value)
    assert errors(document) == []
    load_document(tmp_path, document)


def test_enums_are_the_same_on_both_sides() -> None:
    properties = SCHEMA["properties"]
    assert properties["action"]["enum"] == [member.value for member in Action]
    assert properties["credentials"]["properties"]["mode"]["enum"] == [
        member.value for member in CredentialMode
    ]


def test_declared_defaults_are_config_py_defaults() -> None:
    document = default_document()
    properties = SCHEMA["properties"]
    for key in ("action", "waiter_names", "excluded_namespaces"):
        assert properties[key]["default"] == document[key], key
    credentials = properties["credentials"]["properties"]
    built = Credentials(access_key_id="a", secret_access_key="b")
    assert credentials["mode"]["default"] == document["credentials"]["mode"] == built.mode
    assert credentials["secret_name"]["default"] == built.secret_name
    assert credentials["access_key_id_key"]["default"] == built.access_key_id_key
    assert credentials["secret_access_key_key"]["default"] == built.secret_access_key_key
