//! The inbound policy of each port: one shared watch of the controller's
//! `/v1/policy/inbound/watch?pod=…&port=…` per port (reconnecting with backoff, the last policy
//! kept meanwhile, dropped when no connection has used the port for a while), each policy
//! compiled once into a [`PortPolicy`] that decides connections and requests.
//!
//! A port no Server selects, a proxy without a controller, and a port whose controller has not
//! answered within `MESH_PROXY_INBOUND_POLICY_TIMEOUT` get the default inbound policy
//! (`MESH_PROXY_INBOUND_DEFAULT_POLICY`). The decision takes the client's address and the
//! identity it proved over mutual TLS, never a header.

use crate::{
    discover::follow_controller,
    http::{
        errors::{NoRoute, Unauthorized},
        matches::RouteMatches,
    },
    metrics::{AuthzLabels, AuthzMetrics},
    svc::{BoxError, BoxIo, Cache, ConnFuture, NewService, Param},
    transport::{ClientAddr, OrigDst},
};
use http::Request;
use mesh_api::{
    destination::Connector,
    inbound::{
        self, Access, Authorization, DefaultPolicy, IdentityMatch, InboundPolicy, Network,
        ProxyProtocol, Requirement,
    },
};
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::watch;

use super::ratelimit::RateLimiter;

/// Where the inbound policies come from.
#[derive(Clone)]
pub struct PolicyConfig {
    /// The destination controller (`host:port`); `None`: the default policy everywhere.
    pub controller: Option<String>,
    /// The pod, `namespace/name`; `None`: the default policy everywhere.
    pub pod: Option<String>,
    pub default: DefaultPolicy,
    /// The networks of the `cluster-*` default policies.
    pub cluster_networks: Vec<Network>,
    /// How long the first connection to a port waits for the controller.
    pub first_timeout: Duration,
    /// How long the watch of a port no connection uses is kept.
    pub idle_timeout: Duration,
    pub connector: Connector,
    pub metrics: AuthzMetrics,
}

/// The policy watches of every inbound port, shared by the inbound stack (a clone is an `Arc`:
/// each connection's future holds one until its port's policy is in).
#[derive(Clone)]
pub struct PortPolicies(Arc<Policies>);

struct Policies {
    config: PolicyConfig,
    default: Arc<PortPolicy>,
    /// Without a controller, every port's handle: one channel that never changes, shared by
    /// every connection (a channel per connection held ≈340 B each).
    fixed: PolicyHandle,
    cache: Arc<Cache<u16, PortWatch>>,
}

struct PortWatch {
    state: watch::Receiver<Option<Arc<PortPolicy>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PortWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A connection's view of its port's policy: the policy now, and its changes.
#[derive(Clone)]
pub struct PolicyHandle {
    state: watch::Receiver<Option<Arc<PortPolicy>>>,
    default: Arc<PortPolicy>,
    /// Keeps the port's watch alive while a connection uses it.
    _watch: Option<Arc<PortWatch>>,
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("server", &self.current().server.srv_name)
            .finish()
    }
}

impl PortPolicies {
    pub fn new(config: PolicyConfig) -> Self {
        let default = Arc::new(PortPolicy::compile(
            config.default.policy(&config.cluster_networks),
            config.default,
            &config.metrics,
            None,
        ));
        Self(Arc::new(Policies {
            cache: Cache::new(config.idle_timeout),
            fixed: PolicyHandle::fixed(default.clone()),
            default,
            config,
        }))
    }

    /// The policy of `port`: the first connection to a port waits (bounded) for the
    /// controller's first answer.
    pub async fn get(&self, port: u16) -> PolicyHandle {
        let this = &*self.0;
        let (Some(controller), Some(pod)) = (&this.config.controller, &this.config.pod) else {
            return this.fixed.clone();
        };
        let watch = this.cache.get_or_insert_with(&port, || {
            let (tx, state) = watch::channel(None);
            let task = tokio::spawn(follow(
                this.config.clone(),
                controller.clone(),
                pod.clone(),
                port,
                tx,
            ));
            PortWatch {
                state,
                task: Some(task),
            }
        });
        let mut state = watch.state.clone();
        if state.borrow().is_none() {
            let first = state.wait_for(Option::is_some);
            if tokio::time::timeout(this.config.first_timeout, first)
                .await
                .is_err()
            {
                tracing::warn!(
                    port,
                    default = %this.config.default,
                    "no inbound policy from the controller yet: the default policy applies"
                );
            }
        }
        PolicyHandle {
            state,
            default: this.default.clone(),
            _watch: Some(watch),
        }
    }
}

