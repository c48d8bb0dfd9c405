//! The HTTP server of the destination service: the destination, outbound policy and inbound
//! policy watches, health and metrics endpoints.
//!
//! Plaintext HTTP/2 (prior knowledge) and HTTP/1.1 on one port (hyper-util's auto builder).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use mesh_api::destination::WATCH_PATH;
use mesh_api::inbound::{InboundPolicy, INBOUND_WATCH_PATH};
use mesh_api::policy::{OutboundPolicy, OUTBOUND_WATCH_PATH};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{diff, Destination};
use crate::index::{Resolution, Target};

type Body = UnsyncBoxBody<Bytes, Infallible>;

pub use crate::http::ServeError;

/// Serves the destination API on `listener` until the task is dropped; every watch ends with
/// it, which tells the proxies to reconnect.
pub async fn serve(listener: TcpListener, dest: Destination) -> Result<(), ServeError> {
    crate::http::serve(listener, move |req| {
        let dest = dest.clone();
        async move { route(&dest, req) }
    })
    .await
}

fn route(dest: &Destination, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        WATCH_PATH => watch_response(dest, req.uri().query().unwrap_or("")),
        OUTBOUND_WATCH_PATH => policy_response(dest, req.uri().query().unwrap_or("")),
        INBOUND_WATCH_PATH => inbound_response(dest, req.uri().query().unwrap_or("")),
        "/ready" if dest.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the source has not synced yet\n".into(),
        ),
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/metrics" => {
            let mut response = text(StatusCode::OK, dest.metrics().encode());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        path => text(StatusCode::NOT_FOUND, format!("no such path: {path}\n")),
    }
}

/// The `authority` and `ns` of a watch's query, parsed into a target, or why the query is bad
/// (answered 400).
fn parse_query(
    dest: &Destination,
    query: &str,
) -> Result<(String, Target, Option<String>), String> {
    let mut authority = None;
    let mut ns = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "authority" => authority = Some(v.into_owned()),
            "ns" => ns = Some(v.into_owned()).filter(|n| !n.is_empty()),
            _ => {}
        }
    }
    let Some(authority) = authority.filter(|a| !a.is_empty()) else {
        return Err("missing authority: use ?authority=HOST:PORT\n".into());
    };
    match Target::parse(&authority, ns.as_deref(), &dest.cluster_domain()) {
        Ok(target) => Ok((authority, target, ns)),
        Err(error) => Err(format!("{error}\n")),
    }
}

fn watch_response(dest: &Destination, query: &str) -> Response<Body> {
    let (authority, target, _) = match parse_query(dest, query) {
        Ok(parsed) => parsed,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    tracing::debug!(%authority, ?target, "watch started");
    let rx = dest.subscribe(target);
    let watcher = Watcher {
        rx,
        last: None,
        _gauge: GaugeGuard::new(dest.metrics().watchers.clone()),
    };
    let stream = futures_util::stream::unfold(watcher, Watcher::next);
    jsonl(StreamBody::new(stream).boxed_unsync())
}

/// `GET /v1/policy/outbound/watch?authority=HOST:PORT&ns=CLIENT_NS`: the whole policy as one
/// line at once, then again after every change.
fn policy_response(dest: &Destination, query: &str) -> Response<Body> {
    let (authority, target, ns) = match parse_query(dest, query) {
        Ok(parsed) => parsed,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    tracing::debug!(%authority, ?target, ?ns, "policy watch started");
    let watcher = PolicyWatcher {
        rx: dest.subscribe_policy(target, ns),
        last: None,
        _gauge: GaugeGuard::new(dest.metrics().watchers.clone()),
    };
    let stream = futures_util::stream::unfold(watcher, PolicyWatcher::next);
    jsonl(StreamBody::new(stream).boxed_unsync())
}

/// The `pod` (`NAMESPACE/NAME`) and `port` of an inbound watch's query, or why the query is
/// bad (answered 400).
fn parse_inbound_query(query: &str) -> Result<(String, String, u16), String> {
    const USE: &str = "use ?pod=NAMESPACE/NAME&port=N";
    let mut pod = None;
    let mut port = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "pod" => pod = Some(v.into_owned()),
            "port" => port = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(pod) = pod.filter(|p| !p.is_empty()) else {
        return Err(format!("missing pod: {USE}\n"));
    };
    let (namespace, name) = pod
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| format!("pod {pod:?} is not NAMESPACE/NAME: {USE}\n"))?;
    let Some(port) = port.filter(|p| !p.is_empty()) else {
        return Err(format!("missing port: {USE}\n"));
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} is not a port number (1-65535): {USE}\n"))?;
    Ok((namespace.to_owned(), name.to_owned(), port))
}

/// `GET /v1/policy/inbound/watch?pod=NAMESPACE/NAME&port=N`: the port's whole inbound policy
/// as one line at once, then again after every change to it.
fn inbound_response(dest: &Destination, query: &str) -> Response<Body> {
    let (namespace, pod, port) = match parse_inbound_query(query) {
        Ok(parsed) => parsed,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    tracing::debug!(%namespace, %pod, port, "inbound policy watch started");
    let watcher = PolicyWatcher {
        rx: dest.subscribe_inbound(namespace, pod, port),
        last: None,
        _gauge: GaugeGuard::new(dest.metrics().watchers.clone()),
    };
    let stream = futures_util::stream::unfold(watcher, PolicyWatcher::next);
    jsonl(StreamBody::new(stream).boxed_unsync())
}

fn jsonl(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/jsonl"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

// === impl Watcher ===

/// One watch: reads the latest state of its target and sends the difference to what it sent.
/// The body is only polled as fast as the client reads (HTTP/2 flow control), so a slow client
/// skips intermediate states instead of queueing them.
struct Watcher {
    rx: watch::Receiver<Arc<Resolution>>,
    last: Option<Arc<Resolution>>,
    _gauge: GaugeGuard,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Self)> {
        loop {
            if self.last.is_some() && self.rx.changed().await.is_err() {
                // The target was dropped (the controller is shutting down).
                return None;
            }
            let current = self.rx.borrow_and_update().clone();
            let updates = diff(self.last.as_deref(), &current);
            self.last = Some(current);
            if updates.is_empty() {
                continue;
            }
            let mut buf = BytesMut::new();
            for update in &updates {
                buf.extend_from_slice(&update.to_line());
            }
            return Some((Ok(Frame::data(buf.freeze())), self));
        }
    }
}

// === impl PolicyWatcher ===

/// A policy sent whole as one line of a watch.
trait Line: PartialEq {
    fn line(&self) -> Bytes;
}

impl Line for OutboundPolicy {
    fn line(&self) -> Bytes {
        self.to_line()
    }
}

impl Line for InboundPolicy {
    fn line(&self) -> Bytes {
        self.to_line()
    }
}

/// One policy watch (outbound or inbound): sends the latest policy of its channel whenever it
/// differs from the last line sent (a slow client skips intermediate policies).
struct PolicyWatcher<P> {
    rx: watch::Receiver<Arc<P>>,
    last: Option<Arc<P>>,
    _gauge: GaugeGuard,
}

impl<P: Line> PolicyWatcher<P> {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Self)> {
        loop {
            if self.last.is_some() && self.rx.changed().await.is_err() {
                return None;
            }
            let current = self.rx.borrow_and_update().clone();
            if self.last.as_deref() == Some(&*current) {
                continue;
            }
            let line = current.line();
            self.last = Some(current);
            return Some((Ok(Frame::data(line)), self));
        }
    }
}

/// Counts a watcher in the gauge while it lives.
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
