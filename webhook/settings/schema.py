"""The configuration file's model, as a JSON Schema (draft 2020-12).

This is the one description of what a ``--config`` file may hold: every key, its type, the
values an enum allows, and what it means. ``webhook.settings`` reads the file; this module only
describes it, so it stays pure (no I/O, no import of the rest of the package, so that
the rest of the wing can import it). Other descriptions are generated from it:
``charts/backend-injector/values.schema.json`` embeds it under ``config``
(``python tools/gen-values-schema.py``), and tests check that the embedded default document
validates against it and that the settings accept every key and enum value declared here.

A file is merged over the embedded default key by key, so no key is required at any level
except where a value makes no sense without it (an external address needs a port).
Every object says ``additionalProperties: false``; the mappings whose keys the user chooses
(``services``, ``env``) constrain those keys with ``patternProperties``, so an unexpected key
is still refused at every depth.

Adding a key or an enum value: declare it here and teach ``document.py`` (and ``layers.py``
for a variable or a flag) in the same change; ``tests/settings/test_config_schema.py`` fails
until both agree, and the chart's values schema must be regenerated (its drift check fails
otherwise).
"""

from __future__ import annotations

import copy
from typing import Any, Final

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID: Final = "https://backend-injector.invalid/schemas/config.json"

# Kubernetes name grammars (RFC 1123), and the variable-name grammar the settings check.
DNS_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOSTNAME: Final = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"
ENV_NAME: Final = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
# The shape of an IPv4 or IPv6 address; the settings check it is one (``ipaddress``).
IP_ADDRESS: Final = r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$"
SECRET_KEY: Final = r"^[-._a-zA-Z0-9]+$"

ACTIONS: Final = ("remove", "rewrite")
CREDENTIAL_MODES: Final = ("value", "secretKeyRef", "none")
ENV_SCOPES: Final = ("using", "all")
# The platform presets (webhook/settings/platforms.py says what each sets).
PLATFORM_NAMES: Final = ("docker-desktop", "minikube", "k3d", "kind", "rancher-desktop", "orbstack",
                         "colima")
# Set by the credentials section only, never as a plain env entry.
CREDENTIAL_VARIABLES: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _dns_label(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": DNS_LABEL, "maxLength": 63, "description": description}


def _label_list(description: str, item: str, *, default: list[str] | None = None
                ) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "array",
        "items": _dns_label(item),
        "uniqueItems": True,
        "description": description,
    }
    if default is not None:
        schema["default"] = default
    return schema


def _external() -> dict[str, Any]:
    return {
        "description": (
            "Where the service lives outside the cluster, as pods reach it. null: no external "
            "address; waiters for the service are removed whatever the action, and env "
            "templates may not refer to it."
        ),
        "oneOf": [
            {"type": "null"},
            {
                "type": "object",
                "description": "A port, and the host unless the platform's will do.",
                "additionalProperties": False,
                "required": ["port"],
                "properties": {
                    "host": {
                        "type": "string",
                        "pattern": HOSTNAME,
                        "maxLength": 253,
                        "description": (
                            "Host name or IP address pods connect to. Default: the "
                            "platform's name for this machine (host.docker.internal on "
                            "docker-desktop)."
                        ),
                        "examples": ["host.docker.internal"],
                    },
                    "port": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 65535,
                        "description": "TCP port pods connect to.",
                        "examples": [5000],
                    },
                },
            },
        ],
    }


def _service() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "An in-cluster service the workloads expect, and its external address.",
        "properties": {
            "hosts": {
                **_label_list(
                    "In-cluster host names of the service (also matched in their NAME.NS, "
                    "NAME.NS.svc and NAME.NS.svc.cluster.local forms). Default: the service's "
                    "own name.",
                    "A Service name as workloads write it.",
                ),
                "minItems": 1,
                "examples": [["redis", "redis-master"]],
            },
            "external": _external(),
        },
    }


def _credentials() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "How the S3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) reach the pods. "
            "The values themselves never come from this file: the webhook reads them from "
            "BACKEND_INJECTOR_ACCESS_KEY_ID(_FILE) and BACKEND_INJECTOR_SECRET_ACCESS_KEY(_FILE)."
        ),
        "properties": {
            "mode": {
                "type": "string",
                "enum": list(CREDENTIAL_MODES),
                "default": "secretKeyRef",
                "description": (
                    "secretKeyRef (default): pods reference the Secret secret_name in their "
                    "own namespace, and no answer of the webhook carries a credential; value: "
                    "the credentials are written into the pod spec, so whoever can post a "
                    "review to the webhook reads them; none: no credentials are managed at all "
                    "(the chart's own stay as they are)."
                ),
            },
            "secret_name": {
                "type": "string",
                "pattern": DNS_SUBDOMAIN,
                "maxLength": 253,
                "default": "backend-injector-credentials",
                "description": "In secretKeyRef mode: the Secret, in each opted-in namespace.",
            },
            "access_key_id_key": {
                "type": "string",
                "pattern": SECRET_KEY,
                "maxLength": 253,
                "default": "access-key-id",
                "description": "In secretKeyRef mode: the Secret's key holding the access key.",
            },
            "secret_access_key_key": {
                "type": "string",
                "pattern": SECRET_KEY,
                "maxLength": 253,
                "default": "secret-access-key",
                "description": "In secretKeyRef mode: the Secret's key holding the secret key.",
            },
        },
    }


