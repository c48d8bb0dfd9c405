//! The `policy.mesh.io/v1alpha1` inbound policy resources (Linkerd's `policy.linkerd.io` model):
//! `Server`, `AuthorizationPolicy`, `MeshTLSAuthentication`, `NetworkAuthentication` and
//! `HTTPLocalRateLimitPolicy`; their validation; and [`Index::inbound_policy`], the inbound
//! policy of one port of one pod in the wire's shape (`mesh_api::inbound`).
//!
//! Like the routes of `routes.rs`, each object is validated once, when it is decoded
//! ([`Checked::new`]): an invalid one stays in the index (a source logs why) but is never
//! served. What depends on other objects is resolved when a policy is computed:
//!
//! - A **Server** selects the pods of its namespace (`podSelector`: `matchLabels` and
//!   `matchExpressions`) and one port: a number, or a name that one of the pod's containers
//!   gives the port. When several Servers select the same pod and port, the oldest
//!   (`creationTimestamp`, then name) is served and the others are a warning.
//! - An **AuthorizationPolicy** targets a Server, an HTTPRoute or GRPCRoute whose parent is a
//!   Server (it then authorizes that route's requests only), or its own Namespace (every
//!   Server in it). Every one of its `requiredAuthenticationRefs` must hold: each is one
//!   [`Requirement`]. A reference to a missing or invalid authentication makes the whole policy
//!   authorize nothing (it is left out, and [`Index::inbound_warnings`] says why), so a typo
//!   never opens a port.
//! - A **MeshTLSAuthentication** names identities: patterns (`*`, `*.suffix`, exact), or
//!   `identityRefs` to a ServiceAccount (`<sa>.<ns>.serviceaccount.identity.mesh.<td>`) or a
//!   Namespace (`*.<ns>.serviceaccount.identity.mesh.<td>`).
//! - A **NetworkAuthentication** names networks, each a CIDR less its exceptions.
//! - An **HTTPLocalRateLimitPolicy** targets a Server: `total`, per-`identity`, and `overrides`
//!   for the ServiceAccounts of `clientRefs`. Several on one Server: the oldest is served.
//!
//! ```
//! use mesh_controller::index::{Index, IndexConfig};
//! use mesh_controller::source::folder::parse_yaml;
//! let (objects, _) = parse_yaml("
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: web-0, namespace: demo, labels: {app: web}}
//! spec: {containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]}
//! ---
//! apiVersion: policy.mesh.io/v1alpha1
//! kind: Server
//! metadata: {name: web-http, namespace: demo}
//! spec: {podSelector: {matchLabels: {app: web}}, port: http, proxyProtocol: HTTP/1}
//! ");
//! let mut index = Index::new(IndexConfig::default());
//! objects.into_iter().for_each(|o| index.apply(o));
//! let policy = index.inbound_policy("demo", "web-0", 8080);
//! assert_eq!(policy.server.unwrap().name, "web-http");
//! assert!(policy.authorizations.is_empty()); // `deny`: nobody yet
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::inbound::{
    Access, Authorization, Cidr, IdentityMatch, InboundPolicy, InboundRoute, Network, ObjectRef,
    ProxyProtocol, RateLimit, RateLimitOverride, Requirement,
};
use mesh_api::policy::RouteKind;
use serde::{Deserialize, Serialize};

use super::routes::{self, GATEWAY_GROUP, POLICY_GROUP};
use super::{route_order, Index, NsName};

/// The `kind` of the authorizations an `AuthorizationPolicy` becomes on the wire.
pub const AUTHORIZATION_POLICY: &str = "AuthorizationPolicy";

// === the objects ===

/// What validation makes of a kind: its checked form, read when policies are computed.
pub trait Spec {
    /// The checked form.
    type Valid: Clone + Debug + PartialEq;
    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;
    /// Checks the object (`namespace` is its own), or says what is wrong: `spec.port: …`.
    fn check(&self, namespace: &str) -> Result<Self::Valid, String>;
}

/// An inbound policy object as the index holds it: the object and the outcome of its
/// validation (`Err`: never served, and why).
#[derive(Clone, Debug, PartialEq)]
pub struct Checked<T: Spec> {
    /// The object.
    pub object: T,
    /// Its checked form, or what is wrong with it.
    pub valid: Result<T::Valid, String>,
}

