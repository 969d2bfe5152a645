"""The rules on pods built in the test: what is removed, kept, rewritten and set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.conftest import make_settings, pod, waiter
from webhook.rules.mutate import STATUS_KEY, PodShapeError, Rules
from webhook.settings import ACCESS_KEY_ENV, ConfigError, EnvScope

EXTERNAL_ENV = {
    "MLFLOW_TRACKING_URI": "http://host.docker.internal:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://host.docker.internal:9000",
    "GATEWAY_URL": "http://host.docker.internal:8000",
    # By reference, the default: the Secret of the pod's own namespace.
    "AWS_ACCESS_KEY_ID": "secretKeyRef:backend-injector-credentials/access-key-id",
    "AWS_SECRET_ACCESS_KEY": "secretKeyRef:backend-injector-credentials/secret-access-key",
}


def mutated(rules: Rules, original: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(original, rules.mutate_pod(original).operations)
    return result


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Each variable's value, or ``secretKeyRef:NAME/KEY`` for one read from a Secret."""
    return {entry["name"]: entry["value"] if "value" in entry else _reference(entry)
            for entry in container.get("env", [])}


def _reference(entry: dict[str, Any]) -> str:
    reference = (entry.get("valueFrom") or {}).get("secretKeyRef")
    return f"secretKeyRef:{reference['name']}/{reference['key']}" if reference else ""


