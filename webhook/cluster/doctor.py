"""`backend-injector doctor`: why a pod was or was not changed, one line per check.

Each check passes or fails, and a failure says what to do. In order: the cluster answers; the
webhook is registered (the installed configuration, else the dev one); its caBundle verifies
the certificate the webhook really serves (fetched from the Service's endpoints or the dev URL,
and checked as the apiserver checks it); that certificate is not about to expire; the Service
has ready endpoints; the namespace is selected; no dev registration was left behind by a killed
process; what the webhook sees of the external backend; and the decisive one, a server-side
dry-run create (``dryRun=All``) of a pod in the namespace and of the pod templates of its
workloads, whose admission warnings say what the webhook changed. The dry run goes through
every admission step a real create takes, so it fails exactly when a real pod would.

Only `webhook.cluster.client` talks to the cluster, and certificates are judged by `webhook.certs`.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import urllib3

from webhook import certs
from webhook.cluster import dev
from webhook.cluster.client import (
    Cluster,
    ClusterError,
    JsonObject,
    namespace_path,
    namespaced_path,
    secret_path,
    service_proxy_path,
    webhook_configuration_path,
)
from webhook.rules.mutate import INJECT_KEY, STATUS_KEY
from webhook.serving import reachability as health

DEFAULT_WEBHOOK_CONFIGURATION = "backend-injector"
DEFAULT_TLS_SECRET = "backend-injector-tls"
EXPIRY_WARNING = dt.timedelta(days=30)
TLS_TIMEOUT_SECONDS = 3.0
# Enough to see a chart's workloads; more would make the output a wall.
MOST_WORKLOADS = 20
WORKLOAD_KINDS = (
    ("apps/v1", "deployments", "Deployment", ("spec", "template")),
    ("apps/v1", "statefulsets", "StatefulSet", ("spec", "template")),
    ("batch/v1", "jobs", "Job", ("spec", "template")),
    ("batch/v1", "cronjobs", "CronJob", ("spec", "jobTemplate", "spec", "template")),
)
PROBE_POD_NAME = "backend-injector-doctor-"


class Status(StrEnum):
    PASS = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class Served:
    """What answered TLS where the apiserver calls the webhook."""

    cert_pem: bytes | None
    hostname: str
    where: str
    error: str | None = None


def passed(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def warned(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.WARN, detail, fix)


class Doctor:
    """The checks, against one cluster, for one namespace of workloads."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        namespace: str,
        webhook_configuration: str = DEFAULT_WEBHOOK_CONFIGURATION,
        tls_secret: str = DEFAULT_TLS_SECRET,
        now: dt.datetime | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.webhook_configuration = webhook_configuration
        self.tls_secret = tls_secret
        self.now = now if now is not None else dt.datetime.now(dt.UTC)
        # Three checks look at the Service's ready endpoints; they are read once a run, so that
        # the checks agree with each other and the cluster is asked two requests, not six.
        self._ready: dict[tuple[str, str, int], tuple[list[str], int]] = {}

    def run(self) -> Iterator[Check]:
        """The checks in order, each as soon as it is made. A request the cluster refuses
        (RBAC, typically) fails that check only, with the apiserver's reason."""
        self._ready.clear()
        reachable = self._reachable()
        yield reachable
        if reachable.status is Status.FAIL:
            return
        try:
            installed = self._installed()
            dev_registration = self.cluster.get(
                webhook_configuration_path(dev.DEV_CONFIGURATION))
        except ClusterError as error:
            yield _refused("webhook configuration", error)
            return
        configuration = installed if installed is not None else dev_registration
        yield self._registered(installed, dev_registration)
        if configuration is not None:
            webhook = (configuration.get("webhooks") or [{}])[0]
            client_config = webhook.get("clientConfig") or {}
            try:
                served = self._served(client_config)
            except ClusterError as error:
                served = Served(cert_pem=None, hostname="", where="", error=error.problem)
            yield self._guarded("caBundle verifies the served certificate",
                                lambda: self._ca_bundle(client_config, served))
            yield self._guarded("certificate expiry",
                                lambda: self._expiry(client_config, served))
            yield self._guarded("webhook endpoints ready",
                                lambda: self._endpoints(client_config, served))
            yield self._guarded(f"namespace {self.namespace} selected",
                                lambda: self._namespace(webhook))
        yield self._dev_leftover(dev_registration, active=configuration is dev_registration)
        if configuration is not None:
            yield from self._backend(configuration)
        try:
            yield from self._dry_runs()
        except ClusterError as error:
            yield _refused("dry-run", error)

    @staticmethod
    def _guarded(name: str, check: Callable[[], Check]) -> Check:
        try:
            return check()
        except ClusterError as error:
            return _refused(name, error)

    # --- the checks ----------------------------------------------------------------------

    def _reachable(self) -> Check:
        name = "cluster reachable"
        try:
            version = self.cluster.version()
        except ClusterError as error:
            return failed(name, error.problem,
                          error.fix or "check the kube context (kubectl config current-context)")
        context = f" (context {self.cluster.context})" if self.cluster.context else ""
        return passed(name, f"{self.cluster.server}{context}, Kubernetes "
                            f"{version.get('gitVersion', '?')}")

    def _installed(self) -> JsonObject | None:
        """The named configuration; else the one webhook configuration labelled as this
        project's (a Helm release with another name or a fullnameOverride)."""
        named = self.cluster.get(webhook_configuration_path(self.webhook_configuration))
        if named is not None:
            return named
        selector = urllib.parse.quote("app.kubernetes.io/name=backend-injector", safe="")
        listed = self.cluster.get(f"{webhook_configuration_path()}?labelSelector={selector}")
        candidates = [item for item in (listed or {}).get("items") or []
                      if (item.get("metadata") or {}).get("name") != dev.DEV_CONFIGURATION]
        return candidates[0] if len(candidates) == 1 else None

    def _registered(self, installed: JsonObject | None, dev_registration: JsonObject | None
                    ) -> Check:
        name = "webhook configuration"
        if installed is not None:
            webhook = (installed.get("webhooks") or [{}])[0]
            found = (installed.get("metadata") or {}).get("name", self.webhook_configuration)
            return passed(name, f"MutatingWebhookConfiguration {found} "
                                f"calls {_describe_target(webhook.get('clientConfig') or {})}, "
                                f"failurePolicy {webhook.get('failurePolicy', 'Fail')}")
        if dev_registration is not None:
            url = _client_url(dev_registration)
            return passed(name, f"no {self.webhook_configuration}; the dev registration "
                                f"{dev.DEV_CONFIGURATION} calls {url}")
        return failed(name, f"no MutatingWebhookConfiguration {self.webhook_configuration}",
                      "install the webhook (helm install backend-injector "
                      "charts/backend-injector, or kubectl apply -k "
                      "manifests/overlays/docker-desktop), or run backend-injector dev")

    def _served(self, client_config: Mapping[str, Any]) -> Served:
        url = client_config.get("url")
        if url:
            parsed = urllib.parse.urlsplit(str(url))
            host, port = parsed.hostname or "", parsed.port or 443
            return _fetch_served(host, port, hostname=host, where=str(url))
        service = client_config.get("service") or {}
        hostname = f"{service.get('name')}.{service.get('namespace')}.svc"
        addresses, port = self._ready_addresses(service)
        errors = []
        for address in addresses:
            served = _fetch_served(address, port, hostname=hostname,
                                   where=f"endpoint {address}:{port}")
            if served.cert_pem is not None:
                return served
            errors.append(served.error or "")
        # Pod addresses are often not routable from a laptop; the Secret the pods mount is
        # the next best witness of what they serve.
        secret = self.cluster.get(secret_path(str(service.get("namespace")), self.tls_secret))
        data = (secret or {}).get("data") or {}
        cert_pem = certs.pem_from_base64(data.get("tls.crt")) or None
        where = f"Secret {service.get('namespace')}/{self.tls_secret}"
        reason = f"; no endpoint answered ({errors[0]})" if errors else ""
        return Served(cert_pem=cert_pem, hostname=hostname, where=where + reason,
                      error=None if cert_pem else f"no tls.crt in {where}")

    def _ca_bundle(self, client_config: Mapping[str, Any], served: Served) -> Check:
        name = "caBundle verifies the served certificate"
        fix = ("run backend-injector install (the chart's install hook does it on "
               "helm install/upgrade; with cert-manager, check its CA injector)")
        bundle = _bundle(client_config)
        if not bundle:
            return failed(name, "the caBundle is empty: the apiserver trusts nothing it is "
                                "served", fix)
        if served.cert_pem is None:
            return failed(name, f"no certificate to check: {served.error}",
                          "start the webhook (see the endpoints check)")
        problem = certs.verification_problem(served.cert_pem, bundle, hostname=served.hostname,
                                             now=self.now)
        if problem:
            return failed(name, f"{problem} (from {served.where})", fix)
        return passed(name, f"{served.hostname}, from {served.where}")

    def _expiry(self, client_config: Mapping[str, Any], served: Served) -> Check:
        name = "certificate expiry"
        expiries = certs.bundle_expiries(_bundle(client_config))
        if served.cert_pem is not None:
            expiries.insert(0, ("served certificate", certs.not_after(served.cert_pem)))
        if not expiries:
            return failed(name, "no certificate to check", "see the caBundle check")
        what, soonest = min(expiries, key=lambda item: item[1])
        left = soonest - self.now
        remaining = (f"{left.days} days" if left >= dt.timedelta(days=2)
                     else f"{int(left.total_seconds() // 3600)} hours")
        detail = f"{what} expires {soonest.isoformat(timespec='seconds')} ({remaining})"
        fix = ("run backend-injector install (the renewal CronJob runs it weekly, on Mondays by "
               "default)")
        if client_config.get("url"):
            # Dev certificates live two days by design; each start makes new ones.
            fix = "restart backend-injector dev: it makes a new certificate at each start"
        if left <= dt.timedelta(0):
            return failed(name, detail.replace("expires", "expired"), fix)
        if left <= EXPIRY_WARNING and not client_config.get("url"):
            return warned(name, detail, fix)
        return passed(name, detail)

    def _endpoints(self, client_config: Mapping[str, Any], served: Served) -> Check:
        name = "webhook endpoints ready"
        url = client_config.get("url")
        if url:
            if served.cert_pem is None:
                return failed(name, f"nothing answers TLS at {url}: {served.error}",
                              "start backend-injector dev again, or delete the registration")
            return passed(name, f"{url} answers")
        service = client_config.get("service") or {}
        addresses, port = self._ready_addresses(service)
        where = f"Service {service.get('namespace')}/{service.get('name')}"
        if not addresses:
            namespace = str(service.get("namespace"))
            pods, fix = self._why_no_endpoints(namespace, str(service.get("name")))
            return failed(name, f"{where} has no ready endpoints: the webhook is not running"
                                f" ({pods})", fix)
        return passed(name, f"{where}: {len(addresses)} ready ({', '.join(addresses)}:{port})")

    def _namespace(self, webhook: Mapping[str, Any]) -> Check:
        name = f"namespace {self.namespace} selected"
        found = self.cluster.get(namespace_path(self.namespace))
        if found is None:
            return failed(name, f"namespace {self.namespace} does not exist",
                          f"kubectl create namespace {self.namespace}, or pass -n NAMESPACE")
        labels = dict((found.get("metadata") or {}).get("labels") or {})
        labels.setdefault("kubernetes.io/metadata.name", self.namespace)
        selector = webhook.get("namespaceSelector") or {}
        if selector_matches(selector, labels):
            return passed(name, f"labelled {INJECT_KEY}={labels.get(INJECT_KEY)}")
        if labels.get(INJECT_KEY) == "enabled":
            return failed(name, f"{self.namespace} is excluded by the webhook's "
                                "namespaceSelector (its own or kube-system)",
                          "run the workloads in another namespace")
        return failed(name, f"{self.namespace} lacks the label {INJECT_KEY}=enabled, so "
                            "the apiserver never sends its pods",
                      f"kubectl label namespace {self.namespace} {INJECT_KEY}=enabled")

    def _dev_leftover(self, registration: JsonObject | None, *, active: bool) -> Check:
        name = "no stale dev registration"
        if registration is None:
            return passed(name, f"no {dev.DEV_CONFIGURATION}")
        annotations = (registration.get("metadata") or {}).get("annotations") or {}
        url = _client_url(registration)
        owner = (f"pid {annotations.get(dev.PID_ANNOTATION, '?')} on "
                 f"{annotations.get(dev.HOST_ANNOTATION, '?')}, since "
                 f"{annotations.get(dev.STARTED_ANNOTATION, '?')}")
        liveness = _dev_alive(url, annotations)
        if liveness is True:
            detail = f"{dev.DEV_CONFIGURATION} is live at {url} ({owner})"
            if not active:
                return warned(name, detail + "; pods are changed by it and by the installed "
                                    "webhook", "stop backend-injector dev when done")
            return passed(name, detail)
        fix = (f"kubectl delete mutatingwebhookconfiguration {dev.DEV_CONFIGURATION} (it fails "
               "open, so pods are admitted unchanged meanwhile), or start dev again")
        if liveness is None:
            return warned(name, f"{dev.DEV_CONFIGURATION} calls {url} ({owner}), which cannot "
                                "be checked from here", fix)
        return failed(name, f"{dev.DEV_CONFIGURATION} is stale: nothing answers at {url} "
                            f"({owner})", fix)

    def _backend(self, configuration: Mapping[str, Any]) -> Iterator[Check]:
        """What the webhook's own prober says of the backend, read from its /metrics.

        A dev webhook is asked at its URL. An installed one through the apiserver's service
        proxy (no port-forward, no route to the pod needed), else at a ready endpoint when
        this machine can reach it; either way the figures are the pod's own."""
        client_config = (configuration.get("webhooks") or [{}])[0].get("clientConfig") or {}
        bundle = _bundle(client_config)
        url = client_config.get("url")
        try:
            if url:
                parsed = urllib.parse.urlsplit(str(url))
                text = _fetch_https(f"https://{parsed.netloc}", "/metrics", bundle,
                                    hostname=parsed.hostname or "")
                yield from backend_lines(text, "the dev webhook on this machine",
                                         from_pods=False)
                return
            service = client_config.get("service") or {}
            namespace, name = str(service.get("namespace")), str(service.get("name"))
            seen_from = "the webhook's pod"
            try:
                text = self.cluster.get_text(service_proxy_path(
                    namespace, name, int(service.get("port") or 443), "metrics"))
            except ClusterError as proxy_error:
                addresses, port = self._ready_addresses(service)
                if not addresses:
                    raise OSError(proxy_error.problem) from None
                text = _fetch_https(f"https://{_host_port(addresses[0], port)}", "/metrics",
                                    bundle, hostname=f"{name}.{namespace}.svc")
            yield from backend_lines(text, seen_from)
        except OSError as error:
            yield warned("backend as the webhook sees it",
                         f"cannot read the webhook's /metrics: {error}")

    def _dry_runs(self) -> Iterator[Check]:
        if self.cluster.get(namespace_path(self.namespace)) is None:
            return
        yield self._dry_run("a test pod", probe_pod(), decisive=True)
        workloads = list(self._workloads())
        for label, pod in workloads[:MOST_WORKLOADS]:
            yield self._dry_run(label, pod, decisive=False)
        if len(workloads) > MOST_WORKLOADS:
            yield passed("dry-run", f"{len(workloads) - MOST_WORKLOADS} more workloads not tried")

    def _dry_run(self, label: str, pod: JsonObject, *, decisive: bool) -> Check:
        name = f"dry-run {label}"
        path = namespaced_path("v1", self.namespace, "pods")
        try:
            created = self.cluster.create(path, pod, dry_run=True)
        except ClusterError as error:
            return failed(name, f"refused in {self.namespace}: {error}", _refusal_fix(str(error)))
        annotations = (created.object.get("metadata") or {}).get("annotations") or {}
        changes = "; ".join(created.warnings) or "the webhook's status annotation only"
        if STATUS_KEY in annotations:
            return passed(name, f"changed by the webhook: {changes}")
        if decisive:
            return failed(name, f"came back unchanged from {self.namespace}: the webhook was "
                                "not called, or failed open",
                          "see the failed checks above")
        return passed(name, "nothing for the webhook to change")

    def _workloads(self) -> Iterator[tuple[str, JsonObject]]:
        for group_version, resource, kind, template_path in WORKLOAD_KINDS:
            try:
                listed = self.cluster.get(namespaced_path(group_version, self.namespace,
                                                          resource))
            except ClusterError:
                continue  # not allowed to list this kind: the other checks still stand
            for item in (listed or {}).get("items") or []:
                template: Any = item
                for key in template_path:
                    template = template.get(key) if isinstance(template, dict) else None
                if isinstance(template, dict) and isinstance(template.get("spec"), dict):
                    name = (item.get("metadata") or {}).get("name", "?")
                    yield f"{kind}/{name}", pod_from_template(name, template)

    def _ready_addresses(self, service: Mapping[str, Any]) -> tuple[list[str], int]:
        """Ready endpoint addresses of the Service and the target port the slices name."""
        namespace, name = str(service.get("namespace")), str(service.get("name"))
        port = int(service.get("port") or 443)
        if (namespace, name, port) not in self._ready:
            self._ready[namespace, name, port] = self._read_ready_addresses(namespace, name, port)
        return self._ready[namespace, name, port]

    def _read_ready_addresses(self, namespace: str, name: str, port: int
                              ) -> tuple[list[str], int]:
        selector = urllib.parse.quote(f"kubernetes.io/service-name={name}", safe="")
        listed = self.cluster.get(namespaced_path("discovery.k8s.io/v1", namespace,
                                                  "endpointslices")
                                  + f"?labelSelector={selector}")
        wanted_name = self._service_port_name(namespace, name, port)
        addresses: list[str] = []
        target = port
        for endpoint_slice in (listed or {}).get("items") or []:
            for slice_port in endpoint_slice.get("ports") or []:
                if slice_port.get("name", "") == wanted_name and slice_port.get("port"):
                    target = int(slice_port["port"])
            for endpoint in endpoint_slice.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                addresses.extend(endpoint.get("addresses") or [])
        return addresses, target

    def _why_no_endpoints(self, namespace: str, service: str) -> tuple[str, str]:
        """What the Service's pods are doing, and the fix that goes with it."""
        found = self.cluster.get(namespaced_path("v1", namespace, "services", service))
        selector = ((found or {}).get("spec") or {}).get("selector") or {}
        look = f"kubectl -n {namespace} get pods,deployments"
        if not selector:
            return "the Service selects no pods", look
        query = urllib.parse.quote(",".join(f"{key}={value}" for key, value in
                                            sorted(selector.items())), safe="")
        listed = self.cluster.get(namespaced_path("v1", namespace, "pods")
                                  + f"?labelSelector={query}")
        pods = (listed or {}).get("items") or []
        if not pods:
            return ("no pods: scaled to zero, or none could be created",
                    f"kubectl -n {namespace} scale deployment/{service} --replicas=2, and "
                    f"kubectl -n {namespace} describe replicasets for what stops them")
        states = [f"{(pod.get('metadata') or {}).get('name')} {_pod_state(pod)}" for pod in pods]
        reasons = " ".join(states)
        if "ErrImageNeverPull" in reasons:
            fix = ("the node does not have the image: on Docker Desktop's kind-based cluster "
                   "load it into each node or use a registry (README, Troubleshooting), or run "
                   "backend-injector dev instead")
        elif "ImagePullBackOff" in reasons or "ErrImagePull" in reasons:
            fix = "the image cannot be pulled: check image.repository, image.tag and the secrets"
        elif "CrashLoopBackOff" in reasons or "Error" in reasons:
            fix = f"kubectl -n {namespace} logs deployment/{service} says why it stops"
        else:
            fix = f"kubectl -n {namespace} describe pods -l {','.join(sorted(selector))}"
        return "pods: " + ", ".join(states[:5]), fix

    def _service_port_name(self, namespace: str, name: str, port: int) -> str:
        found = self.cluster.get(namespaced_path("v1", namespace, "services", name))
        for service_port in ((found or {}).get("spec") or {}).get("ports") or []:
            if service_port.get("port") == port:
                return str(service_port.get("name", ""))
        return ""


