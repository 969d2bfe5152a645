"""`backend-injector install`: bootstrap and renew the webhook's TLS material in a live cluster.

One run makes the cluster right and a second run changes nothing:

1. Read the TLS Secret. If it is missing, unparsable, issued for other hostnames, or expires
   within the renewal margin (`needs_reissue` says why), issue a new serving certificate and
   create or replace the Secret.
2. Make sure every webhook of the MutatingWebhookConfiguration trusts the CA in the Secret
   (`webhooks[*].clientConfig.caBundle`), patching only what differs.

The CA outlives serving certificates (`CA_LIFETIME_FACTOR`), so a routine renewal reuses it and
the caBundle does not change: the kube-apiserver never trusts a CA the running pods do not yet
serve from. When the CA itself must be replaced, the previous one stays in the caBundle next to
the new one until the next CA rotation, for the minute or so the pods take to pick up the new
files. The CA key is kept in the Secret (key `ca.key`) so that later runs can sign with it; the
serving Deployment mounts only `tls.crt` and `tls.key`.

Talking to the cluster goes through the `webhook.cluster.client` adapter (its `Cluster` protocol, so
the decisions can be tested against a fake); certificates are read, checked and made by
`webhook.certs`. What is left here is the reconcile logic and the Secret's layout.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook import certs
from webhook.cluster.client import Cluster, JsonObject, PatchOperation, connected

logger = logging.getLogger(__name__)

TLS_SECRET_TYPE = "kubernetes.io/tls"
CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"

# Serving certificates live `days`; the CA lives ten times that (3650 days for the default 365)
# so that renewing the serving certificate never has to touch the caBundle.
CA_LIFETIME_FACTOR = 10

# Certificates are regarded as already valid this long before their notBefore, matching the
# backdating in webhook.certs: a Secret issued by a machine whose clock runs a little ahead is
# not thrown away.
_CLOCK_SKEW = certs.CLOCK_SKEW_ALLOWANCE


class InstallError(Exception):
    """The cluster is not in a state `install` can fix: no webhook configuration, no rights,
    a Secret of the wrong type, or an object that changed under our feet (run again)."""


@dataclass(frozen=True)
class InstallResult:
    """What one `install` run did; all False means the cluster was already right."""

    issued: bool
    secret_updated: bool
    webhook_patched: bool
    not_after: dt.datetime
    reason: str | None = None

    @property
    def changed(self) -> bool:
        return self.secret_updated or self.webhook_patched

    def summary(self) -> str:
        """One human line for the CLI."""
        validity = f"serving certificate valid until {self.not_after.isoformat()}"
        if not self.changed:
            return f"nothing to do: {validity}; caBundle already current"
        done = []
        if self.issued:
            done.append(f"issued a new serving certificate ({self.reason})")
        if self.secret_updated:
            done.append("wrote the TLS Secret")
        if self.webhook_patched:
            done.append("patched the caBundle")
        return f"{'; '.join(done)}: {validity}"


def install(
    *,
    namespace: str,
    service: str,
    secret_name: str,
    webhook_config_name: str,
    days: int,
    renew_within_days: int,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> InstallResult:
    """Connect to the cluster (see `webhook.cluster.client.connect` for which configuration wins)
    and reconcile."""
    with connected(kubeconfig=kubeconfig, context=context) as cluster:
        return reconcile(
            cluster,
            namespace=namespace,
            service=service,
            secret_name=secret_name,
            webhook_config_name=webhook_config_name,
            days=days,
            renew_within_days=renew_within_days,
        )


def reconcile(
    cluster: Cluster,
    *,
    namespace: str,
    service: str,
    secret_name: str,
    webhook_config_name: str,
    days: int,
    renew_within_days: int,
    now: dt.datetime | None = None,
) -> InstallResult:
    """Bring the TLS Secret and the caBundle up to date; the whole of `install` but the wiring."""
    if renew_within_days >= days:
        # Otherwise every fresh certificate is already "due" and each run would reissue.
        raise InstallError(
            f"--renew-within-days ({renew_within_days}) must be less than --days ({days})"
        )
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    hostnames = certs.service_hostnames(service, namespace)

    # Read first so that a missing configuration does not leave a fresh Secret behind.
    webhook_configuration = _read_webhook_configuration(cluster, webhook_config_name)
    secret = _read_tls_secret(cluster, namespace=namespace, name=secret_name)
    secret_data = _secret_data(secret)
    reason = needs_reissue(secret_data, hostnames, moment, dt.timedelta(days=renew_within_days))
    if reason is None:
        material = _current_material(secret_data)
    else:
        logger.info("issuing a serving certificate", extra={"fields": {"reason": reason}})
        issued = _issue(secret_data, service=service, namespace=namespace, days=days, now=moment)
        body = tls_secret(
            namespace=namespace, name=secret_name, ca=issued.ca, serving=issued.serving
        )
        _write_secret(cluster, existing=secret, body=body)
        material = issued.material

    operations = ca_bundle_operations(
        webhook_configuration,
        ca_pem=material.ca_pem,
        previous_ca_pem=material.previous_ca_pem,
        # No certificate was issued, yet the bundle may lack the Secret's CA: someone put a new
        # CA in the Secret, and the servers still serve the one the bundle trusts.
        keep_current_ca=reason is None,
        now=moment,
    )
    if operations:
        cluster.patch_webhook_configuration(name=webhook_config_name, operations=operations)
    result = InstallResult(
        issued=reason is not None,
        secret_updated=reason is not None,
        webhook_patched=bool(operations),
        not_after=material.not_after,
        reason=reason,
    )
    logger.info(result.summary(), extra={"fields": _log_fields(result)})
    return result


@dataclass(frozen=True)
class _Material:
    """What the caBundle must trust after this run, and until when the certificate lasts."""

    ca_pem: bytes
    not_after: dt.datetime
    previous_ca_pem: bytes | None = None


@dataclass(frozen=True)
class _Issued:
    """Certificates issued by this run; `previous_ca_pem` is set when the CA was replaced."""

    ca: certs.KeyPair
    serving: certs.KeyPair
    previous_ca_pem: bytes | None

    @property
    def material(self) -> _Material:
        return _Material(
            ca_pem=self.ca.cert_pem,
            not_after=certs.not_after(self.serving.cert_pem),
            previous_ca_pem=self.previous_ca_pem,
        )


def _current_material(secret_data: Mapping[str, str] | None) -> _Material:
    return _Material(
        ca_pem=_decoded(secret_data, CA_CERT_KEY),
        not_after=certs.not_after(_decoded(secret_data, CERT_KEY)),
    )


def _issue(
    secret_data: Mapping[str, str] | None,
    *,
    service: str,
    namespace: str,
    days: int,
    now: dt.datetime,
) -> _Issued:
    """A new serving certificate, signed by the Secret's CA when it can outlive it."""
    previous_ca_pem = None
    ca = reusable_ca(secret_data, now=now, outlive=now + dt.timedelta(days=days))
    if ca is None:
        previous_ca_pem = _still_valid_ca(secret_data, now=now)
        ca = certs.build_ca(
            common_name=f"{service}.{namespace} webhook CA",
            days=days * CA_LIFETIME_FACTOR,
            now=now,
        )
    hostnames = certs.service_hostnames(service, namespace)
    serving = certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=days, now=now)
    return _Issued(ca=ca, serving=serving, previous_ca_pem=previous_ca_pem)


