//! The outbound policy watch: the routes, backends, timeouts and retries of one logical
//! destination, as JSON lines, and its streaming client.
//!
//! `GET /v1/policy/outbound/watch?authority=HOST:PORT&ns=CLIENT_NAMESPACE` answers with a long
//! body of [`OutboundPolicy`] lines. Each line is the **whole** policy of the authority for a
//! client in `ns` (policies are small): the client replaces what it held. The first line is the
//! current state; a new line follows every change.
//!
//! The routes are Gateway API HTTPRoutes and GRPCRoutes whose parent is the authority's Service
//! (GAMMA), already resolved by the controller: backends are authorities the destination watch
//! resolves, `ExtensionRef` faults are inlined, durations are milliseconds, and a GRPCRoute's
//! `service`/`method` match is a path match (`/service/method`). The routes come in Gateway API's
//! tie-break order (oldest first, then namespace/name; a client's own namespace's routes only,
//! when it has any for the Service); [`Match::rank`] orders the matches of all of them, and the
//! first matching one wins (see [`select`]).
//!
//! ```
//! use mesh_api::policy::OutboundPolicy;
//! let line = r#"{"parent":{"namespace":"demo","name":"web-svc","port":80},
//!   "routes":[{"kind":"HTTPRoute","namespace":"demo","name":"web-canary","rules":[{
//!     "matches":[{"path":{"type":"PathPrefix","value":"/api"}}],
//!     "backends":[{"authority":"web-svc.demo.svc.cluster.local:80","namespace":"demo",
//!                  "name":"web-svc","port":80,"weight":90},
//!                 {"authority":"web-v2.demo.svc.cluster.local:80","namespace":"demo",
//!                  "name":"web-v2","port":80,"weight":10}],
//!     "timeouts":{"requestMs":2000}}]}],
//!   "retryBudget":{"ratio":0.2,"minRetriesPerSecond":10,"windowSeconds":10}}"#;
//! let policy: OutboundPolicy = serde_json::from_str(line).unwrap();
//! assert_eq!(policy.routes[0].rules[0].backends[1].weight, 10);
//! ```

use std::cmp::Reverse;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::destination::{Connector, WatchError};

/// The path of the outbound policy watch.
pub const OUTBOUND_WATCH_PATH: &str = "/v1/policy/outbound/watch";

/// The annotations the controller reads on a Service or a route, for what Gateway API does not
/// express (see `api/README.md`).
pub mod annotations {
    /// Statuses to retry: `5xx`, `gateway-error` (502, 503, 504), codes and ranges
    /// (`500,502-504`).
    pub const RETRY_HTTP: &str = "retry.mesh.io/http";
    /// gRPC statuses to retry: `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`.
    pub const RETRY_GRPC: &str = "retry.mesh.io/grpc";
    /// How many retries a request may take (default 1 when a retry condition is set).
    pub const RETRY_LIMIT: &str = "retry.mesh.io/limit";
    /// The timeout of each attempt (`500ms`).
    pub const RETRY_TIMEOUT: &str = "retry.mesh.io/timeout";
    /// The budget: retries as a share of requests (default 0.2), on the Service.
    pub const RETRY_BUDGET_RATIO: &str = "retry.mesh.io/budget-ratio";
    /// The budget: retries per second always allowed (default 10), on the Service.
    pub const RETRY_BUDGET_MIN_RPS: &str = "retry.mesh.io/budget-min-rps";
}

/// The outbound policy of one authority for one client namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundPolicy {
    /// The Service and port the authority names; `None` when it names no Service (then there
    /// are no routes and the proxy keeps its default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// The routes that apply, HTTPRoutes and GRPCRoutes, in tie-break order. Empty: the default
    /// route (every request to the authority itself).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The retry of the default route, from the Service's annotations (routes carry their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// The Service's retry budget, shared by all its routes.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// The codec of the Service port (its `appProtocol` `mesh.io/<codec>`: `redis`, `thrift`),
    /// when its connections carry a protocol the proxy decodes into frames; `None`: HTTP or
    /// opaque TCP as detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// The `MetaRoute`s whose parent is the Service port (codec ports only), in tie-break order
    /// (oldest first, then namespace/name): the first rule whose match holds takes a frame;
    /// none: the Service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta_routes: Vec<MetaRoute>,
}

