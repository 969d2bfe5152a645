"""`doctor --connectivity` without a cluster: the pod's script run by real shells against real
sockets (with an ``nc`` stand-in), its log read back, the pod's shape, and the probe's handling
of a pod that ends, cannot start, runs out of time or is refused, against an in-memory
cluster that plays the kubelet. On a real node: tests/e2e/test_node_walk.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.memory_cluster import MemoryCluster
from webhook import cli
from webhook.cluster import connectivity
from webhook.cluster.checks import Status
from webhook.cluster.client import ClusterError, Created, namespace_path
from webhook.cluster.connectivity import (
    MARKER,
    ConnectivityOptions,
    ConnectivityProbe,
    Outcome,
    ProbeLog,
    outcome_checks,
    parse_log,
    probe_pod,
    probe_script,
)
from webhook.cluster.doctor import Doctor
from webhook.serving.reachability import Target

# The shells the script must work in: busybox's ash (the default image's) and dash.
# By their full paths: the script runs with a PATH of the test's choosing.
SHELLS = [[str(found), *rest] for name, *rest in (["dash"], ["busybox", "sh"])
          if (found := shutil.which(name))]

# nc -z [-w SECONDS] HOST PORT, as busybox's: exit 0 when a TCP connection opens, else a
# message and exit 1. It also records its arguments, one per line, for the quoting test.
FAKE_NC = f"""#!{sys.executable}
import os, socket, sys
arguments = sys.argv[1:]
with open(os.environ["NC_ARGUMENTS"], "a") as record:
    record.write("\\n".join(arguments) + "\\n--\\n")
timeout = float(arguments[arguments.index("-w") + 1]) if "-w" in arguments else None
host, port = arguments[-2], int(arguments[-1])
try:
    socket.create_connection((host, port), timeout=timeout).close()
except OSError as error:
    print(f"nc: can't connect to remote host ({{host}}): {{error.strerror or error}}",
          file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def nc_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "nc").write_text(FAKE_NC)
    (directory / "nc").chmod(0o755)
    return directory


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_script(shell: list[str], script: str, path: str, arguments: Path) -> str:
    result = subprocess.run([*shell, "-c", script], capture_output=True, text=True, timeout=60,
                            env={"PATH": path, "NC_ARGUMENTS": str(arguments)}, check=False)
    return result.stdout + result.stderr


# --- the script and its log -----------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=[Path(shell[0]).name for shell in SHELLS])
def test_the_script_tells_the_open_port_from_the_closed_one(
    shell: list[str], nc_directory: Path, listening: int, tmp_path: Path
) -> None:
    targets = [Target("mlflow", "127.0.0.1", listening), Target("minio", "127.0.0.1",
                                                                 closed_port())]
    termination_log = tmp_path / "termination-log"
    log = run_script(shell, probe_script(targets, termination_log=str(termination_log)),
                     f"{nc_directory}:{os.environ['PATH']}", tmp_path / "arguments")
    read = parse_log(log, targets)
    assert read.finished and not read.without_nc, log
    # The termination message, which the kubelet puts in the pod's status, says the same.
    assert parse_log(termination_log.read_text(), targets) == read
    reached, refused = read.outcomes
    assert reached.tried and reached.reached and reached.exit_code == 0, log
    assert reached.seconds is not None and reached.seconds < 5
    assert refused.tried and not refused.reached and refused.exit_code == 1, log
    assert "Connection refused" in refused.message, log
    # Each connection is bounded by nc's own -w.
    recorded = (tmp_path / "arguments").read_text().split("--\n")
    assert recorded[0].splitlines() == ["-z", "-w", str(connectivity.CONNECT_TIMEOUT_SECONDS),
                                        "127.0.0.1", str(listening)]


