//! Response classification and the response body that records it when the response ends.
//!
//! HTTP 5xx is a failure. A gRPC response (content type `application/grpc…`) is decided by its
//! `grpc-status`: in the trailers, or in the headers of a trailers-only response; `0` is a
//! success, anything else (or no status at all) a failure.
//!
//! The same places tell a tapped request's taps about its response: the response's headers its
//! start, the body's end (or the failure) its end, so nothing is measured twice.
//!
//! [`NewMeter`] is the layer: it counts a request in `request_total` with its target's labels,
//! offers it to the taps, and wraps its response body so that the response's end records
//! `response_total` and `response_latency_ms`; an error is recorded as the response the client
//! will get (see `errors::Failure`) and passed up marked [`Recorded`].

use super::{
    errors::{grpc_code, Failure, Recorded},
    server::Received,
};
use crate::{
    discover::DstLabels,
    metrics::{
        Classification, Direction, Metrics, RequestLabels, ResponseLabels, TargetMetrics, Tls,
    },
    svc::{lock, BoxBody, BoxError, Cache, NewService, Param},
    tap::{RequestMeta, Tapped, Taps},
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// Decides a response's class from its status and, for gRPC, its `grpc-status`.
pub fn classify(status: StatusCode, grpc: bool, grpc_status: Option<u32>) -> Classification {
    if status.is_server_error() {
        return Classification::Failure;
    }
    match (grpc, grpc_status) {
        (false, _) | (true, Some(0)) => Classification::Success,
        (true, _) => Classification::Failure,
    }
}

/// Whether headers describe a gRPC message stream.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The `grpc-status` in `headers`, if any and well-formed.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Records one response in the metrics when it ends (or is dropped).
pub struct ResponseMeter {
    sink: Arc<MeterShared>,
    authority: Arc<str>,
    start: Instant,
    status: StatusCode,
    grpc: bool,
    grpc_status: Option<u32>,
    /// The taps that took the request, and the body bytes they are told of.
    tap: Option<(Tapped, u64)>,
}

impl ResponseMeter {
    /// Starts metering a response whose headers just arrived (and tells the taps).
    fn new(
        sink: Arc<MeterShared>,
        authority: Arc<str>,
        start: Instant,
        status: StatusCode,
        headers: &HeaderMap,
        tapped: Option<Tapped>,
    ) -> Self {
        if let Some(tapped) = &tapped {
            tapped.response_start(status.as_u16());
        }
        Self {
            sink,
            authority,
            start,
            status,
            grpc: is_grpc(headers),
            grpc_status: grpc_status(headers),
            tap: tapped.map(|t| (t, 0)),
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(status) = grpc_status(trailers) {
            self.grpc_status = Some(status);
        }
    }

    /// Records the response; `failure` says how its stream broke, if it did.
    fn finish(self, failure: Option<&str>) {
        let classification = classify(self.status, self.grpc, self.grpc_status);
        if let Some((tapped, bytes)) = self.tap {
            let success = classification == Classification::Success;
            tapped.response_end(self.grpc_status, bytes, success, failure);
        }
        let outcome = Outcome {
            classification,
            status_code: Some(self.status.as_u16()),
            grpc_status: self.grpc_status,
            error: None,
        };
        self.sink
            .record_response(&self.authority, None, outcome, self.start);
    }
}

/// How a response ended, as `response_total` labels it: protocol-neutral, so that a codec's
/// responses are recorded the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    pub classification: Classification,
    pub status_code: Option<u16>,
    pub grpc_status: Option<u32>,
    /// Why the proxy failed the request itself.
    pub error: Option<&'static str>,
}

pin_project_lite::pin_project! {
    /// A response body that classifies and records its response once the stream ends, fails or
    /// is dropped by the client.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        meter: Option<ResponseMeter>,
        // Whether the inner body said it had ended (hyper may drop it then without polling on).
        ended: bool,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(meter) = this.meter.take() {
                // Dropped before its end: the client went away (or reset the stream).
                meter.finish((!*this.ended).then_some(FAILURE_CANCELLED));
            }
        }
    }
}

