//! `mesh check`'s `mesh-policy` category: the `policy.mesh.io` resources refer to what exists.
//! A Server that selects no pod is a warning (it may be written ahead of its workload); an
//! AuthorizationPolicy or HTTPLocalRateLimitPolicy whose target does not exist, and an
//! authentication an AuthorizationPolicy requires that does not exist, fail: the destination
//! controller then serves the policy without it (a missing authentication makes the policy
//! allow no one), which is rarely what its author meant. A MetaRoute whose parent Service does
//! not exist or whose parent port is not a codec port (`appProtocol: mesh.io/redis` or
//! `mesh.io/thrift`: it is then not served), or whose backend Service does not exist (that
//! backend's share fails), is a warning.
//!
//! The objects are read once ([`read`]), then checked by a pure function ([`checks`]). Without
//! the policy CRDs (the API server answers 404 for all six kinds) there is nothing to check,
//! and the category says so.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::Api;
use mesh_api::inbound::POLICY_GROUP;
use serde_json::Value;

use super::checks::{category, fail, ok, warn, Ctx};
use super::{Category, Check};

/// The category's name.
pub const CATEGORY: &str = "mesh-policy";

const SERVERS: &str = "every Server selects a pod";
const AUTHZ_TARGETS: &str =
    "every AuthorizationPolicy targets a Server, route or Namespace that exists";
const AUTHENTICATIONS: &str = "every authentication an AuthorizationPolicy requires exists";
const RATE_LIMIT_TARGETS: &str = "every HTTPLocalRateLimitPolicy targets a Server that exists";
const META_ROUTES: &str = "every MetaRoute's parent is a codec Service port and its backends exist";
const READ: &str = "the inbound policy resources can be read";

/// The Gateway API group of the routes an AuthorizationPolicy may target.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// One policy object: where it is, and its `spec`.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub namespace: String,
    pub name: String,
    pub spec: Value,
}

/// What the checks look at.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub servers: Vec<Object>,
    pub authorization_policies: Vec<Object>,
    pub rate_limits: Vec<Object>,
    /// `MeshTLSAuthentication`s and `NetworkAuthentication`s: (kind, namespace, name).
    pub authentications: BTreeSet<(String, String, String)>,
    /// `HTTPRoute`s and `GRPCRoute`s of the namespaces AuthorizationPolicies target routes in:
    /// (kind, namespace, name).
    pub routes: BTreeSet<(String, String, String)>,
    /// The ServiceAccounts of the namespaces AuthorizationPolicies require ServiceAccounts of:
    /// (namespace, name).
    pub service_accounts: BTreeSet<(String, String)>,
    /// The pods of each namespace that has Servers.
    pub pods: BTreeMap<String, Vec<Pod>>,
    pub meta_routes: Vec<Object>,
    /// The Services of the namespaces MetaRoutes name parents or backends in, by (namespace,
    /// name).
    pub services: BTreeMap<(String, String), Service>,
}

/// The category: the checks of the cluster's policy objects, or a line that says there is
/// nothing to check without the CRDs.
pub async fn policy(ctx: &Ctx) -> Category {
    match read(ctx).await {
        Ok(Some(objects)) => category(CATEGORY, checks(&objects)),
        Ok(None) => category(
            CATEGORY,
            vec![ok("no inbound policy to check")
                .with_detail("the policy.mesh.io CRDs are not installed")],
        ),
        Err(check) => category(CATEGORY, vec![check]),
    }
}

