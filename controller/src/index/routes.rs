//! Gateway API routes (HTTPRoute, GRPCRoute) whose parent is a Service (GAMMA), the mesh's
//! `HTTPFault`, their validation, their conversion into the outbound policy's wire format
//! (`mesh_api::policy`), and the status the controller reports on them. A route whose parent is
//! a `policy.mesh.io` `Server` is an inbound route of that Server instead: only its matches are
//! served ([`inbound_route`], used by `inbound.rs`).
//!
//! The serde structs hold only the fields the mesh reads, spelled as Gateway API spells them.
//! Validation is pure and runs once, when an object is decoded ([`RouteObject::new`]): a route
//! that fails it is kept in the index (so its status can say why) but never served. What
//! depends on other objects (backends, `HTTPFault`s, the parent Service) is resolved when a
//! policy is computed, and only ever marks a backend or a filter, never the whole route.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use mesh_api::policy::{
    self, annotations, Backend, Fault, FaultAbort, FaultDelay, Filter, HeaderModifier, Match,
    Mirror, PathMatch, PathModifier, Redirect, Retry, RetryBudget, RouteKind, StatusRange,
    Timeouts, UrlRewrite, ValueMatch, ValueMatchKind,
};
use serde::{Deserialize, Serialize};

/// The `controllerName` of the status entries the destination controller writes.
pub const CONTROLLER_NAME: &str = "mesh.io/destination-controller";

/// The API group of Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The API group of the mesh's policy resources.
pub const POLICY_GROUP: &str = "policy.mesh.io";

// === Gateway API objects ===

/// A Gateway API `HTTPRoute` (`v1`, or `v1beta1`: the same schema).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// The route's metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the route says.
    #[serde(default)]
    pub spec: HttpRouteSpec,
    /// What controllers reported on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// `HTTPRoute.spec` (hostnames are not read: a mesh route matches its parent Service).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// What the route attaches to; Service parents (outbound) and Server parents (inbound)
    /// concern the mesh.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Any of them selects the rule; none: every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Applied in order.
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Where requests go.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// GEP-2257 durations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// The experimental retry field (GEP-1731).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
}

/// `HTTPRouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path; none is `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Headers, all of which must match.
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    /// Query parameters, all of which must match.
    #[serde(default)]
    pub query_params: Vec<ValueMatchSpec>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `HTTPPathMatch`: `type` defaults to `PathPrefix`, `value` to `/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The path or pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `HTTPHeaderMatch`, `HTTPQueryParamMatch` and `GRPCHeaderMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueMatchSpec {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The header or parameter.
    pub name: String,
    /// The value or pattern.
    pub value: String,
}

/// `HTTPRouteFilter` and `GRPCRouteFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    /// Which of the fields below is set.
    #[serde(rename = "type")]
    pub kind: String,
    /// `RequestHeaderModifier` (Gateway API's shape is the wire's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// `RequestRedirect` (HTTPRoute only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RedirectSpec>,
    /// `URLRewrite` (HTTPRoute only).
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewriteSpec>,
    /// `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorSpec>,
    /// `ExtensionRef`: a `policy.mesh.io` `HTTPFault` in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<LocalObjectRef>,
}

/// `HTTPRequestRedirectFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectSpec {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The new host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
    /// The new port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302 (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
}

/// `HTTPURLRewriteFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UrlRewriteSpec {
    /// The new host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
}

/// `HTTPPathModifier`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifierSpec {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `HTTPRequestMirrorFilter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorSpec {
    /// Where copies go.
    #[serde(rename = "backendRef")]
    pub backend_ref: BackendRef,
    /// 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// `numerator / denominator` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// A fraction of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    /// The share.
    pub numerator: i64,
    /// Out of (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<i64>,
}

/// `LocalObjectReference` of an `ExtensionRef` filter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalObjectRef {
    /// `policy.mesh.io`.
    #[serde(default)]
    pub group: String,
    /// `HTTPFault`.
    pub kind: String,
    /// The object's name.
    pub name: String,
}

/// `HTTPRouteTimeouts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// `HTTPRouteRetry` (experimental channel).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRouteRetry {
    /// HTTP statuses to retry.
    #[serde(default)]
    pub codes: Vec<i64>,
    /// Retries per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// The pause before a retry (GEP-2257).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// `ParentReference`: `kind: Service` with `group: ""` (or `core`) for the outbound side, and
/// `kind: Server` with `group: policy.mesh.io` for a Server's inbound routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// The group (Gateway API's default is `gateway.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The kind (Gateway API's default is `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The namespace (the route's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
    /// A listener of a Gateway (unused by the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// The Service port; unset: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `BackendRef` (`HTTPBackendRef`, `GRPCBackendRef`; their filters are not read).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendRef {
    /// `""` (core) for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service.
    pub name: String,
    /// The route's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Required for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// A Gateway API `GRPCRoute` (`v1`, or `v1alpha2`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcRoute {
    /// The route's metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the route says.
    #[serde(default)]
    pub spec: GrpcRouteSpec,
    /// What controllers reported on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// `GRPCRoute.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// What the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// One rule of a GRPCRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Any of them selects the rule; none: every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Header modifiers, mirror, `ExtensionRef`.
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Where calls go.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// `GRPCRouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcRouteMatch {
    /// The service and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Headers, all of which must match.
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
}

