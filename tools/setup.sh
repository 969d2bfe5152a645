#!/usr/bin/env bash
# Prepare a machine for backend-injector: the Python environment in .venv and, with --all,
# what the whole test suite needs besides (Debian packages and the Kubernetes, etcd and helm
# binaries built from Go modules, cached under ~/.cache/backend-injector).
#
#   tools/setup.sh          .venv with the package and its test dependencies
#   tools/setup.sh --all    the above, plus the Debian packages of the e2e node (iproute2,
#                           iptables, the CNI plugins, libseccomp for runc) and the
#                           control-plane and node binaries
#
# Safe to run again: each step does nothing when its result is already there.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv" >&2
    "$python" -m venv .venv
fi
# The stamp holds the hash of pyproject.toml: dependencies are installed again when it changes.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -e $stamp ]]; then
    echo "setup: installing Python packages" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

if [[ ${1:-} == --all ]]; then
    # Debian packages, one install for all of them:
    # - iproute2: `ip netns` runs the webhook as a host of its own for the e2e suite;
    # - the e2e node: iptables (kube-proxy) and nftables (to delete the tables it leaves), the
    #   CNI bridge/host-local/loopback plugins, a C toolchain and libseccomp for runc (built
    #   with cgo), util-linux for unshare/nsenter;
    # - images without a registry (tests/e2e/harness/images.py): buildah builds the Dockerfile with no
    #   Docker engine; debootstrap makes the local base image; Debian's busybox (its shell finds
    #   /bin/nc on PATH, unlike busybox-static's, which always runs its own nc applet) goes into
    #   the busybox:1.35 stand-in, whose nc gcc compiles.
    packages=(iproute2 iptables nftables containernetworking-plugins gcc libc6-dev
        pkg-config libseccomp-dev util-linux buildah debootstrap busybox)
    missing=()
    for package in "${packages[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] ||
            missing+=("$package")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "setup: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    bash tools/build-binaries.sh
    # The external backend's MLflow + moto venv is cached by version, the images by the hash of
    # their inputs (a cold build takes minutes; warm, these are a few file reads).
    .venv/bin/python -m tests.e2e.harness.backend prepare >/dev/null
    .venv/bin/python -m tests.e2e.harness.images build >/dev/null
fi
