"""inject as a KRM function: a ResourceList in, the same ResourceList out with its pods mutated,
the configuration from its functionConfig, what was done in its results."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_process import run_cli
from tests.conftest import make_settings
from webhook import krm
from webhook.inject import InjectReport, ManifestError, inject_object
from webhook.rules.mutate import Rules
from webhook.settings import ConfigError, Settings

# What kustomize puts on every item it hands a function: where the item came from and its id.
ORCHESTRATOR_ANNOTATIONS = {
    "config.kubernetes.io/index": "1",
    "config.kubernetes.io/path": "apps/train.yaml",
    "internal.config.kubernetes.io/index": "1",
    "internal.config.kubernetes.io/path": "apps/train.yaml",
    "internal.config.kubernetes.io/annotations-migration-resource-id": "0",
    "kustomize.config.k8s.io/id": "group: apps\nkind: Deployment\nname: train\nversion: v1\n",
}


def waiter(name: str, host: str, port: int) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.35",
            "command": ["sh", "-c", f"until nc -z {host} {port}; do sleep 2; done"]}


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "train", "namespace": "flts",
                     "annotations": dict(ORCHESTRATOR_ANNOTATIONS)},
        "spec": {"template": {
            "metadata": {"labels": {"app": "train"}},
            "spec": {
                "initContainers": [waiter("wait-for-mlflow", "mlflow", 5000),
                                   waiter("wait-for-kafka", "kafka", 9092)],
                "containers": [{"name": "train", "image": "flts/train", "env": [
                    {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}]}],
            },
        }},
    }


def service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "train", "annotations": {"config.kubernetes.io/index": "0",
                                                          "config.kubernetes.io/path": "svc.yaml"}},
            "spec": {"ports": [{"port": 80}]}}


def resource_list(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"apiVersion": krm.API_VERSION, "kind": krm.KIND, "items": list(items), **fields}


def config_map(data: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "injector", "annotations": {
                "config.kubernetes.io/function": "exec:\n  path: ./inject\n"}},
            "data": data}


def settings_of(listed: dict[str, Any]) -> Settings:
    return krm.load_function_settings(krm.configuration_of(listed), config_file=None,
                                      overrides={}, environ={})


def init_names(item: dict[str, Any]) -> list[str]:
    return [c["name"] for c in item["spec"]["template"]["spec"].get("initContainers", [])]


def run_function(listed: dict[str, Any], *args: str) -> Any:
    """The command's run, and the ResourceList it answered (None for another answer)."""
    result = run_cli("inject", *args, stdin=yaml.safe_dump(listed))
    answered = yaml.safe_load(result.stdout) if result.stdout.startswith("apiVersion") else None
    return result, answered


# --- recognising a ResourceList -------------------------------------------------------------


def test_a_resource_list_is_recognised_in_block_and_json_form() -> None:
    listed = resource_list(service())
    assert krm.read_resource_list(yaml.safe_dump(listed)) == listed
    assert krm.read_resource_list(json.dumps(listed)) == listed


def test_manifests_that_only_mention_a_resource_list_are_manifests() -> None:
    manifests = yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "notes"},
         "data": {"text": "kind: ResourceList"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
    ])
    assert "kind: ResourceList" in manifests
    assert krm.read_resource_list(manifests) is None


def test_a_resource_list_of_another_version_is_refused() -> None:
    listed = resource_list(service(), apiVersion="config.kubernetes.io/v1alpha1")
    with pytest.raises(ManifestError, match="v1alpha1.*config.kubernetes.io/v1"):
        krm.read_resource_list(yaml.safe_dump(listed))


def test_items_that_are_not_a_list_are_refused() -> None:
    with pytest.raises(ManifestError, match="items are not a list"):
        krm.read_resource_list(yaml.safe_dump(resource_list() | {"items": {"a": 1}}))


# --- the answer -----------------------------------------------------------------------------


def test_items_are_mutated_as_inject_does_and_everything_else_is_kept() -> None:
    earlier = {"message": "from the function before", "severity": "info"}
    listed = resource_list(service(), deployment(), functionConfig=config_map({}),
                           results=[earlier], extra={"kept": True})
    given = copy.deepcopy(listed)
    rules = Rules(make_settings())
    krm.answer(listed, rules)

    expected = deployment()
    assert inject_object(expected, rules, InjectReport())
    assert listed["items"] == [service(), expected]
    assert init_names(listed["items"][1]) == ["wait-for-kafka"]
    assert listed["items"][1]["metadata"] == given["items"][1]["metadata"]
    assert {key: value for key, value in listed.items() if key not in ("items", "results")} == {
        key: value for key, value in given.items() if key not in ("items", "results")}
    assert listed["results"][0] == earlier