/// `GRPCMethodMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `demo.Voting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `Results`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A `policy.mesh.io/v1alpha1` `HTTPFault`: delay and/or abort a share of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpFault {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What it does.
    #[serde(default)]
    pub spec: HttpFaultSpec,
}

/// `HTTPFault.spec`: `delay` and `abort` are independent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpFaultSpec {
    /// `{duration: "100ms", percent: 0-100}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelaySpec>,
    /// `{httpStatus | grpcStatus, percent: 0-100}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortSpec>,
}

/// `HTTPFault.spec.delay`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultDelaySpec {
    /// A GEP-2257 duration.
    pub duration: String,
    /// 0 to 100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// `HTTPFault.spec.abort`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbortSpec {
    /// The HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// The gRPC status answered to gRPC requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<i64>,
    /// 0 to 100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// `RouteStatus`: one entry per (parent, controller).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The entries.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// `RouteParentStatus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent the entry is about.
    pub parent_ref: ParentRef,
    /// Who wrote it.
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// === impl RouteObject ===

/// Why a route is not served: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The `Accepted=False` reason (`UnsupportedValue`, `IncompatibleFilters`).
    pub reason: &'static str,
    /// The field and what is wrong with it: `spec.rules[0].matches[0].path.value: …`.
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// Either kind of route.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyRoute {
    /// An HTTPRoute.
    Http(HttpRoute),
    /// A GRPCRoute.
    Grpc(GrpcRoute),
}

/// A route as the index holds it: the object and the outcome of its validation.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteObject {
    /// The route.
    pub route: AnyRoute,
    /// `Some`: the route is not served, and why.
    pub invalid: Option<Invalid>,
}

impl RouteObject {
    /// Validates `route` and keeps the outcome with it.
    pub fn new(route: AnyRoute) -> Self {
        let invalid = match &route {
            AnyRoute::Http(r) => validate_http(&r.spec).err(),
            AnyRoute::Grpc(r) => validate_grpc(&r.spec).err(),
        };
        Self { route, invalid }
    }

    /// HTTPRoute or GRPCRoute.
    pub fn kind(&self) -> RouteKind {
        match &self.route {
            AnyRoute::Http(_) => RouteKind::Http,
            AnyRoute::Grpc(_) => RouteKind::Grpc,
        }
    }

    /// The route's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match &self.route {
            AnyRoute::Http(r) => &r.metadata,
            AnyRoute::Grpc(r) => &r.metadata,
        }
    }

    /// Its namespace (`default` when unset).
    pub fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or("default")
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// Its parentRefs.
    pub fn parent_refs(&self) -> &[ParentRef] {
        match &self.route {
            AnyRoute::Http(r) => &r.spec.parent_refs,
            AnyRoute::Grpc(r) => &r.spec.parent_refs,
        }
    }

    /// The status the API holds.
    pub fn status(&self) -> Option<&RouteStatus> {
        match &self.route {
            AnyRoute::Http(r) => r.status.as_ref(),
            AnyRoute::Grpc(r) => r.status.as_ref(),
        }
    }

    /// The Services it attaches to: (namespace, name, port), for its Service parentRefs.
    pub fn service_parents(&self) -> impl Iterator<Item = (&ParentRef, ServiceParent)> + '_ {
        let ns = self.namespace();
        self.parent_refs().iter().filter_map(move |p| {
            let core = matches!(p.group.as_deref(), Some("" | "core"));
            (core && p.kind.as_deref() == Some("Service")).then(|| {
                (
                    p,
                    ServiceParent {
                        namespace: p.namespace.clone().unwrap_or_else(|| ns.to_owned()),
                        name: p.name.clone(),
                        port: p.port,
                    },
                )
            })
        })
    }

    /// The names of the `policy.mesh.io` Servers it attaches to as an inbound route: parentRefs
    /// of kind `Server` in the route's own namespace (a parentRef to another namespace's
    /// Server is not followed).
    pub fn server_parents(&self) -> impl Iterator<Item = &str> + '_ {
        let ns = self.namespace();
        self.parent_refs()
            .iter()
            .filter(move |p| {
                p.group.as_deref() == Some(POLICY_GROUP)
                    && p.kind.as_deref() == Some("Server")
                    && p.namespace.as_deref().is_none_or(|n| n == ns)
            })
            .map(|p| p.name.as_str())
    }

    /// Warnings worth a log line when the object is read: why it is not served, and its invalid
    /// annotations.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .invalid
            .iter()
            .map(|i| format!("the route is not served: {i}"))
            .collect();
        let (_, errors) = retry_annotations(self.metadata().annotations.as_ref());
        out.extend(errors.iter().map(ToString::to_string));
        out
    }
}

/// A Service a route attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceParent {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The port, or every port.
    pub port: Option<u16>,
}

// === validation ===

fn invalid(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Invalid {
    Invalid {
        reason: "UnsupportedValue",
        message: format!("{field}: {reason}"),
    }
}

/// Compiles a pattern as the proxy does (`^(?:PATTERN)$`).
pub fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

pub(super) fn check_regex(field: &str, pattern: &str) -> Result<(), Invalid> {
    compile(pattern).map(drop).map_err(|e| {
        // A syntax error's text draws the pattern over several lines; its last says what.
        let text = e.to_string();
        let reason = text.lines().last().unwrap_or_default().trim();
        let reason = reason.trim_start_matches("error: ");
        invalid(
            field,
            format!("invalid regular expression {pattern:?}: {reason}"),
        )
    })
}

fn check_header_name(field: &str, name: &str) -> Result<(), Invalid> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(drop)
        .map_err(|_| invalid(field, format!("{name:?} is not a valid header name")))
}

