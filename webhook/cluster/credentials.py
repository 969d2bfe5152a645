"""The S3 credentials Secret in each namespace that opts in, for pods that read it by reference.

In the default credentials mode (``secretKeyRef``) a mutated pod gets ``valueFrom.secretKeyRef``
to the Secret ``credentials.secret_name`` of its own namespace, so no answer of the webhook
carries a value. That Secret has to exist where the pods are. It is written here, with the
rights of whoever runs the command (``label``, ``credentials``, ``dev``), never by the webhook's
serving pods, which keep no API rights at all: a pod that can post a review gets nothing, and a
namespace that did not opt in has no copy to read.

Where the values come from, first found wins:

1. ``BACKEND_INJECTOR_ACCESS_KEY_ID``/``..._SECRET_ACCESS_KEY`` (or their ``_FILE`` forms) given
   to this command: the user said which;
2. the installed webhook's own credentials Secret (the chart's or the kustomize base's, in the
   namespace of the webhook's Service): the one place a deployment keeps them;
3. MinIO's development default, with a warning.

Every copy is labelled as this tool's; a Secret of the same name that someone else manages (a
Helm release's copies, the user's own) is left as it is and reported, so that two owners never
fight over it. Rotation is the same call again: each copy whose data differs is replaced.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from webhook.cluster.client import (
    Cluster,
    JsonObject,
    secret_path,
    webhook_configuration_path,
)
from webhook.rules.mutate import INJECT_KEY
from webhook.settings import DEVELOPMENT_CREDENTIAL, ENV_PREFIX, CredentialMode, Credentials

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "backend-injector"
DEFAULT_SOURCE_NAMESPACE = "backend-injector"
# The installed webhook's registration, as the manifests and the chart name it.
DEFAULT_WEBHOOK_CONFIGURATION = "backend-injector"
# What decides which namespaces are opted in: the label the webhook's namespaceSelector asks for.
INJECT_LABEL = (INJECT_KEY, "enabled")


class CredentialsError(Exception):
    """The values cannot be had from the source the user named."""


@dataclass(frozen=True)
class CredentialValues:
    """The two values and where they came from. ``repr`` hides the values."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    source: str

    @property
    def is_development_default(self) -> bool:
        return DEVELOPMENT_CREDENTIAL in (self.access_key_id, self.secret_access_key)


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FOREIGN = "left alone: managed by another owner"
    WOULD_CREATE = "would be created"
    WOULD_UPDATE = "would be updated"


def given_in_environment(environ: Mapping[str, str]) -> bool:
    """Whether the user gave this command credentials of its own (either form)."""
    names = ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
    return any(ENV_PREFIX + name + suffix in environ for name in names for suffix in ("", "_FILE"))


def webhook_namespace(cluster: Cluster, configuration: str = DEFAULT_WEBHOOK_CONFIGURATION) -> str:
    """The namespace the installed webhook's Service is in, where its credentials Secret is;
    the default namespace when none is installed (a dev setup, or a custom name)."""
    found = cluster.get(webhook_configuration_path(configuration)) or {}
    for webhook in found.get("webhooks") or []:
        service = (webhook.get("clientConfig") or {}).get("service") or {}
        if service.get("namespace"):
            return str(service["namespace"])
    return DEFAULT_SOURCE_NAMESPACE


def source_values(cluster: Cluster, credentials: Credentials, environ: Mapping[str, str], *,
                  source: tuple[str, str] | None) -> CredentialValues:
    """The values to copy: the command's own, else the source Secret's, else the default.

    `source` is (namespace, name) of the installed webhook's Secret; when the user named it
    explicitly it must exist and hold both keys."""
    if given_in_environment(environ):
        return CredentialValues(credentials.access_key_id, credentials.secret_access_key,
                                f"{ENV_PREFIX}ACCESS_KEY_ID / {ENV_PREFIX}SECRET_ACCESS_KEY")
    explicit = source is not None
    namespace, name = source if source is not None else (
        webhook_namespace(cluster), credentials.secret_name)
    secret = cluster.get(secret_path(namespace, name))
    if secret is not None:
        data = secret.get("data") or {}
        keys = (credentials.access_key_id_key, credentials.secret_access_key_key)
        missing = [key for key in keys if not data.get(key)]
        if missing:
            raise CredentialsError(f"Secret {namespace}/{name} has no key {missing[0]}; "
                                   f"it needs {keys[0]} and {keys[1]}")
        access, secret_key = (_decoded(data[key], f"{namespace}/{name}", key) for key in keys)
        return CredentialValues(access, secret_key, f"Secret {namespace}/{name}")
    if explicit:
        raise CredentialsError(f"Secret {namespace}/{name} does not exist; name the installed "
                               "webhook's credentials Secret with --source NAMESPACE/NAME")
    return CredentialValues(DEVELOPMENT_CREDENTIAL, DEVELOPMENT_CREDENTIAL,
                            "MinIO's development default")


