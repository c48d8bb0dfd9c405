//! The mesh control plane (not built yet).
//!
//! `mesh-controller` will own three servers that share one index of Kubernetes objects:
//! *destination* (service discovery: resolves a logical name or a ClusterIP to endpoints with
//! their labels, expected TLS identity and protocol hint, and streams changes to proxies),
//! *identity* (the mesh CA: checks a workload's service-account token and signs the CSR of its
//! proxy), and *injector* (the admission webhook that adds `mesh-init` and `mesh-proxy` to pods).
//! The index is fed by kube-rs watchers in a cluster and by a folder of the same objects as YAML
//! on one machine; everything above the index is shared.
