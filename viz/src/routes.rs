//! Per-route traffic of a workload's outbound proxies (`mesh viz routes`): for each route a
//! caller's requests took (the parent Service and port it attaches to, and the `HTTPRoute`,
//! `GRPCRoute` or the Service's `default` route), its success rate, RPS, latency quantiles,
//! retries and injected faults, and the same for each backend of its split.
//!
//! The proxies' route families are the contract this folds (label values are opaque strings,
//! printed as they come):
//!
//! | family | labels besides the route's |
//! |---|---|
//! | `outbound_http_route_request_total` | |
//! | `outbound_http_route_response_total` | `classification` (`success`, else a failure) |
//! | `outbound_http_route_response_latency_ms_bucket` | `le` |
//! | `outbound_http_route_backend_request_total` | the backend's |
//! | `outbound_http_route_backend_response_total` | the backend's, `classification` |
//! | `outbound_http_route_backend_response_latency_ms_bucket` | the backend's, `le` |
//! | `outbound_http_retry_total` | `result`: `success`, `failure`, `not_replayable` |
//! | `retry_budget_exhausted_total` | only `parent_*`: the budget is the parent's |
//! | `fault_injected_total` | `fault`, `kind` (`abort`, `delay`) |
//! | `mirror_total`, `mirror_dropped_total` | the (mirror) backend's |
//!
//! A route is `parent_namespace`, `parent_name`, `parent_port`, `route_kind`,
//! `route_namespace`, `route_name`; a backend `backend_kind`, `backend_namespace`,
//! `backend_name`, `backend_port`. Every other label is summed over.
//!
//! Counters are cumulative since a proxy started: each series' value in the window is its
//! difference between two scrapes (a series that went down was reset, and counts whole; one
//! that is new counts whole too); without a first scrape, the figures cover the proxies' whole
//! life and there are no rates.

use std::collections::{BTreeMap, HashMap};

use crate::model::PodInfo;
use crate::prom::{label, Sample};
use crate::stat::{self, count, counted, quantile, window, Scrapes};

/// Requests per route.
pub const REQUESTS: &str = "outbound_http_route_request_total";
/// Responses per route, by `classification`.
pub const RESPONSES: &str = "outbound_http_route_response_total";
/// The latency histogram per route.
pub const LATENCY: &str = "outbound_http_route_response_latency_ms_bucket";
/// Requests (attempts) per route and backend.
pub const BACKEND_REQUESTS: &str = "outbound_http_route_backend_request_total";
/// Responses per route and backend, by `classification`.
pub const BACKEND_RESPONSES: &str = "outbound_http_route_backend_response_total";
/// The latency histogram per route and backend.
pub const BACKEND_LATENCY: &str = "outbound_http_route_backend_response_latency_ms_bucket";
/// Retry attempts per route, by `result`.
pub const RETRIES: &str = "outbound_http_retry_total";
/// Retries refused by the parent's budget.
pub const BUDGET_EXHAUSTED: &str = "retry_budget_exhausted_total";
/// Faults injected per route, by `fault` and `kind`.
pub const FAULTS: &str = "fault_injected_total";
/// Requests mirrored per route and (mirror) backend.
pub const MIRRORED: &str = "mirror_total";
/// Mirrored requests dropped per route and (mirror) backend.
pub const MIRROR_DROPPED: &str = "mirror_dropped_total";

/// The families [`routes`] reads; every one is in `mesh_api::viz::FAMILIES`, so both sources
/// keep them and the metrics API queries them.
pub const ROUTE_FAMILIES: [&str; 11] = [
    REQUESTS,
    RESPONSES,
    LATENCY,
    BACKEND_REQUESTS,
    BACKEND_RESPONSES,
    BACKEND_LATENCY,
    RETRIES,
    BUDGET_EXHAUSTED,
    FAULTS,
    MIRRORED,
    MIRROR_DROPPED,
];

