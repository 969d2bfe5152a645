"""The platform presets: the name pods on each local Kubernetes use for the machine the backend
runs on, and which preset a command uses.

A preset names the external host of every service whose configuration names none. The platform
comes from the first of ``--platform``, ``BACKEND_INJECTOR_PLATFORM`` and the file's
``platform:`` that is given, else docker-desktop. Each service's external host then comes from
the first of these that is given:

    --external-host  >  BACKEND_INJECTOR_EXTERNAL_HOST  >  the file's services.NAME.external.host
    >  the platform's host

kind has no name for the machine its nodes run on, so on kind one of the first three must give
it: the settings refuse to guess.

Where each name is documented is said beside it; the README's "On your platform" table gives
the same sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from webhook.settings.model import ENV_PREFIX, ConfigError, EnvironmentConfigError
from webhook.settings.schema import PLATFORM_NAMES

DEFAULT_PLATFORM: Final = "docker-desktop"
# How to find the address kind's pods reach the machine at, for the messages that ask for it.
KIND_GATEWAY_HINT: Final = (
    "the kind network's IPv4 gateway from `docker network inspect kind`, or "
    "host.docker.internal where Docker Desktop runs kind"
)


@dataclass(frozen=True, slots=True)
class Platform:
    """One local Kubernetes: its ``--platform`` name, its own name for itself, the host name its
    pods reach the machine at (None: it has none), and other names that reach the same machine
    from its pods."""

    name: str
    title: str
    host: str | None
    also: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every name its pods reach the machine by, its own first."""
        return (*((self.host,) if self.host else ()), *self.also)


PLATFORMS: Final[tuple[Platform, ...]] = (
    # Docker Desktop's DNS answers host.docker.internal in its containers, the Kubernetes
    # nodes' included, whichever provisioner (kubeadm or kind) made them:
    # https://docs.docker.com/desktop/features/networking/networking-how-tos/#connect-a-container-to-a-service-on-the-host
    Platform("docker-desktop", "Docker Desktop", "host.docker.internal"),
    # minikube puts host.minikube.internal in its nodes' /etc/hosts and in CoreDNS
    # (pkg/minikube/node/start.go): https://minikube.sigs.k8s.io/docs/handbook/host-access/
    Platform("minikube", "minikube", "host.minikube.internal"),
    # k3d injects host.k3d.internal into its nodes and into CoreDNS's NodeHosts:
    # https://k3d.io/stable/faq/faq/#how-to-access-services-like-a-database-running-on-my-docker-host-machine
    Platform("k3d", "k3d", "host.k3d.internal"),
    # kind defines no name for the machine (kubernetes-sigs/kind issues 1200 and 3496: use the
    # kind network's gateway); host.docker.internal resolves only where Docker Desktop runs the
    # nodes (issue 2405).
    Platform("kind", "kind", None),
    # Rancher Desktop's host resolver maps both names to the host, on lima (macOS, Linux) and
    # WSL (pkg/rancher-desktop/backend/lima.ts, wsl.ts):
    # https://docs.rancherdesktop.io/faq (host.docker.internal or host.rancher-desktop.internal)
    Platform("rancher-desktop", "Rancher Desktop", "host.rancher-desktop.internal",
             also=("host.docker.internal",)),
    # OrbStack: host.orb.internal from its Linux machines
    # (https://docs.orbstack.dev/machines/network), host.docker.internal from its containers
    # (https://docs.orbstack.dev/docker/network); its Kubernetes runs on that same engine.
    Platform("orbstack", "OrbStack", "host.orb.internal", also=("host.docker.internal",)),
    # Colima's VM is a lima one: host.lima.internal is the host
    # (https://lima-vm.io/docs/config/network/user/); colima's resolver answers
    # host.docker.internal with the same address (environment/vm/lima/dns.go, yaml.go).
    Platform("colima", "Colima", "host.lima.internal", also=("host.docker.internal",)),
)

_BY_NAME: Final = {platform.name: platform for platform in PLATFORMS}


def platform_named(name: Any, where: str) -> Platform:
    """The preset called ``name``; a `ConfigError` naming ``where`` and every preset if none."""
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"{where}: unknown platform {name!r}; the platforms are "
                          f"{', '.join(PLATFORM_NAMES)}")
    return found


def choose_platform(flag: str | None, environ: Mapping[str, str],
                    document: Mapping[str, Any], file_path: Path | None) -> Platform:
    """The platform the first source that names one names, else docker-desktop."""
    if flag is not None:
        return platform_named(flag, "--platform")
    variable = ENV_PREFIX + "PLATFORM"
    if environ.get(variable):
        try:
            return platform_named(environ[variable], f"environment variable {variable}")
        except ConfigError as error:
            raise EnvironmentConfigError(str(error)) from None
    if document.get("platform") is not None:
        return platform_named(document["platform"], f"{file_path}: platform")
    return _BY_NAME[DEFAULT_PLATFORM]


def owner_of(host: str) -> Platform | None:
    """The platform whose own name for the machine ``host`` is, if any."""
    lowered = host.lower()
    return next((platform for platform in PLATFORMS if platform.host == lowered), None)


def with_platform_hosts(document: Mapping[str, Any], platform: Platform,
                        given_host: str | None) -> dict[str, Any]:
    """``document`` with a host in every external address that names none: ``given_host``
    (the variable's or the flag's, which replaces every host later anyway), else the platform's.

    Raises the one line that asks for an address when neither is known (kind)."""
    host = given_host or platform.host
    services = document.get("services")
    if not isinstance(services, Mapping):
        return dict(document)
    filled: dict[str, Any] = {}
    missing: list[str] = []
    for name, spec in services.items():
        external = spec.get("external") if isinstance(spec, Mapping) else None
        if isinstance(external, Mapping) and external.get("host") is None:
            if host is None:
                missing.append(str(name))
                continue
            spec = {**spec, "external": {**external, "host": host}}
        filled[name] = spec
    if missing:
        raise ConfigError(
            f"platform {platform.name} has no host name pods can use: give --external-host "
            f"ADDRESS or {ENV_PREFIX}EXTERNAL_HOST ({KIND_GATEWAY_HINT}), or "
            f"services.NAME.external.host in the file for {', '.join(missing)}"
        )
    return {**document, "services": filled}
