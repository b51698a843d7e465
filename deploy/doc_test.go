// Package deploy_test checks what deploy/ ships against the tools that read
// it — Prometheus's rule parser, the Compose loader, the Kubernetes API
// types, the Dockerfile parser — in a module of its own, so the main
// go.mod carries none of their dependencies. `make test` runs it.
package deploy_test