/// What `mesh viz routes` shows, and its JSON (`-o json`):
///
/// ```json
/// {"window": 5.0,
///  "routes": [{"parent": {"namespace": "demo", "name": "web-svc", "port": "80"},
///              "route": {"kind": "HTTPRoute", "namespace": "demo", "name": "web-split"},
///              "requests": 100, "successRate": 0.98, "rps": 20.0,
///              "latencyMs": {"p50": 2.5, "p95": 9.5, "p99": 19.0},
///              "retries": {"rps": 0.4, "share": 0.02, "success": 1, "failure": 1,
///                          "notReplayable": 0, "budgetExhausted": 0},
///              "faults": [{"kind": "abort", "fault": "503", "count": 3}],
///              "backends": [{"backend": {"kind": "Service", "namespace": "demo",
///                                        "name": "web-v1", "port": "8080"},
///                            "requests": 80, "successRate": 1.0, "rps": 16.0,
///                            "latencyMs": {"p50": 2.0, "p95": 8.0, "p99": 9.6},
///                            "mirrored": 0, "mirrorDropped": 0}]}]}
/// ```
///
/// Counts are of the window (or since the proxies started, with `window` 0, where every `rps`
/// is `null`); a figure without data (no responses, no latency) is `null`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Routes {
    /// The seconds between the two scrapes; 0: since the proxies started.
    pub window: f64,
    /// The routes with traffic in the window, by parent then route.
    pub routes: Vec<RouteStats>,
}

/// The Service and port routes attach to.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Parent {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

/// A route: `HTTPRoute`, `GRPCRoute`, or `default` (the route of a Service without routes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RouteRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// A backend of a route: a `Service` (and port), or `default`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct BackendRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub port: String,
}

/// Latency quantiles in ms, from the histogram's buckets (see [`quantile`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// A route's retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retry attempts (`success` + `failure`) per second; `None` without a window.
    pub rps: Option<f64>,
    /// Retry attempts per request of the route; `None` without requests.
    pub share: Option<f64>,
    /// Attempts that succeeded.
    pub success: u64,
    /// Attempts that failed.
    pub failure: u64,
    /// Retryable failures not retried because their body was too large to replay.
    pub not_replayable: u64,
    /// Retries refused because the parent's budget was spent: the parent's count, the same on
    /// each of its routes.
    pub budget_exhausted: u64,
}

/// Faults of one kind injected on a route.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Fault {
    /// `abort` or `delay`.
    pub kind: String,
    /// Which fault (the proxy's `fault` label).
    pub fault: String,
    pub count: u64,
}

/// One route of `mesh viz routes`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStats {
    pub parent: Parent,
    pub route: RouteRef,
    /// Requests in the window.
    pub requests: u64,
    /// The share of successful responses; `None` without responses.
    pub success_rate: Option<f64>,
    /// Requests per second; `None` without a window.
    pub rps: Option<f64>,
    pub latency_ms: Latency,
    pub retries: Retries,
    /// Injected faults, only those counted in the window.
    pub faults: Vec<Fault>,
    /// The route's backends with traffic in the window, in order of their names.
    pub backends: Vec<BackendStats>,
}

/// One backend of a route.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStats {
    pub backend: BackendRef,
    /// Requests (attempts, retries included) sent to the backend in the window.
    pub requests: u64,
    pub success_rate: Option<f64>,
    pub rps: Option<f64>,
    pub latency_ms: Latency,
    /// Requests mirrored to this backend.
    pub mirrored: u64,
    /// Mirrored requests dropped.
    pub mirror_dropped: u64,
}

/// The routes of the requests `pods` sent between two scrapes (`before` and `after`,
/// `seconds` apart); without `before`, since the proxies started, without rates.
pub fn routes(pods: &[PodInfo], before: Option<&Scrapes>, after: &Scrapes, seconds: f64) -> Routes {
    let mut fold = Fold::default();
    for (_, sample, value) in counted(pods, before, after, &ROUTE_FAMILIES) {
        fold.add(sample, value);
    }
    fold.finish(window(before, seconds))
}

// === the fold ===

#[derive(Default)]
struct Fold {
    routes: BTreeMap<(Parent, RouteRef), RouteSum>,
    budgets: HashMap<Parent, f64>,
}

#[derive(Default)]
struct RouteSum {
    requests: f64,
    responses: Responses,
    retries: [f64; 3],
    faults: BTreeMap<(String, String), f64>,
    backends: BTreeMap<BackendRef, BackendSum>,
}

