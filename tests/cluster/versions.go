//go:build tools

// Package tools pins the test-bed binaries. It is never compiled; `go mod tidy`
// reads the imports below so that go.mod/go.sum carry everything that
// `go build k8s.io/kubernetes/cmd/kube-apiserver` needs.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)

// KubernetesVersion is read by gen-replaces.sh and build.
const KubernetesVersion = "v1.37.2"