impl<T: Spec> Checked<T> {
    /// Validates `object` and keeps the outcome with it.
    pub fn new(object: T) -> Self {
        let namespace = object
            .metadata()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let valid = object.check(&namespace);
        Self { object, valid }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        self.object.metadata()
    }
}

/// A `Server`: a port of the pods a selector picks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What it selects.
    #[serde(default)]
    pub spec: ServerSpec,
}

/// `Server.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// The pods of the Server's namespace it selects (`{}`: every pod). Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// A port number, or the name of a container port. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// `unknown` (default: detect), `HTTP/1`, `HTTP/2`, `gRPC`, `opaque`, `TLS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// `deny` (default) or `audit`: what happens to what no authorization allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<String>,
}

/// A reference to another object, as `targetRef`, `requiredAuthenticationRefs[]`,
/// `identityRefs[]` and `clientRefs[]` spell it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectReference {
    /// The API group (`policy.mesh.io`, `gateway.networking.k8s.io`; empty for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The kind.
    pub kind: String,
    /// The name.
    #[serde(default)]
    pub name: String,
    /// The namespace, where the kind allows one (the referring object's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An `AuthorizationPolicy`: who may call a Server, one of its routes, or a namespace's Servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What it authorizes, and whom.
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// A Server, an HTTPRoute or GRPCRoute, or the policy's Namespace. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
    /// Authentications, all of which a client must meet (none: every client).
    #[serde(default)]
    pub required_authentication_refs: Vec<ObjectReference>,
}

/// A `MeshTLSAuthentication`: clients with one of these mesh identities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshTlsAuthentication {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The identities.
    #[serde(default)]
    pub spec: MeshTlsAuthenticationSpec,
}

/// `MeshTLSAuthentication.spec`: `identities`, `identityRefs`, or both (their union).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    /// Identity patterns: exact, `*`, or `*.suffix`.
    #[serde(default)]
    pub identities: Vec<String>,
    /// ServiceAccounts (`namespace` defaults to the object's) and Namespaces.
    #[serde(default)]
    pub identity_refs: Vec<ObjectReference>,
}

/// A `NetworkAuthentication`: clients from these networks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAuthentication {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The networks.
    #[serde(default)]
    pub spec: NetworkAuthenticationSpec,
}

/// `NetworkAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAuthenticationSpec {
    /// The networks (at least one).
    #[serde(default)]
    pub networks: Vec<NetworkSpec>,
}

/// One network: `{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// An address or `address/prefix`.
    #[serde(default)]
    pub cidr: String,
    /// Parts of it that do not count.
    #[serde(default)]
    pub except: Vec<String>,
}

/// An `HTTPLocalRateLimitPolicy`: requests per second a Server's proxies let through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpLocalRateLimitPolicy {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The limits.
    #[serde(default)]
    pub spec: RateLimitSpec,
}

/// `HTTPLocalRateLimitPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// The Server. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
    /// All requests together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Limit>,
    /// Each client identity on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Limit>,
    /// Limits of their own for some clients.
    #[serde(default)]
    pub overrides: Vec<OverrideSpec>,
}

/// `{requestsPerSecond: N}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// Requests per second, more than 0.
    pub requests_per_second: i64,
}

/// One of `HTTPLocalRateLimitPolicy.spec.overrides`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideSpec {
    /// Requests per second, for each client on its own.
    pub requests_per_second: i64,
    /// The clients: ServiceAccounts.
    #[serde(default)]
    pub client_refs: Vec<ObjectReference>,
}

// === checked forms ===

/// A checked Server.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerRule {
    /// The pods it selects.
    pub selector: Selector,
    /// The port.
    pub port: ServerPort,
    /// `proxyProtocol`.
    pub protocol: ProxyProtocol,
    /// `accessPolicy`.
    pub access: Access,
}

/// A Server's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPort {
    /// This port.
    Number(u16),
    /// The port a container of the pod names so.
    Name(String),
}

/// A label selector: every label and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expression {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A checked AuthorizationPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// What it authorizes.
    pub target: AuthorizationTarget,
    /// What it requires, all of it.
    pub requires: Vec<AuthenticationRef>,
}

/// What an AuthorizationPolicy authorizes (always in its own namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizationTarget {
    /// The Server of that name.
    Server(String),
    /// The route of that kind and name (when its parent is a Server).
    Route(RouteKind, String),
    /// Every Server of the namespace.
    Namespace,
}

