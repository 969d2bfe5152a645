"""The webhook's Helm chart (charts/backend-injector): lint, values schema, and one deployment
truth with two front doors.

`helm template -n backend-injector` of the chart and `kubectl kustomize` of the overlays are
compared object by object for the same settings. What differs by nature, and nothing else, is
removed before the comparison (``normalise``):

* the overlays' Namespace: the chart's objects go in the release namespace, which Helm makes
  (``--create-namespace``) or finds, and which the chart therefore neither creates nor owns;

* Helm's labels on every object's metadata (``HELM_LABELS``);
* the hook annotations of the install Job, which Helm runs after every install and upgrade
  where kustomize applies it once (``helm.sh/hook*``);
* the checksum annotations of the webhook's pod template, which roll the pods when the
  configuration or the chart-made credentials change (``checksum/*``);
* the ConfigMap's config.yaml is compared as the YAML it holds (comments and layout differ).

Schema validation of the rendered objects for the supported Kubernetes versions is in
tools/check-manifests.sh; the e2e twin (tests/e2e/test_helm_chart.py) installs, upgrades and
uninstalls the chart on a real control plane.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.tool_binaries import find_helm, find_kubectl
from webhook.settings import default_document, load_settings

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "backend-injector"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
OVERLAYS = REPO / "manifests" / "overlays"
# Where the README installs the release, and where the kustomize base puts the webhook.
NAMESPACE = "backend-injector"
# What no object of the chart has: a namespace of its own.
CLUSTER_SCOPED = frozenset({"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"})

HELM_LABELS = frozenset({
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
})
HOOK_ANNOTATION_PREFIX = "helm.sh/hook"
CHECKSUM_ANNOTATION_PREFIX = "checksum/"

Objects = list[dict[str, Any]]
Key = tuple[str, str, str]


def helm(tmp_path: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = find_helm()
    if binary is None:
        pytest.skip("no helm binary (tools/build-binaries.sh builds one; or set HELM)")
    environment = {**os.environ, "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
                   "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
                   "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    result = subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=120,
                            env=environment, check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(arguments)}:\n{result.stderr}"
    return result


def template(tmp_path: Path, *arguments: str, namespace: str = NAMESPACE) -> Objects:
    """The chart as `helm install -n NAMESPACE` would create it."""
    output = helm(tmp_path, "template", "backend-injector", str(CHART), "--namespace", namespace,
                  *arguments).stdout
    return [item for item in yaml.safe_load_all(output) if item]


def kustomize(directory: Path) -> Objects:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl to render kustomizations with (set KUBECTL)")
    output = subprocess.run([kubectl, "kustomize", str(directory)], check=True,
                            capture_output=True, text=True, timeout=120).stdout
    return [item for item in yaml.safe_load_all(output) if item]


def key(item: dict[str, Any]) -> Key:
    return (item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"])


def by_key(objects: Objects) -> dict[Key, dict[str, Any]]:
    indexed = {key(item): item for item in objects}
    assert len(indexed) == len(objects), "two objects of the same kind and name"
    return indexed


def one(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [item for item in objects
             if item["kind"] == kind and name in (None, item["metadata"]["name"])]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_template(item: dict[str, Any]) -> dict[str, Any]:
    if item["kind"] == "CronJob":
        return item["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return item["spec"]["template"]  # type: ignore[no-any-return]


def _drop(metadata: dict[str, Any], field: str, unwanted: Any) -> None:
    kept = {name: value for name, value in (metadata.get(field) or {}).items()
            if not unwanted(name)}
    if kept:
        metadata[field] = kept
    else:
        metadata.pop(field, None)


def normalise(item: dict[str, Any]) -> dict[str, Any]:
    """The object without what differs by nature between the two front doors (see above)."""
    item = copy.deepcopy(item)
    metadata = item["metadata"]
    _drop(metadata, "labels", lambda name: name in HELM_LABELS)
    _drop(metadata, "annotations", lambda name: name.startswith(HOOK_ANNOTATION_PREFIX))
    if item["kind"] in ("Deployment", "Job", "CronJob"):
        _drop(pod_template(item)["metadata"], "annotations",
              lambda name: name.startswith(CHECKSUM_ANNOTATION_PREFIX))
    if item["kind"] == "ConfigMap":
        item["data"] = {name: yaml.safe_load(text) for name, text in item["data"].items()}
    return item


def assert_same_objects(chart: Objects, kustomized: Objects) -> None:
    """The same objects, but the overlay's Namespace, which is the release namespace."""
    (namespace,) = [item for item in kustomized if item["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == NAMESPACE
    kustomized = [item for item in kustomized if item is not namespace]
    left, right = by_key(chart), by_key(kustomized)
    assert sorted(left) == sorted(right)
    for object_key in sorted(left):
        assert normalise(left[object_key]) == normalise(right[object_key]), object_key


# --- lint and schema


@pytest.mark.parametrize("values", [None, *EXAMPLES], ids=lambda path: path.name if path else
                         "defaults")
def test_helm_lint_is_clean(tmp_path: Path, values: Path | None) -> None:
    arguments = ["lint", "--strict", str(CHART), *(["-f", str(values)] if values else [])]
    result = helm(tmp_path, *arguments)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_values_schema_is_generated_from_the_configuration_model() -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen-values-schema.py"),
                             "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_values_schema_accepts_the_defaults_and_every_example() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(validator.iter_errors(defaults)) == []
    for example in EXAMPLES:
        values = coalesce(defaults, yaml.safe_load(example.read_text()))
        assert [error.message for error in validator.iter_errors(values)] == [], example


def coalesce(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Values as Helm merges them: mappings merge, anything else replaces, null deletes."""
    merged = copy.deepcopy(defaults)
    for name, value in given.items():
        if value is None:
            merged.pop(name, None)
        elif isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = coalesce(merged[name], value)
        else:
            merged[name] = value
    return merged


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("config.action=delete", "action"),
        ("config.services.mlflow.colour=blue", "colour"),
        ("config.credentials.mode=plain", "mode"),
        ("config.safety_net.addresses.host\\.docker\\.internal=nowhere", "addresses"),
        ("certificates.method=vault", "method"),
        ("replicas=0", "replicas"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
        # Gone: the namespace is the release's. Refused rather than silently ignored.
        ("namespace.name=injector", "namespace"),
    ],
)
def test_helm_refuses_values_the_schema_does_not_allow(
    tmp_path: Path, setting: str, message: str
) -> None:
    result = helm(tmp_path, "template", "backend-injector", str(CHART), "--set", setting,
                  check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr and message in result.stderr, result.stderr


# --- the same objects as the kustomize overlays


def test_defaults_render_the_docker_desktop_overlay(tmp_path: Path) -> None:
    assert_same_objects(template(tmp_path), kustomize(OVERLAYS / "docker-desktop"))


def test_cert_manager_example_renders_the_cert_manager_overlay(tmp_path: Path) -> None:
    chart = template(tmp_path, "-f", str(CHART / "examples" / "cert-manager.yaml"))
    assert_same_objects(chart, kustomize(OVERLAYS / "cert-manager"))


def test_changed_settings_render_what_an_overlay_with_the_same_changes_renders(
    tmp_path: Path,
) -> None:
    """Not only the defaults: image, replicas and configuration changed on both sides."""
    config = {
        # The chart's values merge into its defaults, so the platform key is there either way.
        "platform": "docker-desktop",
        "action": "rewrite",
        "waiter_names": ["wait-for-mlflow"],
        "services": {
            "mlflow": {"hosts": ["mlflow"], "external": {"host": "10.0.0.5", "port": 5001}},
            "minio": {"hosts": ["minio"], "external": {"host": "10.0.0.5", "port": 9001}},
            "fastapi": {"hosts": ["fastapi-app", "fastapi"],
                        "external": {"host": "10.0.0.5", "port": 8001}},
            "postgres": {"hosts": ["postgres"], "external": None},
        },
        "env": {"MLFLOW_TRACKING_URI": "http://{mlflow}",
                "MLFLOW_S3_ENDPOINT_URL": "http://{minio}", "GATEWAY_URL": "http://{fastapi}"},
        "credentials": {"mode": "secretKeyRef", "secret_name": "s3"},
    }
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAYS / "docker-desktop", overlay)],
        "images": [{"name": "backend-injector", "newName": "registry.example.com/bi",
                    "newTag": "1.2.3"}],
        "replicas": [{"name": "backend-injector", "count": 3}],
        "patches": [{"target": {"kind": "ConfigMap", "name": "backend-injector-config"},
                     "patch": yaml.safe_dump([{"op": "replace", "path": "/data/config.yaml",
                                               "value": yaml.safe_dump(config)}])}],
    }))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"repository": "registry.example.com/bi", "tag": "1.2.3"},
        "replicas": 3,
        "config": config,
    }))
    assert_same_objects(template(tmp_path, "-f", str(values)), kustomize(overlay))


# --- what the chart adds: hooks, checksums, values


def test_the_install_job_runs_after_every_install_and_upgrade(tmp_path: Path) -> None:
    objects = template(tmp_path)
    job = one(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    # Re-created on every upgrade (a Job's template cannot change); kept when it failed.
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"


def test_the_webhook_registration_is_a_release_object_that_uninstall_deletes(
    tmp_path: Path,
) -> None:
    for values in [None, CHART / "examples" / "cert-manager.yaml"]:
        objects = template(tmp_path, *(["-f", str(values)] if values else []))
        configuration = one(objects, "MutatingWebhookConfiguration")
        assert not any(name.startswith(HOOK_ANNOTATION_PREFIX)
                       for name in configuration["metadata"].get("annotations") or {})
        # Nothing in the chart may create another one, which uninstall would not delete.
        assert [item["kind"] for item in objects].count("MutatingWebhookConfiguration") == 1
        # The install Job may only patch the chart's own.
        for role in (item for item in objects if item["kind"] == "ClusterRole"):
            for rule in role["rules"]:
                assert rule["resourceNames"] == [configuration["metadata"]["name"]]
                assert "create" not in rule["verbs"]


def checksum(objects: Objects, name: str) -> str:
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    return annotations[f"checksum/{name}"]  # type: ignore[no-any-return]


def test_a_changed_configuration_or_credential_rolls_the_pods_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    base = template(tmp_path)
    config = template(tmp_path, "--set", "config.action=rewrite")
    credential = template(tmp_path, "--set", "credentials.secretAccessKey=changed")
    unrelated = template(tmp_path, "--set", "replicas=3", "--set", "certificates.days=90")
    assert checksum(config, "config") != checksum(base, "config")
    assert checksum(config, "credentials") == checksum(base, "credentials")
    assert checksum(credential, "credentials") != checksum(base, "credentials")
    assert checksum(credential, "config") == checksum(base, "config")
    assert checksum(unrelated, "config") == checksum(base, "config")
    assert checksum(unrelated, "credentials") == checksum(base, "credentials")


def settings_of(objects: Objects, tmp_path: Path, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "rendered-config.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["config.yaml"])
    return load_settings(config_file=path, environ=environ or {})


def helper_words(name: str) -> list[str]:
    """The words a one-line `define` of templates/_helpers.tpl expands to."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split(f'define "backend-injector.{name}"', 1)[1]
    return block.split("-}}", 1)[1].split("{{-", 1)[0].split()


def test_the_default_variables_the_chart_knows_are_the_webhooks() -> None:
    assert helper_words("defaultEnvNames") == list(default_document()["env"])


def test_the_default_excluded_namespaces_the_chart_knows_are_the_webhooks() -> None:
    assert [*helper_words("defaultExcludedNamespaces"), "backend-injector"] == (
        default_document()["excluded_namespaces"])


def test_another_namespace_is_excluded_by_the_webhook_itself_too(tmp_path: Path) -> None:
    settings = settings_of(template(tmp_path, namespace="injector"), tmp_path)
    assert settings.excluded_namespaces == {"kube-system", "kube-public", "kube-node-lease",
                                            "injector"}
    # What the values say wins.
    given = template(tmp_path, "--set", "config.excluded_namespaces={kube-system,injector}",
                     namespace="injector")
    assert settings_of(given, tmp_path).excluded_namespaces == {"kube-system", "injector"}


def test_null_in_the_values_drops_a_variable_and_an_external_address(tmp_path: Path) -> None:
    objects = template(tmp_path, "--set", "config.env.GATEWAY_URL=null",
                       "--set", "config.services.fastapi.external=null")
    settings = settings_of(objects, tmp_path)
    assert "GATEWAY_URL" not in dict(settings.env)
    assert next(s for s in settings.services if s.name == "fastapi").external is None
    assert next(s for s in settings.services if s.name == "mlflow").external is not None


def test_the_safety_net_settings_reach_the_webhook(tmp_path: Path) -> None:
    default = settings_of(template(tmp_path), tmp_path)
    assert default.safety_net.host_aliases and default.safety_net.addresses == ()
    address = "config.safety_net.addresses.host\\.docker\\.internal=192.168.65.254"
    objects = template(tmp_path, "--set-string", address,
                       "--set", "config.safety_net.host_aliases=false")
    settings = settings_of(objects, tmp_path)
    assert settings.safety_net.addresses == (("host.docker.internal", "192.168.65.254"),)
    assert settings.safety_net.host_aliases is False


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_gives_the_webhook_a_configuration_it_accepts(
    tmp_path: Path, example: Path
) -> None:
    objects = template(tmp_path, "-f", str(example))
    settings_of(objects, tmp_path)
    # And the Deployment reads the credentials from the Secret the values name.
    volumes = {volume["name"]: volume for volume in
               one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    values = yaml.safe_load(example.read_text())
    existing = (values.get("credentials") or {}).get("existingSecret")
    secret = volumes["credentials"]["secret"]["secretName"]
    if existing:
        assert secret == existing
        assert not [item for item in objects if item["kind"] == "Secret"]
    else:
        assert one(objects, "Secret", secret)


def test_the_external_backend_example_moves_the_backend(tmp_path: Path) -> None:
    objects = template(tmp_path, "-f", str(CHART / "examples" / "external-backend.yaml"))
    settings = settings_of(objects, tmp_path)
    assert dict(settings.env) == {"MLFLOW_TRACKING_URI": "https://mlflow.example.com:443",
                                  "MLFLOW_S3_ENDPOINT_URL": "https://s3.example.com:443"}
    assert settings.action.value == "rewrite"
    assert settings.credentials.mode.value == "secretKeyRef"


def test_existing_secret_keys_are_mapped_to_the_files_the_webhook_reads(tmp_path: Path) -> None:
    objects = template(tmp_path, "-f", str(CHART / "examples" / "production.yaml"))
    deployment = one(objects, "Deployment")
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]
               ["volumes"]}
    assert volumes["credentials"]["secret"] == {
        "secretName": "minio-service-account",
        "defaultMode": 0o440,
        "items": [{"key": "AWS_ACCESS_KEY_ID", "path": "access-key-id"},
                  {"key": "AWS_SECRET_ACCESS_KEY", "path": "secret-access-key"}],
    }
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    files = {item["name"]: item["value"] for item in container["env"]}
    assert {Path(path).name for path in files.values()} == {"access-key-id", "secret-access-key"}


def test_the_opt_in_label_follows_the_values(tmp_path: Path) -> None:
    objects = template(tmp_path, "--set", "webhook.namespaceLabel.key=example.com/backend",
                       "--set", "webhook.namespaceLabel.value=yes")
    (webhook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "example.com/backend", "operator": "In", "values": ["yes"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": [NAMESPACE, "kube-system"]},
    ]


# --- the release namespace

CERT_MANAGER = CHART / "examples" / "cert-manager.yaml"


def values_arguments(values: Path | None) -> list[str]:
    return ["-f", str(values)] if values else []


@pytest.mark.parametrize("values", [None, CERT_MANAGER],
                         ids=lambda path: path.name if path else "job")
def test_every_namespaced_object_and_reference_follows_the_release_namespace(
    tmp_path: Path, values: Path | None
) -> None:
    objects = template(tmp_path, *values_arguments(values), namespace="other")
    # Helm makes the namespace (--create-namespace) or finds it: the chart never owns it.
    assert not [item for item in objects if item["kind"] == "Namespace"]
    for item in objects:
        expected = None if item["kind"] in CLUSTER_SCOPED else "other"
        assert item["metadata"].get("namespace") == expected, key(item)

    configuration = one(objects, "MutatingWebhookConfiguration")
    (webhook,) = configuration["webhooks"]
    assert webhook["clientConfig"]["service"] == {
        "name": "backend-injector", "namespace": "other", "path": "/mutate", "port": 443}
    assert webhook["namespaceSelector"]["matchExpressions"][1] == {
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["other", "kube-system"]}
    excluded = settings_of(objects, tmp_path).excluded_namespaces
    assert "other" in excluded and NAMESPACE not in excluded

    if values is None:
        for kind in ("Job", "CronJob"):
            arguments = pod_template(one(objects, kind))["spec"]["containers"][0]["args"]
            assert arguments[arguments.index("--namespace") + 1] == "other", kind
        for kind in ("RoleBinding", "ClusterRoleBinding"):
            (subject,) = one(objects, kind)["subjects"]
            assert subject["namespace"] == "other", kind
    else:
        annotations = configuration["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == "other/backend-injector-serving"
        serving = one(objects, "Certificate", "backend-injector-serving")["spec"]
        assert serving["commonName"] == "backend-injector.other.svc"
        assert serving["dnsNames"] == [
            "backend-injector", "backend-injector.other", "backend-injector.other.svc",
            "backend-injector.other.svc.cluster.local"]


def strings(value: Any, under: str = "") -> list[tuple[str, str]]:
    """Every string of a rendered object, keys included, with the key it is found under; the
    ConfigMap's config.yaml is read as the YAML it holds."""
    if isinstance(value, dict):
        found = [(under, name) for name in value]
        for name, item in value.items():
            found += strings(yaml.safe_load(item) if name == "config.yaml" else item, name)
        return found
    if isinstance(value, list):
        return [pair for item in value for pair in strings(item, under)]
    return [(under, value)] if isinstance(value, str) else []


@pytest.mark.parametrize("values", [None, CERT_MANAGER],
                         ids=lambda path: path.name if path else "job")
def test_nothing_rendered_for_another_namespace_still_names_the_default_one(
    tmp_path: Path, values: Path | None
) -> None:
    """Every string of every object, rendered for the namespace `other` with object names and
    the values' names that are not the chart's own set apart: `backend-injector` is left only
    where it names the chart, never where it would name a namespace (a hard-coded
    `namespace: backend-injector`, a `SERVICE.backend-injector.svc`, an argument...)."""
    objects = template(tmp_path, *values_arguments(values), "--set", "fullnameOverride=webhook",
                       "--set", "image.repository=registry.example.com/webhook",
                       "--set", "config.credentials.secret_name=s3", namespace="other")
    chart_labels = {"app.kubernetes.io/name", "app.kubernetes.io/part-of",
                    "app.kubernetes.io/instance", "helm.sh/chart"}
    left = sorted({(under, text) for item in objects for under, text in strings(item)
                   if NAMESPACE in text
                   and under not in chart_labels
                   # The opt-in label, the webhook's files in its container, and the
                   # cert-manager CA's human-readable name.
                   and not text.startswith((f"{NAMESPACE}/inject", f"/etc/{NAMESPACE}/"))
                   and text != f"{NAMESPACE} webhook CA"})
    assert left == []
    # The test sees what it looks for: the same strings rendered for the default namespace.
    default = template(tmp_path, *values_arguments(values), "--set", "fullnameOverride=webhook")
    assert ("namespace", NAMESPACE) in {pair for item in default for pair in strings(item)}


def test_a_release_in_kube_system_names_it_once_in_the_selector(tmp_path: Path) -> None:
    (webhook,) = one(template(tmp_path, namespace="kube-system"),
                     "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"]["matchExpressions"][1]["values"] == ["kube-system"]
