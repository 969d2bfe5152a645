"""`backend-injector label` and `credentials`: namespaces opt in, and their credentials follow.

Opting a namespace in is two things that must go together in the default credentials mode:
the label the webhook's namespaceSelector asks for, and the credentials Secret its pods will
read by reference (`webhook.cluster.credentials`). Doing both in one command means a pod can
never be admitted with a reference to a Secret that is not there. Opting out removes the label
and this tool's copy (never a Secret someone else manages).

Each step is reported as one line, for the terminal: what was done where.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from webhook.cluster.client import Cluster, ClusterError, namespace_path
from webhook.cluster.credentials import (
    INJECT_LABEL,
    CredentialValues,
    Outcome,
    copies_needed,
    opted_in_namespaces,
    put_copy,
    remove_copy,
    source_values,
    webhook_namespace,
)
from webhook.settings import Settings


class OptInError(Exception):
    """A namespace that cannot opt in (absent, or one the webhook must never touch)."""


@dataclass(frozen=True)
class Step:
    """One line of what a command did."""

    namespace: str
    text: str

    def line(self) -> str:
        return f"{self.namespace}: {self.text}"


def check_namespaces(cluster: Cluster, settings: Settings, namespaces: list[str]) -> None:
    """Refuse what the webhook never mutates, before anything is changed anywhere."""
    own = webhook_namespace(cluster)
    for namespace in namespaces:
        _check_namespace(cluster, settings, namespace, own)


def _check_namespace(cluster: Cluster, settings: Settings, namespace: str, own: str) -> None:
    if namespace in settings.excluded_namespaces or namespace == own:
        raise OptInError(f"{namespace} is never mutated (the webhook's own namespace or a "
                         "system one); run the workloads in another namespace")
    if cluster.get(namespace_path(namespace)) is None:
        raise OptInError(f"namespace {namespace} does not exist; create it first "
                         f"(kubectl create namespace {namespace})")


def credential_values(cluster: Cluster, settings: Settings, environ: Mapping[str, str],
                      source: tuple[str, str] | None) -> CredentialValues | None:
    """The values to copy, or None when the configuration reads no Secret by reference."""
    if not copies_needed(settings.credentials):
        return None
    return source_values(cluster, settings.credentials, environ, source=source)


def opt_in(cluster: Cluster, settings: Settings, namespace: str,
           values: CredentialValues | None) -> Iterator[Step]:
    """Put the credentials Secret in `namespace`, then label it: in that order, so that the
    first pod the webhook sees there already finds what it will reference."""
    if values is None:
        yield Step(namespace, f"no credentials Secret: credentials.mode is "
                              f"{settings.credentials.mode.value}")
    else:
        outcome = put_copy(cluster, namespace, settings.credentials, values)
        yield Step(namespace, _copy_line(settings, outcome, values))
    found = cluster.get(namespace_path(namespace))
    if found is None:
        raise ClusterError(f"namespace {namespace} disappeared while it was being labelled")
    metadata = found.setdefault("metadata", {})
    labels = metadata.setdefault("labels", {})
    key, value = INJECT_LABEL
    if labels.get(key) == value:
        yield Step(namespace, f"already labelled {key}={value}")
        return
    labels[key] = value
    cluster.replace(namespace_path(namespace), found)
    yield Step(namespace, f"labelled {key}={value}: pods created from now on are changed "
                          "(restart those already there)")


def opt_out(cluster: Cluster, settings: Settings, namespace: str) -> Iterator[Step]:
    """Remove the label first (no new pod references the Secret), then this tool's copy."""
    found = cluster.get(namespace_path(namespace))
    if found is None:
        raise OptInError(f"namespace {namespace} does not exist")
    labels = (found.get("metadata") or {}).get("labels") or {}
    key, _ = INJECT_LABEL
    if key in labels:
        del labels[key]
        cluster.replace(namespace_path(namespace), found)
        yield Step(namespace, f"label {key} removed: pods created from now on are left as "
                              "they are")
    else:
        yield Step(namespace, f"not labelled {key}")
    if remove_copy(cluster, namespace, settings.credentials):
        yield Step(namespace, f"Secret {settings.credentials.secret_name} deleted (pods "
                              "still running keep the values they started with)")


def refresh(cluster: Cluster, settings: Settings, values: CredentialValues,
            namespaces: list[str] | None, *, dry_run: bool) -> Iterator[Step]:
    """Bring every copy in line with `values`: the named namespaces, or every opted-in one."""
    targets = namespaces if namespaces else opted_in_namespaces(cluster)
    if not targets:
        yield Step("(none)", f"no namespace is labelled {INJECT_LABEL[0]}={INJECT_LABEL[1]}")
    for namespace in targets:
        outcome = put_copy(cluster, namespace, settings.credentials, values, dry_run=dry_run)
        yield Step(namespace, _copy_line(settings, outcome, values))


def _copy_line(settings: Settings, outcome: Outcome, values: CredentialValues) -> str:
    name = settings.credentials.secret_name
    if outcome is Outcome.FOREIGN:
        return (f"Secret {name} {outcome.value} (not labelled app.kubernetes.io/managed-by="
                "backend-injector; update it where it is managed, e.g. helm upgrade)")
    return f"Secret {name} {outcome.value}, from {values.source}"
