"""The platform presets: each platform's name for this machine becomes the external host of the
services that name none, and the order in which the sources win.

The expected names are written from each platform's documentation (the sources are beside the
table in webhook/settings/platforms.py and in the README), not read back from the table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from webhook.settings import (
    DEFAULT_EXTERNAL_HOST,
    PLATFORMS,
    ConfigError,
    EnvironmentConfigError,
    Settings,
    load_settings,
    owner_of,
)
from webhook.settings.platforms import DEFAULT_PLATFORM
from webhook.settings.schema import HOSTNAME, PLATFORM_NAMES, config_schema

DOCUMENTED = {
    "docker-desktop": "host.docker.internal",
    "minikube": "host.minikube.internal",
    "k3d": "host.k3d.internal",
    "rancher-desktop": "host.rancher-desktop.internal",
    "orbstack": "host.orb.internal",
    "colima": "host.lima.internal",
}
EXTERNAL_SERVICES = ("mlflow", "minio", "fastapi")


def external_hosts(settings: Settings) -> dict[str, str]:
    return {service.name: service.external.host for service in settings.services
            if service.external is not None}


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("platform", "alias"), sorted(DOCUMENTED.items()))
def test_each_platform_points_every_service_and_variable_at_its_documented_name(
        platform: str, alias: str) -> None:
    settings = load_settings(environ={}, overrides={"platform": platform})
    assert external_hosts(settings) == dict.fromkeys(EXTERNAL_SERVICES, alias)
    env = dict(settings.env)
    assert env["MLFLOW_TRACKING_URI"] == f"http://{alias}:5000"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{alias}:9000"
    assert env["GATEWAY_URL"] == f"http://{alias}:8000"


def test_the_table_the_schema_and_the_documented_names_agree() -> None:
    assert tuple(platform.name for platform in PLATFORMS) == PLATFORM_NAMES
    assert {p.name: p.host for p in PLATFORMS if p.host is not None} == DOCUMENTED
    assert config_schema()["properties"]["platform"]["enum"] == list(PLATFORM_NAMES)
    assert config_schema()["properties"]["platform"]["default"] == DEFAULT_PLATFORM


def test_every_name_is_a_host_name_the_settings_accept() -> None:
    for platform in PLATFORMS:
        for host in platform.hosts:
            assert re.match(HOSTNAME, host), host


def test_no_platform_is_docker_desktop_as_before() -> None:
    assert DOCUMENTED[DEFAULT_PLATFORM] == DEFAULT_EXTERNAL_HOST
    assert external_hosts(load_settings(environ={})) == dict.fromkeys(
        EXTERNAL_SERVICES, DEFAULT_EXTERNAL_HOST)


def test_owner_of_names_the_platform_whose_own_name_it_is() -> None:
    owner = owner_of("HOST.Minikube.Internal")
    assert owner is not None and owner.name == "minikube"
    # Other platforms resolve host.docker.internal too, but it is Docker Desktop's own name.
    docker = owner_of("host.docker.internal")
    assert docker is not None and docker.name == "docker-desktop"
    assert owner_of("minio.example.com") is None


# --- kind, which has no name for the machine --------------------------------------------------


def test_kind_without_an_address_is_one_line_that_asks_for_one() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={}, overrides={"platform": "kind"})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("platform kind has no host name pods can use: give "
                              "--external-host ADDRESS")
    assert "docker network inspect kind" in message
    assert message.endswith("for mlflow, minio, fastapi")


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_kind_takes_the_address_from_the_flag_or_the_variable(source: str) -> None:
    if source == "flag":
        settings = load_settings(environ={}, overrides={"platform": "kind",
                                                        "external_host": "172.18.0.1"})
    else:
        settings = load_settings(environ={"BACKEND_INJECTOR_PLATFORM": "kind",
                                          "BACKEND_INJECTOR_EXTERNAL_HOST": "172.18.0.1"})
    assert external_hosts(settings) == dict.fromkeys(EXTERNAL_SERVICES, "172.18.0.1")
    assert dict(settings.env)["GATEWAY_URL"] == "http://172.18.0.1:8000"


def test_kind_asks_only_for_the_services_the_file_gives_no_host(tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: kind\nservices:\n"
                                 "  mlflow: {external: {host: 172.18.0.1, port: 5000}}\n")
    with pytest.raises(ConfigError, match=r"for minio, fastapi$"):
        load_settings(config_file=path, environ={})
    path.write_text("platform: kind\nservices:\n"
                    "  mlflow: {external: {host: 172.18.0.1, port: 5000}}\n"
                    "  minio: {external: {host: 172.18.0.1, port: 9000}}\n"
                    "  fastapi: {external: {host: 172.18.0.1, port: 8000}}\n")
    assert set(external_hosts(load_settings(config_file=path, environ={})).values()) == {
        "172.18.0.1"}


# --- which source wins --------------------------------------------------------------------------


def test_the_platform_comes_from_the_flag_then_the_variable_then_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: k3d\n")
    environ = {"BACKEND_INJECTOR_PLATFORM": "colima"}
    assert external_hosts(load_settings(config_file=path, environ={}))["mlflow"] == \
        "host.k3d.internal"
    assert external_hosts(load_settings(config_file=path, environ=environ))["mlflow"] == \
        "host.lima.internal"
    flagged = load_settings(config_file=path, environ=environ, overrides={"platform": "minikube"})
    assert external_hosts(flagged)["mlflow"] == "host.minikube.internal"


def test_a_service_host_in_the_file_wins_over_the_platform(tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: minikube\nservices:\n"
                                 "  minio: {external: {host: minio.example.com, port: 9000}}\n")
    settings = load_settings(config_file=path, environ={})
    assert external_hosts(settings) == {"mlflow": "host.minikube.internal",
                                        "minio": "minio.example.com",
                                        "fastapi": "host.minikube.internal"}
    assert dict(settings.env)["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.example.com:9000"


def test_the_external_host_variable_and_flag_win_over_the_file_and_the_platform(
        tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: minikube\nservices:\n"
                                 "  minio: {external: {host: minio.example.com, port: 9000}}\n")
    environ = {"BACKEND_INJECTOR_EXTERNAL_HOST": "10.0.0.7"}
    from_variable = load_settings(config_file=path, environ=environ)
    assert set(external_hosts(from_variable).values()) == {"10.0.0.7"}
    from_flag = load_settings(config_file=path, environ=environ,
                              overrides={"external_host": "10.0.0.8"})
    assert set(external_hosts(from_flag).values()) == {"10.0.0.8"}


def test_a_new_service_with_a_port_only_gets_the_platform_host(tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: orbstack\nservices:\n"
                                 "  redis: {hosts: [redis], external: {port: 6379}}\n")
    settings = load_settings(config_file=path, environ={})
    assert external_hosts(settings)["redis"] == "host.orb.internal"


# --- unknown names ------------------------------------------------------------------------------


def test_an_unknown_platform_in_the_file_names_the_file_and_every_platform(
        tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: microk8s\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file=path, environ={})
    assert str(raised.value) == (
        f"{path}: platform: unknown platform 'microk8s'; the platforms are docker-desktop, "
        "minikube, k3d, kind, rancher-desktop, orbstack, colima")


def test_an_unknown_platform_in_the_variable_is_named_by_the_variable() -> None:
    with pytest.raises(EnvironmentConfigError) as raised:
        load_settings(environ={"BACKEND_INJECTOR_PLATFORM": "Minikube"})
    assert str(raised.value).startswith(
        "environment variable BACKEND_INJECTOR_PLATFORM: unknown platform 'Minikube'; ")


def test_a_platform_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    path = config_file(tmp_path, "platform: [kind]\n")
    with pytest.raises(ConfigError, match="unknown platform"):
        load_settings(config_file=path, environ={})
