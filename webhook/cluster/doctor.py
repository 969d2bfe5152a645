"""`backend-injector doctor`: why a pod was or was not changed, one line per check.

Each check passes or fails, and a failure says what to do. In order: the cluster answers; the
webhook is registered (the installed configuration, else the dev one); its caBundle verifies
the certificate the webhook really serves (fetched from the Service's endpoints or the dev URL,
and checked as the apiserver checks it); that certificate is not about to expire; the Service
has ready endpoints; the namespace is selected; no dev registration was left behind by a killed
process; which other webhooks and policies also change the namespace's pods (`overlap`); what
the webhook sees of the external backend; and the decisive one, a server-side
dry-run create (``dryRun=All``) of a pod in the namespace and of the pod templates of its
workloads, whose admission warnings say what the webhook changed; the Secret the admitted test
pod reads its credentials from, when it reads them by reference. The dry run goes through
every admission step a real create takes, so it fails exactly when a real pod would. Then the
pods already there that wait in Init although the webhook would change them (`stuck`): created
before it acted, they never will be changed, and ``restart`` creates them anew. With
``--connectivity``, last, a short-lived pod of the namespace connects to each external service
(`connectivity`).

Only `webhook.cluster.client` talks to the cluster, and certificates are judged by `webhook.certs`.
The runner and the checks are here; what they read lives beside it: `checks` (a check's
verdict), `served` (what the webhook serves), `endpoints` (the Service's ready endpoints and
pods), `pods` (what is dry-run), `selectors`, and `dev` (whether a dev registration is live).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from webhook import certs
from webhook.cluster import credentials, dev, overlap
from webhook.cluster.checks import Check, Status, failed, passed, refused, warned
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
from webhook.cluster.connectivity import ConnectivityOptions, ConnectivityProbe
from webhook.cluster.credentials import DEFAULT_WEBHOOK_CONFIGURATION
from webhook.cluster.endpoints import ServiceEndpoints
from webhook.cluster.platform import platform_checks
from webhook.cluster.pods import trial_pod, workload_pods
from webhook.cluster.selectors import selector_matches
from webhook.cluster.served import Served, fetch_https, fetch_served, host_port
from webhook.cluster.stuck import admitted_by_webhook, listed, read_stuck
from webhook.rules.mutate import INJECT_KEY, Rules
from webhook.serving import reachability
from webhook.settings import ConfigError, Settings, load_settings

# What the CLI and scripts import from here; the verdicts themselves live in `checks`.
__all__ = ["DEFAULT_TLS_SECRET", "DEFAULT_WEBHOOK_CONFIGURATION", "Check", "Doctor", "Status",
           "backend_lines"]

DEFAULT_TLS_SECRET = "backend-injector-tls"
EXPIRY_WARNING = dt.timedelta(days=30)
# Enough to see a chart's workloads; more would make the output a wall.
MOST_WORKLOADS = 20
# Stuck pods named on doctor's line; the rest are counted.
MOST_STUCK_PODS = 10


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
        connectivity: ConnectivityOptions | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.webhook_configuration = webhook_configuration
        self.tls_secret = tls_secret
        self.now = now if now is not None else dt.datetime.now(dt.UTC)
        self.endpoints = ServiceEndpoints(cluster)
        # Where a refused dry run's fix sends the user; known once the registration is read.
        self.webhook_log = _log_command(None)
        # Given (doctor --connectivity): a pod of the namespace connects to the backend.
        self.connectivity = connectivity
        # The configuration the platform and stuck-pod checks judge by (the CLI's --config,
        # --platform, --external-host); None: as serve would find it here.
        self.settings = settings

    def run(self) -> Iterator[Check]:
        """The checks in order, each as soon as it is made. A request the cluster refuses
        (RBAC, typically) fails that check only, with the apiserver's reason."""
        self.endpoints.forget()
        reachable = self._reachable()
        yield reachable
        if reachable.status is Status.FAIL:
            return
        yield from platform_checks(self.cluster, self.settings)
        try:
            installed = self._installed()
            dev_registration = self.cluster.get(
                webhook_configuration_path(dev.DEV_CONFIGURATION))
        except ClusterError as error:
            yield refused("webhook configuration", error)
            return
        configuration = installed if installed is not None else dev_registration
        self.webhook_log = _log_command(configuration)
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
        yield self._overlap(configuration, (installed, dev_registration))
        if configuration is not None:
            yield from self._backend(configuration)
        try:
            yield from self._dry_runs()
        except ClusterError as error:
            yield refused("dry-run", error)
        yield from self._stuck_pods()
        if self.connectivity is not None:
            yield from ConnectivityProbe(self.cluster, self.namespace, self.connectivity).run()

    @staticmethod
    def _guarded(name: str, check: Callable[[], Check]) -> Check:
        try:
            return check()
        except ClusterError as error:
            return refused(name, error)

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
                      "charts/backend-injector -n backend-injector --create-namespace, or "
                      "kubectl apply -k "
                      "manifests/overlays/docker-desktop), or run backend-injector dev")

    def _served(self, client_config: Mapping[str, Any]) -> Served:
        url = client_config.get("url")
        if url:
            parsed = urllib.parse.urlsplit(str(url))
            host, port = parsed.hostname or "", parsed.port or 443
            return fetch_served(host, port, hostname=host, where=str(url))
        return self._served_by_service(client_config.get("service") or {})

    def _served_by_service(self, service: Mapping[str, Any]) -> Served:
        """From the first ready endpoint that answers, else from the Secret the pods mount."""
        hostname = f"{service.get('name')}.{service.get('namespace')}.svc"
        addresses, port = self.endpoints.ready_addresses(service)
        errors = []
        for address in addresses:
            served = fetch_served(address, port, hostname=hostname,
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
        addresses, port = self.endpoints.ready_addresses(service)
        where = f"Service {service.get('namespace')}/{service.get('name')}"
        if not addresses:
            namespace = str(service.get("namespace"))
            pods, fix = self.endpoints.why_none(namespace, str(service.get("name")))
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
                      f"backend-injector label {self.namespace} (the label, and the "
                      "credentials Secret its pods read)")

    def _dev_leftover(self, configuration: JsonObject | None, *, active: bool) -> Check:
        name = "no stale dev registration"
        if configuration is None:
            return passed(name, f"no {dev.DEV_CONFIGURATION}")
        url = _client_url(configuration)
        registration = dev.DevRegistration.read(configuration)
        owner = registration.owner
        liveness = registration.liveness()
        if liveness is dev.Liveness.LIVE:
            detail = f"{dev.DEV_CONFIGURATION} is live at {url} ({owner})"
            if not active:
                return warned(name, detail + "; pods are changed by it and by the installed "
                                    "webhook", "stop backend-injector dev when done")
            return passed(name, detail)
        fix = (f"kubectl delete mutatingwebhookconfiguration {dev.DEV_CONFIGURATION} (it fails "
               "open, so pods are admitted unchanged meanwhile), or start dev again")
        if liveness is dev.Liveness.UNKNOWN:
            return warned(name, f"{dev.DEV_CONFIGURATION} calls {url} ({owner}), which cannot "
                                "be checked from here", fix)
        return failed(name, f"{dev.DEV_CONFIGURATION} is stale: nothing answers at {url} "
                            f"({owner})", fix)

    def _backend(self, configuration: Mapping[str, Any]) -> Iterator[Check]:
        """What the webhook's own reachability checks say of the backend, from its /metrics.

        A dev webhook is asked at its URL. An installed one through the apiserver's service
        proxy (no port-forward, no route to the pod needed), else at a ready endpoint when
        this machine can reach it; either way the figures are the pod's own."""
        client_config = (configuration.get("webhooks") or [{}])[0].get("clientConfig") or {}
        bundle = _bundle(client_config)
        url = client_config.get("url")
        try:
            if url:
                parsed = urllib.parse.urlsplit(str(url))
                text = fetch_https(f"https://{parsed.netloc}", "/metrics", bundle,
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
                addresses, port = self.endpoints.ready_addresses(service)
                if not addresses:
                    raise OSError(proxy_error.problem) from None
                text = fetch_https(f"https://{host_port(addresses[0], port)}", "/metrics",
                                   bundle, hostname=f"{name}.{namespace}.svc")
            yield from backend_lines(text, seen_from)
        except OSError as error:
            yield warned("backend as the webhook sees it",
                         f"cannot read the webhook's /metrics: {error}")

    def _overlap(self, configuration: JsonObject | None,
                 own: tuple[JsonObject | None, ...]) -> Check:
        """Other webhooks and policies that change the namespace's pods (a warning: they may
        be meant to, but their order decides what a pod ends up with)."""
        names = {self.webhook_configuration, dev.DEV_CONFIGURATION,
                 *((item.get("metadata") or {}).get("name", "") for item in own if item)}
        try:
            return overlap.overlap_check(self.cluster, self.namespace, ours=configuration,
                                         own_names=names)
        except ClusterError as error:
            return warned(overlap.CHECK_NAME, error.problem,
                          error.fix or "ask for the right to list mutating webhook "
                          "configurations and MutatingAdmissionPolicies")

    def _dry_runs(self) -> Iterator[Check]:
        if self.cluster.get(namespace_path(self.namespace)) is None:
            return
        trial, admitted = self._dry_run("a test pod", trial_pod(), decisive=True)
        yield trial
        if admitted is not None:
            yield self._credentials(admitted)
        workloads = list(workload_pods(self.cluster, self.namespace))
        for label, pod in workloads[:MOST_WORKLOADS]:
            yield self._dry_run(label, pod, decisive=False)[0]
        if len(workloads) > MOST_WORKLOADS:
            yield passed("dry-run", f"{len(workloads) - MOST_WORKLOADS} more workloads not tried")

    def _dry_run(self, label: str, pod: JsonObject, *,
                 decisive: bool) -> tuple[Check, JsonObject | None]:
        """The verdict, and the pod as admitted when the webhook changed it."""
        name = f"dry-run {label}"
        path = namespaced_path("v1", self.namespace, "pods")
        try:
            created = self.cluster.create(path, pod, dry_run=True)
        except ClusterError as error:
            return failed(name, f"refused in {self.namespace}: {error}",
                          _refusal_fix(str(error), self.webhook_log)), None
        changes = "; ".join(created.warnings) or "the webhook's status annotation only"
        if admitted_by_webhook(created.object):
            return passed(name, f"changed by the webhook: {changes}"), created.object
        if decisive:
            return failed(name, f"came back unchanged from {self.namespace}: the webhook was "
                                "not called, or failed open",
                          "see the failed checks above"), None
        return passed(name, "nothing for the webhook to change"), None

    def _stuck_pods(self) -> Iterator[Check]:
        """The namespace's pods that wait in Init although the webhook would change them:
        created before it acted here, they were never changed and never will be."""
        name = "pods stuck in Init"
        try:
            if self.cluster.get(namespace_path(self.namespace)) is None:
                return
            settings = self.settings if self.settings is not None else load_settings()
            stuck = read_stuck(self.cluster, self.namespace, Rules(settings))
        except ClusterError as error:
            yield refused(name, error)
            return
        except ConfigError as error:
            yield warned(name, f"not checked: {error}")
            return
        if not stuck:
            yield passed(name, "no pod waits in Init for what the webhook would change")
            return
        yield warned(name, f"{len(stuck)} pods created without the webhook's changes wait in "
                           f"Init: {'; '.join(listed(stuck, MOST_STUCK_PODS))}. The dry runs "
                           "are of new pods; these, already there, were not changed and never "
                           "will be (the webhook acts when a pod is created)",
                     f"backend-injector restart -n {self.namespace} (once the namespace is "
                     "selected: it creates them anew)")

    def _credentials(self, admitted: JsonObject) -> Check:
        """The Secret the admitted test pod reads by reference is there, with its keys: a pod
        admitted with a reference to nothing stops in CreateContainerConfigError."""
        name = f"credentials Secret in {self.namespace}"
        wanted = sorted(set(credentials.references(admitted)))
        if not wanted:
            return passed(name, "not needed: the webhook writes no secretKeyRef here")
        try:
            missing = credentials.missing_references(self.cluster, self.namespace, wanted)
        except ClusterError as error:
            return refused(name, error)
        if missing:
            return failed(name, f"pods will reference {', '.join(missing)}, which "
                                f"{self.namespace} lacks (they would not start)",
                          f"backend-injector label {self.namespace} (copies it from the "
                          "installed webhook's Secret), or list the namespace in the chart's "
                          "credentials.namespaces")
        names = sorted({secret for secret, _ in wanted})
        return passed(name, f"{', '.join(names)} holds every key pods reference")


# --- the backend, as the webhook sees it -----------------------------------------------------


def backend_lines(text: str, seen_from: str, *, from_pods: bool = True) -> Iterator[Check]:
    """One line per external service, from the webhook's /metrics exposition.

    A webhook in the cluster sees the backend as the pods do, so a service it cannot reach
    fails the check. A dev webhook runs on this machine, which may not even resolve
    ``host.docker.internal``: what it sees is only a hint (warn)."""
    samples = reachability.parse_exposition(text)
    if not samples:
        yield warned("backend as the webhook sees it",
                     f"the webhook at {seen_from} exports no {reachability.UP_METRIC} yet",
                     # Printed as users have always read it: the round of reachability checks.
                     "wait for its first probe round, or upgrade the webhook")
        return
    for service, values in sorted(samples.items()):
        seconds = values.get("seconds", 0.0)
        if values.get("up") == 1.0:
            yield passed(f"backend {service}",
                         f"reachable from {seen_from} (TCP connect {seconds * 1000:.1f} ms)")
            continue
        how = (f"no answer within {seconds:.1f} s"
               if seconds >= reachability.CHECK_TIMEOUT_SECONDS * 0.95
               else f"TCP connect failed after {seconds * 1000:.0f} ms")
        detail = f"not reachable from {seen_from} ({how})"
        fix = (f"start {service} where the webhook's configuration says it runs, or correct "
               f"services.{service}.external")
        yield (failed(f"backend {service}", detail, fix) if from_pods else
               warned(f"backend {service}", detail + "; pods may still reach it", fix))


# --- helpers ------------------------------------------------------------------------------


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


def _log_command(configuration: Mapping[str, Any] | None) -> str:
    """How to read the log of the webhook a configuration calls: its Deployment bears its
    Service's name, in whichever namespace it was installed (the chart's is the release's)."""
    client_config = ((configuration or {}).get("webhooks") or [{}])[0].get("clientConfig") or {}
    service = client_config.get("service") or {}
    if service.get("name") and service.get("namespace"):
        return f"kubectl -n {service['namespace']} logs deploy/{service['name']}"
    if client_config.get("url"):
        return "the output of backend-injector dev"
    return "the log of the webhook named in the message"


def _refusal_fix(message: str, webhook_log: str) -> str:
    lowered = message.lower()
    if "x509" in lowered or "certificate" in lowered:
        return "the caBundle does not trust what the webhook serves: backend-injector install"
    if "no endpoints" in lowered or "connection refused" in lowered or "timeout" in lowered:
        return "the webhook is not running or not reachable from the apiserver"
    if "failed calling webhook" in lowered:
        return f"see the webhook's log: {webhook_log}"
    return "the apiserver's message above says what a real create would meet"