@pytest.mark.parametrize("shell", SHELLS, ids=[Path(shell[0]).name for shell in SHELLS])
def test_a_host_reaches_nc_as_one_argument_whatever_it_holds(
    shell: list[str], nc_directory: Path, tmp_path: Path
) -> None:
    # The settings never allow such a host; the script must not depend on that.
    host = "a b'$(touch pwned)\"\\n"
    log = run_script(shell, probe_script([Target("odd", host, 1)]),
                     f"{nc_directory}:{os.environ['PATH']}", tmp_path / "arguments")
    assert (tmp_path / "arguments").read_text().split("\n")[3] == host
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    (outcome,) = parse_log(log, [Target("odd", host, 1)]).outcomes
    assert outcome.tried and not outcome.reached


@pytest.mark.parametrize("shell", SHELLS, ids=[Path(shell[0]).name for shell in SHELLS])
def test_an_image_without_nc_is_named_not_taken_for_a_backend_down(
    shell: list[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for tool in ("tr", "cut"):
        if found := shutil.which(tool):
            (empty / tool).symlink_to(found)
    targets = [Target("mlflow", "127.0.0.1", 5000)]
    log = run_script(shell, probe_script(targets), str(empty), tmp_path / "arguments")
    read = parse_log(log, targets)
    assert read.without_nc and not read.finished, log
    (check,) = outcome_checks(read, namespace="ml", image="alpine:3", timed_out=False)
    assert check.status is Status.FAIL and "alpine:3 has no nc" in check.detail
    assert "--connectivity-image" in check.fix


def test_the_log_is_read_by_index_and_other_lines_are_ignored() -> None:
    targets = [Target("mlflow", "h", 5000), Target("minio", "h", 9000),
               Target("fastapi", "h", 8000)]
    log = "\n".join([
        "some shell noise",
        f"{MARKER} 1 1 100.50 105.50 ",
        f"{MARKER} 0 0 100.00 100.03 ",
        f"{MARKER} 7 0 1 2 out of range",
        f"{MARKER} x 0 1 2 not an index",
        f"{MARKER}-lookalike 2 0 1 2",
    ])
    read = parse_log(log, targets)
    assert not read.finished
    mlflow, minio, fastapi = read.outcomes
    assert mlflow.reached and mlflow.seconds == pytest.approx(0.03)
    assert minio.tried and not minio.reached and minio.seconds == pytest.approx(5.0)
    assert not fastapi.tried
    assert parse_log(f"{MARKER} 0 1 - - nc: refused\n{MARKER} done", targets[:1]) == ProbeLog(
        outcomes=(Outcome(targets[0], tried=True, reached=False, exit_code=1, seconds=None,
                          message="nc: refused"),), finished=True)


def test_each_verdict_names_the_service_and_its_address() -> None:
    mlflow, minio, gateway, s3 = (Target("mlflow", "host.docker.internal", 5000),
                                  Target("minio", "host.docker.internal", 9000),
                                  Target("fastapi", "gateway.example", 8000),
                                  Target("s3", "10.0.0.9", 9000))
    log = ProbeLog(outcomes=(
        Outcome(mlflow, tried=True, reached=True, exit_code=0, seconds=0.02),
        Outcome(minio, tried=True, exit_code=1, seconds=5.0),
        Outcome(gateway, tried=True, exit_code=1, seconds=0.01,
                message="nc: bad address 'gateway.example'"),
        Outcome(s3),
    ), finished=False)
    checks = {check.name: check for check in outcome_checks(log, namespace="flts",
                                                             image="busybox", timed_out=True)}
    assert checks["connectivity mlflow"].status is Status.PASS
    assert checks["connectivity mlflow"].detail == (
        "host.docker.internal:5000 reachable from a pod in flts (TCP connect 0.02 s)")
    assert checks["connectivity minio"].status is Status.FAIL
    assert "host.docker.internal:9000 not reachable" in checks["connectivity minio"].detail
    assert "no answer within 5 s" in checks["connectivity minio"].detail
    assert "services.minio.external" in checks["connectivity minio"].fix
    # A name that does not resolve is a DNS matter, and the fix says so.
    assert "bad address" in checks["connectivity fastapi"].detail
    assert "cannot resolve gateway.example" in checks["connectivity fastapi"].fix
    assert "not tried" in checks["connectivity s3"].detail
    assert "--connectivity-timeout" in checks["connectivity s3"].detail


# --- the pod ---------------------------------------------------------------------------------


def test_the_pod_opts_out_is_restricted_and_bounded() -> None:
    pod = probe_pod("backend-injector-connectivity-1", "busybox:1.35", "echo", 45)
    assert pod["metadata"]["labels"]["backend-injector/inject"] == "false"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 45
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("volumes") and not spec.get("hostNetwork")
    # The "restricted" Pod Security Standard: non-root, no escalation, no capabilities,
    # a seccomp profile.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["image"] == "busybox:1.35" and container["command"] == ["sh", "-c", "echo"]
    assert container["terminationMessagePath"] == connectivity.TERMINATION_MESSAGE_PATH


# --- the probe against a cluster that plays the kubelet -------------------------------------


class KubeletCluster(MemoryCluster):
    """Pods as created; each read of one shows the next of `states` (the last one stays),
    and its log is what `log` makes of the pod."""

    def __init__(self, states: list[dict[str, Any]], log: Callable[[dict[str, Any]], str]
                 = lambda pod: "") -> None:
        super().__init__()
        self.states = states
        self.reads = 0
        self.make_log = log
        self.refuse_create: ClusterError | None = None
        self.refuse_reads: ClusterError | None = None

    def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
        if self.refuse_create is not None:
            raise self.refuse_create
        return super().create(path, body, dry_run=dry_run)

    def get(self, path: str) -> dict[str, Any] | None:
        found = super().get(path)
        if found is not None and "/pods/" in path:
            if self.refuse_reads is not None:
                raise self.refuse_reads
            found["status"] = self.states[min(self.reads, len(self.states) - 1)]
            self.reads += 1
        return found

    def get_text(self, path: str) -> str:
        self.calls.append(f"LOG {path}")
        pod_path = path.partition("/log?")[0]
        return self.make_log(self.objects[pod_path])

    def pods(self) -> list[str]:
        return [path for path in self.objects if "/pods/" in path]


class Clock:
    """Time that passes only when the probe sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def container(state: dict[str, Any], phase: str = "Running",
              **pod_status: Any) -> dict[str, Any]:
    return {"phase": phase, **pod_status,
            "containerStatuses": [{"name": connectivity.CONTAINER, "state": state}]}


PENDING = {"phase": "Pending", "conditions": [{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 Insufficient cpu."}]}
ENDED = container({"terminated": {"exitCode": 0, "reason": "Completed"}}, "Succeeded")
TARGETS = (Target("mlflow", "host.docker.internal", 5000),
           Target("fastapi", "host.docker.internal", 8000))


def probe(cluster: KubeletCluster, clock: Clock, *, timeout: int = 60,
          targets: tuple[Target, ...] = TARGETS) -> list[Any]:
    options = ConnectivityOptions(targets=targets, image="busybox:1.35", timeout_seconds=timeout)
    return list(ConnectivityProbe(cluster, "flts", options, clock=clock, sleep=clock.sleep,
                                  suffix=lambda: "test").run())


def shell_log(nc_directory: Path, tmp_path: Path) -> Callable[[dict[str, Any]], str]:
    """The log of the pod's own command, run here by a real shell with the nc stand-in."""
    def run(pod: dict[str, Any]) -> str:
        command = pod["spec"]["containers"][0]["command"]
        assert command[:2] == ["sh", "-c"]
        return run_script([SHELLS[0][0]], command[2], f"{nc_directory}:{os.environ['PATH']}",
                          tmp_path / "arguments")
    return run


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell to run the pod's script")
def test_a_pod_that_ran_gives_one_line_per_service_and_is_deleted_first(
    nc_directory: Path, listening: int, tmp_path: Path
) -> None:
    targets = (Target("mlflow", "127.0.0.1", listening), Target("fastapi", "127.0.0.1",
                                                                 closed_port()))
    cluster = KubeletCluster([PENDING, container({"running": {}}), ENDED],
                             shell_log(nc_directory, tmp_path))
    clock = Clock()
    checks = probe(cluster, clock, targets=targets)
    assert [(check.name, check.status) for check in checks] == [
        ("connectivity mlflow", Status.PASS), ("connectivity fastapi", Status.FAIL)]
    assert f"127.0.0.1:{listening} reachable from a pod in flts" in checks[0].detail
    pod_path = "/api/v1/namespaces/flts/pods/backend-injector-connectivity-test"
    assert cluster.calls[0] == "POST /api/v1/namespaces/flts/pods"
    assert f"LOG {pod_path}/log?container=connect" in cluster.calls
    assert cluster.calls[-1] == f"DELETE {pod_path}" and not cluster.pods()
    assert clock.sleeps == 2


def test_the_termination_message_is_read_first_and_the_log_only_without_one() -> None:
    lines = f"{MARKER} 0 0 1.00 1.01 \n{MARKER} 1 1 1.01 1.02 nc: refused\n{MARKER} done\n"
    with_message = container({"terminated": {"exitCode": 0, "message": lines}}, "Succeeded")

    def unreadable(pod: dict[str, Any]) -> str:
        # As on a cluster whose apiserver may not reach the kubelet.
        raise ClusterError("cannot read pods/log: 502 Bad Gateway")

    cluster = KubeletCluster([with_message], unreadable)
    checks = probe(cluster, Clock())
    assert [check.status for check in checks] == [Status.PASS, Status.FAIL]
    assert "(nc: refused)" in checks[1].detail
    assert not [call for call in cluster.calls if call.startswith("LOG")]

    neither = KubeletCluster([ENDED], unreadable)
    (check,) = probe(neither, Clock())
    assert check.status is Status.FAIL and "502 Bad Gateway" in check.detail
    assert "cannot be read: no termination message" in check.detail and not neither.pods()


def test_an_image_the_node_cannot_get_is_one_line_with_the_image_fix() -> None:
    cluster = KubeletCluster([container({"waiting": {
        "reason": "ErrImageNeverPull",
        "message": 'Container image "busybox:1.35" is not present with pull policy of Never'}},
        "Pending")])
    (check,) = probe(cluster, Clock())
    assert check.name == "connectivity" and check.status is Status.FAIL
    assert "could not start in flts: ErrImageNeverPull" in check.detail
    assert "--connectivity-image" in check.fix and "busybox:1.35" in check.fix
    assert not cluster.pods() and cluster.reads == 1


def test_a_pod_never_scheduled_is_given_up_at_the_timeout_and_deleted() -> None:
    cluster = KubeletCluster([PENDING])
    clock = Clock()
    (check,) = probe(cluster, clock, timeout=10)
    assert check.status is Status.FAIL
    assert "did not start within 10 s" in check.detail and "Insufficient cpu" in check.detail
    assert "kubectl -n flts get events" in check.fix
    assert clock.now == pytest.approx(10.0) and not cluster.pods()


def test_a_pod_out_of_time_midway_says_which_services_it_never_tried() -> None:
    def half_done(pod: dict[str, Any]) -> str:
        return f"{MARKER} 0 0 10.00 10.01 \n"

    cluster = KubeletCluster([container({"running": {}})], half_done)
    checks = probe(cluster, Clock(), timeout=10)
    assert [check.status for check in checks] == [Status.PASS, Status.FAIL]
    assert "not tried" in checks[1].detail and "ran out of time" in checks[1].detail
    assert not cluster.pods()


def test_the_kubelet_ending_the_pod_before_it_started_is_said() -> None:
    cluster = KubeletCluster([{"phase": "Failed", "reason": "OutOfcpu",
                               "message": "Node didn't have enough resource: cpu"}])
    (check,) = probe(cluster, Clock())
    assert "ended in flts before its container started (OutOfcpu" in check.detail
    assert not cluster.pods()


def test_a_refused_create_fails_with_the_reason_and_leaves_nothing() -> None:
    cluster = KubeletCluster([ENDED])
    cluster.refuse_create = ClusterError(
        'cannot create Pod backend-injector-connectivity-test: forbidden: pods "x" is '
        'forbidden: violates PodSecurity "restricted:latest"', "ask for the RBAC rights")
    (check,) = probe(cluster, Clock())
    assert check.status is Status.FAIL and "cannot run a pod in flts" in check.detail
    assert "PodSecurity" in check.detail
    assert not any(call.startswith("DELETE") for call in cluster.calls)


def test_the_pod_is_deleted_when_reading_it_fails_or_the_user_interrupts() -> None:
    cluster = KubeletCluster([PENDING])
    cluster.refuse_reads = ClusterError("cannot read pod: forbidden")
    (check,) = probe(cluster, Clock())
    assert "lost sight of the pod" in check.detail and not cluster.pods()

    interrupted = KubeletCluster([PENDING])
    clock = Clock()

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    clock.sleep = interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        probe(interrupted, clock)
    assert not interrupted.pods()


def test_no_external_service_needs_no_pod() -> None:
    cluster = KubeletCluster([ENDED])
    (check,) = probe(cluster, Clock(), targets=())
    assert check.status is Status.PASS and "nothing to connect to" in check.detail
    assert cluster.calls == []


# --- in doctor, and on the command line -----------------------------------------------------


class DoctorKubelet(KubeletCluster):
    """Enough of a cluster for doctor's other checks to pass by."""

    def create(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> Created:
        if dry_run:
            return Created(object=body)
        return super().create(path, body)


def test_doctor_runs_the_probe_last_and_only_when_asked() -> None:
    def all_reached(pod: dict[str, Any]) -> str:
        return f"{MARKER} 0 0 1.00 1.01 \n{MARKER} 1 0 1.01 1.02 \n{MARKER} done\n"

    cluster = DoctorKubelet([ENDED], all_reached)
    cluster.objects[namespace_path("flts")] = {"metadata": {"name": "flts"}}
    options = ConnectivityOptions(targets=TARGETS, image="busybox:1.35")
    names = [check.name for check in Doctor(cluster, namespace="flts",
                                            connectivity=options).run()]
    assert names[-2:] == ["connectivity mlflow", "connectivity fastapi"]
    assert not cluster.pods()
    cluster.calls.clear()
    names = [check.name for check in Doctor(cluster, namespace="flts").run()]
    assert not [name for name in names if name.startswith("connectivity")]
    assert not [call for call in cluster.calls if call.startswith("POST")]


def test_the_connectivity_flags_go_with_connectivity_and_are_bounded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["doctor", "--connectivity-image", "alpine", "--connectivity-timeout", "30"])
    assert exited.value.code == cli.USAGE_ERROR
    assert ("--connectivity-image, --connectivity-timeout go with --connectivity"
            in capsys.readouterr().err)
    for seconds in (str(connectivity.MIN_TIMEOUT_SECONDS - 1),
                    str(connectivity.MAX_TIMEOUT_SECONDS + 1), "soon"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["doctor", "--connectivity", "--connectivity-timeout", seconds])
        assert exited.value.code == cli.USAGE_ERROR
        assert "--connectivity-timeout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--help"])
    # The defaults the help states are the module's.
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {connectivity.DEFAULT_IMAGE}" in text
    assert (f"{connectivity.MIN_TIMEOUT_SECONDS} to {connectivity.MAX_TIMEOUT_SECONDS}; "
            f"default {connectivity.DEFAULT_TIMEOUT_SECONDS}") in text
