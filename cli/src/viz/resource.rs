//! Resources addressed like kubectl: `deploy/web`, `po/web-1`, `ns/demo`, `svc/web-svc`,
//! `sts/db`, `ds/agent`, or a kind alone (`deploy`: every Deployment of the namespace).

use std::fmt;

use anyhow::bail;
use mesh_viz::model::{Kind, PodInfo, Workload};

use super::local::State;

/// A parsed resource argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    pub name: Option<String>,
}

impl std::str::FromStr for Resource {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Resource> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) if !n.is_empty() && !n.contains('/') => (k, Some(n.to_string())),
            Some(_) => bail!("invalid resource {s:?}: expected KIND/NAME, e.g. deploy/web"),
            None => (s, None),
        };
        let Some(kind) = Kind::parse(kind) else {
            bail!(
                "unknown resource kind {kind:?} in {s:?}: use deploy, po, ns, svc, sts, ds, rs or job \
                 (e.g. deploy/web)"
            );
        };
        Ok(Resource { kind, name })
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{n}", self.kind.short()),
            None => f.write_str(self.kind.short()),
        }
    }
}

impl Resource {
    /// The workloads this resource names in `namespace`, each with its pods; an error saying
    /// what exists when nothing matches.
    pub fn resolve(
        &self,
        state: &State,
        namespace: &str,
    ) -> anyhow::Result<Vec<(Workload, Vec<PodInfo>)>> {
        let mut workloads: Vec<Workload> = match (&self.name, self.kind) {
            (Some(name), Kind::Namespace) => vec![Workload::new(Kind::Namespace, name, name)],
            (Some(name), kind) => vec![Workload::new(kind, namespace, name)],
            (None, Kind::Namespace) => {
                let mut all: Vec<&str> = state.pods.iter().map(|p| p.namespace.as_str()).collect();
                all.sort();
                all.dedup();
                all.iter()
                    .map(|ns| Workload::new(Kind::Namespace, ns, ns))
                    .collect()
            }
            (None, kind) => Resource { kind, name: None }.resolve_quiet(state, namespace),
        };
        workloads.retain(|w| self.name.is_none() || exists(state, w));
        if workloads.is_empty() {
            let known = known(state, self.kind, namespace);
            let what = match &self.name {
                Some(_) => format!("no such resource: {self} in namespace {namespace}"),
                None => format!("no {} in namespace {namespace}", self.kind.label()),
            };
            if known.is_empty() {
                let all = namespaces(state);
                if all.is_empty() {
                    // A cluster lists only the namespaces a command names; the local mesh all.
                    bail!("{what}, and no pods were found where it looked (use -n NAMESPACE, or -A in a cluster)");
                }
                bail!("{what}; there are pods in namespaces {all} (use -n NAMESPACE)");
            }
            bail!("{what}; there are: {}", known.join(", "));
        }
        Ok(workloads
            .into_iter()
            .map(|w| {
                let pods = state
                    .pods
                    .iter()
                    .filter(|p| p.belongs_to(&w))
                    .cloned()
                    .collect();
                (w, pods)
            })
            .collect())
    }
}

fn exists(state: &State, w: &Workload) -> bool {
    state.workloads.contains(w) || state.pods.iter().any(|p| p.belongs_to(w))
}

fn known(state: &State, kind: Kind, namespace: &str) -> Vec<String> {
    let mut all: Vec<String> = Resource { kind, name: None }
        .resolve_quiet(state, namespace)
        .iter()
        .map(|w| w.to_string())
        .collect();
    all.dedup();
    all
}

fn namespaces(state: &State) -> String {
    let mut all: Vec<&str> = state.pods.iter().map(|p| p.namespace.as_str()).collect();
    all.sort();
    all.dedup();
    all.join(", ")
}

impl Resource {
    fn resolve_quiet(&self, state: &State, namespace: &str) -> Vec<Workload> {
        let mut all: Vec<Workload> = state
            .workloads
            .iter()
            .filter(|w| w.kind == self.kind && w.namespace == namespace)
            .cloned()
            .collect();
        for pod in state.pods.iter().filter(|p| p.namespace == namespace) {
            all.extend(pod.workloads(self.kind));
        }
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_kubectl() {
        let check = |s: &str, kind: Kind, name: Option<&str>| {
            let r: Resource = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((r.kind, r.name.as_deref()), (kind, name), "{s}");
        };
        check("deploy/web", Kind::Deployment, Some("web"));
        check("deployments/web", Kind::Deployment, Some("web"));
        check("po/web-1", Kind::Pod, Some("web-1"));
        check("ns/demo", Kind::Namespace, Some("demo"));
        check("svc/web-svc", Kind::Service, Some("web-svc"));
        check("sts/db", Kind::StatefulSet, Some("db"));
        check("ds/agent", Kind::DaemonSet, Some("agent"));
        check("deploy", Kind::Deployment, None);
        for bad in ["cm/x", "deploy/", "deploy/a/b", ""] {
            assert!(bad.parse::<Resource>().is_err(), "{bad}");
        }
    }
}
