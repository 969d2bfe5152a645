"""The command line as a user meets it: each expected failure is one line and a non-zero exit.

Every case runs the real console entry point in a subprocess, with a clean environment, and
checks the whole of stderr: exactly one line, no traceback, and the words a user needs (what
failed, where, what to do).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from tests.cli_process import kubeconfig_for, run_cli, unused_port
from webhook.serving.logs import JsonFormatter, TextFormatter, configure_logging, resolve_format


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed run, after checking the exit code and the shape."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- the cluster ----------------------------------------------------------------------------


def test_a_stopped_cluster_is_one_line_naming_the_server_and_what_to_do(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{unused_port()}"
    kubeconfig = kubeconfig_for(tmp_path / "config", server)
    line = one_line_error(run_cli("install", "--kubeconfig", str(kubeconfig)), 1)
    assert line.startswith("backend-injector install: cannot reach the cluster at "
                           f"{server} (context docker-desktop): connection refused")
    assert "start Kubernetes in Docker Desktop" in line


def test_dev_with_a_stopped_cluster_fails_before_listening(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{unused_port()}"
    kubeconfig = kubeconfig_for(tmp_path / "config", server)
    port = unused_port()
    result = run_cli("dev", "--kubeconfig", str(kubeconfig),
                     "--url", f"https://127.0.0.1:{port}/mutate")
    line = one_line_error(result, 1)
    assert line.startswith(f"backend-injector dev: cannot reach the cluster at {server}")


def test_dev_refuses_a_plain_http_url() -> None:
    line = one_line_error(run_cli("dev", "--url", "http://host.docker.internal:8443/mutate"), 2)
    assert "must be an https:// URL" in line


def test_a_stopped_cluster_of_another_context_points_at_kubectl(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{unused_port()}"
    kubeconfig = kubeconfig_for(tmp_path / "config", server, context="kind-dev")
    line = one_line_error(run_cli("install", env={"KUBECONFIG": str(kubeconfig)}), 1)
    assert "(context kind-dev): connection refused" in line
    assert "kubectl cluster-info" in line


def test_a_missing_kubeconfig_says_where_it_looked(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere" / "config"
    line = one_line_error(run_cli("install", env={"KUBECONFIG": str(absent)}), 1)
    assert f"no kubeconfig at {absent}" in line
    assert "--kubeconfig" in line


def test_a_kubeconfig_that_is_not_yaml_names_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: [\n  {name: c\n")
    line = one_line_error(run_cli("install", "--kubeconfig", str(broken)), 1)
    assert line.startswith(f"backend-injector install: {broken}:")
    assert "not valid YAML" in line


def test_a_kubeconfig_without_the_context_names_it(tmp_path: Path) -> None:
    kubeconfig = kubeconfig_for(tmp_path / "config", "https://127.0.0.1:1")
    line = one_line_error(run_cli("install", "--kubeconfig", str(kubeconfig),
                                  "--context", "prod"), 1)
    assert "prod" in line and "--context" in line


# --- flags ----------------------------------------------------------------------------------


def test_an_unwritable_out_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "certs"
    line = one_line_error(run_cli("certs", "--out", str(out)), 1)
    assert line.startswith(f"backend-injector certs: cannot write to {out}")
    assert "--out" in line


def test_a_san_that_is_no_host_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    line = one_line_error(run_cli("certs", "--san", "not a host!", "--out", str(tmp_path / "c")),
                          2)
    assert line == ("backend-injector certs: argument --san: 'not a host!' is neither a DNS "
                    "name nor an IP address (see backend-injector certs --help)")
    assert not (tmp_path / "c").exists()


def test_an_existing_ca_is_kept_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    first = run_cli("certs", "--out", str(out), "--san", "10.0.0.7", "--san", "*.example.org")
    assert first.returncode == 0, first.stderr
    ca = (out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes()
    line = one_line_error(run_cli("certs", "--out", str(out)), 1)
    assert line.startswith(f"backend-injector certs: {out / 'ca.crt'} exists: ")
    assert "--force" in line and "--out" in line
    assert ((out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes()) == ca
    forced = run_cli("certs", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "ca.crt").read_bytes() != ca[0]


def test_a_ca_key_alone_is_an_existing_ca_too(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("a key kept elsewhere")
    line = one_line_error(run_cli("certs", "--out", str(tmp_path)), 1)
    assert f"{tmp_path / 'ca.key'} exists" in line
    assert (tmp_path / "ca.key").read_text() == "a key kept elsewhere"


def test_zero_days_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    line = one_line_error(run_cli("certs", "--days", "0", "--out", str(tmp_path / "c")), 2)
    assert "--days: must be at least 1 day, not 0" in line
    assert not (tmp_path / "c").exists()


def test_an_unknown_flag_is_one_line_pointing_at_help() -> None:
    line = one_line_error(run_cli("certs", "--colour"), 2)
    assert line == ("backend-injector certs: unrecognized arguments: --colour "
                    "(see backend-injector certs --help)")


def test_abbreviated_long_options_are_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("kind: ConfigMap\n")
    # `--dif` would be read as `--diff`, and `--ext` as `--external-host`, if allowed.
    assert "unrecognized arguments: --dif" in one_line_error(
        run_cli("inject", "-f", str(manifest), "--dif"), 2)
    assert "--ext" in one_line_error(run_cli("inject", "-f", str(manifest), "--ext", "h"), 2)
    assert "unrecognized arguments: --log-f=json" in one_line_error(
        run_cli("--log-f=json", "certs"), 2)


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("--log-level", "error", "serve", "--host", "127.0.0.1",
                         "--port", str(port))
    line = one_line_error(result, 1)
    assert line.startswith(f"backend-injector serve: cannot listen on 127.0.0.1:{port}: ")
    assert "choose another port" in line


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a pair that serves (tls.crt, tls.key, ca.crt) and wrong files beside."""
    from cryptography.hazmat.primitives import serialization

    from webhook import certs

    directory = tmp_path_factory.mktemp("tls")
    ca = certs.build_ca(common_name="test CA", days=1)
    serving = certs.build_serving_certificate(ca=ca, hostnames=["localhost"], days=1)
    certs.write_bundle(directory, ca=ca, serving=serving)
    (directory / "other.key").write_bytes(certs.build_self_signed().key_pem)
    (directory / "notes.txt").write_text("certificate goes here\n")
    key = serialization.load_pem_private_key(serving.key_pem, password=None)
    (directory / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    (directory / "a-directory").mkdir()
    return directory


def serve_with(*files: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--log-level", "error", "serve", "--host", "127.0.0.1",
                   "--port", str(unused_port()), *files)


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("absent.crt", "tls.key",
         "cannot read the TLS certificate {d}/absent.crt: No such file or directory; give "
         "--tls-cert a readable PEM file"),
        ("tls.crt", "a-directory",
         "cannot read the TLS key {d}/a-directory: Is a directory; give --tls-key a readable "
         "PEM file"),
        ("notes.txt", "tls.key",
         "the TLS certificate {d}/notes.txt is not PEM: it has no -----BEGIN CERTIFICATE----- "
         "line; give --tls-cert a PEM certificate"),
        ("tls.key", "tls.crt",
         "the TLS certificate {d}/tls.key holds a private key, not a certificate; give "
         "--tls-cert a PEM certificate"),
        ("tls.crt", "encrypted.key",
         "the TLS key {d}/encrypted.key is encrypted with a passphrase, which a server cannot "
         "be asked for; give --tls-key an unencrypted PEM private key"),
        ("tls.crt", "other.key",
         "the TLS key {d}/other.key does not belong to the certificate {d}/tls.crt; give "
         "--tls-key the key the certificate was issued for"),
    ],
)
def test_a_tls_file_that_cannot_serve_is_named_with_what_is_wrong(
    tls_files: Path, cert: str, key: str, expected: str
) -> None:
    result = serve_with("--tls-cert", str(tls_files / cert), "--tls-key", str(tls_files / key))
    line = one_line_error(result, 2)
    assert line == "backend-injector serve: " + expected.format(d=tls_files)


