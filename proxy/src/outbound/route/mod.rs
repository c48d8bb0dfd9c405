//! The route stage of the outbound stack: each request of a logical destination is matched
//! against the destination's routes (its outbound policy, `policy.rs`) and handed to the stack
//! of the rule it matched; a destination without routes has one default rule that sends
//! everything to the destination itself. A request that matches no rule of a Service that has
//! routes is a 404 ([`NoRoute`]).
//!
//! Rule stacks are made when a policy arrives, not per request: a request only takes the
//! current set (an `Arc`) and walks its matches. A new policy makes new rule stacks for new
//! requests; requests in flight finish on the ones they started with, and connections are not
//! touched. The backends' balancers outlive policies (`split::Backends`).
//!
//! What a rule's stack is made of is the business of `outbound::stack`; this module only
//! provides the [`RouteTarget`] and what the layers read of it.

pub mod metrics;
pub mod mirror;
pub mod split;

use self::{
    mirror::MirrorsParam,
    split::{BackendRef, BackendsParam},
};
use super::{
    policy::{Compiled, Policies, PolicyWatch},
    Logical, LogicalAddr,
};
use crate::{
    http::{
        errors::NoRoute,
        filters::{FilterParams, MatchedPrefix},
        retry::{Budget, RetryParams},
        timeout::RequestTimeoutParam,
    },
    metrics::{BackendLabels, RouteKey, RouteLabels, RouteMetrics},
    svc::{lock, BoxBody, BoxError, NewService, Param},
};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_api::policy::{self, Filter, OutboundPolicy, Rule};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::watch;
use tower::{util::BoxCloneSyncService, ServiceExt};

/// The service of one rule.
pub type RuleService = BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, BoxError>;

/// One rule of a route (or the default route) of a logical destination: the target of the
/// route stack.
#[derive(Clone, Debug)]
pub struct RouteTarget {
    pub logical: Logical,
    pub labels: Arc<RouteLabels>,
    pub rule: Arc<Rule>,
    /// The rule's backends (the destination itself for the default route).
    pub backends: Vec<BackendRef>,
    /// The retry of the default route (routes carry theirs in `rule`).
    pub default_retry: Option<policy::Retry>,
    pub budget: Arc<Budget>,
    /// Whether the route is counted: its destination is a Service (the label sets of every
    /// address an application calls would be unbounded).
    pub metered: bool,
}

/// Makes each logical destination's router over rule stacks made by `R`.
#[derive(Clone)]
pub struct NewRouter<R> {
    policies: Option<Arc<Policies>>,
    new_rule: R,
    /// How long a request waits for a destination's first policy.
    wait: Duration,
    metrics: RouteMetrics,
}

impl<R> NewRouter<R> {
    pub fn new(
        policies: Option<Arc<Policies>>,
        new_rule: R,
        wait: Duration,
        metrics: RouteMetrics,
    ) -> Self {
        Self {
            policies,
            new_rule,
            wait,
            metrics,
        }
    }
}

/// A logical destination's router.
pub struct Router<R> {
    shared: Arc<Shared<R>>,
}

impl<R> Clone for Router<R> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<R> {
    logical: Logical,
    new_rule: R,
    wait: Duration,
    /// The destination's policy, when a controller is configured.
    policy: Option<(Arc<PolicyWatch>, PolicyRx)>,
    /// The rule stacks of the latest policy.
    current: Mutex<Option<Arc<Routes>>>,
    /// The label sets its routes were counted under, forgotten with the destination.
    counted: Mutex<Counted>,
    metrics: RouteMetrics,
}

#[derive(Default)]
struct Counted {
    routes: HashSet<Arc<RouteLabels>>,
    backends: HashSet<Arc<BackendLabels>>,
    faults: HashSet<(Arc<RouteLabels>, Arc<str>)>,
}

impl<R> Drop for Shared<R> {
    fn drop(&mut self) {
        let counted = std::mem::take(&mut *lock(&self.counted));
        for route in &counted.routes {
            self.metrics.forget_route(route);
        }
        for backend in &counted.backends {
            self.metrics.forget_backend(backend);
        }
        for (route, fault) in &counted.faults {
            self.metrics.forget_fault(route, fault);
        }
    }
}

type PolicyRx = watch::Receiver<Option<Arc<Compiled>>>;