/// A `policy.mesh.io/v1alpha1` `MetaRoute`: routing of a codec's requests by their metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaRoute {
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
    /// Its rules, in order.
    pub rules: Vec<MetaRule>,
}

/// One rule of a [`MetaRoute`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaRule {
    /// Any of these selects the rule; none: every request.
    #[serde(default)]
    pub matches: Vec<MetaMatch>,
    /// Weighted backends (none in the object: the parent Service, filled in by the controller).
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Metadata keys set on the request before it is forwarded (the codec writes back the
    /// keys it can: Thrift's `method`); metrics and tap see the new values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mutation: Vec<MetaMutation>,
    /// How long a request may wait for its response (absent: no timeout); when it fires the
    /// client gets the codec's local reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// What a request's metadata must hold: every key match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaMatch {
    /// Matches of metadata keys, all of which must hold.
    #[serde(default)]
    pub metadata: Vec<MetaValueMatch>,
}

/// One metadata key's match (a missing key never matches).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaValueMatch {
    /// The key: `command`, `key` (Redis), `method`, `type` (Thrift).
    pub key: String,
    /// How the value compares.
    #[serde(rename = "type", default)]
    pub kind: MetaMatchKind,
    /// The value, prefix or pattern.
    pub value: String,
}

/// How a [`MetaValueMatch`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaMatchKind {
    /// Equal.
    #[default]
    Exact,
    /// Starts with the value.
    Prefix,
    /// A regular expression matching the whole value.
    RegularExpression,
}

/// A metadata key set on a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaMutation {
    /// The key.
    pub key: String,
    /// Its new value.
    pub value: String,
}

/// A Service port that routes attach to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Parent {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port.
    pub port: u16,
}

/// The kind of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RouteKind {
    /// A Gateway API HTTPRoute.
    #[default]
    #[serde(rename = "HTTPRoute")]
    Http,
    /// A Gateway API GRPCRoute.
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

impl RouteKind {
    /// The kind as Gateway API spells it (the `route_kind` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
        }
    }
}

/// One route and its rules.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// One rule of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Any of these matches selects the rule; none means every request (`PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<Match>,
    /// Applied in order.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Weighted backends (a rule of the route that names none gets the parent Service from the
    /// controller). Only invalid ones, or all weights 0: the request is answered 500.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// `timeouts.request` and `timeouts.backendRequest`.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// How failed attempts are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// What a request must have; every given part must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The method (`GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameters, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "queryParams")]
    pub query_params: Vec<ValueMatch>,
}

/// A path match, as Gateway API spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    PathPrefix(String),
    /// A regular expression that must match the whole path.
    RegularExpression(String),
}

/// A header or query parameter match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMatch {
    /// The header (case-insensitive) or parameter (case-sensitive) name.
    pub name: String,
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchKind,
    /// The value or pattern.
    pub value: String,
}

/// How a [`ValueMatch`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueMatchKind {
    /// Equal.
    #[default]
    Exact,
    /// A regular expression matching the whole value.
    RegularExpression,
}

/// How a [`Match`] ranks against others: greater wins. Gateway API's precedence: an exact
/// path, then a regular expression (longer first), then the longest prefix; then a method; then
/// more header matches; then more query matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

impl Match {
    /// This match's rank.
    pub fn rank(&self) -> Rank {
        let (path_kind, path_len) = match &self.path {
            Some(PathMatch::Exact(p)) => (3, p.len()),
            Some(PathMatch::RegularExpression(p)) => (2, p.len()),
            Some(PathMatch::PathPrefix(p)) => (1, p.trim_end_matches('/').len()),
            None => (1, 0),
        };
        Rank {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query_params.len(),
        }
    }
}

