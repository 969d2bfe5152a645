"""The effective settings written out as a configuration file (``backend-injector config``).

The document holds every key a ``--config`` file may hold, with the values the program ended
up with after every source, so that giving it back with ``--config`` (in the same environment)
builds the same settings. Env values are written as templates again (``http://{mlflow}``) where
they name a service's external address, so that the file keeps following a moved service.

What a file cannot hold is said in comment lines above it: where the S3 credentials come from
(the names of the variables, never a value) and how ``serve`` listens.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from webhook.settings import ENV_PREFIX, CredentialMode, Endpoint, Settings, default_document

# The variables of the file's keys, then serve's; the credentials are described on their own.
_DOCUMENT_VARIABLES = ("ACTION", "EXTERNAL_HOST", "PLATFORM")
_SERVING_VARIABLES = ("HOST", "PORT", "WORKERS", "TLS_CERT", "TLS_KEY", "CLIENT_CA",
                      "SHUTDOWN_DELAY_SECONDS")
_COMMENT_WIDTH = 100


def effective_document(settings: Settings) -> dict[str, Any]:
    """The settings as a configuration document: every key, in the schema's order."""
    return {
        "action": settings.action.value,
        "waiter_names": sorted(settings.waiter_names),
        "services": {
            service.name: {"hosts": list(service.hosts), "external": _external(service.external)}
            for service in settings.services
        },
        "env": _env(settings),
        "add_env_to": settings.add_env_to.value,
        "credentials": {
            "mode": settings.credentials.mode.value,
            "secret_name": settings.credentials.secret_name,
            "access_key_id_key": settings.credentials.access_key_id_key,
            "secret_access_key_key": settings.credentials.secret_access_key_key,
        },
        "excluded_namespaces": sorted(settings.excluded_namespaces),
        "safety_net": {
            "host_aliases": settings.safety_net.host_aliases,
            "addresses": dict(settings.safety_net.addresses),
        },
    }


def _external(endpoint: Endpoint | None) -> dict[str, Any] | None:
    return None if endpoint is None else {"host": endpoint.host, "port": endpoint.port}


def _env(settings: Settings) -> dict[str, str | None]:
    """Managed variables as templates, and null for each default one that was dropped.

    A file is merged over the default, so a default variable the settings lack must be
    dropped again explicitly, or reading the file back would restore it.
    """
    env: dict[str, str | None] = dict.fromkeys(default_document()["env"])
    templates = _endpoint_templates(settings)
    for name, value in settings.env:
        env[name] = templates(value)
    return env


def _endpoint_templates(settings: Settings) -> Callable[[str], str]:
    """A function that writes each service's external address in a value as ``{service}``.

    Only whole addresses are replaced (``host:5000`` in ``host:50001`` is left alone), and the
    first service wins where two share an address: both expand to the same text.
    """
    fields: dict[str, str] = {}
    for service in settings.services:
        if service.external is not None:
            fields.setdefault(str(service.external), service.name)
    if not fields:
        return lambda value: value
    addresses = sorted(fields, key=len, reverse=True)  # the longest host first
    pattern = re.compile(
        r"(?<![A-Za-z0-9.-])(" + "|".join(re.escape(address) for address in addresses)
        + r")(?![0-9])"
    )
    return lambda value: pattern.sub(lambda match: "{" + fields[match.group(1)] + "}", value)


def header(settings: Settings, environ: Mapping[str, str], *, config_file: Path | None,
           flags: Iterable[str]) -> list[str]:
    """Comment lines that say where the values came from and what a file cannot hold."""
    return [
        "backend-injector configuration: the effective settings, from "
        + " < ".join(_sources(environ, config_file, list(flags))) + ".",
        *_credential_lines(settings, environ),
        "serve listens on " + _serving(settings)
        + " (its flags or BACKEND_INJECTOR_* variables; a file has no keys for these).",
    ]


def _sources(environ: Mapping[str, str], config_file: Path | None,
             flags: list[str]) -> list[str]:
    sources = ["the embedded default"]
    if config_file is not None:
        sources.append(f"the file {config_file} (--config)")
    elif environ.get(f"{ENV_PREFIX}CONFIG"):
        sources.append(f"the file {environ[f'{ENV_PREFIX}CONFIG']} ({ENV_PREFIX}CONFIG)")
    variables = [ENV_PREFIX + name for name in (*_DOCUMENT_VARIABLES, *_SERVING_VARIABLES)
                 if environ.get(ENV_PREFIX + name)]
    if variables:
        sources.append("the environment (" + ", ".join(variables) + ")")
    if flags:
        sources.append("the flags (" + ", ".join(flags) + ")")
    return sources


def _credential_lines(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    credentials = settings.credentials
    if credentials.mode is CredentialMode.NONE:
        return ["S3 credentials: none are managed (credentials.mode none)."]
    if credentials.mode is CredentialMode.SECRET_KEY_REF:
        opening = (f"S3 credentials: pods read them from the Secret {credentials.secret_name} "
                   f"(keys {credentials.access_key_id_key}, "
                   f"{credentials.secret_access_key_key}) of their own namespace; no file holds "
                   "them. This environment gives:")
    else:
        opening = ("S3 credentials: written into pods (credentials.mode value), from this "
                   "environment, never from a file:")
    return [
        opening,
        f"  access key: {credential_source(environ, 'ACCESS_KEY_ID')}",
        f"  secret key: {credential_source(environ, 'SECRET_ACCESS_KEY')}",
    ]


def credential_source(environ: Mapping[str, str], name: str) -> str:
    """Where the credential ``BACKEND_INJECTOR_<name>`` is read from, by the settings' own
    precedence (the ``_FILE`` form wins); the name of a variable, never its value."""
    variable = ENV_PREFIX + name
    if environ.get(f"{variable}_FILE"):
        return f"the file named by {variable}_FILE"
    if variable in environ:
        return variable
    return f"nothing ({variable} and {variable}_FILE are not set: MinIO's development default)"


def _serving(settings: Settings) -> str:
    serving = settings.serving
    parts = [f"{serving.host}:{serving.port}", f"workers {serving.workers}"]
    if serving.tls_cert is not None:
        parts.append(f"certificate {serving.tls_cert}, key {serving.tls_key}")
    else:
        parts.append("a throw-away self-signed certificate")
    if serving.client_ca is not None:
        parts.append(f"client CA {serving.client_ca}")
    parts.append(f"shutdown delay {serving.shutdown_delay_seconds:g}s")
    return ", ".join(parts)


def render(document: Mapping[str, Any], comments: Iterable[str]) -> str:
    """The document as YAML, after the comment lines (wrapped, their indent kept)."""
    lines: list[str] = []
    for comment in comments:
        indent = " " * (len(comment) - len(comment.lstrip()))
        lines += textwrap.wrap(comment, width=_COMMENT_WIDTH, initial_indent="# ",
                               subsequent_indent="# " + indent + "  ",
                               break_long_words=False, break_on_hyphens=False) or ["#"]
    return "".join(line.rstrip() + "\n" for line in lines) + yaml.safe_dump(
        dict(document), sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