fn check_percent(field: &str, percent: f64) -> Result<(), Invalid> {
    if percent.is_finite() && (0.0..=100.0).contains(&percent) {
        Ok(())
    } else {
        Err(invalid(field, format!("{percent} is not within 0-100")))
    }
}

fn check_value_matches(
    field: &str,
    matches: &[ValueMatchSpec],
    headers: bool,
) -> Result<(), Invalid> {
    for (i, m) in matches.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if headers {
            check_header_name(&format!("{f}.name"), &m.name)?;
        } else if m.name.is_empty() {
            return Err(invalid(format!("{f}.name"), "must not be empty"));
        }
        match m.kind.as_deref() {
            None | Some("Exact") => {}
            Some("RegularExpression") => check_regex(&format!("{f}.value"), &m.value)?,
            Some(other) => {
                return Err(invalid(
                    format!("{f}.type"),
                    format!("{other:?} is not supported"),
                ))
            }
        }
    }
    Ok(())
}

/// The rule's path matches, as the wire spells them (for the filters that need a prefix).
fn http_path_match(field: &str, path: Option<&HttpPathMatch>) -> Result<PathMatch, Invalid> {
    let Some(path) = path else {
        return Ok(PathMatch::PathPrefix("/".into()));
    };
    let value = path.value.clone().unwrap_or_else(|| "/".into());
    let must_be_absolute = |v: &str| {
        if v.starts_with('/') {
            Ok(())
        } else {
            Err(invalid(
                format!("{field}.value"),
                format!("{v:?} must start with /"),
            ))
        }
    };
    Ok(match path.kind.as_deref() {
        None | Some("PathPrefix") => {
            must_be_absolute(&value)?;
            PathMatch::PathPrefix(value)
        }
        Some("Exact") => {
            must_be_absolute(&value)?;
            PathMatch::Exact(value)
        }
        Some("RegularExpression") => {
            check_regex(&format!("{field}.value"), &value)?;
            PathMatch::RegularExpression(value)
        }
        Some(other) => {
            return Err(invalid(
                format!("{field}.type"),
                format!("{other:?} is not supported"),
            ))
        }
    })
}

/// Validates an HTTPRoute's spec.
pub fn validate_http(spec: &HttpRouteSpec) -> Result<(), Invalid> {
    for (r, rule) in spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{r}]");
        let mut all_prefix = true;
        for (m, rm) in rule.matches.iter().enumerate() {
            let f = format!("{field}.matches[{m}]");
            let path = http_path_match(&format!("{f}.path"), rm.path.as_ref())?;
            all_prefix &= matches!(path, PathMatch::PathPrefix(_));
            if let Some(method) = &rm.method {
                http::Method::from_bytes(method.as_bytes()).map_err(|_| {
                    invalid(format!("{f}.method"), format!("{method:?} is not a method"))
                })?;
            }
            check_value_matches(&format!("{f}.headers"), &rm.headers, true)?;
            check_value_matches(&format!("{f}.queryParams"), &rm.query_params, false)?;
        }
        check_filters(&field, &rule.filters, RouteKind::Http, all_prefix)?;
        check_backend_refs(&field, &rule.backend_refs)?;
        if let Some(t) = &rule.timeouts {
            let request = t
                .request
                .as_deref()
                .map(|d| {
                    parse_gateway_duration(d)
                        .map_err(|e| invalid(format!("{field}.timeouts.request"), e))
                })
                .transpose()?;
            let backend = t
                .backend_request
                .as_deref()
                .map(|d| {
                    parse_gateway_duration(d)
                        .map_err(|e| invalid(format!("{field}.timeouts.backendRequest"), e))
                })
                .transpose()?;
            if let (Some(req), Some(back)) = (request, backend) {
                if !req.is_zero() && (back.is_zero() || back > req) {
                    return Err(invalid(
                        format!("{field}.timeouts.backendRequest"),
                        format!("{back:?} is longer than timeouts.request ({req:?})"),
                    ));
                }
            }
        }
        if let Some(retry) = &rule.retry {
            for (i, code) in retry.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    return Err(invalid(
                        format!("{field}.retry.codes[{i}]"),
                        format!("{code} is not an HTTP error status (400-599)"),
                    ));
                }
            }
            if let Some(a) = retry.attempts {
                if a < 0 || a > i64::from(u32::MAX) {
                    return Err(invalid(
                        format!("{field}.retry.attempts"),
                        format!("{a} is negative or too large"),
                    ));
                }
            }
            if let Some(b) = &retry.backoff {
                parse_gateway_duration(b)
                    .map_err(|e| invalid(format!("{field}.retry.backoff"), e))?;
            }
        }
    }
    Ok(())
}

/// Validates a GRPCRoute's spec.
pub fn validate_grpc(spec: &GrpcRouteSpec) -> Result<(), Invalid> {
    for (r, rule) in spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{r}]");
        for (m, rm) in rule.matches.iter().enumerate() {
            let f = format!("{field}.matches[{m}]");
            if let Some(method) = &rm.method {
                grpc_path_match(&format!("{f}.method"), method)?;
            }
            check_value_matches(&format!("{f}.headers"), &rm.headers, true)?;
        }
        check_filters(&field, &rule.filters, RouteKind::Grpc, false)?;
        check_backend_refs(&field, &rule.backend_refs)?;
    }
    Ok(())
}

