"""AdmissionReview in, AdmissionReview out.

The only module that knows the review envelope. It checks the envelope, hands Pod CREATE
objects to the rules, and answers in the API version it was asked in (``admission.k8s.io/v1``
or ``v1beta1``), echoing the uid. Two kinds of bad input are kept apart:

* a body that is not an AdmissionReview raises ``EnvelopeError``; the server answers HTTP 400;
* a valid envelope around an object the rules cannot read is *allowed unchanged* with a
  warning, so that the apiserver's own validation has the last word on a malformed pod.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from webhook.rules.mutate import Mutation, PodShapeError, Rules
from webhook.serving.logs import clipped
from webhook.serving.review_cache import ReviewCache

API_VERSIONS = frozenset({"admission.k8s.io/v1", "admission.k8s.io/v1beta1"})
# The apiserver shows a warning in full up to this length and may cut longer ones.
WARNING_LENGTH = 120
# More warnings than this are not read by anyone; describe_changes says at most four things.
MOST_WARNINGS = 8
WARNING_PREFIX = "backend-injector: "

Result = Literal[
    "mutated", "unchanged", "skipped", "ignored", "invalid-object", "excluded", "internal-error"
]

logger = logging.getLogger(__name__)


class EnvelopeError(ValueError):
    """The body is not an AdmissionReview this webhook can answer (HTTP 400).

    ``reason`` says why in a fixed word, for the log: the message may quote the body.
    """

    def __init__(self, message: str, reason: str = "not-a-review") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[EnvelopeError], tuple[str, str]]:
        # Raised in a review process too, and sent back whole (the reason with the message).
        return EnvelopeError, (str(self), self.reason)


@dataclass(slots=True)
class ReviewOutcome:
    """One answered review: the response body and a names-only account for logs and metrics."""

    body: bytes
    uid: str
    operation: str
    namespace: str
    pod: str
    result: Result
    mutation: Mutation | None = None
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False


class AdmissionHandler:
    """Answers AdmissionReviews with one set of rules."""

    def __init__(self, rules: Rules, *, cache: ReviewCache[ReviewOutcome] | None = None) -> None:
        self._rules = rules
        # From the settings the rules were built with, so the two can never disagree.
        self._excluded_namespaces = rules.settings.excluded_namespaces
        self._cache: ReviewCache[ReviewOutcome] = cache if cache is not None else ReviewCache()

    def without_cache(self) -> AdmissionHandler:
        """The same rules (and so exclusions), remembering no answers (for another process)."""
        return AdmissionHandler(self._rules, cache=ReviewCache(entries=0))

    def review(self, body: bytes | str) -> ReviewOutcome:
        """Answer one review. Raises EnvelopeError when ``body`` is not a review."""
        key = self._cache.key(body) if isinstance(body, bytes) else None
        if key is not None and (remembered := self._cache.get(key)) is not None:
            answer, account = remembered
            return _copy(account, body=answer, uid=key.uid, mutation=account.mutation)
        outcome = self._review(body)
        if (key is not None and isinstance(body, bytes) and outcome.uid == key.uid
                and outcome.result != "internal-error"):
            account = without_operations(outcome)
            self._cache.put(key, body, outcome.body, account, _account_size(account),
                            request_uid=_request_uid)
        return outcome

    def _review(self, body: bytes | str) -> ReviewOutcome:
        api_version, request = _parse_envelope(body)
        uid = request["uid"]
        operation = _text(request.get("operation"))
        namespace = _text(request.get("namespace"))
        obj = request.get("object")
        outcome = ReviewOutcome(
            body=b"",
            uid=uid,
            operation=operation,
            namespace=namespace,
            pod=_pod_name(request, obj),
            result="ignored",
            dry_run=request.get("dryRun") is True,
        )
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if _is_pod_create(request):
            if namespace in self._excluded_namespaces:
                outcome.result = "excluded"
            else:
                self._mutate(obj, response, outcome)
        outcome.body = orjson.dumps(
            {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
        )
        return outcome

    def _mutate(self, obj: Any, response: dict[str, Any], outcome: ReviewOutcome) -> None:
        try:
            mutation = self._rules.mutate_pod(obj)
        except PodShapeError as error:
            outcome.result = "invalid-object"
            outcome.warnings = [_clip(f"{WARNING_PREFIX}pod left unchanged: {error}")]
            response["warnings"] = outcome.warnings
            return
        except Exception:
            # The one place a bug in the rules is caught: the pod is admitted as it came, the
            # apiserver gets a well-formed answer, and the log keeps the trace (no values).
            logger.exception("rules failed", extra={"fields": {"uid": clipped(outcome.uid)}})
            outcome.result = "internal-error"
            outcome.warnings = [f"{WARNING_PREFIX}internal error; pod left unchanged"]
            response["warnings"] = outcome.warnings
            return
        outcome.mutation = mutation
        if mutation.skipped is not None:
            outcome.result = "skipped"
            return
        outcome.warnings = describe_changes(mutation)[:MOST_WARNINGS]
        if outcome.warnings:
            response["warnings"] = outcome.warnings
        if not mutation.changed:
            outcome.result = "unchanged"
            return
        outcome.result = "mutated"
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(mutation.operations)).decode("ascii")


def without_operations(outcome: ReviewOutcome) -> ReviewOutcome:
    """The outcome as logs and metrics read it, without the body and the patch operations.

    What a remembered answer keeps, and what a review process sends back. The operations live
    on inside the encoded answer; this keeps only how many there were (one shared placeholder
    each), which is all that ``Mutation.changed`` reads.
    """
    mutation = outcome.mutation
    if mutation is not None:
        # Field by field rather than dataclasses.replace, which costs several times more on
        # the path of every review that misses the cache.
        placeholder: dict[str, Any] = {}
        mutation = Mutation(
            operations=[placeholder] * len(mutation.operations), removed=mutation.removed,
            rewritten=mutation.rewritten, env=mutation.env, containers=mutation.containers,
            kept_waiting=mutation.kept_waiting, aliased=mutation.aliased,
            notices=mutation.notices, skipped=mutation.skipped,
        )
    return _copy(outcome, body=b"", uid=outcome.uid, mutation=mutation)


def _copy(outcome: ReviewOutcome, *, body: bytes, uid: str,
          mutation: Mutation | None) -> ReviewOutcome:
    """``outcome`` with another body, uid and mutation (dataclasses.replace, faster)."""
    return ReviewOutcome(
        body=body, uid=uid, operation=outcome.operation, namespace=outcome.namespace,
        pod=outcome.pod, result=outcome.result, mutation=mutation, warnings=outcome.warnings,
        dry_run=outcome.dry_run,
    )


def _account_size(outcome: ReviewOutcome) -> int:
    """About the bytes an account holds: its strings and lists (CPython object sizes)."""
    texts = [outcome.uid, outcome.operation, outcome.namespace, outcome.pod, *outcome.warnings]
    lists = 1
    mutation = outcome.mutation
    if mutation is not None:
        names = (mutation.removed, mutation.rewritten, mutation.env, mutation.containers,
                 mutation.kept_waiting, mutation.aliased, mutation.notices)
        lists += len(names) + 1
        for listed in names:
            texts += listed
        texts.append(mutation.skipped or "")
        # One pointer per operation placeholder and per name.
        lists += len(mutation.operations) // 8
    # Each text: its characters, a str object's 56 bytes and a pointer to it.
    return sum(map(len, texts)) + 64 * len(texts) + 64 * lists + 400


def _request_uid(body: bytes) -> str | None:
    try:
        return str(_parse_envelope(body)[1]["uid"])
    except EnvelopeError:
        return None


def describe_changes(mutation: Mutation) -> list[str]:
    """Admission warnings saying what changed: container and variable names, never values."""
    return [_clip(WARNING_PREFIX + line) for line in mutation.describe(most=4)]


def _parse_envelope(body: bytes | str) -> tuple[str, Mapping[str, Any]]:
    if not body:
        raise EnvelopeError("empty body; expected an AdmissionReview", "empty-body")
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise EnvelopeError(f"body is not valid JSON: {error}", "not-json") from None
    except RecursionError:
        raise EnvelopeError("body is nested too deeply", "nested-too-deeply") from None
    if not isinstance(review, dict):
        raise EnvelopeError("body is not a JSON object; expected an AdmissionReview",
                            "not-an-object")
    api_version = review.get("apiVersion")
    if review.get("kind") != "AdmissionReview" or api_version not in API_VERSIONS:
        raise EnvelopeError(
            "expected kind AdmissionReview with apiVersion admission.k8s.io/v1 or v1beta1",
            "not-a-review",
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise EnvelopeError("AdmissionReview has no request", "no-request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise EnvelopeError("AdmissionReview request has no uid", "no-uid")
    return str(api_version), request


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    return (
        request.get("operation") == "CREATE"
        and isinstance(kind, Mapping)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and not request.get("subResource")
    )


def _pod_name(request: Mapping[str, Any], obj: Any) -> str:
    if name := _text(request.get("name")):
        return name
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if isinstance(metadata, Mapping):
        if name := _text(metadata.get("name")):
            return name
        if generate_name := _text(metadata.get("generateName")):
            return generate_name + "*"
    return ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _clip(warning: str) -> str:
    return warning if len(warning) <= WARNING_LENGTH else warning[: WARNING_LENGTH - 3] + "..."
