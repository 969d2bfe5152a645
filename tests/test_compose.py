"""``backend-injector config --from-compose``: MLflow, MinIO and the gateway found in a docker
compose file, their published host ports in the configuration, and the credentials named by
the variables that hold them, never by their values.

The expected ports below are read off each compose file by hand: the host side of the entry
that publishes the container port the service listens on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_process import run_cli
from webhook.compose.credentials import minio_credentials
from webhook.compose.discovery import Discovery, discover
from webhook.compose.files import env_file_reader, project_variables, read_compose_file
from webhook.compose.interpolation import interpolate, sole_reference
from webhook.compose.ports import PortMapping, port_mappings
from webhook.compose.roles import Evidence
from webhook.settings import ConfigError, Settings, load_settings

SECRET = "s3cr3t-value"
SECRET_USER = "root-user-value"

COMPOSE = f"""
services:
  mlflow:
    image: ghcr.io/mlflow/mlflow:v2.14.1
    command: >
      mlflow server --host 0.0.0.0 --port 5001
      --backend-store-uri postgresql://mlflow:{SECRET}@db/mlflow
    ports:
      - "${{MLFLOW_PORT:-5050}}:5001"
  minio:
    image: quay.io/minio/minio:RELEASE.2024-05-10T01-41-38Z
    command: server /data --console-address ":9001"
    environment:
      MINIO_ROOT_USER: {SECRET_USER}
      MINIO_ROOT_PASSWORD: {SECRET}
    ports:
      - target: 9001
        published: "9091"
      - target: 9000
        published: "19000"
        host_ip: 127.0.0.1
        protocol: tcp
  fastapi-app:
    build: ./gateway
    ports:
      - 8080:8000
  db:
    image: postgres:16
    environment:
      - POSTGRES_PASSWORD={SECRET}
    ports: ["${{PG_PORT}}:5432"]
