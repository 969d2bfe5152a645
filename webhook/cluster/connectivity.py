"""`doctor --connectivity`: can a pod of the namespace open a TCP connection to each external
service?

The webhook's own reachability figures come from its pod, in its own namespace; what matters in
the end is what a pod of the workloads' namespace meets (its DNS, its NetworkPolicies, the
node it lands on). So doctor runs one short-lived pod there, with a shell and ``nc``, that
connects to each external ``host:port`` of the configuration in turn and writes one line per
service, to its output and to its termination message; doctor reads them and deletes it,
whatever happened. The termination message comes back in the pod's status, so no request goes
through the apiserver to the kubelet (which some clusters do not allow, or cannot route) and
no right to read logs is needed; the log is read only when the pod ends without one (doctor's
timeout while it still runs).

The pod opts out of the webhook (the label ``backend-injector/inject: "false"``) so that it runs
as written, meets the "restricted" Pod Security Standard, mounts no service account token, and
is bounded twice: by ``activeDeadlineSeconds`` on the node and by doctor's own timeout.

Pure parts, tested without a cluster: `probe_script` (what the pod runs), `probe_pod` (the pod),
`parse_log` (its lines, read back), and the verdicts on a pod's state. `ConnectivityProbe` is the
one part that talks to the cluster.
"""

from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.cluster.checks import Check, failed, passed, warned
from webhook.cluster.client import Cluster, ClusterError, JsonObject, namespaced_path
from webhook.rules.mutate import INJECT_KEY
from webhook.serving.reachability import Target

