"""The chart's copies of the S3 credentials in the namespaces it is told to opt in.

Rendered with the real helm (``helm template``): one Secret per namespace of
``credentials.namespaces``, under the name and keys the webhook's configuration makes pods
reference, holding the chart's values; a second render with new values (what ``helm upgrade``
applies) changes every copy; none without the list; and a copy of ``existingSecret`` is
refused where there is no cluster to read it from.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tool_binaries import find_helm

CHART = Path(__file__).resolve().parents[1] / "charts" / "backend-injector"


def render(*arguments: str) -> subprocess.CompletedProcess[str]:
    binary = find_helm()
    if binary is None:
        pytest.fail("helm is not built: bash tools/build-binaries.sh")
    return subprocess.run([binary, "template", "backend-injector", str(CHART),
                           "--namespace", "backend-injector", *arguments],
                          capture_output=True, text=True, timeout=120, check=False)


def copies(*arguments: str) -> dict[str, dict[str, Any]]:
    result = render(*arguments)
    assert result.returncode == 0, result.stderr
    return {item["metadata"]["namespace"]: item for item in yaml.safe_load_all(result.stdout)
            if item and item["kind"] == "Secret"
            and item["metadata"]["namespace"] != "backend-injector"}


def values_of(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_without_the_list_no_namespace_gets_a_copy() -> None:
    assert copies() == {}


def test_each_listed_namespace_gets_the_secret_pods_reference() -> None:
    found = copies("--set", "credentials.namespaces={flts,team-b}",
                   "--set", "credentials.accessKeyId=team-id",
                   "--set", "credentials.secretAccessKey=team-secret")
    assert sorted(found) == ["flts", "team-b"]
    for secret in found.values():
        assert secret["metadata"]["name"] == "backend-injector-credentials"
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert values_of(secret) == {"access-key-id": "team-id",
                                     "secret-access-key": "team-secret"}


def test_an_upgrade_with_new_values_changes_every_copy() -> None:
    listed = ("--set", "credentials.namespaces={flts,team-b}")
    before = copies(*listed)
    after = copies(*listed, "--set", "credentials.secretAccessKey=rotated")
    assert {ns: values_of(s)["secret-access-key"] for ns, s in after.items()} == {
        "flts": "rotated", "team-b": "rotated"}
    assert all(values_of(s)["secret-access-key"] == "minioadmin" for s in before.values())


def test_the_copies_follow_the_configured_name_and_keys() -> None:
    found = copies("--set", "credentials.namespaces={flts}",
                   "--set", "config.credentials.secret_name=s3",
                   "--set", "config.credentials.access_key_id_key=id",
                   "--set", "config.credentials.secret_access_key_key=key")
    assert found["flts"]["metadata"]["name"] == "s3"
    assert set(found["flts"]["data"]) == {"id", "key"}


def test_copying_an_existing_secret_needs_a_cluster_to_read_it() -> None:
    result = render("--set", "credentials.namespaces={flts}",
                    "--set", "credentials.existingSecret=team-credentials")
    assert result.returncode != 0
    assert "credentials.existingSecret team-credentials, which cannot be read here" in (
        result.stderr)