/// A tapped response's failure when its body failed mid-stream.
pub const FAILURE_STREAM_RESET: &str = "stream_reset";
/// A tapped response's failure when the client went away before its end.
pub const FAILURE_CANCELLED: &str = "cancelled";

impl<B: Body> MeteredBody<B> {
    pub fn new(inner: B, meter: ResponseMeter) -> Self {
        Self {
            ended: inner.is_end_stream(),
            inner,
            meter: Some(meter),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                *this.ended = this.inner.is_end_stream();
                if let Some(meter) = this.meter.as_mut() {
                    if let Some(trailers) = frame.trailers_ref() {
                        meter.trailers(trailers);
                    } else if let (Some(data), Some((_, bytes))) =
                        (frame.data_ref(), meter.tap.as_mut())
                    {
                        *bytes += data.len() as u64;
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(meter) = this.meter.take() {
                    meter.finish(Some(FAILURE_STREAM_RESET));
                }
            }
            None => {
                if let Some(meter) = this.meter.take() {
                    meter.finish(None);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === the layer ===

type ResponseFuture = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

/// What the metrics layer labels a request with, from its target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeterTarget {
    pub direction: Direction,
    /// The `target_addr` label; `None`: where the client's connection was going.
    pub target_addr: Option<SocketAddr>,
    /// The endpoint's labels from discovery.
    pub dst: Option<Arc<DstLabels>>,
    /// The hop's TLS: the client connection's inbound, the hop to the endpoint outbound.
    pub tls: Tls,
    /// The endpoint's identity, when the hop to it is mutual TLS (outbound).
    pub server_id: Option<Arc<str>>,
    /// Where tap says the request went; `None`: where the client's connection was going.
    pub tap_target: Option<SocketAddr>,
    /// The authority of a request that names none; `None`: the connection's original
    /// destination.
    pub authority_fallback: Option<SocketAddr>,
}

/// Which requests a [`NewMeter`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// Every request and its response (at the endpoint).
    All,
    /// Only requests that failed before any endpoint recorded them (above the balancer: no
    /// endpoints, for example).
    UnrecordedFailures,
}

/// Measures, classifies and taps the requests of its target's service.
#[derive(Clone)]
pub struct NewMeter<N> {
    metrics: Metrics,
    taps: Taps,
    record: Record,
    /// One [`MeterShared`] per target, shared by the services built for it while any lives:
    /// the inbound stack is built per connection, and each connection of a client to a port
    /// would otherwise hold its own copy and its own handle maps (≈1.2 kB).
    shared: Arc<Cache<MeterTarget, MeterShared>>,
    inner: N,
}

impl<N> NewMeter<N> {
    pub fn layer(
        metrics: Metrics,
        taps: Taps,
        record: Record,
    ) -> impl tower::Layer<N, Service = Self> + Clone {
        // Dropped at the first sweep that finds a target unheld: the target's label sets
        // (`TargetMetrics`) then age out on their own idle timeout as before.
        let shared = Cache::new(Duration::ZERO);
        tower::layer::layer_fn(move |inner| Self {
            metrics: metrics.clone(),
            taps: taps.clone(),
            record,
            shared: shared.clone(),
            inner,
        })
    }
}

#[derive(Clone)]
pub struct Meter<S> {
    shared: Arc<MeterShared>,
    inner: S,
}

/// One target's metrics: its labels, and the handles of the series it has written, so that a
/// request finds its counters without building a label set or taking a family's lock.
pub struct MeterShared {
    target: MeterTarget,
    /// The label sets of the target (held while the target's stack lives), when the target's
    /// address is known before its requests come.
    labels: Option<Arc<TargetMetrics>>,
    metrics: Metrics,
    taps: Taps,
    record: Record,
    handles: Mutex<Handles>,
}

#[derive(Default)]
struct Handles {
    /// By the request's authority as it came: its label and its `request_total`.
    requests: HashMap<Box<str>, (Arc<str>, Counter)>,
    responses: HashMap<(Arc<str>, Outcome), (Counter, Histogram)>,
}

/// More distinct authorities than this in one target's handles are looked up each time
/// instead of being remembered (their label values are bounded by the authority budget anyway).
const MAX_HANDLES: usize = 256;

impl<T: Param<MeterTarget>, N: NewService<T>> NewService<T> for NewMeter<N> {
    type Service = Meter<N::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        let meter_target: MeterTarget = target.param();
        let inner = self.inner.new_service(target);
        let shared = self.shared.get_or_insert_with(&meter_target, || {
            let labels = meter_target
                .target_addr
                .map(|addr| self.metrics.target(meter_target.direction, addr));
            MeterShared {
                target: meter_target.clone(),
                labels,
                metrics: self.metrics.clone(),
                taps: self.taps.clone(),
                record: self.record,
                handles: Mutex::default(),
            }
        });
        Meter { shared, inner }
    }
}

impl<S> tower::Service<Request<BoxBody>> for Meter<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let shared = self.shared.clone();
        let received = req.extensions().get::<Received>().cloned();
        let start = received.as_ref().map_or_else(Instant::now, |r| r.at);
        let conn_dst = received.as_ref().map(|r| r.conn.orig_dst);
        let fallback = shared.target.authority_fallback.or(conn_dst);
        match shared.record {
            Record::All => {
                let authority = super::authority(&req, fallback);
                let label = shared.count_request(&authority, conn_dst);
                let tapped = shared.tap(&req, received.as_ref(), &authority, start);
                let grpc = is_grpc(req.headers());
                // Boxed before the async block, which then holds no projection of `S`.
                let call: ResponseFuture = Box::pin(self.inner.call(req));
                Box::pin(async move {
                    match call.await {
                        Ok(rsp) => {
                            let meter = ResponseMeter::new(
                                shared.clone(),
                                label,
                                start,
                                rsp.status(),
                                rsp.headers(),
                                tapped,
                            );
                            Ok(rsp.map(|body| BoxBody::new(MeteredBody::new(body, meter))))
                        }
                        Err(error) => {
                            Err(shared.failed(error, grpc, (&label, conn_dst), start, tapped))
                        }
                    }
                })
            }
            Record::UnrecordedFailures => {
                // Taps see the request only if it fails here; keep what they would need.
                let snapshot = shared.taps.is_active().then(|| {
                    let mut copy = Request::new(());
                    *copy.method_mut() = req.method().clone();
                    *copy.uri_mut() = req.uri().clone();
                    *copy.headers_mut() = req.headers().clone();
                    copy
                });
                // The authority, kept cheaply (shared bytes) for the rare failure.
                let uri_authority = req.uri().authority().cloned();
                let grpc = is_grpc(req.headers());
                let host = req.headers().get(http::header::HOST).cloned();
                let call: ResponseFuture = Box::pin(self.inner.call(req));
                Box::pin(async move {
                    let error = match call.await {
                        Ok(rsp) => return Ok(rsp),
                        Err(error) if error.is::<Recorded>() => return Err(error),
                        Err(error) => error,
                    };
                    let mut head = Request::new(());
                    if let Some(authority) = uri_authority {
                        *head.uri_mut() = http::Uri::from(authority);
                    }
                    if let Some(host) = host {
                        head.headers_mut().insert(http::header::HOST, host);
                    }
                    let authority = super::authority(&head, fallback);
                    let label = shared.count_request(&authority, conn_dst);
                    let tapped = snapshot
                        .and_then(|req| shared.tap(&req, received.as_ref(), &authority, start));
                    Err(shared.failed(error, grpc, (&label, conn_dst), start, tapped))
                })
            }
        }
    }
}

impl MeterShared {
    /// The target's label sets: its own, or those of the connection's original destination.
    fn labels(&self, conn_dst: Option<SocketAddr>) -> Arc<TargetMetrics> {
        match &self.labels {
            Some(labels) => labels.clone(),
            None => self.metrics.target(
                self.target.direction,
                conn_dst.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
        }
    }

    fn request_labels(&self, authority: Arc<str>, conn_dst: Option<SocketAddr>) -> RequestLabels {
        RequestLabels {
            direction: self.target.direction,
            authority,
            target_addr: self
                .target
                .target_addr
                .or(conn_dst)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            dst: self.target.dst.clone(),
            tls: self.target.tls.clone(),
            codec: None,
        }
    }

    /// Counts a request in `request_total`; returns its authority label.
    fn count_request(&self, authority: &str, conn_dst: Option<SocketAddr>) -> Arc<str> {
        let mut handles = lock(&self.handles);
        if let Some((label, counter)) = handles.requests.get(authority) {
            counter.inc();
            return label.clone();
        }
        let label = self.metrics.authority_label(authority);
        let labels = self.request_labels(label.clone(), conn_dst);
        let counter = self.labels(conn_dst).request_total(&labels);
        counter.inc();
        if handles.requests.len() < MAX_HANDLES && self.labels.is_some() {
            handles
                .requests
                .insert(authority.into(), (label.clone(), counter));
        }
        label
    }

    /// Records a response in `response_total` and `response_latency_ms`.
    fn record_response(
        &self,
        authority: &Arc<str>,
        conn_dst: Option<SocketAddr>,
        outcome: Outcome,
        start: Instant,
    ) {
        let ms = start.elapsed().as_secs_f64() * 1_000.0;
        let mut handles = lock(&self.handles);
        let key = (authority.clone(), outcome);
        if let Some((total, latency)) = handles.responses.get(&key) {
            total.inc();
            latency.observe(ms);
            return;
        }
        let labels = ResponseLabels {
            request: self.request_labels(authority.clone(), conn_dst),
            classification: outcome.classification,
            status_code: outcome.status_code,
            grpc_status: outcome.grpc_status,
            error: outcome.error,
        };
        let (total, latency) = self.labels(conn_dst).response(&labels);
        total.inc();
        latency.observe(ms);
        if handles.responses.len() < MAX_HANDLES && self.labels.is_some() {
            handles.responses.insert(key, (total, latency));
        }
    }

    /// Offers a starting request to the taps: nothing but one atomic load when nobody taps.
    fn tap<B>(
        &self,
        req: &Request<B>,
        received: Option<&Received>,
        authority: &str,
        start: Instant,
    ) -> Option<Tapped> {
        if !self.taps.is_active() {
            return None;
        }
        let conn = &received?.conn;
        let t = &self.target;
        let meta = RequestMeta {
            direction: t.direction,
            method: req.method().as_str(),
            authority,
            path: req.uri().path(),
            headers: req.headers(),
            client: conn.client,
            client_id: conn.client_id.as_ref(),
            target: t.tap_target.unwrap_or(conn.orig_dst),
            dst: t.dst.as_deref(),
            server_id: t.server_id.as_ref(),
            tls: matches!(t.tls, Tls::Established(_)),
            route: req
                .extensions()
                .get::<crate::metrics::RouteKey>()
                .map(|r| &*r.0),
        };
        self.taps.start(&conn.tap, start, &meta)
    }

    /// Records a failed request as the response the client gets (and tells the taps), and
    /// marks it recorded. A gRPC client gets status 200 and a `grpc-status` (`errors.rs`), and
    /// that is what is recorded.
    fn failed(
        &self,
        error: BoxError,
        grpc: bool,
        (authority, conn_dst): (&Arc<str>, Option<SocketAddr>),
        start: Instant,
        tapped: Option<Tapped>,
    ) -> BoxError {
        if error.is::<Recorded>() {
            return error;
        }
        let failure = Failure::of(&*error);
        let (status, grpc_status, bytes) = match grpc {
            true => (200, Some(u32::from(grpc_code(failure.status))), 0),
            // The body: the message and a line end.
            false => (
                failure.status.as_u16(),
                None,
                failure.message.len() as u64 + 1,
            ),
        };
        if let Some(tapped) = tapped {
            tapped.response_start(status);
            tapped.response_end(grpc_status, bytes, false, Some(failure.label));
        }
        let outcome = Outcome {
            classification: Classification::Failure,
            status_code: Some(status),
            grpc_status,
            error: Some(failure.label),
        };
        self.record_response(authority, conn_dst, outcome, start);
        Box::new(Recorded(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Direction;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    #[test]
    fn classification() {
        use Classification::*;
        fn check(status: u16, grpc: bool, grpc_status: Option<u32>, expected: Classification) {
            let got = classify(StatusCode::from_u16(status).unwrap(), grpc, grpc_status);
            assert_eq!(
                got, expected,
                "{status} grpc={grpc} grpc-status={grpc_status:?}"
            );
        }
        check(200, false, None, Success);
        check(404, false, None, Success);
        check(500, false, None, Failure);
        check(503, false, None, Failure);
        check(200, true, Some(0), Success);
        check(200, true, Some(2), Failure);
        check(200, true, Some(14), Failure);
        check(200, true, None, Failure);
        check(502, true, Some(0), Failure);
    }

    fn target() -> MeterTarget {
        MeterTarget {
            direction: Direction::Inbound,
            target_addr: Some("127.0.0.1:80".parse().unwrap()),
            dst: None,
            tls: Tls::NoIdentity(crate::metrics::NO_TLS_FROM_REMOTE),
            server_id: None,
            tap_target: None,
            authority_fallback: None,
        }
    }

    /// A meter over a service that answers with `rsp` (a fresh one per call).
    fn meter(
        m: &Metrics,
        record: Record,
        rsp: impl Fn() -> Result<Response<BoxBody>, BoxError> + Clone + Send + 'static,
    ) -> Meter<
        impl tower::Service<
            Request<BoxBody>,
            Response = Response<BoxBody>,
            Error = BoxError,
            Future = impl Send,
        >,
    > {
        let inner = crate::svc::NewFn(move |_: MeterTarget| {
            let rsp = rsp.clone();
            tower::service_fn(move |_: Request<BoxBody>| futures_util::future::ready(rsp()))
        });
        let taps = Taps::new(&Default::default(), None, m.clone());
        let layer = NewMeter::layer(m.clone(), taps, record);
        tower::Layer::layer(&layer, inner).new_service(target())
    }

    #[tokio::test]
    async fn the_services_of_one_target_share_its_meter_while_any_lives() {
        let m = Metrics::new(10, false);
        let taps = Taps::new(&Default::default(), None, m.clone());
        let inner = crate::svc::NewFn(|_: MeterTarget| ());
        let new = tower::Layer::layer(&NewMeter::layer(m.clone(), taps, Record::All), inner);
        let (a, b) = (new.new_service(target()), new.new_service(target()));
        assert!(Arc::ptr_eq(&a.shared, &b.shared), "one target, one meter");
        let other = MeterTarget {
            tls: Tls::Established("web.ns.serviceaccount.identity.mesh.local".into()),
            ..target()
        };
        let c = new.new_service(other);
        assert!(
            !Arc::ptr_eq(&a.shared, &c.shared),
            "another client identity"
        );
        // Once none holds it, a sweep forgets it, and the next service has a new one.
        let first = Arc::downgrade(&a.shared);
        drop((a, b));
        new.shared.sweep(std::time::Instant::now());
        assert!(first.upgrade().is_none());
    }

    fn request() -> Request<BoxBody> {
        Request::builder()
            .uri("http://svc:80/")
            .body(BoxBody::empty())
            .unwrap()
    }

    fn grpc_headers(status: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        if let Some(s) = status {
            h.insert("grpc-status", s.parse().unwrap());
        }
        h
    }

    async fn drain_with_trailers(m: &Metrics, headers: HeaderMap, trailers: Option<HeaderMap>) {
        use tower::ServiceExt;
        let svc = meter(m, Record::All, move || {
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(Bytes::from_static(b"x")))];
            frames.extend(trailers.clone().map(|t| Ok(Frame::trailers(t))));
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let mut rsp = Response::new(BoxBody::new(body));
            *rsp.headers_mut() = headers.clone();
            Ok(rsp)
        });
        let rsp = svc.oneshot(request()).await.unwrap();
        rsp.into_body().collect().await.unwrap();
    }

    #[tokio::test]
    async fn grpc_status_in_trailers_decides() {
        let m = Metrics::new(10, false);
        drain_with_trailers(&m, grpc_headers(None), Some(grpc_headers(Some("7")))).await;
        let text = m.encode();
        assert!(
            text.contains(r#"classification="failure",status_code="200",grpc_status="7"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"request_total{direction="inbound",authority="svc:80",target_addr="127.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn trailers_only_grpc_response_decides_by_headers() {
        let m = Metrics::new(10, false);
        drain_with_trailers(&m, grpc_headers(Some("0")), None).await;
        let text = m.encode();
        assert!(
            text.contains(r#"classification="success",status_code="200",grpc_status="0"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_dropped_body_is_still_recorded_once() {
        use tower::ServiceExt;
        let m = Metrics::new(10, false);
        let svc = meter(&m, Record::All, || Ok(Response::new(BoxBody::empty())));
        drop(svc.oneshot(request()).await.unwrap());
        assert!(m
            .encode()
            .contains(r#"classification="success",status_code="200"} 1"#));
    }

    #[tokio::test]
    async fn a_failure_is_recorded_once_as_the_response_the_client_gets() {
        use tower::ServiceExt;
        let m = Metrics::new(10, false);
        let failing =
            || Err(Box::new(super::super::errors::NoEndpoints("web:80".into())) as BoxError);
        let svc = meter(&m, Record::All, failing);
        let error = svc.oneshot(request()).await.unwrap_err();
        assert!(error.is::<Recorded>(), "{error}");
        let text = m.encode();
        let line = r#"response_total{direction="inbound",authority="svc:80",target_addr="127.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote",classification="failure",status_code="503",error="no_endpoints"} 1"#;
        assert!(text.contains(line), "{text}");

        // Above the endpoints, only what no endpoint recorded counts.
        let m = Metrics::new(10, false);
        let svc = meter(&m, Record::UnrecordedFailures, || {
            Ok(Response::new(BoxBody::empty()))
        });
        svc.oneshot(request()).await.unwrap();
        assert!(!m.encode().contains("request_total{"), "{}", m.encode());
        let svc = meter(&m, Record::UnrecordedFailures, move || {
            Err(Box::new(Recorded("counted below".into())) as BoxError)
        });
        svc.oneshot(request()).await.unwrap_err();
        assert!(!m.encode().contains("request_total{"), "{}", m.encode());
        let svc = meter(&m, Record::UnrecordedFailures, failing);
        svc.oneshot(request()).await.unwrap_err();
        assert!(m.encode().contains(line), "{}", m.encode());

        // A gRPC client gets a trailers-only grpc-status, and that is what is recorded.
        let m = Metrics::new(10, false);
        let denied = || Err(Box::new(super::super::errors::Unauthorized("no".into())) as BoxError);
        let mut req = request();
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        meter(&m, Record::All, denied)
            .oneshot(req)
            .await
            .unwrap_err();
        let text = m.encode();
        assert!(
            text.contains(r#"classification="failure",status_code="200",grpc_status="7",error="unauthorized"} 1"#),
            "{text}"
        );
    }
}