/// One required authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthenticationRef {
    /// The `MeshTLSAuthentication` (namespace, name).
    MeshTls(NsName),
    /// The `NetworkAuthentication` (namespace, name).
    Network(NsName),
    /// The identity of the ServiceAccount (namespace, name), as Linkerd allows.
    ServiceAccount(NsName),
}

/// One identity source of a MeshTLSAuthentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A checked pattern, lowercase.
    Pattern(String),
    /// The identity of the ServiceAccount (namespace, name).
    ServiceAccount(NsName),
    /// Every ServiceAccount of the namespace.
    Namespace(String),
}

/// A checked HTTPLocalRateLimitPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitRule {
    /// The Server it limits.
    pub server: String,
    /// `total.requestsPerSecond`.
    pub total: Option<u32>,
    /// `identity.requestsPerSecond`.
    pub identity: Option<u32>,
    /// (requests per second, ServiceAccounts as (namespace, name)).
    pub overrides: Vec<(u32, Vec<NsName>)>,
}

// === validation ===

impl Spec for Server {
    type Valid = ServerRule;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, _namespace: &str) -> Result<ServerRule, String> {
        let spec = &self.spec;
        let selector = match &spec.pod_selector {
            Some(s) => Selector::new("spec.podSelector", s)?,
            None => return Err("spec.podSelector: required (`{}` selects every pod)".into()),
        };
        let port = match &spec.port {
            None => {
                return Err("spec.port: required (a port number or a container port name)".into())
            }
            Some(IntOrString::Int(n)) => u16::try_from(*n)
                .ok()
                .filter(|p| *p != 0)
                .map(ServerPort::Number)
                .ok_or_else(|| format!("spec.port: {n} is not within 1-65535"))?,
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => ServerPort::Number(n),
                _ if is_port_name(s) => ServerPort::Name(s.clone()),
                _ => {
                    return Err(format!(
                        "spec.port: {s:?} is not a port number or a container port name"
                    ))
                }
            },
        };
        let protocol = match spec.proxy_protocol.as_deref() {
            None => ProxyProtocol::Unknown,
            // The wire's spelling is the resource's.
            Some(p) => {
                serde_json::from_value(serde_json::Value::String(p.to_owned())).map_err(|_| {
                    format!(
                        "spec.proxyProtocol: {p:?} is not one of unknown, HTTP/1, HTTP/2, gRPC, \
                         opaque, TLS"
                    )
                })?
            }
        };
        let access = match spec.access_policy.as_deref() {
            None | Some("deny") => Access::Deny,
            Some("audit") => Access::Audit,
            Some(other) => {
                return Err(format!("spec.accessPolicy: {other:?} is not deny or audit"))
            }
        };
        Ok(ServerRule {
            selector,
            port,
            protocol,
            access,
        })
    }
}

