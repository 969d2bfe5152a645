"""`backend-injector dev`: the webhook on this machine, registered with the current cluster.

No image and no manifests: the webhook is served here, with a CA and certificate made for the
host the cluster will call (``host.docker.internal`` for Docker Desktop, whose VM reaches the
host by that name), and a MutatingWebhookConfiguration of its own points the apiserver at it
by URL (``clientConfig.url``). The registration is removed when the command ends (Ctrl-C,
SIGTERM).

A process killed with SIGKILL cannot remove anything, so the registration is made to be
harmless when left behind: ``failurePolicy: Ignore`` (a webhook that does not answer lets pods
through unchanged instead of blocking them), a name of its own that the real deployment never
uses (so it never shadows or deletes an installed webhook), and the namespace selector of the
deployed webhook (only opted-in namespaces are sent). The annotations say who registered it
and where; `DevRegistration` reads them back, and tells ``doctor`` whether the process that
made it still answers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

from webhook import certs
from webhook.cluster.client import Cluster, ClusterError, JsonObject, webhook_configuration_path
from webhook.cluster.served import fetch_served, unverified_tls_context
from webhook.rules.mutate import INJECT_KEY
from webhook.settings import Settings, hosts_without_address

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://host.docker.internal:8443/mutate"
# Names whose connections Docker Desktop delivers to the host's loopback.
FORWARDED_TO_LOOPBACK = frozenset({"host.docker.internal", "docker.for.mac.localhost",
                                   "docker.for.win.localhost"})
DEV_CONFIGURATION = "backend-injector-dev"
DEV_WEBHOOK = "dev.backend-injector.local"
# Who made the registration; `DevRegistration` reads them to tell a live one from a stale one.
URL_ANNOTATION = "backend-injector/dev-url"
HOST_ANNOTATION = "backend-injector/dev-host"
PID_ANNOTATION = "backend-injector/dev-pid"
STARTED_ANNOTATION = "backend-injector/dev-started"
# The certificate lives as long as a working day or two; dev mode makes a new one each start.
CERTIFICATE_DAYS = 2
LISTEN_TIMEOUT_SECONDS = 30.0

# The same selectors as manifests/base/mutatingwebhookconfiguration.yaml (a test holds them
# equal): opted-in namespaces only, never the webhook's own or kube-system, and pods that opt
# out by label are not even sent.
NAMESPACE_SELECTOR: JsonObject = {
    "matchExpressions": [
        {"key": INJECT_KEY, "operator": "In", "values": ["enabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["backend-injector", "kube-system"]},
    ]
}
OBJECT_SELECTOR: JsonObject = {
    "matchExpressions": [{"key": INJECT_KEY, "operator": "NotIn", "values": ["false"]}]
}


class DevError(Exception):
    """Dev mode cannot start: a bad --url, or the port cannot be listened on."""


@dataclass(frozen=True)
class Target:
    """Where the cluster calls the webhook, and where this process listens for it."""

    url: str
    host: str
    port: int
    listen_host: str


def parse_url(url: str, *, listen_host: str | None = None) -> Target:
    """Check `url` is an https URL with a host, and choose where to listen.

    Without `listen_host`, the narrowest address the cluster can still reach:

    * a loopback URL, and ``host.docker.internal``: loopback. Docker Desktop forwards a
      connection to ``host.docker.internal`` to the host's loopback (vpnkit's ``--host-ip``:
      "connections to this IP will be forwarded to localhost on the host"), so nothing on
      the LAN can reach the dev webhook;
    * an IP address: that address only (it must be one of this machine's);
    * any other name (``host.minikube.internal``, ``host.k3d.internal``...): every interface,
      because it is resolved inside the cluster's VM or container network, and which of this
      machine's interfaces that reaches cannot be known from here; ``--listen`` narrows it.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise DevError(f"--url {url!r} must be an https:// URL with a host, e.g. {DEFAULT_URL}")
    if parsed.query or parsed.fragment:
        raise DevError(f"--url {url!r} may not have a query or fragment (the apiserver refuses)")
    try:
        port = parsed.port or 443
    except ValueError:
        raise DevError(f"--url {url!r} has an invalid port") from None
    host = parsed.hostname
    if listen_host is None:
        listen_host = _narrowest_listen_address(host)
    return Target(url=url, host=host, port=port, listen_host=listen_host)


def _narrowest_listen_address(host: str) -> str:
    if host.lower() in FORWARDED_TO_LOOPBACK:
        return "127.0.0.1"
    if _is_loopback(host):
        return host
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "0.0.0.0"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def registration(target: Target, ca_pem: bytes, *, now: dt.datetime | None = None) -> JsonObject:
    """The dev MutatingWebhookConfiguration: by URL, failing open, opted-in namespaces only."""
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": DEV_CONFIGURATION,
            "labels": {"app.kubernetes.io/name": "backend-injector",
                       "app.kubernetes.io/component": "dev"},
            "annotations": {
                URL_ANNOTATION: target.url,
                HOST_ANNOTATION: socket.gethostname(),
                PID_ANNOTATION: str(os.getpid()),
                STARTED_ANNOTATION: moment.isoformat(timespec="seconds"),
            },
        },
        "webhooks": [{
            "name": DEV_WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "url": target.url,
                "caBundle": base64.b64encode(ca_pem).decode("ascii"),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": NAMESPACE_SELECTOR,
            "objectSelector": OBJECT_SELECTOR,
            # Left behind by a killed process, it must never block pod creation.
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "sideEffects": "None",
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
        }],
    }