fn check_filters(
    field: &str,
    filters: &[RouteFilter],
    kind: RouteKind,
    all_prefix: bool,
) -> Result<(), Invalid> {
    for (i, filter) in filters.iter().enumerate() {
        let f = format!("{field}.filters[{i}]");
        let missing = |name: &str| {
            invalid(
                format!("{f}.{name}"),
                format!("required with type {}", filter.kind),
            )
        };
        match (filter.kind.as_str(), kind) {
            ("RequestHeaderModifier", _) => {
                let m = filter
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("requestHeaderModifier"))?;
                check_modifier(&format!("{f}.requestHeaderModifier"), m)?;
            }
            ("ResponseHeaderModifier", _) => {
                let m = filter
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("responseHeaderModifier"))?;
                check_modifier(&format!("{f}.responseHeaderModifier"), m)?;
            }
            ("RequestRedirect", RouteKind::Http) => {
                let r = filter
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let f = format!("{f}.requestRedirect");
                if let Some(code) = r.status_code {
                    if code != 301 && code != 302 {
                        return Err(invalid(
                            format!("{f}.statusCode"),
                            format!("{code} is not 301 or 302"),
                        ));
                    }
                }
                if let Some(s) = r.scheme.as_deref() {
                    if s != "http" && s != "https" {
                        return Err(invalid(
                            format!("{f}.scheme"),
                            format!("{s:?} is not http or https"),
                        ));
                    }
                }
                check_path_modifier(&format!("{f}.path"), r.path.as_ref(), all_prefix)?;
            }
            ("URLRewrite", RouteKind::Http) => {
                let r = filter
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                check_path_modifier(&format!("{f}.urlRewrite.path"), r.path.as_ref(), all_prefix)?;
            }
            ("RequestMirror", _) => {
                let m = filter
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                let f = format!("{f}.requestMirror");
                mirror_percent(&f, m)?;
                check_backend_ref(&format!("{f}.backendRef"), &m.backend_ref)?;
            }
            ("ExtensionRef", _) => {
                let e = filter
                    .extension_ref
                    .as_ref()
                    .ok_or_else(|| missing("extensionRef"))?;
                if e.group != POLICY_GROUP || e.kind != "HTTPFault" {
                    return Err(invalid(
                        format!("{f}.extensionRef"),
                        format!(
                            "{}/{} is not supported: only {POLICY_GROUP}/HTTPFault",
                            e.group, e.kind
                        ),
                    ));
                }
            }
            (other, _) => {
                return Err(invalid(
                    format!("{f}.type"),
                    format!("{other:?} is not supported on a {}", kind.as_str()),
                ))
            }
        }
    }
    Ok(())
}

fn check_modifier(field: &str, m: &HeaderModifier) -> Result<(), Invalid> {
    for (list, headers) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in headers.iter().enumerate() {
            check_header_name(&format!("{field}.{list}[{i}].name"), &h.name)?;
            http::HeaderValue::from_str(&h.value).map_err(|_| {
                invalid(
                    format!("{field}.{list}[{i}].value"),
                    format!("{:?} is not a valid header value", h.value),
                )
            })?;
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        check_header_name(&format!("{field}.remove[{i}]"), name)?;
    }
    Ok(())
}

fn check_path_modifier(
    field: &str,
    path: Option<&PathModifierSpec>,
    all_prefix: bool,
) -> Result<(), Invalid> {
    if let Some(p) = path {
        path_modifier(field, p)?;
        if p.kind == "ReplacePrefixMatch" && !all_prefix {
            return Err(Invalid {
                reason: "IncompatibleFilters",
                message: format!(
                    "{field}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                ),
            });
        }
    }
    Ok(())
}

fn path_modifier(field: &str, p: &PathModifierSpec) -> Result<PathModifier, Invalid> {
    match p.kind.as_str() {
        "ReplaceFullPath" => p
            .replace_full_path
            .clone()
            .map(PathModifier::ReplaceFullPath)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.replaceFullPath"),
                    "required with type ReplaceFullPath",
                )
            }),
        "ReplacePrefixMatch" => p
            .replace_prefix_match
            .clone()
            .map(PathModifier::ReplacePrefixMatch)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.replacePrefixMatch"),
                    "required with type ReplacePrefixMatch",
                )
            }),
        other => Err(invalid(
            format!("{field}.type"),
            format!("{other:?} is not supported"),
        )),
    }
}

fn mirror_percent(field: &str, m: &MirrorSpec) -> Result<f64, Invalid> {
    match (&m.percent, &m.fraction) {
        (Some(_), Some(_)) => Err(invalid(field, "percent and fraction are exclusive")),
        (Some(p), None) => {
            // An i64 within 0-100 is exact as an f64.
            #[allow(clippy::cast_precision_loss)]
            let p = *p as f64;
            check_percent(&format!("{field}.percent"), p)?;
            Ok(p)
        }
        (None, Some(fr)) => {
            let d = fr.denominator.unwrap_or(100);
            if d <= 0 || fr.numerator < 0 || fr.numerator > d {
                return Err(invalid(
                    format!("{field}.fraction"),
                    format!("{}/{d} is not a fraction within 0-1", fr.numerator),
                ));
            }
            #[allow(clippy::cast_precision_loss)]
            Ok(fr.numerator as f64 * 100.0 / d as f64)
        }
        (None, None) => Ok(100.0),
    }
}

