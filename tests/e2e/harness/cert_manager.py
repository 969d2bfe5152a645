"""Stand-ins for cert-manager's CustomResourceDefinitions, for the objects that use them.

The manifests' cert-manager overlay and the chart's cert-manager option make Issuer and
Certificate objects; the apiserver refuses those unless their CRDs are installed.
"""

from __future__ import annotations

from typing import Any

# cert-manager cannot be downloaded here, so its CRDs are stood in for by minimal ones of the
# same group, version, kinds and scope that accept any content: what the tests check is
# the project's own core objects (and that the cert-manager ones reach the apiserver), not
# cert-manager's schema, which tools/check-manifests.sh does not cover either.
STAND_IN_CRDS: list[dict[str, Any]] = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.cert-manager.io"},
        "spec": {
            "group": "cert-manager.io",
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": plural[:-1]},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }],
        },
    }
    for kind, plural in (("Issuer", "issuers"), ("Certificate", "certificates"))
]