/// The rule stacks of one policy.
struct Routes {
    compiled: Arc<Compiled>,
    /// By route, then rule.
    rules: Vec<Vec<RuleService>>,
    /// The default rule, when the destination has no routes.
    default: Option<RuleService>,
    budget: Arc<Budget>,
}

impl<R: NewService<RouteTarget, Service = RuleService> + Clone> NewService<Logical>
    for NewRouter<R>
{
    type Service = Router<R>;
    fn new_service(&self, logical: Logical) -> Router<R> {
        // A name, or the address dialed (a Service's ClusterIP has the Service's routes).
        let policy = self.policies.as_ref().map(|policies| {
            let watch = policies.watch(&logical.addr.to_string());
            let rx = watch.subscribe();
            (watch, rx)
        });
        Router {
            shared: Arc::new(Shared {
                logical,
                new_rule: self.new_rule.clone(),
                wait: self.wait,
                policy,
                current: Mutex::default(),
                counted: Mutex::default(),
                metrics: self.metrics.clone(),
            }),
        }
    }
}

impl<R> tower::Service<Request<BoxBody>> for Router<R>
where
    R: NewService<RouteTarget, Service = RuleService> + Send + Sync + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let routes = shared.routes().await;
            if let Some(default) = &routes.default {
                return default.clone().oneshot(req).await;
            }
            let mut req = req;
            let Some(selected) = routes.compiled.select(&req) else {
                let parent = match &routes.compiled.policy.parent {
                    Some(p) => format!("{}/{}:{}", p.namespace, p.name, p.port),
                    None => shared.logical.addr.to_string(),
                };
                return Err(NoRoute(parent).into());
            };
            if let Some(prefix) = selected.prefix {
                req.extensions_mut().insert(MatchedPrefix(prefix));
            }
            let rule = routes.rules[selected.route][selected.rule].clone();
            rule.oneshot(req).await
        })
    }
}

impl<R: NewService<RouteTarget, Service = RuleService>> Shared<R> {
    /// The rule stacks of the current policy: made once per policy.
    async fn routes(&self) -> Arc<Routes> {
        let compiled = match &self.policy {
            None => None,
            Some((_, rx)) => {
                let now = rx.borrow().clone();
                match now {
                    Some(c) => Some(c),
                    None => {
                        // The destination's first policy: wait for it a little.
                        let mut rx = rx.clone();
                        let waited =
                            tokio::time::timeout(self.wait, rx.wait_for(Option::is_some)).await;
                        match waited {
                            Ok(Ok(c)) => c.clone(),
                            _ => None,
                        }
                    }
                }
            }
        };
        let mut current = lock(&self.current);
        if let Some(routes) = current.as_ref() {
            let same = match &compiled {
                Some(c) => Arc::ptr_eq(c, &routes.compiled),
                // No policy (yet): keep what there is.
                None => true,
            };
            if same {
                return routes.clone();
            }
        }
        let compiled =
            compiled.unwrap_or_else(|| Arc::new(Compiled::new(OutboundPolicy::default())));
        let budget = match current.as_ref() {
            Some(r) if *r.budget.config() == compiled.policy.retry_budget => r.budget.clone(),
            _ => Arc::new(Budget::new(compiled.policy.retry_budget)),
        };
        let routes = Arc::new(self.make(compiled, budget));
        *current = Some(routes.clone());
        routes
    }

