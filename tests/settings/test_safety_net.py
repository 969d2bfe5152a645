"""The safety net's settings: the switch, the configured addresses, and the IPs known from
the settings alone (an external host that is an IP, or a configured one)."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from webhook.settings import (
    ConfigError,
    default_document,
    describe,
    hosts_without_address,
    known_addresses,
    literal_ip,
    load_settings,
)
from webhook.settings.schema import config_schema

VALIDATOR = jsonschema.Draft202012Validator(config_schema())


def test_by_default_the_net_is_on_and_no_address_is_known() -> None:
    settings = load_settings(environ={})
    assert settings.safety_net.host_aliases is True
    assert settings.safety_net.addresses == ()
    assert known_addresses(settings) == {}
    assert hosts_without_address(settings) == ["host.docker.internal"]
    assert default_document()["safety_net"] == {"host_aliases": True, "addresses": {}}


def test_a_configured_address_is_known(tmp_path: Path) -> None:
    settings = load_settings(config_file=_write(tmp_path, (
        "safety_net:\n  addresses:\n    Host.Docker.Internal: 192.168.65.254\n")), environ={})
    assert settings.safety_net.addresses == (("host.docker.internal", "192.168.65.254"),)
    assert known_addresses(settings) == {"host.docker.internal": "192.168.65.254"}
    assert hosts_without_address(settings) == []
    assert describe(settings)["addresses"] == {"host.docker.internal": "192.168.65.254"}


def test_ipv6_addresses_are_kept_in_canonical_form(tmp_path: Path) -> None:
    settings = load_settings(config_file=_write(tmp_path, (
        "safety_net:\n  addresses:\n    backend.example: '2001:DB8:0:0::7'\n"
        "services:\n  mlflow:\n    external: {host: backend.example, port: 5000}\n")),
        environ={})
    assert known_addresses(settings)["backend.example"] == "2001:db8::7"


def test_an_external_host_that_is_an_ip_needs_no_configuration() -> None:
    settings = load_settings(environ={}, overrides={"external_host": "10.0.0.7"})
    assert known_addresses(settings) == {"10.0.0.7": "10.0.0.7"}
    assert hosts_without_address(settings) == []


def test_addresses_of_hosts_no_service_uses_are_not_known(tmp_path: Path) -> None:
    settings = load_settings(config_file=_write(tmp_path, (
        "safety_net:\n  addresses:\n    elsewhere.example: 10.0.0.9\n")), environ={})
    assert known_addresses(settings) == {}
    assert hosts_without_address(settings) == ["host.docker.internal"]


def test_the_switch_turns_every_address_off(tmp_path: Path) -> None:
    settings = load_settings(config_file=_write(tmp_path, (
        "safety_net:\n  host_aliases: false\n  addresses:\n"
        "    host.docker.internal: 192.168.65.254\n")), environ={})
    assert settings.safety_net.host_aliases is False
    assert known_addresses(settings) == {}
    assert hosts_without_address(settings) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("safety_net: {host_aliases: 'yes'}\n",
         r"^safety_net\.host_aliases must be true or false, not 'yes'$"),
        ("safety_net: {addresses: [192.168.65.254]}\n",
         r"^safety_net\.addresses must be a mapping$"),
        ("safety_net: {addresses: {host.docker.internal: 999.1.1.1}}\n",
         r"^safety_net\.addresses\.host\.docker\.internal must be an IPv4 or IPv6 address, "
         r"not '999\.1\.1\.1'$"),
        ("safety_net: {addresses: {host.docker.internal: 'fe80::1%eth0'}}\n",
         "must be an IPv4 or IPv6 address"),
        ("safety_net: {addresses: {host.docker.internal: '::ffff:10.0.0.1'}}\n",
         "must be an IPv4 or IPv6 address"),
        ("safety_net: {addresses: {host.docker.internal: 5}}\n",
         "must be an IPv4 or IPv6 address, not 5$"),
        ("safety_net: {addresses: {10.0.0.1: 10.0.0.2}}\n",
         r"10\.0\.0\.1 is an IP address already; it needs no entry$"),
        ("safety_net: {addresses: {'-bad-': 10.0.0.2}}\n",
         r"^safety_net\.addresses\.-bad-: '-bad-' is not a valid name here"),
        ("safety_net: {adresses: {}}\n",
         r"^unknown key safety_net\.adresses \(did you mean addresses\?\)$"),
    ],
)
def test_bad_values_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config, environ={})
    line = str(caught.value).removeprefix(f"{config}: ")
    assert "\n" not in line
    assert re.search(message, line), line


@pytest.mark.parametrize(
    ("document", "valid"),
    [
        ({"addresses": {"host.docker.internal": "192.168.65.254"}}, True),
        ({"addresses": {"host.docker.internal": "2001:db8::1"}}, True),
        ({"host_aliases": False}, True),
        ({"addresses": {"host.docker.internal": "a-name"}}, False),
        ({"addresses": {"bad_host": "10.0.0.1"}}, False),
        ({"host_aliases": "no"}, False),
        ({"colour": "blue"}, False),
    ],
)
def test_the_schema_says_the_same(document: dict[str, object], valid: bool) -> None:
    full = {**default_document(), "safety_net": document}
    assert VALIDATOR.is_valid(full) is valid


@pytest.mark.parametrize(
    ("host", "expected"),
    [("10.0.0.1", "10.0.0.1"), ("2001:DB8::1", "2001:db8::1"), ("host.docker.internal", None),
     ("010.0.0.1", None), ("fe80::1%eth0", None), ("::ffff:10.0.0.1", None)],
)
def test_literal_ips_are_those_the_apiserver_takes(host: str, expected: str | None) -> None:
    assert literal_ip(host) == expected


def _write(tmp_path: Path, text: str) -> Path:
    yaml.safe_load(text)  # the test's own document is valid YAML
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return config