pub(super) fn check_backend_refs(field: &str, refs: &[BackendRef]) -> Result<(), Invalid> {
    for (i, b) in refs.iter().enumerate() {
        check_backend_ref(&format!("{field}.backendRefs[{i}]"), b)?;
    }
    Ok(())
}

fn check_backend_ref(field: &str, b: &BackendRef) -> Result<(), Invalid> {
    if is_service(b) && b.port.is_none() {
        return Err(invalid(format!("{field}.port"), "required for a Service"));
    }
    if let Some(w) = b.weight {
        if !(0..=1_000_000).contains(&w) {
            return Err(invalid(
                format!("{field}.weight"),
                format!("{w} is not within 0-1000000"),
            ));
        }
    }
    Ok(())
}

fn is_service(b: &BackendRef) -> bool {
    matches!(b.group.as_deref(), None | Some("" | "core"))
        && matches!(b.kind.as_deref(), None | Some("Service"))
}

/// A GRPCRoute method match as a path match.
fn grpc_path_match(field: &str, m: &GrpcMethodMatch) -> Result<PathMatch, Invalid> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    match m.kind.as_deref() {
        None | Some("Exact") => {
            for (name, v) in [("service", service), ("method", method)] {
                if let Some(v) = v {
                    if v.contains('/') {
                        return Err(invalid(
                            format!("{field}.{name}"),
                            format!("{v:?} must not contain /"),
                        ));
                    }
                }
            }
            match (service, method) {
                (Some(s), Some(m)) => Ok(PathMatch::Exact(format!("/{s}/{m}"))),
                (Some(s), None) => Ok(PathMatch::PathPrefix(format!("/{s}"))),
                (None, Some(m)) => Ok(PathMatch::RegularExpression(format!(
                    "/[^/]+/{}",
                    regex::escape(m)
                ))),
                (None, None) => Err(invalid(field, "one of service and method is required")),
            }
        }
        Some("RegularExpression") => {
            for (name, v) in [("service", service), ("method", method)] {
                if let Some(v) = v {
                    check_regex(&format!("{field}.{name}"), v)?;
                }
            }
            let pattern = format!(
                "/({})/({})",
                service.unwrap_or("[^/]+"),
                method.unwrap_or("[^/]+")
            );
            check_regex(field, &pattern)?;
            Ok(PathMatch::RegularExpression(pattern))
        }
        Some(other) => Err(invalid(
            format!("{field}.type"),
            format!("{other:?} is not supported"),
        )),
    }
}

/// Parses a Gateway API duration (GEP-2257): one to four `<1-5 digits><h|m|s|ms>`, like `1h30m`
/// or `500ms`. `0s` is zero (no timeout).
pub fn parse_gateway_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a Gateway API duration (like 1h30m, 10s, 500ms)");
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        // At most 99999h: no overflow.
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        parts += 1;
        if parts > 4 {
            return Err(bad());
        }
    }
    if parts == 0 {
        return Err(bad());
    }
    Ok(total)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A GEP-2257 duration as milliseconds; zero (and an invalid one, which validation refused)
/// is none.
fn gateway_ms(d: Option<&str>) -> Option<u64> {
    d.and_then(|d| parse_gateway_duration(d).ok())
        .filter(|d| !d.is_zero())
        .map(millis)
}

// === annotations ===

/// An annotation whose value was ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}; ignored")]
pub struct AnnotationError {
    /// The annotation.
    pub annotation: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

/// The retry the `retry.mesh.io/*` annotations describe (`None` without a condition), and the
/// annotations that were ignored.
pub fn retry_annotations(
    annotations: Option<&BTreeMap<String, String>>,
) -> (Option<Retry>, Vec<AnnotationError>) {
    let mut errors = Vec::new();
    let Some(a) = annotations else {
        return (None, errors);
    };
    let mut err = |annotation, reason: String| errors.push(AnnotationError { annotation, reason });
    let http = match a.get(annotations::RETRY_HTTP) {
        Some(v) => policy::parse_http_statuses(v).unwrap_or_else(|e| {
            err(annotations::RETRY_HTTP, e);
            Vec::new()
        }),
        None => Vec::new(),
    };
    let mut grpc = Vec::new();
    if let Some(v) = a.get(annotations::RETRY_GRPC) {
        let names: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        match names
            .iter()
            .map(|n| policy::grpc_code(n).ok_or(*n))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(codes) if !codes.is_empty() => grpc = codes,
            Ok(_) => err(annotations::RETRY_GRPC, format!("{v:?} names no status")),
            Err(name) => err(
                annotations::RETRY_GRPC,
                format!(
                    "{name:?} is not one of cancelled, deadline-exceeded, internal, \
                     resource-exhausted, unavailable"
                ),
            ),
        }
    }
    let limit = match a
        .get(annotations::RETRY_LIMIT)
        .map(|v| (v, v.trim().parse::<u32>()))
    {
        None => 1,
        Some((_, Ok(n))) => n,
        Some((v, Err(_))) => {
            err(annotations::RETRY_LIMIT, format!("{v:?} is not a count"));
            1
        }
    };
    let timeout_ms = match a.get(annotations::RETRY_TIMEOUT) {
        None => None,
        Some(v) => match mesh_api::duration::parse_duration(v) {
            Ok(d) if !d.is_zero() => Some(millis(d)),
            Ok(_) => {
                err(annotations::RETRY_TIMEOUT, "a zero timeout".into());
                None
            }
            Err(e) => {
                err(annotations::RETRY_TIMEOUT, e.to_string());
                None
            }
        },
    };
    let retry = (!http.is_empty() || !grpc.is_empty()).then_some(Retry {
        http,
        grpc,
        limit,
        timeout_ms,
        backoff_ms: None,
    });
    (retry, errors)
}