/// Reads what the checks need; `None` when none of the six policy kinds is served.
async fn read(ctx: &Ctx) -> Result<Option<Objects>, Check> {
    let mut served = false;
    let mut lists = Vec::new();
    for (kind, plural) in [
        ("Server", "servers"),
        ("AuthorizationPolicy", "authorizationpolicies"),
        ("HTTPLocalRateLimitPolicy", "httplocalratelimitpolicies"),
        ("MeshTLSAuthentication", "meshtlsauthentications"),
        ("NetworkAuthentication", "networkauthentications"),
        ("MetaRoute", "metaroutes"),
    ] {
        let list = list(ctx, POLICY_GROUP, kind, plural, None).await?;
        served |= list.is_some();
        lists.push(list.unwrap_or_default());
    }
    if !served {
        return Ok(None);
    }
    let [servers, authorization_policies, rate_limits, mesh_tls, networks, meta_routes] =
        <[Vec<Object>; 6]>::try_from(lists).unwrap_or_default();
    let mut objects = Objects {
        authentications: [
            ("MeshTLSAuthentication", mesh_tls),
            ("NetworkAuthentication", networks),
        ]
        .into_iter()
        .flat_map(|(kind, list)| {
            list.into_iter()
                .map(move |o| (kind.to_string(), o.namespace, o.name))
        })
        .collect(),
        servers,
        authorization_policies,
        rate_limits,
        meta_routes,
        ..Objects::default()
    };

    let namespaces: BTreeSet<String> = objects
        .servers
        .iter()
        .map(|s| s.namespace.clone())
        .collect();
    for ns in namespaces {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pods = ctx.call(READ, api.list(&ListParams::default())).await?;
        objects.pods.insert(ns, pods.items);
    }
    let mut route_namespaces: BTreeSet<(&str, String)> = BTreeSet::new();
    let mut account_namespaces: BTreeSet<String> = BTreeSet::new();
    for policy in &objects.authorization_policies {
        let target = reference(&policy.spec["targetRef"], &policy.namespace);
        if let Some(plural) = match target.kind.as_str() {
            "HTTPRoute" => Some("httproutes"),
            "GRPCRoute" => Some("grpcroutes"),
            _ => None,
        } {
            route_namespaces.insert((plural, policy.namespace.clone()));
        }
        for r in authentication_refs(policy) {
            if r.kind == "ServiceAccount" {
                account_namespaces.insert(r.namespace);
            }
        }
    }
    for (plural, ns) in route_namespaces {
        let kind = if plural == "httproutes" {
            "HTTPRoute"
        } else {
            "GRPCRoute"
        };
        let routes = list(ctx, GATEWAY_GROUP, kind, plural, Some(&ns)).await?;
        for route in routes.into_iter().flatten() {
            objects
                .routes
                .insert((kind.to_string(), route.namespace, route.name));
        }
    }
    let service_namespaces: BTreeSet<String> = objects
        .meta_routes
        .iter()
        .flat_map(|route| {
            let parents = service_refs(&route.spec["parentRefs"], &route.namespace);
            let backends = meta_rules(route)
                .flat_map(|rule| service_refs(&rule["backendRefs"], &route.namespace));
            parents
                .chain(backends)
                .map(|s| s.r.namespace)
                .collect::<Vec<_>>()
        })
        .collect();
    for ns in service_namespaces {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        let services = ctx.call(READ, api.list(&ListParams::default())).await?;
        for svc in services.items {
            let name = svc.metadata.name.clone().unwrap_or_default();
            objects.services.insert((ns.clone(), name), svc);
        }
    }
    for ns in account_namespaces {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
        let accounts = ctx.call(READ, api.list(&ListParams::default())).await?;
        for sa in accounts.items {
            let name = sa.metadata.name.unwrap_or_default();
            objects.service_accounts.insert((ns.clone(), name));
        }
    }
    Ok(Some(objects))
}

/// The objects of `group/v1alpha1` (or Gateway API's `v1`) `plural`, in `namespace` or all of
/// them; `None` when the API server does not serve the kind (its CRD is not installed).
async fn list(
    ctx: &Ctx,
    group: &str,
    kind: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Option<Vec<Object>>, Check> {
    let version = if group == GATEWAY_GROUP {
        "v1"
    } else {
        "v1alpha1"
    };
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    };
    let params = ListParams::default();
    let call = api.list(&params);
    match super::checks::within(ctx.timeout, READ, super::checks::API_SERVER, call).await? {
        Ok(list) => Ok(Some(
            list.items
                .into_iter()
                .map(|o| Object {
                    namespace: o.metadata.namespace.unwrap_or_default(),
                    name: o.metadata.name.unwrap_or_default(),
                    spec: o.data.get("spec").cloned().unwrap_or(Value::Null),
                })
                .collect(),
        )),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(super::checks::api_failure(READ, &e)),
    }
}

