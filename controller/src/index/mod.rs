//! The one index of Kubernetes objects (Services, EndpointSlices, Pods, ReplicaSets) and how a
//! watch target resolves to endpoints against it.
//!
//! Both sources (kube-rs watchers and the folder of YAML) feed the same [`Index`]; everything
//! above it is shared. Resolution is a pure function of the index, so it is unit-tested without
//! sockets (see `tests.rs`).

mod target;
#[cfg(test)]
mod tests;

pub use target::{AuthorityError, Target};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::destination::{Endpoint, ProtocolHint, DEFAULT_WEIGHT};

/// The name of the proxy container: a pod that has it (as a container or a native-sidecar init
/// container) is meshed.
pub const PROXY_CONTAINER: &str = "mesh-proxy";

/// The label of an EndpointSlice that names its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the index needs to know about the cluster.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// The trust domain of workload identities (`cluster.local`).
    pub trust_domain: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// An object the index holds.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A ReplicaSet (to find a pod's Deployment).
    ReplicaSet(Box<ReplicaSet>),
}

/// The kinds of [`Object`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Service.
    Service,
    /// EndpointSlice.
    EndpointSlice,
    /// Pod.
    Pod,
    /// ReplicaSet.
    ReplicaSet,
}

/// Names one object: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace (`default` when unset).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What a target resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Nothing of that name or address is known.
    Unknown,
    /// The target exists; its current endpoints by address (maybe none).
    Endpoints(BTreeMap<SocketAddr, Endpoint>),
}

/// How many objects of each kind the index holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Services.
    pub services: usize,
    /// EndpointSlices.
    pub endpoint_slices: usize,
    /// Pods.
    pub pods: usize,
}

type NsName = (String, String);

/// The index of cluster objects.
#[derive(Debug, Default)]
pub struct Index {
    config: IndexConfig,
    services: HashMap<NsName, Service>,
    slices: HashMap<NsName, EndpointSlice>,
    /// (namespace, service) → names of its slices.
    slices_by_service: HashMap<NsName, BTreeSet<String>>,
    pods: HashMap<NsName, Pod>,
    replicasets: HashMap<NsName, ReplicaSet>,
    cluster_ips: HashMap<IpAddr, NsName>,
    pod_ips: HashMap<IpAddr, NsName>,
}