def _read_webhook_configuration(cluster: Cluster, name: str) -> JsonObject:
    configuration = cluster.read_webhook_configuration(name=name)
    if configuration is None:
        raise InstallError(
            f"MutatingWebhookConfiguration {name!r} not found: "
            "install the webhook first (helm install backend-injector charts/backend-injector "
            "-n backend-injector --create-namespace, "
            "or kubectl apply -k manifests/overlays/docker-desktop)"
        )
    return configuration


def _read_tls_secret(cluster: Cluster, *, namespace: str, name: str) -> JsonObject | None:
    secret = cluster.read_secret(namespace=namespace, name=name)
    if secret is not None and secret.get("type") != TLS_SECRET_TYPE:
        # The type of a Secret cannot be changed in place, and deleting someone's Secret is
        # not ours to decide.
        raise InstallError(
            f"Secret {namespace}/{name} has type {secret.get('type')!r}, "
            f"not {TLS_SECRET_TYPE!r}; delete it and run install again"
        )
    return secret


def _log_fields(result: InstallResult) -> dict[str, Any]:
    return {
        "issued": result.issued,
        "secret_updated": result.secret_updated,
        "webhook_patched": result.webhook_patched,
        "not_after": result.not_after.isoformat(),
    }


def needs_reissue(
    secret_data: Mapping[str, str] | None,
    hostnames: Sequence[str],
    now: dt.datetime,
    margin: dt.timedelta,
) -> str | None:
    """Why the Secret's serving certificate must be replaced, or None if it is fine.

    `secret_data` is the Secret's `data` as the API returns it (base64 values).
    """
    if secret_data is None:
        return "the Secret does not exist"
    missing = [key for key in (CA_CERT_KEY, CERT_KEY, KEY_KEY) if not secret_data.get(key)]
    if missing:
        return f"the Secret lacks {', '.join(missing)}"
    try:
        ca_pem, cert_pem, key_pem = (_decoded(secret_data, key)
                                     for key in (CA_CERT_KEY, CERT_KEY, KEY_KEY))
    except ValueError as error:
        return f"the Secret does not parse: {error}"
    return certs.serving_pair_problem(
        ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem, hostnames=hostnames, now=now,
        margin=margin, names=certs.PairNames(ca=CA_CERT_KEY, cert=CERT_KEY, key=KEY_KEY),
    )