/// The retry budget of a Service's annotations, and the annotations that were ignored.
pub fn budget_annotations(
    annotations: Option<&BTreeMap<String, String>>,
) -> (RetryBudget, Vec<AnnotationError>) {
    let mut budget = RetryBudget::default();
    let mut errors = Vec::new();
    let Some(a) = annotations else {
        return (budget, errors);
    };
    if let Some(v) = a.get(annotations::RETRY_BUDGET_RATIO) {
        match v.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && r >= 0.0 => budget.ratio = r,
            _ => errors.push(AnnotationError {
                annotation: annotations::RETRY_BUDGET_RATIO,
                reason: format!("{v:?} is not a finite number >= 0"),
            }),
        }
    }
    if let Some(v) = a.get(annotations::RETRY_BUDGET_MIN_RPS) {
        match v.trim().parse::<u32>() {
            Ok(n) => budget.min_retries_per_second = n,
            Err(_) => errors.push(AnnotationError {
                annotation: annotations::RETRY_BUDGET_MIN_RPS,
                reason: format!("{v:?} is not a count"),
            }),
        }
    }
    (budget, errors)
}

/// Every annotation problem of a Service (retry and budget).
pub fn service_annotation_errors(
    annotations: Option<&BTreeMap<String, String>>,
) -> Vec<AnnotationError> {
    let (_, mut errors) = retry_annotations(annotations);
    errors.extend(budget_annotations(annotations).1);
    errors
}

// === HTTPFault ===

/// An `HTTPFault` in the wire's shape, or why it cannot be used.
pub fn fault(f: &HttpFault) -> Result<Fault, String> {
    let name = f.metadata.name.clone().unwrap_or_default();
    let percent = |field: &str, p: Option<f64>| {
        let p = p.unwrap_or(100.0);
        check_percent(field, p).map(|()| p).map_err(|e| e.message)
    };
    let delay = match &f.spec.delay {
        Some(d) => Some(FaultDelay {
            duration_ms: millis(
                parse_gateway_duration(&d.duration)
                    .map_err(|e| format!("spec.delay.duration: {e}"))?,
            ),
            percent: percent("spec.delay.percent", d.percent)?,
        }),
        None => None,
    };
    let abort = match &f.spec.abort {
        Some(a) => {
            let http_status = a
                .http_status
                .map(|s| {
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..=599).contains(s))
                        .ok_or_else(|| format!("spec.abort.httpStatus: {s} is not within 200-599"))
                })
                .transpose()?;
            let grpc_status = a
                .grpc_status
                .map(|s| {
                    u16::try_from(s)
                        .ok()
                        .filter(|s| *s <= 16)
                        .ok_or_else(|| format!("spec.abort.grpcStatus: {s} is not within 0-16"))
                })
                .transpose()?;
            if http_status.is_none() && grpc_status.is_none() {
                return Err("spec.abort: one of httpStatus and grpcStatus is required".into());
            }
            Some(FaultAbort {
                http_status,
                grpc_status,
                percent: percent("spec.abort.percent", a.percent)?,
            })
        }
        None => None,
    };
    Ok(Fault { name, delay, abort })
}

/// What an `ExtensionRef` to a missing or unusable `HTTPFault` becomes: Gateway API says such a
/// filter must not be skipped, so every request is answered 500.
pub fn failing_fault(name: &str) -> Fault {
    Fault {
        name: name.to_owned(),
        delay: None,
        abort: Some(FaultAbort {
            http_status: Some(500),
            grpc_status: None,
            percent: 100.0,
        }),
    }
}

// === conversion ===

/// What a conversion needs from the rest of the index.
pub trait Lookup {
    /// Whether the Service `ns/name` exists and has `port`.
    fn service_port(&self, ns: &str, name: &str, port: u16) -> Result<(), String>;
    /// The `HTTPFault` `ns/name`.
    fn fault(&self, ns: &str, name: &str) -> Option<&HttpFault>;
    /// The cluster DNS domain.
    fn cluster_domain(&self) -> &str;
    /// The annotations of the Service `ns/name`.
    fn service_annotations(&self, ns: &str, name: &str) -> Option<&BTreeMap<String, String>>;
}

/// A reference that did not resolve: the `ResolvedRefs=False` reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// `BackendNotFound`, `RefNotPermitted`, `InvalidKind`.
    pub reason: &'static str,
    /// What did not resolve.
    pub message: String,
}

