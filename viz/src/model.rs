//! What the views are about: workloads (a Deployment, a pod, a namespace …) and the pods that
//! make them, as a target (local state folder or cluster) describes them.

use std::fmt;
use std::net::IpAddr;

/// A kind of resource, addressed like kubectl does (`deploy/web`, `po/web-1`, `ns/demo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Namespace,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    Service,
    Pod,
}

impl Kind {
    /// Every spelling kubectl accepts for the kinds mesh viz knows.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "sts" | "statefulset" | "statefulsets" => Kind::StatefulSet,
            "ds" | "daemonset" | "daemonsets" => Kind::DaemonSet,
            "rs" | "replicaset" | "replicasets" => Kind::ReplicaSet,
            "job" | "jobs" => Kind::Job,
            "svc" | "service" | "services" => Kind::Service,
            "po" | "pod" | "pods" => Kind::Pod,
            _ => return None,
        })
    }

    /// The short name, as the tables print it (`deploy/web`).
    pub fn short(self) -> &'static str {
        match self {
            Kind::Namespace => "ns",
            Kind::Deployment => "deploy",
            Kind::StatefulSet => "sts",
            Kind::DaemonSet => "ds",
            Kind::ReplicaSet => "rs",
            Kind::Job => "job",
            Kind::Service => "svc",
            Kind::Pod => "po",
        }
    }

    /// The label discovery and tap put on a peer of this kind (`deployment=web`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::ReplicaSet => "replicaset",
            Kind::Job => "job",
            Kind::Service => "service",
            Kind::Pod => "pod",
        }
    }
}

/// One workload: a resource of a kind, in a namespace (a namespace's is itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Workload {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Workload {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Workload {
        Workload {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.short(), self.name)
    }
}

/// A pod, as far as the views need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Option<IpAddr>,
    /// Its owner (Deployment, StatefulSet …), or the pod itself when it has none.
    pub owner: Workload,
    /// The Services whose endpoints include it.
    pub services: Vec<String>,
    /// Whether it runs the mesh proxy.
    pub meshed: bool,
    /// Its mesh identity (from its service account), when meshed.
    pub identity: Option<String>,
    /// How the target reaches it (local: the network namespace).
    pub address: String,
}

impl PodInfo {
    /// Whether the pod belongs to `workload`.
    pub fn belongs_to(&self, workload: &Workload) -> bool {
        match workload.kind {
            Kind::Namespace => self.namespace == workload.name,
            _ if self.namespace != workload.namespace => false,
            Kind::Pod => self.name == workload.name,
            Kind::Service => self.services.contains(&workload.name),
            _ => self.owner == *workload,
        }
    }

    /// The workloads of kind `kind` this pod belongs to (several only for Services).
    pub fn workloads(&self, kind: Kind) -> Vec<Workload> {
        match kind {
            Kind::Namespace => vec![Workload::new(kind, &self.namespace, &self.namespace)],
            Kind::Pod => vec![Workload::new(kind, &self.namespace, &self.name)],
            Kind::Service => self
                .services
                .iter()
                .map(|s| Workload::new(kind, &self.namespace, s))
                .collect(),
            _ if self.owner.kind == kind => vec![self.owner.clone()],
            _ => Vec::new(),
        }
    }
}
