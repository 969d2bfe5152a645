//go:build tools

// Package tools pins the containerd commands this module builds (the daemon, the runc
// shim the CRI plugin starts per pod, and ctr for importing images), so that
// `go mod tidy` keeps their whole dependency graph in go.mod and go.sum.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
