//! The codec of a Service port and the `policy.mesh.io/v1alpha1` `MetaRoute`: routing of a
//! codec's requests (Redis, Thrift) by their metadata, in the outbound policy's wire format
//! (`mesh_api::policy::MetaRoute`).
//!
//! A Service port whose `appProtocol` is `mesh.io/<codec>`, with a codec the proxy has
//! (`mesh_api::codec_ports::CODECS`), carries that codec: its outbound policy says so (`codec`), and
//! every endpoint of it is hinted `{"codec": …}` in the destination watch, meshed or not.
//!
//! A MetaRoute attaches to Service ports (`parentRefs` of kind Service, a port or every port)
//! and is served in the outbound policy of those that carry a codec. Like the routes of
//! `routes.rs` and the inbound resources of `inbound.rs`, it is validated once, when it is
//! decoded ([`Checked::new`]): an invalid one (an unknown match type, an invalid regular
//! expression, an empty key…) stays in the index, and a source logs why with the field, but it
//! is never served. Its backends are resolved when a policy is computed, as an HTTPRoute's are:
//! an unknown Service is a backend with an `error`, and a rule without `backendRefs` goes to
//! the parent Service. Several MetaRoutes on one port come in Gateway API's tie-break order
//! (oldest first, then namespace/name), and a client namespace's own MetaRoutes for the Service
//! (consumer routes) replace the Service namespace's (producer routes), as for the other routes.
//! The controller writes no `status` on MetaRoutes.
//!
//! ```
//! use mesh_controller::index::{Index, IndexConfig, Target};
//! use mesh_controller::source::folder::parse_yaml;
//! let (objects, errors) = parse_yaml("
//! apiVersion: v1
//! kind: Service
//! metadata: {name: redis, namespace: demo}
//! spec: {clusterIP: 10.96.0.20, ports: [{port: 6379, appProtocol: mesh.io/redis}]}
//! ---
//! apiVersion: policy.mesh.io/v1alpha1
//! kind: MetaRoute
//! metadata: {name: sessions, namespace: demo}
//! spec:
//!   parentRefs: [{kind: Service, name: redis, port: 6379}]
//!   rules:
//!   - matches: [{metadata: [{key: key, type: Prefix, value: 'session:'}]}]
//!     timeout: 500ms
//! ");
//! assert!(errors.is_empty());
//! let mut index = Index::new(IndexConfig::default());
//! objects.into_iter().for_each(|o| index.apply(o));
//! let target = Target::parse("10.96.0.20:6379", None, "cluster.local").unwrap();
//! let policy = index.outbound_policy(&target, None);
//! assert_eq!(policy.codec.as_deref(), Some("redis"));
//! let rule = &policy.meta_routes[0].rules[0];
//! assert_eq!(rule.backends[0].authority, "redis.demo.svc.cluster.local:6379");
//! assert_eq!(rule.timeout_ms, Some(500));
//! ```

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::policy::{self, Backend, MetaMatch, MetaMatchKind, MetaMutation, MetaValueMatch};
use serde::{Deserialize, Serialize};

use super::inbound::{Checked, Spec};
use super::routes::{self, BackendRef, ParentRef, ServiceParent};
use super::Index;

// === the object ===

/// A `MetaRoute`: where a codec's requests to a Service go, by their metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaRoute {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What it routes.
    #[serde(default)]
    pub spec: MetaRouteSpec,
}

/// `MetaRoute.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaRouteSpec {
    /// The Service ports it attaches to (kind Service, group `""` or `core`). Required.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<MetaRouteRule>,
}

/// One rule of a MetaRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaRouteRule {
    /// Any of them selects the rule; none: every request.
    #[serde(default)]
    pub matches: Vec<MetaRouteMatch>,
    /// Where requests go; none: the parent Service.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Metadata keys set on the request.
    #[serde(default)]
    pub request_mutation: Vec<MutationSpec>,
    /// A Gateway API duration (`500ms`); `0s` or none: no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// One match: every metadata match must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaRouteMatch {
    /// The keys' matches.
    #[serde(default)]
    pub metadata: Vec<MetadataMatchSpec>,
}