/// The order in which the matches of `routes` are tried: `(route, rule, match)` indices, best
/// rank first, ties in the routes' order, then the rules', then the matches'. A rule without
/// matches takes part as `PathPrefix /` with index `usize::MAX`.
pub fn select(routes: &[Route]) -> Vec<(usize, usize, usize)> {
    let catch_all = Match::default();
    let mut order = Vec::new();
    for (ri, route) in routes.iter().enumerate() {
        for (ui, rule) in route.rules.iter().enumerate() {
            if rule.matches.is_empty() {
                order.push((catch_all.rank(), (ri, ui, usize::MAX)));
            }
            for (mi, m) in rule.matches.iter().enumerate() {
                order.push((m.rank(), (ri, ui, mi)));
            }
        }
    }
    // Stable: equal ranks keep the routes' tie-break order.
    order.sort_by_key(|(rank, _)| Reverse(*rank));
    order.into_iter().map(|(_, at)| at).collect()
}

/// A filter of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    /// Headers set, added or removed on the request.
    RequestHeaderModifier(HeaderModifier),
    /// Headers set, added or removed on the response.
    ResponseHeaderModifier(HeaderModifier),
    /// Answer with a redirect instead of forwarding.
    RequestRedirect(Redirect),
    /// Rewrite the host or path before forwarding.
    #[serde(rename = "urlRewrite")]
    UrlRewrite(UrlRewrite),
    /// Send a copy to another backend, fire and forget.
    RequestMirror(Mirror),
    /// Delay or abort some requests (a `policy.mesh.io` `HTTPFault`).
    Fault(Fault),
}

/// Gateway API's `HTTPHeaderFilter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Replace (or add) these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Append these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Remove these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// Gateway API's `HTTPRequestRedirectFilter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; the request's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The request's host when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The request's path when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// The port; the scheme's default when the scheme is set and this is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302 (default).
    #[serde(default = "found")]
    pub status_code: u16,
}

fn found() -> u16 {
    302
}

/// Gateway API's `HTTPURLRewriteFilter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlRewrite {
    /// The new host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// Gateway API's `HTTPPathModifier`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the prefix that the rule's `PathPrefix` match matched.
    ReplacePrefixMatch(String),
}

/// Gateway API's `HTTPRequestMirrorFilter`, with `fraction` turned into a percentage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    /// Where the copies go.
    pub backend: Backend,
    /// The share of requests mirrored, 0 to 100 (default 100).
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// A `policy.mesh.io/v1alpha1` `HTTPFault`, inlined.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// The HTTPFault's name (the `fault` metric label).
    pub name: String,
    /// Delay some requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer some requests with an error instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Delay `percent` of requests by `durationMs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// The delay.
    pub duration_ms: u64,
    /// 0 to 100.
    pub percent: f64,
}

/// Answer `percent` of requests with `httpStatus`, or with `grpcStatus` (gRPC requests).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// The HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The gRPC status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// 0 to 100.
    pub percent: f64,
}

/// A backend of a rule: a Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backend {
    /// What the destination watch resolves: `name.namespace.svc.<domain>:port`.
    pub authority: String,
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port.
    pub port: u16,
    /// Its share of the rule's requests, relative to the others (0 drains it).
    #[serde(default = "one")]
    pub weight: u32,
    /// Why the backend cannot be used (an unknown Service): its share is answered 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn one() -> u32 {
    1
}

/// A rule's timeouts (absent: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// For the whole request, retries included (504 when it fires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// For each attempt to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

/// When and how often an attempt is retried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// HTTP statuses that are retried, as inclusive ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<StatusRange>,
    /// gRPC status codes that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc: Vec<u16>,
    /// Retries per request (not counting the first attempt).
    pub limit: u32,
    /// The timeout of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The pause before a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// An inclusive range of HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRange {
    /// The first.
    pub min: u16,
    /// The last.
    pub max: u16,
}