impl Spec for AuthorizationPolicy {
    type Valid = AuthorizationRule;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, namespace: &str) -> Result<AuthorizationRule, String> {
        let Some(t) = &self.spec.target_ref else {
            return Err("spec.targetRef: required (a Server, an HTTPRoute or a Namespace)".into());
        };
        let field = "spec.targetRef";
        if t.namespace.as_deref().is_some_and(|n| n != namespace) {
            return Err(format!(
                "{field}.namespace: a policy targets objects of its own namespace, {namespace}"
            ));
        }
        let target = match (group(t), t.kind.as_str()) {
            (POLICY_GROUP, "Server") => AuthorizationTarget::Server(t.name.clone()),
            (GATEWAY_GROUP, "HTTPRoute") => {
                AuthorizationTarget::Route(RouteKind::Http, t.name.clone())
            }
            (GATEWAY_GROUP, "GRPCRoute") => {
                AuthorizationTarget::Route(RouteKind::Grpc, t.name.clone())
            }
            ("", "Namespace") if t.name == namespace => AuthorizationTarget::Namespace,
            ("", "Namespace") => {
                return Err(format!(
                    "{field}.name: a policy can only target its own Namespace, {namespace}, not \
                     {:?}",
                    t.name
                ))
            }
            (g, k) => {
                return Err(format!(
                    "{field}: {} is not supported: use {POLICY_GROUP}/Server, \
                     {GATEWAY_GROUP}/HTTPRoute, {GATEWAY_GROUP}/GRPCRoute or Namespace",
                    group_kind(g, k)
                ))
            }
        };
        if t.name.is_empty() {
            return Err(format!("{field}.name: required"));
        }
        let requires = self
            .spec
            .required_authentication_refs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("spec.requiredAuthenticationRefs[{i}]");
                if r.name.is_empty() {
                    return Err(format!("{field}.name: required"));
                }
                let key = (
                    r.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                    r.name.clone(),
                );
                match (group(r), r.kind.as_str()) {
                    (POLICY_GROUP, "MeshTLSAuthentication") => Ok(AuthenticationRef::MeshTls(key)),
                    (POLICY_GROUP, "NetworkAuthentication") => Ok(AuthenticationRef::Network(key)),
                    ("", "ServiceAccount") => {
                        check_label(&format!("{field}.name"), &key.1)?;
                        check_label(&format!("{field}.namespace"), &key.0)?;
                        Ok(AuthenticationRef::ServiceAccount(key))
                    }
                    (g, k) => Err(format!(
                        "{field}: {} is not supported: use {POLICY_GROUP}/MeshTLSAuthentication, \
                         {POLICY_GROUP}/NetworkAuthentication or ServiceAccount",
                        group_kind(g, k)
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(AuthorizationRule { target, requires })
    }
}

impl Spec for MeshTlsAuthentication {
    type Valid = Vec<IdentitySource>;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, namespace: &str) -> Result<Vec<IdentitySource>, String> {
        let spec = &self.spec;
        if spec.identities.is_empty() && spec.identity_refs.is_empty() {
            return Err("spec: one of identities and identityRefs is required".into());
        }
        let mut sources = Vec::new();
        for (i, id) in spec.identities.iter().enumerate() {
            IdentityMatch::parse(id).map_err(|e| format!("spec.identities[{i}]: {e}"))?;
            sources.push(IdentitySource::Pattern(id.trim().to_ascii_lowercase()));
        }
        for (i, r) in spec.identity_refs.iter().enumerate() {
            let field = format!("spec.identityRefs[{i}]");
            check_label(&format!("{field}.name"), &r.name)?;
            match (group(r), r.kind.as_str()) {
                ("", "ServiceAccount") => {
                    let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
                    check_label(&format!("{field}.namespace"), &ns)?;
                    sources.push(IdentitySource::ServiceAccount((ns, r.name.clone())));
                }
                ("", "Namespace") => sources.push(IdentitySource::Namespace(r.name.clone())),
                (g, k) => {
                    return Err(format!(
                        "{field}: {} is not supported: use ServiceAccount or Namespace",
                        group_kind(g, k)
                    ))
                }
            }
        }
        Ok(sources)
    }
}

impl Spec for NetworkAuthentication {
    type Valid = Vec<Network>;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, _namespace: &str) -> Result<Vec<Network>, String> {
        if self.spec.networks.is_empty() {
            return Err("spec.networks: at least one network is required".into());
        }
        self.spec
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let cidr = n
                    .cidr
                    .parse::<Cidr>()
                    .map_err(|e| format!("spec.networks[{i}].cidr: {e}"))?;
                let except = n
                    .except
                    .iter()
                    .enumerate()
                    .map(|(j, e)| {
                        e.parse::<Cidr>()
                            .map_err(|e| format!("spec.networks[{i}].except[{j}]: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Network { cidr, except })
            })
            .collect()
    }
}

impl Spec for HttpLocalRateLimitPolicy {
    type Valid = RateLimitRule;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, namespace: &str) -> Result<RateLimitRule, String> {
        let spec = &self.spec;
        let server = match &spec.target_ref {
            None => return Err("spec.targetRef: required (a Server)".into()),
            Some(t) if group(t) == POLICY_GROUP && t.kind == "Server" && !t.name.is_empty() => {
                if t.namespace.as_deref().is_some_and(|n| n != namespace) {
                    return Err(format!(
                        "spec.targetRef.namespace: a policy targets a Server of its own \
                         namespace, {namespace}"
                    ));
                }
                t.name.clone()
            }
            Some(t) => {
                return Err(format!(
                    "spec.targetRef: {} {:?} is not supported: use a {POLICY_GROUP}/Server",
                    group_kind(group(t), &t.kind),
                    t.name
                ))
            }
        };
        let rps = |field: &str, n: i64| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{field}: {n} is not within 1-{}", u32::MAX))
        };
        let total = spec
            .total
            .as_ref()
            .map(|l| rps("spec.total.requestsPerSecond", l.requests_per_second))
            .transpose()?;
        let identity = spec
            .identity
            .as_ref()
            .map(|l| rps("spec.identity.requestsPerSecond", l.requests_per_second))
            .transpose()?;
        let above_total = |field: &str, n: u32| match total {
            Some(t) if n > t => Err(format!(
                "{field}: {n} is more than total.requestsPerSecond ({t})"
            )),
            _ => Ok(()),
        };
        if let Some(n) = identity {
            above_total("spec.identity.requestsPerSecond", n)?;
        }
        let mut overrides = Vec::new();
        for (i, o) in spec.overrides.iter().enumerate() {
            let field = format!("spec.overrides[{i}]");
            let n = rps(&format!("{field}.requestsPerSecond"), o.requests_per_second)?;
            above_total(&format!("{field}.requestsPerSecond"), n)?;
            if o.client_refs.is_empty() {
                return Err(format!("{field}.clientRefs: at least one is required"));
            }
            let clients = o
                .client_refs
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let field = format!("{field}.clientRefs[{j}]");
                    if (group(r), r.kind.as_str()) != ("", "ServiceAccount") {
                        return Err(format!(
                            "{field}: {} is not supported: use ServiceAccount",
                            group_kind(group(r), &r.kind)
                        ));
                    }
                    let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
                    check_label(&format!("{field}.name"), &r.name)?;
                    check_label(&format!("{field}.namespace"), &ns)?;
                    Ok((ns, r.name.clone()))
                })
                .collect::<Result<_, String>>()?;
            overrides.push((n, clients));
        }
        Ok(RateLimitRule {
            server,
            total,
            identity,
            overrides,
        })
    }
}