/// Converts a valid route for its parent Service `parent` (namespace, name), collecting the
/// references that did not resolve.
pub fn convert(
    route: &RouteObject,
    parent: (&str, &str),
    lookup: &dyn Lookup,
    unresolved: &mut Vec<Unresolved>,
) -> policy::Route {
    let ns = route.namespace();
    let meta = route.metadata();
    let route_retry = retry_annotations(meta.annotations.as_ref()).0;
    let default_retry =
        route_retry.or_else(|| retry_annotations(lookup.service_annotations(parent.0, parent.1)).0);
    let mut cx = Convert {
        ns,
        lookup,
        unresolved,
    };
    let rules = match &route.route {
        AnyRoute::Http(r) => r
            .spec
            .rules
            .iter()
            .map(|rule| {
                let matches = http_matches(rule);
                let timeouts = rule
                    .timeouts
                    .as_ref()
                    .map(|t| Timeouts {
                        request_ms: gateway_ms(t.request.as_deref()),
                        backend_request_ms: gateway_ms(t.backend_request.as_deref()),
                    })
                    .unwrap_or_default();
                let retry = match &rule.retry {
                    Some(r) => Some(Retry {
                        http: r
                            .codes
                            .iter()
                            .filter_map(|c| u16::try_from(*c).ok())
                            .map(|c| StatusRange { min: c, max: c })
                            .collect(),
                        grpc: Vec::new(),
                        limit: r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(1),
                        timeout_ms: None,
                        backoff_ms: gateway_ms(r.backoff.as_deref()),
                    }),
                    None => default_retry.clone(),
                };
                policy::Rule {
                    matches,
                    filters: cx.filters(&rule.filters),
                    backends: cx.backends(&rule.backend_refs),
                    timeouts,
                    retry,
                }
            })
            .collect(),
        AnyRoute::Grpc(r) => r
            .spec
            .rules
            .iter()
            .map(|rule| policy::Rule {
                matches: grpc_matches(rule),
                filters: cx.filters(&rule.filters),
                backends: cx.backends(&rule.backend_refs),
                timeouts: Timeouts::default(),
                retry: default_retry.clone(),
            })
            .collect(),
    };
    policy::Route {
        kind: route.kind(),
        namespace: ns.to_owned(),
        name: route.name().to_owned(),
        rules,
    }
}

/// The backends of a valid object of namespace `ns` (a `MetaRoute`'s rule), resolved as a
/// route's are: an authority for each, with an `error` for what does not resolve (collected in
/// `unresolved`).
pub fn resolve_backends(
    ns: &str,
    refs: &[BackendRef],
    lookup: &dyn Lookup,
    unresolved: &mut Vec<Unresolved>,
) -> Vec<Backend> {
    Convert {
        ns,
        lookup,
        unresolved,
    }
    .backends(refs)
}

/// A valid route as an inbound route of a Server: its rules' matches only (an inbound route
/// selects requests for authorization; it has no backends, and its filters are not applied).
pub fn inbound_route(route: &RouteObject) -> policy::Route {
    let rules: Vec<Vec<Match>> = match &route.route {
        AnyRoute::Http(r) => r.spec.rules.iter().map(http_matches).collect(),
        AnyRoute::Grpc(r) => r.spec.rules.iter().map(grpc_matches).collect(),
    };
    policy::Route {
        kind: route.kind(),
        namespace: route.namespace().to_owned(),
        name: route.name().to_owned(),
        rules: rules
            .into_iter()
            .map(|matches| policy::Rule {
                matches,
                ..policy::Rule::default()
            })
            .collect(),
    }
}

/// The matches of an HTTPRoute rule in the wire's shape (the route was validated).
fn http_matches(rule: &HttpRouteRule) -> Vec<Match> {
    rule.matches
        .iter()
        .map(|m| Match {
            path: http_path_match("", m.path.as_ref()).ok(),
            method: m.method.clone(),
            headers: value_matches(&m.headers),
            query_params: value_matches(&m.query_params),
        })
        .collect()
}

/// The matches of a GRPCRoute rule: the method as a path match (the route was validated).
fn grpc_matches(rule: &GrpcRouteRule) -> Vec<Match> {
    rule.matches
        .iter()
        .map(|m| Match {
            path: m
                .method
                .as_ref()
                .and_then(|mm| grpc_path_match("", mm).ok()),
            method: None,
            headers: value_matches(&m.headers),
            query_params: Vec::new(),
        })
        .collect()
}

fn value_matches(specs: &[ValueMatchSpec]) -> Vec<ValueMatch> {
    specs
        .iter()
        .map(|m| ValueMatch {
            name: m.name.clone(),
            kind: match m.kind.as_deref() {
                Some("RegularExpression") => ValueMatchKind::RegularExpression,
                _ => ValueMatchKind::Exact,
            },
            value: m.value.clone(),
        })
        .collect()
}

struct Convert<'a> {
    ns: &'a str,
    lookup: &'a dyn Lookup,
    unresolved: &'a mut Vec<Unresolved>,
}