/// How many retries a Service allows: `ratio` of its requests over `windowSeconds`, plus
/// `minRetriesPerSecond`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries per request.
    pub ratio: f64,
    /// Retries per second allowed whatever the traffic.
    pub min_retries_per_second: u32,
    /// The window requests are counted over.
    pub window_seconds: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_retries_per_second: 10,
            window_seconds: 10,
        }
    }
}

/// The gRPC status codes `retry.mesh.io/grpc` names.
pub fn grpc_code(name: &str) -> Option<u16> {
    Some(match name {
        "cancelled" => 1,
        "deadline-exceeded" => 4,
        "resource-exhausted" => 8,
        "internal" => 13,
        "unavailable" => 14,
        _ => return None,
    })
}

/// Parses `retry.mesh.io/http`: `5xx`, `gateway-error`, codes and ranges, comma-separated.
pub fn parse_http_statuses(value: &str) -> Result<Vec<StatusRange>, String> {
    let mut ranges = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let code = |s: &str| -> Result<u16, String> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("{s:?} is not an HTTP status (100-599)"))
        };
        match part {
            "5xx" => ranges.push(StatusRange { min: 500, max: 599 }),
            "gateway-error" => ranges.push(StatusRange { min: 502, max: 504 }),
            _ => match part.split_once('-') {
                Some((a, b)) => {
                    let (min, max) = (code(a)?, code(b)?);
                    if min > max {
                        return Err(format!("{part:?}: the range is empty"));
                    }
                    ranges.push(StatusRange { min, max });
                }
                None => {
                    let c = code(part)?;
                    ranges.push(StatusRange { min: c, max: c });
                }
            },
        }
    }
    if ranges.is_empty() {
        return Err(format!(
            "{value:?} names no status: use 5xx, gateway-error, codes or ranges"
        ));
    }
    Ok(ranges)
}

