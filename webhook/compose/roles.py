"""The three backends a compose file is searched for, how each is recognised, and which
container port each listens on.

A service is MLflow, MinIO or the gateway by its image (the repository's last path segment:
``ghcr.io/mlflow/mlflow``, ``minio/minio``, ``quay.io/minio/minio``, ``bitnami/minio``), by
its command (``mlflow server``), or by its service or container name. The gateway is usually
built from local sources, so its name is most of what there is to go on.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from webhook.compose.interpolation import interpolate
from webhook.settings import ConfigError


class Evidence(IntEnum):
    """Why a service was taken for a backend, strongest first (a lower value wins)."""

    CHOSEN = 0  # named with a --*-service flag
    IMAGE = 1
    COMMAND = 2
    NAME = 3


@dataclass(frozen=True, slots=True)
class Role:
    """A backend the configuration points pods at, as it shows in a compose file."""

    key: str  # the configuration's service: services.<key>
    title: str
    option: str  # the flag that names its compose service
    images: frozenset[str]  # last path segments of its images' repositories
    image_hint: str  # the images, as the warning when none is found names them
    image_words: frozenset[str]  # a word of a locally built image's name that gives it away
    names: tuple[str, ...]  # service or container names, with - for _
    # The container port it listens on unless its command says otherwise; None: the first
    # port it publishes, whatever it is.
    default_port: int | None
    port_options: tuple[str, ...] = ()  # command options that change it
    commands: tuple[tuple[str, str], ...] = ()  # program and subcommand that run it

    def describe_search(self) -> str:
        """What was looked for, for the warning when nothing was found."""
        looked = [self.image_hint]
        if self.commands:
            looked.append("a command " + " or ".join(f"'{p} {s}'" for p, s in self.commands))
        looked.append(f"a service or container named {', '.join(self.names)}")
        return ", ".join(looked)


MLFLOW = Role(
    key="mlflow", title="MLflow", option="--mlflow-service",
    images=frozenset({"mlflow"}), image_hint="an image such as ghcr.io/mlflow/mlflow",
    image_words=frozenset({"mlflow"}),
    names=("mlflow", "mlflow-server", "mlflow-tracking", "mlflow-tracking-server",
           "tracking-server"),
    default_port=5000, port_options=("--port", "-p"),
    commands=(("mlflow", "server"), ("mlflow", "ui")),
)
MINIO = Role(
    key="minio", title="MinIO", option="--minio-service",
    images=frozenset({"minio"}),
    image_hint="an image such as minio/minio, quay.io/minio/minio or bitnami/minio",
    image_words=frozenset(),
    names=("minio", "minio-server", "s3"),
    # The S3 API; the console (9001, --console-address) is not what pods talk to.
    default_port=9000, port_options=("--address",),
)
GATEWAY = Role(
    key="fastapi", title="FastAPI gateway", option="--gateway-service",
    images=frozenset({"fastapi", "fastapi-app", "gateway"}),
    image_hint="an image with fastapi in its name",
    image_words=frozenset({"fastapi"}),
    names=("fastapi", "fastapi-app", "fastapi-gateway", "fastapi-server", "gateway",
           "api-gateway", "gateway-api", "api"),
    default_port=None,
)
ROLES = (MLFLOW, MINIO, GATEWAY)

_WORD = re.compile(r"[a-z0-9]+")
_REPLICA_SUFFIX = re.compile(r"-[0-9]+$")  # compose's own container names end in -1


def evidence(role: Role, name: str, service: Mapping[str, Any],
             variables: Mapping[str, str]) -> Evidence | None:
    """The strongest reason ``service`` (called ``name``) is ``role``; None when there is none."""
    repository = image_repository(_text(service.get("image"), variables))
    segment = repository.rsplit("/", 1)[-1]
    if segment in role.images:
        return Evidence.IMAGE
    if role.commands and _runs(role, command_words(service)):
        return Evidence.COMMAND
    names = {_normal(name), _normal(_text(service.get("container_name"), variables))}
    if any(candidate in role.names for candidate in names):
        return Evidence.NAME
    if set(_WORD.findall(segment)) & role.image_words:
        return Evidence.NAME  # a locally built image named after it: myproject-fastapi-app
    return None


def image_repository(image: str) -> str:
    """``ghcr.io/mlflow/mlflow:v2.14.1@sha256:...`` -> ``ghcr.io/mlflow/mlflow``."""
    name = image.split("@", 1)[0].strip().lower()
    slash, colon = name.rfind("/"), name.rfind(":")
    return name[:colon] if colon > slash else name  # a colon before the last / is a port


def listening_port(role: Role, service: Mapping[str, Any], variables: Mapping[str, str],
                   where: str) -> tuple[int | None, str | None]:
    """The container port the service listens on, and a note when its command could not be
    read for it. None for a role that takes the first published port."""
    if role.default_port is None:
        return None, None
    words = command_words(service)
    for index, word in enumerate(words):
        for option in role.port_options:
            if word == option and index + 1 < len(words):
                value = words[index + 1]
            elif word.startswith(option + "=") and option.startswith("--"):
                value = word[len(option) + 1:]
            else:
                continue
            long_option = option.startswith("--")
            port = _port_of(value, variables, where, strict=long_option)
            if port is not None:
                return port, None
            if long_option:
                return role.default_port, (f"cannot read the port of {option} in {where}; "
                                           f"assuming {role.default_port}")
    return role.default_port, None


def _port_of(value: str, variables: Mapping[str, str], where: str, *, strict: bool
             ) -> int | None:
    """The port of an option's value (``5001``, ``:9000``, ``0.0.0.0:9000``, ``${PORT}``).
    Not ``strict``: a short option (``-p``) that may belong to another program of a shell
    line (``mkdir -p $DATA``), so a variable it cannot fill in means "not a port"."""
    try:
        text = interpolate(value, variables)
    except ConfigError as error:
        if not strict:
            return None
        raise ConfigError(f"{where}: {error}") from None
    port_text = text.rsplit(":", 1)[-1]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return int(port_text)


def command_words(service: Mapping[str, Any]) -> list[str]:
    """The words of the service's entrypoint and command, shell strings split as a shell
    would (``sh -c "mlflow server --port 5001"`` included); values are not interpolated."""
    words: list[str] = []
    for field in ("entrypoint", "command"):
        value = service.get(field)
        parts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for part in parts:
            if isinstance(part, str | int) and not isinstance(part, bool):
                words.extend(_split(str(part)))
    return words


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: words are still words
        return text.split()


def _runs(role: Role, words: list[str]) -> bool:
    programs = [word.rsplit("/", 1)[-1] for word in words]
    for index, program in enumerate(programs):
        for name, subcommand in role.commands:
            if program == name and subcommand in programs[index + 1:index + 3]:
                return True
    return False


def _text(value: Any, variables: Mapping[str, str]) -> str:
    """A name or image with its variables filled in where they can be; as written otherwise
    (a name only helps recognise a service, it is not worth an error)."""
    if not isinstance(value, str):
        return ""
    try:
        return interpolate(value, variables)
    except ConfigError:
        return value


def _normal(name: str) -> str:
    return _REPLICA_SUFFIX.sub("", name.strip().lower().replace("_", "-"))
