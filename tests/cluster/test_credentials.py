"""Tests for webhook.cluster.credentials and webhook.cluster.optin: where the copied values come
from, the copies themselves (created, refreshed on rotation, another owner's left alone), and
opting namespaces in and out, against the in-memory cluster."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from webhook.cluster import credentials, optin
from webhook.cluster.client import namespace_path, secret_path, webhook_configuration_path
from webhook.settings import CredentialMode, Settings, load_settings

from .memory_cluster import MemoryCluster

ACCESS, SECRET = "AKIA-test-access", "s3cr3t-test-value"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def settings(**environ: str) -> Settings:
    return load_settings(environ=environ)


def add_namespace(cluster: MemoryCluster, name: str, **labels: str) -> None:
    cluster.objects[namespace_path(name)] = {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "resourceVersion": "1",
                     "labels": {"kubernetes.io/metadata.name": name, **labels}},
    }


def add_source(cluster: MemoryCluster, namespace: str = "backend-injector",
               name: str = "backend-injector-credentials", **data: str) -> None:
    cluster.objects[secret_path(namespace, name)] = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "data": data or {"access-key-id": b64(ACCESS), "secret-access-key": b64(SECRET)},
    }


def copy_in(cluster: MemoryCluster, namespace: str) -> dict[str, Any] | None:
    return cluster.objects.get(secret_path(namespace, "backend-injector-credentials"))


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_the_default_configuration_reads_credentials_by_reference() -> None:
    assert credentials.copies_needed(settings().credentials)
    assert not settings().credentials.is_development_default  # nothing of it reaches a pod


def test_values_come_from_the_installed_webhooks_secret() -> None:
    cluster = MemoryCluster()
    add_source(cluster)
    values = credentials.source_values(cluster, settings().credentials, {}, source=None)
    assert (values.access_key_id, values.secret_access_key) == (ACCESS, SECRET)
    assert values.source == "Secret backend-injector/backend-injector-credentials"
    assert ACCESS not in repr(values) and SECRET not in repr(values)


def test_the_source_follows_the_webhooks_service_namespace() -> None:
    cluster = MemoryCluster()
    cluster.objects[webhook_configuration_path("backend-injector")] = {"webhooks": [
        {"clientConfig": {"service": {"namespace": "tools", "name": "backend-injector"}}}]}
    add_source(cluster, namespace="tools")
    values = credentials.source_values(cluster, settings().credentials, {}, source=None)
    assert values.source == "Secret tools/backend-injector-credentials"


def test_the_commands_own_variables_win_over_the_installed_secret() -> None:
    cluster = MemoryCluster()
    add_source(cluster)
    environ = {"BACKEND_INJECTOR_ACCESS_KEY_ID": "mine", "BACKEND_INJECTOR_SECRET_ACCESS_KEY":
               "mine-too"}
    values = credentials.source_values(cluster, settings(**environ).credentials, environ,
                                       source=None)
    assert (values.access_key_id, values.secret_access_key) == ("mine", "mine-too")


def test_without_any_source_the_development_default_is_copied_and_known_as_such() -> None:
    values = credentials.source_values(MemoryCluster(), settings().credentials, {}, source=None)
    assert values.is_development_default


def test_a_named_source_must_exist_and_hold_both_keys() -> None:
    cluster = MemoryCluster()
    with pytest.raises(credentials.CredentialsError, match="elsewhere/creds does not exist"):
        credentials.source_values(cluster, settings().credentials, {},
                                  source=("elsewhere", "creds"))
    add_source(cluster, "elsewhere", "creds", **{"access-key-id": b64(ACCESS)})
    with pytest.raises(credentials.CredentialsError, match="no key secret-access-key"):
        credentials.source_values(cluster, settings().credentials, {},
                                  source=("elsewhere", "creds"))


def test_opting_in_copies_then_labels_and_is_idempotent() -> None:
    cluster = MemoryCluster()
    add_source(cluster)
    add_namespace(cluster, "flts")
    config = settings()
    values = optin.credential_values(cluster, config, {}, None)
    lines = [step.line() for step in optin.opt_in(cluster, config, "flts", values)]
    assert lines[0].startswith("flts: Secret backend-injector-credentials created")
    assert "labelled backend-injector/inject=enabled" in lines[1]
    copied = copy_in(cluster, "flts")
    assert copied is not None
    assert decoded(copied) == {"access-key-id": ACCESS, "secret-access-key": SECRET}
    assert copied["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "backend-injector"}
    labels = cluster.objects[namespace_path("flts")]["metadata"]["labels"]
    assert labels["backend-injector/inject"] == "enabled"
    again = [step.line() for step in optin.opt_in(cluster, config, "flts", values)]
    assert "unchanged" in again[0] and "already labelled" in again[1]
    # The Secret goes first, so that no pod is admitted with a reference to nothing.
    writes = [call for call in cluster.calls if not call.startswith("GET")]
    assert writes[0] == "POST /api/v1/namespaces/flts/secrets"


def test_excluded_and_absent_namespaces_are_refused_before_anything_changes() -> None:
    cluster = MemoryCluster()
    add_namespace(cluster, "kube-system")
    add_namespace(cluster, "flts-ok")
    for namespace, reason in (("kube-system", "never mutated"),
                              ("backend-injector", "never mutated"),
                              ("nowhere", "does not exist")):
        with pytest.raises(optin.OptInError, match=reason):
            optin.check_namespaces(cluster, settings(), ["flts-ok", namespace])
    assert not [call for call in cluster.calls if not call.startswith("GET")]


def test_rotation_updates_every_opted_in_copy_and_leaves_other_owners_alone() -> None:
    cluster = MemoryCluster()
    add_source(cluster)
    config = settings()
    for name in ("team-a", "team-b", "helm-owned"):
        add_namespace(cluster, name, **{"backend-injector/inject": "enabled"})
    add_namespace(cluster, "not-opted-in")
    values = optin.credential_values(cluster, config, {}, None)
    assert values is not None
    for name in ("team-a", "team-b"):
        list(optin.opt_in(cluster, config, name, values))
    cluster.objects[secret_path("helm-owned", "backend-injector-credentials")] = {
        "metadata": {"name": "backend-injector-credentials", "resourceVersion": "1",
                     "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "data": {"access-key-id": b64("helm"), "secret-access-key": b64("helm")}}

    add_source(cluster, **{"access-key-id": b64("rotated-id"),
                           "secret-access-key": b64("rotated-secret")})
    rotated = optin.credential_values(cluster, config, {}, None)
    assert rotated is not None
    planned = [step.line() for step in optin.refresh(cluster, config, rotated, None,
                                                     dry_run=True)]
    assert planned == [
        "helm-owned: Secret backend-injector-credentials left alone: managed by another owner "
        "(not labelled app.kubernetes.io/managed-by=backend-injector; update it where it is "
        "managed, e.g. helm upgrade)",
        "team-a: Secret backend-injector-credentials would be updated, from Secret "
        "backend-injector/backend-injector-credentials",
        "team-b: Secret backend-injector-credentials would be updated, from Secret "
        "backend-injector/backend-injector-credentials",
    ]
    assert decoded(copy_in(cluster, "team-a") or {})["secret-access-key"] == SECRET
    list(optin.refresh(cluster, config, rotated, None, dry_run=False))
    for name in ("team-a", "team-b"):
        assert decoded(copy_in(cluster, name) or {})["secret-access-key"] == "rotated-secret"
    assert decoded(copy_in(cluster, "helm-owned") or {})["secret-access-key"] == "helm"
    assert copy_in(cluster, "not-opted-in") is None


def test_opting_out_removes_the_label_and_only_this_tools_copy() -> None:
    cluster = MemoryCluster()
    add_source(cluster)
    add_namespace(cluster, "flts")
    config = settings()
    list(optin.opt_in(cluster, config, "flts", optin.credential_values(cluster, config, {},
                                                                      None)))
    lines = [step.line() for step in optin.opt_out(cluster, config, "flts")]
    assert "label backend-injector/inject removed" in lines[0]
    assert "deleted" in lines[1]
    assert copy_in(cluster, "flts") is None
    assert "backend-injector/inject" not in cluster.objects[namespace_path("flts")][
        "metadata"]["labels"]


def test_in_value_mode_opting_in_only_labels() -> None:
    cluster = MemoryCluster()
    add_namespace(cluster, "flts")
    default = settings()
    config = dataclasses.replace(default, credentials=dataclasses.replace(
        default.credentials, mode=CredentialMode.VALUE))
    assert optin.credential_values(cluster, config, {}, None) is None
    lines = [step.line() for step in optin.opt_in(cluster, config, "flts", None)]
    assert lines[0] == "flts: no credentials Secret: credentials.mode is value"
    assert copy_in(cluster, "flts") is None


def test_references_and_what_a_namespace_lacks() -> None:
    cluster = MemoryCluster()
    pod = {"spec": {"containers": [{"env": [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
            "name": "backend-injector-credentials", "key": "access-key-id"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
            "name": "backend-injector-credentials", "key": "secret-access-key"}}},
        {"name": "PLAIN", "value": "x"}]}]}}
    wanted = sorted(set(credentials.references(pod)))
    assert len(wanted) == 2
    assert credentials.missing_references(cluster, "flts", wanted) == [
        "backend-injector-credentials/access-key-id",
        "backend-injector-credentials/secret-access-key"]
    add_source(cluster, "flts", **{"access-key-id": b64(ACCESS)})
    assert credentials.missing_references(cluster, "flts", wanted) == [
        "backend-injector-credentials/secret-access-key"]