class Liveness(StrEnum):
    """Whether the process behind a dev registration still serves it."""

    LIVE = "live"
    STALE = "stale"
    UNKNOWN = "unknown"  # neither its URL nor its process can be seen from this machine


@dataclass(frozen=True)
class DevRegistration:
    """Who made a dev registration, and where the apiserver calls it, as read back from the
    MutatingWebhookConfiguration (`None` where an annotation is missing)."""

    url: str | None
    host: str | None
    pid: str | None
    started: str | None

    @classmethod
    def read(cls, configuration: Mapping[str, Any]) -> DevRegistration:
        annotations = (configuration.get("metadata") or {}).get("annotations") or {}
        webhook = (configuration.get("webhooks") or [{}])[0]
        url = (webhook.get("clientConfig") or {}).get("url")
        return cls(url=None if url is None else str(url),
                   host=annotations.get(HOST_ANNOTATION),
                   pid=annotations.get(PID_ANNOTATION),
                   started=annotations.get(STARTED_ANNOTATION))

    @property
    def owner(self) -> str:
        """``pid 4242 on laptop, since 2025-01-01T09:00:00+00:00``, with ``?`` for the unknown."""
        return (f"pid {_or_unknown(self.pid)} on {_or_unknown(self.host)}, "
                f"since {_or_unknown(self.started)}")

    def made_by_this_process(self) -> bool:
        return self.pid == str(os.getpid()) and self.host == socket.gethostname()

    def liveness(self) -> Liveness:
        """LIVE if something answers TLS at the URL (or, when this machine cannot resolve the
        URL's host, the process that made it runs here), STALE if not, UNKNOWN when the URL
        cannot be resolved here and the process ran on another machine."""
        parsed = urllib.parse.urlsplit(self.url or "?")
        host, port = parsed.hostname or "", parsed.port or 443
        try:
            socket.getaddrinfo(host, port)
        except OSError:
            return self._process_liveness()
        served = fetch_served(host, port, hostname=host, where=self.url or "?")
        return Liveness.LIVE if served.cert_pem is not None else Liveness.STALE

    def _process_liveness(self) -> Liveness:
        if self.host != socket.gethostname():
            return Liveness.UNKNOWN
        try:
            pid = int(self.pid or "")
            if pid <= 0:
                return Liveness.STALE  # 0 and negatives name process groups, never dev
            os.kill(pid, 0)  # signal 0: is there such a process, no more
        except (ValueError, OverflowError, ProcessLookupError):  # not a pid, or gone
            return Liveness.STALE
        except PermissionError:
            pass  # it exists, under another user
        return Liveness.LIVE


def _or_unknown(value: str | None) -> str:
    return "?" if value is None else value


def register(cluster: Cluster, body: JsonObject) -> bool:
    """Create the registration, or replace one left by an earlier run; True if replaced."""
    path = webhook_configuration_path(DEV_CONFIGURATION)
    existing = cluster.get(path)
    if existing is None:
        cluster.create(webhook_configuration_path(), body)
        return False
    left_behind = DevRegistration.read(existing)
    logger.warning(
        "replacing a dev registration left by an earlier run",
        extra={"fields": {"host": left_behind.host, "pid": left_behind.pid,
                          "url": left_behind.url}},
    )
    replacement = {**body, "metadata": {
        **body["metadata"], "resourceVersion": existing["metadata"].get("resourceVersion")}}
    cluster.replace(path, replacement)
    return True


def unregister(cluster: Cluster) -> bool:
    """Delete the registration if it is still ours (this process made it); True if deleted."""
    path = webhook_configuration_path(DEV_CONFIGURATION)
    existing = cluster.get(path)
    if existing is None:
        return False
    current = DevRegistration.read(existing)
    if not current.made_by_this_process():
        # Another dev process took the name over since; its registration is not ours.
        logger.warning("the dev registration now belongs to another process; left in place",
                       extra={"fields": {"host": current.host, "pid": current.pid}})
        return False
    return cluster.delete(path)