# --- the backend, as the webhook sees it -----------------------------------------------------


def backend_lines(text: str, seen_from: str, *, from_pods: bool = True) -> Iterator[Check]:
    """One line per external service, from the webhook's /metrics exposition.

    A webhook in the cluster sees the backend as the pods do, so a service it cannot reach
    fails the check. A dev webhook runs on this machine, which may not even resolve
    ``host.docker.internal``: what it sees is only a hint (warn)."""
    samples = health.parse_exposition(text)
    if not samples:
        yield warned("backend as the webhook sees it",
                     f"the webhook at {seen_from} exports no {health.UP_METRIC} yet",
                     "wait for its first probe round, or upgrade the webhook")
        return
    for service, values in sorted(samples.items()):
        seconds = values.get("seconds", 0.0)
        if values.get("up") == 1.0:
            yield passed(f"backend {service}",
                         f"reachable from {seen_from} (TCP connect {seconds * 1000:.1f} ms)")
            continue
        how = (f"no answer within {seconds:.1f} s"
               if seconds >= health.PROBE_TIMEOUT_SECONDS * 0.95
               else f"TCP connect failed after {seconds * 1000:.0f} ms")
        detail = f"not reachable from {seen_from} ({how})"
        fix = (f"start {service} where the webhook's configuration says it runs, or correct "
               f"services.{service}.external")
        yield (failed(f"backend {service}", detail, fix) if from_pods else
               warned(f"backend {service}", detail + "; pods may still reach it", fix))


