"""Which variables hold MinIO's root credentials in a compose service: names, never values.

MinIO reads its root user and password from ``MINIO_ROOT_USER`` and ``MINIO_ROOT_PASSWORD``
(older releases: ``MINIO_ACCESS_KEY`` and ``MINIO_SECRET_KEY``; each also as ``..._FILE``
naming a file that holds it). A service sets them in ``environment`` (a list of
``NAME=value`` or a mapping) or in an ``env_file``; ``environment`` wins, as in Compose. A
value is only ever looked at to say which other variable it is taken from
(``MINIO_ROOT_PASSWORD: ${MINIO_PASSWORD}``), and then only when it is that one reference and
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.compose.interpolation import sole_reference

USER_VARIABLES = ("MINIO_ROOT_USER", "MINIO_ROOT_USER_FILE", "MINIO_ACCESS_KEY",
                  "MINIO_ACCESS_KEY_FILE")
PASSWORD_VARIABLES = ("MINIO_ROOT_PASSWORD", "MINIO_ROOT_PASSWORD_FILE", "MINIO_SECRET_KEY",
                      "MINIO_SECRET_KEY_FILE")

# The names an env_file sets (None: the file cannot be read), by the path the compose file gives.
EnvFileNames = Callable[[str], frozenset[str] | None]


@dataclass(frozen=True, slots=True)
class CredentialVariable:
    """Where a compose service sets one of MinIO's credentials."""

    name: str  # MINIO_ROOT_USER
    where: str  # "environment", or "env_file ./minio.env"
    taken_from: str | None = None  # the variable its value is written as: ${MINIO_USER}
    taken_from_has_default: bool = False  # ${MINIO_USER:-...}: the compose file has a fallback
    from_compose_environment: bool = False  # listed without a value: Compose passes its own

    def describe(self) -> str:
        text = f"{self.name}, in its {self.where}"
        if self.taken_from is not None:
            text += f", set from ${{{self.taken_from}}} (the environment or .env of docker compose)"
        elif self.from_compose_environment:
            text += ", without a value: docker compose passes its own environment's"
        return text


@dataclass(frozen=True, slots=True)
class MinioCredentials:
    """The variables of a MinIO service that hold its root user and password; None: unset,
    so MinIO runs with its development default."""

    service: str
    user: CredentialVariable | None
    password: CredentialVariable | None
    warnings: tuple[str, ...] = ()


def minio_credentials(name: str, service: Mapping[str, Any],
                      env_file_names: EnvFileNames) -> MinioCredentials:
    environment = dict(_environment(service.get("environment")))
    files, warnings = _env_files(name, service.get("env_file"), env_file_names)

    def find(candidates: tuple[str, ...]) -> CredentialVariable | None:
        for variable in candidates:
            if variable in environment:
                value = environment[variable]
                reference = sole_reference(value) if isinstance(value, str) else None
                return CredentialVariable(
                    variable, "environment",
                    taken_from=reference[0] if reference else None,
                    taken_from_has_default=reference[1] if reference else False,
                    from_compose_environment=value is None,
                )
            # The last file that sets it is the one whose value stands.
            for path, names in reversed(files):
                if variable in names:
                    return CredentialVariable(variable, f"env_file {path}")
        return None

    return MinioCredentials(name, find(USER_VARIABLES), find(PASSWORD_VARIABLES),
                            tuple(warnings))


def _environment(environment: Any) -> Iterator[tuple[str, Any]]:
    """(name, value as written) of each entry; None for an entry without a value."""
    if isinstance(environment, Mapping):
        for key, value in environment.items():
            yield str(key), value
    elif isinstance(environment, list):
        for entry in environment:
            if isinstance(entry, str):
                key, separator, value = entry.partition("=")
                yield key.strip(), value if separator else None


def _env_files(service: str, env_file: Any, names_of: EnvFileNames
               ) -> tuple[list[tuple[str, frozenset[str]]], list[str]]:
    """(path, names it sets) of each env_file the service reads, in order, and a warning for
    each required one that cannot be read."""
    entries = [env_file] if isinstance(env_file, str | Mapping) else env_file or []
    files: list[tuple[str, frozenset[str]]] = []
    warnings: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping):
            path, required = entry.get("path"), entry.get("required", True)
        else:
            path, required = entry, True
        if not isinstance(path, str):
            continue
        names = names_of(path)
        if names is None:
            if required is not False:
                warnings.append(f"cannot read env_file {path} of compose service {service}")
            continue
        files.append((path, names))
    return files, warnings