"""


def no_env_files(path: str) -> frozenset[str] | None:
    return None


def found_ports(discovery: Discovery) -> dict[str, tuple[str, int | None, int | None]]:
    return {found.role.key: (found.service, found.container_port, found.host_port)
            for found in discovery.found}


def run_discover(compose: Any, variables: dict[str, str] | None = None,
                 chosen: dict[str, str] | None = None,
                 env_files: dict[str, frozenset[str]] | None = None) -> Discovery:
    return discover(compose, variables=variables or {}, chosen=chosen or {},
                    env_file_names=(env_files or {}).get)


def written(tmp_path: Path, text: str, name: str = "compose.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def external_ports(settings: Settings) -> dict[str, int]:
    return {s.name: s.external.port for s in settings.services if s.external is not None}


def load_printed(tmp_path: Path, result: subprocess.CompletedProcess[str]) -> Settings:
    """The printed configuration through the real loader, as a --config file."""
    assert result.returncode == 0, result.stderr
    path = tmp_path / "printed-config.yaml"
    path.write_text(result.stdout)
    return load_settings(config_file=path, environ={})


# --- ports ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "container_port", "host_port", "host_ip", "protocol"), [
    ("5000:5000", 5000, 5000, None, "tcp"),
    ("15000:5000", 5000, 15000, None, "tcp"),
    ("127.0.0.1:9000:9000", 9000, 9000, "127.0.0.1", "tcp"),
    ("9000", 9000, None, None, "tcp"),  # Docker picks the host port
    ("127.0.0.1::5000", 5000, None, "127.0.0.1", "tcp"),
    ("9090-9091:8080-8081", 8081, 9091, None, "tcp"),
    ("8000-9000:80", 80, None, None, "tcp"),  # one host port of the range, picked at start
    ("3000-3005", 3002, None, None, "tcp"),
    ("::1:6000:6000", 6000, 6000, "::1", "tcp"),
    ("[::1]:6001:6001", 6001, 6001, "::1", "tcp"),
    ("6060:6060/udp", 6060, 6060, None, "udp"),
    (5000, 5000, None, None, "tcp"),
    ({"target": 9000, "published": "9000", "host_ip": "127.0.0.1", "protocol": "tcp"},
     9000, 9000, "127.0.0.1", "tcp"),
    ({"target": 9000, "published": 19000}, 9000, 19000, None, "tcp"),
    ({"target": 80, "published": "8083-9000"}, 80, None, None, "tcp"),
    ({"target": 9000}, 9000, None, None, "tcp"),
])
def test_each_port_syntax_gives_the_host_port(entry: Any, container_port: int,
                                              host_port: int | None, host_ip: str | None,
                                              protocol: str) -> None:
    [mapping] = port_mappings([entry], {}, "ports")
    assert mapping.host_port(container_port) == host_port
    assert (mapping.host_ip, mapping.protocol) == (host_ip, protocol)


def test_a_port_outside_the_entry_is_not_published_by_it() -> None:
    mapping = PortMapping(target=(8080, 8081), published=(9090, 9091), host_ip=None,
                          protocol="tcp")
    assert mapping.host_port(8082) is None
    assert mapping.host_port(8080) == 9090


@pytest.mark.parametrize(("entry", "message"), [
    ("abc", "not a port"),
    ("70000:5000", "from 1 to 65535"),
    ("5000:5_000", "not a port"),
    ({"published": "5000"}, "needs a target"),
    ({"target": "${NOPE}"}, "target: variable NOPE is not set"),
    (["5000"], "neither a port string nor a mapping"),
])
def test_a_bad_entry_names_its_place(entry: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        port_mappings(["1:1", entry], {}, "services.api.ports")
    assert str(raised.value).startswith("services.api.ports[1]")
    assert message in str(raised.value)


def test_an_entry_is_quoted_as_written_not_as_interpolated() -> None:
    with pytest.raises(ConfigError) as raised:
        port_mappings(["${WEIRD}:5000"], {"WEIRD": "not-a-port-value"}, "ports")
    assert "${WEIRD}:5000" in str(raised.value)
    assert "not-a-port-value" not in str(raised.value)


# --- interpolation --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "variables", "expected"), [
    ("${PORT:-5000}", {}, "5000"),
    ("${PORT:-5000}", {"PORT": "5100"}, "5100"),
    ("${PORT:-5000}", {"PORT": ""}, "5000"),  # ":" counts empty as unset
    ("${PORT-5000}", {"PORT": ""}, ""),  # without ":" only unset is unset
    ("$PORT:$PORT", {"PORT": "7"}, "7:7"),
    ("${PORT:-${BASE:-6000}}", {}, "6000"),
    ("${PORT:+9000}", {"PORT": "x"}, "9000"),
    ("${PORT:+9000}", {}, ""),
    ("$$PORT", {}, "$PORT"),
    ("cost $", {}, "cost $"),
    ("${PORT:?set it}", {"PORT": "1"}, "1"),
])
def test_compose_substitutions(text: str, variables: dict[str, str], expected: str) -> None:
    assert interpolate(text, variables) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("${PORT}", "variable PORT is not set and has no default"),
    ("${PORT:?give MLflow a port}", "variable PORT is required: give MLflow a port"),
    ("${PORT", "unclosed"),
    ("${PORT/5/6}", "no such substitution"),
    ("${}", "not a variable reference"),
])
def test_an_unresolvable_reference_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        interpolate(text, {})


@pytest.mark.parametrize(("text", "expected"), [
    ("${MINIO_PASSWORD}", ("MINIO_PASSWORD", False)),
    ("$MINIO_PASSWORD", ("MINIO_PASSWORD", False)),
    ("${MINIO_PASSWORD:-fallback}", ("MINIO_PASSWORD", True)),
    ("${A}${B}", None),
    ("prefix${A}", None),
    ("$$A", None),
    ("literal-value", None),
])
def test_a_value_names_its_variable_only_when_it_is_one_reference(
        text: str, expected: tuple[str, bool] | None) -> None:
    assert sole_reference(text) == expected


# --- discovery ------------------------------------------------------------------------------


def test_the_three_backends_are_found_by_image_command_and_name() -> None:
    compose = yaml.safe_load(COMPOSE)
    discovery = run_discover(compose)
    assert found_ports(discovery) == {
        "mlflow": ("mlflow", 5001, 5050),  # --port 5001 in its command, ${MLFLOW_PORT:-5050}
        "minio": ("minio", 9000, 19000),  # the S3 API, not the console's 9091
        "fastapi": ("fastapi-app", 8000, 8080),  # the first published port
    }
    evidence = {found.role.key: found.evidence for found in discovery.found}
    assert evidence == {"mlflow": Evidence.IMAGE, "minio": Evidence.IMAGE,
                        "fastapi": Evidence.NAME}
    assert [found.host_ip for found in discovery.found] == [None, "127.0.0.1", None]
    # db's ${PG_PORT} is unset: it is no backend, so its ports are never read.
    assert discovery.warnings == ()


@pytest.mark.parametrize("image", ["minio/minio", "quay.io/minio/minio:latest",
                                   "bitnami/minio:2024.5.10", "docker.io/minio/minio@sha256:ab"])
def test_minio_images(image: str) -> None:
    compose = {"services": {"storage": {"image": image, "ports": ["9000:9000"]}}}
    assert found_ports(run_discover(compose))["minio"] == ("storage", 9000, 9000)


def test_minio_client_is_not_minio() -> None:
    compose = {"services": {"setup": {"image": "minio/mc"},
                            "minio": {"build": ".", "ports": ["9100:9000"]}}}
    assert found_ports(run_discover(compose))["minio"] == ("minio", 9000, 9100)


def test_minio_address_flag_moves_the_api_port() -> None:
    compose = {"services": {"minio": {"image": "minio/minio",
                                      "command": ["server", "/data", "--address", ":9100"],
                                      "ports": ["9000:9000", "19100:9100"]}}}
    assert found_ports(run_discover(compose))["minio"] == ("minio", 9100, 19100)


@pytest.mark.parametrize(("service", "expected"), [
    ({"image": "python:3.12", "command": ["sh", "-c", "pip install mlflow && mlflow server "
                                          "--port=5500"], "ports": ["5500:5500"]}, 5500),
    ({"image": "ghcr.io/mlflow/mlflow", "entrypoint": "mlflow server -p 5600",
      "ports": ["15600:5600"]}, 15600),
    ({"image": "ghcr.io/mlflow/mlflow", "command": "mlflow server --port ${MLFLOW_PORT:-5700}",
      "ports": ["5700:5700"]}, 5700),
    ({"image": "ghcr.io/mlflow/mlflow", "ports": ["127.0.0.1:5000:5000"]}, 5000),
    # -p of another program, with a variable this shell lacks, is not MLflow's port.
    ({"image": "ghcr.io/mlflow/mlflow", "ports": ["5001:5001"],
      "command": ["sh", "-c", "mkdir -p $DATA && mlflow server --port 5001"]}, 5001),
])
def test_mlflow_listens_where_its_command_says(service: dict[str, Any], expected: int) -> None:
    compose = {"services": {"tracking": service}}
    assert found_ports(run_discover(compose))["mlflow"][2] == expected


def test_a_port_left_to_the_container_s_shell_is_said_and_the_default_assumed() -> None:
    compose = {"services": {"mlflow": {"image": "ghcr.io/mlflow/mlflow", "ports": ["5000:5000"],
                                       "command": "mlflow server --port $$PORT"}}}
    discovery = run_discover(compose)
    assert found_ports(discovery)["mlflow"] == ("mlflow", 5000, 5000)
    assert discovery.warnings[0] == ("cannot read the port of --port in "
                                     "services.mlflow.command; assuming 5000")


@pytest.mark.parametrize("name", ["fastapi", "fastapi-app", "gateway", "api", "api_gateway",
                                  "fastapi-app-1"])
def test_the_gateway_is_found_by_its_service_name(name: str) -> None:
    compose = {"services": {name: {"build": ".", "ports": ["3000", "8081:8000"]}}}
    # "3000" publishes at a port Docker picks: the first fixed one is 8081.
    assert found_ports(run_discover(compose))["fastapi"] == (name, 8000, 8081)


def test_the_gateway_is_found_by_its_container_name() -> None:
    compose = {"services": {"web": {"build": ".", "container_name": "fastapi_app",
                                    "ports": ["8000:80"]}}}
    assert found_ports(run_discover(compose))["fastapi"] == ("web", 80, 8000)


def test_flags_choose_the_services() -> None:
    compose = {"services": {
        "tracking": {"build": ".", "ports": ["5001:5000"]},
        "blobs": {"build": ".", "ports": ["9002:9000"]},
        "backend": {"build": ".", "ports": ["8001:8000"]},
        "mlflow": {"image": "ghcr.io/mlflow/mlflow", "ports": ["5000:5000"]},
    }}
    chosen = {"mlflow": "tracking", "minio": "blobs", "fastapi": "backend"}
    discovery = run_discover(compose, chosen=chosen)
    assert found_ports(discovery) == {"mlflow": ("tracking", 5000, 5001),
                                      "minio": ("blobs", 9000, 9002),
                                      "fastapi": ("backend", 8000, 8001)}
    assert {found.evidence for found in discovery.found} == {Evidence.CHOSEN}


def test_a_chosen_service_that_is_not_there_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--gateway-service web: the compose file has no such "
                                          "service"):
        run_discover({"services": {"api": {}}}, chosen={"fastapi": "web"})


def test_missing_backends_are_warnings_naming_what_was_looked_for() -> None:
    compose = {"services": {"redis": {"image": "redis", "ports": ["6379:6379"]}}}
    discovery = run_discover(compose)
    assert discovery.found == ()
    assert discovery.credentials is None
    assert len(discovery.warnings) == 3
    mlflow, minio, gateway = discovery.warnings
    assert mlflow.startswith("no MLflow service found") and "--mlflow-service" in mlflow
    assert "ghcr.io/mlflow/mlflow" in mlflow and "mlflow-server" in mlflow
    assert minio.startswith("no MinIO service found") and "--minio-service" in minio
    assert "fastapi-app" in gateway and "--gateway-service" in gateway


def test_a_backend_that_publishes_no_fixed_port_keeps_its_address() -> None:
    compose = {"services": {"minio": {"image": "minio/minio", "ports": ["9001:9001", "9000"]}}}
    discovery = run_discover(compose)
    assert found_ports(discovery)["minio"] == ("minio", 9000, None)
    assert any("does not publish container port 9000" in w for w in discovery.warnings)


def test_two_candidates_are_a_warning_and_the_first_is_used() -> None:
    compose = {"services": {"minio1": {"image": "minio/minio", "ports": ["9000:9000"]},
                            "minio2": {"image": "minio/minio", "ports": ["9100:9000"]}}}
    discovery = run_discover(compose)
    assert found_ports(discovery)["minio"] == ("minio1", 9000, 9000)
    assert any("minio1, minio2" in w and "--minio-service" in w for w in discovery.warnings)


def test_the_host_network_publishes_the_listening_port() -> None:
    compose = {"services": {"mlflow": {"image": "ghcr.io/mlflow/mlflow",
                                       "network_mode": "host"}}}
    assert found_ports(run_discover(compose))["mlflow"] == ("mlflow", 5000, 5000)


def test_an_unset_variable_in_a_backend_port_is_an_error_naming_the_field() -> None:
    compose = {"services": {"mlflow": {"image": "ghcr.io/mlflow/mlflow",
                                       "ports": ["5000:5000", "${MLFLOW_PORT}:5000"]}}}
    with pytest.raises(ConfigError) as raised:
        run_discover(compose)
    assert str(raised.value).startswith("services.mlflow.ports[1]")
    assert "MLFLOW_PORT is not set" in str(raised.value)


def test_variables_resolve_ports() -> None:
    compose = {"services": {"mlflow": {"image": "ghcr.io/mlflow/mlflow",
                                       "ports": ["${MLFLOW_PORT:-5000}:5000"]}}}
    discovery = run_discover(compose, variables={"MLFLOW_PORT": "5999"})
    assert found_ports(discovery)["mlflow"][2] == 5999


@pytest.mark.parametrize("compose", [None, "text", [], {"version": "3"}, {"services": {}},
                                     {"services": ["mlflow"]}])
def test_not_a_compose_file(compose: Any) -> None:
    with pytest.raises(ConfigError, match="not a compose file"):
        run_discover(compose)


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("environment", [
    {"MINIO_ROOT_USER": SECRET_USER, "MINIO_ROOT_PASSWORD": SECRET},
    [f"MINIO_ROOT_USER={SECRET_USER}", f"MINIO_ROOT_PASSWORD={SECRET}"],
])
def test_credentials_in_the_environment_list_or_mapping(environment: Any) -> None:
    credentials = minio_credentials("minio", {"environment": environment}, no_env_files)
    assert credentials.user is not None and credentials.password is not None
    assert (credentials.user.name, credentials.user.where) == ("MINIO_ROOT_USER", "environment")
    assert credentials.password.name == "MINIO_ROOT_PASSWORD"
    assert SECRET not in repr(credentials) and SECRET_USER not in repr(credentials)


def test_credentials_in_env_files_the_environment_winning() -> None:
    service = {"env_file": ["./base.env", {"path": "./minio.env", "required": False}],
               "environment": ["MINIO_ROOT_USER"]}
    names = {"./base.env": frozenset({"MINIO_ROOT_PASSWORD", "OTHER"}),
             "./minio.env": frozenset({"MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER"})}
    credentials = minio_credentials("minio", service, names.get)
    assert credentials.user is not None and credentials.password is not None
    assert credentials.user.where == "environment"
    assert credentials.user.from_compose_environment
    assert credentials.password.where == "env_file ./minio.env"  # the last file that sets it


def test_the_older_names_and_the_file_forms() -> None:
    service = {"environment": {"MINIO_ACCESS_KEY": "${KEY}",
                               "MINIO_ROOT_PASSWORD_FILE": "/run/secrets/minio"}}
    credentials = minio_credentials("minio", service, no_env_files)
    assert credentials.user is not None and credentials.password is not None
    assert (credentials.user.name, credentials.user.taken_from) == ("MINIO_ACCESS_KEY", "KEY")
    assert credentials.password.name == "MINIO_ROOT_PASSWORD_FILE"


def test_no_credentials_is_minio_s_default_and_a_missing_env_file_a_warning() -> None:
    credentials = minio_credentials("minio", {"env_file": "./gone.env"}, no_env_files)
    assert credentials.user is None and credentials.password is None
    assert credentials.warnings == ("cannot read env_file ./gone.env of compose service minio",)


# --- files ----------------------------------------------------------------------------------


def test_ports_are_read_as_compose_reads_them(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 8022:22 as the base-60 number 481342; Compose, as a string.
    path = written(tmp_path, "services:\n  api:\n    ports:\n      - 8022:22\n      - 0x10\n")
    assert read_compose_file(path)["services"]["api"]["ports"] == ["8022:22", 16]


def test_the_process_environment_wins_over_the_project_env_file(tmp_path: Path) -> None:
    compose = written(tmp_path, "services: {}\n")
    (tmp_path / ".env").write_text("# ports\nMLFLOW_PORT=5100\nexport MINIO_PORT='9100'\n"
                                   "GATEWAY_PORT=8100 # the gateway\nUNSET_NAME\n")
    variables = project_variables(compose, {"MLFLOW_PORT": "5200"})
    assert variables["MLFLOW_PORT"] == "5200"
    assert variables["MINIO_PORT"] == "9100"
    assert variables["GATEWAY_PORT"] == "8100"
    assert "UNSET_NAME" not in variables


def test_an_env_file_gives_names_only(tmp_path: Path) -> None:
    compose = written(tmp_path, "services: {}\n")
    (tmp_path / "minio.env").write_text(f"MINIO_ROOT_USER={SECRET_USER}\n"
                                        f"MINIO_ROOT_PASSWORD: {SECRET}\n# MINIO_OLD=x\n")
    reader = env_file_reader(compose)
    assert reader("minio.env") == frozenset({"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"})
    assert reader("absent.env") is None


# --- the command ----------------------------------------------------------------------------


def test_a_compose_file_becomes_a_configuration_without_a_secret(tmp_path: Path) -> None:
    compose = written(tmp_path, COMPOSE)
    result = run_cli("config", "--from-compose", str(compose))
    settings = load_printed(tmp_path, result)
    assert external_ports(settings) == {"mlflow": 5050, "minio": 19000, "fastapi": 8080}
    assert {s.external.host for s in settings.services if s.external} == {"host.docker.internal"}
    assert dict(settings.env)["MLFLOW_TRACKING_URI"] == "http://host.docker.internal:5050"
    for value in (SECRET, SECRET_USER):
        assert value not in result.stdout and value not in result.stderr
    comments = " ".join(line.lstrip("#").strip() for line in result.stdout.splitlines()
                        if line.startswith("#"))
    assert "MINIO_ROOT_USER" in comments and "MINIO_ROOT_PASSWORD" in comments
    assert "BACKEND_INJECTOR_ACCESS_KEY_ID = the value of MINIO_ROOT_USER" in comments
    assert "BACKEND_INJECTOR_SECRET_ACCESS_KEY = the value of MINIO_ROOT_PASSWORD" in comments
    assert result.stderr == ""


def test_secrets_from_env_files_and_variables_stay_out_of_the_output(tmp_path: Path) -> None:
    compose = written(tmp_path, """
