"""The webhook's test host: a network namespace of the test's own, and servers running in it.

The kube-apiserver reaches a Service-referenced webhook at an address of the Service's
EndpointSlice (``--enable-aggregator-routing``), and an endpoint address may not be loopback.
So the webhook runs the way a pod would, behind an address of its own: a network namespace
created here, joined to the host by a veth pair on one private /30 (host side ``.1``,
namespace side ``.2``). Nothing else on the machine uses that /30 (checked before it is
taken), and every packet the tests send goes either to 127.0.0.1 or into this namespace.

Also here:

* ``SecretVolume``: a directory laid out like a mounted Secret (files behind a ``..data``
  symlink swapped in one rename), so that certificate rotation reaches the running webhook
  the way the kubelet delivers it;
* ``ServerProcess``: a process in the namespace, killed with its parent, logging to a file;
* a tiny second mutating webhook (``python -m tests.e2e.harness.webhook_host add-container ...``)
  that adds a container to pods, to make the apiserver reinvoke backend-injector.

Requires root (CAP_NET_ADMIN) and iproute2; nothing here is skipped when they are missing:
``NetworkNamespace.create`` raises with the reason.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .host_lock import NETWORK_NAMESPACE, lock_host
from .processes import die_with_parent_prefix

# A private /30 nothing else uses (NetworkNamespace.create checks that before taking it).
SUBNET = ipaddress.IPv4Network("10.213.77.0/30")
HOST_ADDRESS = "10.213.77.1"
NAMESPACE_ADDRESS = "10.213.77.2"
# Fixed names, so that a session killed with SIGKILL leaves something the next one can find
# and remove. Interface names are limited to 15 characters.
NETNS_NAME = "bi-e2e-webhook"
HOST_INTERFACE = "bi-e2e-host"
NAMESPACE_INTERFACE = "bi-e2e-ns"
# umount2(2) flag: detach the mount now, even if busy (linux/mount.h).
MNT_DETACH = 2

ADDED_CONTAINER = "added-later"


class HostError(RuntimeError):
    """The test host (network namespace, veth, process) could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip")
    if ip is None:
        raise HostError("iproute2 (`ip`) is not installed")
    result = subprocess.run(
        [ip, *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise HostError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class NetworkNamespace:
    """A network namespace joined to the host by a veth pair on ``SUBNET``.

    The names and the /30 are fixed, so two test sessions on one machine would fight over
    them: ``create`` takes an exclusive lock first (waiting for the other session's module to
    finish) and ``delete`` gives it back. Whatever carries our names while we hold the lock
    was left by a session that died (the kernel released its lock) and is removed.
    """

    name = NETNS_NAME
    host_interface = HOST_INTERFACE
    namespace_interface = NAMESPACE_INTERFACE
    host_address = HOST_ADDRESS
    address = NAMESPACE_ADDRESS

    def __init__(self, lock: int | None = None) -> None:
        self._lock = lock

    @classmethod
    def create(cls, lock_timeout: float = 600.0) -> NetworkNamespace:
        """Lock, remove what a killed session left, check the /30 is free, build the link."""
        if os.geteuid() != 0:
            raise HostError("network namespaces need root (run the e2e tests as root)")
        netns = cls(lock_host(lock_timeout, NETWORK_NAMESPACE, error=HostError))
        try:
            netns._remove_links()
            _check_subnet_is_free()
            _ip("netns", "add", netns.name)
            _ip("link", "add", netns.host_interface, "type", "veth",
                "peer", "name", netns.namespace_interface, "netns", netns.name)
            _ip("addr", "add", f"{netns.host_address}/{SUBNET.prefixlen}",
                "dev", netns.host_interface)
            _ip("link", "set", netns.host_interface, "up")
            _ip("-n", netns.name, "addr", "add", f"{netns.address}/{SUBNET.prefixlen}",
                "dev", netns.namespace_interface)
            _ip("-n", netns.name, "link", "set", netns.namespace_interface, "up")
            _ip("-n", netns.name, "link", "set", "lo", "up")
        except BaseException:
            netns.delete()
            raise
        return netns

    def delete(self) -> None:
        """Delete the namespace and the veth pair, then release the lock."""
        try:
            self._remove_links()
            _remove_netns_directory_if_empty()
        finally:
            if self._lock is not None:
                os.close(self._lock)  # closing the descriptor releases the flock
                self._lock = None

    def _remove_links(self) -> None:
        _ip("netns", "delete", self.name, check=False)
        # Deleting the namespace destroys its end of the pair, and with it the host end, but
        # the kernel does so asynchronously; a leftover host end would keep the /30 routed.
        deadline = time.monotonic() + 5
        while _ip("link", "show", self.host_interface, check=False).returncode == 0:
            if time.monotonic() > deadline:
                _ip("link", "delete", self.host_interface, check=False)
                break
            time.sleep(0.05)

    def exec_prefix(self) -> list[str]:
        ip = shutil.which("ip") or "ip"
        return [ip, "netns", "exec", self.name]


def _remove_netns_directory_if_empty() -> None:
    """Remove ``/run/netns`` once our namespace is gone and no other is left in it.

    ``ip netns add`` creates the directory and mounts it on itself; left behind, it is a
    mount and a directory that a machine which never ran these tests does not have. Called
    with the host lock held, which every namespace of these tests is made under. The mount
    is undone with the system call itself: umount(8) would write /run/mount/utab.
    """
    directory = Path("/run/netns")
    try:
        if not directory.is_dir() or any(directory.iterdir()):
            return
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(str(directory).encode(), MNT_DETACH)  # EINVAL when not a mount: fine
    with contextlib.suppress(OSError):
        directory.rmdir()


def _check_subnet_is_free() -> None:
    addresses = json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]")
    for link in addresses:
        for info in link.get("addr_info", []):
            network = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
            if network.overlaps(SUBNET):
                raise HostError(f"{SUBNET} is already used on {link.get('ifname')}: {network}")
    for route in json.loads(_ip("-j", "-4", "route", "show").stdout or "[]"):
        destination = route.get("dst", "default")
        if destination != "default" and ipaddress.IPv4Network(destination).overlaps(SUBNET):
            raise HostError(f"{SUBNET} is already routed: {route}")


class SecretVolume:
    """A directory laid out like a mounted Secret: ``name -> ..data/name``, ``..data -> ..vN``.

    ``publish`` writes a new version directory and swaps ``..data`` with one rename, as the
    kubelet's atomic writer does, so a reader never sees half a rotation.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._version = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def publish(self, files: Mapping[str, bytes]) -> None:
        self._version += 1
        version = self.root / f"..v{self._version}"
        version.mkdir(mode=0o700)
        for name, content in files.items():
            target = version / name
            target.write_bytes(content)
            target.chmod(0o600)
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        swap = self.root / "..data_tmp"
        swap.symlink_to(version.name)
        swap.replace(self.root / "..data")


class ServerProcess:
    """A long-running process in the network namespace, logging to one file.

    The log is opened for appending, so it keeps every run of the process (stop, restart).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: NetworkNamespace,
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.netns = netns
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until it answers TLS on its port (or fail with its log)."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [*die_with_parent_prefix(), *self.netns.exec_prefix(), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Its own process group, so that stop() signals exactly this server.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers_tls():
            if self._popen.poll() is not None:
                raise HostError(f"{self.name} exited with {self._popen.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise HostError(f"{self.name} did not answer within {timeout}s\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        popen, self._popen = self._popen, None
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=grace)

    def signal(self, sig: int) -> None:
        """Send `sig` to the process (e.g. SIGSTOP to make it hang without closing)."""
        if self._popen is not None and self._popen.poll() is None:
            os.killpg(self._popen.pid, sig)

    def _answers_tls(self) -> bool:
        # Only that the listener is up and speaks TLS; which CA it chains to is the
        # apiserver's business, and the tests check that through the apiserver.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((self.netns.address, self.port), timeout=1) as raw, \
                    context.wrap_socket(raw):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"==> {self.log_path} <==\n" + "\n".join(text)

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines of the log (the webhook logs one JSON object a line)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


# --- the second webhook, for reinvocation -------------------------------------------------


class _AddContainerHandler(BaseHTTPRequestHandler):
    """Adds container ``added-later`` (no env) to a pod that lacks it; logs every request."""

    protocol_version = "HTTP/1.1"
    log_lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        length = int(self.headers.get("Content-Length") or 0)
        review = json.loads(self.rfile.read(length))
        request = review["request"]
        pod = request.get("object") or {}
        containers = (pod.get("spec") or {}).get("containers") or []
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if all(container.get("name") != ADDED_CONTAINER for container in containers):
            patch = [{
                "op": "add",
                "path": "/spec/containers/-",
                "value": {"name": ADDED_CONTAINER, "image": "example.invalid/added-later:1"},
            }]
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        # The request is logged (stdout, the process's log file) as the apiserver sent it, so
        # the tests can see what really arrives; managedFields only make the lines unreadable.
        logged = {**request, "object": {**pod, "metadata": {
            key: value for key, value in (pod.get("metadata") or {}).items()
            if key != "managedFields"}}}
        with self.log_lock:
            print(json.dumps({"message": "review", "request": logged}), flush=True)
        body = json.dumps(
            {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass  # one JSON line per review is written above; no access log


def run_container_adder(*, host: str, port: int, cert: Path, key: Path) -> None:
    server = ThreadingHTTPServer((host, port), _AddContainerHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.harness.webhook_host")
    commands = parser.add_subparsers(dest="command", required=True)
    adder = commands.add_parser("add-container", help="serve the container-adding webhook")
    adder.add_argument("--host", required=True)
    adder.add_argument("--port", type=int, required=True)
    adder.add_argument("--tls-cert", type=Path, required=True)
    adder.add_argument("--tls-key", type=Path, required=True)
    args = parser.parse_args(argv)
    run_container_adder(host=args.host, port=args.port, cert=args.tls_cert, key=args.tls_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