def test_the_trainer_loses_its_mlflow_wait_and_keeps_kafka(rules: Rules) -> None:
    result = mutated(rules, pod())
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["wait-for-kafka"]
    env = env_of(result["spec"]["containers"][0])
    for name, value in EXTERNAL_ENV.items():
        assert env[name] == value
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_env_is_replaced_in_place_and_absent_names_are_appended(rules: Rules) -> None:
    names = [e["name"] for e in mutated(rules, pod())["spec"]["containers"][0]["env"]]
    assert names == [
        "MODEL_TYPE", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "KAFKA_BOOTSTRAP_SERVERS",
        "GATEWAY_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    ]


def test_value_from_gives_way_to_the_external_value(rules: Rules) -> None:
    container = {"name": "app", "env": [
        {"name": "MLFLOW_TRACKING_URI",
         "valueFrom": {"configMapKeyRef": {"name": "backend", "key": "tracking"}}},
    ]}
    result = mutated(rules, pod(init=[], containers=[container]))
    assert result["spec"]["containers"][0]["env"][0] == {
        "name": "MLFLOW_TRACKING_URI", "value": "http://host.docker.internal:5000"
    }


def test_duplicates_of_a_managed_name_collapse_to_the_first(rules: Rules) -> None:
    container = {"name": "app", "env": [
        {"name": "GATEWAY_URL", "value": "http://fastapi-app:8000"},
        {"name": "OTHER", "value": "x"},
        {"name": "GATEWAY_URL", "value": "http://fastapi:8000"},
    ]}
    env = mutated(rules, pod(init=[], containers=[container]))["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env].count("GATEWAY_URL") == 1
    assert env[0] == {"name": "GATEWAY_URL", "value": "http://host.docker.internal:8000"}
    assert env[1] == {"name": "OTHER", "value": "x"}


def test_init_containers_get_replacements_but_no_additions(rules: Rules) -> None:
    migrate = {"name": "migrate", "image": "flts/migrate", "command": ["python", "migrate.py"],
               "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}]}
    result = mutated(rules, pod(init=[migrate]))
    assert result["spec"]["initContainers"][0]["env"] == [
        {"name": "MLFLOW_TRACKING_URI", "value": "http://host.docker.internal:5000"}
    ]


def test_all_waiters_removed_drops_the_field(rules: Rules) -> None:
    init = [waiter("wait-for-mlflow", "until nc -z mlflow 5000; do sleep 2; done"),
            waiter("wait-for-fastapi", "until nc -z fastapi-app 8000; do sleep 2; done")]
    assert "initContainers" not in mutated(rules, pod(init=init))["spec"]


def test_waiter_found_by_probe_whatever_its_name(rules: Rules) -> None:
    init = [waiter("check", "until wget -q http://minio.flts.svc.cluster.local:9000/; do :; done"),
            waiter("wait-for-kafka", "until nc -z kafka 9092; do sleep 2; done")]
    mutation = rules.mutate_pod(pod(init=init))
    assert mutation.removed == ["check"]


def test_waiter_found_by_name_whatever_its_program(rules: Rules) -> None:
    init = [waiter("wait-for-fastapi", "/opt/bin/wait-until-ready")]
    assert rules.mutate_pod(pod(init=init)).removed == ["wait-for-fastapi"]


def test_configured_waiter_names_replace_the_default(tmp_path: Path) -> None:
    rules = Rules(make_settings(tmp_path, waiter_names=["gate"]))
    init = [waiter("gate", "/bin/gate"), waiter("wait-for-fastapi", "/opt/bin/wait")]
    assert rules.mutate_pod(pod(init=init)).removed == ["gate"]


def test_rewrite_retargets_and_keeps_the_container(tmp_path: Path) -> None:
    rules = Rules(make_settings(tmp_path, action="rewrite"))
    result = mutated(rules, pod())
    first = result["spec"]["initContainers"][0]
    assert first["name"] == "wait-for-mlflow"
    assert first["command"] == [
        "sh", "-c", "until nc -z host.docker.internal 5000; do sleep 2; done"
    ]
    assert json.loads(result["metadata"]["annotations"][STATUS_KEY])["rewritten"] == [
        "wait-for-mlflow"
    ]


def test_rewrite_of_a_script_given_in_args(tmp_path: Path) -> None:
    rules = Rules(make_settings(tmp_path, action="rewrite"))
    init = [{"name": "wait-for-mlflow", "image": "busybox", "command": ["sh", "-c"],
             "args": ["until nc -z mlflow 5000; do sleep 2; done"]}]
    first = mutated(rules, pod(init=init))["spec"]["initContainers"][0]
    assert first["command"] == ["sh", "-c"]
    assert first["args"] == ["until nc -z host.docker.internal 5000; do sleep 2; done"]


def test_rewrite_removes_waiters_for_postgres(tmp_path: Path) -> None:
    rules = Rules(make_settings(tmp_path, action="rewrite"))
    init = [waiter("wait-for-db", "until pg_isready -h postgres; do sleep 1; done")]
    assert rules.mutate_pod(pod(init=init)).removed == ["wait-for-db"]


def test_rewrite_is_idempotent_for_named_waiters(tmp_path: Path) -> None:
    rules = Rules(make_settings(tmp_path, action="rewrite"))
    once = mutated(rules, pod())
    assert rules.mutate_pod(once).operations == []


def test_a_container_that_waits_and_works_is_kept_and_retargeted(rules: Rules) -> None:
    init = [waiter("migrate", "until nc -z mlflow 5000; do sleep 1; done; mlflow db upgrade")]
    mutation = rules.mutate_pod(pod(init=init))
    assert mutation.removed == []
    assert mutation.rewritten == ["migrate"]


def test_a_kept_container_waiting_for_postgres_is_reported(rules: Rules) -> None:
    init = [waiter("migrate", "until pg_isready -h postgres; do sleep 1; done; alembic upgrade")]
    mutation = rules.mutate_pod(pod(init=init))
    assert mutation.kept_waiting == ["migrate"]
    assert mutation.removed == []


@pytest.mark.parametrize("where", ["annotations", "labels"])
@pytest.mark.parametrize("value", ["false", "False", "disabled"])
def test_opt_out(rules: Rules, where: str, value: str) -> None:
    original = pod()
    original["metadata"][where] = {"backend-injector/inject": value}
    mutation = rules.mutate_pod(original)
    assert mutation.operations == []
    assert mutation.skipped


def test_opt_in_value_on_the_pod_does_not_opt_out(rules: Rules) -> None:
    original = pod(annotations={"backend-injector/inject": "true"})
    assert rules.mutate_pod(original).changed


def test_status_names_what_was_done_and_never_values(rules: Rules) -> None:
    result = mutated(rules, pod(annotations={"team": "ml"}))
    annotations = result["metadata"]["annotations"]
    assert annotations["team"] == "ml"
    status = json.loads(annotations[STATUS_KEY])
    assert status == {"removed": ["wait-for-mlflow"], "rewritten": [], "env": list(EXTERNAL_ENV)}
    assert "minioadmin" not in annotations[STATUS_KEY]
    assert "host.docker.internal" not in annotations[STATUS_KEY]


def test_second_pass_changes_nothing(rules: Rules) -> None:
    once = mutated(rules, pod())
    assert rules.mutate_pod(once).operations == []


def test_reinvocation_sets_env_on_a_new_container_and_merges_status(rules: Rules) -> None:
    once = mutated(rules, pod())
    once["spec"]["containers"].append({"name": "sidecar", "image": "sidecar"})
    twice = mutated(rules, once)
    assert env_of(twice["spec"]["containers"][1]) == EXTERNAL_ENV
    status = json.loads(twice["metadata"]["annotations"][STATUS_KEY])
    assert status["removed"] == ["wait-for-mlflow"]
    assert status["env"] == list(EXTERNAL_ENV)


def test_pod_without_metadata_gets_it(rules: Rules) -> None:
    original = pod()
    del original["metadata"]
    assert STATUS_KEY in mutated(rules, original)["metadata"]["annotations"]


def test_secret_key_ref_mode_keeps_values_out_of_the_spec(tmp_path: Path) -> None:
    rules = Rules(make_settings(tmp_path, credentials={"mode": "secretKeyRef"}))
    env = mutated(rules, pod())["spec"]["containers"][0]["env"]
    by_name = {entry["name"]: entry for entry in env}
    assert by_name["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
        "secretKeyRef": {"name": "backend-injector-credentials", "key": "access-key-id"}}}
    assert "minioadmin" not in json.dumps(env)


@pytest.mark.parametrize(
    "broken",
    [
        "not a pod",
        {"metadata": [], "spec": {"containers": []}},
        {"spec": "nope"},
        {"spec": {"containers": "app"}},
        {"spec": {"containers": [{"name": "app", "env": {"A": "b"}}]}},
        {"spec": {"containers": [{"name": None}]}},
        {"spec": {"containers": [{"name": "app", "env": [{"value": "x"}]}]}},
        {"spec": {"containers": [], "initContainers": [{"name": "w", "command": "nc -z x 1"}]}},
        {"metadata": {"annotations": ["x"]}, "spec": {"containers": []}},
    ],
)
def test_unreadable_pods_raise_a_shape_error(rules: Rules, broken: Any) -> None:
    with pytest.raises(PodShapeError):
        rules.mutate_pod(broken)


@pytest.mark.parametrize(
    "status",
    [
        "not json",
        "[" * 100_000 + "]" * 100_000,
        '{"removed": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"removed": "wait-for-mlflow", "env": {"a": 1}}',
        "x" * 2_000_000,
        '{"removed": [' + ",".join(['"n"'] * 300_000) + "]}",
        "42",
    ],
)
def test_garbage_in_the_status_annotation_counts_as_absent(rules: Rules, status: str) -> None:
    before = pod(annotations={STATUS_KEY: status})
    after = mutated(rules, before)
    assert [c["name"] for c in after["spec"]["initContainers"]] == ["wait-for-kafka"]
    written = json.loads(after["metadata"]["annotations"][STATUS_KEY])
    assert written["removed"][-1] == "wait-for-mlflow"
    assert len(after["metadata"]["annotations"][STATUS_KEY]) < 4096
    assert rules.mutate_pod(after).operations == []


def test_add_env_to_takes_using_or_all(tmp_path: Path) -> None:
    assert make_settings().add_env_to is EnvScope.USING
    assert make_settings(tmp_path, add_env_to="all").add_env_to is EnvScope.ALL
    with pytest.raises(ConfigError, match="add_env_to must be one of using, all"):
        make_settings(tmp_path, add_env_to="everyone")


def test_credentials_none_manages_no_credentials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, credentials={"mode": "none"})
    assert ACCESS_KEY_ENV not in settings.managed_env_names
    assert not settings.credentials.is_development_default
