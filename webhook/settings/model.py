"""The settings model: what the webhook manages and where the external backend lives.

Frozen dataclasses and the enums they use, built once by the CLI (``webhook.settings.loading``)
and passed down; nothing here reads a file or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from webhook.settings.schema import CREDENTIAL_VARIABLES

ENV_PREFIX = "BACKEND_INJECTOR_"
DEFAULT_EXTERNAL_HOST = "host.docker.internal"
# MinIO's documented development default; a deployment that keeps it is warned at start.
DEVELOPMENT_CREDENTIAL = "minioadmin"
ACCESS_KEY_ENV, SECRET_KEY_ENV = CREDENTIAL_VARIABLES


class ConfigError(ValueError):
    """The configuration cannot be used: a bad file, a bad value, or a contradiction."""


class EnvironmentConfigError(ConfigError):
    """A bad value from a BACKEND_INJECTOR_* variable; the message names the variable."""


class Action(StrEnum):
    """What happens to an init container that waits for a managed in-cluster service."""

    REMOVE = "remove"
    REWRITE = "rewrite"


class CredentialMode(StrEnum):
    """How the S3 credentials reach the pods."""

    VALUE = "value"  # literal values in the pod spec: anyone who can post a review reads them
    SECRET_KEY_REF = "secretKeyRef"  # a reference to a Secret in the pod's own namespace
    NONE = "none"  # not managed: the chart's own credentials stay


class EnvScope(StrEnum):
    """Which containers get the managed variables they do not carry yet."""

    USING = "using"  # those that use the backend
    ALL = "all"  # every app container and native sidecar


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An external address that pods can reach."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Service:
    """An in-cluster service the chart expects, and where it lives outside the cluster.

    ``external`` is None for services that have no external address (postgres): waiters for
    them are removed whatever the action, because there is nothing to retarget them at.
    """

    name: str
    hosts: tuple[str, ...]
    external: Endpoint | None


@dataclass(frozen=True, slots=True)
class Credentials:
    """S3 credentials. ``repr`` hides the values so they cannot reach a log by accident."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    # By reference by default: no answer then carries a credential, whoever asks.
    mode: CredentialMode = CredentialMode.SECRET_KEY_REF
    secret_name: str = "backend-injector-credentials"
    # Keys inside that Secret, in secretKeyRef mode.
    access_key_id_key: str = "access-key-id"
    secret_access_key_key: str = "secret-access-key"

    @property
    def is_development_default(self) -> bool:
        """Whether MinIO's development default is what this process would write into pods.
        Only in ``value`` mode does it: by reference, pods read the Secret of their namespace,
        whatever this process holds."""
        if self.mode is not CredentialMode.VALUE:
            return False
        return DEVELOPMENT_CREDENTIAL in (self.access_key_id, self.secret_access_key)


@dataclass(frozen=True, slots=True)
class SafetyNet:
    """The pods' ``/etc/hosts`` entries that point the managed names at the external IPs
    (``webhook.rules.host_aliases``), for the waiters the rules cannot read."""

    host_aliases: bool = True
    # External host (lower case) -> the IP pods reach it at, as configured; canonical text.
    addresses: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Serving:
    """How the webhook is served: where it listens, its certificate, its bounds and draining.

    The first seven come from the ``serve`` flags and their ``BACKEND_INJECTOR_*`` variables;
    the rest are fixed here, each with the reason for its value (tests that need shorter
    bounds change them with ``dataclasses.replace``).
    """

    # Loopback: outside a container nothing else needs to reach it (Docker Desktop forwards
    # host.docker.internal to the host's loopback); a pod's or container's serve is started
    # with --host 0.0.0.0 (the manifests, the chart and the image's default command do).
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    # Both or neither. Neither: ``serve`` makes a throw-away self-signed pair for localhost.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Given: only clients holding a certificate this CA signed may connect (the apiserver's).
    client_ca: Path | None = None
    # After SIGTERM: how long to keep serving with /readyz false before closing the listener.
    shutdown_delay_seconds: float = 0.0
    # Longer than the apiserver's idle-connection timeout (Go's default is 90 s), so that it
    # is always the client that closes an idle connection: a server closing first can race a
    # request being sent on it, and the apiserver does not retry a failed POST.
    keep_alive_seconds: int = 120
    # A client that opens a connection and never finishes the TLS handshake is dropped after
    # this long. The apiserver completes a handshake in milliseconds; asyncio's 60 s default
    # lets idle sockets pile up.
    handshake_timeout_seconds: float = 10.0
    # Open connections (plus requests in flight). A new connection over it closes the one idle
    # longest; a request that finds none idle gets 503. The apiserver keeps a few dozen
    # connections per replica; this leaves room for many. See webhook/serving/connections.py.
    max_connections: int = 1000
    # The request line and headers together: over it, 431 without reading the rest.
    head_limit_bytes: int = 64 * 1024
    # From a request's first byte to its last: over it, 408.
    request_seconds: float = 10.0
    # Processes answering reviews too big for the event loop (webhook/serving/offload.py). One keeps
    # a core for the event loop on a small machine; big reviews are rare and wait their turn.
    review_processes: int = 1
    # After the listener closes: how long requests in flight may take before they are cut.
    # Inside the 30 s termination grace period the manifests and the chart give the pod, so
    # that the server, not a SIGKILL, ends what is still running.
    graceful_timeout_seconds: int = 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the rules need, and how the webhook serving them is served."""

    action: Action
    waiter_names: frozenset[str]
    services: tuple[Service, ...]
    env: tuple[tuple[str, str], ...]  # plain managed variables, in the order they are added
    credentials: Credentials
    add_env_to: EnvScope = EnvScope.USING
    # Never mutated even if the namespaceSelector is wrong: a broken webhook here could keep
    # the control plane or the webhook itself from starting.
    excluded_namespaces: frozenset[str] = frozenset()
    safety_net: SafetyNet = field(default_factory=SafetyNet)
    serving: Serving = field(default_factory=Serving)
    # The local cluster's preset (webhook.settings.platforms) the hosts were filled from; dev
    # registers itself at that platform's name for this machine.
    platform: str = "docker-desktop"

    @property
    def managed_env_names(self) -> tuple[str, ...]:
        if self.credentials.mode is CredentialMode.NONE:
            return tuple(name for name, _ in self.env)
        return (*(name for name, _ in self.env), ACCESS_KEY_ENV, SECRET_KEY_ENV)


def describe(settings: Settings) -> dict[str, Any]:
    """A loggable summary: names and external addresses, never credential values."""
    return {
        "action": settings.action.value,
        "waiter_names": sorted(settings.waiter_names),
        "services": {
            s.name: {"hosts": list(s.hosts), "external": str(s.external) if s.external else None}
            for s in settings.services
        },
        "env": [name for name, _ in settings.env],
        "platform": settings.platform,
        "credentials_mode": settings.credentials.mode.value,
        "add_env_to": settings.add_env_to.value,
        "host_aliases": settings.safety_net.host_aliases,
        "addresses": dict(settings.safety_net.addresses),
    }
