//! The one index of Kubernetes objects (Services, EndpointSlices, Pods, ReplicaSets, the
//! Gateway API routes and `HTTPFault`s of `routes.rs`, the `MetaRoute`s of `meta.rs`, and the
//! inbound policy resources of `inbound.rs`), how a watch target resolves to endpoints against
//! it, its outbound policy, and a pod port's inbound policy.
//!
//! Both sources (kube-rs watchers and the folder of YAML) feed the same [`Index`]; everything
//! above it is shared. Resolution and policies are pure functions of the index, so they are
//! unit-tested without sockets (see `tests.rs`, `policy_tests.rs`, `meta_tests.rs` and
//! `inbound_tests.rs`).

pub mod inbound;
#[cfg(test)]
mod inbound_tests;
pub mod meta;
#[cfg(test)]
mod meta_tests;
#[cfg(test)]
mod policy_tests;
pub mod routes;
mod target;
#[cfg(test)]
mod tests;

pub use target::{AuthorityError, Target};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use inbound::{
    AuthorizationPolicy, Checked, HttpLocalRateLimitPolicy, MeshTlsAuthentication,
    NetworkAuthentication, Server,
};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::destination::{Endpoint, ProtocolHint, DEFAULT_WEIGHT};
use mesh_api::policy::{OutboundPolicy, Parent};
use meta::MetaRoute;
use routes::{HttpFault, ParentConditions, RouteObject, RouteStatus};

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
    /// A Gateway API HTTPRoute, validated.
    HttpRoute(Box<RouteObject>),
    /// A Gateway API GRPCRoute, validated.
    GrpcRoute(Box<RouteObject>),
    /// A `policy.mesh.io` HTTPFault.
    HttpFault(Box<HttpFault>),
    /// A `policy.mesh.io` Server, validated.
    Server(Box<Checked<Server>>),
    /// A `policy.mesh.io` AuthorizationPolicy, validated.
    AuthorizationPolicy(Box<Checked<AuthorizationPolicy>>),
    /// A `policy.mesh.io` MeshTLSAuthentication, validated.
    MeshTlsAuthentication(Box<Checked<MeshTlsAuthentication>>),
    /// A `policy.mesh.io` NetworkAuthentication, validated.
    NetworkAuthentication(Box<Checked<NetworkAuthentication>>),
    /// A `policy.mesh.io` HTTPLocalRateLimitPolicy, validated.
    HttpLocalRateLimitPolicy(Box<Checked<HttpLocalRateLimitPolicy>>),
    /// A `policy.mesh.io` MetaRoute, validated.
    MetaRoute(Box<Checked<MetaRoute>>),
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
    /// HTTPRoute.
    HttpRoute,
    /// GRPCRoute.
    GrpcRoute,
    /// HTTPFault.
    HttpFault,
    /// Server.
    Server,
    /// AuthorizationPolicy.
    AuthorizationPolicy,
    /// MeshTLSAuthentication.
    MeshTlsAuthentication,
    /// NetworkAuthentication.
    NetworkAuthentication,
    /// HTTPLocalRateLimitPolicy.
    HttpLocalRateLimitPolicy,
    /// MetaRoute.
    MetaRoute,
}

impl Kind {
    /// The kind as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::HttpFault => "HTTPFault",
            Kind::Server => "Server",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshTlsAuthentication => "MeshTLSAuthentication",
            Kind::NetworkAuthentication => "NetworkAuthentication",
            Kind::HttpLocalRateLimitPolicy => "HTTPLocalRateLimitPolicy",
            Kind::MetaRoute => "MetaRoute",
        }
    }
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
    http_routes: HashMap<NsName, RouteObject>,
    grpc_routes: HashMap<NsName, RouteObject>,
    faults: HashMap<NsName, HttpFault>,
    // The inbound policy resources, ordered so that a namespace's are one range.
    servers: BTreeMap<NsName, Checked<Server>>,
    authorization_policies: BTreeMap<NsName, Checked<AuthorizationPolicy>>,
    meshtls_authentications: BTreeMap<NsName, Checked<MeshTlsAuthentication>>,
    network_authentications: BTreeMap<NsName, Checked<NetworkAuthentication>>,
    rate_limits: BTreeMap<NsName, Checked<HttpLocalRateLimitPolicy>>,
    meta_routes: BTreeMap<NsName, Checked<MetaRoute>>,
    /// Bumped by every change that can change a policy (Services, routes, HTTPFaults,
    /// MetaRoutes, the inbound policy resources).
    policy_version: u64,
    /// Each pod's stamp: a new one whenever the pod is applied, none once it is deleted (see
    /// [`Index::pod_stamp`]).
    pod_stamps: HashMap<NsName, u64>,
    /// The last stamp given.
    last_pod_stamp: u64,
}