impl Convert<'_> {
    fn backends(&mut self, refs: &[BackendRef]) -> Vec<Backend> {
        refs.iter().map(|b| self.backend(b)).collect()
    }

    fn backend(&mut self, b: &BackendRef) -> Backend {
        let namespace = b.namespace.clone().unwrap_or_else(|| self.ns.to_owned());
        let port = b.port.unwrap_or_default();
        let error = if !is_service(b) {
            Some((
                "InvalidKind",
                format!(
                    "backendRef {}/{} {}: only Services are supported",
                    b.group.as_deref().unwrap_or(""),
                    b.kind.as_deref().unwrap_or(""),
                    b.name
                ),
            ))
        } else if namespace != self.ns {
            Some((
                "RefNotPermitted",
                format!(
                    "backendRef to Service {namespace}/{}: cross-namespace backends need a \
                     ReferenceGrant, which the mesh does not read",
                    b.name
                ),
            ))
        } else {
            self.lookup
                .service_port(&namespace, &b.name, port)
                .err()
                .map(|e| ("BackendNotFound", e))
        };
        let error = error.map(|(reason, message)| {
            self.unresolved.push(Unresolved {
                reason,
                message: message.clone(),
            });
            format!("{reason}: {message}")
        });
        Backend {
            authority: format!(
                "{}.{namespace}.svc.{}:{port}",
                b.name,
                self.lookup.cluster_domain()
            ),
            namespace,
            name: b.name.clone(),
            port,
            weight: b.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
            error,
        }
    }

    fn filters(&mut self, filters: &[RouteFilter]) -> Vec<Filter> {
        filters.iter().filter_map(|f| self.filter(f)).collect()
    }

    fn filter(&mut self, f: &RouteFilter) -> Option<Filter> {
        Some(match f.kind.as_str() {
            "RequestHeaderModifier" => {
                Filter::RequestHeaderModifier(f.request_header_modifier.clone()?)
            }
            "ResponseHeaderModifier" => {
                Filter::ResponseHeaderModifier(f.response_header_modifier.clone()?)
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref()?;
                Filter::RequestRedirect(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    path: r.path.as_ref().and_then(|p| path_modifier("", p).ok()),
                    port: r.port,
                    status_code: r
                        .status_code
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(302),
                })
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref()?;
                Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone(),
                    path: r.path.as_ref().and_then(|p| path_modifier("", p).ok()),
                })
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref()?;
                Filter::RequestMirror(Mirror {
                    backend: self.backend(&m.backend_ref),
                    percent: mirror_percent("", m).unwrap_or(100.0),
                })
            }
            "ExtensionRef" => {
                let name = &f.extension_ref.as_ref()?.name;
                let fault = match self.lookup.fault(self.ns, name).map(fault) {
                    Some(Ok(fault)) => fault,
                    Some(Err(reason)) => {
                        self.unresolved.push(Unresolved {
                            reason: "InvalidKind",
                            message: format!("HTTPFault {}/{name} is invalid: {reason}", self.ns),
                        });
                        failing_fault(name)
                    }
                    None => {
                        self.unresolved.push(Unresolved {
                            reason: "BackendNotFound",
                            message: format!("HTTPFault {}/{name} not found", self.ns),
                        });
                        failing_fault(name)
                    }
                };
                Filter::Fault(fault)
            }
            _ => return None,
        })
    }
}

// === status ===

/// The conditions of one Service parent of a route: `Accepted`, `ResolvedRefs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentConditions {
    /// The parentRef, as the route spells it.
    pub parent_ref: ParentRef,
    /// `Ok` or (reason, message).
    pub accepted: Result<(), (&'static str, String)>,
    /// `Ok` or (reason, message).
    pub resolved_refs: Result<(), (&'static str, String)>,
}

/// The route's status with this controller's entries replaced by `ours` (other controllers'
/// entries kept), or `None` when nothing would change. A condition keeps its
/// `lastTransitionTime` while its status stays the same.
pub fn merge_status(
    current: Option<&RouteStatus>,
    ours: &[ParentConditions],
    generation: Option<i64>,
    now: &Time,
) -> Option<RouteStatus> {
    let current_parents = current.map(|s| s.parents.as_slice()).unwrap_or_default();
    let previous = |parent: &ParentRef, kind: &str| {
        current_parents
            .iter()
            .filter(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == *parent)
            .flat_map(|p| &p.conditions)
            .find(|c| c.type_ == kind)
    };
    let condition = |parent: &ParentRef, kind: &str, value: &Result<(), (&'static str, String)>| {
        let (status, reason, message) = match value {
            Ok(()) => (
                "True",
                if kind == "Accepted" {
                    "Accepted"
                } else {
                    "ResolvedRefs"
                },
                String::new(),
            ),
            Err((reason, message)) => ("False", *reason, message.clone()),
        };
        let last_transition_time = previous(parent, kind)
            .filter(|c| c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            last_transition_time,
            message,
            observed_generation: generation,
            reason: reason.to_owned(),
            status: status.to_owned(),
            type_: kind.to_owned(),
        }
    };
    let mine: Vec<RouteParentStatus> = ours
        .iter()
        .map(|p| RouteParentStatus {
            parent_ref: p.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: vec![
                condition(&p.parent_ref, "Accepted", &p.accepted),
                condition(&p.parent_ref, "ResolvedRefs", &p.resolved_refs),
            ],
        })
        .collect();
    let current_mine: Vec<&RouteParentStatus> = current_parents
        .iter()
        .filter(|p| p.controller_name == CONTROLLER_NAME)
        .collect();
    if current_mine.len() == mine.len() && current_mine.iter().zip(&mine).all(|(a, b)| *a == b) {
        return None;
    }
    let mut parents: Vec<RouteParentStatus> = current_parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    parents.extend(mine);
    Some(RouteStatus { parents })
}
