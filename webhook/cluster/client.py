"""The one adapter between the CLI and a cluster, for ``install``, ``dev`` and ``doctor``.

The official client reads the kubeconfig (or the pod's service account): contexts, client
certificates, tokens, exec plugins. The requests themselves are made here, over urllib3, as
plain JSON: objects go out and come back as dicts (no model class drops a field it does not
know), admission warnings are read from the ``Warning`` headers the apiserver sends, and
every failure becomes a `ClusterError` whose message says what failed, where, and what to
do, because the CLI prints it as the one line a user sees.

``Cluster`` is the protocol the callers depend on, so their decisions can be tested against
an in-memory fake; `KubernetesCluster` is the real thing.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import urllib3

JsonObject = dict[str, Any]
PatchOperation = dict[str, Any]

WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# Long enough for an apiserver under load, short enough that a stopped cluster is reported
# while the user still looks at the terminal.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
_WARNING_HEADER = re.compile(r'^\s*\d{3}\s+\S+\s+"(?P<text>(?:[^"\\]|\\.)*)"')


class ClusterError(Exception):
    """The cluster could not be reached or refused a request; the message is for the user:
    ``problem`` says what failed and where, ``fix`` what to do (when something can be)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class Created:
    """What the apiserver answered to a create: the object, and its admission warnings."""

    object: JsonObject
    warnings: list[str] = field(default_factory=list)


class Cluster(Protocol):
    """The API calls ``install``, ``dev`` and ``doctor`` make; objects are plain JSON dicts."""

    @property
    def server(self) -> str: ...

    @property
    def context(self) -> str | None: ...

    def version(self) -> JsonObject: ...

    def get(self, path: str) -> JsonObject | None: ...

    def create(self, path: str, body: JsonObject, *, dry_run: bool = False) -> Created: ...

    def replace(self, path: str, body: JsonObject) -> JsonObject: ...

    def patch(self, path: str, operations: list[PatchOperation]) -> JsonObject: ...

    def delete(self, path: str) -> bool: ...

    def get_text(self, path: str) -> str: ...

    def read_secret(self, *, namespace: str, name: str) -> JsonObject | None: ...

    def create_secret(self, *, namespace: str, body: JsonObject) -> None: ...

    def replace_secret(self, *, namespace: str, name: str, body: JsonObject) -> None: ...

    def read_webhook_configuration(self, *, name: str) -> JsonObject | None: ...

    def patch_webhook_configuration(
        self, *, name: str, operations: list[PatchOperation]
    ) -> None: ...


def secret_path(namespace: str, name: str = "") -> str:
    return _join(f"/api/v1/namespaces/{_quote(namespace)}/secrets", name)


def webhook_configuration_path(name: str = "") -> str:
    return _join(WEBHOOK_CONFIGURATIONS, name)


def namespace_path(name: str) -> str:
    return f"/api/v1/namespaces/{_quote(name)}"


def namespaced_path(group_version: str, namespace: str, resource: str, name: str = "") -> str:
    """``/api/v1/...`` for the core group, ``/apis/GROUP/VERSION/...`` for the others."""
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return _join(f"{root}/namespaces/{_quote(namespace)}/{resource}", name)


def service_proxy_path(namespace: str, service: str, port: int | str, path: str) -> str:
    """The apiserver's proxy to a Service over HTTPS (``https:NAME:PORT``)."""
    return (f"/api/v1/namespaces/{_quote(namespace)}/services/"
            f"https:{_quote(service)}:{port}/proxy/{path.lstrip('/')}")


