//go:build tools

// Package tools pins the test-bed binaries. It is never compiled; `go mod tidy`
// reads the imports below so that go.mod/go.sum carry everything that
// `go build k8s.io/kubernetes/cmd/...` needs for every binary
// the test bed builds (control plane, node and kubectl).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

// KubernetesVersion is read by gen-replaces.sh and build.
const KubernetesVersion = "v1.37.2"
