"""The reviews the benchmarks send: a small pod like the flts chart's trainers and a large one.

The small one is the GRU trainer as the ReplicaSet controller creates it (~3 KB of JSON); the
large one (~100 KB) has many containers and variables, to show how cost grows with size.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gru-trainer"


def small_review() -> dict[str, Any]:
    review: dict[str, Any] = json.loads((FIXTURE / "request.json").read_text())
    # managedFields are set by the apiserver after admission; a real review has none yet.
    review["request"]["object"]["metadata"].pop("managedFields", None)
    return review


def large_review() -> dict[str, Any]:
    review = small_review()
    spec = review["request"]["object"]["spec"]
    app = spec["containers"][0]
    containers = []
    for number in range(28):
        container = copy.deepcopy(app)
        container["name"] = f"worker-{number}"
        container["env"] = [
            *app.get("env", []),
            *({"name": f"SETTING_{number}_{index}", "value": f"value-{index}" * 3}
              for index in range(40)),
        ]
        containers.append(container)
    spec["containers"] = containers
    spec["initContainers"] = spec["initContainers"] * 4
    for number, init in enumerate(spec["initContainers"]):
        init["name"] = f"{init['name']}-{number}"
    return review


def encoded(review: dict[str, Any]) -> bytes:
    return json.dumps(review, separators=(",", ":")).encode()


def unique_reviews(count: int) -> list[dict[str, Any]]:
    """Small reviews that all differ (each its own generateName), so none repeats."""
    reviews = []
    for number in range(count):
        review = small_review()
        review["request"]["object"]["metadata"]["generateName"] = f"train-gru-{number:06d}-"
        reviews.append(review)
    return reviews


def env_value_reviews(count: int) -> list[dict[str, Any]]:
    """Small reviews that differ only in one env value (``CONFIG_HASH`` of the trainer), as
    the pods of successive releases of one chart do."""
    reviews = []
    for number in range(count):
        review = small_review()
        for container in review["request"]["object"]["spec"]["containers"]:
            for entry in container.get("env", []):
                if entry["name"] == "CONFIG_HASH":
                    entry["value"] = f"{number:08x}"
        reviews.append(review)
    return reviews


def fixed_answer(length: int) -> bytes:
    """An AdmissionReview answer of ``length`` bytes (a warning pads it), always the same."""
    head = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":' \
        b'{"uid":"fixed","allowed":true,"warnings":["'
    tail = b'"]}}'
    return head + b"x" * max(0, length - len(head) - len(tail)) + tail


if __name__ == "__main__":
    for name, review in (("small", small_review()), ("large", large_review())):
        print(name, len(encoded(review)), "bytes")
