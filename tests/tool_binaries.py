"""Where the tests find helm and kubectl: the variable HELM or KUBECTL, the PATH, or the build
cache that tools/build-binaries.sh fills."""

from __future__ import annotations

import glob
import os
import shutil


def find_helm() -> str | None:
    candidates = [os.environ.get("HELM"), shutil.which("helm")]
    # Built from the helm Go module by tools/build-binaries.sh.
    candidates += sorted(glob.glob(os.path.expanduser("~/.cache/backend-injector/bin/helm-*/helm")))
    return next((candidate for candidate in candidates if candidate), None)


def find_kubectl() -> str | None:
    candidates = [os.environ.get("KUBECTL"), shutil.which("kubectl")]
    # Built from the Kubernetes Go modules by tools/build-binaries.sh.
    candidates += sorted(
        glob.glob(os.path.expanduser("~/.cache/backend-injector/bin/kubectl-*/kubectl"))
    )
    return next((candidate for candidate in candidates if candidate), None)
