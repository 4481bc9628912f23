//go:build tools

// Package tools pins the etcd server used by the test bed. Kept in its own module
// because k8s.io/kubernetes v1.37 pulls etcd v3.7 libraries, while the server we
// run is the v3.6 line. Its main package lives at the module root in v3.6.
package tools

import _ "go.etcd.io/etcd/server/v3"

// EtcdVersion is read by ../build.
const EtcdVersion = "v3.6.16"
