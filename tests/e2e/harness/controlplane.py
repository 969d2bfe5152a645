"""A throw-away Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager).

The binaries are real upstream builds made by ``tools/build-binaries.sh`` from published Go
modules. There is no kubelet and no scheduler: pods are admitted and stored but stay Pending,
which is all the webhook tests need, since they only inspect admitted pod specs.

Everything listens on 127.0.0.1 at ports picked at start-up, lives in one temporary directory
(certificates, kubeconfigs, etcd data, one log file per process) and is torn down by
:meth:`ControlPlane.stop`, which also runs at interpreter exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# KeyPair, write_kubeconfig and wait_while_running are made in pki.py and processes.py (the
# "as" re-exports them): the node and the tests have always imported them from here.
from .pki import CertificateAuthority, private_key_pem, write_file
from .pki import KeyPair as KeyPair
from .pki import write_kubeconfig as write_kubeconfig
from .processes import ManagedProcess, die_with_parent_prefix, terminate
from .processes import wait_while_running as wait_while_running

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "tools" / "build-binaries.sh"

# Cluster-internal ranges. Nothing is ever routed to them (there is no kube-proxy); the
# apiserver only allocates Service IPs from the range and puts its first IP in its cert.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers that only make sense with nodes, cloud providers or volumes; leaving them out
# keeps the controller-manager log readable. Everything the tests rely on (Deployment,
# ReplicaSet, Job, namespace, garbage collector, service-account and token controllers)
# stays on through the "*".
DISABLED_CONTROLLERS = (
    "node-ipam-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "device-taint-eviction-controller",
    "persistentvolume-attach-detach-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "selinux-warning-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the cached upstream binaries."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path


def built_paths() -> dict[str, str]:
    """Each binary's name and path in the cache, as the build script prints them."""
    listing = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-paths"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in listing.splitlines() if "=" in line)


def build_binaries(*, stream: IO[str] | None = None) -> Binaries:
    """Build whatever binary is missing from the cache, then return all their paths.

    On a warm machine the script only checks that the cached files exist. Its progress goes
    to ``stream`` (the parent's stderr when None) so that a cold, half-hour build is visible.
    """
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        stdout=stream,
        stderr=subprocess.STDOUT if stream is not None else None,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    paths = built_paths()
    binaries = Binaries(
        etcd=Path(paths["etcd"]),
        kube_apiserver=Path(paths["kube-apiserver"]),
        kube_controller_manager=Path(paths["kube-controller-manager"]),
        kubectl=Path(paths["kubectl"]),
        helm=Path(paths["helm"]),
    )
    for path in vars(binaries).values():
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"{path} is missing after the build")
    return binaries


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    There is a short window before the child binds it, which is acceptable for a test host
    and much simpler than passing sockets to Go programs.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- processes ------------------------------------------------------------------------------


DIR_PREFIX = "backend-injector-e2e-"
OWNER_FILE = "owner.pid"