// === the checks ===

/// The checks of `objects`, one line each, naming every object that fails it.
pub fn checks(objects: &Objects) -> Vec<Check> {
    vec![
        servers(objects),
        authorization_targets(objects),
        authentications(objects),
        rate_limit_targets(objects),
        meta_routes(objects),
    ]
}

/// A reference as a policy writes it: `targetRef`, `requiredAuthenticationRefs[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ref {
    group: String,
    kind: String,
    name: String,
    /// The referring object's when it names none.
    namespace: String,
}

fn reference(v: &Value, namespace: &str) -> Ref {
    let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
    let group = match v["group"].as_str() {
        Some("core") | None => String::new(),
        Some(g) => g.to_string(),
    };
    Ref {
        group,
        kind: text("kind"),
        name: text("name"),
        namespace: v["namespace"].as_str().unwrap_or(namespace).to_string(),
    }
}

fn authentication_refs(policy: &Object) -> Vec<Ref> {
    policy.spec["requiredAuthenticationRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut r = reference(r, &policy.namespace);
            // The CRD's default; the folder source has none.
            if r.group.is_empty() && r.kind != "ServiceAccount" {
                r.group = POLICY_GROUP.into();
            }
            r
        })
        .collect()
}

fn servers(objects: &Objects) -> Check {
    let mut problems = Vec::new();
    for server in &objects.servers {
        let id = format!("{}/{}", server.namespace, server.name);
        let selector: Option<LabelSelector> =
            serde_json::from_value(server.spec["podSelector"].clone()).ok();
        let Some(selector) = selector.filter(|_| server.spec["podSelector"].is_object()) else {
            problems.push(format!("{id} has no valid podSelector"));
            continue;
        };
        let pods: Vec<&Pod> = objects
            .pods
            .get(&server.namespace)
            .into_iter()
            .flatten()
            .filter(|pod| selects(&selector, pod))
            .collect();
        if pods.is_empty() {
            problems.push(format!("{id} selects no pod"));
            continue;
        }
        if let Some(port) = server.spec["port"].as_str() {
            if !pods.iter().any(|pod| has_port(pod, port)) {
                let n = pods.len();
                let pods = if n == 1 { "pod" } else { "pods" };
                problems.push(format!(
                    "{id} selects {n} {pods}, none with a container port named {port}"
                ));
            }
        }
    }
    if problems.is_empty() {
        return ok(SERVERS);
    }
    warn(
        SERVERS,
        problems.join("; "),
        "compare the Server's podSelector and port with the pods' labels and container ports: \
         kubectl get pods -n NAMESPACE --show-labels (a Server written before its workload is \
         fine)",
    )
}

fn authorization_targets(objects: &Objects) -> Check {
    let server_exists = |ns: &str, name: &str| {
        objects
            .servers
            .iter()
            .any(|s| s.namespace == ns && s.name == name)
    };
    let mut problems = Vec::new();
    for policy in &objects.authorization_policies {
        let id = format!("{}/{}", policy.namespace, policy.name);
        let t = reference(&policy.spec["targetRef"], &policy.namespace);
        let problem = match (t.group.as_str(), t.kind.as_str()) {
            _ if t.namespace != policy.namespace => Some(format!(
                "{id} targets {} {}/{} in another namespace",
                t.kind, t.namespace, t.name
            )),
            (POLICY_GROUP, "Server") if !server_exists(&t.namespace, &t.name) => Some(format!(
                "{id}: Server {}/{} does not exist",
                t.namespace, t.name
            )),
            (GATEWAY_GROUP, kind @ ("HTTPRoute" | "GRPCRoute"))
                if !objects.routes.contains(&(
                    kind.to_string(),
                    t.namespace.clone(),
                    t.name.clone(),
                )) =>
            {
                Some(format!(
                    "{id}: {kind} {}/{} does not exist",
                    t.namespace, t.name
                ))
            }
            ("", "Namespace") if t.name != policy.namespace => Some(format!(
                "{id} targets Namespace {}, not its own ({})",
                t.name, policy.namespace
            )),
            (POLICY_GROUP, "Server")
            | (GATEWAY_GROUP, "HTTPRoute" | "GRPCRoute")
            | ("", "Namespace") => None,
            _ => Some(format!(
                "{id} targets {}, which is not a Server, HTTPRoute, GRPCRoute or Namespace",
                group_kind(&t)
            )),
        };
        problems.extend(problem);
    }
    if problems.is_empty() {
        return ok(AUTHZ_TARGETS);
    }
    fail(
        AUTHZ_TARGETS,
        problems.join("; "),
        "create what spec.targetRef names in the policy's namespace, or fix it: until then the \
         policy authorizes nothing",
    )
}