def _safety_net() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "For waiters the rules cannot read (a Python socket loop, a program of the chart's "
            "own): every mutated pod gets /etc/hosts entries (spec.hostAliases) that point each "
            "host name of a service with an external address (NAME, NAME.NS, NAME.NS.svc, "
            "NAME.NS.svc.cluster.local) at the IP of that address, so that a client connecting "
            "to mlflow:5000 reaches the external MLflow when the port is the same."
        ),
        "properties": {
            "host_aliases": {
                "type": "boolean",
                "default": True,
                "description": "false: no entries are added to any pod.",
            },
            "addresses": {
                "type": "object",
                "description": (
                    "External host -> the IP address pods reach it at. An external host that is "
                    "an IP address needs no entry here. For the others, serve asks the "
                    "cluster's DNS at start when it runs in the cluster; dev, inject, review "
                    "and policy run outside it and use only these."
                ),
                "additionalProperties": False,
                "patternProperties": {
                    HOSTNAME: {
                        "type": "string",
                        "pattern": IP_ADDRESS,
                        "maxLength": 45,
                        "description": "An IPv4 or IPv6 address.",
                        "examples": ["192.168.65.254"],
                    },
                },
                "default": {},
                "examples": [{"host.docker.internal": "192.168.65.254"}],
            },
        },
    }


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a configuration file, as a new dict on every call.

    Callers may change what they get back (e.g. embed it in another schema) without touching
    anyone else's copy.
    """
    return copy.deepcopy(_SCHEMA)


_SCHEMA: Final[dict[str, Any]] = {
    "$schema": DIALECT,
    "$id": SCHEMA_ID,
    "title": "backend-injector configuration",
    "description": (
        "A --config file: merged over the embedded default key by key (mappings merge, lists "
        "and scalars replace; null drops an env variable of the default)."
    ),
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {
            "type": "string",
            "enum": list(ACTIONS),
            "default": "remove",
            "description": (
                "What happens to an init container that waits for a managed service. remove: "
                "it is dropped; rewrite: its probe is pointed at the external host and port "
                "(waiters for a service without an external address are removed either way)."
            ),
        },
        "waiter_names": _label_list(
            "Init container names that are waiters whatever their command says.",
            "An init container name.",
            default=["wait-for-mlflow", "wait-for-fastapi"],
        ),
        "services": {
            "type": "object",
            "description": (
                "The managed in-cluster services by name; the name is what env templates "
                "write as {name}."
            ),
            "additionalProperties": False,
            "patternProperties": {DNS_LABEL: _service()},
            "minProperties": 1,
            "examples": [
                {"redis": {"hosts": ["redis", "redis-master"],
                           "external": {"host": "host.docker.internal", "port": 6379}}},
            ],
        },
        "env": {
            "type": "object",
            "description": (
                "Managed variables, in the order they are added to containers that use the "
                "backend. {service} in a value becomes that service's external host:port; null "
                "drops a variable of the default."
            ),
            "additionalProperties": False,
            "propertyNames": {"not": {"enum": list(CREDENTIAL_VARIABLES)}},
            "patternProperties": {
                ENV_NAME: {
                    "type": ["string", "null"],
                    "description": "The value, with {service} fields.",
                    "examples": ["http://{mlflow}"],
                },
            },
            "examples": [{"MLFLOW_TRACKING_URI": "http://{mlflow}", "GATEWAY_URL": None}],
        },
        "add_env_to": {
            "type": "string",
            "enum": list(ENV_SCOPES),
            "default": "using",
            "description": (
                "Which containers get the managed variables they lack. using: only those that "
                "use the backend (they carry a managed variable, name a managed host in env, "
                "command or args, or their pod waited for a managed service); all: every app "
                "container and native sidecar."
            ),
        },
        "credentials": _credentials(),
        "excluded_namespaces": _label_list(
            "Namespaces never mutated, whatever the webhook's namespaceSelector says.",
            "A namespace name.",
            default=["kube-system", "kube-public", "kube-node-lease", "backend-injector"],
        ),
        "safety_net": _safety_net(),
        "platform": {
            "type": "string",
            "enum": list(PLATFORM_NAMES),
            "default": "docker-desktop",
            "description": (
                "The local Kubernetes the pods run on. It names the external host of every "
                "service that names none: host.docker.internal (docker-desktop), "
                "host.minikube.internal (minikube), host.k3d.internal (k3d), "
                "host.rancher-desktop.internal (rancher-desktop), host.orb.internal "
                "(orbstack), host.lima.internal (colima); kind has no such name, so there "
                "the hosts must be given. --platform and BACKEND_INJECTOR_PLATFORM win over "
                "this key; a service's own external.host, BACKEND_INJECTOR_EXTERNAL_HOST and "
                "--external-host win over the platform's host."
            ),
        },
    },
}