def _remove_stale_dirs() -> None:
    """Delete temp dirs left by test processes that were SIGKILLed (so never cleaned up).

    Their children died with them (see processes.die_with_parent_prefix); a dir whose owner still
    runs belongs to a concurrent session and is left alone.
    """
    for directory in Path(tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except PermissionError:
            continue


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. After start:
    ``kubeconfig`` is an admin (system:masters) kubeconfig, ``server_url`` the apiserver's
    URL, ``log_dir`` holds ``<process>.log`` files, and :meth:`kubectl` / :meth:`helm` run the
    matching clients against this cluster.
    """

    def __init__(self, binaries: Binaries, *, keep_dir: bool = False) -> None:
        self.binaries = binaries
        self.keep_dir = keep_dir
        _remove_stale_dirs()
        self.base_dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        (self.base_dir / OWNER_FILE).write_text(str(os.getpid()))
        self.cert_dir = self.base_dir / "pki"
        self.log_dir = self.base_dir / "logs"
        self.etcd_dir = self.base_dir / "etcd"
        self.helm_home = self.base_dir / "helm"
        for directory in (self.cert_dir, self.log_dir, self.helm_home):
            directory.mkdir(mode=0o700)
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.controller_manager_port = free_port()
        self.server_url = f"https://127.0.0.1:{self.apiserver_port}"
        self.kubeconfig = self.cert_dir / "admin.kubeconfig"
        self._processes: list[ManagedProcess] = []
        self._stopped = False
        self._previous_sigterm: Callable[[int, FrameType | None], Any] | int | None = None

    # The public names the e2e fixtures expose.
    @property
    def kubectl_path(self) -> Path:
        return self.binaries.kubectl

    @property
    def helm_path(self) -> Path:
        return self.binaries.helm

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        """Start all three processes and wait until the cluster can admit pods."""
        atexit.register(self.stop)
        self._install_sigterm_handler()
        try:
            self._write_pki()
            deadline = time.monotonic() + timeout
            self._start_etcd()
            self._wait(deadline, "etcd", self._etcd_healthy)
            self._start_apiserver()
            self._wait(deadline, "kube-apiserver /readyz", self._apiserver_ready)
            self._start_controller_manager()
            # The ServiceAccount admission plugin rejects pods until the namespace's
            # "default" ServiceAccount exists, and the controller-manager creates it.
            self._wait(deadline, "the default ServiceAccount", self._default_sa_exists)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate every process (SIGTERM, then SIGKILL) and remove the temp dir."""
        if self._stopped:
            return
        self._stopped = True
        # Reverse start order: the controller-manager and apiserver shut down cleanly only
        # while etcd is still there.
        for process in reversed(self._processes):
            terminate(process)
        self._processes.clear()
        if not self.keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        atexit.unregister(self.stop)
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):  # not on the main thread any more
                signal.signal(signal.SIGTERM, self._previous_sigterm)

    def _install_sigterm_handler(self) -> None:
        # A plain SIGTERM would kill Python without running fixture finalizers or atexit.
        # Turning it into KeyboardInterrupt makes pytest stop the session as on Ctrl-C and
        # tear down (SystemExit would merely fail the current test and go on). Only when
        # nobody else handles SIGTERM, and only from the main thread (signal's rule).
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:

                def on_sigterm(signum: int, frame: FrameType | None) -> None:
                    raise KeyboardInterrupt(f"signal {signum}")

                self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _spawn(self, name: str, argv: Sequence[str | os.PathLike[str]]) -> None:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [*die_with_parent_prefix(), *(os.fspath(arg) for arg in argv)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                # Own process group, so that stop() signals exactly this child and a
                # Ctrl-C in the terminal reaches pytest first (which then tears down).
                start_new_session=True,
            )
        self._processes.append(ManagedProcess(name, popen, log_path))

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        wait_while_running(self._processes, deadline, what, ready,
                           error=ControlPlaneError, logs=self.tail_logs)

    # --- configuration --------------------------------------------------------------------

    def _write_pki(self) -> None:
        ca = CertificateAuthority()
        # Kept for components added later (the node's kubelet, scheduler and proxy).
        self.ca = ca
        self.ca_path = write_file(self.cert_dir / "ca.crt", ca.cert_pem)
        serving = ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", KUBERNETES_SERVICE_IP),
        )
        self.serving_cert = write_file(self.cert_dir / "apiserver.crt", serving.cert_pem)
        self.serving_key = write_file(
            self.cert_dir / "apiserver.key", serving.key_pem, private=True
        )

        # Service-account tokens are signed with an RSA key: RS256 is what every consumer of
        # those tokens is guaranteed to verify.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key_path = write_file(
            self.cert_dir / "sa.key", private_key_pem(sa_key), private=True
        )
        self.sa_pub_path = write_file(
            self.cert_dir / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

        admin = ca.issue("backend-injector-e2e-admin", organization="system:masters")
        self.admin_cert_path = write_file(self.cert_dir / "admin.crt", admin.cert_pem)
        self.admin_key_path = write_file(self.cert_dir / "admin.key", admin.key_pem, private=True)
        write_kubeconfig(
            self.kubeconfig,
            server=self.server_url,
            ca_pem=ca.cert_pem,
            client=admin,
            user="admin",
        )
        # The controller-manager authenticates as the user the bootstrap RBAC policy
        # expects; each controller then uses its own ServiceAccount's token.
        kcm = ca.issue("system:kube-controller-manager")
        self.kcm_kubeconfig = write_kubeconfig(
            self.cert_dir / "controller-manager.kubeconfig",
            server=self.server_url,
            ca_pem=ca.cert_pem,
            client=kcm,
            user="system:kube-controller-manager",
        )
        # The aggregation layer's front proxy: its CA lands in the extension-apiserver-
        # authentication ConfigMap, which the controller-manager's delegated authn reads
        # (and complains about every few seconds when it is missing).
        front_proxy_ca = CertificateAuthority()
        self.front_proxy_ca_path = write_file(
            self.cert_dir / "front-proxy-ca.crt", front_proxy_ca.cert_pem
        )
        proxy_client = front_proxy_ca.issue("front-proxy-client")
        self.proxy_client_cert = write_file(
            self.cert_dir / "front-proxy-client.crt", proxy_client.cert_pem
        )
        self.proxy_client_key = write_file(
            self.cert_dir / "front-proxy-client.key", proxy_client.key_pem, private=True
        )
        # Client certificates for the kubelets and CSRs that never come: the CSR signer
        # controller refuses to start without a signing pair, so hand it the CA.
        self.ca_key_path = write_file(self.cert_dir / "ca.key", ca.key_pem, private=True)

    def _start_etcd(self) -> None:
        client_url = f"http://127.0.0.1:{self.etcd_client_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                self.binaries.etcd,
                "--name=e2e",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                # Test data is thrown away, so durability buys nothing but slowness.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        self._spawn(
            "kube-apiserver",
            [self.binaries.kube_apiserver, *self.apiserver_flags()],
        )

    def apiserver_flags(self) -> list[str]:
        """The kube-apiserver command line (without the binary), for logs and reports."""
        return [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_client_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The default lease reconciler publishes the advertise address as the endpoint
            # of the "kubernetes" Service and refuses to start with a loopback one; nothing
            # here dials that Service (no pods run), so it is simply left without endpoints.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={self.serving_cert}",
            f"--tls-private-key-file={self.serving_key}",
            f"--client-ca-file={self.ca_path}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self.sa_pub_path}",
            f"--service-account-signing-key-file={self.sa_key_path}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # Dial Service-referenced webhooks at their EndpointSlice addresses instead of
            # the ClusterIP, since no kube-proxy exists to route ClusterIPs.
            "--enable-aggregator-routing=true",
            "--runtime-config=api/all=true",
            f"--requestheader-client-ca-file={self.front_proxy_ca_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.proxy_client_cert}",
            f"--proxy-client-key-file={self.proxy_client_key}",
            "--allow-privileged=true",
            "--profiling=false",
        ]

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                self.binaries.kube_controller_manager,
                f"--kubeconfig={self.kcm_kubeconfig}",
                f"--authentication-kubeconfig={self.kcm_kubeconfig}",
                f"--authorization-kubeconfig={self.kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--service-account-private-key-file={self.sa_key_path}",
                f"--root-ca-file={self.ca_path}",
                f"--cluster-signing-cert-file={self.ca_path}",
                f"--cluster-signing-key-file={self.ca_key_path}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--controllers=*," + ",".join(f"-{name}" for name in DISABLED_CONTROLLERS),
                # A single instance: skip the lease dance that delays the first sync.
                "--leader-elect=false",
            ],
        )

    # --- readiness probes -----------------------------------------------------------------

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.etcd_client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def admin_ssl_context(self) -> ssl.SSLContext:
        """The apiserver's CA and the admin's client certificate, as kubectl uses them."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(self.admin_cert_path), str(self.admin_key_path))
        return context

    def api_get(self, path: str) -> Any:
        """GET an API path as the admin user and return the decoded JSON."""
        request = urllib.request.Request(self.server_url + path)
        with urllib.request.urlopen(
            request, timeout=10, context=self.admin_ssl_context()
        ) as response:
            return json.load(response)

    def _apiserver_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                self.server_url + "/readyz", timeout=5, context=self.admin_ssl_context()
            ) as response:
                return bool(response.status == 200)
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False

    def _default_sa_exists(self) -> bool:
        try:
            self.api_get("/api/v1/namespaces/default/serviceaccounts/default")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    # --- clients --------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl as admin; never raises on a non-zero exit."""
        return subprocess.run(
            [os.fspath(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def helm(
        self, *args: str, input: str | None = None, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm as admin with its cache/config/data kept inside this control plane's dir."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.helm_home / "cache"),
            "HELM_CONFIG_HOME": str(self.helm_home / "config"),
            "HELM_DATA_HOME": str(self.helm_home / "data"),
        }
        return subprocess.run(
            [os.fspath(self.binaries.helm), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    # --- diagnostics ----------------------------------------------------------------------

    def tail_logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of every process log, for failure reports."""
        sections = []
        for log_path in sorted(self.log_dir.glob("*.log")):
            with contextlib.suppress(OSError):
                text = log_path.read_text(errors="replace").splitlines()[-lines:]
                sections.append(f"==> {log_path} <==\n" + "\n".join(text))
        return "\n\n".join(sections)


@contextlib.contextmanager
def running_control_plane(binaries: Binaries, *, keep_dir: bool = False) -> Iterator[ControlPlane]:
    """Start a control plane for the duration of a ``with`` block."""
    plane = ControlPlane(binaries, keep_dir=keep_dir)
    with plane:
        yield plane