DEFAULT_IMAGE = "busybox:1.36"
DEFAULT_TIMEOUT_SECONDS = 60
# The bounds of --connectivity-timeout: a node needs a few seconds to start any pod, and doctor
# is something a user waits for at a terminal.
MIN_TIMEOUT_SECONDS = 10
MAX_TIMEOUT_SECONDS = 600
# Per connection, as the webhook's own probe (a backend that answers at all answers in ms).
CONNECT_TIMEOUT_SECONDS = 5
POLL_SECONDS = 1.0
POD_PREFIX = "backend-injector-connectivity-"
CONTAINER = "connect"
# Where the container writes its lines for the kubelet to put in its status (at most 4096 bytes
# are kept: a line is at most ~250, so a few dozen services fit).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
NC_MESSAGE_CHARACTERS = 160
CHECK_NAME = "connectivity"
# Every line the pod's script prints for doctor starts with this; other output is ignored.
MARKER = "backend-injector-connectivity"
# Waiting reasons that do not go away by waiting longer.
_STUCK_REASONS = frozenset({
    "ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
_IMAGE_REASONS = frozenset({"ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff",
                            "InvalidImageName"})
# What nc and the C library print when a name does not resolve (busybox, glibc, musl).
_RESOLUTION_FAILURES = ("bad address", "not known", "name resolution", "no address associated",
                        "could not resolve", "host not found")


@dataclass(frozen=True)
class ConnectivityOptions:
    """What `doctor --connectivity` was asked for: the addresses, the image and the bound."""

    targets: tuple[Target, ...]
    image: str = DEFAULT_IMAGE
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Outcome:
    """What the pod's log says of one target; ``tried`` is False when it has no line for it."""

    target: Target
    tried: bool = False
    reached: bool = False
    exit_code: int | None = None
    seconds: float | None = None
    message: str = ""


@dataclass(frozen=True)
class ProbeLog:
    """The pod's log, read: one outcome per target in the targets' order; whether the script
    got to its end; whether the image had no ``nc`` at all."""

    outcomes: tuple[Outcome, ...]
    finished: bool
    without_nc: bool = False


# --- the pod --------------------------------------------------------------------------------


def probe_script(targets: Sequence[Target], connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
                 termination_log: str = TERMINATION_MESSAGE_PATH) -> str:
    """A POSIX shell script that tries each target in turn with ``nc -z`` and writes
    ``MARKER INDEX EXIT START END MESSAGE`` for each, START and END being the node's uptime
    (``/proc/uptime``, so that the time taken needs no clock with sub-second ``date``), then
    ``MARKER done``, to its output and to `termination_log`. The index, not the service's
    name, keys a line: nothing the configuration holds can break its parsing."""
    lines = [
        "uptime_now() { read -r seconds rest </proc/uptime && echo \"$seconds\" || echo -; }",
        # Braces: a termination log that cannot be written costs the line there, not an error.
        "say() { printf '%s\\n' \"$*\"; "
        f"{{ printf '%s\\n' \"$*\" >>{shlex.quote(termination_log)}; }} 2>/dev/null; }}",
        "probe() {",
        "  start=$(uptime_now 2>/dev/null)",
        f"  message=$(nc -z -w {int(connect_timeout)} \"$2\" \"$3\" 2>&1)",
        "  code=$?",
        "  end=$(uptime_now 2>/dev/null)",
        # printf, not echo: some shells' echo reads backslashes in nc's message as escapes.
        "  flat=$(printf '%s' \"$message\" | tr '\\n' ' ' | cut -c "
        f"1-{NC_MESSAGE_CHARACTERS})",
        f"  say {MARKER} \"$1\" \"$code\" \"$start\" \"$end\" \"$flat\"",
        "}",
        # An image without nc would otherwise fail every target with "not found", which reads
        # as if the backend were down.
        f"command -v nc >/dev/null 2>&1 || {{ say {MARKER} no-nc; exit 3; }}",
    ]
    lines += [f"probe {index} {shlex.quote(target.host)} {int(target.port)}"
              for index, target in enumerate(targets)]
    lines.append(f"say {MARKER} done")
    return "\n".join(lines) + "\n"


def probe_pod(name: str, image: str, script: str, deadline_seconds: int) -> JsonObject:
    """The pod that runs `script`: opted out of the webhook, restricted-PSS compatible, no
    service account token, no restarts, and killed by the kubelet after `deadline_seconds`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "backend-injector-doctor",
                "app.kubernetes.io/component": "connectivity",
                # Sent to no backend-injector webhook (its objectSelector), so it runs as written.
                INJECT_KEY: "false",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(deadline_seconds),
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                # busybox's image runs as root unless told; nobody is enough for nc.
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": CONTAINER,
                "image": image,
                # A node that has the image uses it, so an air-gapped node works.
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                "terminationMessagePolicy": "File",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                # Requests and limits, so that a namespace with a ResourceQuota admits it.
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "100m", "memory": "32Mi"},
                },
            }],
        },
    }


# --- its log --------------------------------------------------------------------------------


def parse_log(text: str, targets: Sequence[Target]) -> ProbeLog:
    """The lines `probe_script` printed, read back; anything else in the log is ignored."""
    found: dict[int, Outcome] = {}
    finished = without_nc = False
    for line in text.splitlines():
        words = line.split(maxsplit=5)
        if not words or words[0] != MARKER or len(words) < 2:
            continue
        if words[1] == "done":
            finished = True
        elif words[1] == "no-nc":
            without_nc = True
        elif len(words) >= 5 and words[1].isdigit() and int(words[1]) < len(targets):
            index = int(words[1])
            exit_code = int(words[2]) if words[2].lstrip("-").isdigit() else None
            found[index] = Outcome(
                target=targets[index], tried=True, reached=exit_code == 0,
                exit_code=exit_code, seconds=_elapsed(words[3], words[4]),
                message=words[5].strip() if len(words) > 5 else "")
    outcomes = tuple(found.get(index, Outcome(target)) for index, target in enumerate(targets))
    return ProbeLog(outcomes=outcomes, finished=finished, without_nc=without_nc)


def _elapsed(start: str, end: str) -> float | None:
    try:
        return max(0.0, float(end) - float(start))
    except ValueError:
        return None


# --- the pod's state --------------------------------------------------------------------------


def _container_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status.get("state") or {})
    return {}


def has_ended(pod: Mapping[str, Any]) -> bool:
    """The probe container has ended (another admission step may have added a sidecar that
    keeps the pod running, so the container, not the pod's phase, is asked first)."""
    phase = (pod.get("status") or {}).get("phase")
    return "terminated" in _container_state(pod) or phase in ("Succeeded", "Failed")


def has_started(pod: Mapping[str, Any]) -> bool:
    state = _container_state(pod)
    return "running" in state or "terminated" in state


def stuck_reason(pod: Mapping[str, Any]) -> str | None:
    """Why the container cannot start, when waiting longer would not help."""
    waiting = _container_state(pod).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in _STUCK_REASONS:
        message = str(waiting.get("message") or "").strip()
        return f"{reason} ({message})" if message else str(reason)
    return None


def waiting_for(pod: Mapping[str, Any]) -> str:
    """What kept a pod's container from starting so far, in a few words."""
    waiting = _container_state(pod).get("waiting") or {}
    if waiting.get("reason"):
        return str(waiting["reason"])
    status = pod.get("status") or {}
    if status.get("reason"):
        # The kubelet refused or ended the pod itself (OutOfcpu, DeadlineExceeded, Evicted...).
        return f"{status['reason']}: {status.get('message') or ''}".rstrip(": ")
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"not scheduled: {condition.get('message') or condition.get('reason')}"
    return str((pod.get("status") or {}).get("phase") or "Pending")


# --- the verdicts ---------------------------------------------------------------------------


def outcome_checks(log: ProbeLog, *, namespace: str, image: str, timed_out: bool,
                   exit_code: int | None = None) -> list[Check]:
    """One line per target from a pod that ran; a single line when the image has no nc."""
    if log.without_nc:
        return [failed(CHECK_NAME, f"the image {image} has no nc",
                       "pass --connectivity-image with an image that has a shell and nc "
                       f"(as {DEFAULT_IMAGE} has)")]
    return [_outcome_check(outcome, namespace=namespace, timed_out=timed_out,
                           exit_code=exit_code) for outcome in log.outcomes]


def _outcome_check(outcome: Outcome, *, namespace: str, timed_out: bool,
                   exit_code: int | None) -> Check:
    target = outcome.target
    name = f"{CHECK_NAME} {target.service}"
    address = f"{target.host}:{target.port}"
    if outcome.reached:
        took = f" (TCP connect {outcome.seconds:.2f} s)" if outcome.seconds is not None else ""
        return passed(name, f"{address} reachable from a pod in {namespace}{took}")
    correct = (f"start {target.service} at {address}, or correct "
               f"services.{target.service}.external in the configuration")
    if not outcome.tried:
        why = ("the pod ran out of time first (raise --connectivity-timeout)" if timed_out
               else f"the pod ended first (exit code {exit_code})")
        return failed(name, f"{address} not tried from a pod in {namespace}: {why}", correct)
    if (outcome.seconds is not None and outcome.seconds >= CONNECT_TIMEOUT_SECONDS * 0.95
            and not outcome.message):
        how = f"no answer within {CONNECT_TIMEOUT_SECONDS} s"
    else:
        how = outcome.message[:200] or f"no connection: nc exited {outcome.exit_code}"
    detail = f"{address} not reachable from a pod in {namespace} ({how})"
    if any(words in outcome.message.lower() for words in _RESOLUTION_FAILURES):
        return failed(name, detail,
                      f"pods of {namespace} cannot resolve {target.host}: give "
                      f"services.{target.service}.external a name the cluster's DNS knows, "
                      "or an IP address")
    return failed(name, detail, correct + f"; a NetworkPolicy of {namespace} may also stop it")


def _pod_fix(reason: str, image: str, namespace: str, pod: str) -> str:
    if reason.split(" ", 1)[0] in _IMAGE_REASONS:
        return (f"the node cannot get {image}: pass --connectivity-image with an image the "
                "nodes have or can pull (a shell and nc, as busybox has)")
    return (f"kubectl -n {namespace} get events --field-selector involvedObject.name={pod} "
            "says why (run again, then look, before doctor deletes it)")


# --- against the cluster --------------------------------------------------------------------


class ConnectivityProbe:
    """Runs the pod in `namespace`, waits for it (at most the options' timeout), reads its
    log and deletes it; the checks come out once the pod is gone."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        options: ConnectivityOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        suffix: Callable[[], str] = lambda: secrets.token_hex(4),
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.options = options
        self.clock = clock
        self.sleep = sleep
        self.suffix = suffix

    def run(self) -> Iterator[Check]:
        targets = self.options.targets
        if not targets:
            yield passed(CHECK_NAME, "no external service in the configuration: nothing to "
                                     "connect to")
            return
        name = POD_PREFIX + self.suffix()
        pod = probe_pod(name, self.options.image, probe_script(targets),
                        self.options.timeout_seconds)
        try:
            self.cluster.create(namespaced_path("v1", self.namespace, "pods"), pod)
        except ClusterError as error:
            yield failed(CHECK_NAME, f"cannot run a pod in {self.namespace}: {error.problem}",
                         error.fix or "ask for the right to create, read and delete pods (and "
                         "their logs) in the namespace")
            return
        path = namespaced_path("v1", self.namespace, "pods", name)
        try:
            checks = self._watch(path, name)
        except ClusterError as error:
            checks = [failed(CHECK_NAME, f"lost sight of the pod {name}: {error.problem}",
                             error.fix or "run doctor again")]
        finally:
            deletion = self._delete(path, name)
        yield from checks
        if deletion is not None:
            yield deletion

    def _watch(self, path: str, name: str) -> list[Check]:
        deadline = self.clock() + self.options.timeout_seconds
        while True:
            pod = self.cluster.get(path)
            if pod is None:
                return [failed(CHECK_NAME, f"the pod {name} was deleted in {self.namespace} "
                                           "before it ended", "run doctor again")]
            stuck = stuck_reason(pod)
            timed_out = self.clock() >= deadline
            if has_ended(pod) or stuck or timed_out:
                break
            self.sleep(POLL_SECONDS)
        image = self.options.image
        if not has_started(pod):
            why = stuck or waiting_for(pod)
            if stuck:
                detail = f"could not start in {self.namespace}: {why}"
            elif has_ended(pod):
                detail = f"ended in {self.namespace} before its container started ({why})"
            else:
                detail = (f"did not start within {self.options.timeout_seconds} s in "
                          f"{self.namespace} ({why})")
            return [failed(CHECK_NAME, f"the pod {name} {detail}",
                           _pod_fix(why, image, self.namespace, name))]
        terminated = _container_state(pod).get("terminated") or {}
        text, unread = str(terminated.get("message") or ""), ""
        if MARKER not in text:
            text, unread = self._log(path)
        log = parse_log(text, self.options.targets)
        if unread and not any(outcome.tried for outcome in log.outcomes):
            return [failed(CHECK_NAME, f"the pod {name} ran in {self.namespace}, but what it "
                                       f"found cannot be read: no termination message, and "
                                       f"{unread}", "ask for the right to read pods/log in "
                                       "the namespace, or raise --connectivity-timeout so that "
                                       "the pod ends")]
        # The kubelet's deadline (activeDeadlineSeconds) or doctor's, whichever came first.
        out_of_time = (not has_ended(pod)
                       or (pod.get("status") or {}).get("reason") == "DeadlineExceeded")
        return outcome_checks(log, namespace=self.namespace, image=image,
                              timed_out=out_of_time, exit_code=terminated.get("exitCode"))

    def _log(self, path: str) -> tuple[str, str]:
        """The container's log, or why it cannot be read."""
        try:
            return self.cluster.get_text(f"{path}/log?container={CONTAINER}"), ""
        except ClusterError as error:
            return "", error.problem

    def _delete(self, path: str, name: str) -> Check | None:
        try:
            self.cluster.delete(path)
        except ClusterError as error:
            return warned(f"{CHECK_NAME} pod deleted",
                          f"the pod {name} is left in {self.namespace}: {error.problem}",
                          f"kubectl -n {self.namespace} delete pod {name}")
        return None
