"""The machine-level parts of the e2e node: commands, sysctls, iptables and nftables, cgroups,
and the TCP forwarder that puts the loopback apiserver behind a pod-reachable address. The
``node`` package composes them; the node tests read the machine's state with them.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .controlplane import ControlPlaneError
from .processes import die_with_parent_prefix as die_with_parent_prefix


class NodeError(ControlPlaneError):
    """The node could not be built, started or reached."""


def run(argv: Sequence[str | os.PathLike[str]], *, check: bool = True) -> str:
    result = subprocess.run(
        [os.fspath(arg) for arg in argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        command = " ".join(os.fspath(arg) for arg in argv)
        raise NodeError(f"{command}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def read_sysctl(name: str) -> str:
    return (Path("/proc/sys") / name).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    (Path("/proc/sys") / name).write_text(value + "\n")


# --- iptables -------------------------------------------------------------------------------

IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle", "raw")


def iptables_chains() -> set[tuple[str, str, str]]:
    """Every (command, table, chain) of the machine's IPv4 and IPv6 rule sets."""
    chains: set[tuple[str, str, str]] = set()
    for command in IPTABLES:
        table = ""
        for line in run([f"{command}-save"], check=False).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chains.add((command, table, line[1:].split()[0]))
    return chains


def remove_chains(created: set[tuple[str, str, str]]) -> None:
    """Delete the given chains and every rule that jumps to them."""
    for command in IPTABLES:
        for table in TABLES:
            doomed = {chain for cmd, tbl, chain in created if (cmd, tbl) == (command, table)}
            if not doomed:
                continue
            rules = run([command, "-w", "-t", table, "-S"], check=False).splitlines()
            for rule in rules:
                # Comments are quoted and contain spaces.
                words = shlex.split(rule)
                if words[:1] != ["-A"] or words[1] in doomed:
                    continue
                if any(word in doomed for word in words[2:]):
                    run([command, "-w", "-t", table, "-D", *words[1:]], check=False)
            for chain in doomed:
                run([command, "-w", "-t", table, "-F", chain], check=False)
            for chain in doomed:
                run([command, "-w", "-t", table, "-X", chain], check=False)


def nft_tables() -> set[tuple[str, str]]:
    """Every (family, name) nftables table; iptables (nft backend) creates them on first use."""
    tables = set()
    for line in run(["nft", "list", "tables"], check=False).splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table":
            tables.add((words[1], words[2]))
    return tables


# Tables that iptables' nft backend and kube-proxy create when they are first used.
NFT_TABLES = ("filter", "nat", "mangle", "raw", "kube-proxy")


def remove_tables(created: set[tuple[str, str]]) -> None:
    """Delete the given tables of NFT_TABLES (after their chains were removed)."""
    for family, name in sorted(created):
        if name in NFT_TABLES:
            run(["nft", "delete", "table", family, name], check=False)


# --- cgroups --------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones and the unified one)."""
    hierarchies = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2"):
            hierarchies.append(Path(fields[1]))
    return hierarchies


def _cgroup_dirs(root: Path) -> list[Path]:
    """``root`` and every cgroup below it, deepest first; cgroups may vanish meanwhile."""
    found = [Path(top) for top, _, _ in os.walk(root, onerror=lambda error: None)]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def remove_cgroup_tree(root: Path) -> None:
    for directory in _cgroup_dirs(root):
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)  # a killed task is leaving the cgroup


def cgroup_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    for directory in _cgroup_dirs(root):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
    return pids


# --- the apiserver forwarder ----------------------------------------------------------------


class TcpForwarder:
    """Accepts on ``listen`` and relays each connection to ``target`` (bytes unchanged).

    Pods reach the apiserver through the ``kubernetes`` Service, but the apiserver listens
    only on loopback, which a DNAT from a pod cannot reach; TLS passes through untouched.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen, reuse_port=False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with client, upstream, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=1):
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return