def test_a_client_ca_that_is_not_certificates_is_named(tls_files: Path) -> None:
    line = one_line_error(serve_with(
        "--tls-cert", str(tls_files / "tls.crt"), "--tls-key", str(tls_files / "tls.key"),
        "--client-ca", str(tls_files / "tls.key")), 2)
    assert line == (f"backend-injector serve: the client CA {tls_files}/tls.key holds a private "
                    "key, not a certificate; give --client-ca the PEM certificate of the CA")


def test_tls_files_named_by_the_environment_are_checked_as_well(tls_files: Path) -> None:
    result = run_cli("--log-level", "error", "serve", "--port", str(unused_port()), env={
        "BACKEND_INJECTOR_TLS_CERT": str(tls_files / "absent.crt"),
        "BACKEND_INJECTOR_TLS_KEY": str(tls_files / "tls.key")})
    assert "cannot read the TLS certificate" in one_line_error(result, 2)


def test_a_missing_command_is_one_line() -> None:
    assert "required: COMMAND" in one_line_error(run_cli(), 2)


def test_version_names_the_admission_api_versions_served() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    first, second = result.stdout.splitlines()
    assert first.startswith("backend-injector ")
    assert second == ("admission API versions served: "
                      "admission.k8s.io/v1, admission.k8s.io/v1beta1")


