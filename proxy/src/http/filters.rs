//! A route rule's filters, in the rule's order: request and response header modifiers,
//! redirects, URL rewrites (Gateway API), and fault injection (the mesh's `HTTPFault`: delay
//! some requests, answer some with an error). Mirrors are a layer of their own (`mirror.rs`).

use super::{
    classify::is_grpc,
    errors::{error_response, grpc_code, grpc_error_response},
};
use crate::{
    metrics::{FaultLabels, RouteLabels, RouteMetrics},
    svc::{BoxBody, BoxError, Param, Wrap},
};
use futures_util::future::BoxFuture;
use http::{
    header::{HeaderName, HeaderValue, HOST, LOCATION},
    uri::{Authority, PathAndQuery, Scheme},
    Request, Response, StatusCode, Uri,
};
use mesh_api::policy::{Fault, Filter, HeaderModifier, PathModifier, Redirect, UrlRewrite};
use prometheus_client::metrics::counter::Counter;
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

/// The prefix the request's `PathPrefix` match matched (set by the route selection), for
/// `ReplacePrefixMatch`.
#[derive(Clone, Debug)]
pub struct MatchedPrefix(pub Arc<str>);

/// What the filters layer reads of its target.
#[derive(Clone, Debug)]
pub struct FilterParams {
    pub filters: Arc<[Filter]>,
    pub labels: Arc<RouteLabels>,
}

/// Applies each target's filters around its service.
#[derive(Clone)]
pub struct FiltersLayer {
    pub metrics: RouteMetrics,
}

impl<T: Param<FilterParams>, S> Wrap<T, S> for FiltersLayer {
    type Service = Filters<S>;
    fn wrap(&self, target: &T, inner: S) -> Filters<S> {
        let FilterParams { filters, labels } = target.param();
        let steps = filters
            .iter()
            .filter_map(|f| {
                Some(match f {
                    Filter::RequestHeaderModifier(m) => Step::Request(Modifier::new(m)),
                    Filter::ResponseHeaderModifier(m) => Step::Response(Modifier::new(m)),
                    Filter::RequestRedirect(r) => Step::Redirect(r.clone()),
                    Filter::UrlRewrite(r) => Step::Rewrite(r.clone()),
                    Filter::Fault(fault) => {
                        let counter = |kind| {
                            self.metrics
                                .fault_injected_total
                                .get_or_create(&FaultLabels {
                                    route: labels.clone(),
                                    fault: fault.name.as_str().into(),
                                    kind,
                                })
                                .clone()
                        };
                        Step::Fault(
                            fault.clone(),
                            FaultCounters {
                                delay: counter("delay"),
                                abort: counter("abort"),
                            },
                        )
                    }
                    // A layer of its own (`mirror.rs`).
                    Filter::RequestMirror(_) => return None,
                })
            })
            .collect::<Vec<_>>();
        Filters {
            inner,
            steps: steps.into(),
        }
    }
}

/// A filter, made ready once per rule: header names and values parsed, a fault with its
/// counters.
enum Step {
    Request(Modifier),
    Response(Modifier),
    Redirect(Redirect),
    Rewrite(UrlRewrite),
    Fault(Fault, FaultCounters),
}

struct FaultCounters {
    delay: Counter,
    abort: Counter,
}

#[derive(Clone)]
pub struct Filters<S> {
    inner: S,
    steps: Arc<[Step]>,
}

impl<S> tower::Service<Request<BoxBody>> for Filters<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let steps = self.steps.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut req = req;
            for step in steps.iter() {
                match step {
                    Step::Request(m) => m.apply(req.headers_mut()),
                    Step::Redirect(r) => return Ok(redirect(&req, r)),
                    Step::Rewrite(r) => rewrite(&mut req, r),
                    Step::Fault(f, counters) => {
                        let grpc = is_grpc(req.headers());
                        if let Some(rsp) = fault(grpc, f, counters).await {
                            return Ok(rsp);
                        }
                    }
                    Step::Response(_) => {}
                }
            }
            tower::ServiceExt::ready(&mut inner).await?;
            let mut rsp = inner.call(req).await?;
            for step in steps.iter() {
                if let Step::Response(m) = step {
                    m.apply(rsp.headers_mut());
                }
            }
            Ok(rsp)
        })
    }
}

