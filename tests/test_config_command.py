"""``backend-injector config``: the effective settings written out as a configuration file.

What it prints must be a configuration file again: read back with ``--config`` it gives the
same settings as the sources it was printed from. It names where credentials come from and
never prints one.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.cli_process import run_cli
from webhook.config_view import effective_document, header, render
from webhook.settings import Endpoint, Settings, load_settings
from webhook.settings.layers import _SCALAR_VARIABLES


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def comments_of(text: str) -> str:
    """The comment lines above the document, unwrapped into one line."""
    return " ".join(line.lstrip("#").strip() for line in text.splitlines()
                    if line.startswith("#"))


def read_back(tmp_path: Path, text: str, name: str = "printed.yaml") -> Settings:
    """The settings the printed file gives on its own, with nothing else in the environment."""
    path = tmp_path / name
    path.write_text(text)
    return load_settings(config_file=path, environ={})


def test_the_default_printed_reads_back_as_the_default(tmp_path: Path) -> None:
    result = run_cli("config")
    assert result.returncode == 0, result.stderr
    assert read_back(tmp_path, result.stdout) == load_settings(environ={})
    assert result.stdout.startswith("# backend-injector configuration")


def test_every_source_is_applied_and_the_output_reads_back_the_same(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("""
action: rewrite
waiter_names: [wait-for-tracking]
services:
  mlflow: {hosts: [mlflow, tracking], external: {host: mlflow.example.com, port: 5500}}
  redis: {hosts: [redis], external: {host: cache.example.com, port: 6379}}
env:
  GATEWAY_URL: null
  REDIS_URL: "redis://{redis}/0"
  PLAIN: "no address here"
credentials: {mode: value}
safety_net: {addresses: {host.docker.internal: 192.168.65.254}}
""")
    environ = {"BACKEND_INJECTOR_EXTERNAL_HOST": "10.1.2.3", "BACKEND_INJECTOR_PORT": "9443"}
    result = run_cli("config", "--config", str(config), "--action", "remove", env=environ)
    assert result.returncode == 0, result.stderr

    printed = yaml.safe_load(result.stdout)
    assert printed["action"] == "remove"  # the flag over the file
    assert printed["services"]["redis"]["external"] == {"host": "10.1.2.3", "port": 6379}
    assert printed["services"]["mlflow"]["hosts"] == ["mlflow", "tracking"]
    # Templates again, so that the file keeps following a moved service; the dropped default
    # variable is dropped again, or reading the file back would restore it.
    assert printed["env"]["REDIS_URL"] == "redis://{redis}/0"
    assert printed["env"]["MLFLOW_TRACKING_URI"] == "http://{mlflow}"
    assert printed["env"]["PLAIN"] == "no address here"
    assert "GATEWAY_URL" in printed["env"] and printed["env"]["GATEWAY_URL"] is None
    assert printed["waiter_names"] == ["wait-for-tracking"]

    effective = load_settings(config_file=config, environ=environ, overrides={"action": "remove"})
    # On its own the printed file carries what the file, the variables and the flag gave;
    # serving has no file keys, so its port comes back only from the same environment.
    alone = read_back(tmp_path, result.stdout)
    assert replace(alone, serving=effective.serving) == effective
    assert alone.serving.port == 8443
    assert load_settings(config_file=tmp_path / "printed.yaml", environ=environ) == effective

    opening = comments_of(result.stdout)
    assert f"the file {config} (--config)" in opening
    assert "BACKEND_INJECTOR_EXTERNAL_HOST" in opening
    assert "--action" in opening
    assert f"{effective.serving.host}:9443" in opening


def test_the_configuration_file_named_by_the_environment_is_a_source(tmp_path: Path) -> None:
    config = tmp_path / "from-env.yaml"
    config.write_text("action: rewrite\n")
    result = run_cli("config", env={"BACKEND_INJECTOR_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["action"] == "rewrite"
    assert f"{config} (BACKEND_INJECTOR_CONFIG)" in comments_of(result.stdout)


def test_credentials_are_named_by_their_source_and_never_printed(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-held-secret-value\n")
    environ = {"BACKEND_INJECTOR_ACCESS_KEY_ID": "env-held-access-value",
               "BACKEND_INJECTOR_SECRET_ACCESS_KEY": "shadowed-secret-value",
               "BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE": str(secret_file)}
    config = tmp_path / "value-mode.yaml"
    config.write_text("credentials: {mode: value}\n")
    for arguments in ((), ("--config", str(config))):
        result = run_cli("config", *arguments, env=environ)
        assert result.returncode == 0, result.stderr
        everything = result.stdout + result.stderr
        for value in ("env-held-access-value", "shadowed-secret-value", "file-held-secret-value"):
            assert value not in everything
        said = comments_of(result.stdout)
        assert "access key: BACKEND_INJECTOR_ACCESS_KEY_ID secret key:" in said
        # The file form wins, as the settings read it.
        assert "secret key: the file named by BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE" in said


def test_unset_credentials_are_said_to_be_the_development_default() -> None:
    result = run_cli("config")
    assert "access key: nothing (BACKEND_INJECTOR_ACCESS_KEY_ID and" in comments_of(result.stdout)
    assert "minioadmin" not in result.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("services:\n  mlflow: {extrenal: {host: h, port: 1}}\n",
     "unknown key services.mlflow.extrenal (did you mean external?)"),
    ("action: [\n", "not valid YAML"),
    ("credentials: {secret_access_key: x}\n", "may not be set in a configuration file"),
])
def test_a_wrong_file_is_the_same_one_line_error_as_for_other_commands(
        tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "wrong.yaml"
    config.write_text(text)
    line = one_error_line(run_cli("config", "--config", str(config)), 2)
    assert expected in line
    other = one_error_line(run_cli("policy", "--config", str(config)), 2)
    assert line.removeprefix("backend-injector config: ") \
        == other.removeprefix("backend-injector policy: ")


def test_a_bad_environment_variable_is_named() -> None:
    line = one_error_line(run_cli("config", env={"BACKEND_INJECTOR_ACTION": "delete"}), 2)
    assert line.startswith("backend-injector config: environment variable "
                           "BACKEND_INJECTOR_ACTION")


def test_output_goes_to_a_file_with_o(tmp_path: Path) -> None:
    target = tmp_path / "written.yaml"
    result = run_cli("config", "--external-host", "192.168.65.254", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    written = read_back(tmp_path, target.read_text(), name="again.yaml")
    assert {str(s.external) for s in written.services if s.external} \
        == {"192.168.65.254:5000", "192.168.65.254:9000", "192.168.65.254:8000"}


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(run_cli("config", "-o", str(tmp_path / "no" / "such" / "dir.yaml")), 1)
    assert "cannot write" in line and "-o" in line


def test_service_choices_need_a_compose_file() -> None:
    line = one_error_line(run_cli("config", "--minio-service", "storage"), 2)
    assert "--from-compose" in line


def test_its_help_opens_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exited:
        main(["config", "--help"])
    assert exited.value.code == 0
    opening = " ".join(capsys.readouterr().out.split("\n\n")[1].split())
    assert f"config {opening[0].lower()}{opening[1:-1]}" in listing


# --- the document, as functions -------------------------------------------------------------


def test_only_whole_addresses_become_templates(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("""
env:
  NEAR_MISS: "http://host.docker.internal:50001"
  LONGER_HOST: "http://my-host.docker.internal:5000"
  TWO: "{mlflow},{minio}"
