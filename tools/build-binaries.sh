#!/usr/bin/env bash
# Builds the real control-plane binaries that the e2e tests run, from published Go modules
# (no release tarballs or images can be downloaded on the project's machines).
#
#   binary                   built from (version pinned in)
#   kube-apiserver           k8s.io/kubernetes  (tools/kube/go.mod)
#   kube-controller-manager  k8s.io/kubernetes  (tools/kube/go.mod)
#   kubectl                  k8s.io/kubernetes  (tools/kube/go.mod)
#   kube-scheduler, kubelet, kube-proxy  k8s.io/kubernetes  (tools/kube/go.mod), for the node
#   etcd                     go.etcd.io/etcd/server/v3 (tools/etcd/go.mod + main.go)
#   helm                     helm.sh/helm/v3    (tools/helm/go.mod)
#   helm4                    helm.sh/helm/v4    (tools/helm4/go.mod); Helm 4, for the plugin
#   kustomize                sigs.k8s.io/kustomize/kustomize/v5 (tools/kustomize/go.mod)
#   containerd, containerd-shim-runc-v2, ctr
#                            github.com/containerd/containerd/v2 (tools/containerd/go.mod)
#   runc                     github.com/opencontainers/runc (tools/runc/go.mod); cgo, seccomp
#   coredns                  github.com/coredns/coredns (tools/coredns/go.mod + main.go)
#   pause                    tools/pause/main.go (the node's sandbox image), keyed by its hash
#   probe                    tools/probe/main.go (the node smoke tests' image), keyed by its hash
#
# Each binary is cached outside the clone, keyed by its module version, at
#   ${BACKEND_INJECTOR_CACHE:-$HOME/.cache/backend-injector}/bin/<name>-<version>/<name>
# so a warm machine builds nothing. Bumping a version in a go.mod gives a new key.
#
# Usage:
#   tools/build-binaries.sh               build whatever is missing (progress on stderr)
#   tools/build-binaries.sh --print-dir   print the cache's bin dir and exit (builds nothing)
#   tools/build-binaries.sh --print-paths print "<name>=<absolute path>" per binary, one a
#                                         line, and exit (builds nothing); the e2e harness
#                                         runs the build first and then reads this.
#
# Needs only Go (the go line of the go.mod files) and the Go module proxy; it reads no stdin
# and works with CI=true. A cold build takes tens of minutes on 2 cores; Go's own module and
# build caches ($GOMODCACHE, $GOCACHE) are reused between runs.
set -euo pipefail

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${BACKEND_INJECTOR_CACHE:-$HOME/.cache/backend-injector}"
bin_root="$cache_root/bin"

# Prints the version that go.mod file $1 requires for module $2 (single-line or block form).
required_version() {
    awk -v m="$2" '
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v[0-9]/ { print $2; exit }
    ' "$1"
}

kube_version="$(required_version "$tools_dir/kube/go.mod" k8s.io/kubernetes)"
etcd_version="$(required_version "$tools_dir/etcd/go.mod" go.etcd.io/etcd/server/v3)"
helm_version="$(required_version "$tools_dir/helm/go.mod" helm.sh/helm/v3)"
helm_client_go="$(required_version "$tools_dir/helm/go.mod" k8s.io/client-go)"
helm4_version="$(required_version "$tools_dir/helm4/go.mod" helm.sh/helm/v4)"
kustomize_version="$(required_version "$tools_dir/kustomize/go.mod" \
    sigs.k8s.io/kustomize/kustomize/v5)"
containerd_version="$(required_version "$tools_dir/containerd/go.mod" \
    github.com/containerd/containerd/v2)"
runc_version="$(required_version "$tools_dir/runc/go.mod" github.com/opencontainers/runc)"
coredns_version="$(required_version "$tools_dir/coredns/go.mod" github.com/coredns/coredns)"
# The pause and probe programs are the project's own: their cache key is their source's hash.
pause_version="src-$(sha256sum "$tools_dir/pause/main.go" | cut -c1-12)"
probe_version="src-$(sha256sum "$tools_dir/probe/main.go" | cut -c1-12)"
for v in kube_version etcd_version helm_version helm_client_go helm4_version \
    kustomize_version containerd_version runc_version coredns_version; do
    if [[ -z "${!v}" ]]; then
        echo "build-binaries: cannot read $v from tools/*/go.mod" >&2
        exit 1
    fi
done

# name|version|module dir|package
targets=(
    "etcd|$etcd_version|etcd|."
    "kube-apiserver|$kube_version|kube|k8s.io/kubernetes/cmd/kube-apiserver"
    "kube-controller-manager|$kube_version|kube|k8s.io/kubernetes/cmd/kube-controller-manager"
    "kubectl|$kube_version|kube|k8s.io/kubernetes/cmd/kubectl"
    "kube-scheduler|$kube_version|kube|k8s.io/kubernetes/cmd/kube-scheduler"
    "kubelet|$kube_version|kube|k8s.io/kubernetes/cmd/kubelet"
    "kube-proxy|$kube_version|kube|k8s.io/kubernetes/cmd/kube-proxy"
    "helm|$helm_version|helm|helm.sh/helm/v3/cmd/helm"
    "helm4|$helm4_version|helm4|helm.sh/helm/v4/cmd/helm"
    "kustomize|$kustomize_version|kustomize|sigs.k8s.io/kustomize/kustomize/v5"
    "containerd|$containerd_version|containerd|github.com/containerd/containerd/v2/cmd/containerd"
    "containerd-shim-runc-v2|$containerd_version|containerd|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
    "ctr|$containerd_version|containerd|github.com/containerd/containerd/v2/cmd/ctr"
    "runc|$runc_version|runc|github.com/opencontainers/runc"
    "coredns|$coredns_version|coredns|."
    "pause|$pause_version|pause|."
    "probe|$probe_version|probe|."
)