services:
  minio:
    image: bitnami/minio
    env_file: [minio.env]
    environment:
      - MINIO_ROOT_USER=${MINIO_USER:-admin-default-value}
    ports: ["${MINIO_PORT}:9000"]
""")
    (tmp_path / "minio.env").write_text(f"MINIO_ROOT_PASSWORD={SECRET}\n")
    (tmp_path / ".env").write_text(f"MINIO_PORT=9400\nMINIO_USER={SECRET_USER}\n")
    result = run_cli("config", "--from-compose", str(compose))
    settings = load_printed(tmp_path, result)
    assert external_ports(settings)["minio"] == 9400
    everything = result.stdout + result.stderr
    for value in (SECRET, SECRET_USER, "admin-default-value"):
        assert value not in everything
    assert "the value of MINIO_USER" in " ".join(result.stdout.split())
    assert "MINIO_ROOT_PASSWORD in minio.env" in " ".join(result.stdout.replace("#", "").split())


def test_missing_services_keep_the_default_with_one_warning_line_each(tmp_path: Path) -> None:
    compose = written(tmp_path, """
services:
  mlflow:
    image: ghcr.io/mlflow/mlflow
    ports: ["5005:5000"]
  redis:
    image: redis
""")
    result = run_cli("config", "--from-compose", str(compose))
    settings = load_printed(tmp_path, result)
    assert external_ports(settings) == {"mlflow": 5005, "minio": 9000, "fastapi": 8000}
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2
    assert all(line.startswith("backend-injector config: warning: ") for line in warnings)
    assert "no MinIO service found" in warnings[0] and "quay.io/minio/minio" in warnings[0]
    assert "no FastAPI gateway service found" in warnings[1]


def test_flags_choose_services_and_move_the_host(tmp_path: Path) -> None:
    compose = written(tmp_path, """