/// Gateway API's header modifier, parsed: `set` replaces, `add` appends, `remove` removes.
/// Names or values that are not valid headers are left out (the controller refuses them).
struct Modifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Modifier {
    fn new(m: &HeaderModifier) -> Self {
        let pairs = |headers: &[mesh_api::policy::Header]| {
            headers
                .iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        HeaderValue::from_str(&h.value).ok()?,
                    ))
                })
                .collect()
        };
        Self {
            set: pairs(&m.set),
            add: pairs(&m.add),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// The request's host (without port), from the URI or the `Host` header.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(HOST)?.to_str().ok().map(str::to_owned))?;
    let authority: Authority = authority.parse().ok()?;
    Some(authority.host().to_owned())
}

/// The path after a path modifier.
fn modified_path<B>(req: &Request<B>, m: &PathModifier) -> String {
    let path = req.uri().path();
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let prefix = req
                .extensions()
                .get::<MatchedPrefix>()
                .map(|p| p.0.clone())
                .unwrap_or_else(|| "".into());
            let rest = path.strip_prefix(&*prefix).unwrap_or(path);
            let replacement = replacement.trim_end_matches('/');
            match (replacement.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{replacement}{rest}"),
            }
        }
    }
}

fn redirect<B>(req: &Request<B>, r: &Redirect) -> Response<BoxBody> {
    let scheme = r
        .scheme
        .clone()
        .or_else(|| req.uri().scheme_str().map(str::to_owned))
        .unwrap_or_else(|| "http".to_owned());
    let host = r
        .hostname
        .clone()
        .or_else(|| host_of(req))
        .unwrap_or_default();
    // Gateway API: a redirect's port is the one asked, else the scheme's when the scheme is
    // changed, else the request's.
    let port = r.port.or_else(|| {
        if r.scheme.is_some() {
            None
        } else {
            req.uri().port_u16().or_else(|| {
                req.headers()
                    .get(HOST)?
                    .to_str()
                    .ok()?
                    .parse::<Authority>()
                    .ok()?
                    .port_u16()
            })
        }
    });
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = match port {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host,
    };
    let path = match &r.path {
        Some(m) => modified_path(req, m),
        None => req.uri().path().to_owned(),
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = format!("{scheme}://{authority}{path}{query}");
    let mut rsp = Response::new(BoxBody::empty());
    *rsp.status_mut() = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(LOCATION, v);
    }
    rsp
}

