"""The status annotation read back from a pod and written onto it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook.rules.status import STATUS_KEY, read_status, status_operation

NOTHING_DONE = {"removed": [], "rewritten": [], "env": []}


def metadata(status: Any) -> dict[str, Any]:
    return {"annotations": {STATUS_KEY: status}}


def test_an_earlier_account_is_read_back() -> None:
    status = json.dumps({"removed": ["wait-for-mlflow"], "rewritten": [], "env": ["A"]})
    assert read_status(metadata(status)) == {"removed": ["wait-for-mlflow"], "rewritten": [],
                                             "env": ["A"]}


@pytest.mark.parametrize(
    "status",
    [None, 5, "not json", "[1, 2]", "[" * 10_000, json.dumps({"removed": "x"}),
     "x" * (64 * 1024 + 1)],
)
def test_anything_but_our_own_shape_reads_as_nothing_done(status: Any) -> None:
    assert read_status(metadata(status)) == NOTHING_DONE


def test_only_names_of_kubernetes_length_are_read_back() -> None:
    status = json.dumps({"removed": [1, "n" * 254, "kept"], "env": ["A"] * 300})
    read = read_status(metadata(status))
    assert read["removed"] == ["kept"]
    assert read["env"] == ["A"] * 256


def test_the_account_is_merged_with_the_earlier_one() -> None:
    earlier = {"removed": ["a"], "rewritten": [], "env": ["X"]}
    done = {"removed": ["b", "a"], "rewritten": ["c"], "env": ["X", "Y"]}
    operation = status_operation({"annotations": {}}, True, earlier, **done)
    assert operation is not None
    assert json.loads(operation["value"]) == {"removed": ["a", "b"], "rewritten": ["c"],
                                              "env": ["X", "Y"]}
    assert operation["path"] == "/metadata/annotations/backend-injector~1status"


def test_an_annotation_that_already_says_it_all_is_left() -> None:
    done = {"removed": ["a"], "rewritten": [], "env": []}
    written = json.dumps(done, separators=(",", ":"))
    assert status_operation(metadata(written), True, NOTHING_DONE, **done) is None


@pytest.mark.parametrize(
    ("pod_metadata", "has_metadata", "path"),
    [
        ({}, False, "/metadata"),
        ({"name": "p"}, True, "/metadata/annotations"),
    ],
)
def test_missing_parents_are_added_whole(
    pod_metadata: dict[str, Any], has_metadata: bool, path: str
) -> None:
    done = {"removed": ["a"], "rewritten": [], "env": []}
    operation = status_operation(pod_metadata, has_metadata, NOTHING_DONE, **done)
    assert operation is not None and operation["path"] == path