def _decoded(text: str, where: str, key: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8").strip()
    except (ValueError, UnicodeDecodeError):
        raise CredentialsError(f"Secret {where}: key {key} is not base64 of UTF-8 text") from None


def copy_body(namespace: str, credentials: Credentials, values: CredentialValues) -> JsonObject:
    """The Secret pods read by reference, as this tool writes it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": credentials.secret_name,
            "namespace": namespace,
            "labels": {MANAGED_BY_KEY: MANAGED_BY},
        },
        "type": "Opaque",
        "data": {
            credentials.access_key_id_key: _encoded(values.access_key_id),
            credentials.secret_access_key_key: _encoded(values.secret_access_key),
        },
    }


def _encoded(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def put_copy(cluster: Cluster, namespace: str, credentials: Credentials,
             values: CredentialValues, *, dry_run: bool = False) -> Outcome:
    """Create or refresh the copy in `namespace`; leave one that another owner manages."""
    wanted = copy_body(namespace, credentials, values)
    current = cluster.get(secret_path(namespace, credentials.secret_name))
    if current is None:
        if dry_run:
            return Outcome.WOULD_CREATE
        cluster.create(secret_path(namespace), wanted)
        return Outcome.CREATED
    labels = (current.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_KEY) != MANAGED_BY:
        return Outcome.FOREIGN
    if current.get("data") == wanted["data"]:
        return Outcome.UNCHANGED
    if dry_run:
        return Outcome.WOULD_UPDATE
    wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    cluster.replace(secret_path(namespace, credentials.secret_name), wanted)
    return Outcome.UPDATED


def remove_copy(cluster: Cluster, namespace: str, credentials: Credentials) -> bool:
    """Delete this tool's copy in `namespace` (never another owner's); True if one went."""
    path = secret_path(namespace, credentials.secret_name)
    current = cluster.get(path)
    labels = ((current or {}).get("metadata") or {}).get("labels") or {}
    if current is None or labels.get(MANAGED_BY_KEY) != MANAGED_BY:
        return False
    return cluster.delete(path)


def opted_in_namespaces(cluster: Cluster) -> list[str]:
    """The namespaces labelled for injection, by name."""
    selector = urllib.parse.quote(f"{INJECT_LABEL[0]}={INJECT_LABEL[1]}", safe="")
    found = cluster.get(f"/api/v1/namespaces?labelSelector={selector}") or {}
    return sorted(str((item.get("metadata") or {}).get("name"))
                  for item in found.get("items") or [])


def copies_needed(credentials: Credentials) -> bool:
    """Only pods that read the credentials by reference need a copy in their namespace."""
    return credentials.mode is CredentialMode.SECRET_KEY_REF


def references(pod: JsonObject) -> Iterator[tuple[str, str]]:
    """(Secret name, key) of every ``secretKeyRef`` in a pod's containers' env."""
    spec = pod.get("spec") or {}
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            for entry in container.get("env") or []:
                reference = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
                if reference.get("name") and reference.get("key"):
                    yield str(reference["name"]), str(reference["key"])


def missing_references(cluster: Cluster, namespace: str,
                       wanted: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> list[str]:
    """``NAME/KEY`` of each reference whose Secret or key `namespace` lacks."""
    secrets: dict[str, JsonObject | None] = {}
    missing = []
    for name, key in wanted:
        if name not in secrets:
            secrets[name] = cluster.get(secret_path(namespace, name))
        secret = secrets[name]
        if secret is None or key not in (secret.get("data") or {}):
            missing.append(f"{name}/{key}")
    return missing
