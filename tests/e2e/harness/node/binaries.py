"""The node's binaries, as ``tools/build-binaries.sh`` cached them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..controlplane import built_paths
from ..node_host import NodeError


@dataclass(frozen=True)
class NodeBinaries:
    """Absolute paths of the cached node binaries (see tools/build-binaries.sh)."""

    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim_runc_v2: Path
    ctr: Path
    runc: Path
    coredns: Path
    pause: Path
    # Not part of the node: the program of the node smoke tests' image.
    probe: Path

    @classmethod
    def from_cache(cls) -> NodeBinaries:
        """Read the paths from the build script; the build itself ran at collection."""
        paths = built_paths()
        binaries = cls(
            **{field: Path(paths[field.replace("_", "-")]).resolve() for field in cls.fields()}
        )
        for path in vars(binaries).values():
            if not os.access(path, os.X_OK):
                raise NodeError(f"{path} is missing after the build")
        return binaries

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)