    fn make(&self, compiled: Arc<Compiled>, budget: Arc<Budget>) -> Routes {
        let policy = &compiled.policy;
        let metered = policy.parent.is_some();
        let mut counted = lock(&self.counted);
        let (parent_ns, parent_name, parent_port) = match &policy.parent {
            Some(p) => (p.namespace.as_str().into(), p.name.as_str().into(), p.port),
            None => parent_of(&self.logical.addr),
        };
        let route_labels = |kind, namespace: &str, name: &str| {
            Arc::new(RouteLabels {
                parent_namespace: parent_ns.clone(),
                parent_name: parent_name.clone(),
                parent_port,
                route_kind: kind,
                route_namespace: namespace.into(),
                route_name: name.into(),
            })
        };
        if !compiled.has_routes() {
            let labels = route_labels("default", "", "default");
            let backend_labels = Arc::new(BackendLabels {
                route: labels.clone(),
                kind: "default",
                namespace: parent_ns.clone(),
                name: parent_name.clone(),
                port: parent_port,
            });
            let backend = BackendRef {
                metered,
                addr: self.logical.addr.clone(),
                weight: 1,
                labels: backend_labels.clone(),
                error: None,
            };
            let default = self.new_rule.new_service(RouteTarget {
                logical: self.logical.clone(),
                labels: labels.clone(),
                rule: Arc::default(),
                backends: vec![backend],
                default_retry: policy.retry.clone(),
                budget: budget.clone(),
                metered,
            });
            if metered {
                counted.routes.insert(labels);
                counted.backends.insert(backend_labels);
            }
            return Routes {
                compiled,
                rules: Vec::new(),
                default: Some(default),
                budget,
            };
        }
        let rules = policy
            .routes
            .iter()
            .map(|route| {
                let labels = route_labels(route.kind.as_str(), &route.namespace, &route.name);
                counted.routes.insert(labels.clone());
                route
                    .rules
                    .iter()
                    .map(|rule| {
                        let backends: Vec<BackendRef> = rule
                            .backends
                            .iter()
                            .map(|b| backend_ref(b, &labels))
                            .collect();
                        for filter in &rule.filters {
                            match filter {
                                Filter::RequestMirror(m) => {
                                    counted
                                        .backends
                                        .insert(backend_ref(&m.backend, &labels).labels);
                                }
                                Filter::Fault(f) => {
                                    counted
                                        .faults
                                        .insert((labels.clone(), f.name.as_str().into()));
                                }
                                _ => {}
                            }
                        }
                        counted
                            .backends
                            .extend(backends.iter().map(|b| b.labels.clone()));
                        self.new_rule.new_service(RouteTarget {
                            logical: self.logical.clone(),
                            labels: labels.clone(),
                            rule: Arc::new(rule.clone()),
                            backends,
                            default_retry: None,
                            budget: budget.clone(),
                            metered,
                        })
                    })
                    .collect()
            })
            .collect();
        Routes {
            compiled,
            rules,
            default: None,
            budget,
        }
    }
}

fn backend_ref(b: &policy::Backend, route: &Arc<RouteLabels>) -> BackendRef {
    BackendRef {
        addr: LogicalAddr::Name(b.authority.as_str().into()),
        weight: b.weight,
        labels: Arc::new(BackendLabels {
            route: route.clone(),
            kind: "Service",
            namespace: b.namespace.as_str().into(),
            name: b.name.as_str().into(),
            port: b.port,
        }),
        error: b.error.as_deref().map(Into::into),
        // Routes exist only for Services.
        metered: true,
    }
}

/// The parent labels of a destination the controller names no Service for: its name's first
/// two labels (`web.demo.svc…:80`), or its address.
fn parent_of(addr: &LogicalAddr) -> (Arc<str>, Arc<str>, u16) {
    match addr {
        LogicalAddr::Addr(a) => ("".into(), a.ip().to_string().into(), a.port()),
        LogicalAddr::Name(name) => {
            let (host, port) = name.rsplit_once(':').unwrap_or((name, "0"));
            let port = port.parse().unwrap_or(0);
            let mut labels = host.split('.');
            let svc = labels.next().unwrap_or_default();
            let ns = labels.next().unwrap_or_default();
            (ns.into(), svc.into(), port)
        }
    }
}

// === what the route stack's layers read ===

impl Param<Option<RouteKey>> for RouteTarget {
    fn param(&self) -> Option<RouteKey> {
        self.metered.then(|| RouteKey(self.labels.clone()))
    }
}

impl Param<RequestTimeoutParam> for RouteTarget {
    fn param(&self) -> RequestTimeoutParam {
        RequestTimeoutParam(
            self.rule
                .timeouts
                .request_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        )
    }
}

impl Param<RetryParams> for RouteTarget {
    fn param(&self) -> RetryParams {
        let retry = self
            .rule
            .retry
            .clone()
            .or_else(|| self.default_retry.clone());
        // The shorter of the backend request timeout and the retry's per-attempt timeout.
        let attempt_timeout = [
            self.rule.timeouts.backend_request_ms,
            retry.as_ref().and_then(|r| r.timeout_ms),
        ]
        .into_iter()
        .flatten()
        .filter(|ms| *ms > 0)
        .min()
        .map(Duration::from_millis);
        RetryParams {
            retry: retry.filter(|r| r.limit > 0).map(Arc::new),
            attempt_timeout,
            budget: self.budget.clone(),
            labels: self.labels.clone(),
        }
    }
}