impl Object {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::ReplicaSet(o) => (Kind::ReplicaSet, &o.metadata),
        };
        ObjectKey {
            kind,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl Index {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, object: Object) {
        let key = object.key();
        self.delete(&key);
        let nn = (key.namespace, key.name);
        match object {
            Object::Service(svc) => {
                for ip in cluster_ips(&svc) {
                    self.cluster_ips.insert(ip, nn.clone());
                }
                self.services.insert(nn, *svc);
            }
            Object::EndpointSlice(slice) => {
                if let Some(svc) = slice_service(&slice) {
                    self.slices_by_service
                        .entry((nn.0.clone(), svc.to_owned()))
                        .or_default()
                        .insert(nn.1.clone());
                }
                self.slices.insert(nn, *slice);
            }
            Object::Pod(pod) => {
                if let Some(ip) = pod_ip(&pod) {
                    self.pod_ips.insert(ip, nn.clone());
                }
                self.pods.insert(nn, *pod);
            }
            Object::ReplicaSet(rs) => {
                self.replicasets.insert(nn, *rs);
            }
        }
    }

    /// Removes an object, if present.
    pub fn delete(&mut self, key: &ObjectKey) {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Service => {
                if let Some(svc) = self.services.remove(&nn) {
                    for ip in cluster_ips(&svc) {
                        if self.cluster_ips.get(&ip) == Some(&nn) {
                            self.cluster_ips.remove(&ip);
                        }
                    }
                }
            }
            Kind::EndpointSlice => {
                if let Some(slice) = self.slices.remove(&nn) {
                    if let Some(svc) = slice_service(&slice) {
                        let skey = (nn.0.clone(), svc.to_owned());
                        if let Some(set) = self.slices_by_service.get_mut(&skey) {
                            set.remove(&nn.1);
                            if set.is_empty() {
                                self.slices_by_service.remove(&skey);
                            }
                        }
                    }
                }
            }
            Kind::Pod => {
                if let Some(pod) = self.pods.remove(&nn) {
                    if let Some(ip) = pod_ip(&pod) {
                        if self.pod_ips.get(&ip) == Some(&nn) {
                            self.pod_ips.remove(&ip);
                        }
                    }
                }
            }
            Kind::ReplicaSet => {
                self.replicasets.remove(&nn);
            }
        }
    }

    /// Replaces every object of `kind` with `objects` (a re-list); objects of other kinds in
    /// `objects` are applied too.
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) {
        let old: Vec<ObjectKey> = self.keys(kind);
        for key in &old {
            self.delete(key);
        }
        for object in objects {
            self.apply(object);
        }
    }

    /// Replaces the whole content of the index with `objects` (a folder rescan).
    pub fn reset(&mut self, objects: Vec<Object>) {
        *self = Index::new(self.config.clone());
        for object in objects {
            self.apply(object);
        }
    }

    /// The keys of every object of `kind`.
    pub fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        let names: Vec<&NsName> = match kind {
            Kind::Service => self.services.keys().collect(),
            Kind::EndpointSlice => self.slices.keys().collect(),
            Kind::Pod => self.pods.keys().collect(),
            Kind::ReplicaSet => self.replicasets.keys().collect(),
        };
        names
            .into_iter()
            .map(|(namespace, name)| ObjectKey {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect()
    }

    /// How many objects the index holds.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            pods: self.pods.len(),
        }
    }

    /// Whether a change to objects in `namespace` can change what `target` resolves to.
    pub fn affects(target: &Target, namespace: &str) -> bool {
        match target {
            Target::Service { namespace: ns, .. } => ns == namespace,
            Target::Addr(_) => true,
            Target::External(_) => false,
        }
    }

    /// Resolves a target to its endpoints.
    pub fn resolve(&self, target: &Target) -> Resolution {
        match target {
            Target::External(_) => Resolution::Unknown,
            Target::Service {
                namespace,
                name,
                port,
                hostname,
            } => self.resolve_service(namespace, name, *port, hostname.as_deref()),
            Target::Addr(addr) => {
                if let Some((ns, name)) = self.cluster_ips.get(&addr.ip()) {
                    return self.resolve_service(ns, name, addr.port(), None);
                }
                if let Some(pod) = self.pod_ips.get(&addr.ip()).and_then(|k| self.pods.get(k)) {
                    let mut labels = BTreeMap::new();
                    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                    labels.insert("namespace".to_owned(), ns.to_owned());
                    let endpoint = self.endpoint(*addr, labels, Some(pod));
                    return Resolution::Endpoints(BTreeMap::from([(*addr, endpoint)]));
                }
                Resolution::Unknown
            }
        }
    }

    fn resolve_service(
        &self,
        ns: &str,
        name: &str,
        port: u16,
        hostname: Option<&str>,
    ) -> Resolution {
        let nn = (ns.to_owned(), name.to_owned());
        let Some(svc) = self.services.get(&nn) else {
            return Resolution::Unknown;
        };
        let spec = svc.spec.as_ref();
        let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        let svc_port = spec
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == i32::from(port)));
        if svc_port.is_none() && !headless {
            // A ClusterIP service only forwards the ports it declares.
            return Resolution::Unknown;
        }
        let mut ready = BTreeMap::new();
        let mut terminating = BTreeMap::new();
        let slice_names = self.slices_by_service.get(&nn);
        for slice in slice_names
            .into_iter()
            .flatten()
            .filter_map(|s| self.slices.get(&(ns.to_owned(), s.clone())))
        {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(endpoint_port) = endpoint_port(svc_port, port, slice) else {
                continue;
            };
            for ep in &slice.endpoints {
                if let Some(h) = hostname {
                    let pod_name = ep.target_ref.as_ref().and_then(|r| r.name.as_deref());
                    if ep.hostname.as_deref().or(pod_name) != Some(h) {
                        continue;
                    }
                }
                let (is_ready, is_terminating_serving) = conditions(ep);
                let bucket = if is_ready {
                    &mut ready
                } else if is_terminating_serving {
                    &mut terminating
                } else {
                    continue;
                };
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let addr = SocketAddr::new(ip, endpoint_port);
                    let endpoint = self.slice_endpoint(ns, name, addr, ep);
                    bucket.insert(addr, endpoint);
                }
            }
        }
        // Terminating-but-serving endpoints only stand in when nothing is ready.
        Resolution::Endpoints(if ready.is_empty() { terminating } else { ready })
    }

    fn slice_endpoint(
        &self,
        ns: &str,
        svc: &str,
        addr: SocketAddr,
        ep: &SliceEndpoint,
    ) -> Endpoint {
        let mut labels = BTreeMap::new();
        labels.insert("namespace".to_owned(), ns.to_owned());
        labels.insert("service".to_owned(), svc.to_owned());
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let name = r.name.clone()?;
                labels.insert("pod".to_owned(), name.clone());
                let pod_ns = r.namespace.clone().unwrap_or_else(|| ns.to_owned());
                self.pods.get(&(pod_ns, name))
            });
        self.endpoint(addr, labels, pod)
    }

    /// An endpoint with the pod's labels, owner and (when meshed) identity.
    fn endpoint(
        &self,
        addr: SocketAddr,
        mut labels: BTreeMap<String, String>,
        pod: Option<&Pod>,
    ) -> Endpoint {
        let mut identity = None;
        let mut protocol_hint = None;
        if let Some(pod) = pod {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(name) = &pod.metadata.name {
                labels.insert("pod".to_owned(), name.clone());
            }
            if let Some((kind, name)) = self.owner(pod) {
                labels.insert(kind.to_owned(), name);
            }
            if is_meshed(pod) {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref())
                    .unwrap_or("default");
                identity = Some(format!(
                    "{sa}.{ns}.serviceaccount.identity.mesh.{}",
                    self.config.trust_domain
                ));
                protocol_hint = Some(ProtocolHint::H2);
            }
        }
        Endpoint {
            addr,
            weight: DEFAULT_WEIGHT,
            labels,
            identity,
            protocol_hint,
        }
    }

    /// The pod's owning workload as (label, name): its controller, through its ReplicaSet to a
    /// Deployment. A ReplicaSet the index does not hold is taken as a Deployment's when the pod
    /// has a `pod-template-hash` label that ends the ReplicaSet's name.
    fn owner(&self, pod: &Pod) -> Option<(&'static str, String)> {
        let owner = controller_of(&pod.metadata)?;
        let label = match owner.kind.as_str() {
            "ReplicaSet" => {
                let ns = pod
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                if let Some(rs) = self.replicasets.get(&(ns, owner.name.clone())) {
                    return Some(match controller_of(&rs.metadata) {
                        Some(o) if o.kind == "Deployment" => ("deployment", o.name.clone()),
                        _ => ("replicaset", owner.name.clone()),
                    });
                }
                let hash = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"));
                return Some(
                    match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                        Some(deployment) => ("deployment", deployment.to_owned()),
                        None => ("replicaset", owner.name.clone()),
                    },
                );
            }
            "StatefulSet" => "statefulset",
            "DaemonSet" => "daemonset",
            "Job" => "job",
            _ => return None,
        };
        Some((label, owner.name.clone()))
    }
}