""")
    settings = load_settings(config_file=config, environ={})
    env = effective_document(settings)["env"]
    assert env["NEAR_MISS"] == "http://host.docker.internal:50001"
    assert env["LONGER_HOST"] == "http://my-host.docker.internal:5000"
    assert env["TWO"] == "{mlflow},{minio}"
    assert read_back(tmp_path, render(effective_document(settings), [])) == settings


def test_services_sharing_an_address_read_back_the_same(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    shared = Endpoint("gateway.example.com", 443)
    services = tuple(replace(s, external=shared) if s.external else s for s in settings.services)
    env = tuple((name, f"https://{shared}/x") for name, _ in settings.env)
    moved = replace(settings, services=services, env=env)
    assert read_back(tmp_path, render(effective_document(moved), [])) == moved


def test_the_header_lists_only_variables_the_settings_read() -> None:
    # The header names the scalar variables that were set; it must know the same ones as the
    # settings, or it would name a variable that changed nothing (or miss one that did).
    from webhook import config_view

    known = set(config_view._DOCUMENT_VARIABLES) | set(config_view._SERVING_VARIABLES)
    # The platform is read before the file is merged (webhook.settings.platforms), the
    # others after it.
    assert known == set(_SCALAR_VARIABLES) | {"PLATFORM"}
    lines = header(load_settings(environ={}), {"BACKEND_INJECTOR_NOT_A_SETTING": "x",
                                                "BACKEND_INJECTOR_WORKERS": "2"},
                   config_file=None, flags=[])
    assert "BACKEND_INJECTOR_WORKERS" in lines[0]
    assert "NOT_A_SETTING" not in " ".join(lines)


def test_every_comment_line_is_a_comment() -> None:
    text = render({"action": "remove"}, ["x " * 80, "  indented " + "y " * 60, ""])
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["action: remove"]