/// What the controller reports on one route: its Service parents' conditions, next to the
/// status the API holds (see [`routes::merge_status`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteReport {
    /// HTTPRoute or GRPCRoute.
    pub kind: Kind,
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`: what the status was computed from.
    pub resource_version: Option<String>,
    /// The status the route holds now.
    pub current: Option<RouteStatus>,
    /// One entry per Service parentRef.
    pub parents: Vec<ParentConditions>,
}

impl Object {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::ReplicaSet(o) => (Kind::ReplicaSet, &o.metadata),
            Object::HttpRoute(o) => (Kind::HttpRoute, o.metadata()),
            Object::GrpcRoute(o) => (Kind::GrpcRoute, o.metadata()),
            Object::HttpFault(o) => (Kind::HttpFault, &o.metadata),
            Object::Server(o) => (Kind::Server, o.metadata()),
            Object::AuthorizationPolicy(o) => (Kind::AuthorizationPolicy, o.metadata()),
            Object::MeshTlsAuthentication(o) => (Kind::MeshTlsAuthentication, o.metadata()),
            Object::NetworkAuthentication(o) => (Kind::NetworkAuthentication, o.metadata()),
            Object::HttpLocalRateLimitPolicy(o) => (Kind::HttpLocalRateLimitPolicy, o.metadata()),
            Object::MetaRoute(o) => (Kind::MetaRoute, o.metadata()),
        };
        ObjectKey {
            kind,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// What is worth a warning about the object when a source reads it: why a route or an
    /// inbound policy resource is not served, an unusable HTTPFault, annotations that are
    /// ignored. Empty for a sound object.
    pub fn warnings(&self) -> Vec<String> {
        fn not_served<T: inbound::Spec>(kind: &str, o: &Checked<T>) -> Vec<String> {
            let what = match kind {
                "MeshTLSAuthentication" | "NetworkAuthentication" => {
                    "cannot be used (the AuthorizationPolicies that require it authorize nothing)"
                }
                _ => "is not served",
            };
            o.valid
                .as_ref()
                .err()
                .map(|e| format!("the {kind} {what}: {e}"))
                .into_iter()
                .collect()
        }
        match self {
            Object::Service(svc) => {
                routes::service_annotation_errors(svc.metadata.annotations.as_ref())
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            }
            Object::HttpRoute(r) | Object::GrpcRoute(r) => r.warnings(),
            Object::HttpFault(f) => routes::fault(f).err().into_iter().collect(),
            Object::Server(o) => not_served("Server", o),
            Object::AuthorizationPolicy(o) => not_served("AuthorizationPolicy", o),
            Object::MeshTlsAuthentication(o) => not_served("MeshTLSAuthentication", o),
            Object::NetworkAuthentication(o) => not_served("NetworkAuthentication", o),
            Object::HttpLocalRateLimitPolicy(o) => not_served("HTTPLocalRateLimitPolicy", o),
            Object::MetaRoute(o) => not_served("MetaRoute", o),
            Object::EndpointSlice(_) | Object::Pod(_) | Object::ReplicaSet(_) => Vec::new(),
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
            Object::HttpRoute(route) => {
                self.policy_version += 1;
                self.http_routes.insert(nn, *route);
            }
            Object::GrpcRoute(route) => {
                self.policy_version += 1;
                self.grpc_routes.insert(nn, *route);
            }
            Object::HttpFault(fault) => {
                self.policy_version += 1;
                self.faults.insert(nn, *fault);
            }
            Object::Server(o) => {
                self.policy_version += 1;
                self.servers.insert(nn, *o);
            }
            Object::AuthorizationPolicy(o) => {
                self.policy_version += 1;
                self.authorization_policies.insert(nn, *o);
            }
            Object::MeshTlsAuthentication(o) => {
                self.policy_version += 1;
                self.meshtls_authentications.insert(nn, *o);
            }
            Object::NetworkAuthentication(o) => {
                self.policy_version += 1;
                self.network_authentications.insert(nn, *o);
            }
            Object::HttpLocalRateLimitPolicy(o) => {
                self.policy_version += 1;
                self.rate_limits.insert(nn, *o);
            }
            Object::MetaRoute(o) => {
                self.policy_version += 1;
                self.meta_routes.insert(nn, *o);
            }
            Object::Service(svc) => {
                self.policy_version += 1;
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
                self.last_pod_stamp += 1;
                self.pod_stamps.insert(nn.clone(), self.last_pod_stamp);
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
            Kind::HttpRoute => {
                self.policy_version += u64::from(self.http_routes.remove(&nn).is_some());
            }
            Kind::GrpcRoute => {
                self.policy_version += u64::from(self.grpc_routes.remove(&nn).is_some());
            }
            Kind::HttpFault => {
                self.policy_version += u64::from(self.faults.remove(&nn).is_some());
            }
            Kind::Server => {
                self.policy_version += u64::from(self.servers.remove(&nn).is_some());
            }
            Kind::AuthorizationPolicy => {
                self.policy_version += u64::from(self.authorization_policies.remove(&nn).is_some());
            }
            Kind::MeshTlsAuthentication => {
                self.policy_version +=
                    u64::from(self.meshtls_authentications.remove(&nn).is_some());
            }
            Kind::NetworkAuthentication => {
                self.policy_version +=
                    u64::from(self.network_authentications.remove(&nn).is_some());
            }
            Kind::HttpLocalRateLimitPolicy => {
                self.policy_version += u64::from(self.rate_limits.remove(&nn).is_some());
            }
            Kind::MetaRoute => {
                self.policy_version += u64::from(self.meta_routes.remove(&nn).is_some());
            }
            Kind::Service => {
                if let Some(svc) = self.services.remove(&nn) {
                    self.policy_version += 1;
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
                self.pod_stamps.remove(&nn);
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
        let version = self.policy_version + 1;
        let last_pod_stamp = self.last_pod_stamp;
        *self = Index::new(self.config.clone());
        self.policy_version = version;
        // Stamps stay unique across resets: a stamp seen before never comes back.
        self.last_pod_stamp = last_pod_stamp;
        for object in objects {
            self.apply(object);
        }
    }

    /// The keys of every object of `kind`.
    pub fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        fn keys<V>(map: &BTreeMap<NsName, V>) -> Vec<&NsName> {
            map.keys().collect()
        }
        let names: Vec<&NsName> = match kind {
            Kind::Service => self.services.keys().collect(),
            Kind::EndpointSlice => self.slices.keys().collect(),
            Kind::Pod => self.pods.keys().collect(),
            Kind::ReplicaSet => self.replicasets.keys().collect(),
            Kind::HttpRoute => self.http_routes.keys().collect(),
            Kind::GrpcRoute => self.grpc_routes.keys().collect(),
            Kind::HttpFault => self.faults.keys().collect(),
            Kind::Server => keys(&self.servers),
            Kind::AuthorizationPolicy => keys(&self.authorization_policies),
            Kind::MeshTlsAuthentication => keys(&self.meshtls_authentications),
            Kind::NetworkAuthentication => keys(&self.network_authentications),
            Kind::HttpLocalRateLimitPolicy => keys(&self.rate_limits),
            Kind::MetaRoute => keys(&self.meta_routes),
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
                    let endpoint = self.endpoint(*addr, labels, Some(pod), None);
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
        let codec = svc_port.and_then(meta::codec);
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
                    let endpoint = self.slice_endpoint(ns, name, addr, ep, codec);
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
        codec: Option<&str>,
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
        self.endpoint(addr, labels, pod, codec)
    }

    /// An endpoint with the pod's labels, owner and (when meshed) identity. Its hint is the
    /// codec of the Service port it was resolved through (`codec`), meshed or not; else `h2`
    /// when meshed.
    fn endpoint(
        &self,
        addr: SocketAddr,
        mut labels: BTreeMap<String, String>,
        pod: Option<&Pod>,
        codec: Option<&str>,
    ) -> Endpoint {
        let mut identity = None;
        let mut protocol_hint = codec.map(|c| ProtocolHint::Codec(c.to_owned()));
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
                identity = Some(self.service_account_identity(ns, sa));
                protocol_hint.get_or_insert(ProtocolHint::H2);
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

    /// The mesh identity of the ServiceAccount `namespace/sa`:
    /// `<sa>.<ns>.serviceaccount.identity.mesh.<trust domain>`.
    pub fn service_account_identity(&self, namespace: &str, sa: &str) -> String {
        format!(
            "{sa}.{namespace}.serviceaccount.identity.mesh.{}",
            self.config.trust_domain
        )
    }

    /// The pod's stamp: it changes whenever the pod is applied (so whenever its labels or
    /// ports may have changed), and is `None` while the index has no such pod. The inbound
    /// watches of a pod are recomputed when its stamp moves, not at every Pod event.
    pub fn pod_stamp(&self, namespace: &str, name: &str) -> Option<u64> {
        self.pod_stamps
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
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

// === policy ===

impl Index {
    /// A number that changes whenever a policy may have changed (a Service, a route, an
    /// HTTPFault, a MetaRoute or an inbound policy resource was added, changed or removed); Pods and
    /// EndpointSlices leave it alone (an inbound policy also follows its pod: see
    /// [`Index::pod_stamp`]).
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    /// The outbound policy of `target` for a client in `client_ns`: the routes of the Service
    /// port it names, in Gateway API's tie-break order (oldest first, then namespace, then
    /// name). A route in the Service's namespace (a producer route) applies to every client; a
    /// route in another namespace (a consumer route) only to clients in its namespace, and
    /// those clients then ignore the producer routes. A port whose `appProtocol` names a codec
    /// has that `codec` and its MetaRoutes, chosen and ordered the same way (see `meta.rs`).
    /// Anything that is not a Service port (or its ClusterIP) has the default policy.
    pub fn outbound_policy(&self, target: &Target, client_ns: Option<&str>) -> OutboundPolicy {
        let (ns, name, port) = match target {
            Target::Service {
                namespace,
                name,
                port,
                ..
            } => (namespace.as_str(), name.as_str(), *port),
            Target::Addr(addr) => match self.cluster_ips.get(&addr.ip()) {
                Some((ns, name)) => (ns.as_str(), name.as_str(), addr.port()),
                None => return OutboundPolicy::default(),
            },
            Target::External(_) => return OutboundPolicy::default(),
        };
        if self.service_port_exists(ns, name, port).is_err() {
            return OutboundPolicy::default();
        }
        let annotations = self
            .services
            .get(&(ns.to_owned(), name.to_owned()))
            .and_then(|s| s.metadata.annotations.as_ref());
        let attached: Vec<&RouteObject> = self
            .routes()
            .filter(|r| r.invalid.is_none())
            .filter(|r| {
                r.service_parents().any(|(_, p)| {
                    p.namespace == ns && p.name == name && p.port.is_none_or(|p| p == port)
                })
            })
            .collect();
        let consumer: Vec<&RouteObject> = attached
            .iter()
            .copied()
            .filter(|r| r.namespace() != ns && Some(r.namespace()) == client_ns)
            .collect();
        let mut chosen = if consumer.is_empty() {
            attached
                .into_iter()
                .filter(|r| r.namespace() == ns)
                .collect()
        } else {
            consumer
        };
        chosen.sort_by(|a, b| route_order(a).cmp(&route_order(b)));
        let mut unresolved = Vec::new();
        let mut routes: Vec<_> = chosen
            .into_iter()
            .map(|r| routes::convert(r, (ns, name), self, &mut unresolved))
            .collect();
        // GAMMA: a rule that names no backend sends its requests to the parent Service.
        let parent_backend = mesh_api::policy::Backend {
            authority: format!("{name}.{ns}.svc.{}:{port}", self.config.cluster_domain),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            port,
            weight: 1,
            error: None,
        };
        for rule in routes.iter_mut().flat_map(|r| r.rules.iter_mut()) {
            if rule.backends.is_empty() {
                rule.backends.push(parent_backend.clone());
            }
        }
        // MetaRoutes only mean something where the proxy decodes requests: on codec ports.
        let codec = self.port_codec(ns, name, port);
        let meta_routes = match codec {
            Some(_) => self.meta_routes((ns, name, port), client_ns, &parent_backend),
            None => Vec::new(),
        };
        OutboundPolicy {
            parent: Some(Parent {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                port,
            }),
            routes,
            retry: routes::retry_annotations(annotations).0,
            retry_budget: routes::budget_annotations(annotations).0,
            codec: codec.map(str::to_owned),
            meta_routes,
        }
    }

    /// What the controller reports on every route that has a Service parentRef (or had one:
    /// its entries are then removed).
    pub fn route_reports(&self) -> Vec<RouteReport> {
        let mut reports = Vec::new();
        for (kind, map) in [
            (Kind::HttpRoute, &self.http_routes),
            (Kind::GrpcRoute, &self.grpc_routes),
        ] {
            for route in map.values() {
                let parents: Vec<ParentConditions> = route
                    .service_parents()
                    .map(|(parent_ref, p)| self.parent_conditions(route, parent_ref, &p))
                    .collect();
                let has_ours = route.status().is_some_and(|s| {
                    s.parents
                        .iter()
                        .any(|p| p.controller_name == routes::CONTROLLER_NAME)
                });
                if parents.is_empty() && !has_ours {
                    continue;
                }
                reports.push(RouteReport {
                    kind,
                    namespace: route.namespace().to_owned(),
                    name: route.name().to_owned(),
                    generation: route.metadata().generation,
                    resource_version: route.metadata().resource_version.clone(),
                    current: route.status().cloned(),
                    parents,
                });
            }
        }
        reports
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        reports
    }

    fn parent_conditions(
        &self,
        route: &RouteObject,
        parent_ref: &routes::ParentRef,
        parent: &routes::ServiceParent,
    ) -> ParentConditions {
        let accepted = match &route.invalid {
            Some(invalid) => Err((invalid.reason, invalid.message.clone())),
            None => match parent.port {
                Some(port) => self.service_port_exists(&parent.namespace, &parent.name, port),
                None => self
                    .services
                    .contains_key(&(parent.namespace.clone(), parent.name.clone()))
                    .then_some(())
                    .ok_or_else(|| {
                        format!("Service {}/{} not found", parent.namespace, parent.name)
                    }),
            }
            .map_err(|message| ("NoMatchingParent", message)),
        };
        let mut unresolved = Vec::new();
        routes::convert(
            route,
            (&parent.namespace, &parent.name),
            self,
            &mut unresolved,
        );
        let resolved_refs = match unresolved.first() {
            None => Ok(()),
            Some(first) => Err((
                first.reason,
                unresolved
                    .iter()
                    .map(|u| u.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        };
        ParentConditions {
            parent_ref: parent_ref.clone(),
            accepted,
            resolved_refs,
        }
    }

    fn routes(&self) -> impl Iterator<Item = &RouteObject> {
        self.http_routes.values().chain(self.grpc_routes.values())
    }

    /// `Ok` when the Service exists and forwards `port` (a headless Service forwards any).
    fn service_port_exists(&self, ns: &str, name: &str, port: u16) -> Result<(), String> {
        let Some(svc) = self.services.get(&(ns.to_owned(), name.to_owned())) else {
            return Err(format!("Service {ns}/{name} not found"));
        };
        let spec = svc.spec.as_ref();
        let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        let declared = spec
            .and_then(|s| s.ports.as_ref())
            .is_some_and(|ports| ports.iter().any(|p| p.port == i32::from(port)));
        if declared || headless {
            Ok(())
        } else {
            Err(format!("Service {ns}/{name} has no port {port}"))
        }
    }
}

impl routes::Lookup for Index {
    fn service_port(&self, ns: &str, name: &str, port: u16) -> Result<(), String> {
        self.service_port_exists(ns, name, port)
    }

    fn fault(&self, ns: &str, name: &str) -> Option<&HttpFault> {
        self.faults.get(&(ns.to_owned(), name.to_owned()))
    }

    fn cluster_domain(&self) -> &str {
        &self.config.cluster_domain
    }

    fn service_annotations(&self, ns: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        self.services
            .get(&(ns.to_owned(), name.to_owned()))
            .and_then(|s| s.metadata.annotations.as_ref())
    }
}

/// Gateway API's tie-break order: the oldest first (a route without a creation time last),
/// then namespace, then name (then kind, so the order is total).
fn route_order(r: &RouteObject) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &str, &str, &str) {
    let created = r.metadata().creation_timestamp.as_ref().map(|t| t.0);
    (
        created.is_none(),
        created,
        r.namespace(),
        r.name(),
        r.kind().as_str(),
    )
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
