"""Tests for manifests/: render the overlays with `kubectl kustomize` and check that every
hardening and contract point is really in what gets applied (schema validity is checked by
tools/check-manifests.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tool_binaries import find_kubectl
from webhook import certs
from webhook.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "backend-injector"
SERVING_LABELS = {
    "app.kubernetes.io/name": "backend-injector",
    "app.kubernetes.io/component": "webhook",
}

Objects = list[dict[str, Any]]


def render(kustomization: str) -> Objects:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl to render kustomizations with (set KUBECTL)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPO / kustomization)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [item for item in yaml.safe_load_all(rendered) if item]


@pytest.fixture(scope="module")
def docker_desktop() -> Objects:
    return render("manifests/overlays/docker-desktop")


@pytest.fixture(scope="module")
def cert_manager() -> Objects:
    return render("manifests/overlays/cert-manager")


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = [item for item in objects if item["kind"] == kind and item["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def kinds(objects: Objects) -> set[str]:
    return {item["kind"] for item in objects}


def pod_spec(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    workload = one(objects, kind, name)
    if kind == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def deployment(docker_desktop: Objects) -> dict[str, Any]:
    return one(docker_desktop, "Deployment", "backend-injector")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def webhook(docker_desktop: Objects) -> dict[str, Any]:
    configuration = one(docker_desktop, "MutatingWebhookConfiguration", "backend-injector")
    assert len(configuration["webhooks"]) == 1
    return configuration["webhooks"][0]  # type: ignore[no-any-return]


# --- every pod the project runs is hardened

WORKLOADS = [
    ("Deployment", "backend-injector"),
    ("Job", "backend-injector-install"),
    ("CronJob", "backend-injector-renew"),
]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_pods_run_as_numeric_non_root_with_the_runtime_default_seccomp_profile(
    docker_desktop: Objects, kind: str, name: str
) -> None:
    spec = pod_spec(docker_desktop, kind, name)
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (10001, 10001)
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_containers_are_locked_down(docker_desktop: Objects, kind: str, name: str) -> None:
    for container in pod_spec(docker_desktop, kind, name)["containers"]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"]) == (10001, 10001)
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in security


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_containers_request_cpu_and_memory_and_limit_memory(
    docker_desktop: Objects, kind: str, name: str
) -> None:
    for container in pod_spec(docker_desktop, kind, name)["containers"]:
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_docker_desktop_uses_the_locally_built_image(
    docker_desktop: Objects, kind: str, name: str
) -> None:
    for container in pod_spec(docker_desktop, kind, name)["containers"]:
        assert container["image"] == "backend-injector:dev"
        assert container["imagePullPolicy"] == "Never"


def test_the_namespace_is_never_injected_and_enforces_the_restricted_pod_standard(
    docker_desktop: Objects,
) -> None:
    labels = one(docker_desktop, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["backend-injector/inject"] != "enabled"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_namespaced_object_lives_in_the_webhook_namespace(docker_desktop: Objects) -> None:
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    }
    for item in docker_desktop:
        if item["kind"] not in cluster_scoped:
            assert item["metadata"]["namespace"] == NAMESPACE, item["metadata"]["name"]


# --- the serving Deployment


def test_two_replicas_spread_over_nodes_without_blocking_a_one_node_cluster(
    deployment: dict[str, Any],
) -> None:
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == SERVING_LABELS


def test_serving_pods_have_no_api_access(
    docker_desktop: Objects, deployment: dict[str, Any]
) -> None:
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "backend-injector"
    assert spec["automountServiceAccountToken"] is False
    account = one(docker_desktop, "ServiceAccount", "backend-injector")
    assert account["automountServiceAccountToken"] is False
    bound = [
        subject["name"]
        for item in docker_desktop
        if item["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for subject in item["subjects"]
    ]
    assert "backend-injector" not in bound


@pytest.mark.parametrize(
    ("probe", "path"), [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
)
def test_probes_are_https_on_the_https_port(
    container: dict[str, Any], probe: str, path: str
) -> None:
    assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}


def test_the_https_port_is_8443(container: dict[str, Any]) -> None:
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]


def test_pre_stop_sleep_drains_endpoints_within_the_grace_period(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < sleep < deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_serve_gets_the_contract_paths(container: dict[str, Any]) -> None:
    arguments = container["args"]
    assert arguments[0] == "serve"
    options = dict(zip(arguments[1::2], arguments[2::2], strict=True))
    assert options == {
        "--config": "/etc/backend-injector/config/config.yaml",
        "--tls-cert": "/etc/backend-injector/tls/tls.crt",
        "--tls-key": "/etc/backend-injector/tls/tls.key",
        # serve listens on loopback unless told: in a pod, the pod's interface.
        "--host": "0.0.0.0",
        "--port": "8443",
    }
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {
        "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE": "/etc/backend-injector/credentials/access-key-id",
        "BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE": (
            "/etc/backend-injector/credentials/secret-access-key"
        ),
    }


def test_the_images_default_command_listens_on_the_containers_interface() -> None:
    commands = [line for line in (REPO / "Dockerfile").read_text().splitlines()
                if line.startswith("CMD ")]
    assert commands == ['CMD ["serve", "--host", "0.0.0.0"]']


def test_volumes_mount_the_tls_secret_without_the_ca_key_the_config_and_the_credentials(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    volumes = {
        volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
    }
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/backend-injector/tls"
    assert volumes["tls"]["secret"]["secretName"] == "backend-injector-tls"
    assert [item["key"] for item in volumes["tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert mounts["config"]["mountPath"] == "/etc/backend-injector/config"
    assert volumes["config"]["configMap"]["name"] == "backend-injector-config"
    assert mounts["credentials"]["mountPath"] == "/etc/backend-injector/credentials"
    assert volumes["credentials"]["secret"]["secretName"] == "backend-injector-credentials"
    assert all(mount.get("readOnly") for name, mount in mounts.items() if name != "tmp")


def test_pod_disruption_budget_keeps_one_serving_pod(docker_desktop: Objects) -> None:
    budget = one(docker_desktop, "PodDisruptionBudget", "backend-injector")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == SERVING_LABELS


def test_service_listens_on_443_for_the_https_port(docker_desktop: Objects) -> None:
    service = one(docker_desktop, "Service", "backend-injector")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == SERVING_LABELS


def test_configmap_writes_out_the_embedded_default(docker_desktop: Objects, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        one(docker_desktop, "ConfigMap", "backend-injector-config")["data"]["config.yaml"]
    )
    assert load_settings(config_file=config_file, environ={}) == load_settings(environ={})


def test_credentials_secret_has_the_two_keys_the_deployment_reads(docker_desktop: Objects) -> None:
    secret = one(docker_desktop, "Secret", "backend-injector-credentials")
    assert set(secret["stringData"]) == {"access-key-id", "secret-access-key"}


# --- the webhook registration


def test_webhook_is_called_for_pod_creation_only(webhook: dict[str, Any]) -> None:
    assert webhook["name"] == "inject.backend-injector.svc"
    assert webhook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]


def test_webhook_calls_the_service_path(webhook: dict[str, Any]) -> None:
    assert webhook["clientConfig"]["service"] == {
        "name": "backend-injector",
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }


def test_webhook_fails_closed_quickly_and_is_safe_to_call_again(webhook: dict[str, Any]) -> None:
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["timeoutSeconds"] <= 10
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["matchPolicy"] == "Equivalent"


def test_namespace_selector_requires_opt_in_and_excludes_its_own_and_kube_system(
    webhook: dict[str, Any],
) -> None:
    expressions = webhook["namespaceSelector"]["matchExpressions"]
    assert {
        "key": "backend-injector/inject",
        "operator": "In",
        "values": ["enabled"],
    } in expressions
    (by_name,) = [item for item in expressions if item["key"] == "kubernetes.io/metadata.name"]
    assert by_name["operator"] == "NotIn"
    assert set(by_name["values"]) == {NAMESPACE, "kube-system"}
    assert "matchLabels" not in webhook["namespaceSelector"]


def test_object_selector_skips_pods_that_opt_out(webhook: dict[str, Any]) -> None:
    assert webhook["objectSelector"]["matchExpressions"] == [
        {"key": "backend-injector/inject", "operator": "NotIn", "values": ["false"]}
    ]


# --- the install Job and its rights


def test_install_job_runs_install_under_its_own_account(docker_desktop: Objects) -> None:
    job = one(docker_desktop, "Job", "backend-injector-install")
    assert job["spec"]["backoffLimit"] > 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    for kind, name in WORKLOADS[1:]:
        spec = pod_spec(docker_desktop, kind, name)
        assert spec["serviceAccountName"] == "backend-injector-install"
        assert spec["restartPolicy"] == "Never"
        (container,) = spec["containers"]
        arguments = container["args"]
        assert arguments[0] == "install"
        options = dict(zip(arguments[1::2], arguments[2::2], strict=True))
        assert options["--secret"] == "backend-injector-tls"
        assert options["--webhook-config"] == "backend-injector"
        assert int(options["--renew-within-days"]) < int(options["--days"])


def test_install_role_touches_only_the_tls_secret_except_for_create(
    docker_desktop: Objects,
) -> None:
    role = one(docker_desktop, "Role", "backend-injector-install")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["backend-injector-tls"],
            "verbs": ["get", "update", "patch"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]


def test_install_cluster_role_touches_only_this_webhook_configuration(
    docker_desktop: Objects,
) -> None:
    role = one(docker_desktop, "ClusterRole", "backend-injector-install")
    assert role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["backend-injector"],
            "verbs": ["get", "patch"],
        }
    ]


@pytest.mark.parametrize(
    ("kind", "role_kind"), [("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")]
)
def test_install_roles_are_bound_to_the_install_account_only(
    docker_desktop: Objects, kind: str, role_kind: str
) -> None:
    binding = one(docker_desktop, kind, "backend-injector-install")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role_kind,
        "name": "backend-injector-install",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "backend-injector-install", "namespace": NAMESPACE}
    ]


# --- the cert-manager overlay


def test_cert_manager_serving_certificate_names_the_four_service_names(
    cert_manager: Objects,
) -> None:
    certificate = one(cert_manager, "Certificate", "backend-injector-serving")
    assert certificate["metadata"]["namespace"] == NAMESPACE
    assert certificate["spec"]["secretName"] == "backend-injector-tls"
    assert certificate["spec"]["dnsNames"] == certs.service_hostnames("backend-injector", NAMESPACE)
    assert certificate["spec"]["issuerRef"] == {"kind": "Issuer", "name": "backend-injector-ca"}


def test_cert_manager_ca_chain_is_self_signed_then_ca_issued(cert_manager: Objects) -> None:
    ca = one(cert_manager, "Certificate", "backend-injector-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"]["name"] == "backend-injector-selfsigned"
    assert one(cert_manager, "Issuer", "backend-injector-selfsigned")["spec"] == {"selfSigned": {}}
    ca_issuer = one(cert_manager, "Issuer", "backend-injector-ca")
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]


def test_cert_manager_injects_the_ca_and_needs_no_install_job(cert_manager: Objects) -> None:
    configuration = one(cert_manager, "MutatingWebhookConfiguration", "backend-injector")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "backend-injector/backend-injector-serving"
    }
    assert not kinds(cert_manager) & {"Job", "CronJob", "Role", "ClusterRole", "RoleBinding"}
    # Everything else is the same webhook as in the default overlay.
    assert configuration["webhooks"][0]["failurePolicy"] == "Fail"