def reusable_ca(
    secret_data: Mapping[str, str] | None, *, now: dt.datetime, outlive: dt.datetime
) -> certs.KeyPair | None:
    """The Secret's CA if it can sign the next serving certificate for its whole life."""
    if secret_data is None or not secret_data.get(CA_CERT_KEY) or not secret_data.get(CA_KEY_KEY):
        return None
    try:
        cert_pem = _decoded(secret_data, CA_CERT_KEY)
        key_pem = _decoded(secret_data, CA_KEY_KEY)
    except ValueError:
        return None
    if not certs.can_sign_until(cert_pem, key_pem, now=now, until=outlive):
        return None
    return certs.KeyPair(cert_pem=cert_pem, key_pem=key_pem)


def tls_secret(
    *, namespace: str, name: str, ca: certs.KeyPair, serving: certs.KeyPair
) -> JsonObject:
    """The TLS Secret for `serving`, with the CA (certificate and key) alongside."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "backend-injector"},
        },
        "type": TLS_SECRET_TYPE,
        "data": {
            CA_CERT_KEY: _encoded(ca.cert_pem),
            CA_KEY_KEY: _encoded(ca.key_pem),
            CERT_KEY: _encoded(serving.cert_pem),
            KEY_KEY: _encoded(serving.key_pem),
        },
    }


def ca_bundle_operations(
    webhook_configuration: JsonObject,
    *,
    ca_pem: bytes,
    previous_ca_pem: bytes | None = None,
    keep_current_ca: bool = False,
    now: dt.datetime | None = None,
) -> list[PatchOperation]:
    """JSON patch operations giving every webhook a caBundle that trusts `ca_pem`.

    A webhook whose caBundle already contains the CA is left alone. Each change is guarded by a
    `test` of the webhook's name, so a concurrent edit that reorders the list makes the patch
    fail instead of writing into the wrong webhook.

    With `keep_current_ca` (the Secret was replaced by hand with another CA, so this run has no
    `previous_ca_pem`) the first still-valid CA of the webhook's current bundle is kept beside
    the new one, because the running servers serve the old certificate until they load the new
    files, and a bundle without its CA would refuse every review meanwhile. A Secret deleted
    to be rebuilt (the path for a leaked key) does not set it: the old CA goes at once.
    """
    wanted = certs.fingerprint(ca_pem)
    operations: list[PatchOperation] = []
    for index, webhook in enumerate(webhook_configuration.get("webhooks") or []):
        current = certs.pem_from_base64((webhook.get("clientConfig") or {}).get("caBundle"))
        if wanted in certs.bundle_fingerprints(current):
            continue
        kept = previous_ca_pem
        if kept is None and keep_current_ca:
            moment = now if now is not None else dt.datetime.now(dt.UTC)
            kept = certs.first_valid_certificate(current, other_than=wanted, now=moment)
        bundle = _encoded(ca_pem + (kept or b""))
        operations.append(
            {"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]}
        )
        operations.append(
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
        )
    return operations


def _write_secret(cluster: Cluster, *, existing: JsonObject | None, body: JsonObject) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if existing is None:
        cluster.create_secret(namespace=namespace, body=body)
        return
    metadata = existing.get("metadata") or {}
    # Keep what others put on the Secret, and send the resourceVersion we read so that a
    # concurrent install (two Jobs, a person) gets a conflict instead of a lost update.
    body["metadata"] = {
        **body["metadata"],
        "labels": {**(metadata.get("labels") or {}), **body["metadata"]["labels"]},
        "annotations": metadata.get("annotations") or {},
        "resourceVersion": metadata.get("resourceVersion"),
    }
    cluster.replace_secret(namespace=namespace, name=name, body=body)


def _secret_data(secret: JsonObject | None) -> dict[str, str] | None:
    if secret is None:
        return None
    return dict(secret.get("data") or {})


def _still_valid_ca(secret_data: Mapping[str, str] | None, *, now: dt.datetime) -> bytes | None:
    """The Secret's CA certificate if it can still verify the serving certificate in use."""
    if secret_data is None or not secret_data.get(CA_CERT_KEY):
        return None
    try:
        ca_pem = _decoded(secret_data, CA_CERT_KEY)
        expires = certs.not_after(ca_pem)
    except ValueError:
        return None
    return ca_pem if expires > now else None


def _decoded(secret_data: Mapping[str, str] | None, key: str) -> bytes:
    if secret_data is None:
        raise ValueError("no Secret data")
    try:
        return base64.b64decode(secret_data[key], validate=True)
    except binascii.Error as error:
        raise ValueError(f"{key} is not base64: {error}") from error


def _encoded(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")