# --- files and configuration ----------------------------------------------------------------


def test_a_yaml_error_in_the_configuration_names_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("action: remove\nservices:\n  mlflow: {hosts: [mlflow]\n")
    line = one_line_error(run_cli("inject", "-f", "-", "--config", str(config), stdin=""), 2)
    assert line.startswith(f"backend-injector inject: {config}:4:")
    assert "not valid YAML" in line


def test_a_yaml_error_in_a_manifest_names_the_line_in_the_whole_file(tmp_path: Path) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(
        "---\n# Source: a.yaml\nkind: ConfigMap\nmetadata: {name: a}\n"
        "---\n# Source: b.yaml\nkind: Pod\nmetadata:\n  name: b\n  labels: {x: [\n"
    )
    line = one_line_error(run_cli("inject", "-f", str(manifest)), 1)
    # The flow sequence opened on line 10 is never closed; the parser notices at the end.
    assert line.startswith(f"backend-injector inject: {manifest}:1")
    number = int(line.split(f"{manifest}:")[1].split(":")[0])
    assert number >= 10, line
    assert "document 2 is not valid YAML" in line


def test_a_bad_value_in_the_file_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("services:\n  mlflow:\n    external: {host: h, port: 99999}\n")
    line = one_line_error(run_cli("inject", "-f", "-", "--config", str(config), stdin=""), 2)
    assert line.startswith(f"backend-injector inject: {config}: services.mlflow.external.port:")


def test_a_nested_typo_in_the_file_names_its_path_and_the_nearest_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("services:\n  mlflow:\n    extrenal: {host: mlflow.example, port: 80}\n")
    line = one_line_error(run_cli("inject", "-f", "-", "--config", str(config), stdin=""), 2)
    assert line == (f"backend-injector inject: {config}: unknown key services.mlflow.extrenal "
                    "(did you mean external?)")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BACKEND_INJECTOR_PORT", "eighty", "must be a whole number"),
        ("BACKEND_INJECTOR_PORT", "0", "port must be from 1 to 65535"),
        ("BACKEND_INJECTOR_ACTION", "delete", "action must be one of"),
        ("BACKEND_INJECTOR_EXTERNAL_HOST", "no such host!", "is not a host name"),
        ("BACKEND_INJECTOR_SHUTDOWN_DELAY_SECONDS", "forever", "number of seconds"),
    ],
)
def test_a_bad_environment_variable_is_named(variable: str, value: str, message: str) -> None:
    line = one_line_error(run_cli("inject", "-f", "-", env={variable: value}, stdin=""), 2)
    assert line.startswith(f"backend-injector inject: environment variable {variable}: ")
    assert message in line


