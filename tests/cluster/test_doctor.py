"""`backend-injector doctor` without a cluster: the selector, the line format, and the checks'
verdicts against an in-memory cluster. The real thing runs in tests/e2e/test_doctor.py."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import kubeconfig_for, run_cli, unused_port
from tests.cluster.memory_cluster import MemoryCluster
from webhook import certs
from webhook.cluster import checks, doctor, endpoints
from webhook.cluster.client import ClusterError, Created, namespace_path, webhook_configuration_path
from webhook.cluster.pods import TRIAL_POD_PREFIX
from webhook.cluster.selectors import selector_matches


def test_selector_semantics() -> None:
    selector = {"matchLabels": {"team": "ml"}, "matchExpressions": [
        {"key": "backend-injector/inject", "operator": "In", "values": ["enabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
        {"key": "legacy", "operator": "DoesNotExist"},
    ]}
    labels = {"team": "ml", "backend-injector/inject": "enabled",
              "kubernetes.io/metadata.name": "flts"}
    assert selector_matches(selector, labels)
    assert not selector_matches(selector, {**labels, "team": "web"})
    assert not selector_matches(selector, {**labels, "backend-injector/inject": "off"})
    assert not selector_matches(selector, {**labels,
                                           "kubernetes.io/metadata.name": "kube-system"})
    assert not selector_matches(selector, {**labels, "legacy": "1"})
    assert selector_matches({"matchExpressions": [
        {"key": "x", "operator": "Exists"}]}, {"x": ""})


def test_in_needs_the_label_and_notin_and_unknown_operators_pass_without_it() -> None:
    assert not selector_matches({"matchExpressions": [
        {"key": "x", "operator": "In", "values": ["a"]}]}, {})
    assert selector_matches({"matchExpressions": [
        {"key": "x", "operator": "NotIn", "values": ["a"]}]}, {})
    assert selector_matches({"matchExpressions": [{"key": "x", "operator": "Gt"}]}, {})
    assert selector_matches({}, {"anything": "at all"})


def test_a_failed_check_is_one_line_with_its_fix() -> None:
    check = checks.failed("namespace ml selected", "ml lacks the label", "kubectl label ...")
    assert check.line() == "FAIL  namespace ml selected: ml lacks the label; fix: kubectl label ..."
    assert checks.passed("cluster reachable", "x").line() == "ok    cluster reachable: x"


class DoctorCluster(MemoryCluster):
    """MemoryCluster plus the lists and dry runs doctor reads."""

    def __init__(self) -> None:
        super().__init__()
        self.dry_runs: list[dict[str, Any]] = []

    def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
        if not dry_run:
            return super().create(path, body)
        self.dry_runs.append(body)
        return Created(object=body, warnings=[])

    def get_text(self, path: str) -> str:
        # What the apiserver's service proxy answers for a Service without endpoints.
        raise ClusterError(f"cannot read {path}: 503 Service Unavailable: no endpoints "
                           "available for service \"backend-injector\"")


def run_checks(cluster: DoctorCluster, namespace: str = "ml") -> dict[str, doctor.Check]:
    return {check.name: check for check in doctor.Doctor(cluster, namespace=namespace).run()}


def test_no_webhook_anywhere_fails_with_the_three_ways_to_install() -> None:
    cluster = DoctorCluster()
    cluster.objects[namespace_path("ml")] = {"metadata": {"name": "ml", "labels": {}}}
    checks = run_checks(cluster)
    registered = checks["webhook configuration"]
    assert registered.status is doctor.Status.FAIL
    assert "helm install" in registered.fix and "kubectl apply -k" in registered.fix
    assert "backend-injector dev" in registered.fix
    # The dry run still tells what a pod meets: here, no webhook at all.
    assert checks["dry-run a test pod"].status is doctor.Status.FAIL
    assert cluster.dry_runs and cluster.dry_runs[0]["metadata"]["generateName"] == (
        TRIAL_POD_PREFIX)


def test_a_configuration_under_another_name_is_found_by_its_label() -> None:
    cluster = DoctorCluster()
    renamed = {"metadata": {"name": "bi-prod", "labels": {"app.kubernetes.io/name":
                                                          "backend-injector"}},
               "webhooks": [{"clientConfig": {"url": "https://127.0.0.1:9/mutate"}}]}
    cluster.objects[webhook_configuration_path()
                    + "?labelSelector=app.kubernetes.io%2Fname%3Dbackend-injector"] = {
        "items": [renamed]}
    registered = run_checks(cluster)["webhook configuration"]
    assert registered.status is doctor.Status.PASS
    assert registered.detail.startswith("MutatingWebhookConfiguration bi-prod calls")


def test_an_empty_ca_bundle_and_no_endpoints_are_each_named(tmp_path: Path) -> None:
    cluster = DoctorCluster()
    cluster.objects[webhook_configuration_path("backend-injector")] = {
        "metadata": {"name": "backend-injector"},
        "webhooks": [{"name": "inject.backend-injector.svc", "failurePolicy": "Fail",
                      "namespaceSelector": {"matchLabels": {"backend-injector/inject":
                                                            "enabled"}},
                      "clientConfig": {"service": {"name": "backend-injector",
                                                   "namespace": "backend-injector",
                                                   "port": 443}}}],
    }
    ca = certs.build_ca(common_name="ca", days=10)
    serving = certs.build_serving_certificate(
        ca=ca, hostnames=certs.service_hostnames("backend-injector", "backend-injector"), days=5)
    cluster.objects["/api/v1/namespaces/backend-injector/secrets/backend-injector-tls"] = {
        "data": {"tls.crt": base64.b64encode(serving.cert_pem).decode()}}
    cluster.objects[namespace_path("ml")] = {
        "metadata": {"name": "ml", "labels": {"backend-injector/inject": "enabled"}}}
    checks = run_checks(cluster)
    assert checks["caBundle verifies the served certificate"].status is doctor.Status.FAIL
    assert "empty" in checks["caBundle verifies the served certificate"].detail
    endpoints = checks["webhook endpoints ready"]
    assert endpoints.status is doctor.Status.FAIL
    assert "no ready endpoints" in endpoints.detail
    assert checks["namespace ml selected"].status is doctor.Status.PASS
    assert checks["certificate expiry"].status is doctor.Status.WARN  # 5 days left
    assert checks["backend as the webhook sees it"].status is doctor.Status.WARN


@pytest.mark.parametrize("context", ["docker-desktop"])
def test_doctor_on_a_stopped_cluster_is_one_failed_check(tmp_path: Path, context: str) -> None:
    server = f"https://127.0.0.1:{unused_port()}"
    kubeconfig = kubeconfig_for(tmp_path / "config", server, context=context)
    result = run_cli("doctor", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 1
    assert result.stdout == (
        f"FAIL  cluster reachable: cannot reach the cluster at {server} (context {context}): "
        "connection refused; fix: start Kubernetes in Docker Desktop (Settings > Kubernetes) "
        "and try again\n")


def test_a_refused_request_fails_its_check_only() -> None:
    class Forbidden(DoctorCluster):
        def get(self, path: str) -> dict[str, Any] | None:
            if path.startswith("/api/v1/namespaces/ml"):
                raise ClusterError("cannot read namespace ml: forbidden: User \"dev\" cannot get "
                                   "resource \"namespaces\"", "ask for the RBAC rights it names")
            return super().get(path)

    cluster = Forbidden()
    cluster.objects[webhook_configuration_path("backend-injector")] = {
        "metadata": {"name": "backend-injector"},
        "webhooks": [{"clientConfig": {"url": "https://127.0.0.1:9/mutate"}}]}
    checks = run_checks(cluster)
    selected = checks["namespace ml selected"]
    assert selected.status is doctor.Status.FAIL
    assert "forbidden" in selected.detail and selected.fix == "ask for the RBAC rights it names"
    assert checks["dry-run"].status is doctor.Status.FAIL
    assert checks["webhook configuration"].status is doctor.Status.PASS


def service_webhook_cluster() -> DoctorCluster:
    cluster = DoctorCluster()
    cluster.objects[webhook_configuration_path("backend-injector")] = {
        "metadata": {"name": "backend-injector"},
        "webhooks": [{"clientConfig": {"service": {"name": "backend-injector",
                                                   "namespace": "backend-injector",
                                                   "port": 443}}}]}
    cluster.objects["/api/v1/namespaces/backend-injector/services/backend-injector"] = {
        "spec": {"selector": {"app.kubernetes.io/name": "backend-injector"},
                 "ports": [{"name": "https", "port": 443}]}}
    return cluster


PODS = ("/api/v1/namespaces/backend-injector/pods"
        "?labelSelector=app.kubernetes.io%2Fname%3Dbackend-injector")


def test_pods_that_cannot_get_their_image_are_named_with_the_kind_fix() -> None:
    cluster = service_webhook_cluster()
    cluster.objects[PODS] = {"items": [{
        "metadata": {"name": "backend-injector-7d9c-abcde"},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "webhook", "state": {"waiting": {"reason": "ErrImageNeverPull"}}}]}}]}
    endpoints = run_checks(cluster)["webhook endpoints ready"]
    assert endpoints.status is doctor.Status.FAIL
    assert "pods: backend-injector-7d9c-abcde ErrImageNeverPull" in endpoints.detail
    assert "kind-based cluster" in endpoints.fix and "backend-injector dev" in endpoints.fix


def test_a_webhook_scaled_to_zero_is_told_how_to_scale_up() -> None:
    cluster = service_webhook_cluster()
    cluster.objects[PODS] = {"items": []}
    endpoints = run_checks(cluster)["webhook endpoints ready"]
    assert "no pods: scaled to zero" in endpoints.detail
    assert "scale deployment/backend-injector --replicas=2" in endpoints.fix


def test_the_endpoints_are_read_once_for_the_checks_that_look_at_them() -> None:
    cluster = service_webhook_cluster()
    cluster.objects[PODS] = {"items": []}
    checks = run_checks(cluster)
    assert checks["webhook endpoints ready"].status is doctor.Status.FAIL
    slices = [call for call in cluster.calls if "/endpointslices" in call]
    assert slices == ["GET /apis/discovery.k8s.io/v1/namespaces/backend-injector/endpointslices"
                      "?labelSelector=kubernetes.io%2Fservice-name%3Dbackend-injector"]


def test_unready_endpoints_are_left_out_and_the_named_port_is_the_target() -> None:
    slices = [
        {"ports": [{"name": "https", "port": 8443}, {"name": "metrics", "port": 9090}],
         "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                       {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                       {"addresses": ["10.0.0.3"]}]},
    ]
    assert endpoints.ready_addresses_of(slices) == ["10.0.0.1", "10.0.0.3"]
    assert endpoints.target_port(slices, "https", default=443) == 8443
    assert endpoints.target_port(slices, "other", default=443) == 443


def test_a_pod_state_is_its_first_trouble_else_its_phase() -> None:
    crashing = {"status": {"phase": "Running", "initContainerStatuses": [
        {"state": {"terminated": {"reason": "Completed"}}}], "containerStatuses": [
        {"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    assert endpoints.pod_state(crashing) == "CrashLoopBackOff"
    assert endpoints.pod_state({"status": {"phase": "Running"}}) == "Running"
    assert endpoints.pod_state({}) == "Pending"
    assert "logs deployment/backend-injector" in endpoints.fix_for_pod_states(
        "backend-injector-1 CrashLoopBackOff", "backend-injector", "backend-injector", ["app"])
    assert endpoints.fix_for_pod_states("backend-injector-1 Pending", "ns", "svc", ["a", "b"]
                                        ) == "kubectl -n ns describe pods -l a,b"


def test_a_dry_run_the_webhook_failed_points_at_its_log_in_its_own_namespace() -> None:
    """The chart installs in the release namespace: the fix follows the registration's Service,
    not the default namespace."""

    class Refusing(DoctorCluster):
        def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
            raise ClusterError('admission webhook refused: failed calling webhook '
                               '"inject.backend-injector.svc": the server is shutting down')

    cluster = Refusing()
    cluster.objects[webhook_configuration_path("backend-injector")] = {
        "metadata": {"name": "backend-injector"},
        "webhooks": [{"clientConfig": {"service": {"name": "backend-injector",
                                                   "namespace": "injector-system",
                                                   "port": 443}}}]}
    cluster.objects[namespace_path("ml")] = {"metadata": {"name": "ml", "labels": {}}}
    trial = run_checks(cluster)["dry-run a test pod"]
    assert trial.status is doctor.Status.FAIL
    assert trial.fix == ("see the webhook's log: "
                         "kubectl -n injector-system logs deploy/backend-injector")