/// Follows one port's policy forever: reconnects with backoff and keeps the last policy.
async fn follow(
    config: PolicyConfig,
    controller: String,
    pod: String,
    port: u16,
    tx: watch::Sender<Option<Arc<PortPolicy>>>,
) {
    let subject = format!("{pod}:{port}");
    follow_controller(
        &controller,
        &subject,
        |addr| inbound::watch_inbound(config.connector.clone(), addr, &pod, port),
        |policy: InboundPolicy, _| {
            tracing::debug!(
                port,
                server = ?policy.server,
                authorizations = policy.authorizations.len(),
                "inbound policy"
            );
            let previous = tx.borrow().clone();
            let compiled = PortPolicy::compile(
                match policy.server {
                    Some(_) => policy,
                    None => InboundPolicy {
                        probe_paths: policy.probe_paths,
                        ..config.default.policy(&config.cluster_networks)
                    },
                },
                config.default,
                &config.metrics,
                previous.as_deref(),
            );
            tx.send_replace(Some(Arc::new(compiled)));
        },
        || {
            // An old controller without the inbound watch answers 404: the default policy.
            if tx.borrow().is_none() {
                tx.send_replace(Some(Arc::new(PortPolicy::compile(
                    config.default.policy(&config.cluster_networks),
                    config.default,
                    &config.metrics,
                    None,
                ))));
            }
            !tx.is_closed()
        },
    )
    .await
}

impl PolicyHandle {
    /// A policy that never changes (no controller).
    fn fixed(policy: Arc<PortPolicy>) -> Self {
        let (_, state) = watch::channel(Some(policy.clone()));
        Self {
            state,
            default: policy,
            _watch: None,
        }
    }

    /// The port's policy now.
    pub fn current(&self) -> Arc<PortPolicy> {
        self.state
            .borrow()
            .clone()
            .unwrap_or_else(|| self.default.clone())
    }

    /// Whether the port's Server says its protocol is opaque (`opaque` or `TLS`): the port
    /// then skips protocol detection.
    pub fn declares_opaque(&self) -> bool {
        matches!(
            self.current().protocol,
            ProxyProtocol::Opaque | ProxyProtocol::Tls
        )
    }

    /// Completes once an update takes away this client's permission to connect (never, when
    /// the policy cannot change): the connection then closes after what it has in flight. A
    /// client the policy refuses from the start keeps its connection, and each of its requests
    /// is answered with the refusal.
    pub async fn revoked(mut self, client: IpAddr, id: Option<Arc<str>>) {
        let permits = |p: &Option<Arc<PortPolicy>>, default: &PortPolicy| {
            p.as_deref()
                .unwrap_or(default)
                .permits_connection(client, id.as_deref())
        };
        let mut permitted = permits(&self.state.borrow_and_update(), &self.default);
        loop {
            if self.state.changed().await.is_err() {
                return std::future::pending().await;
            }
            let now = permits(&self.state.borrow_and_update(), &self.default);
            if permitted && !now {
                return;
            }
            permitted = now;
        }
    }
}

// === the layer ===

/// A connection and its port's policy.
#[derive(Clone, Debug)]
pub struct Policied<T> {
    pub parent: T,
    pub policy: PolicyHandle,
}

impl<T: Param<OrigDst>> Param<OrigDst> for Policied<T> {
    fn param(&self) -> OrigDst {
        self.parent.param()
    }
}

impl<T: Param<ClientAddr>> Param<ClientAddr> for Policied<T> {
    fn param(&self) -> ClientAddr {
        self.parent.param()
    }
}

/// Looks up each connection's port policy (the first connection to a port waits for it),
/// then serves the connection with `N`'s service for [`Policied<T>`].
#[derive(Clone)]
pub struct NewPortPolicy<N> {
    policies: PortPolicies,
    /// Shared: each connection's future holds it while the port's policy is looked up.
    inner: Arc<N>,
}