@contextlib.contextmanager
def dev_certificates(target: Target, directory: Path | None = None) -> Iterator[certs.BundlePaths]:
    """A fresh CA and a serving certificate for the URL's host, in a private directory."""
    hostnames = list(dict.fromkeys([target.host, "localhost", "127.0.0.1"]))
    ca = certs.build_ca(common_name="backend-injector dev CA", days=CERTIFICATE_DAYS)
    serving = certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=CERTIFICATE_DAYS)
    with contextlib.ExitStack() as stack:
        out = directory or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="backend-injector-dev-")))
        yield certs.write_bundle(out, ca=ca, serving=serving)


def wait_until_listening(target: Target, *, timeout: float = LISTEN_TIMEOUT_SECONDS,
                         stopped: Callable[[], bool] = lambda: False) -> bool:
    """Until a TLS handshake succeeds on the listening address; False on timeout or stop."""
    address = "127.0.0.1" if target.listen_host in ("0.0.0.0", "") else target.listen_host
    context = unverified_tls_context()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopped():
        try:
            with socket.create_connection((address, target.port), timeout=1) as raw, \
                    context.wrap_socket(raw):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def run_dev(
    settings: Settings,
    cluster: Cluster,
    target: Target,
    *,
    serve: Callable[[Settings], int],
    certs_dir: Path | None = None,
) -> int:
    """Serve and stay registered until a signal; the registration goes whatever happens.

    The server runs in this thread (it owns the signals); a helper thread registers once the
    listener answers. SIGINT and SIGTERM stop the server, and the registration is deleted on
    the way out. Between the two the apiserver finds nothing listening, which
    ``failurePolicy: Ignore`` turns into pods admitted unchanged, as after the command ended.

    The caller has asked the cluster for its version first (the CLI does, before it prints
    anything), so a stopped cluster fails before anything listens and nothing is left to undo.
    """
    failure: list[BaseException] = []
    registered = threading.Event()
    finished = threading.Event()

    with dev_certificates(target, certs_dir) as paths:
        ca_pem = paths.ca_cert.read_bytes()

        def register_when_listening() -> None:
            try:
                if not wait_until_listening(target, stopped=finished.is_set):
                    if not finished.is_set():
                        raise DevError(f"nothing answered on {target.listen_host}:{target.port} "
                                       f"within {LISTEN_TIMEOUT_SECONDS:.0f}s")
                    return
                replaced = register(cluster, registration(target, ca_pem))
                registered.set()
                logger.info("registered with the cluster: opted-in pods now come here",
                            extra={"fields": {"url": target.url, "server": cluster.server,
                                              "configuration": DEV_CONFIGURATION,
                                              "replaced_stale": replaced,
                                              "opt_in": "backend-injector label NAME"}})
            except (ClusterError, DevError) as error:
                failure.append(error)
                # The server owns the main thread; a signal is how it is asked to stop.
                signal.raise_signal(signal.SIGTERM)

        # One worker: its server owns the signals, which is how the registration goes.
        on_this_machine = replace(settings, serving=replace(
            settings.serving, host=target.listen_host, port=target.port, workers=1,
            tls_cert=paths.cert, tls_key=paths.key,
        ))
        helper = threading.Thread(target=register_when_listening, name="dev-register",
                                  daemon=True)
        if unaddressed := hosts_without_address(settings):
            # This machine resolves them differently from the pods (or not at all).
            logger.warning("safety net off for external hosts without a configured address: "
                           "pods get no hostAliases for them (set safety_net.addresses)",
                           extra={"fields": {"hosts": unaddressed}})
        previous = _stop_on_signals()
        try:
            helper.start()
            serve(on_this_machine)
        except _Stopped:
            pass
        finally:
            finished.set()
            _restore(previous)
            helper.join(timeout=LISTEN_TIMEOUT_SECONDS)
            _leave(cluster, registered.is_set())
    if failure:
        raise failure[0]
    return 0


def _leave(cluster: Cluster, registered: bool) -> None:
    if not registered:
        return
    try:
        removed = unregister(cluster)
    except ClusterError as error:
        logger.error("could not remove the dev registration; it fails open (Ignore), delete "
                     f"it with: kubectl delete mutatingwebhookconfiguration {DEV_CONFIGURATION}",
                     extra={"fields": {"error": str(error)}})
        return
    if removed:
        logger.info("removed the dev registration",
                    extra={"fields": {"configuration": DEV_CONFIGURATION}})


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived after the server had finished with it."""


SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def _stop_on_signals() -> dict[int, SignalHandler]:
    """SIGINT and SIGTERM end `run_dev` through its finally (the default SIGTERM would kill
    the process without removing the registration). While the server runs it handles them
    itself and returns once drained, and `run_dev`'s finally removes the registration; before
    it starts and after it returns, they land here."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stopped(signum)

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(previous: dict[int, SignalHandler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