/// A metadata key's match: `{key: key, type: Prefix, value: "session:"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataMatchSpec {
    /// The key (`command`, `key`, `method`, `type`). Required.
    #[serde(default)]
    pub key: String,
    /// `Exact` (default), `Prefix` or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The value, prefix or pattern.
    #[serde(default)]
    pub value: String,
}

/// A metadata key set on a request: `{key: method, value: get_v2}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MutationSpec {
    /// The key. Required.
    #[serde(default)]
    pub key: String,
    /// Its new value.
    #[serde(default)]
    pub value: String,
}

// === the checked form ===

/// A checked MetaRoute: its Service parents and its rules in the wire's shape, backends still
/// to resolve.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaRouteRules {
    /// The Service ports it attaches to.
    pub parents: Vec<ServiceParent>,
    /// The rules, in order.
    pub rules: Vec<CheckedRule>,
}

/// A checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedRule {
    /// The matches.
    pub matches: Vec<MetaMatch>,
    /// The backends as written (none: the parent Service).
    pub backend_refs: Vec<BackendRef>,
    /// `requestMutation`.
    pub request_mutation: Vec<MetaMutation>,
    /// `timeout` in milliseconds (`0s`: none).
    pub timeout_ms: Option<u64>,
}

impl Spec for MetaRoute {
    type Valid = MetaRouteRules;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, namespace: &str) -> Result<MetaRouteRules, String> {
        let spec = &self.spec;
        if spec.parent_refs.is_empty() {
            return Err("spec.parentRefs: required (a Service, and its port)".into());
        }
        let parents = spec
            .parent_refs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let field = format!("spec.parentRefs[{i}]");
                let group = p.group.as_deref().unwrap_or("");
                let kind = p.kind.as_deref().unwrap_or("Service");
                if !matches!(group, "" | "core") || kind != "Service" {
                    let what = if group.is_empty() {
                        kind.to_owned()
                    } else {
                        format!("{group}/{kind}")
                    };
                    return Err(format!(
                        "{field}: {what} is not supported: a MetaRoute's parent is a Service"
                    ));
                }
                if p.name.is_empty() {
                    return Err(format!("{field}.name: required"));
                }
                if p.port == Some(0) {
                    return Err(format!("{field}.port: 0 is not within 1-65535"));
                }
                Ok(ServiceParent {
                    namespace: p.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                    name: p.name.clone(),
                    port: p.port,
                })
            })
            .collect::<Result<_, String>>()?;
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| check_rule(&format!("spec.rules[{r}]"), rule))
            .collect::<Result<_, String>>()?;
        Ok(MetaRouteRules { parents, rules })
    }
}

fn check_rule(field: &str, rule: &MetaRouteRule) -> Result<CheckedRule, String> {
    let mut matches = Vec::with_capacity(rule.matches.len());
    for (m, rm) in rule.matches.iter().enumerate() {
        let mut metadata = Vec::with_capacity(rm.metadata.len());
        for (k, vm) in rm.metadata.iter().enumerate() {
            let f = format!("{field}.matches[{m}].metadata[{k}]");
            if vm.key.is_empty() {
                return Err(format!("{f}.key: required"));
            }
            let kind = match vm.kind.as_deref() {
                None | Some("Exact") => MetaMatchKind::Exact,
                Some("Prefix") => MetaMatchKind::Prefix,
                Some("RegularExpression") => {
                    routes::check_regex(&format!("{f}.value"), &vm.value).map_err(|e| e.message)?;
                    MetaMatchKind::RegularExpression
                }
                Some(other) => {
                    return Err(format!(
                        "{f}.type: {other:?} is not supported (Exact, Prefix or RegularExpression)"
                    ))
                }
            };
            metadata.push(MetaValueMatch {
                key: vm.key.clone(),
                kind,
                value: vm.value.clone(),
            });
        }
        matches.push(MetaMatch { metadata });
    }
    routes::check_backend_refs(field, &rule.backend_refs).map_err(|e| e.message)?;
    let request_mutation = rule
        .request_mutation
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.key.is_empty() {
                return Err(format!("{field}.requestMutation[{i}].key: required"));
            }
            Ok(MetaMutation {
                key: m.key.clone(),
                value: m.value.clone(),
            })
        })
        .collect::<Result<_, String>>()?;
    let timeout_ms = match &rule.timeout {
        None => None,
        Some(t) => {
            let d =
                routes::parse_gateway_duration(t).map_err(|e| format!("{field}.timeout: {e}"))?;
            (!d.is_zero()).then(|| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
    };
    Ok(CheckedRule {
        matches,
        backend_refs: rule.backend_refs.clone(),
        request_mutation,
        timeout_ms,
    })
}

/// The codec of a Service port: its `appProtocol`'s, when that is `mesh.io/<codec>`.
pub fn codec(port: &ServicePort) -> Option<&'static str> {
    mesh_api::codec_ports::app_protocol_codec(port.app_protocol.as_deref()?)
}