impl Param<FilterParams> for RouteTarget {
    fn param(&self) -> FilterParams {
        FilterParams {
            filters: self
                .rule
                .filters
                .iter()
                .filter(|f| !matches!(f, Filter::RequestMirror(_)))
                .cloned()
                .collect(),
            labels: self.labels.clone(),
        }
    }
}

impl Param<MirrorsParam> for RouteTarget {
    fn param(&self) -> MirrorsParam {
        MirrorsParam(
            self.rule
                .filters
                .iter()
                .filter_map(|f| match f {
                    Filter::RequestMirror(m) => {
                        Some((backend_ref(&m.backend, &self.labels), m.percent))
                    }
                    _ => None,
                })
                .collect(),
        )
    }
}

impl Param<BackendsParam> for RouteTarget {
    fn param(&self) -> BackendsParam {
        BackendsParam(self.backends.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::NO_TLS_DISABLED, svc::NewFn};
    use tower::Service;

    /// Rule stacks that answer with their route's name and backend.
    fn new_rule() -> impl NewService<RouteTarget, Service = RuleService> + Clone {
        NewFn(|t: RouteTarget| {
            let backend = t.backends[0].addr.to_string();
            let metered = t.metered;
            RuleService::new(tower::service_fn(move |_: Request<BoxBody>| {
                let mut rsp = Response::new(BoxBody::empty());
                rsp.headers_mut()
                    .insert("backend", backend.parse().unwrap());
                rsp.headers_mut()
                    .insert("metered", metered.to_string().parse().unwrap());
                futures_util::future::ready(Ok::<_, BoxError>(rsp))
            }))
        })
    }

    #[tokio::test]
    async fn without_a_controller_every_request_takes_the_default_rule_uncounted() {
        let metrics = RouteMetrics::default();
        let router = NewRouter::new(None, new_rule(), Duration::from_millis(10), metrics);
        let mut svc = router.new_service(Logical {
            addr: LogicalAddr::Addr("10.0.0.1:80".parse().unwrap()),
            no_tls: NO_TLS_DISABLED,
        });
        for path in ["/", "/a"] {
            let req = Request::get(path).body(BoxBody::empty()).unwrap();
            let rsp = svc.call(req).await.unwrap();
            assert_eq!(rsp.headers()["backend"], "10.0.0.1:80");
            assert_eq!(
                rsp.headers()["metered"],
                "false",
                "an address that is no Service leaves no route label sets"
            );
        }
    }

    #[test]
    fn parents_of_destinations_without_a_service() {
        assert_eq!(
            parent_of(&LogicalAddr::Name("web.demo.svc.cluster.local:8080".into())),
            ("demo".into(), "web".into(), 8080)
        );
        assert_eq!(
            parent_of(&LogicalAddr::Addr("10.0.0.1:80".parse().unwrap())),
            ("".into(), "10.0.0.1".into(), 80)
        );
    }

    #[test]
    fn forgotten_routes_leave_the_metrics() {
        let metrics = RouteMetrics::default();
        let route = Arc::new(RouteLabels {
            route_name: "canary".into(),
            ..RouteLabels::default()
        });
        metrics
            .request_total
            .get_or_create(&RouteKey(route.clone()))
            .inc();
        let backend = Arc::new(BackendLabels {
            route: route.clone(),
            kind: "Service",
            namespace: "demo".into(),
            name: "web-v2".into(),
            port: 80,
        });
        metrics
            .backend_request_total
            .get_or_create(&crate::metrics::BackendKey(backend.clone()))
            .inc();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("r", "r", metrics.request_total.clone());
        registry.register("b", "b", metrics.backend_request_total.clone());
        let text = |r: &prometheus_client::registry::Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).unwrap();
            out
        };
        assert!(text(&registry).contains("canary"));
        metrics.forget_route(&route);
        metrics.forget_backend(&backend);
        assert!(!text(&registry).contains("canary"), "{}", text(&registry));
    }
}
