#!/usr/bin/env bash
# Prepare a machine for backend-injector: a Python environment in .venv with the package
# installed in editable mode and, as asked, what the test suite needs besides.
#
#   tools/setup.sh          .venv with the package and what running it needs, nothing more
#   tools/setup.sh --test   the above, plus the `test` extra (pytest, mypy, ruff, build, ...)
#   tools/setup.sh --all    the above, plus the Debian packages of the e2e node (iproute2,
#                           iptables, the CNI plugins, libseccomp for runc), the control-plane
#                           and node binaries built from Go modules, cached under
#                           ~/.cache/backend-injector, and the e2e images
#
# PYTHON chooses the interpreter that makes .venv (default python3; 3.11 or later). A .venv
# that cannot be used (no bin/python or one that does not run, made by a Python older than
# 3.11, or by another version than the PYTHON given) is made again, and the script says why.
#
# Safe to run again: each step does nothing when its result is already there. It never
# uninstalls: after --test, a plain run leaves the test tools in place.
set -euo pipefail

usage="usage: tools/setup.sh [--test | --all]"
case $# in
    0) mode=run ;;
    1) case $1 in
           --test) mode=test ;;
           --all) mode=all ;;
           -h | --help) echo "$usage"; exit 0 ;;
           *) echo "setup: unknown argument '$1' ($usage)" >&2; exit 2 ;;
       esac ;;
    *) echo "setup: one argument at most ($usage)" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# python_version PROGRAM: its major.minor, or nothing when it does not run as a Python. The
# snippet is valid in every Python, old ones included, so that they can be named.
python_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

# supported VERSION: whether a major.minor is 3.11 or later (pyproject.toml's requires-python).
supported() {
    [[ $1 =~ ^([0-9]+)\.([0-9]+)$ ]] &&
        (( BASH_REMATCH[1] > 3 || (BASH_REMATCH[1] == 3 && BASH_REMATCH[2] >= 11) ))
}

# First of all, so that a wrong interpreter fails in one line before anything is written.
python=${PYTHON:-python3}
needs="setup: backend-injector needs Python 3.11 or later"
choose="choose another with PYTHON=/path/to/python3.11 bash tools/setup.sh"
found=$(command -v "$python" 2>/dev/null || true)
if [[ -z $found ]]; then
    echo "$needs, and '$python' was not found; $choose" >&2
    exit 2
fi
version=$(python_version "$found")
if [[ -z $version ]]; then
    echo "$needs, and $found does not run as Python; $choose" >&2
    exit 2
fi
if ! supported "$version"; then
    echo "$needs, and $found is Python $version; $choose" >&2
    exit 2
fi

# broken_venv: why the existing .venv cannot be used, or nothing when it can.
broken_venv() {
    if [[ ! -e .venv/bin/python ]]; then  # -e follows the link: a dangling one is missing
        echo "it has no working bin/python"
        return
    fi
    local made_by
    made_by=$(python_version .venv/bin/python)
    if [[ -z $made_by ]]; then
        echo "its bin/python does not run"
    elif ! supported "$made_by"; then
        echo "it was made by Python $made_by"
    elif [[ -n ${PYTHON:-} && $made_by != "$version" ]]; then
        echo "it was made by Python $made_by and PYTHON is $version"
    elif ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
        echo "it has no pip"
    fi
}

if [[ -L .venv || (-e .venv && ! -d .venv) ]]; then
    # Clearing it would empty whatever it points to; moving it away is the user's call.
    echo "setup: .venv is not a directory; move it away and run setup again" >&2
    exit 1
fi
# make_venv [--clear]: .venv made by the chosen interpreter (--clear empties it first).
make_venv() {
    if ! "$found" -m venv "$@" .venv; then
        echo "setup: $found could not make .venv (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
}
if [[ -d .venv ]]; then
    reason=$(broken_venv)
    if [[ -n $reason ]]; then
        echo "setup: .venv cannot be used ($reason): making it again with $found" >&2
        make_venv --clear
    fi
else
    echo "setup: creating .venv with $found (Python $version)" >&2
    make_venv
fi

# A stamp per pyproject.toml content and extent: .installed-HASH-run (the package and its
# runtime dependencies) or .installed-HASH-test (the test extra too, which a plain run also
# accepts). Packages are installed again when pyproject.toml changes.
hash=$(.venv/bin/python -c \
    'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest()[:16])')
extent=run target=.
if [[ $mode != run ]]; then
    extent=test target=.[test]
fi
if [[ ! -e .venv/.installed-$hash-$extent && ! -e .venv/.installed-$hash-test ]]; then
    echo "setup: installing backend-injector${target#.} into .venv" >&2
    # setuptools announces each editable install with a warning about folders named like the
    # package; here the repository is the package's home, so the warning is silenced.
    silenced="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
    pip=(env "PYTHONWARNINGS=$silenced" .venv/bin/python -m pip install --quiet
        --disable-pip-version-check)
    "${pip[@]}" --upgrade pip
    "${pip[@]}" -e "$target"
    rm -f .venv/.installed-*
    touch ".venv/.installed-$hash-$extent"
fi

if [[ $mode == all ]]; then
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