impl<N> NewPortPolicy<N> {
    pub fn layer(policies: PortPolicies) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            policies: policies.clone(),
            inner: Arc::new(inner),
        })
    }
}

pub struct PortPolicyService<T, N> {
    target: Option<T>,
    policies: PortPolicies,
    inner: Arc<N>,
}

impl<T, N> NewService<T> for NewPortPolicy<N> {
    type Service = PortPolicyService<T, N>;
    fn new_service(&self, target: T) -> Self::Service {
        PortPolicyService {
            target: Some(target),
            policies: self.policies.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T, N, S> tower::Service<BoxIo> for PortPolicyService<T, N>
where
    T: Param<OrigDst> + Send + 'static,
    N: NewService<Policied<T>, Service = S> + Send + Sync + 'static,
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let parent = self
            .target
            .take()
            .expect("a connection's service serves it once");
        let policies = self.policies.clone();
        let inner = self.inner.clone();
        crate::svc::then_serve(async move {
            let OrigDst(dst) = parent.param();
            let policy = policies.get(dst.port()).await;
            crate::svc::call_conn(inner.new_service(Policied { parent, policy }), io).await
        })
    }
}

// === the compiled policy ===

/// A port's policy, ready to decide.
#[derive(Debug)]
pub struct PortPolicy {
    pub server: ServerLabels,
    pub protocol: ProxyProtocol,
    access: Access,
    /// Authorizations of the whole Server.
    authorizations: Vec<Authz>,
    /// The Server's inbound routes, when it has any.
    routes: Option<Routes>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// The pod's HTTP probe paths on the port, allowed to anyone, and their counter.
    probes: Vec<String>,
    probe_allowed: Slot,
    /// HTTP counters of the default route (a Server without routes).
    http_default: RouteCounters,
    tcp: RouteCounters,
    metrics: AuthzMetrics,
}

/// Who a decision is counted under.
#[derive(Clone, Debug)]
pub struct ServerLabels {
    /// `Server`, or `default`.
    pub srv_kind: &'static str,
    pub srv_name: Arc<str>,
    /// How a refusal names the policy: `server demo/voting-grpc`, `the default policy deny`.
    pub describe: Arc<str>,
}

#[derive(Debug)]
struct Routes {
    matches: RouteMatches,
    routes: Vec<(Arc<str>, Vec<Authz>, RouteCounters)>,
    describe: String,
}

/// One authorization, compiled.
#[derive(Debug)]
struct Authz {
    requires: Vec<Require>,
}

#[derive(Debug)]
enum Require {
    Identity(Vec<IdentityMatch>),
    Network(Vec<Network>),
}

/// The counters of one route (or of TCP), made on first use: one per authorization that can
/// allow on it (the Server's first, then the route's), and the deny and audit ones.
#[derive(Debug)]
struct RouteCounters {
    allow: Vec<Slot>,
    deny: Slot,
    audit: Slot,
}

#[derive(Debug)]
struct Slot {
    labels: AuthzLabels,
    counter: OnceLock<Counter>,
}

impl Slot {
    fn new(labels: AuthzLabels) -> Self {
        Self {
            labels,
            counter: OnceLock::new(),
        }
    }

