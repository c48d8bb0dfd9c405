//! The HTTP server of the destination service: the destination and outbound policy watches,
//! health and metrics endpoints.
//!
//! Plaintext HTTP/2 (prior knowledge) and HTTP/1.1 on one port (hyper-util's auto builder).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use mesh_api::destination::WATCH_PATH;
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

/// One policy watch: sends the latest policy of its channel whenever it differs from the last
/// line sent (a slow client skips intermediate policies).
struct PolicyWatcher {
    rx: watch::Receiver<Arc<OutboundPolicy>>,
    last: Option<Arc<OutboundPolicy>>,
    _gauge: GaugeGuard,
}

impl PolicyWatcher {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Self)> {
        loop {
            if self.last.is_some() && self.rx.changed().await.is_err() {
                return None;
            }
            let current = self.rx.borrow_and_update().clone();
            if self.last.as_deref() == Some(&*current) {
                continue;
            }
            let line = current.to_line();
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
