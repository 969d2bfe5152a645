"""The native twin: a MutatingAdmissionPolicy (CEL, in the apiserver) with the webhook's rules.

``build_policy`` turns the same ``Settings`` the webhook runs with into a
MutatingAdmissionPolicy and its MutatingAdmissionPolicyBinding, so that a pod admitted
through the policy ends up as the webhook would leave it. The parts, one job each:

* ``webhook.rules.grammar``: the rules' words and host forms, which the rules read too;
* ``webhook.policy.regex``: the RE2 twins of the rules' regular expressions;
* ``webhook.policy.cel``: a typed builder for CEL expressions (literals, ``let``, macros...);
* ``webhook.policy.program``: how an init container's program is read and retargeted;
* ``webhook.policy.env``: the env rules; ``webhook.policy.operations``: the patch's lines;
* ``webhook.policy.mutation``: the policy's variables, its JSON Patch, its match condition;
* ``webhook.policy.layout``: the expressions laid out on lines, for a readable YAML;
* this module: the two objects and their YAML.

Credentials in ``value`` mode are literals inside the policy object, readable by anyone who may
read MutatingAdmissionPolicies; the YAML header says so and docs/policy.md recommends
``secretKeyRef`` mode with the policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from webhook.policy.layout import pretty
from webhook.policy.mutation import opted_in, patch_expression, policy_variables
from webhook.rules.mutate import INJECT_KEY
from webhook.settings import CredentialMode, Settings

API_VERSIONS = ("admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1")
DEFAULT_API_VERSION = API_VERSIONS[0]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _namespace_exclusion(settings: Settings) -> list[dict[str, Any]]:
    if not settings.excluded_namespaces:
        return []
    return [{
        "key": NAMESPACE_NAME_LABEL,
        "operator": "NotIn",
        "values": sorted(settings.excluded_namespaces),
    }]


def build_policy(
    settings: Settings,
    *,
    api_version: str = DEFAULT_API_VERSION,
    name: str = "backend-injector",
) -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy with the webhook's rules for ``settings``, and its binding."""
    if api_version not in API_VERSIONS:
        raise ValueError(f"api_version must be one of {', '.join(API_VERSIONS)}")
    labels = {"app.kubernetes.io/name": "backend-injector"}
    excluded = _namespace_exclusion(settings)
    constraints: dict[str, Any] = {
        "resourceRules": [{
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
        }],
        "matchPolicy": "Equivalent",
    }
    if excluded:
        # Also here and not only in the binding: a binding edited by hand must still never
        # reach the namespaces the control plane or the webhook itself live in.
        constraints["namespaceSelector"] = {"matchExpressions": excluded}
    policy = {
        "apiVersion": api_version,
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": constraints,
            "matchConditions": [
                {"name": "not-opted-out", "expression": pretty(opted_in().text)},
            ],
            "variables": [{"name": name, "expression": pretty(expression.text)}
                          for name, expression in policy_variables(settings)],
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": {"expression": pretty(patch_expression(settings).text)},
            }],
        },
    }
    binding = {
        "apiVersion": api_version,
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "policyName": name,
            "matchResources": {
                "namespaceSelector": {"matchExpressions": [
                    {"key": INJECT_KEY, "operator": "In", "values": ["enabled"]},
                    *excluded,
                ]},
                # Saves evaluating the policy for labelled opt-outs; the matchCondition covers
                # the annotation and the other spellings.
                "objectSelector": {"matchExpressions": [
                    {"key": INJECT_KEY, "operator": "NotIn", "values": ["false"]},
                ]},
            },
        },
    }
    return [policy, binding]


class _Dumper(yaml.SafeDumper):
    """Long CEL expressions as literal blocks, so the YAML stays readable and diffable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(documents: Sequence[Mapping[str, Any]], settings: Settings | None = None) -> str:
    """Multi-document YAML with a header that says what it is (and warns about credentials)."""
    header = [
        "# backend-injector as a MutatingAdmissionPolicy: the webhook's rules in CEL.",
        "# Generated by `backend-injector policy`; regenerate rather than edit.",
    ]
    if settings is not None and settings.credentials.mode is CredentialMode.VALUE:
        header += [
            "# WARNING: credentials.mode is `value`, so the S3 credentials are literals inside",
            "# this policy, readable by anyone who may read MutatingAdmissionPolicies. Prefer",
            "# credentials.mode: secretKeyRef with the policy (see docs/policy.md).",
        ]
    body = "---\n".join(
        yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, width=100)
        for document in documents
    )
    return "\n".join(header) + "\n---\n" + body


def run_policy_command(settings: Settings, api_version: str = DEFAULT_API_VERSION) -> str:
    """What `backend-injector policy` prints: the policy and its binding as YAML."""
    return dump_yaml(build_policy(settings, api_version=api_version), settings)


def expressions(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every CEL expression in built documents (for tests and reviews)."""
    found: list[str] = []
    for document in documents:
        spec = document.get("spec", {})
        found += [c["expression"] for c in spec.get("matchConditions", [])]
        found += [v["expression"] for v in spec.get("variables", [])]
        found += [m["jsonPatch"]["expression"] for m in spec.get("mutations", [])]
    return found


__all__ = [
    "API_VERSIONS",
    "DEFAULT_API_VERSION",
    "build_policy",
    "dump_yaml",
    "expressions",
    "run_policy_command",
]
