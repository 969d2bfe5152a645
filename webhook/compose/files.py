"""The files a compose project is made of, read as ``docker compose`` reads them: the compose
file itself, the project's ``.env`` beside it (variables for interpolation), and the names an
``env_file`` sets.

The compose file is read as YAML 1.2 reads numbers, as Compose does: an unquoted ``8022:22``
is the string it looks like, not the base-60 number YAML 1.1 makes of it. Of an env_file only
the names are kept; its values are not read into anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from webhook.compose.credentials import EnvFileNames
from webhook.settings import ConfigError, yaml_problem

_INT_TAG = "tag:yaml.org,2002:int"
# Decimal, octal, hexadecimal and binary integers, without YAML 1.1's sexagesimal form.
_INTEGER = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                      r"|[-+]?0x[0-9a-fA-F_]+)$")
# One env file line: optional `export`, a name, `=` or `:`, and the value (the rest).
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*[=:](.*)$")


class _ComposeLoader(yaml.SafeLoader):
    """The safe loader with integers as YAML 1.2 (and Compose) read them."""


_ComposeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _INT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ComposeLoader.add_implicit_resolver(_INT_TAG, _INTEGER, list("-+0123456789"))


def read_compose_file(path: Path) -> Any:
    """The parsed compose file; `ConfigError` with one line saying where when it is not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read compose file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"compose file {path} is not UTF-8 text: {error.reason}") from error
    try:
        return yaml.load(text, Loader=_ComposeLoader)  # a subclass of the safe loader
    except yaml.MarkedYAMLError as error:
        mark, problem = yaml_problem(error)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error


def project_variables(compose_file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables Compose interpolates with: the process environment over the ``.env``
    file beside the compose file (when there is one)."""
    dotenv = compose_file.parent / ".env"
    try:
        text = dotenv.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return dict(environ)
    return {**dict(_entries(text)), **environ}


def env_file_reader(compose_file: Path) -> EnvFileNames:
    """A function from an env_file path as the compose file writes it (relative to the compose
    file's folder) to the names the file sets, None when it cannot be read."""
    def names(path: str) -> frozenset[str] | None:
        try:
            text = (compose_file.parent / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return frozenset(name for name, _ in _entries(text))

    return names


def _entries(text: str) -> Iterator[tuple[str, str]]:
    """(name, value) of each assignment of an env file: blank lines, comments and bare names
    (which unset) skipped; a quoted value unquoted, an unquoted one cut at `` #``."""
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        if match is None or line.lstrip().startswith("#"):
            continue
        yield match.group(1), _unquoted(match.group(2).strip())


def _unquoted(value: str) -> str:
    if value[:1] in ("'", '"'):
        closing = value.find(value[0], 1)
        return value[1:closing] if closing > 0 else value[1:]
    comment = value.find(" #")
    return (value[:comment] if comment >= 0 else value).strip()
