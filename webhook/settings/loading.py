"""Settings from every source, the later winning over the earlier:

    embedded default  <  YAML file (--config)  <  environment (BACKEND_INJECTOR_*)  <  flags

The platform (``platforms``) is chosen first, from the same sources in the same order, since
it names the external host of every service that the merged document names none for.

Called once, by the CLI; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from webhook.settings.document import (
    default_document,
    merge,
    read_configuration_file,
    settings_from_document,
)
from webhook.settings.layers import apply_environment, apply_overrides, path_from_env
from webhook.settings.model import ENV_PREFIX, ConfigError, EnvironmentConfigError, Settings
from webhook.settings.platforms import choose_platform, with_platform_hosts
from webhook.settings.validation import validate


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from the embedded default, a file, the environment and flag overrides.

    ``overrides`` holds flag values that were given (None means "not given").
    """
    environ = os.environ if environ is None else environ
    file_path = config_file or path_from_env(environ, "CONFIG")
    file_document = read_configuration_file(file_path) if file_path is not None else {}
    flags = overrides or {}
    platform = choose_platform(flags.get("platform"), environ, file_document, file_path)
    given_host = flags.get("external_host") or environ.get(ENV_PREFIX + "EXTERNAL_HOST") or None
    document = with_platform_hosts(merge(default_document(external_host=None), file_document),
                                   platform, given_host)
    try:
        settings = settings_from_document(document, environ)
    except EnvironmentConfigError:
        raise
    except ConfigError as error:
        # Every other value that can be wrong here came from the file (the default is right), so
        # the message says which file, after the key path it already names.
        raise ConfigError(f"{file_path}: {error}" if file_path is not None else str(error)) \
            from None
    settings = apply_environment(settings, environ)
    if overrides:
        given = {key: value for key, value in overrides.items() if value is not None}
        settings = apply_overrides(settings, given)
    validate(settings)
    return replace(settings, platform=platform.name)
