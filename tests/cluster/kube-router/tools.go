//go:build tools

// Package tools pins kube-router, the test bed's NetworkPolicy enforcer (its firewall only:
// iptables + ipset on the bed's CNI bridge; see tests/cluster/README.md, "NetworkPolicy").
// A module of its own: kube-router v2.1 is built against client-go v0.29, which must not meet
// the v0.37 staging modules of the Kubernetes module one folder up.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"

// KubeRouterVersion is read by ../build (the binary is rebuilt when it changes). v2.1.0 is the
// newest version the Go module proxy reachable here serves (later ones: 403 "not available").
const KubeRouterVersion = "v2.1.0"