fn rewrite<B>(req: &mut Request<B>, r: &UrlRewrite) {
    if let Some(path) = &r.path {
        let path = modified_path(req, path);
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        if let Ok(pq) = format!("{path}{query}").parse::<PathAndQuery>() {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    if let Some(host) = &r.hostname {
        if let Ok(value) = HeaderValue::from_str(host) {
            req.headers_mut().insert(HOST, value);
        }
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            let port = req.uri().port_u16();
            let authority = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            if let Ok(a) = authority.parse::<Authority>() {
                parts.authority = Some(a);
                if parts.scheme.is_none() {
                    parts.scheme = Some(Scheme::HTTP);
                }
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
}

/// Whether a share of `percent` (0 to 100) is hit this time (faults here, mirrors in
/// `mirror.rs`).
pub fn hit(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// Delays and/or aborts the request; the abort's response.
async fn fault(grpc: bool, f: &Fault, counters: &FaultCounters) -> Option<Response<BoxBody>> {
    if let Some(delay) = &f.delay {
        if hit(delay.percent) {
            counters.delay.inc();
            tokio::time::sleep(Duration::from_millis(delay.duration_ms)).await;
        }
    }
    let abort = f.abort.as_ref()?;
    if !hit(abort.percent) {
        return None;
    }
    counters.abort.inc();
    let msg = format!("fault injected by HTTPFault {}", f.name);
    let http = abort
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(if grpc {
        grpc_error_response(abort.grpc_status.unwrap_or_else(|| grpc_code(http)), &msg)
    } else {
        error_response(http, &msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svc::{NewFn, NewService, WrapLayer};
    use mesh_api::policy::{FaultAbort, FaultDelay, Header};
    use tower::{Service, ServiceExt};

    /// An upstream that answers with the request's path, host and `x-a` header in headers.
    fn echo() -> impl tower::Service<
        Request<BoxBody>,
        Response = Response<BoxBody>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|req: Request<BoxBody>| async move {
            let mut rsp = Response::new(BoxBody::empty());
            let h = rsp.headers_mut();
            h.insert(
                "path",
                req.uri()
                    .path_and_query()
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap(),
            );
            if let Some(host) = req.headers().get(HOST) {
                h.insert("host", host.clone());
            }
            for v in req.headers().get_all("x-a") {
                h.append("x-a", v.clone());
            }
            h.insert("x-server", "1".parse().unwrap());
            Ok::<_, BoxError>(rsp)
        })
    }

    async fn call(
        filters: Vec<Filter>,
        req: Request<BoxBody>,
    ) -> (Response<BoxBody>, RouteMetrics) {
        let metrics = RouteMetrics::default();
        let layer = WrapLayer(FiltersLayer {
            metrics: metrics.clone(),
        });
        let inner = echo();
        let new = tower::Layer::layer(&layer, NewFn(move |_: FilterParams| inner.clone()));
        let mut svc = new.new_service(FilterParams {
            filters: filters.into(),
            labels: Arc::new(RouteLabels::default()),
        });
        let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
        (rsp, metrics)
    }

    fn get(uri: &str) -> Request<BoxBody> {
        Request::get(uri)
            .header(HOST, "web.demo:8080")
            .header("x-a", "old")
            .body(BoxBody::empty())
            .unwrap()
    }

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    #[tokio::test]
    async fn header_modifiers() {
        let (rsp, _) = call(
            vec![
                Filter::RequestHeaderModifier(HeaderModifier {
                    add: vec![header("x-a", "new")],
                    ..HeaderModifier::default()
                }),
                Filter::ResponseHeaderModifier(HeaderModifier {
                    set: vec![header("x-rsp", "yes")],
                    remove: vec!["x-server".into()],
                    ..HeaderModifier::default()
                }),
            ],
            get("/"),
        )
        .await;
        let values: Vec<_> = rsp.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["old", "new"]);
        assert_eq!(rsp.headers()["x-rsp"], "yes");
        assert!(rsp.headers().get("x-server").is_none());
    }

    #[tokio::test]
    async fn rewrites_and_redirects() {
        let mut req = get("/api/users?id=1");
        req.extensions_mut().insert(MatchedPrefix("/api".into()));
        let (rsp, _) = call(
            vec![Filter::UrlRewrite(UrlRewrite {
                hostname: Some("v2.demo".into()),
                path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
            })],
            req,
        )
        .await;
        assert_eq!(rsp.headers()["path"], "/v2/users?id=1");
        assert_eq!(rsp.headers()["host"], "v2.demo");

        let mut req = get("/api?x=1");
        req.extensions_mut().insert(MatchedPrefix("/api".into()));
        let (rsp, _) = call(
            vec![Filter::RequestRedirect(Redirect {
                scheme: Some("https".into()),
                path: Some(PathModifier::ReplacePrefixMatch("/".into())),
                status_code: 301,
                ..Redirect::default()
            })],
            req,
        )
        .await;
        assert_eq!(rsp.status(), 301);
        assert_eq!(rsp.headers()[LOCATION], "https://web.demo/?x=1");

        let (rsp, _) = call(
            vec![Filter::RequestRedirect(Redirect {
                hostname: Some("other".into()),
                status_code: 302,
                ..Redirect::default()
            })],
            get("/p"),
        )
        .await;
        assert_eq!(rsp.headers()[LOCATION], "http://other:8080/p");
    }

    #[tokio::test]
    async fn faults_abort_in_each_protocols_terms() {
        let fault = |http_status, grpc_status| {
            Filter::Fault(Fault {
                name: "flaky".into(),
                delay: Some(FaultDelay {
                    duration_ms: 1,
                    percent: 100.0,
                }),
                abort: Some(FaultAbort {
                    http_status,
                    grpc_status,
                    percent: 100.0,
                }),
            })
        };
        let (rsp, metrics) = call(vec![fault(Some(503), None)], get("/")).await;
        assert_eq!(rsp.status(), 503);
        assert!(rsp.headers()["mesh-proxy-error"]
            .to_str()
            .unwrap()
            .contains("flaky"));
        let count = |kind| {
            metrics
                .fault_injected_total
                .get_or_create(&FaultLabels {
                    route: Arc::new(RouteLabels::default()),
                    fault: "flaky".into(),
                    kind,
                })
                .get()
        };
        assert_eq!((count("delay"), count("abort")), (1, 1));

        let grpc = Request::post("/demo.Voting/Results")
            .header("content-type", "application/grpc")
            .body(BoxBody::empty())
            .unwrap();
        let (rsp, _) = call(vec![fault(None, Some(14))], grpc).await;
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "14");
    }

    #[test]
    fn percentages_hit_their_share() {
        assert!(hit(100.0));
        assert!(!hit(0.0));
        let n = 20_000;
        let hits = (0..n).filter(|_| hit(10.0)).count();
        assert!((1_700..=2_300).contains(&hits), "{hits} of {n}");
    }
}
