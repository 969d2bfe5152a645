"""The safety net: hostAliases entries that send the managed names to the external IPs.

The pure function first (every case in which no entry is made, the namespace forms, grouping,
appending, idempotence), then through `Rules`: every pod the rules mutate gets the entries,
whether or not a waiter was read, and the status annotation says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.conftest import make_settings, pod, waiter
from webhook.rules.host_aliases import host_alias_operations, in_cluster_names
from webhook.rules.mutate import STATUS_KEY, Rules
from webhook.settings import Endpoint, Service

DOCKER_HOST = "host.docker.internal"
HOST_IP = "192.168.65.254"
ADDRESSES = {DOCKER_HOST: HOST_IP}
MLFLOW = Service("mlflow", ("mlflow",), Endpoint(DOCKER_HOST, 5000))
MINIO = Service("minio", ("minio",), Endpoint(DOCKER_HOST, 9000))
FASTAPI = Service("fastapi", ("fastapi-app", "fastapi"), Endpoint(DOCKER_HOST, 8000))
POSTGRES = Service("postgres", ("postgres",), None)
SERVICES = (MLFLOW, MINIO, FASTAPI, POSTGRES)
# A socket loop no shell reader understands: kept as it is, waiting for mlflow:5000.
PYTHON_WAITER = {
    "name": "wait-for-tracking",
    "image": "python:3.11",
    "command": ["python3", "-c",
                "import socket, time\n"
                "while True:\n"
                "    try:\n"
                "        socket.create_connection(('mlflow', 5000), timeout=2).close(); break\n"
                "    except OSError:\n"
                "        time.sleep(2)\n"],
}


def forms(host: str, namespace: str = "flts") -> list[str]:
    return [host, f"{host}.{namespace}", f"{host}.{namespace}.svc",
            f"{host}.{namespace}.svc.cluster.local"]


def app_pod(spec: dict[str, Any] | None = None, namespace: str | None = "flts") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "app"}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "app", "image": "app:1"}], **(spec or {})}}


def patched(original: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(original, operations)
    return result


def aliases_of(original: dict[str, Any], namespace: str | None = "flts",
               services: tuple[Service, ...] = SERVICES,
               addresses: dict[str, str] | None = None) -> list[dict[str, Any]]:
    patch = host_alias_operations(original, namespace, services,
                                  ADDRESSES if addresses is None else addresses)
    aliases: list[dict[str, Any]] = patched(original, patch.operations)["spec"].get(
        "hostAliases", [])
    return aliases


# --- the entries --------------------------------------------------------------------------


def test_each_host_of_each_reachable_service_in_every_namespace_form_under_one_ip() -> None:
    assert aliases_of(app_pod()) == [{"ip": HOST_IP, "hostnames": [
        *forms("mlflow"), *forms("minio"), *forms("fastapi-app"), *forms("fastapi"),
    ]}]


def test_the_namespace_forms_are_the_ones_the_rules_recognise() -> None:
    assert in_cluster_names("mlflow", "team-a") == [
        "mlflow", "mlflow.team-a", "mlflow.team-a.svc", "mlflow.team-a.svc.cluster.local"]


def test_without_a_namespace_only_the_bare_names() -> None:
    assert aliases_of(app_pod(namespace=None), namespace=None) == [
        {"ip": HOST_IP, "hostnames": ["mlflow", "minio", "fastapi-app", "fastapi"]}]


def test_hostnames_are_grouped_by_ip_in_the_order_of_the_services() -> None:
    elsewhere = Service("minio", ("minio",), Endpoint("s3.example.com", 443))
    entries = aliases_of(app_pod(), services=(MLFLOW, elsewhere, FASTAPI),
                         addresses={DOCKER_HOST: HOST_IP, "s3.example.com": "2001:db8::5"})
    assert entries == [
        {"ip": HOST_IP, "hostnames": [*forms("mlflow"), *forms("fastapi-app"),
                                      *forms("fastapi")]},
        {"ip": "2001:db8::5", "hostnames": forms("minio")},
    ]


def test_external_hosts_are_looked_up_in_lower_case() -> None:
    shouting = Service("mlflow", ("mlflow",), Endpoint("Host.Docker.Internal", 5000))
    assert aliases_of(app_pod(), services=(shouting,)) == [
        {"ip": HOST_IP, "hostnames": forms("mlflow")}]


# --- no entry -----------------------------------------------------------------------------


def test_no_entry_for_a_service_without_an_external_address() -> None:
    assert host_alias_operations(app_pod(), "flts", (POSTGRES,), ADDRESSES).operations == []


def test_no_entry_when_the_ip_is_not_known() -> None:
    assert host_alias_operations(app_pod(), "flts", SERVICES, {}).operations == []
    assert host_alias_operations(app_pod(), "flts", SERVICES,
                                 {"other.example": "10.0.0.1"}).operations == []


def test_no_entry_for_a_pod_on_the_node_network() -> None:
    on_node = app_pod({"hostNetwork": True})
    assert host_alias_operations(on_node, "flts", SERVICES, ADDRESSES).operations == []
    # hostNetwork false is an ordinary pod.
    assert aliases_of(app_pod({"hostNetwork": False}))


@pytest.mark.parametrize(
    "namespace",
    ["Team_A", "x" * 250],  # not a DNS-1123 subdomain; over 253 characters with the host
)
def test_no_entry_for_a_hostname_the_apiserver_would_refuse(namespace: str) -> None:
    entries = aliases_of(app_pod(namespace=namespace), namespace=namespace,
                         services=(MLFLOW,))
    assert entries == [{"ip": HOST_IP, "hostnames": ["mlflow"]}]


def test_no_entry_for_a_host_that_is_not_a_valid_hostname() -> None:
    odd = Service("odd", ("Odd_Host",), Endpoint(DOCKER_HOST, 1))
    assert host_alias_operations(app_pod(), "flts", (odd,), ADDRESSES).operations == []


def test_the_pods_own_entry_wins() -> None:
    own = [{"ip": "10.1.2.3", "hostnames": ["mlflow", "minio.flts.svc"]}]
    entries = aliases_of(app_pod({"hostAliases": own}), services=(MLFLOW, MINIO))
    assert entries == [
        *own,
        {"ip": HOST_IP, "hostnames": [*forms("mlflow")[1:], "minio", "minio.flts",
                                      "minio.flts.svc.cluster.local"]},
    ]


def test_a_pod_that_maps_every_name_itself_gets_nothing() -> None:
    own = [{"ip": "10.1.2.3", "hostnames": forms("mlflow")}]
    assert host_alias_operations(app_pod({"hostAliases": own}), "flts", (MLFLOW,),
                                 ADDRESSES).operations == []


@pytest.mark.parametrize("spec", [{"hostAliases": "mlflow"}, {"hostAliases": {"ip": "x"}}])
def test_host_aliases_that_are_not_a_list_are_left_to_the_apiserver(
    spec: dict[str, Any]
) -> None:
    assert host_alias_operations(app_pod(spec), "flts", SERVICES, ADDRESSES).operations == []


def test_a_pod_without_a_spec_gets_nothing() -> None:
    assert host_alias_operations({"metadata": {}}, "flts", SERVICES, ADDRESSES).operations == []


# --- how they are added -------------------------------------------------------------------


def test_a_new_list_is_added_whole() -> None:
    operations = host_alias_operations(app_pod(), "flts", (MLFLOW,), ADDRESSES).operations
    assert operations == [{"op": "add", "path": "/spec/hostAliases",
                           "value": [{"ip": HOST_IP, "hostnames": forms("mlflow")}]}]


def test_a_null_list_is_replaced_by_a_new_one() -> None:
    assert aliases_of(app_pod({"hostAliases": None}), services=(MLFLOW,)) == [
        {"ip": HOST_IP, "hostnames": forms("mlflow")}]


@pytest.mark.parametrize("existing", [[], [{"ip": "10.9.9.9", "hostnames": ["registry"]}],
                                      [{"ip": "10.9.9.9"}, "not an entry"]])
def test_an_existing_list_is_appended_to(existing: list[Any]) -> None:
    original = app_pod({"hostAliases": existing})
    operations = host_alias_operations(original, "flts", (MLFLOW,), ADDRESSES).operations
    assert operations == [{"op": "add", "path": "/spec/hostAliases/-",
                           "value": {"ip": HOST_IP, "hostnames": forms("mlflow")}}]
    assert patched(original, operations)["spec"]["hostAliases"][:-1] == existing


def test_a_second_pass_adds_nothing() -> None:
    once = patched(app_pod(), host_alias_operations(app_pod(), "flts", SERVICES,
                                                    ADDRESSES).operations)
    assert host_alias_operations(once, "flts", SERVICES, ADDRESSES).operations == []


def test_the_names_given_entries_are_reported() -> None:
    own = [{"ip": "10.1.2.3", "hostnames": forms("minio")}]
    patch = host_alias_operations(app_pod({"hostAliases": own}), "flts", SERVICES, ADDRESSES)
    assert patch.hosts == ["mlflow", "fastapi-app", "fastapi"]


# --- through the rules --------------------------------------------------------------------


def configured_rules(tmp_path: Path, **document: Any) -> Rules:
    return Rules(make_settings(tmp_path, safety_net={"addresses": ADDRESSES}, **document))


def test_a_python_waiter_is_kept_and_the_pod_gets_the_entries(tmp_path: Path) -> None:
    original = pod(init=[PYTHON_WAITER])
    original["metadata"]["namespace"] = "flts"
    result = patched(original, configured_rules(tmp_path).mutate_pod(original).operations)
    assert result["spec"]["initContainers"] == [PYTHON_WAITER]
    assert result["spec"]["hostAliases"] == [{"ip": HOST_IP, "hostnames": [
        *forms("mlflow"), *forms("minio"), *forms("fastapi-app"), *forms("fastapi")]}]
    status = json.loads(result["metadata"]["annotations"][STATUS_KEY])
    assert status["aliased"] == ["mlflow", "minio", "fastapi-app", "fastapi"]


def test_a_pod_the_rules_otherwise_leave_alone_gets_the_entries_too(tmp_path: Path) -> None:
    broker = app_pod()  # no waiter, no managed variable, no managed host named
    mutation = configured_rules(tmp_path).mutate_pod(broker)
    assert mutation.changed and mutation.env == [] and mutation.removed == []
    result = patched(broker, mutation.operations)
    assert result["spec"]["hostAliases"][0]["ip"] == HOST_IP
    assert json.loads(result["metadata"]["annotations"][STATUS_KEY]) == {
        "removed": [], "rewritten": [], "env": [],
        "aliased": ["mlflow", "minio", "fastapi-app", "fastapi"]}
    assert any("hostAliases point mlflow, minio, fastapi-app, fastapi" in line
               for line in mutation.describe())


def test_a_second_pass_through_the_rules_changes_nothing(tmp_path: Path) -> None:
    rules = configured_rules(tmp_path)
    original = pod(init=[PYTHON_WAITER, waiter("wait-for-mlflow", "until nc -z mlflow 5000; "
                                                                  "do sleep 2; done")])
    once = patched(original, rules.mutate_pod(original).operations)
    assert rules.mutate_pod(once).operations == []


def test_an_opted_out_pod_gets_nothing(tmp_path: Path) -> None:
    opted_out = pod(init=[PYTHON_WAITER], annotations={"backend-injector/inject": "false"})
    assert configured_rules(tmp_path).mutate_pod(opted_out).operations == []


def test_the_switch_turns_the_entries_off_whatever_addresses_are_given(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, safety_net={"host_aliases": False,
                                                   "addresses": ADDRESSES})
    for rules in (Rules(settings), Rules(settings, host_addresses=ADDRESSES)):
        assert rules.mutate_pod(app_pod()).operations == []


def test_by_default_the_rules_use_only_the_addresses_the_settings_know(tmp_path: Path) -> None:
    assert Rules(make_settings()).mutate_pod(app_pod()).operations == []
    literal = Rules(make_settings(tmp_path, services={
        "mlflow": {"external": {"host": "10.0.0.7", "port": 5000}}}))
    result = patched(app_pod(), literal.mutate_pod(app_pod()).operations)
    assert result["spec"]["hostAliases"] == [{"ip": "10.0.0.7", "hostnames": forms("mlflow")}]


def test_given_addresses_are_the_ones_used() -> None:
    rules = Rules(make_settings(), host_addresses={DOCKER_HOST: "10.2.3.4"})
    result = patched(app_pod(), rules.mutate_pod(app_pod()).operations)
    assert {alias["ip"] for alias in result["spec"]["hostAliases"]} == {"10.2.3.4"}


def test_the_namespace_given_serves_a_template_without_one(tmp_path: Path) -> None:
    template = app_pod(namespace=None)
    mutation = configured_rules(tmp_path).mutate_pod(template, namespace="team-a")
    names = patched(template, mutation.operations)["spec"]["hostAliases"][0]["hostnames"]
    assert names[:4] == forms("mlflow", "team-a")
    # The pod's own namespace wins over the one given.
    mutation = configured_rules(tmp_path).mutate_pod(app_pod(), namespace="team-a")
    assert patched(app_pod(), mutation.operations)["spec"]["hostAliases"][0]["hostnames"][
        :4] == forms("mlflow")


def test_an_earlier_account_of_aliases_is_kept_when_a_later_pass_adds_env(
    tmp_path: Path
) -> None:
    earlier = json.dumps({"removed": [], "rewritten": [], "env": [], "aliased": ["mlflow"]},
                         separators=(",", ":"))
    own = [{"ip": HOST_IP, "hostnames": forms("mlflow")}]
    original = app_pod({"hostAliases": own})
    original["metadata"]["annotations"] = {STATUS_KEY: earlier}
    original["spec"]["containers"][0]["env"] = [{"name": "GATEWAY_URL",
                                                "value": "http://fastapi-app:8000"}]
    rules = configured_rules(tmp_path, services={"minio": {"external": None}},
                             env={"MLFLOW_S3_ENDPOINT_URL": None})
    result = patched(original, rules.mutate_pod(original).operations)
    status = json.loads(result["metadata"]["annotations"][STATUS_KEY])
    assert status["aliased"] == ["mlflow", "fastapi-app", "fastapi"]
    assert "GATEWAY_URL" in status["env"]


def test_only_the_forms_over_the_length_limit_are_left_out() -> None:
    namespace = "x" * 240  # mlflow.NS.svc has 251 characters, .svc.cluster.local 265
    entries = aliases_of(app_pod(namespace=namespace), namespace=namespace, services=(MLFLOW,))
    assert entries == [{"ip": HOST_IP, "hostnames": forms("mlflow", namespace)[:3]}]


def test_entries_keep_the_order_of_the_first_service_at_each_ip() -> None:
    elsewhere = Service("minio", ("minio",), Endpoint("s3.example.com", 443))
    own = [{"ip": "10.1.2.3", "hostnames": forms("mlflow")}]  # the first service's names
    entries = aliases_of(app_pod({"hostAliases": own}), services=(MLFLOW, elsewhere, FASTAPI),
                         addresses={DOCKER_HOST: HOST_IP, "s3.example.com": "10.0.0.5"})
    assert entries == [
        *own,
        {"ip": HOST_IP, "hostnames": [*forms("fastapi-app"), *forms("fastapi")]},
        {"ip": "10.0.0.5", "hostnames": forms("minio")},
    ]