fn authentications(objects: &Objects) -> Check {
    let mut problems = Vec::new();
    for policy in &objects.authorization_policies {
        let id = format!("{}/{}", policy.namespace, policy.name);
        for r in authentication_refs(policy) {
            let exists = match (r.group.as_str(), r.kind.as_str()) {
                (POLICY_GROUP, "MeshTLSAuthentication" | "NetworkAuthentication") => objects
                    .authentications
                    .contains(&(r.kind.clone(), r.namespace.clone(), r.name.clone())),
                ("", "ServiceAccount") => objects
                    .service_accounts
                    .contains(&(r.namespace.clone(), r.name.clone())),
                _ => {
                    problems.push(format!(
                        "{id} requires {}, which is not an authentication",
                        group_kind(&r)
                    ));
                    continue;
                }
            };
            if !exists {
                problems.push(format!(
                    "{id}: {} {}/{} does not exist",
                    r.kind, r.namespace, r.name
                ));
            }
        }
    }
    if problems.is_empty() {
        return ok(AUTHENTICATIONS);
    }
    fail(
        AUTHENTICATIONS,
        problems.join("; "),
        "create the authentication, or fix spec.requiredAuthenticationRefs: a policy that \
         requires a missing one allows no one",
    )
}

fn rate_limit_targets(objects: &Objects) -> Check {
    let mut problems = Vec::new();
    for limit in &objects.rate_limits {
        let id = format!("{}/{}", limit.namespace, limit.name);
        let t = reference(&limit.spec["targetRef"], &limit.namespace);
        let exists = (t.group.as_str(), t.kind.as_str()) == (POLICY_GROUP, "Server")
            && t.namespace == limit.namespace
            && objects
                .servers
                .iter()
                .any(|s| s.namespace == t.namespace && s.name == t.name);
        if !exists {
            let what = match (t.group.as_str(), t.kind.as_str()) {
                (POLICY_GROUP, "Server") => format!("Server {}/{}", t.namespace, t.name),
                _ => format!("{} {}", group_kind(&t), t.name),
            };
            problems.push(format!("{id}: {what} does not exist"));
        }
    }
    if problems.is_empty() {
        return ok(RATE_LIMIT_TARGETS);
    }
    fail(
        RATE_LIMIT_TARGETS,
        problems.join("; "),
        "create the Server in the policy's namespace, or fix spec.targetRef: until then \
         nothing is limited",
    )
}