// === the policy ===

impl Index {
    /// The codec of the Service port `ns/name:port` (none for an undeclared port of a headless
    /// Service).
    pub(super) fn port_codec(&self, ns: &str, name: &str, port: u16) -> Option<&'static str> {
        self.services
            .get(&(ns.to_owned(), name.to_owned()))?
            .spec
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.port == i32::from(port))
            .and_then(codec)
    }

    /// The MetaRoutes of the Service port `ns/name:port` for a client in `client_ns`, converted,
    /// in tie-break order: the client namespace's own (consumer) MetaRoutes for the Service if
    /// it has any, else the Service namespace's (producer) ones. `parent` is the backend of a
    /// rule that names none.
    pub(super) fn meta_routes(
        &self,
        (ns, name, port): (&str, &str, u16),
        client_ns: Option<&str>,
        parent: &Backend,
    ) -> Vec<policy::MetaRoute> {
        let attached: Vec<(&str, &Checked<MetaRoute>, &MetaRouteRules)> = self
            .meta_routes
            .iter()
            .filter_map(|((route_ns, _), route)| {
                let valid = route.valid.as_ref().ok()?;
                valid
                    .parents
                    .iter()
                    .any(|p| {
                        p.namespace == ns && p.name == name && p.port.is_none_or(|p| p == port)
                    })
                    .then_some((route_ns.as_str(), route, valid))
            })
            .collect();
        let consumer: Vec<_> = attached
            .iter()
            .copied()
            .filter(|(route_ns, _, _)| *route_ns != ns && Some(*route_ns) == client_ns)
            .collect();
        let mut chosen = if consumer.is_empty() {
            attached
                .into_iter()
                .filter(|(route_ns, _, _)| *route_ns == ns)
                .collect()
        } else {
            consumer
        };
        chosen.sort_by(|a, b| order(a.0, a.1).cmp(&order(b.0, b.1)));
        chosen
            .into_iter()
            .map(|(route_ns, route, valid)| {
                let mut unresolved = Vec::new();
                let rules = valid
                    .rules
                    .iter()
                    .map(|rule| {
                        let mut backends = routes::resolve_backends(
                            route_ns,
                            &rule.backend_refs,
                            self,
                            &mut unresolved,
                        );
                        if backends.is_empty() {
                            backends.push(parent.clone());
                        }
                        policy::MetaRule {
                            matches: rule.matches.clone(),
                            backends,
                            request_mutation: rule.request_mutation.clone(),
                            timeout_ms: rule.timeout_ms,
                        }
                    })
                    .collect();
                policy::MetaRoute {
                    namespace: route_ns.to_owned(),
                    name: route.metadata().name.clone().unwrap_or_default(),
                    rules,
                }
            })
            .collect()
    }
}

/// Gateway API's tie-break order: the oldest first (one without a creation time last), then
/// namespace, then name.
fn order<'a>(
    ns: &'a str,
    route: &'a Checked<MetaRoute>,
) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &'a str, &'a str) {
    let meta = route.metadata();
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    (
        created.is_none(),
        created,
        ns,
        meta.name.as_deref().unwrap_or_default(),
    )
}