def test_each_note_is_a_result_naming_the_item_and_its_file() -> None:
    listed = resource_list(service(), deployment())
    report = krm.answer(listed, Rules(make_settings()))
    results = listed["results"]
    assert [result["message"] for result in results] == [note.text for note in report.notes]
    assert results[0]["message"] == "removed init containers wait-for-mlflow"
    for result in results:
        assert result["severity"] == "info"
        assert result["resourceRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": "train", "namespace": "flts"}
        assert result["file"] == {"path": "apps/train.yaml", "index": 1}


def test_a_pod_the_rules_cannot_read_is_kept_with_a_warning_result() -> None:
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["env"] = [{"value": "no name"}]
    given = copy.deepcopy(broken)
    listed = resource_list(broken)
    krm.answer(listed, Rules(make_settings()))
    assert listed["items"] == [given]
    [result] = listed["results"]
    assert result["severity"] == "warning"
    assert result["message"].startswith("left unchanged: ")


def test_nothing_to_do_adds_no_results() -> None:
    listed = resource_list(service())
    krm.answer(listed, Rules(make_settings()))
    assert listed == resource_list(service())


def test_the_items_of_a_list_item_are_named_in_their_results() -> None:
    listed = resource_list({"apiVersion": "v1", "kind": "List", "metadata": {},
                            "items": [deployment()]})
    krm.answer(listed, Rules(make_settings()))
    assert listed["results"][0]["message"] == (
        "Deployment/train: removed init containers wait-for-mlflow")


# --- the functionConfig ---------------------------------------------------------------------


def test_without_a_function_config_the_defaults_apply() -> None:
    assert krm.configuration_of(resource_list()) is None
    assert settings_of(resource_list()) == make_settings()


def test_the_charts_config_map_key_holds_the_whole_configuration() -> None:
    config = yaml.safe_dump({"action": "rewrite", "waiter_names": ["wait-for-db"]})
    settings = settings_of(resource_list(functionConfig=config_map({"config.yaml": config})))
    assert settings.action.value == "rewrite"
    assert settings.waiter_names == frozenset({"wait-for-db"})
    # Merged over the embedded default, as a --config file is: the services stay.
    assert settings.services == make_settings().services


def test_config_map_keys_are_top_level_keys_each_read_as_yaml() -> None:
    settings = settings_of(resource_list(functionConfig=config_map(
        {"action": "rewrite", "waiter_names": "[wait-for-db, wait-for-queue]"})))
    assert settings.action.value == "rewrite"
    assert settings.waiter_names == frozenset({"wait-for-db", "wait-for-queue"})


@pytest.mark.parametrize("field", ["spec", "data"])
def test_another_objects_spec_or_data_is_the_configuration(field: str) -> None:
    listed = resource_list(functionConfig={
        "apiVersion": "example.com/v1", "kind": "BackendInjector", "metadata": {"name": "b"},
        field: {"action": "rewrite", "services": {"mlflow": {"external": {
            "host": "mlflow.example.com", "port": 443}}}}})
    settings = settings_of(listed)
    assert settings.action.value == "rewrite"
    mlflow = next(service for service in settings.services if service.name == "mlflow")
    assert str(mlflow.external) == "mlflow.example.com:443"
    assert mlflow.hosts == next(s.hosts for s in make_settings().services if s.name == "mlflow")


def test_an_object_with_neither_spec_nor_data_leaves_the_defaults() -> None:
    listed = resource_list(functionConfig={"apiVersion": "example.com/v1", "kind": "Injector",
                                           "metadata": {"name": "b"}})
    assert krm.configuration_of(listed) is None


def test_the_configuration_is_the_function_config_applied_to_the_items(tmp_path: Path) -> None:
    listed = resource_list(deployment(), functionConfig=config_map({"action": "rewrite"}))
    krm.answer(listed, Rules(settings_of(listed)))
    assert init_names(listed["items"][0]) == ["wait-for-mlflow", "wait-for-kafka"]
    command = listed["items"][0]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert "host.docker.internal 5000" in command[2]


