"""The policy twin's safety net: present only when an IP is known at generation, grouped as
the rules group it, and built of RE2-shaped regexes with every variable defined before use.

What the CEL does to pods was compared with the webhook's rules against a real apiserver
(docs/policy.md, "What differs"); here, what Python can check.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import make_settings
from webhook.policy import objects as policy
from webhook.policy.host_aliases import addresses_by_ip, reachable_hosts
from webhook.policy.mutation import policy_regexes
from webhook.rules.host_aliases import host_alias_operations
from webhook.settings import known_addresses

RE2_UNSUPPORTED = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?>|\\[1-9]|[*+?}]\+")
ADDRESS = {"host.docker.internal": "192.168.65.254"}


def spec_of(settings: Any) -> dict[str, Any]:
    spec: dict[str, Any] = policy.build_policy(settings)[0]["spec"]
    return spec


def test_without_a_known_ip_the_policy_has_no_safety_net() -> None:
    spec = spec_of(make_settings())
    text = str(spec)
    assert "hostAliases" not in text and "aliased" not in text


def test_with_a_configured_ip_the_policy_adds_the_entries(tmp_path: Path) -> None:
    spec = spec_of(make_settings(tmp_path, safety_net={"addresses": ADDRESS}))
    names = [variable["name"] for variable in spec["variables"]]
    assert {"hostAliasEntries", "aliasedNames", "earlierAliased"} <= set(names)
    assert names.index("hostAliasEntries") < names.index("status")
    patch = spec["mutations"][0]["jsonPatch"]["expression"]
    assert '"/spec/hostAliases/-"' in patch and '"/spec/hostAliases"' in patch
    for position, variable in enumerate(spec["variables"]):
        used = set(re.findall(r"variables\.([A-Za-z]+)", variable["expression"]))
        assert used <= set(names[:position]), variable["name"]


def test_a_literal_ip_needs_no_configuration(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, services={
        "mlflow": {"external": {"host": "10.0.0.7", "port": 5000}}})
    assert addresses_by_ip(settings) == {"10.0.0.7": ["mlflow"]}
    assert "hostAliasEntries" in [v["name"] for v in spec_of(settings)["variables"]]


def test_the_switch_leaves_the_policy_without_entries(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, safety_net={"host_aliases": False, "addresses": ADDRESS})
    assert "hostAliases" not in str(spec_of(settings))


def test_the_policy_groups_hosts_by_ip_as_the_rules_do(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, services={
        "minio": {"external": {"host": "s3.example.com", "port": 443}}},
        safety_net={"addresses": {**ADDRESS, "s3.example.com": "10.0.0.5"}})
    pod = {"metadata": {"namespace": "flts"}, "spec": {"containers": []}}
    patch = host_alias_operations(pod, None, settings.services, known_addresses(settings))
    entries = patch.operations[0]["value"]
    assert list(addresses_by_ip(settings)) == [entry["ip"] for entry in entries] == [
        "192.168.65.254", "10.0.0.5"]
    # The status lists the hosts in the order of the services, not grouped by IP.
    assert [host for _, host in reachable_hosts(settings)] == patch.hosts == [
        "mlflow", "minio", "fastapi-app", "fastapi"]
    aliased = next(v["expression"] for v in spec_of(settings)["variables"]
                   if v["name"] == "aliasedNames")
    assert aliased.startswith('["mlflow", "minio", "fastapi-app", "fastapi"].filter(')


def test_every_regex_of_the_safety_net_is_re2_shaped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, safety_net={"addresses": ADDRESS})
    added = policy_regexes(settings) - policy_regexes(make_settings())
    assert added, "the hostname check is a regex of its own"
    for regex in added:
        assert not RE2_UNSUPPORTED.search(regex), regex
        re.compile(regex)
