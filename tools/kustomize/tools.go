//go:build tools

// Package tools pins the kustomize command, so that `go mod tidy` keeps its
// whole dependency graph in go.mod and go.sum.
package tools

import (
	_ "sigs.k8s.io/kustomize/kustomize/v5"
)