services:
  storage:
    build: ./storage
    ports: ["127.0.0.1:9300:9000"]
  web:
    build: ./web
    ports:
      - target: 80
        published: 8300
""")
    target = tmp_path / "generated.yaml"
    result = run_cli("config", "--from-compose", str(compose), "--minio-service", "storage",
                     "--gateway-service", "web", "--external-host", "192.168.65.254",
                     "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    settings = load_settings(config_file=target, environ={})
    assert {name: str(s.external) for name, s in ((s.name, s) for s in settings.services)
            if s.external} == {"mlflow": "192.168.65.254:5000", "minio": "192.168.65.254:9300",
                               "fastapi": "192.168.65.254:8300"}


def test_the_compose_ports_go_over_a_configuration_file(tmp_path: Path) -> None:
    config = written(tmp_path, "action: rewrite\nservices:\n  mlflow:\n    hosts: [tracking]\n",
                     "config.yaml")
    compose = written(tmp_path, "services:\n  mlflow:\n    image: ghcr.io/mlflow/mlflow\n"
                                "    ports: ['5100:5000']\n")
    result = run_cli("config", "--config", str(config), "--from-compose", str(compose))
    settings = load_printed(tmp_path, result)
    assert settings.action.value == "rewrite"
    mlflow = next(s for s in settings.services if s.name == "mlflow")
    assert (mlflow.hosts, str(mlflow.external)) == (("tracking",), "host.docker.internal:5100")


@pytest.mark.parametrize(("text", "expected"), [
    ("services: [\n", ":2:1: not valid YAML"),
    ("name: project\n", "not a compose file: it has no services"),
    ("services:\n  mlflow:\n    image: ghcr.io/mlflow/mlflow\n    ports: ['${TRACKING}:5000']\n",
     "services.mlflow.ports[0] ('${TRACKING}:5000'): variable TRACKING is not set"),
])
def test_an_unusable_compose_file_is_one_line_exit_2(tmp_path: Path, text: str,
                                                     expected: str) -> None:
    compose = written(tmp_path, text)
    result = run_cli("config", "--from-compose", str(compose))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"backend-injector config: {compose}")
    assert expected in lines[0]
    assert result.stdout == ""


def test_a_missing_compose_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("config", "--from-compose", str(tmp_path / "absent.yml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"backend-injector config: cannot read compose file "
                                     f"{tmp_path / 'absent.yml'}: No such file or directory")