binary_path() { echo "$bin_root/$1-$2/$1"; }

case "${1:-}" in
    --print-dir)
        echo "$bin_root"
        exit 0
        ;;
    --print-paths)
        for t in "${targets[@]}"; do
            IFS='|' read -r name version _ _ <<<"$t"
            echo "$name=$(binary_path "$name" "$version")"
        done
        exit 0
        ;;
    "") ;;
    *)
        echo "usage: $0 [--print-dir|--print-paths]" >&2
        exit 2
        ;;
esac

# Kubernetes' version stamps: without them /version says v0.0.0-master and the apiserver's
# emulated-version and feature-gate logic misbehave. Same variables hack/lib/version.sh sets.
# The build date is the module's publication time, so rebuilds are reproducible.
kube_ldflags() {
    local major minor build_date ldflags="-s -w" pkg
    major="$(cut -d. -f1 <<<"${kube_version#v}")"
    minor="$(cut -d. -f2 <<<"${kube_version#v}")"
    build_date="$(cd "$tools_dir/kube" &&
        go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major"
        ldflags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
        ldflags+=" -X $pkg.buildDate=$build_date"
    done
    echo "$ldflags"
}

# Helm's Makefile stamps its version and the Kubernetes version its client-go speaks
# (client-go v0.X.Y is Kubernetes 1.X), which `helm template` uses as .Capabilities.
helm_ldflags() {
    local major minor p ldflags="-s -w"
    major=$(($(cut -d. -f1 <<<"${helm_client_go#v}") + 1))
    minor="$(cut -d. -f2 <<<"${helm_client_go#v}")"
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
    ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ldflags+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
    done
    echo "$ldflags"
}

# Helm 4 stamps only its own version: it reads the Kubernetes version (client-go's) from
# the binary's module build info, which -trimpath keeps.
helm4_ldflags() {
    local ldflags="-s -w"
    ldflags+=" -X helm.sh/helm/v4/internal/version.version=$helm4_version"
    ldflags+=" -X helm.sh/helm/v4/internal/version.metadata="
    ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
    echo "$ldflags"
}

missing=()
for t in "${targets[@]}"; do
    IFS='|' read -r name version _ _ <<<"$t"
    [[ -x "$(binary_path "$name" "$version")" ]] || missing+=("$t")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "build-binaries: all binaries present in $bin_root" >&2
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "build-binaries: 'go' is not on PATH; it is needed to build the binaries" >&2
    exit 1
fi

mkdir -p "$bin_root"
# Two test sessions starting at once must not build the same thing twice.
if command -v flock >/dev/null; then
    exec 9>"$bin_root/.lock"
    flock 9
fi

# Static binaries as Kubernetes ships them (runc alone needs cgo); the local toolchain only (no toolchain
# download); go.sum is committed, so the module graph must not change; -buildvcs=false
# because the clone's git state says nothing about these modules.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

total_start=$SECONDS
for t in "${missing[@]}"; do
    IFS='|' read -r name version module pkg <<<"$t"
    out="$(binary_path "$name" "$version")"
    # Another process may have built it while this one waited for the lock.
    [[ -x "$out" ]] && continue
    tags=""
    cgo=0
    case "$module" in
        kube)
            ldflags="$(kube_ldflags)"
            tags="selinux,notest,grpcnotrace"
            ;;
        helm) ldflags="$(helm_ldflags)" ;;
        helm4) ldflags="$(helm4_ldflags)" ;;
        containerd)
            # What containerd's Makefile stamps, so `containerd --version` and the CRI's
            # runtime version name the release.
            ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$version"
            ldflags+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
            ;;
        runc)
            # runc's nsenter is C (cgo), and seccomp filters (RuntimeDefault profiles) need
            # libseccomp; its VERSION file is embedded, so no version stamp is needed.
            if ! pkg-config --exists libseccomp 2>/dev/null; then
                echo "build-binaries: runc needs libseccomp-dev (tools/setup.sh --all)" >&2
                exit 1
            fi
            cgo=1
            tags="seccomp,urfave_cli_no_docs"
            ldflags="-s -w"
            ;;
        *) ldflags="-s -w" ;;
    esac
    echo "build-binaries: building $name $version ..." >&2
    start=$SECONDS
    mkdir -p "$(dirname "$out")"
    trap 'rm -f "$out.tmp.$$"' EXIT
    # Build to a temporary name and rename, so an interrupted build never leaves a
    # half-written binary that a later run would take for a cached one.
    (cd "$tools_dir/$module" &&
        CGO_ENABLED=$cgo go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg")
    mv -f "$out.tmp.$$" "$out"
    echo "build-binaries: built $name $version in $((SECONDS - start))s -> $out" >&2
done
echo "build-binaries: done in $((SECONDS - total_start))s" >&2