def _fetch_https(base: str, path: str, bundle_pem: bytes, *, hostname: str) -> str:
    """GET `base` + `path`, trusting only `bundle_pem` for `hostname`."""
    context = ssl.create_default_context(cadata=bundle_pem.decode("ascii", errors="replace")
                                         or None)
    pool = urllib3.PoolManager(ssl_context=context, retries=False, server_hostname=hostname,
                               assert_hostname=hostname,
                               timeout=urllib3.Timeout(connect=TLS_TIMEOUT_SECONDS, read=5))
    try:
        response = pool.request("GET", base.rstrip("/") + path)
    except urllib3.exceptions.HTTPError as error:
        raise OSError(str(getattr(error, "reason", None) or error)) from None
    finally:
        pool.clear()
    if response.status != 200:
        raise OSError(f"GET {path} answered {response.status}")
    return str(response.data.decode("utf-8", errors="replace"))


# --- helpers ------------------------------------------------------------------------------


def probe_pod() -> JsonObject:
    """A pod as the seed's chart writes them: a waiter for mlflow and in-cluster backend env.
    Whatever the configuration, the embedded rules change it, so it shows the webhook acts."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": PROBE_POD_NAME,
                     "labels": {"app.kubernetes.io/name": "backend-injector-doctor"}},
        "spec": {
            "initContainers": [{
                "name": "wait-for-mlflow", "image": "busybox:1.36",
                "command": ["sh", "-c", "until nc -z mlflow 5000; do sleep 2; done"],
            }],
            "containers": [{
                "name": "app", "image": "busybox:1.36", "command": ["true"],
                "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}],
            }],
        },
    }


def pod_from_template(owner: str, template: Mapping[str, Any]) -> JsonObject:
    metadata = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": f"{owner}-doctor-",
                     "labels": dict(metadata.get("labels") or {}),
                     "annotations": dict(metadata.get("annotations") or {})},
        "spec": template["spec"],
    }


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against `labels`."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _fetch_served(address: str, port: int, *, hostname: str, where: str) -> Served:
    """The certificate served at address:port for SNI `hostname`, without trusting it yet."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=TLS_TIMEOUT_SECONDS) as raw, \
                context.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return Served(cert_pem=None, hostname=hostname, where=where, error=reason)
    if der is None:
        return Served(cert_pem=None, hostname=hostname, where=where, error="no certificate")
    return Served(cert_pem=certs.der_to_pem(der), hostname=hostname, where=where)


