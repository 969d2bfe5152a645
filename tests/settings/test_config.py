"""Settings: the embedded default, files, environment, flags, and which wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.settings import Action, ConfigError, CredentialMode, describe, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_embedded_default_is_the_docker_desktop_backend() -> None:
    settings = load_settings(environ={})
    assert settings.action is Action.REMOVE
    assert dict(settings.env) == {
        "MLFLOW_TRACKING_URI": "http://host.docker.internal:5000",
        "MLFLOW_S3_ENDPOINT_URL": "http://host.docker.internal:9000",
        "GATEWAY_URL": "http://host.docker.internal:8000",
    }
    # By reference: the development default this process holds never reaches a pod.
    assert settings.credentials.mode is CredentialMode.SECRET_KEY_REF
    assert settings.credentials.access_key_id == "minioadmin"
    assert not settings.credentials.is_development_default
    serving = settings.serving
    # Loopback outside a container; the image, manifests and chart pass --host 0.0.0.0.
    assert (serving.host, serving.port, serving.workers) == ("127.0.0.1", 8443, 1)
    assert "kube-system" in settings.excluded_namespaces


def test_file_overrides_default_and_env_values_follow_the_endpoints(tmp_path: Path) -> None:
    config = write(tmp_path, """
action: rewrite
services:
  mlflow: {hosts: [mlflow, tracking], external: {host: mlflow.example.com, port: 443}}
env:
  GATEWAY_URL: null
  EXTRA_URL: "https://{mlflow}/api"
""")
    settings = load_settings(config_file=config, environ={})
    assert settings.action is Action.REWRITE
    env = dict(settings.env)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.example.com:443"
    assert env["EXTRA_URL"] == "https://mlflow.example.com:443/api"
    assert "GATEWAY_URL" not in env
    mlflow = next(s for s in settings.services if s.name == "mlflow")
    assert mlflow.hosts == ("mlflow", "tracking")


def test_precedence_flag_over_environment_over_file(tmp_path: Path) -> None:
    config = write(tmp_path, "action: rewrite\n")
    environ = {"BACKEND_INJECTOR_ACTION": "remove", "BACKEND_INJECTOR_PORT": "9443"}
    from_env = load_settings(config_file=config, environ=environ)
    assert from_env.action is Action.REMOVE
    assert from_env.serving.port == 9443
    from_flag = load_settings(
        config_file=config, environ=environ, overrides={"action": "rewrite", "port": None}
    )
    assert from_flag.action is Action.REWRITE
    assert from_flag.serving.port == 9443  # a flag not given does not override


def test_external_host_moves_every_service_and_env(tmp_path: Path) -> None:
    settings = load_settings(environ={"BACKEND_INJECTOR_EXTERNAL_HOST": "10.0.0.5"})
    assert dict(settings.env)["MLFLOW_S3_ENDPOINT_URL"] == "http://10.0.0.5:9000"
    assert all(s.external is None or s.external.host == "10.0.0.5" for s in settings.services)


def test_credentials_from_files_win_over_variables(tmp_path: Path) -> None:
    key_file = tmp_path / "access-key-id"
    key_file.write_text("from-file\n")
    settings = load_settings(environ={
        "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE": str(key_file),
        "BACKEND_INJECTOR_ACCESS_KEY_ID": "from-variable",
        "BACKEND_INJECTOR_SECRET_ACCESS_KEY": "s3cr3t-value",
    })
    assert settings.credentials.access_key_id == "from-file"
    assert settings.credentials.secret_access_key == "s3cr3t-value"
    assert not settings.credentials.is_development_default
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(describe(settings))


def test_credentials_in_a_file_are_refused(tmp_path: Path) -> None:
    config = write(tmp_path, "credentials: {secret_access_key: hunter2}\n")
    with pytest.raises(ConfigError, match="may not be set in a configuration file") as error:
        load_settings(config_file=config, environ={})
    assert "hunter2" not in str(error.value)


def test_missing_credential_file_names_the_file_only(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="nope"):
        load_settings(environ={"BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE": str(missing)})


def test_secret_key_ref_mode(tmp_path: Path) -> None:
    config = write(tmp_path, "credentials: {mode: secretKeyRef, secret_name: s3}\n")
    credentials = load_settings(config_file=config, environ={}).credentials
    assert credentials.mode is CredentialMode.SECRET_KEY_REF
    assert credentials.secret_name == "s3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("action: delete\n", "action must be one of"),
        ("surprise: 1\n", r"unknown key surprise \(valid here: action, add_env_to, credentials"),
        ("[1, 2]\n", "mapping at the top level"),
        ("services: {mlflow: {external: {host: x, port: 70000}}}\n", "port must be"),
        ("services: {minio: {hosts: [mlflow]}}\n", "claimed by both"),
        ("services: {mlflow: {hosts: [Not_A_Label]}}\n", "not a DNS label"),
        ("env: {X: 'http://{nosuch}'}\n", "unknown service"),
        ("env: {X: 'http://{postgres}'}\n", "no external address"),
        ("env: {AWS_ACCESS_KEY_ID: x}\n", "is a credential"),
        ("waiter_names: wait-for-mlflow\n", "list of non-empty strings"),
        ("action: [\n", "not valid YAML"),
    ],
)
def test_bad_files_are_explained(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=write(tmp_path, text), environ={})


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(config_file=tmp_path / "absent.yaml", environ={})


def test_tls_flags_go_together() -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_settings(environ={}, overrides={"tls_cert": "/x/tls.crt"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("actoin: rewrite\n", r"unknown key actoin \(did you mean action\?\)"),
        ("services:\n  mlflow:\n    extrenal: {host: h, port: 5000}\n",
         r"unknown key services\.mlflow\.extrenal \(did you mean external\?\)"),
        ("services:\n  minio:\n    external: {host: h, prot: 9000}\n",
         r"unknown key services\.minio\.external\.prot \(did you mean port\?\)"),
        ("credentials: {mdoe: secretKeyRef}\n",
         r"unknown key credentials\.mdoe \(did you mean mode\?\)"),
        ("services:\n  redis:\n    hosts: [redis]\n    external: {host: h, port: 6379}\n"
         "    weight: 1\n", r"unknown key services\.redis\.weight \(valid here: external, hosts\)"),
    ],
)
def test_an_unknown_key_at_any_depth_names_its_path_and_the_nearest_key(
    tmp_path: Path, text: str, message: str
) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(config_file=config, environ={})
    assert str(caught.value).startswith(f"{config}: ")


def test_every_key_of_the_embedded_default_is_known() -> None:
    from webhook.settings import default_document, unknown_key
    from webhook.settings.schema import config_schema

    assert unknown_key(default_document(), config_schema()) is None


def test_user_chosen_names_are_not_mistaken_for_typos(tmp_path: Path) -> None:
    settings = load_settings(config_file=write(tmp_path, (
        "services:\n  redis:\n    hosts: [redis]\n    external: {host: h, port: 6379}\n"
        "env:\n  REDIS_URL: 'redis://{redis}'\n")), environ={})
    assert ("REDIS_URL", "redis://h:6379") in settings.env