// === impl Selector ===

impl Selector {
    /// Checks a Kubernetes label selector.
    pub fn new(field: &str, s: &LabelSelector) -> Result<Self, String> {
        let labels = s.match_labels.clone().unwrap_or_default();
        let mut expressions = Vec::new();
        for (i, e) in s.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let key = e.key.clone();
            if key.is_empty() {
                return Err(format!("{f}.key: required"));
            }
            expressions.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("{f}.values: required with operator {}", e.operator))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "{f}.values: must be empty with operator {}",
                        e.operator
                    ))
                }
                "In" => Expression::In(key, values),
                "NotIn" => Expression::NotIn(key, values),
                "Exists" => Expression::Exists(key),
                "DoesNotExist" => Expression::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "{f}.operator: {other:?} is not In, NotIn, Exists or DoesNotExist"
                    ))
                }
            });
        }
        Ok(Self {
            labels,
            expressions,
        })
    }

    /// Whether `labels` meet the selector (as Kubernetes decides: `NotIn` holds for a missing
    /// label; an empty selector selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

impl ServerPort {
    /// Whether the Server's port is `port` of `pod`: the number, or a container port of that
    /// name and number.
    pub fn matches(&self, pod: &Pod, port: u16) -> bool {
        match self {
            ServerPort::Number(n) => *n == port,
            ServerPort::Name(name) => pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
                c.ports.iter().flatten().any(|p| {
                    p.name.as_deref() == Some(name.as_str()) && p.container_port == i32::from(port)
                })
            }),
        }
    }
}

/// The paths of the pod's `httpGet` probes (liveness, readiness, startup) on `port`, by number
/// or by the name of a port of the probe's container; sorted, each once.
fn probe_paths(pod: &Pod, port: u16) -> Vec<String> {
    let mut paths = BTreeSet::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        for get in probes
            .into_iter()
            .flatten()
            .filter_map(|p| p.http_get.as_ref())
        {
            let on_port = match &get.port {
                IntOrString::Int(n) => *n == i32::from(port),
                IntOrString::String(name) => c.ports.iter().flatten().any(|p| {
                    p.name.as_deref() == Some(name.as_str()) && p.container_port == i32::from(port)
                }),
            };
            if on_port {
                let path = get.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
                // The kubelet sends the path as given; the query is not part of the match.
                let path = path.split('?').next().unwrap_or("/");
                paths.insert(path.to_owned());
            }
        }
    }
    paths.into_iter().collect()
}

