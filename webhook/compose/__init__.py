"""A configuration from a docker compose file (``backend-injector config --from-compose``).

- ``files``: the compose file, its project's ``.env``, and the names an env_file sets (I/O);
- ``interpolation``: Compose's ``${VAR:-default}`` and friends;
- ``ports``: ``ports`` entries in the short and the long syntax;
- ``roles``: how MLflow, MinIO and the gateway are recognised, and the port each listens on;
- ``credentials``: which variables hold MinIO's root credentials (names, never values);
- ``discovery``: a parsed compose document in, the services found and their host ports out;
- ``output``: what that changes in a configuration document, and the comments that say so.

Interpolation takes the process environment over the ``.env`` beside the compose file, as
``docker compose`` does, so the ports are the ones ``docker compose up`` publishes from the
same shell. No secret value is ever printed, logged or written: the output names the
variables that hold the credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.compose.discovery import discover
from webhook.compose.files import env_file_reader, project_variables, read_compose_file
from webhook.compose.output import comments, with_discovery
from webhook.settings import ConfigError


@dataclass(frozen=True, slots=True)
class ComposeConfiguration:
    document: dict[str, Any]
    comments: tuple[str, ...]
    warnings: tuple[str, ...]


def configuration_from_compose(compose_file: Path, document: Mapping[str, Any], *,
                               environ: Mapping[str, str],
                               chosen: Mapping[str, str]) -> ComposeConfiguration:
    """``document`` (a configuration) with the published ports of the compose file's MLflow,
    MinIO and gateway; `ConfigError` naming the file when it cannot be used."""
    compose = read_compose_file(compose_file)
    try:
        discovery = discover(compose, variables=project_variables(compose_file, environ),
                             chosen=chosen, env_file_names=env_file_reader(compose_file))
    except ConfigError as error:
        raise ConfigError(f"{compose_file}: {error}") from None
    return ComposeConfiguration(
        document=with_discovery(document, discovery),
        comments=tuple(comments(discovery, str(compose_file))),
        warnings=discovery.warnings,
    )


__all__ = ["ComposeConfiguration", "configuration_from_compose"]
