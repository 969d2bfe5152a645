"""What each of doctor's checks found: a status, a detail, and what to do when it is not ok.

One `Check` is one printed line. `refused` is the verdict on a check whose request the cluster
refused (RBAC, typically): it fails that check only, with the apiserver's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from webhook.cluster.client import ClusterError


class Status(StrEnum):
    PASS = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text


def passed(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def warned(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.WARN, detail, fix)


def refused(name: str, error: ClusterError) -> Check:
    return failed(name, error.problem,
                  error.fix or "ask for the rights the message names, or use another context")