    fn inc(&self, family: &Family<AuthzLabels, Counter>) {
        self.counter
            .get_or_init(|| family.get_or_create(&self.labels).clone())
            .inc();
    }
}

/// What an authorization check found.
enum Decision {
    /// The `i`th authorization that can allow here allowed it.
    Allow(usize),
    Audit,
    Deny,
}

impl PortPolicy {
    /// Compiles `policy` (a Server's, or a default policy's when `server` is `None`); a rate
    /// limiter equal to `previous`'s is kept, so that an update does not reset its state.
    pub fn compile(
        policy: InboundPolicy,
        default: DefaultPolicy,
        metrics: &AuthzMetrics,
        previous: Option<&PortPolicy>,
    ) -> Self {
        let server = match &policy.server {
            Some(s) => ServerLabels {
                srv_kind: "Server",
                srv_name: s.name.as_str().into(),
                describe: format!("server {}/{}", s.namespace, s.name).into(),
            },
            None => ServerLabels {
                srv_kind: "default",
                srv_name: default.as_str().into(),
                describe: format!("the default inbound policy {default}").into(),
            },
        };
        let server_authz: Vec<Authz> = policy.authorizations.iter().map(Authz::compile).collect();
        let counters = |route: Option<Arc<str>>, authzs: &[&Authorization]| {
            let labels = |kind: &str, name: &str| AuthzLabels {
                srv_kind: server.srv_kind,
                srv_name: server.srv_name.clone(),
                route_name: route.clone(),
                authz_kind: kind.into(),
                authz_name: name.into(),
            };
            RouteCounters {
                allow: authzs
                    .iter()
                    .map(|a| Slot::new(labels(&a.kind, &a.name)))
                    .collect(),
                deny: Slot::new(labels("", "")),
                audit: Slot::new(match (&policy.server, policy.access) {
                    // The default `audit` policy: every decision is its own.
                    (None, Access::Audit) => labels("default", default.as_str()),
                    _ => labels("", ""),
                }),
            }
        };
        let server_refs: Vec<&Authorization> = policy.authorizations.iter().collect();
        let routes = (!policy.routes.is_empty()).then(|| {
            let plain: Vec<_> = policy.routes.iter().map(|r| r.route.clone()).collect();
            Routes {
                matches: RouteMatches::new(&plain),
                routes: policy
                    .routes
                    .iter()
                    .map(|r| {
                        let name: Arc<str> = r.route.name.as_str().into();
                        let refs: Vec<&Authorization> = server_refs
                            .iter()
                            .copied()
                            .chain(r.authorizations.iter())
                            .collect();
                        let authz = r.authorizations.iter().map(Authz::compile).collect();
                        (name.clone(), authz, counters(Some(name), &refs))
                    })
                    .collect(),
                describe: server.describe.to_string(),
            }
        });
        let rate_limit = policy.rate_limit.map(|limit| {
            match previous
                .and_then(|p| p.rate_limit.as_ref())
                .filter(|p| p.config() == &limit)
            {
                Some(same) => same.clone(),
                None => Arc::new(RateLimiter::new(limit)),
            }
        });
        Self {
            probes: policy.probe_paths,
            probe_allowed: Slot::new(AuthzLabels {
                srv_kind: server.srv_kind,
                srv_name: server.srv_name.clone(),
                route_name: Some("probe".into()),
                authz_kind: "default".into(),
                authz_name: "probe".into(),
            }),
            http_default: counters(Some("default".into()), &server_refs),
            tcp: counters(None, &server_refs),
            server,
            protocol: policy.protocol,
            access: policy.access,
            authorizations: server_authz,
            routes,
            rate_limit,
            metrics: metrics.clone(),
        }
    }

    /// Decides an opaque connection, and counts it.
    pub fn authorize_tcp(&self, client: IpAddr, id: Option<&str>) -> Result<(), Unauthorized> {
        let decision = decide(&self.authorizations, &[], self.access, client, id);
        self.record(decision, &self.tcp, true, client, id)
    }

    /// Decides a request: a probe of the pod's is allowed; else the route it matches (when the
    /// Server has routes; none: 404), then the authorizations of the Server and of the route.
    /// Counts it.
    pub fn authorize_http<B>(
        &self,
        req: &Request<B>,
        client: IpAddr,
        id: Option<&str>,
    ) -> Result<(), BoxError> {
        if !self.probes.is_empty()
            && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && self.probes.iter().any(|p| p == req.uri().path())
        {
            self.probe_allowed.inc(&self.metrics.http_allow_total);
            return Ok(());
        }
        let (route_authz, counters): (&[Authz], _) = match &self.routes {
            None => (&[], &self.http_default),
            Some(routes) => {
                let Some(selected) = routes.matches.select(req) else {
                    return Err(NoRoute(routes.describe.clone()).into());
                };
                let (_, authz, counters) = &routes.routes[selected.route];
                (authz, counters)
            }
        };
        let decision = decide(&self.authorizations, route_authz, self.access, client, id);
        Ok(self.record(decision, counters, false, client, id)?)
    }