// === helpers ===

fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Whether the pod runs the mesh proxy: a container, or an init container (native sidecar),
/// named [`PROXY_CONTAINER`]. The `mesh.io/inject` annotation alone does not count: it asks the
/// injector for a proxy, and a pod that was not injected has none to terminate mTLS.
pub fn is_meshed(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

/// The endpoint port of a slice for a service port: the slice port named like the service port
/// (how Kubernetes names them), else the one named like a named targetPort, else a numeric
/// targetPort; a headless service without that port passes the port through.
fn endpoint_port(svc_port: Option<&ServicePort>, port: u16, slice: &EndpointSlice) -> Option<u16> {
    let Some(sp) = svc_port else {
        return Some(port);
    };
    let slice_ports = slice.ports.as_deref().unwrap_or_default();
    let named = |name: Option<&str>| {
        slice_ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == name.unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
    };
    if let Some(p) = named(sp.name.as_deref()) {
        return Some(p);
    }
    match &sp.target_port {
        Some(IntOrString::String(name)) => named(Some(name)),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        None => Some(port),
    }
}

/// (ready, terminating-but-serving) of a slice endpoint. Unset `ready` and `serving` mean
/// ready, as the EndpointSlice API says.
fn conditions(ep: &SliceEndpoint) -> (bool, bool) {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    (ready && !terminating, serving && terminating)
}