def test_an_unreadable_credential_file_is_named_by_its_variable(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    line = one_line_error(run_cli("inject", "-f", "-", stdin="", env={
        "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE": str(absent)}), 2)
    assert f"BACKEND_INJECTOR_ACCESS_KEY_ID_FILE ({absent})" in line


def test_an_unreadable_manifest_is_named(tmp_path: Path) -> None:
    line = one_line_error(run_cli("inject", "-f", str(tmp_path / "absent.yaml")), 1)
    assert line.endswith("absent.yaml: No such file or directory")


# --- logs -----------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_log_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", _Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", _Terminal()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


def _record(message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("webhook.test", logging.INFO, __file__, 1, message, None, None)
    record.fields = fields
    return record


def test_text_lines_read_as_prose_with_fields_after() -> None:
    line = TextFormatter().format(_record("dev webhook registered", url="https://h:8443/mutate",
                                          namespaces=["a b"]))
    assert line.endswith(' info    dev webhook registered url=https://h:8443/mutate '
                         'namespaces=["a b"]')


def test_json_lines_carry_the_same_fields() -> None:
    entry = json.loads(JsonFormatter().format(_record("registered", url="u")))
    assert (entry["message"], entry["url"], entry["level"]) == ("registered", "u", "info")


def test_the_cli_logs_json_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    result = run_cli("certs", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert "certificates written" in [entry["message"] for entry in entries]


def test_the_cli_logs_text_when_asked(tmp_path: Path) -> None:
    result = run_cli("--log-format", "text", "certs", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert " info    certificates written ca=" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_configure_logging_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("webhook.test").info("hello", extra={"fields": {"n": 1}})
    assert capsys.readouterr().err.rstrip().endswith("info    hello n=1")
    configure_logging("INFO", "json")


COMMANDS = ("serve", "review", "inject", "policy", "certs", "install", "dev", "doctor")


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_opens_with_what_it_does(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from webhook.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    paragraphs = capsys.readouterr().out.split("\n\n")
    opening = " ".join(paragraphs[1].split())  # the paragraph after the usage lines
    assert opening.endswith(".") and opening[0].isupper(), opening
    # The same words as the command's line in `backend-injector --help`.
    assert f"{command} {opening[0].lower()}{opening[1:-1]}" in listing


# --- platform presets -------------------------------------------------------------------------

PLATFORM_LIST = "docker-desktop, minikube, k3d, kind, rancher-desktop, orbstack, colima"


def test_an_unknown_platform_flag_is_one_line_listing_the_platforms() -> None:
    line = one_line_error(run_cli("inject", "-f", "-", "--platform", "microk8s", stdin=""), 2)
    assert line == ("backend-injector inject: --platform: unknown platform 'microk8s'; the "
                    f"platforms are {PLATFORM_LIST}")


def test_an_unknown_platform_variable_is_one_line_naming_the_variable() -> None:
    line = one_line_error(run_cli("policy", env={"BACKEND_INJECTOR_PLATFORM": "k3s"}), 2)
    assert line == ("backend-injector policy: environment variable BACKEND_INJECTOR_PLATFORM: "
                    f"unknown platform 'k3s'; the platforms are {PLATFORM_LIST}")


def test_kind_without_an_external_host_is_one_line_asking_for_the_address() -> None:
    line = one_line_error(run_cli("policy", "--platform", "kind"), 2)
    assert line.startswith("backend-injector policy: platform kind has no host name pods can "
                           "use: give --external-host ADDRESS")
    assert "docker network inspect kind" in line


def effective_hosts(*args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """service -> external host, as `config` prints the effective configuration."""
    import yaml

    result = run_cli("config", *args, env=env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    return {name: spec["external"]["host"] for name, spec in services.items()
            if spec.get("external")}


def test_platform_precedence_flag_variable_file_and_the_hosts_over_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("platform: k3d\nservices:\n"
                      "  minio: {external: {host: minio.example.com, port: 9000}}\n")
    variable = {"BACKEND_INJECTOR_PLATFORM": "colima"}
    assert effective_hosts("--config", str(config)) == {
        "mlflow": "host.k3d.internal", "minio": "minio.example.com",
        "fastapi": "host.k3d.internal"}
    assert effective_hosts("--config", str(config), env=variable)["mlflow"] == \
        "host.lima.internal"
    flagged = effective_hosts("--config", str(config), "--platform", "minikube", env=variable)
    assert flagged == {"mlflow": "host.minikube.internal", "minio": "minio.example.com",
                       "fastapi": "host.minikube.internal"}
    # An external host from the environment or a flag moves every service, the file's too.
    assert set(effective_hosts("--config", str(config), "--platform", "kind",
                               "--external-host", "172.18.0.1").values()) == {"172.18.0.1"}
    assert set(effective_hosts("--platform", "kind", env={
        "BACKEND_INJECTOR_EXTERNAL_HOST": "172.18.0.1"}).values()) == {"172.18.0.1"}