    /// Whether a client may still hold a connection: some authorization of the Server or of
    /// one of its routes allows it, or the policy does not deny.
    pub fn permits_connection(&self, client: IpAddr, id: Option<&str>) -> bool {
        self.access != Access::Deny
            || self
                .authorizations
                .iter()
                .chain(
                    self.routes
                        .iter()
                        .flat_map(|r| r.routes.iter().flat_map(|r| &r.1)),
                )
                .any(|a| a.allows(client, id))
    }

    fn record(
        &self,
        decision: Decision,
        counters: &RouteCounters,
        tcp: bool,
        client: IpAddr,
        id: Option<&str>,
    ) -> Result<(), Unauthorized> {
        let m = &self.metrics;
        let (allow, deny, audit) = match tcp {
            true => (&m.tcp_allow_total, &m.tcp_deny_total, &m.tcp_audit_total),
            false => (&m.http_allow_total, &m.http_deny_total, &m.http_audit_total),
        };
        match decision {
            Decision::Allow(i) => {
                counters.allow[i].inc(allow);
                Ok(())
            }
            Decision::Audit => {
                counters.audit.inc(audit);
                Ok(())
            }
            Decision::Deny => {
                counters.deny.inc(deny);
                Err(Unauthorized(format!(
                    "{} allows no {} from {client}",
                    self.server.describe,
                    match id {
                        Some(id) => format!("client {id}"),
                        None => "unauthenticated client".to_string(),
                    }
                )))
            }
        }
    }
}

/// The Server's authorizations first, then the route's.
fn decide(
    server: &[Authz],
    route: &[Authz],
    access: Access,
    client: IpAddr,
    id: Option<&str>,
) -> Decision {
    if let Some(i) = server
        .iter()
        .chain(route)
        .position(|a| a.allows(client, id))
    {
        return Decision::Allow(i);
    }
    match access {
        Access::Deny => Decision::Deny,
        Access::Audit | Access::Allow => Decision::Audit,
    }
}

impl Authz {
    fn compile(a: &Authorization) -> Self {
        let requires = a
            .requires
            .iter()
            .map(|r| match r {
                Requirement::MeshTls { identities } => Require::Identity(
                    identities
                        .iter()
                        .filter_map(|i| match IdentityMatch::parse(i) {
                            Ok(m) => Some(m),
                            Err(error) => {
                                // The controller validates them: only a newer one's. An
                                // identity left out can only allow less.
                                tracing::warn!(authorization = %a.name, %error, "skipping an identity");
                                None
                            }
                        })
                        .collect(),
                ),
                Requirement::Network { networks } => Require::Network(networks.clone()),
            })
            .collect();
        Self { requires }
    }