def _join(collection: str, name: str) -> str:
    return f"{collection}/{_quote(name)}" if name else collection


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class KubernetesCluster:
    """`Cluster` over urllib3, with the connection details of a loaded client configuration."""

    def __init__(self, configuration: Any, *, context: str | None,
                 namespace: str = "default") -> None:
        self._configuration = configuration
        self.namespace = namespace  # the context's namespace, as kubectl would use it
        self._server = str(configuration.host).rstrip("/")
        self._context = context
        self._pool = urllib3.PoolManager(
            ssl_context=_ssl_context(configuration),
            # One try: a refused connection is reported at once, not after three backoffs.
            retries=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
            # The kubeconfig may name the server by an address its certificate does not
            # carry and say which name to expect instead (tls-server-name).
            server_hostname=getattr(configuration, "tls_server_name", None) or None,
        )

    @property
    def server(self) -> str:
        return self._server

    @property
    def context(self) -> str | None:
        return self._context

    def close(self) -> None:
        self._pool.clear()

    # --- generic requests ------------------------------------------------------------------

    def version(self) -> JsonObject:
        found = self.get("/version")
        if found is None:
            raise ClusterError(f"{self._where()} has no /version: is this a Kubernetes API?")
        return found

    def get(self, path: str) -> JsonObject | None:
        response = self._request("GET", path, what=f"read {path}", missing_ok=True)
        return None if response is None else _json(response, path)

    def get_text(self, path: str) -> str:
        response = self._request("GET", path, what=f"read {path}", accept="text/plain, */*")
        assert response is not None
        return response.data.decode("utf-8", errors="replace")

    def create(self, path: str, body: JsonObject, *, dry_run: bool = False) -> Created:
        query = "?dryRun=All" if dry_run else ""
        kind = body.get("kind", "object")
        name = (body.get("metadata") or {}).get("name") or (body.get("metadata") or {}).get(
            "generateName", "")
        verb = "dry-run create" if dry_run else "create"
        response = self._request("POST", path + query, body=body, what=f"{verb} {kind} {name}")
        assert response is not None
        return Created(object=_json(response, path), warnings=_warnings(response))

    def replace(self, path: str, body: JsonObject) -> JsonObject:
        response = self._request("PUT", path, body=body, what=f"replace {path}")
        assert response is not None
        return _json(response, path)

    def patch(self, path: str, operations: list[PatchOperation]) -> JsonObject:
        response = self._request("PATCH", path, body=operations, what=f"patch {path}",
                                 content_type="application/json-patch+json")
        assert response is not None
        return _json(response, path)

    def delete(self, path: str) -> bool:
        """Delete; False when there was nothing to delete."""
        return self._request("DELETE", path, what=f"delete {path}", missing_ok=True) is not None

    # --- the calls `install` names -------------------------------------------------------

    def read_secret(self, *, namespace: str, name: str) -> JsonObject | None:
        return self.get(secret_path(namespace, name))

    def create_secret(self, *, namespace: str, body: JsonObject) -> None:
        self.create(secret_path(namespace), body)

    def replace_secret(self, *, namespace: str, name: str, body: JsonObject) -> None:
        self.replace(secret_path(namespace, name), body)

    def read_webhook_configuration(self, *, name: str) -> JsonObject | None:
        return self.get(webhook_configuration_path(name))

    def patch_webhook_configuration(self, *, name: str, operations: list[PatchOperation]) -> None:
        self.patch(webhook_configuration_path(name), operations)

    # --- the transport ---------------------------------------------------------------------

    def _headers(self, content_type: str | None, accept: str) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "backend-injector"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        # Tokens, including those an exec plugin or a refresh hook renews, come from here.
        for setting in (self._configuration.auth_settings() or {}).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        missing_ok: bool = False,
    ) -> urllib3.BaseHTTPResponse | None:
        encoded = None if body is None else json.dumps(body).encode("utf-8")
        try:
            response = self._pool.request(
                method,
                self._server + path,
                body=encoded,
                headers=self._headers(content_type if encoded is not None else None, accept),
            )
        except urllib3.exceptions.HTTPError as error:
            raise ClusterError(f"cannot reach {self._where()}: {_transport_reason(error)}",
                               self._start_hint()) from None
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            raise ClusterError(*self._refusal(response, what))
        return response

    def _where(self) -> str:
        context = f" (context {self._context})" if self._context else ""
        return f"the cluster at {self._server}{context}"

    def _start_hint(self) -> str:
        if self._context == "docker-desktop":
            return "start Kubernetes in Docker Desktop (Settings > Kubernetes) and try again"
        return "start the cluster, or choose another with --context; `kubectl cluster-info` " \
            "shows what kubectl reaches"

    def _refusal(self, response: urllib3.BaseHTTPResponse, what: str) -> tuple[str, str]:
        """(what failed, what to do) for an error status."""
        message = _status_message(response)
        if response.status == 401:
            return (f"cannot {what}: {self._where()} does not accept these credentials "
                    "(401 Unauthorized)", "renew the kubeconfig's credentials")
        if response.status == 403:
            return f"cannot {what}: forbidden: {message}", "ask for the RBAC rights it names"
        return f"cannot {what}: {response.status} {response.reason}: {message}", ""


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        # insecure-skip-tls-verify in the kubeconfig: the user asked for it.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def _transport_reason(error: urllib3.exceptions.HTTPError) -> str:
    reason: BaseException = getattr(error, "reason", None) or error
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        text = str(reason).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service not known" in text or "nodename nor servname" in text:
            return "host name not found"
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "host name not found"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return f"TLS failed ({reason})"
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return "no answer in time"
    return str(reason).split(": ", 1)[-1]