def _dev_alive(url: str, annotations: Mapping[str, str]) -> bool | None:
    """True if something answers TLS at the dev URL (or its process runs here), False if
    nothing does, None when neither can be known from this machine."""
    parsed = urllib.parse.urlsplit(url)
    try:
        socket.getaddrinfo(parsed.hostname or "", parsed.port or 443)
        resolvable = True
    except OSError:
        resolvable = False
    if resolvable:
        served = _fetch_served(parsed.hostname or "", parsed.port or 443,
                               hostname=parsed.hostname or "", where=url)
        return served.cert_pem is not None
    if annotations.get(dev.HOST_ANNOTATION) == socket.gethostname():
        try:
            os.kill(int(annotations.get(dev.PID_ANNOTATION, "")), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True
    return None


def _pod_state(pod: Mapping[str, Any]) -> str:
    """The first waiting or terminated reason of its containers, else its phase."""
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            state = container.get("state") or {}
            for kind in ("waiting", "terminated"):
                reason = (state.get(kind) or {}).get("reason")
                if reason and reason != "Completed":
                    return str(reason)
    return str(status.get("phase", "Pending"))


def _refused(name: str, error: ClusterError) -> Check:
    return failed(name, error.problem,
                  error.fix or "ask for the rights the message names, or use another context")


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _bundle(client_config: Mapping[str, Any]) -> bytes:
    return certs.pem_from_base64(client_config.get("caBundle"))


def _client_url(configuration: Mapping[str, Any]) -> str:
    webhook = (configuration.get("webhooks") or [{}])[0]
    return str((webhook.get("clientConfig") or {}).get("url", "?"))


def _describe_target(client_config: Mapping[str, Any]) -> str:
    if client_config.get("url"):
        return str(client_config["url"])
    service = client_config.get("service") or {}
    return (f"Service {service.get('namespace')}/{service.get('name')}:"
            f"{service.get('port', 443)}{service.get('path', '')}")


def _refusal_fix(message: str) -> str:
    lowered = message.lower()
    if "x509" in lowered or "certificate" in lowered:
        return "the caBundle does not trust what the webhook serves: backend-injector install"
    if "no endpoints" in lowered or "connection refused" in lowered or "timeout" in lowered:
        return "the webhook is not running or not reachable from the apiserver"
    if "failed calling webhook" in lowered:
        return "see the webhook's log: kubectl -n backend-injector logs deploy/backend-injector"
    return "the apiserver's message above says what a real create would meet"