    fn allows(&self, client: IpAddr, id: Option<&str>) -> bool {
        self.requires.iter().all(|r| match r {
            Require::Identity(ids) => id.is_some_and(|id| ids.iter().any(|m| m.matches(id))),
            Require::Network(nets) => nets.iter().any(|n| n.contains(client)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::inbound::{parse_networks, InboundRoute, ObjectRef};
    use mesh_api::policy::{Match, PathMatch, Route, Rule};

    const WEB: &str = "web.demo.serviceaccount.identity.mesh.cluster.local";
    const BOT: &str = "vote-bot.demo.serviceaccount.identity.mesh.cluster.local";

    fn authz(name: &str, requires: Vec<Requirement>) -> Authorization {
        Authorization {
            kind: "AuthorizationPolicy".into(),
            namespace: "demo".into(),
            name: name.into(),
            requires,
        }
    }

    fn ids(ids: &[&str]) -> Requirement {
        Requirement::MeshTls {
            identities: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn nets(list: &str) -> Requirement {
        Requirement::Network {
            networks: parse_networks(list).unwrap(),
        }
    }

    fn server(access: Access, authorizations: Vec<Authorization>) -> InboundPolicy {
        InboundPolicy {
            server: Some(ObjectRef {
                namespace: "demo".into(),
                name: "voting-grpc".into(),
            }),
            access,
            authorizations,
            ..InboundPolicy::default()
        }
    }

    fn compile(p: InboundPolicy) -> (PortPolicy, AuthzMetrics) {
        let m = AuthzMetrics::default();
        (
            PortPolicy::compile(p, DefaultPolicy::AllUnauthenticated, &m, None),
            m,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn requirements_all_hold() {
        let (p, m) = compile(server(
            Access::Deny,
            vec![authz(
                "web-from-cluster",
                vec![ids(&[WEB]), nets("10.0.0.0/8")],
            )],
        ));
        let check = |client: &str, id: Option<&str>, ok: bool| {
            assert_eq!(
                p.authorize_tcp(ip(client), id).is_ok(),
                ok,
                "{client} {id:?}"
            );
        };
        check("10.1.2.3", Some(WEB), true);
        check("10.1.2.3", Some(BOT), false);
        check("10.1.2.3", None, false);
        check("192.168.1.1", Some(WEB), false);
        let err = p.authorize_tcp(ip("10.1.2.3"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unauthorized: server demo/voting-grpc allows no unauthenticated client from 10.1.2.3"
        );
        let allow = AuthzLabels {
            srv_kind: "Server",
            srv_name: "voting-grpc".into(),
            route_name: None,
            authz_kind: "AuthorizationPolicy".into(),
            authz_name: "web-from-cluster".into(),
        };
        assert_eq!(m.tcp_allow_total.get_or_create(&allow).get(), 1);
        let deny = AuthzLabels {
            authz_kind: "".into(),
            authz_name: "".into(),
            ..allow
        };
        assert_eq!(m.tcp_deny_total.get_or_create(&deny).get(), 4);
    }

    #[test]
    fn audit_allows_and_counts() {
        let (p, m) = compile(server(Access::Audit, vec![authz("web", vec![ids(&[WEB])])]));
        let req = Request::get("/").body(()).unwrap();
        assert!(p.authorize_http(&req, ip("10.0.0.1"), Some(BOT)).is_ok());
        assert!(p.authorize_http(&req, ip("10.0.0.1"), Some(WEB)).is_ok());
        let labels = AuthzLabels {
            srv_kind: "Server",
            srv_name: "voting-grpc".into(),
            route_name: Some("default".into()),
            authz_kind: "".into(),
            authz_name: "".into(),
        };
        assert_eq!(m.http_audit_total.get_or_create(&labels).get(), 1);
        assert_eq!(m.http_deny_total.get_or_create(&labels).get(), 0);
    }

    #[test]
    fn default_policies() {
        let cluster = parse_networks("10.0.0.0/8").unwrap();
        let check = |policy: DefaultPolicy, client: &str, id: Option<&str>, ok: bool| {
            let m = AuthzMetrics::default();
            let p = PortPolicy::compile(policy.policy(&cluster), policy, &m, None);
            assert_eq!(
                p.authorize_tcp(ip(client), id).is_ok(),
                ok,
                "{policy} {client} {id:?}"
            );
        };
        use DefaultPolicy::*;
        for (policy, inside_anon, inside_id, outside_anon, outside_id) in [
            (AllUnauthenticated, true, true, true, true),
            (AllAuthenticated, false, true, false, true),
            (ClusterAuthenticated, false, true, false, false),
            (ClusterUnauthenticated, true, true, false, false),
            (Deny, false, false, false, false),
            (Audit, true, true, true, true),
        ] {
            check(policy, "10.0.0.9", None, inside_anon);
            check(policy, "10.0.0.9", Some(WEB), inside_id);
            check(policy, "203.0.113.9", None, outside_anon);
            check(policy, "203.0.113.9", Some(WEB), outside_id);
        }
        let m = AuthzMetrics::default();
        let p = PortPolicy::compile(Deny.policy(&cluster), Deny, &m, None);
        let err = p.authorize_tcp(ip("10.0.0.9"), None).unwrap_err();
        assert!(
            err.to_string().contains("the default inbound policy deny"),
            "{err}"
        );
    }

    #[test]
    fn routes_have_their_own_authorizations() {
        let route = |name: &str, method: &str, authorizations| InboundRoute {
            route: Route {
                name: name.into(),
                namespace: "demo".into(),
                rules: vec![Rule {
                    matches: vec![Match {
                        path: Some(PathMatch::PathPrefix("/".into())),
                        method: Some(method.into()),
                        ..Match::default()
                    }],
                    ..Rule::default()
                }],
                ..Route::default()
            },
            authorizations,
        };
        let mut policy = server(Access::Deny, vec![]);
        policy.routes = vec![
            route("reads", "GET", vec![authz("anyone", vec![])]),
            route(
                "writes",
                "POST",
                vec![authz("web-writes", vec![ids(&[WEB])])],
            ),
        ];
        let (p, m) = compile(policy);
        let req = |method: &str| {
            Request::builder()
                .method(method)
                .uri("/x")
                .body(())
                .unwrap()
        };
        let client = ip("10.0.0.1");
        assert!(p.authorize_http(&req("GET"), client, None).is_ok());
        assert!(p.authorize_http(&req("POST"), client, Some(WEB)).is_ok());
        let err = p
            .authorize_http(&req("POST"), client, Some(BOT))
            .unwrap_err();
        assert!(err.is::<Unauthorized>(), "{err}");
        let err = p
            .authorize_http(&req("DELETE"), client, Some(WEB))
            .unwrap_err();
        assert!(err.is::<NoRoute>(), "{err}");
        let writes = AuthzLabels {
            srv_kind: "Server",
            srv_name: "voting-grpc".into(),
            route_name: Some("writes".into()),
            authz_kind: "AuthorizationPolicy".into(),
            authz_name: "web-writes".into(),
        };
        assert_eq!(m.http_allow_total.get_or_create(&writes).get(), 1);
        assert!(
            p.permits_connection(client, Some(BOT)),
            "GET is open to all"
        );
    }

    #[test]
    fn probes_pass_a_policy_that_refuses_everyone_else() {
        let mut policy = DefaultPolicy::Deny.policy(&[]);
        policy.probe_paths = vec!["/ready".into()];
        let m = AuthzMetrics::default();
        let p = PortPolicy::compile(policy, DefaultPolicy::Deny, &m, None);
        let req = |method: &str, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        let client = ip("192.0.2.1");
        assert!(p
            .authorize_http(&req("GET", "/ready"), client, None)
            .is_ok());
        assert!(p
            .authorize_http(&req("HEAD", "/ready?x=1"), client, None)
            .is_ok());
        assert!(p
            .authorize_http(&req("POST", "/ready"), client, None)
            .is_err());
        assert!(p
            .authorize_http(&req("GET", "/ready/x"), client, None)
            .is_err());
        assert!(p.authorize_tcp(client, None).is_err(), "HTTP probes only");
        let probe = AuthzLabels {
            srv_kind: "default",
            srv_name: "deny".into(),
            route_name: Some("probe".into()),
            authz_kind: "default".into(),
            authz_name: "probe".into(),
        };
        assert_eq!(m.http_allow_total.get_or_create(&probe).get(), 2);
    }

    #[tokio::test]
    async fn revocation_waits_for_a_policy_that_refuses_the_client() {
        let m = AuthzMetrics::default();
        let open = |ids_: &[&str]| {
            Arc::new(PortPolicy::compile(
                server(Access::Deny, vec![authz("a", vec![ids(ids_)])]),
                DefaultPolicy::AllUnauthenticated,
                &m,
                None,
            ))
        };
        let (tx, state) = watch::channel(Some(open(&[WEB])));
        let handle = PolicyHandle {
            state,
            default: open(&[]),
            _watch: None,
        };
        let revoked = tokio::spawn(handle.clone().revoked(ip("10.0.0.1"), Some(WEB.into())));
        let refused_from_start = tokio::spawn(handle.revoked(ip("10.0.0.2"), Some(BOT.into())));
        tx.send_replace(Some(open(&[WEB, BOT])));
        tokio::task::yield_now().await;
        assert!(!revoked.is_finished(), "still allowed");
        tx.send_replace(Some(open(&[WEB])));
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::from_secs(5), refused_from_start)
            .await
            .expect("bot was allowed, then revoked")
            .unwrap();
        tx.send_replace(Some(open(&[BOT])));
        tokio::time::timeout(Duration::from_secs(5), revoked)
            .await
            .expect("revoked once the policy refuses the client")
            .unwrap();
    }
}