/// The references of a `parentRefs` or `backendRefs` list, with the core group as `""` and
/// the kind `Service` when unset (the CRD's defaults; the folder source has none).
fn service_refs<'a>(list: &'a Value, namespace: &'a str) -> impl Iterator<Item = ServiceRef> + 'a {
    list.as_array().into_iter().flatten().map(move |v| {
        let mut r = reference(v, namespace);
        if r.kind.is_empty() {
            r.kind = "Service".into();
        }
        ServiceRef {
            port: v["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
            r,
        }
    })
}

/// A reference to a Service port (a MetaRoute's parent or backend).
#[derive(Clone, Debug)]
struct ServiceRef {
    r: Ref,
    /// None: every port.
    port: Option<u16>,
}

/// The rules of a MetaRoute.
fn meta_rules(route: &Object) -> impl Iterator<Item = &Value> {
    route.spec["rules"].as_array().into_iter().flatten()
}

fn meta_routes(objects: &Objects) -> Check {
    let mut problems = Vec::new();
    let codecs = mesh_api::codec_ports::CODECS
        .map(|c| format!("{}{c}", mesh_api::codec_ports::CODEC_APP_PROTOCOL_PREFIX))
        .join(" or ");
    for route in &objects.meta_routes {
        let id = format!("{}/{}", route.namespace, route.name);
        for parent in service_refs(&route.spec["parentRefs"], &route.namespace) {
            let r = &parent.r;
            if (r.group.as_str(), r.kind.as_str()) != ("", "Service") {
                problems.push(format!("{id}: parent {} is not a Service", group_kind(r)));
                continue;
            }
            let Some(svc) = objects.services.get(&(r.namespace.clone(), r.name.clone())) else {
                problems.push(format!(
                    "{id}: parent Service {}/{} does not exist",
                    r.namespace, r.name
                ));
                continue;
            };
            let ports = svc_ports(svc);
            let codec = |p: &ServicePort| {
                p.app_protocol
                    .as_deref()
                    .and_then(mesh_api::codec_ports::app_protocol_codec)
                    .is_some()
            };
            match parent.port {
                Some(port) => match ports.iter().find(|p| p.port == i32::from(port)) {
                    None => problems.push(format!(
                        "{id}: parent Service {}/{} has no port {port}",
                        r.namespace, r.name
                    )),
                    Some(p) if !codec(p) => problems.push(format!(
                        "{id}: port {port} of parent Service {}/{} is not a codec port \
                         (appProtocol {}, not {codecs})",
                        r.namespace,
                        r.name,
                        p.app_protocol.as_deref().unwrap_or("unset")
                    )),
                    Some(_) => {}
                },
                None if !ports.iter().any(codec) => problems.push(format!(
                    "{id}: parent Service {}/{} has no codec port (appProtocol {codecs})",
                    r.namespace, r.name
                )),
                None => {}
            }
        }
        for backend in
            meta_rules(route).flat_map(|rule| service_refs(&rule["backendRefs"], &route.namespace))
        {
            let r = &backend.r;
            let port = backend.port.unwrap_or_default();
            let exists = objects
                .services
                .get(&(r.namespace.clone(), r.name.clone()))
                .is_some_and(|svc| {
                    let headless =
                        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
                    headless || svc_ports(svc).iter().any(|p| p.port == i32::from(port))
                });
            if !exists {
                problems.push(format!(
                    "{id}: backend Service {}/{} port {port} does not exist",
                    r.namespace, r.name
                ));
            }
        }
    }
    if problems.is_empty() {
        return ok(META_ROUTES);
    }
    warn(
        META_ROUTES,
        problems.join("; "),
        format!(
            "a MetaRoute is served only on a Service port whose appProtocol is {codecs}, and a \
             missing backend's share of requests fails: fix spec.parentRefs or backendRefs, or \
             create the Service"
        ),
    )
}

fn svc_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// `policy.mesh.io/Server`, or the kind alone for the core group.
fn group_kind(r: &Ref) -> String {
    if r.group.is_empty() {
        r.kind.clone()
    } else {
        format!("{}/{}", r.group, r.kind)
    }
}

/// Whether `selector` selects `pod`, as Kubernetes decides (`NotIn` and `DoesNotExist` hold
/// for a missing label; an empty selector selects every pod).
pub fn selects(selector: &LabelSelector, pod: &Pod) -> bool {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API server would have refused: selects nothing.
            _ => false,
        }
    });
    by_label && by_expression
}