@pytest.mark.parametrize(
    ("function_config", "message"),
    [
        (config_map({"action": "sideways"}), "functionConfig: action"),
        (config_map({"config.yaml": "action: rewrite", "action": "remove"}),
         "functionConfig ConfigMap/injector: data holds config.yaml and action"),
        (config_map({"config.yaml": "- a list"}), "data.config.yaml does not hold a mapping"),
        (config_map({"services": "{mlflow: ["}), "data.services is not valid YAML"),
        (config_map({"actoin": "rewrite"}), "functionConfig: unknown key actoin"),
        ({"kind": "Injector", "metadata": {"name": "b"}, "spec": ["rewrite"]},
         "functionConfig Injector/b: spec is not a mapping"),
        ("rewrite", "functionConfig is not an object"),
    ],
)
def test_a_configuration_that_cannot_be_used_is_named(function_config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_of(resource_list(functionConfig=function_config))
    assert message in str(caught.value)
    assert "/tmp" not in str(caught.value)  # the temporary file is never what a user reads


def test_a_config_file_and_a_function_config_together_are_refused(tmp_path: Path) -> None:
    listed = resource_list(functionConfig=config_map({"action": "rewrite"}))
    with pytest.raises(ConfigError, match="--config and the functionConfig"):
        krm.load_function_settings(krm.configuration_of(listed),
                                   config_file=tmp_path / "config.yaml", overrides={}, environ={})


def test_flags_still_win_over_the_function_config() -> None:
    listed = resource_list(functionConfig=config_map({"action": "rewrite"}))
    settings = krm.load_function_settings(krm.configuration_of(listed), config_file=None,
                                          overrides={"action": "remove"}, environ={})
    assert settings.action.value == "remove"


# --- the command ----------------------------------------------------------------------------


def test_the_command_answers_a_resource_list_on_stdout() -> None:
    listed = resource_list(service(), deployment(), functionConfig=config_map({}))
    result, answered = run_function(listed)
    assert result.returncode == 0, result.stderr
    assert (answered["apiVersion"], answered["kind"]) == (krm.API_VERSION, krm.KIND)
    assert answered["items"][0] == service()
    assert answered["items"][1]["metadata"]["annotations"] == ORCHESTRATOR_ANNOTATIONS
    assert init_names(answered["items"][1]) == ["wait-for-kafka"]
    assert answered["functionConfig"] == config_map({})
    assert "Deployment/train: removed init containers wait-for-mlflow" in result.stderr


def test_a_bad_configuration_is_an_error_result_and_exit_2() -> None:
    listed = resource_list(deployment(), functionConfig=config_map({"action": "sideways"}))
    result, answered = run_function(listed)
    assert result.returncode == 2
    line, = result.stderr.strip().splitlines()
    assert line.startswith("backend-injector inject: functionConfig: action")
    assert answered["items"] == [deployment()]  # nothing done with a configuration not asked
    [error] = answered["results"]
    assert error["severity"] == "error"
    assert error["message"] == line.removeprefix("backend-injector inject: ")
    assert error["resourceRef"] == {"apiVersion": "v1", "kind": "ConfigMap", "name": "injector"}


def test_a_resource_list_of_another_version_is_one_line_and_exit_1() -> None:
    result, _ = run_function(resource_list(apiVersion="config.kubernetes.io/v1beta1"))
    assert result.returncode == 1
    assert "config.kubernetes.io/v1beta1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_replaced_chart_credentials_are_warning_results_with_serves_wording() -> None:
    item = deployment()
    item["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AWS_ACCESS_KEY_ID", "value": "chart-own-key"})
    value_mode = config_map({"config.yaml": "credentials: {mode: value}\n"})
    result, answered = run_function(resource_list(item, functionConfig=value_mode))
    assert result.returncode == 0, result.stderr
    warnings = [r["message"] for r in answered["results"] if r["severity"] == "warning"]
    assert warnings[0] == "replaced the chart's own AWS_ACCESS_KEY_ID in train"
    assert warnings[1].startswith("the S3 credentials are MinIO's development default")
    assert "chart-own-key" not in json.dumps(answered["results"]) + result.stderr


def test_diff_of_a_resource_list_shows_the_changed_items_and_exits_1() -> None:
    result, _ = run_function(resource_list(service(), deployment()), "--diff")
    assert result.returncode == 1
    assert result.stdout.startswith("--- stdin: Deployment/train (as given)")
    removed = [line for line in result.stdout.splitlines()
               if line.startswith("-") and "wait-for-mlflow" in line]
    assert removed, result.stdout
    assert "Service" not in result.stdout
