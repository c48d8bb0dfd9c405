//! The local target: the state folder of a local mesh (`mesh_cli::local`) read as a cluster's
//! objects, and a transport that enters a pod's network namespace to reach its proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use mesh_api::defaults::LOCAL_ADMIN_ADDR;
use mesh_viz::client::{Connecting, Io, Transport};
use mesh_viz::model::{Kind, PodInfo, Workload};

use crate::local::{NETNS_ANNOTATION, TRUST_DOMAIN};

/// The objects of a state folder.
#[derive(Debug, Default)]
pub struct State {
    pub pods: Vec<PodInfo>,
    /// Workloads that exist as objects (Deployments, StatefulSets, DaemonSets, Services),
    /// with or without pods.
    pub workloads: BTreeSet<Workload>,
}

impl State {
    /// Reads every YAML file of `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<State> {
        if !dir.is_dir() {
            bail!(
                "no local mesh at {}: the folder does not exist; start one with `mesh demo`, \
                 or point --state (or MESH_LOCAL_STATE) at the folder of a local mesh",
                dir.display()
            );
        }
        let mut objects = Objects::default();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                !name.starts_with('.')
                    && (name.ends_with(".yaml")
                        || name.ends_with(".yml")
                        || name.ends_with(".json"))
            })
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            objects
                .add(&text)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        Ok(objects.state())
    }
}

/// A cluster's objects as the viz commands need them, from YAML (the local mesh's folder) or
/// from the Kubernetes API (`kube.rs`): one object → [`PodInfo`] code for both targets.
#[derive(Default)]
pub(crate) struct Objects {
    pods: Vec<Pod>,
    replicasets: Vec<ReplicaSet>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    workloads: BTreeSet<Workload>,
}

fn workload(meta: &ObjectMeta, kind: Kind) -> Workload {
    Workload::new(
        kind,
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

impl Objects {
    /// Adds every object of a YAML (or JSON) text with one or more documents.
    fn add(&mut self, text: &str) -> anyhow::Result<()> {
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document)?;
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "Pod" => self.pod(serde_json::from_value(value)?),
                "ReplicaSet" => self.replicaset(serde_json::from_value(value)?),
                "EndpointSlice" => self.slice(serde_json::from_value(value)?),
                "Service" => self.service(serde_json::from_value(value)?),
                "Deployment" => {
                    let d: Deployment = serde_json::from_value(value)?;
                    self.workload(&d.metadata, Kind::Deployment);
                }
                "StatefulSet" => {
                    let d: StatefulSet = serde_json::from_value(value)?;
                    self.workload(&d.metadata, Kind::StatefulSet);
                }
                "DaemonSet" => {
                    let d: DaemonSet = serde_json::from_value(value)?;
                    self.workload(&d.metadata, Kind::DaemonSet);
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn pod(&mut self, pod: Pod) {
        self.pods.push(pod);
    }

    pub(crate) fn replicaset(&mut self, rs: ReplicaSet) {
        self.replicasets.push(rs);
    }

    pub(crate) fn slice(&mut self, slice: EndpointSlice) {
        self.slices.push(slice);
    }

    pub(crate) fn service(&mut self, svc: Service) {
        self.workload(&svc.metadata, Kind::Service);
        self.services.push(svc);
    }

    /// A workload that exists as an object (a Deployment, StatefulSet, DaemonSet), with or
    /// without pods.
    pub(crate) fn workload(&mut self, meta: &ObjectMeta, kind: Kind) {
        self.workloads.insert(workload(meta, kind));
    }

    pub(crate) fn state(self) -> State {
        let pods: Vec<PodInfo> = self.pods.iter().map(|p| self.info(p)).collect();
        let mut workloads = self.workloads;
        workloads.extend(pods.iter().map(|p| p.owner.clone()));
        State { pods, workloads }
    }

    fn info(&self, pod: &Pod) -> PodInfo {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let meshed = spec.is_some_and(|s| {
            s.containers.iter().any(|c| c.name == "mesh-proxy")
                || s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == "mesh-proxy")
        });
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let labels = meta.labels.clone().unwrap_or_default();
        let mut services: BTreeSet<String> = BTreeSet::new();
        for slice in &self.slices {
            if slice.metadata.namespace.as_deref() != Some(namespace.as_str()) {
                continue;
            }
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            else {
                continue;
            };
            let has = slice.endpoints.iter().any(|e| {
                e.target_ref.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(&name)
                })
            });
            if has {
                services.insert(svc.clone());
            }
        }
        for svc in &self.services {
            let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
            if svc.metadata.namespace.as_deref() == Some(namespace.as_str())
                && selector.is_some_and(|sel| !sel.is_empty() && selects(sel, &labels))
            {
                services.insert(svc.metadata.name.clone().unwrap_or_default());
            }
        }
        PodInfo {
            owner: self.owner(meta, &namespace, &name),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            services: services.into_iter().collect(),
            meshed,
            identity: meshed
                .then(|| format!("{sa}.{namespace}.serviceaccount.identity.mesh.{TRUST_DOMAIN}")),
            address: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(NETNS_ANNOTATION))
                .cloned()
                .unwrap_or_default(),
            namespace,
            name,
        }
    }

    /// The pod's workload the way Kubernetes tools see it: its controller, through its
    /// ReplicaSet to a Deployment; the pod itself without one.
    fn owner(&self, meta: &ObjectMeta, namespace: &str, name: &str) -> Workload {
        let Some(owner) = controller(meta) else {
            return Workload::new(Kind::Pod, namespace, name);
        };
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = self.replicasets.iter().find(|rs| {
                    rs.metadata.name.as_deref() == Some(&owner.name)
                        && rs.metadata.namespace.as_deref() == Some(namespace)
                });
                match rs.and_then(|rs| controller(&rs.metadata)) {
                    Some(d) if d.kind == "Deployment" => {
                        Workload::new(Kind::Deployment, namespace, &d.name)
                    }
                    _ => Workload::new(Kind::ReplicaSet, namespace, &owner.name),
                }
            }
            "StatefulSet" => Workload::new(Kind::StatefulSet, namespace, &owner.name),
            "DaemonSet" => Workload::new(Kind::DaemonSet, namespace, &owner.name),
            "Job" => Workload::new(Kind::Job, namespace, &owner.name),
            _ => Workload::new(Kind::Pod, namespace, name),
        }
    }
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Reaches a pod's proxy from inside its network namespace (`mesh.io/local-netns`), on the
/// pod's loopback: the one caller a proxy lets tap without the viz identity. Needs root.
#[derive(Clone, Debug, Default)]
pub struct NetnsTransport;

impl Transport for NetnsTransport {
    fn connect<'a>(&'a self, pod: &'a PodInfo) -> Connecting<'a> {
        Box::pin(async move {
            if pod.address.is_empty() {
                return Err(std::io::Error::other(format!(
                    "pod {} has no {NETNS_ANNOTATION} annotation: it is not a pod of a local mesh",
                    pod.name
                )));
            }
            let io: Box<dyn Io> = Box::new(connect_in(&pod.address, LOCAL_ADMIN_ADDR).await?);
            Ok(io)
        })
    }
}

/// A TCP connection to `addr` from inside the network namespace `netns` (`ip netns` name).
/// Needs root.
pub async fn connect_in(netns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let path = crate::local::netns_path(netns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A socket stays in the namespace it was made in: make it on a thread that entered the
    // pod's namespace, then use it from the runtime.
    std::thread::spawn(move || {
        let connect = || -> std::io::Result<std::net::TcpStream> {
            crate::local::netns_enter(&path)
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        };
        let _ = tx.send(connect());
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}