def _status_message(response: urllib3.BaseHTTPResponse) -> str:
    try:
        status = json.loads(response.data)
    except ValueError:
        return response.data.decode("utf-8", errors="replace")[:200].strip()
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return str(response.reason)


def _json(response: urllib3.BaseHTTPResponse, path: str) -> JsonObject:
    try:
        loaded = json.loads(response.data)
    except ValueError:
        raise ClusterError(f"{path}: the apiserver answered something that is not JSON") from None
    if not isinstance(loaded, dict):
        raise ClusterError(f"{path}: the apiserver answered a JSON {type(loaded).__name__}")
    return loaded


def _warnings(response: urllib3.BaseHTTPResponse) -> list[str]:
    """The texts of the ``Warning: 299 - "text"`` headers (RFC 7234), in order."""
    texts = []
    for header in response.headers.getlist("Warning"):
        match = _WARNING_HEADER.match(header)
        texts.append(match["text"].replace('\\"', '"') if match else header)
    return texts


# --- connecting --------------------------------------------------------------------------


def default_kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where kubectl looks: every file of $KUBECONFIG, or ~/.kube/config."""
    environ = os.environ if environ is None else environ
    listed = [Path(part) for part in environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    return listed or [Path.home() / ".kube" / "config"]


def connect(*, kubeconfig: str | None = None, context: str | None = None) -> KubernetesCluster:
    """The adapter for the chosen cluster. Explicit `kubeconfig`/`context` win; then the pod's
    service account when running in a cluster; then the default kubeconfig (as kubectl)."""
    from kubernetes import client  # imported here: `serve` never needs it

    configuration = client.Configuration()
    if kubeconfig is None and context is None and running_in_a_pod():
        return _connect_in_cluster(configuration)
    paths = [Path(kubeconfig)] if kubeconfig else default_kubeconfig_paths()
    return _connect_by_kubeconfig(configuration, paths, context)


def _connect_in_cluster(configuration: Any) -> KubernetesCluster:
    """With the pod's service account."""
    from kubernetes import config

    try:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except config.ConfigException as error:
        raise ClusterError(f"cannot use the pod's service account: {error}") from None
    return KubernetesCluster(configuration, context=None)


def _connect_by_kubeconfig(configuration: Any, paths: list[Path],
                           context: str | None) -> KubernetesCluster:
    """With the kubeconfig files at `paths`, merged as kubectl merges them."""
    import yaml
    from kubernetes import config

    where = os.pathsep.join(str(path) for path in paths)
    existing = [path for path in paths if path.is_file()]
    if not existing:
        raise ClusterError(
            f"no kubeconfig at {where}",
            "enable Kubernetes in Docker Desktop (it writes ~/.kube/config), or pass "
            "--kubeconfig FILE or set KUBECONFIG",
        )
    try:
        # A list in KUBECONFIG is merged as kubectl merges it (the client splits the string).
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=where, context=context, client_configuration=configuration,
            persist_config=False,
        )
        loaded = list(_kubeconfigs(existing))
        chosen = context or _current_context(loaded)
        namespace = _context_namespace(loaded, chosen)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ClusterError(f"{existing[0]}{line}: the kubeconfig is not valid YAML "
                           f"({error.problem})", "fix or regenerate it") from None
    except (config.ConfigException, yaml.YAMLError, ValueError, TypeError, KeyError,
            OSError) as error:
        raise ClusterError(f"kubeconfig {where}: {_config_reason(error)}",
                           "check it with `kubectl config view` (or pass --context)") from None
    return KubernetesCluster(configuration, context=chosen, namespace=namespace)


def _kubeconfigs(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """Each kubeconfig file as a mapping, in kubectl's order (the first to set a field wins)."""
    import yaml

    for path in paths:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            yield loaded


def _current_context(kubeconfigs: list[dict[str, Any]]) -> str | None:
    for loaded in kubeconfigs:
        if loaded.get("current-context"):
            return str(loaded["current-context"])
    return None


def _context_namespace(kubeconfigs: list[dict[str, Any]], context: str | None) -> str:
    for loaded in kubeconfigs:
        for entry in loaded.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == context:
                namespace = (entry.get("context") or {}).get("namespace")
                if namespace:
                    return str(namespace)
    return "default"


def _config_reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@contextmanager
def connected(*, kubeconfig: str | None = None,
              context: str | None = None) -> Iterator[KubernetesCluster]:
    """`connect`, closed again on leaving the block."""
    cluster = connect(kubeconfig=kubeconfig, context=context)
    try:
        yield cluster
    finally:
        cluster.close()


def running_in_a_pod() -> bool:
    # The same test client-go's InClusterConfig makes before it reads the token.
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )
