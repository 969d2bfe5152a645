"""The usual way such a webhook is written, kept as the benchmarks' reference point.

Standard-library json, a deep copy of the pod mutated in place, and the patch found by
diffing the two pods with ``jsonpatch.make_patch``. It does the same job as backend-injector
for the flts chart's pods (waiters by name, env replaced or added, the status annotation), so the
difference in cost is the way it is done, not what is done.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch

WAITER_NAMES = {"wait-for-mlflow", "wait-for-fastapi"}
MANAGED_ENV = {
    "MLFLOW_TRACKING_URI": "http://host.docker.internal:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://host.docker.internal:9000",
    "GATEWAY_URL": "http://host.docker.internal:8000",
    "AWS_ACCESS_KEY_ID": "minioadmin",
    "AWS_SECRET_ACCESS_KEY": "minioadmin",
}


def mutate(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    spec["initContainers"] = [
        c for c in spec.get("initContainers", []) if c["name"] not in WAITER_NAMES
    ]
    for container in spec.get("containers", []) + spec["initContainers"]:
        env = container.setdefault("env", [])
        present = {entry["name"]: entry for entry in env}
        for name, value in MANAGED_ENV.items():
            if name in present:
                present[name].clear()
                present[name].update({"name": name, "value": value})
            elif container in spec["containers"]:
                env.append({"name": name, "value": value})
    annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
    annotations["backend-injector/status"] = json.dumps({"env": list(MANAGED_ENV)})
    return pod


def review(body: bytes) -> bytes:
    request = json.loads(body)
    original = request["request"]["object"]
    patch = jsonpatch.make_patch(original, mutate(copy.deepcopy(original)))
    response = {
        "uid": request["request"]["uid"],
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(patch.to_string().encode()).decode(),
    }
    return json.dumps(
        {"apiVersion": request["apiVersion"], "kind": "AdmissionReview", "response": response}
    ).encode()