#[derive(Default)]
struct BackendSum {
    requests: f64,
    responses: Responses,
    mirrored: f64,
    mirror_dropped: f64,
}

/// Responses by classification, and their latency histogram.
#[derive(Default)]
struct Responses {
    success: f64,
    failure: f64,
    /// Bucket counts by upper bound (its bits: bounds are non-negative, so they sort like the
    /// numbers).
    buckets: BTreeMap<u64, (f64, f64)>,
}

impl Fold {
    fn add(&mut self, s: &Sample, value: f64) {
        if s.name == BUDGET_EXHAUSTED {
            *self.budgets.entry(parent(s)).or_default() += value;
            return;
        }
        let route = self.routes.entry((parent(s), route(s))).or_default();
        match s.name.as_str() {
            REQUESTS => route.requests += value,
            RESPONSES => route.responses.count(s, value),
            LATENCY => route.responses.observe(s, value),
            RETRIES => match s.label("result") {
                Some("success") => route.retries[0] += value,
                Some("failure") => route.retries[1] += value,
                Some("not_replayable") => route.retries[2] += value,
                _ => {}
            },
            FAULTS => {
                let fault = (label(s, "kind"), label(s, "fault"));
                *route.faults.entry(fault).or_default() += value;
            }
            _ => {
                let backend = route.backends.entry(backend(s)).or_default();
                match s.name.as_str() {
                    BACKEND_REQUESTS => backend.requests += value,
                    BACKEND_RESPONSES => backend.responses.count(s, value),
                    BACKEND_LATENCY => backend.responses.observe(s, value),
                    MIRRORED => backend.mirrored += value,
                    MIRROR_DROPPED => backend.mirror_dropped += value,
                    _ => {}
                }
            }
        }
    }

    fn finish(self, window: f64) -> Routes {
        let rate = |n: f64| stat::rate(n, window);
        let routes = self
            .routes
            .into_iter()
            .filter_map(|((parent, route), sum)| {
                let backends: Vec<BackendStats> = sum
                    .backends
                    .into_iter()
                    .filter(|(_, b)| {
                        b.requests + b.responses.total() + b.mirrored + b.mirror_dropped > 0.0
                    })
                    .map(|(backend, b)| BackendStats {
                        backend,
                        requests: count(b.requests),
                        success_rate: b.responses.success_rate(),
                        rps: rate(b.requests),
                        latency_ms: b.responses.latency(),
                        mirrored: count(b.mirrored),
                        mirror_dropped: count(b.mirror_dropped),
                    })
                    .collect();
                let [success, failure, not_replayable] = sum.retries;
                let faults: Vec<Fault> = sum
                    .faults
                    .into_iter()
                    .filter(|(_, n)| *n > 0.0)
                    .map(|((kind, fault), n)| Fault {
                        kind,
                        fault,
                        count: count(n),
                    })
                    .collect();
                let active =
                    sum.requests + sum.responses.total() + success + failure + not_replayable > 0.0
                        || !faults.is_empty()
                        || !backends.is_empty();
                if !active {
                    return None;
                }
                let attempts = success + failure;
                Some(RouteStats {
                    requests: count(sum.requests),
                    success_rate: sum.responses.success_rate(),
                    rps: rate(sum.requests),
                    latency_ms: sum.responses.latency(),
                    retries: Retries {
                        rps: rate(attempts),
                        share: (sum.requests > 0.0).then(|| attempts / sum.requests),
                        success: count(success),
                        failure: count(failure),
                        not_replayable: count(not_replayable),
                        budget_exhausted: count(
                            self.budgets.get(&parent).copied().unwrap_or_default(),
                        ),
                    },
                    faults,
                    backends,
                    parent,
                    route,
                })
            })
            .collect();
        Routes { window, routes }
    }
}

impl Responses {
    fn count(&mut self, s: &Sample, value: f64) {
        match s.label("classification") {
            Some("success") => self.success += value,
            _ => self.failure += value,
        }
    }

    fn observe(&mut self, s: &Sample, value: f64) {
        let le = match s.label("le") {
            Some("+Inf") => f64::INFINITY,
            Some(v) => match v.parse::<f64>() {
                Ok(le) if le >= 0.0 => le,
                _ => return,
            },
            None => return,
        };
        self.buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
    }