fn group(r: &ObjectReference) -> &str {
    match r.group.as_deref() {
        None | Some("core") => "",
        Some(g) => g,
    }
}

fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        format!("kind {kind:?}")
    } else {
        format!("{group}/{kind}")
    }
}

/// A DNS label (a ServiceAccount's or Namespace's name as identities spell it).
fn check_label(field: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {s:?} is not a DNS label"))
    }
}

/// A container port name (IANA service name: up to 15 lowercase letters, digits and `-`).
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
}

// === the inbound policy ===

impl Index {
    /// The inbound policy of `port` of the pod `namespace/pod` (see the module's doc).
    pub fn inbound_policy(&self, namespace: &str, pod: &str, port: u16) -> InboundPolicy {
        self.inbound(namespace, pod, port).0
    }

    /// The inbound policy of a pod's port, with what is worth a warning about it (several
    /// Servers, or several rate limits, where one is served).
    ///
    /// No such pod (yet), or no Server selects the port: [`InboundPolicy::default`], without
    /// a server, so the proxy applies its default policy.
    pub fn inbound(&self, ns: &str, pod_name: &str, port: u16) -> (InboundPolicy, Vec<String>) {
        let mut warnings = Vec::new();
        let Some(pod) = self.pods.get(&(ns.to_owned(), pod_name.to_owned())) else {
            return (InboundPolicy::default(), warnings);
        };
        let probe_paths = probe_paths(pod, port);
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let mut servers: Vec<(&str, &Checked<Server>, &ServerRule)> =
            in_namespace(&self.servers, ns)
                .filter_map(|(name, s)| Some((name, s, s.valid.as_ref().ok()?)))
                .filter(|(_, _, r)| r.selector.matches(labels) && r.port.matches(pod, port))
                .collect();
        servers.sort_by(|a, b| age(a.1.metadata(), a.0).cmp(&age(b.1.metadata(), b.0)));
        let Some(&(server, _, rule)) = servers.first() else {
            let policy = InboundPolicy {
                probe_paths,
                ..InboundPolicy::default()
            };
            return (policy, warnings);
        };
        if servers.len() > 1 {
            let names: Vec<&str> = servers.iter().map(|s| s.0).collect();
            warnings.push(format!(
                "Servers {} of namespace {ns} all select port {port} of pod {pod_name}: the \
                 oldest, {server}, is served",
                names.join(", ")
            ));
        }
        let authorizations = self.authorizations(ns, |t| match t {
            AuthorizationTarget::Server(name) => name == server,
            AuthorizationTarget::Namespace => true,
            AuthorizationTarget::Route(..) => false,
        });
        let mut attached: Vec<_> = self
            .routes()
            .filter(|r| r.invalid.is_none() && r.namespace() == ns)
            .filter(|r| r.server_parents().any(|s| s == server))
            .collect();
        attached.sort_by(|a, b| route_order(a).cmp(&route_order(b)));
        let routes = attached
            .into_iter()
            .map(|r| InboundRoute {
                route: routes::inbound_route(r),
                authorizations: self.authorizations(ns, |t| {
                    *t == AuthorizationTarget::Route(r.kind(), r.name().to_owned())
                }),
            })
            .collect();
        let mut limits: Vec<(&str, &Checked<HttpLocalRateLimitPolicy>, &RateLimitRule)> =
            in_namespace(&self.rate_limits, ns)
                .filter_map(|(name, l)| Some((name, l, l.valid.as_ref().ok()?)))
                .filter(|(_, _, r)| r.server == server)
                .collect();
        limits.sort_by(|a, b| age(a.1.metadata(), a.0).cmp(&age(b.1.metadata(), b.0)));
        if limits.len() > 1 {
            let names: Vec<&str> = limits.iter().map(|l| l.0).collect();
            warnings.push(format!(
                "HTTPLocalRateLimitPolicies {} all target Server {ns}/{server}: the oldest, {}, \
                 is served",
                names.join(", "),
                limits[0].0
            ));
        }
        let rate_limit = limits.first().map(|&(name, _, r)| RateLimit {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            total: r.total,
            identity: r.identity,
            overrides: r
                .overrides
                .iter()
                .map(|(rps, clients)| RateLimitOverride {
                    requests_per_second: *rps,
                    identities: clients
                        .iter()
                        .map(|(ns, sa)| self.service_account_identity(ns, sa))
                        .collect(),
                })
                .collect(),
        });
        let policy = InboundPolicy {
            server: Some(ObjectRef {
                namespace: ns.to_owned(),
                name: server.to_owned(),
            }),
            protocol: rule.protocol,
            access: rule.access,
            authorizations,
            routes,
            rate_limit,
            probe_paths,
        };
        (policy, warnings)
    }