/// Whether one of the pod's containers (or init containers: native sidecars) names a port
/// `name`.
fn has_port(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| p.name.as_deref() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Outcome;
    use serde_json::json;

    fn object(namespace: &str, name: &str, spec: Value) -> Object {
        Object {
            namespace: namespace.into(),
            name: name.into(),
            spec,
        }
    }

    fn pod(namespace: &str, labels: Value, port: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "app", "ports": [{"name": port, "containerPort": 8080}]}]},
        }))
        .unwrap()
    }

    fn service(namespace: &str, name: &str, ports: Value) -> ((String, String), Service) {
        let svc = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": ports},
        }))
        .unwrap();
        ((namespace.into(), name.into()), svc)
    }

    /// The demo's objects: Server voting-grpc on the voting pods, a policy for it requiring a
    /// MeshTLSAuthentication, a NetworkAuthentication and a ServiceAccount, and its rate limit;
    /// a MetaRoute on the Redis port of Service redis (also a plain port) to Service cache.
    fn cluster() -> Objects {
        Objects {
            servers: vec![object(
                "demo",
                "voting-grpc",
                json!({"podSelector": {"matchLabels": {"app": "voting"}}, "port": "grpc"}),
            )],
            authorization_policies: vec![object(
                "demo",
                "voting-from-web",
                json!({
                    "targetRef": {"group": "policy.mesh.io", "kind": "Server", "name": "voting-grpc"},
                    "requiredAuthenticationRefs": [
                        {"group": "policy.mesh.io", "kind": "MeshTLSAuthentication", "name": "web"},
                        {"kind": "NetworkAuthentication", "name": "cluster", "namespace": "mesh"},
                        {"group": "", "kind": "ServiceAccount", "name": "web"},
                    ],
                }),
            )],
            rate_limits: vec![object(
                "demo",
                "voting-rl",
                json!({"targetRef": {"group": "policy.mesh.io", "kind": "Server", "name": "voting-grpc"}}),
            )],
            authentications: [
                ("MeshTLSAuthentication", "demo", "web"),
                ("NetworkAuthentication", "mesh", "cluster"),
            ]
            .into_iter()
            .map(|(k, n, m)| (k.into(), n.into(), m.into()))
            .collect(),
            routes: [("HTTPRoute".into(), "demo".into(), "votes".into())].into(),
            service_accounts: [("demo".into(), "web".into())].into(),
            pods: [(
                "demo".to_string(),
                vec![pod("demo", json!({"app": "voting"}), "grpc")],
            )]
            .into(),
            meta_routes: vec![object(
                "demo",
                "sessions",
                json!({
                    "parentRefs": [{"group": "", "kind": "Service", "name": "redis", "port": 6379}],
                    "rules": [
                        {"matches": [{"metadata": [{"key": "key", "type": "Prefix", "value": "session:"}]}],
                         "backendRefs": [{"name": "cache", "port": 6379}]},
                        {},
                    ],
                }),
            )],
            services: [
                service(
                    "demo",
                    "redis",
                    json!([{"port": 6379, "appProtocol": "mesh.io/redis"}, {"port": 9000}]),
                ),
                service(
                    "demo",
                    "cache",
                    json!([{"port": 6379, "appProtocol": "mesh.io/redis"}]),
                ),
            ]
            .into(),
        }
    }

    /// The checks' results, as `(outcome, what was found)` per line.
    fn results(objects: &Objects) -> Vec<(Outcome, String)> {
        checks(objects)
            .into_iter()
            .map(|c| (c.result, c.error.unwrap_or_default()))
            .collect()
    }

    /// Runs the checks on the demo's objects changed by `change`: the lines `failing` (0: the
    /// Servers, 1: the AuthorizationPolicy targets, 2: the authentications, 3: the rate limit
    /// targets, 4: the MetaRoutes) come out as said, with what was found; every other line
    /// passes.
    fn check(change: impl FnOnce(&mut Objects), failing: &[(usize, Outcome, &str)]) {
        let mut objects = cluster();
        change(&mut objects);
        for (i, (result, error)) in results(&objects).into_iter().enumerate() {
            match failing.iter().find(|f| f.0 == i) {
                Some(&(_, outcome, found)) => {
                    assert_eq!((result, error.as_str()), (outcome, found), "line {i}")
                }
                None => assert_eq!(result, Outcome::Success, "line {i}: {error}"),
            }
        }
    }

    #[test]
    fn the_demos_policy_passes() {
        let all: Vec<Outcome> = results(&cluster()).into_iter().map(|r| r.0).collect();
        assert_eq!(all, [Outcome::Success; 5]);
        assert!(checks(&Objects::default())
            .iter()
            .all(|c| c.result == Outcome::Success));
    }

    #[test]
    fn servers_that_select_no_pod_are_a_warning() {
        use Outcome::Warning;
        let spec = |s: &mut Objects, v: Value| s.servers[0].spec = v;
        check(
            |o| {
                spec(
                    o,
                    json!({"podSelector": {"matchLabels": {"app": "votin"}}, "port": 8080}),
                )
            },
            &[(0, Warning, "demo/voting-grpc selects no pod")],
        );
        check(
            |o| {
                spec(
                    o,
                    json!({"podSelector": {"matchLabels": {"app": "voting"}}, "port": "http"}),
                )
            },
            &[(
                0,
                Warning,
                "demo/voting-grpc selects 1 pod, none with a container port named http",
            )],
        );
        check(
            |o| o.pods.clear(),
            &[(0, Warning, "demo/voting-grpc selects no pod")],
        );
        check(
            |o| spec(o, json!({"port": 8080})),
            &[(0, Warning, "demo/voting-grpc has no valid podSelector")],
        );
        // An empty selector selects every pod of the namespace, and a port number needs no
        // container port.
        check(|o| spec(o, json!({"podSelector": {}, "port": 9999})), &[]);
        // Expressions, as Kubernetes reads them.
        for (expressions, selected) in [
            (
                json!([{"key": "app", "operator": "In", "values": ["voting", "x"]}]),
                true,
            ),
            (
                json!([{"key": "app", "operator": "NotIn", "values": ["voting"]}]),
                false,
            ),
            (
                json!([{"key": "tier", "operator": "NotIn", "values": ["a"]}]),
                true,
            ),
            (json!([{"key": "app", "operator": "Exists"}]), true),
            (json!([{"key": "app", "operator": "DoesNotExist"}]), false),
            (json!([{"key": "app", "operator": "Matches"}]), false),
        ] {
            let mut objects = cluster();
            spec(
                &mut objects,
                json!({"podSelector": {"matchExpressions": expressions}, "port": 80}),
            );
            let result = results(&objects)[0].0;
            assert_eq!(result == Outcome::Success, selected, "{expressions}");
        }
    }

    #[test]
    fn authorization_targets_must_exist() {
        use Outcome::Error;
        let target = |o: &mut Objects, t: Value| o.authorization_policies[0].spec["targetRef"] = t;
        check(
            |o| {
                target(
                    o,
                    json!({"group": "policy.mesh.io", "kind": "Server", "name": "votes"}),
                )
            },
            &[(
                1,
                Error,
                "demo/voting-from-web: Server demo/votes does not exist",
            )],
        );
        check(
            |o| {
                target(
                    o,
                    json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "votes"}),
                )
            },
            &[],
        );
        check(
            |o| {
                target(
                    o,
                    json!({"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": "votes"}),
                )
            },
            &[(
                1,
                Error,
                "demo/voting-from-web: GRPCRoute demo/votes does not exist",
            )],
        );
        check(
            |o| target(o, json!({"kind": "Namespace", "name": "demo"})),
            &[],
        );
        check(
            |o| {
                target(
                    o,
                    json!({"group": "core", "kind": "Namespace", "name": "shop"}),
                )
            },
            &[(
                1,
                Error,
                "demo/voting-from-web targets Namespace shop, not its own (demo)",
            )],
        );
        check(
            |o| {
                target(
                    o,
                    json!({"group": "policy.mesh.io", "kind": "Server", "name": "voting-grpc", "namespace": "shop"}),
                )
            },
            &[(
                1,
                Error,
                "demo/voting-from-web targets Server shop/voting-grpc in another namespace",
            )],
        );
        check(
            |o| target(o, json!({"kind": "Service", "name": "voting-svc"})), &[(1, Error, "demo/voting-from-web targets Service, which is not a Server, HTTPRoute, GRPCRoute or \
             Namespace")]);
    }

    #[test]
    fn required_authentications_must_exist() {
        use Outcome::Error;
        let refs = |o: &mut Objects, r: Value| {
            o.authorization_policies[0].spec["requiredAuthenticationRefs"] = r
        };
        check(
            |o| refs(o, json!([{"kind": "MeshTLSAuthentication", "name": "wbe"}])),
            &[(
                2,
                Error,
                "demo/voting-from-web: MeshTLSAuthentication demo/wbe does not exist",
            )],
        );
        check(
            |o| {
                refs(
                    o,
                    json!([
                        {"kind": "NetworkAuthentication", "name": "cluster"},
                        {"group": "", "kind": "ServiceAccount", "name": "vote-bot"},
                    ]),
                )
            },
            &[(
                2,
                Error,
                "demo/voting-from-web: NetworkAuthentication demo/cluster does not exist; \
             demo/voting-from-web: ServiceAccount demo/vote-bot does not exist",
            )],
        );
        check(|o| refs(o, json!([])), &[]);
    }

    #[test]
    fn rate_limit_targets_must_exist() {
        use Outcome::Error;
        let target = |o: &mut Objects, t: Value| o.rate_limits[0].spec["targetRef"] = t;
        check(
            |o| {
                target(
                    o,
                    json!({"group": "policy.mesh.io", "kind": "Server", "name": "voting"}),
                )
            },
            &[(
                3,
                Error,
                "demo/voting-rl: Server demo/voting does not exist",
            )],
        );
        check(
            |o| o.servers.clear(),
            &[
                (
                    1,
                    Error,
                    "demo/voting-from-web: Server demo/voting-grpc does not exist",
                ),
                (
                    3,
                    Error,
                    "demo/voting-rl: Server demo/voting-grpc does not exist",
                ),
            ],
        );
    }

    #[test]
    fn meta_routes_on_what_is_not_a_codec_port_or_to_missing_backends_are_a_warning() {
        use Outcome::Warning;
        let parent = |o: &mut Objects, p: Value| o.meta_routes[0].spec["parentRefs"] = p;
        check(
            |o| parent(o, json!([{"kind": "Service", "name": "redis"}])),
            &[],
        );
        check(
            |o| parent(o, json!([{"group": "core", "name": "redis", "port": 6379}])),
            &[],
        );
        check(
            |o| {
                parent(
                    o,
                    json!([{"kind": "Service", "name": "redsi", "port": 6379}]),
                )
            },
            &[(
                4,
                Warning,
                "demo/sessions: parent Service demo/redsi does not exist",
            )],
        );
        check(
            |o| {
                parent(
                    o,
                    json!([{"kind": "Service", "name": "redis", "port": 9000}]),
                )
            },
            &[(
                4,
                Warning,
                "demo/sessions: port 9000 of parent Service demo/redis is not a codec port \
                 (appProtocol unset, not mesh.io/redis or mesh.io/thrift)",
            )],
        );
        check(
            |o| {
                parent(
                    o,
                    json!([{"kind": "Service", "name": "redis", "port": 6380}]),
                )
            },
            &[(
                4,
                Warning,
                "demo/sessions: parent Service demo/redis has no port 6380",
            )],
        );
        check(
            |o| {
                let (key, svc) = service(
                    "demo",
                    "redis",
                    json!([{"port": 6379, "appProtocol": "redis"}]),
                );
                o.services.insert(key, svc);
                parent(o, json!([{"kind": "Service", "name": "redis"}]));
            },
            &[(
                4,
                Warning,
                "demo/sessions: parent Service demo/redis has no codec port (appProtocol \
                 mesh.io/redis or mesh.io/thrift)",
            )],
        );
        check(
            |o| {
                parent(
                    o,
                    json!([{"group": "policy.mesh.io", "kind": "Server", "name": "redis"}]),
                )
            },
            &[(
                4,
                Warning,
                "demo/sessions: parent policy.mesh.io/Server is not a Service",
            )],
        );
        // Backends: in the route's namespace unless it says otherwise, with the port.
        let backends =
            |o: &mut Objects, b: Value| o.meta_routes[0].spec["rules"][0]["backendRefs"] = b;
        check(
            |o| {
                backends(
                    o,
                    json!([{"name": "cache", "port": 6379}, {"name": "gone", "port": 6379},
                           {"name": "cache", "namespace": "shop", "port": 6379},
                           {"name": "cache", "port": 6380}]),
                )
            },
            &[(
                4,
                Warning,
                "demo/sessions: backend Service demo/gone port 6379 does not exist; \
                 demo/sessions: backend Service shop/cache port 6379 does not exist; \
                 demo/sessions: backend Service demo/cache port 6380 does not exist",
            )],
        );
        // No MetaRoutes, nothing to say.
        check(|o| o.meta_routes.clear(), &[]);
    }
}
