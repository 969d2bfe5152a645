"""The node's container runtime: containerd with runc, its configuration, ``ctr``, and images.

Everything containerd writes goes under the node's own directory: its root and state, its
sockets, runc's state, the registry hosts, and the managed ``opt`` directory (which
defaults to ``/opt/containerd``, created at containerd's first start). What it writes to
fixed host paths anyway (shim sockets and fifos under ``/run/containerd``, libcni's cache
under ``/var/lib/cni``) lands in the node's mount namespace, over directories of its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .. import oci
from ..node_host import run
from .binaries import NodeBinaries
from .mount_namespace import MountNamespace
from .names import CNI_BIN_DIR, K8S_NAMESPACE, PAUSE_IMAGE
from .supervisor import Supervisor

# containerd's ids of the plugins configured here (containerd v2, config version 3).
CRI_RUNTIME = "plugins.'io.containerd.cri.v1.runtime'"
CRI_IMAGES = "plugins.'io.containerd.cri.v1.images'"
# The managed /opt directory: containerd creates <path>/bin and <path>/lib at start.
OPT = "plugins.'io.containerd.internal.v1.opt'"
# Image verifier plugins are looked for in <bin_dir> (default /opt/containerd/image-verifier/bin).
IMAGE_VERIFIER = "plugins.'io.containerd.image-verifier.v1.bindir'"


class ContainerRuntime:
    """containerd (and runc through its shim) in the node's mount namespace."""

    def __init__(
        self,
        binaries: NodeBinaries,
        directory: Path,
        namespace: MountNamespace,
        supervisor: Supervisor,
    ) -> None:
        self.binaries = binaries
        self.directory = directory
        self.socket = directory / "containerd.sock"
        self.pause_image = f"{PAUSE_IMAGE}:{binaries.pause.parent.name.removeprefix('pause-')}"
        self._namespace = namespace
        self._supervisor = supervisor

    def start(self, cni_conf_dir: Path) -> None:
        """Write the configuration and start containerd (not waiting for it)."""
        self.directory.mkdir()
        # No registry is reachable: every pull goes to a closed local port and fails at
        # once, instead of waiting for a DNS or connect timeout.
        hosts_dir = self.directory / "certs.d" / "_default"
        hosts_dir.mkdir(parents=True)
        (hosts_dir / "hosts.toml").write_text('server = "http://127.0.0.1:9"\n')
        config_path = self.directory / "config.toml"
        config_path.write_text(self.config(cni_conf_dir))
        # containerd finds its shim on PATH (and the shim finds runc there when a container
        # is not started through the CRI, as with `ctr run`).
        path = os.pathsep.join(
            [
                str(self.binaries.containerd_shim_runc_v2.parent),
                str(self.binaries.runc.parent),
                os.environ.get("PATH", ""),
            ]
        )
        self._supervisor.spawn(
            "containerd",
            [self.binaries.containerd, f"--config={config_path}"],
            prefix=self._namespace.prefix(),
            env={**os.environ, "PATH": path},
        )

    def config(self, cni_conf_dir: Path) -> str:
        """containerd's config.toml: every directory it writes is one of the node's own."""
        directory = self.directory
        return f"""\
version = 3
root = "{directory / "root"}"
state = "{directory / "state"}"

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{directory / "containerd.sock.ttrpc"}"

[debug]
  level = "info"

[{OPT}]
  path = "{directory / "opt"}"

[{IMAGE_VERIFIER}]
  bin_dir = "{directory / "opt" / "image-verifier" / "bin"}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"

# NRI would create its socket directory under /run on the host's side.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[{CRI_IMAGES}]
  snapshotter = "overlayfs"

[{CRI_IMAGES}.pinned_images]
  sandbox = "{self.pause_image}"

[{CRI_IMAGES}.registry]
  config_path = "{directory / "certs.d"}"

[{CRI_RUNTIME}]
  # root lacks CAP_SYS_RESOURCE here: a negative oom_score_adj would fail every container.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{CRI_RUNTIME}.containerd]
  default_runtime_name = "runc"

[{CRI_RUNTIME}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{CRI_RUNTIME}.containerd.runtimes.runc.options]
  BinaryName = "{self.binaries.runc}"
  Root = "{directory / "runc"}"
  SystemdCgroup = false

[{CRI_RUNTIME}.cni]
  bin_dirs = ["{CNI_BIN_DIR}"]
  conf_dir = "{cni_conf_dir}"
"""

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        return bool(
            subprocess.run(
                [self.binaries.ctr, f"--address={self.socket}", "version"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    def ctr(self, *args: str | os.PathLike[str], check: bool = True) -> str:
        """Run ctr against this containerd, in the Kubernetes namespace.

        It runs in the node's mount namespace, where containerd's host paths (its fifo and
        shim directories under /run/containerd) are the node's own.
        """
        return run(
            [
                *self._namespace.prefix(),
                self.binaries.ctr,
                f"--address={self.socket}",
                f"--namespace={K8S_NAMESPACE}",
                *args,
            ],
            check=check,
        )

    def import_image(self, archive: Path) -> None:
        """Import an OCI image archive; its ``io.containerd.image.name`` is the image name."""
        self.ctr("images", "import", "--local", archive)

    def import_pause_image(self, work_dir: Path) -> None:
        """The sandbox image, made from the cached pause program (no registry to pull it from)."""
        archive = work_dir / "pause.tar"
        oci.write_image_archive(
            archive,
            name=self.pause_image,
            entries={"/pause": oci.File(self.binaries.pause.read_bytes(), 0o755)},
            entrypoint=["/pause"],
            user="65535:65535",
        )
        self.import_image(archive)