    /// Why some AuthorizationPolicies authorize nothing: each valid policy that requires a
    /// missing or invalid authentication, one line each, sorted.
    pub fn inbound_warnings(&self) -> Vec<String> {
        self.authorization_policies
            .iter()
            .filter_map(|((ns, name), p)| {
                let rule = p.valid.as_ref().ok()?;
                let error = self.requirements(rule).err()?;
                Some(format!(
                    "AuthorizationPolicy {ns}/{name} authorizes nothing: {error}"
                ))
            })
            .collect()
    }

    /// The authorizations of the valid policies of `ns` whose target `wanted` accepts and whose
    /// authentications all resolve, by name.
    fn authorizations(
        &self,
        ns: &str,
        wanted: impl Fn(&AuthorizationTarget) -> bool,
    ) -> Vec<Authorization> {
        in_namespace(&self.authorization_policies, ns)
            .filter_map(|(name, p)| {
                let rule = p.valid.as_ref().ok()?;
                if !wanted(&rule.target) {
                    return None;
                }
                Some(Authorization {
                    kind: AUTHORIZATION_POLICY.into(),
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    requires: self.requirements(rule).ok()?,
                })
            })
            .collect()
    }

    /// The requirements of a policy, each reference resolved; a missing or invalid
    /// authentication is an error (the policy then authorizes nothing).
    fn requirements(&self, rule: &AuthorizationRule) -> Result<Vec<Requirement>, String> {
        rule.requires
            .iter()
            .map(|r| match r {
                AuthenticationRef::MeshTls(key) => {
                    let sources =
                        resolve(&self.meshtls_authentications, key, "MeshTLSAuthentication")?;
                    Ok(Requirement::MeshTls {
                        identities: sources.iter().map(|s| self.identity_pattern(s)).collect(),
                    })
                }
                AuthenticationRef::Network(key) => Ok(Requirement::Network {
                    networks: resolve(&self.network_authentications, key, "NetworkAuthentication")?
                        .clone(),
                }),
                AuthenticationRef::ServiceAccount((ns, sa)) => Ok(Requirement::MeshTls {
                    identities: vec![self.service_account_identity(ns, sa)],
                }),
            })
            .collect()
    }

    fn identity_pattern(&self, source: &IdentitySource) -> String {
        match source {
            IdentitySource::Pattern(p) => p.clone(),
            IdentitySource::ServiceAccount((ns, sa)) => self.service_account_identity(ns, sa),
            IdentitySource::Namespace(ns) => {
                format!(
                    "*.{ns}.serviceaccount.identity.mesh.{}",
                    self.config.trust_domain
                )
            }
        }
    }
}

/// The checked form of the authentication `key` of `kind`, or why it cannot be used.
fn resolve<'a, T: Spec>(
    map: &'a BTreeMap<NsName, Checked<T>>,
    key: &NsName,
    kind: &str,
) -> Result<&'a T::Valid, String> {
    match map.get(key) {
        None => Err(format!("{kind} {}/{} not found", key.0, key.1)),
        Some(c) => c
            .valid
            .as_ref()
            .map_err(|e| format!("{kind} {}/{} is invalid: {e}", key.0, key.1)),
    }
}

/// The objects of `ns` in `map`, by name.
fn in_namespace<'a, V>(
    map: &'a BTreeMap<NsName, V>,
    ns: &'a str,
) -> impl Iterator<Item = (&'a str, &'a V)> + 'a {
    map.range((ns.to_owned(), String::new())..)
        .take_while(move |((n, _), _)| n == ns)
        .map(|((_, name), v)| (name.as_str(), v))
}

/// Which of two objects is older: the creation time (none last), then the name.
fn age<'a>(
    meta: &ObjectMeta,
    name: &'a str,
) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &'a str) {
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    (created.is_none(), created, name)
}