impl OutboundPolicy {
    /// Encodes the policy as one line of the watch body.
    pub fn to_line(&self) -> Bytes {
        // Plain structs with string keys; floats are finite (the controller checks them).
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Watches the outbound policy of `authority` for a client in `namespace`, at the controller
/// `addr`. Like [`crate::destination::watch_with`], the stream ends after the first error and
/// does not reconnect.
pub fn watch_outbound(
    connector: Connector,
    addr: SocketAddr,
    authority: &str,
    namespace: &str,
) -> impl Stream<Item = Result<OutboundPolicy, WatchError>> + Send + 'static {
    crate::destination::watch_lines(
        connector,
        addr,
        OUTBOUND_WATCH_PATH,
        ("authority", authority),
        vec![("ns", namespace.to_owned())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_match(kind: &str, value: &str) -> Match {
        let path = match kind {
            "exact" => PathMatch::Exact(value.into()),
            "prefix" => PathMatch::PathPrefix(value.into()),
            _ => PathMatch::RegularExpression(value.into()),
        };
        Match {
            path: Some(path),
            ..Match::default()
        }
    }

    #[test]
    fn ranks_follow_gateway_api() {
        let exact = path_match("exact", "/a");
        let long_prefix = path_match("prefix", "/api/v1");
        let prefix = path_match("prefix", "/api");
        let prefix_slash = path_match("prefix", "/api/");
        let with_method = Match {
            method: Some("GET".into()),
            ..prefix.clone()
        };
        let with_header = Match {
            headers: vec![ValueMatch {
                name: "x".into(),
                kind: ValueMatchKind::Exact,
                value: "1".into(),
            }],
            ..with_method.clone()
        };
        assert!(exact.rank() > long_prefix.rank());
        assert!(path_match("regex", "/a.*").rank() > long_prefix.rank());
        assert!(exact.rank() > path_match("regex", "/a.*").rank());
        assert!(long_prefix.rank() > with_header.rank());
        assert!(with_header.rank() > with_method.rank());
        assert!(with_method.rank() > prefix.rank());
        assert_eq!(
            prefix.rank(),
            prefix_slash.rank(),
            "a trailing slash is no longer"
        );
        assert!(prefix.rank() > Match::default().rank());
    }

    #[test]
    fn select_keeps_route_order_on_ties() {
        let rule = |m: Vec<Match>| Rule {
            matches: m,
            ..Rule::default()
        };
        let route = |name: &str, rules| Route {
            name: name.into(),
            rules,
            ..Route::default()
        };
        let routes = vec![
            route(
                "old",
                vec![rule(vec![path_match("prefix", "/a")]), rule(vec![])],
            ),
            route(
                "new",
                vec![rule(vec![
                    path_match("prefix", "/a"),
                    path_match("exact", "/a/b"),
                ])],
            ),
        ];
        assert_eq!(
            select(&routes),
            vec![(1, 0, 1), (0, 0, 0), (1, 0, 0), (0, 1, usize::MAX)]
        );
    }

    #[test]
    fn parses_retry_statuses() {
        assert_eq!(
            parse_http_statuses("5xx").unwrap(),
            vec![StatusRange { min: 500, max: 599 }]
        );
        assert_eq!(
            parse_http_statuses("gateway-error, 429, 500-501").unwrap(),
            vec![
                StatusRange { min: 502, max: 504 },
                StatusRange { min: 429, max: 429 },
                StatusRange { min: 500, max: 501 },
            ]
        );
        for bad in ["", "abc", "600", "503-500", "4xx"] {
            assert!(parse_http_statuses(bad).is_err(), "{bad:?}");
        }
        assert_eq!(grpc_code("unavailable"), Some(14));
        assert_eq!(grpc_code("ok"), None);
    }

    #[test]
    fn wire_round_trips() {
        let policy = OutboundPolicy {
            parent: Some(Parent {
                namespace: "demo".into(),
                name: "web-svc".into(),
                port: 80,
            }),
            routes: vec![Route {
                kind: RouteKind::Grpc,
                namespace: "demo".into(),
                name: "voting".into(),
                rules: vec![Rule {
                    matches: vec![Match {
                        path: Some(PathMatch::Exact("/demo.Voting/Results".into())),
                        method: None,
                        headers: vec![],
                        query_params: vec![],
                    }],
                    filters: vec![
                        Filter::RequestHeaderModifier(HeaderModifier {
                            set: vec![Header {
                                name: "x-a".into(),
                                value: "1".into(),
                            }],
                            ..HeaderModifier::default()
                        }),
                        Filter::Fault(Fault {
                            name: "flaky".into(),
                            delay: None,
                            abort: Some(FaultAbort {
                                http_status: None,
                                grpc_status: Some(14),
                                percent: 10.0,
                            }),
                        }),
                        Filter::UrlRewrite(UrlRewrite {
                            hostname: None,
                            path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
                        }),
                    ],
                    backends: vec![],
                    timeouts: Timeouts {
                        request_ms: Some(1000),
                        backend_request_ms: None,
                    },
                    retry: Some(Retry {
                        grpc: vec![14],
                        limit: 2,
                        ..Retry::default()
                    }),
                }],
            }],
            retry: None,
            retry_budget: RetryBudget::default(),
            codec: Some("redis".into()),
            meta_routes: vec![MetaRoute {
                namespace: "demo".into(),
                name: "sessions".into(),
                rules: vec![MetaRule {
                    matches: vec![MetaMatch {
                        metadata: vec![MetaValueMatch {
                            key: "key".into(),
                            kind: MetaMatchKind::Prefix,
                            value: "session:".into(),
                        }],
                    }],
                    backends: vec![],
                    request_mutation: vec![MetaMutation {
                        key: "method".into(),
                        value: "get_v2".into(),
                    }],
                    timeout_ms: Some(500),
                }],
            }],
        };
        let line = policy.to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains(r#""kind":"GRPCRoute""#), "{text}");
        assert!(text.contains(r#""path":{"type":"Exact","value":"/demo.Voting/Results"}"#));
        assert!(text.contains(r#""urlRewrite":{"path":{"replacePrefixMatch":"/v2"}}"#));
        let back: OutboundPolicy = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, policy);
    }
}
