//go:build tools

// Package tools pins runc, the OCI runtime containerd's shim runs, so that
// `go mod tidy` keeps its dependency graph in go.mod and go.sum.
package tools

import (
	_ "github.com/opencontainers/runc"
)