    fn total(&self) -> f64 {
        self.success + self.failure
    }

    fn success_rate(&self) -> Option<f64> {
        (self.total() > 0.0).then(|| self.success / self.total())
    }

    fn latency(&self) -> Latency {
        let buckets: Vec<(f64, f64)> = self.buckets.values().copied().collect();
        Latency {
            p50: quantile(0.5, &buckets),
            p95: quantile(0.95, &buckets),
            p99: quantile(0.99, &buckets),
        }
    }
}

fn parent(s: &Sample) -> Parent {
    Parent {
        namespace: label(s, "parent_namespace"),
        name: label(s, "parent_name"),
        port: label(s, "parent_port"),
    }
}

fn route(s: &Sample) -> RouteRef {
    RouteRef {
        kind: label(s, "route_kind"),
        namespace: label(s, "route_namespace"),
        name: label(s, "route_name"),
    }
}

fn backend(s: &Sample) -> BackendRef {
    BackendRef {
        kind: label(s, "backend_kind"),
        namespace: label(s, "backend_namespace"),
        name: label(s, "backend_name"),
        port: label(s, "backend_port"),
    }
}

// === display ===

impl std::fmt::Display for Parent {
    /// `demo/web-svc:80`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

impl std::fmt::Display for RouteRef {
    /// `HTTPRoute demo/web-split`, or `default`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == "default" {
            return f.write_str("default");
        }
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl std::fmt::Display for BackendRef {
    /// `Service demo/web-v1:8080`, or the kind alone without a name (`default`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() {
            return f.write_str(&self.kind);
        }
        write!(
            f,
            "{} {}/{}:{}",
            self.kind, self.namespace, self.name, self.port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn pod(name: &str) -> PodInfo {
        testing::pod(name, "client")
    }

    fn scrapes(entries: &[(&str, &str)]) -> Scrapes {
        testing::scrapes(entries, expand)
    }

    /// The scrapes spell labels in short: `R` is the split route's labels, `D` the default
    /// route's, `V1`/`V2` the split's backends.
    fn expand(text: &str) -> String {
        const R: &str = r#"parent_namespace="demo",parent_name="web-svc",parent_port="80",route_kind="HTTPRoute",route_namespace="demo",route_name="web-split""#;
        const D: &str = r#"parent_namespace="demo",parent_name="emoji-svc",parent_port="8080",route_kind="default",route_namespace="demo",route_name="default""#;
        const V1: &str = r#"backend_kind="Service",backend_namespace="demo",backend_name="web-v1",backend_port="80""#;
        const V2: &str = r#"backend_kind="Service",backend_namespace="demo",backend_name="web-v2",backend_port="80""#;
        text.replace("$R", R)
            .replace("$D", D)
            .replace("$V1", V1)
            .replace("$V2", V2)
    }

    const BEFORE: &str = r#"
outbound_http_route_request_total{$R} 100
outbound_http_route_response_total{$R,classification="success"} 95
outbound_http_route_response_total{$R,classification="failure"} 5
outbound_http_route_response_latency_ms_bucket{$R,le="10"} 90
outbound_http_route_response_latency_ms_bucket{$R,le="100"} 100
outbound_http_route_response_latency_ms_bucket{$R,le="+Inf"} 100
outbound_http_route_backend_request_total{$R,$V1} 80
outbound_http_route_backend_response_total{$R,$V1,classification="success"} 80
outbound_http_route_backend_request_total{$R,$V2} 25
outbound_http_route_backend_response_total{$R,$V2,classification="success"} 15
outbound_http_route_backend_response_total{$R,$V2,classification="failure"} 10
outbound_http_retry_total{$R,result="success"} 4
outbound_http_retry_total{$R,result="failure"} 1
retry_budget_exhausted_total{parent_namespace="demo",parent_name="web-svc",parent_port="80"} 0
outbound_http_route_request_total{$D} 7
outbound_http_route_response_total{$D,classification="success"} 7
"#;

    const AFTER: &str = r#"
# TYPE outbound_http_route_request_total counter
outbound_http_route_request_total{$R} 140
outbound_http_route_response_total{$R,classification="success"} 131
outbound_http_route_response_total{$R,classification="failure"} 9
outbound_http_route_response_latency_ms_bucket{$R,le="10"} 110
outbound_http_route_response_latency_ms_bucket{$R,le="100"} 140
outbound_http_route_response_latency_ms_bucket{$R,le="+Inf"} 140
outbound_http_route_response_latency_ms_sum{$R} 999
outbound_http_route_response_latency_ms_count{$R} 140
outbound_http_route_backend_request_total{$R,$V1} 110
outbound_http_route_backend_response_total{$R,$V1,classification="success"} 110
outbound_http_route_backend_response_latency_ms_bucket{$R,$V1,le="10"} 30
outbound_http_route_backend_response_latency_ms_bucket{$R,$V1,le="+Inf"} 30
outbound_http_route_backend_request_total{$R,$V2} 39
outbound_http_route_backend_response_total{$R,$V2,classification="success"} 21
outbound_http_route_backend_response_total{$R,$V2,classification="failure"} 18
outbound_http_retry_total{$R,result="success"} 8
outbound_http_retry_total{$R,result="failure"} 5
outbound_http_retry_total{$R,result="not_replayable"} 2
retry_budget_exhausted_total{parent_namespace="demo",parent_name="web-svc",parent_port="80"} 3
fault_injected_total{$R,fault="abort-503",kind="abort"} 6
fault_injected_total{$R,fault="delay-1s",kind="delay"} 0
outbound_http_route_request_total{$D} 7
outbound_http_route_response_total{$D,classification="success"} 7
response_total{direction="outbound",classification="success"} 1000
"#;

    #[test]
    fn a_window_of_a_split_route() {
        let before = scrapes(&[("client", BEFORE)]);
        let after = scrapes(&[("client", AFTER)]);
        let r = routes(&[pod("client")], Some(&before), &after, 4.0);
        assert_eq!(r.window, 4.0);
        // The default route sent nothing in the window: left out.
        assert_eq!(r.routes.len(), 1, "{r:#?}");
        let split = &r.routes[0];
        assert_eq!(split.parent.to_string(), "demo/web-svc:80");
        assert_eq!(split.route.to_string(), "HTTPRoute demo/web-split");
        assert_eq!(split.requests, 40);
        assert_eq!(split.rps, Some(10.0));
        assert_eq!(split.success_rate, Some(0.9));
        // 20 of 40 at most 10 ms, the others at most 100 ms.
        assert_eq!(split.latency_ms.p50, Some(10.0));
        assert_eq!(split.latency_ms.p95, Some(91.0));
        let retries = split.retries;
        assert_eq!((retries.success, retries.failure), (4, 4));
        assert_eq!(retries.not_replayable, 2);
        assert_eq!(retries.rps, Some(2.0));
        assert_eq!(retries.share, Some(0.2));
        assert_eq!(retries.budget_exhausted, 3);
        assert_eq!(
            split.faults,
            vec![Fault {
                kind: "abort".into(),
                fault: "abort-503".into(),
                count: 6
            }],
            "the delay fault counted nothing"
        );
        let names: Vec<String> = split
            .backends
            .iter()
            .map(|b| b.backend.to_string())
            .collect();
        assert_eq!(names, ["Service demo/web-v1:80", "Service demo/web-v2:80"]);
        let (v1, v2) = (&split.backends[0], &split.backends[1]);
        assert_eq!(
            (v1.requests, v1.rps, v1.success_rate),
            (30, Some(7.5), Some(1.0))
        );
        // New since the first scrape: counts whole.
        assert_eq!(v1.latency_ms.p50, Some(5.0));
        assert_eq!((v2.requests, v2.success_rate), (14, Some(6.0 / 14.0)));
        assert_eq!(v2.latency_ms, Latency::default(), "no histogram");
    }

    #[test]
    fn since_start_there_are_counts_but_no_rates() {
        let after = scrapes(&[("client", AFTER)]);
        let r = routes(&[pod("client")], None, &after, 0.0);
        assert_eq!(r.window, 0.0);
        let names: Vec<String> = r
            .routes
            .iter()
            .map(|r| format!("{} {}", r.parent, r.route))
            .collect();
        assert_eq!(
            names,
            [
                "demo/emoji-svc:8080 default",
                "demo/web-svc:80 HTTPRoute demo/web-split"
            ]
        );
        let split = &r.routes[1];
        assert_eq!((split.requests, split.rps), (140, None));
        assert_eq!(split.retries.rps, None);
        assert_eq!((split.retries.success, split.retries.failure), (8, 5));
        assert!(split.backends.iter().all(|b| b.rps.is_none()));
        // A before without a window length is no window either.
        let before = scrapes(&[("client", BEFORE)]);
        assert_eq!(
            routes(&[pod("client")], Some(&before), &after, 0.0).window,
            0.0
        );
    }

    #[test]
    fn only_the_callers_pods_are_read_and_summed() {
        let after = scrapes(&[("client", AFTER), ("client-2", AFTER), ("other", AFTER)]);
        let r = routes(&[pod("client"), pod("client-2")], None, &after, 0.0);
        let split = &r.routes[1];
        assert_eq!(split.requests, 280);
        assert_eq!(split.backends[0].requests, 220);
        assert_eq!(split.retries.budget_exhausted, 6);
    }

    #[test]
    fn a_proxy_that_restarted_counts_its_new_values_whole() {
        let before = scrapes(&[("client", AFTER)]);
        let after = scrapes(&[("client", BEFORE)]);
        let r = routes(&[pod("client")], Some(&before), &after, 10.0);
        // Every counter went down (the scrapes swapped): all of `BEFORE` is new, the default
        // route's equal counter is not.
        assert_eq!(r.routes.len(), 1, "{r:#?}");
        assert_eq!(r.routes[0].requests, 100);
        assert_eq!(r.routes[0].rps, Some(10.0));
    }

    #[test]
    fn no_route_metrics_no_routes() {
        let after = scrapes(&[(
            "client",
            r#"response_total{direction="outbound",classification="success"} 5"#,
        )]);
        let r = routes(&[pod("client")], None, &after, 0.0);
        assert_eq!(r.routes, vec![]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json, serde_json::json!({"window": 0.0, "routes": []}));
    }

    #[test]
    fn the_json_shape() {
        let before = scrapes(&[("client", BEFORE)]);
        let after = scrapes(&[("client", AFTER)]);
        let r = routes(&[pod("client")], Some(&before), &after, 4.0);
        let json = serde_json::to_value(&r).unwrap();
        let route = &json["routes"][0];
        assert_eq!(
            route["parent"],
            serde_json::json!({"namespace": "demo", "name": "web-svc", "port": "80"})
        );
        assert_eq!(
            route["route"],
            serde_json::json!({"kind": "HTTPRoute", "namespace": "demo", "name": "web-split"})
        );
        assert_eq!(route["successRate"], 0.9);
        assert_eq!(route["rps"], 10.0);
        assert_eq!(route["latencyMs"]["p50"], 10.0);
        assert_eq!(
            route["retries"],
            serde_json::json!({"rps": 2.0, "share": 0.2, "success": 4, "failure": 4,
                               "notReplayable": 2, "budgetExhausted": 3})
        );
        assert_eq!(route["faults"][0]["count"], 6);
        let backend = &route["backends"][1];
        assert_eq!(backend["backend"]["name"], "web-v2");
        assert_eq!(backend["latencyMs"]["p99"], serde_json::Value::Null);
        assert_eq!(backend["mirrorDropped"], 0);
    }

    #[test]
    fn mirrors_are_backends_of_their_route() {
        let after = scrapes(&[(
            "client",
            r#"
outbound_http_route_request_total{$R} 10
mirror_total{$R,$V2} 10
mirror_dropped_total{$R,$V2} 2
"#,
        )]);
        let r = routes(&[pod("client")], None, &after, 0.0);
        let mirror = &r.routes[0].backends[0];
        assert_eq!(mirror.backend.name, "web-v2");
        assert_eq!(
            (mirror.requests, mirror.mirrored, mirror.mirror_dropped),
            (0, 10, 2)
        );
    }

    #[test]
    fn every_family_read_is_one_the_sources_keep() {
        testing::assert_the_sources_keep(&ROUTE_FAMILIES);
    }
}
