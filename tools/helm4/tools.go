//go:build tools

// Package tools pins Helm 4's command package, so that `go mod tidy` keeps its
// whole dependency graph in go.mod and go.sum.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
