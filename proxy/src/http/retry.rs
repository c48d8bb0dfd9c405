//! Retries of a route's requests, within its Service's budget.
//!
//! An attempt is retried when its response has a status, or a `grpc-status` (in the headers of
//! a trailers-only response, or in trailers that come right after the first message: the
//! response's first frames are peeked and given back), that the route's retry names, when it timed out (the per-attempt
//! timeout), or when it failed to connect or was refused unsent (HTTP/2 `REFUSED_STREAM`), which
//! are always safe. A retry needs the request's body again: bodies are kept up to
//! [`MAX_REPLAY`](super::replay::MAX_REPLAY) while they stream (`replay.rs`), and a larger one is
//! not retried (`outbound_http_retry_total{result="not_replayable"}`). Every retry takes a token
//! of the Service's [`Budget`]: `ratio` retries per request over the window, plus a floor per
//! second, so that a failing backend cannot turn its clients' retries into a storm
//! (`retry_budget_exhausted_total`).

use super::{
    classify::{grpc_status, is_grpc},
    client::UpstreamError,
    errors::AttemptTimeout,
    replay::{clone_head, ReplayBody, MAX_REPLAY},
};
use crate::{
    metrics::{ParentLabels, RetryLabels, RouteLabels, RouteMetrics},
    svc::{lock, BoxBody, BoxError, Param, Wrap},
};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_api::policy::{self, RetryBudget};
use prometheus_client::metrics::counter::Counter;
use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::ServiceExt;

/// What the retry layer reads of its target.
#[derive(Clone, Debug)]
pub struct RetryParams {
    /// When to retry; `None`: never (but the attempt timeout still applies).
    pub retry: Option<Arc<policy::Retry>>,
    /// The timeout of each attempt.
    pub attempt_timeout: Option<Duration>,
    pub budget: Arc<Budget>,
    pub labels: Arc<RouteLabels>,
}

/// Wraps each target's service in [`Retry`].
#[derive(Clone)]
pub struct RetryLayer {
    pub metrics: RouteMetrics,
}

impl<T: Param<RetryParams>, S> Wrap<T, S> for RetryLayer {
    type Service = Retry<S>;
    fn wrap(&self, target: &T, inner: S) -> Retry<S> {
        let params = target.param();
        if params.retry.is_none() {
            return Retry {
                inner,
                shared: Arc::new((params, None)),
            };
        }
        let counter = |result| {
            self.metrics
                .retry_total
                .get_or_create(&RetryLabels {
                    route: params.labels.clone(),
                    result,
                })
                .clone()
        };
        let handles = Handles {
            success: counter("success"),
            failure: counter("failure"),
            not_replayable: counter("not_replayable"),
            budget_exhausted: self
                .metrics
                .retry_budget_exhausted_total
                .get_or_create(&ParentLabels(params.labels.clone()))
                .clone(),
        };
        Retry {
            inner,
            shared: Arc::new((params, Some(handles))),
        }
    }
}

struct Handles {
    success: Counter,
    failure: Counter,
    not_replayable: Counter,
    budget_exhausted: Counter,
}

/// Sends a request, and again while its attempts fail in a way the route retries.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    /// The counters exist when the target retries.
    shared: Arc<(RetryParams, Option<Handles>)>,
}

impl<S> tower::Service<Request<BoxBody>> for Retry<S>
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
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let (params, handles) = &*shared;
            params.budget.deposit();
            let (Some(retry), Some(handles)) = (params.retry.clone(), handles.as_ref()) else {
                return attempt(inner, req, params.attempt_timeout).await;
            };
            let (head, body) = req.into_parts();
            let body = match ReplayBody::new(body, MAX_REPLAY) {
                Ok(body) => body,
                Err(body) => {
                    // Too large to keep: one attempt, counted if it fails in a retryable way.
                    let req = Request::from_parts(head, body);
                    let result = attempt(inner, req, params.attempt_timeout).await;
                    if retryable(&retry, &result) {
                        handles.not_replayable.inc();
                    }
                    return result;
                }
            };
            let mut retries = 0;
            let mut body = Some(body);
            loop {
                let this = body.take().expect("a body for each attempt");
                let next = this.replay();
                let req = Request::from_parts(clone_head(&head), BoxBody::new(this));
                let mut result = attempt(inner.clone(), req, params.attempt_timeout).await;
                if !retry.grpc.is_empty() {
                    if let Ok(rsp) = result {
                        result = Ok(peek_trailers(rsp).await);
                    }
                }
                if retries > 0 {
                    match &result {
                        Ok(rsp) if !failed(&retry, rsp) => handles.success.inc(),
                        _ => handles.failure.inc(),
                    };
                }
                if !retryable(&retry, &result) || retries >= retry.limit {
                    return result;
                }
                let Some(next) = next.filter(ReplayBody::is_replayable) else {
                    handles.not_replayable.inc();
                    return result;
                };
                if !params.budget.withdraw() {
                    handles.budget_exhausted.inc();
                    return result;
                }
                retries += 1;
                // The failed response is dropped before the retry: its connection is free.
                drop(result);
                if let Some(ms) = retry.backoff_ms.filter(|ms| *ms > 0) {
                    // Jitter: between half and all of the backoff.
                    let ms = ms / 2 + fastrand::u64(0..=ms / 2);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                body = Some(next);
            }
        })
    }
}

/// One attempt, within its timeout.
async fn attempt<S>(
    inner: S,
    req: Request<BoxBody>,
    timeout: Option<Duration>,
) -> Result<Response<BoxBody>, BoxError>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
{
    match timeout {
        None => inner.oneshot(req).await,
        Some(t) => match tokio::time::timeout(t, inner.oneshot(req)).await {
            Ok(result) => result,
            Err(_) => Err(AttemptTimeout(t).into()),
        },
    }
}

/// The `grpc-status` a gRPC response's trailers carried, when the first frames showed them.
#[derive(Clone, Copy, Debug)]
struct PeekedStatus(u32);

/// Reads the first frame of a gRPC response without a status in its headers (and the next one,
/// if it is there already), so that a unary call's status in the trailers decides a retry; the
/// frames read are given back in front of the body.
async fn peek_trailers(rsp: Response<BoxBody>) -> Response<BoxBody> {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    if !is_grpc(rsp.headers())
        || grpc_status(rsp.headers()).is_some()
        || http_body::Body::is_end_stream(rsp.body())
    {
        return rsp;
    }
    let (mut parts, mut body) = rsp.into_parts();
    let mut frames = std::collections::VecDeque::new();
    let mut status = None;
    let mut note = |frame: &http_body::Frame<bytes::Bytes>| {
        if let Some(t) = frame.trailers_ref() {
            status = grpc_status(t);
        }
    };
    match body.frame().await {
        Some(Ok(frame)) => {
            note(&frame);
            let is_data = frame.is_data();
            frames.push_back(Ok(frame));
            if is_data {
                if let Some(Some(Ok(frame))) = body.frame().now_or_never() {
                    note(&frame);
                    frames.push_back(Ok(frame));
                }
            }
        }
        Some(Err(e)) => frames.push_back(Err(e)),
        None => {}
    }
    if let Some(code) = status {
        parts.extensions.insert(PeekedStatus(code));
    }
    Response::from_parts(
        parts,
        BoxBody::new(Prefixed {
            frames,
            inner: body,
        }),
    )
}

/// A body whose first frames were read already.
struct Prefixed {
    frames: std::collections::VecDeque<Result<http_body::Frame<bytes::Bytes>, BoxError>>,
    inner: BoxBody,
}

impl http_body::Body for Prefixed {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(frame));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
            .sum();
        let inner = self.inner.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + buffered);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

/// Whether a response is one the retry names.
fn failed(retry: &policy::Retry, rsp: &Response<BoxBody>) -> bool {
    let status = rsp.status().as_u16();
    if retry.http.iter().any(|r| (r.min..=r.max).contains(&status)) {
        return true;
    }
    if !retry.grpc.is_empty() && is_grpc(rsp.headers()) {
        let code = grpc_status(rsp.headers())
            .or_else(|| rsp.extensions().get::<PeekedStatus>().map(|p| p.0));
        if let Some(code) = code {
            return retry.grpc.iter().any(|c| u32::from(*c) == code);
        }
    }
    false
}

/// Whether an attempt's outcome may be retried.
fn retryable(retry: &policy::Retry, result: &Result<Response<BoxBody>, BoxError>) -> bool {
    match result {
        Ok(rsp) => failed(retry, rsp),
        Err(error) => safe_to_retry(&**error),
    }
}

/// Errors of requests that did not reach the application, or timed out per attempt.
fn safe_to_retry(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = e {
        if err.is::<AttemptTimeout>() {
            return true;
        }
        if let Some(up) = err.downcast_ref::<UpstreamError>() {
            if matches!(
                up,
                UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
            ) {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        e = err.source();
    }
    false
}

// === the budget ===

/// A Service's retry budget: over the last `window`, retries may be at most `ratio` × requests
/// plus `min_retries_per_second` × the window's seconds.
pub struct Budget {
    config: RetryBudget,
    slots: Mutex<Vec<Slot>>,
    start: Instant,
}

/// One second of the window.
#[derive(Clone, Copy, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

impl Budget {
    pub fn new(config: RetryBudget) -> Self {
        let seconds = config.window_seconds.clamp(1, 300) as usize;
        Self {
            config,
            slots: Mutex::new(vec![Slot::default(); seconds]),
            start: Instant::now(),
        }
    }

    pub fn config(&self) -> &RetryBudget {
        &self.config
    }

    fn now(&self) -> u64 {
        // Seconds from 1, so that a fresh slot (second 0) is never current.
        self.start.elapsed().as_secs() + 1
    }

    /// The current second's slot, reset if it held an older second.
    fn slot(slots: &mut [Slot], now: u64) -> &mut Slot {
        let len = slots.len() as u64;
        let slot = &mut slots[(now % len) as usize];
        if slot.second != now {
            *slot = Slot {
                second: now,
                ..Slot::default()
            };
        }
        slot
    }

    /// Counts a request.
    pub fn deposit(&self) {
        let now = self.now();
        Self::slot(&mut lock(&self.slots), now).requests += 1;
    }

    /// Takes a retry token, if the budget has one.
    pub fn withdraw(&self) -> bool {
        let now = self.now();
        let mut slots = lock(&self.slots);
        let window = slots.len() as u64;
        let (requests, retries) = slots
            .iter()
            .filter(|s| s.second + window > now)
            .fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries));
        let allowed = self.config.ratio * requests as f64
            + f64::from(self.config.min_retries_per_second) * window as f64;
        if (retries as f64) < allowed {
            Self::slot(&mut slots, now).retries += 1;
            true
        } else {
            false
        }
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svc::NewService;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use mesh_api::policy::StatusRange;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each request with the next status of its list (the last one forever), and keeps
    /// the bodies it received.
    #[derive(Clone)]
    struct Script {
        statuses: Arc<Vec<u16>>,
        calls: Arc<AtomicUsize>,
        bodies: Arc<Mutex<Vec<Bytes>>>,
    }

    impl Script {
        fn new(statuses: &[u16]) -> Self {
            Self {
                statuses: Arc::new(statuses.to_vec()),
                calls: Arc::default(),
                bodies: Arc::default(),
            }
        }
    }

    impl tower::Service<Request<BoxBody>> for Script {
        type Response = Response<BoxBody>;
        type Error = BoxError;
        type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let status = self.statuses[n.min(self.statuses.len() - 1)];
            let bodies = self.bodies.clone();
            Box::pin(async move {
                let body = req.into_body().collect().await?.to_bytes();
                lock(&bodies).push(body);
                let mut rsp = Response::new(BoxBody::empty());
                *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok(rsp)
            })
        }
    }

    fn params(limit: u32, budget: RetryBudget) -> RetryParams {
        RetryParams {
            retry: Some(Arc::new(policy::Retry {
                http: vec![StatusRange { min: 500, max: 599 }],
                limit,
                ..policy::Retry::default()
            })),
            attempt_timeout: None,
            budget: Arc::new(Budget::new(budget)),
            labels: Arc::new(RouteLabels::default()),
        }
    }

    /// The retry layer around `inner`.
    fn retrying<S: Clone>(inner: S, params: RetryParams, metrics: &RouteMetrics) -> Retry<S> {
        let layer = crate::svc::WrapLayer(RetryLayer {
            metrics: metrics.clone(),
        });
        tower::Layer::layer(
            &layer,
            crate::svc::NewFn(move |_: RetryParams| inner.clone()),
        )
        .new_service(params)
    }

    fn retry(script: &Script, params: RetryParams, metrics: &RouteMetrics) -> Retry<Script> {
        retrying(script.clone(), params, metrics)
    }

    /// Sends one empty request; the response.
    async fn call_once<S>(svc: &mut Retry<S>) -> Response<BoxBody>
    where
        S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(BoxBody::empty()))
            .await
            .unwrap()
    }

    async fn send(svc: &mut Retry<Script>, body: Vec<u8>) -> u16 {
        let req = Request::post("/")
            .body(BoxBody::new(Full::new(Bytes::from(body))))
            .unwrap();
        svc.ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    use tower::Service;

    #[tokio::test]
    async fn retries_a_failure_with_its_body_and_counts_it() {
        let metrics = RouteMetrics::default();
        let script = Script::new(&[503, 200]);
        let mut svc = retry(&script, params(2, RetryBudget::default()), &metrics);
        assert_eq!(send(&mut svc, vec![7u8; 10 * 1024]).await, 200);
        let bodies = lock(&script.bodies).clone();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0], bodies[1], "the retry sent the same body");
        let labels = |result| RetryLabels {
            route: Arc::new(RouteLabels::default()),
            result,
        };
        assert_eq!(
            metrics.retry_total.get_or_create(&labels("success")).get(),
            1
        );
        assert_eq!(
            metrics.retry_total.get_or_create(&labels("failure")).get(),
            0
        );
    }

    #[tokio::test]
    async fn a_grpc_status_in_the_trailers_is_retried_and_the_body_kept() {
        use http_body_util::StreamBody;
        #[derive(Clone)]
        struct Grpc(Arc<AtomicUsize>);
        impl tower::Service<Request<BoxBody>> for Grpc {
            type Response = Response<BoxBody>;
            type Error = BoxError;
            type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<BoxBody>) -> Self::Future {
                let code = if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    "14"
                } else {
                    "0"
                };
                Box::pin(async move {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", code.parse().unwrap());
                    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
                        Ok(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
                        Ok(http_body::Frame::trailers(trailers)),
                    ];
                    let mut rsp = Response::new(BoxBody::new(StreamBody::new(
                        futures_util::stream::iter(frames),
                    )));
                    rsp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok(rsp)
                })
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let mut p = params(2, RetryBudget::default());
        p.retry = Some(Arc::new(policy::Retry {
            grpc: vec![14],
            limit: 2,
            ..policy::Retry::default()
        }));
        let mut svc = retrying(Grpc(calls.clone()), p, &RouteMetrics::default());
        let rsp = call_once(&mut svc).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "UNAVAILABLE in the trailers was retried"
        );
        let body = rsp.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(body.to_bytes(), Bytes::from_static(b"\0\0\0\0\x01x"));
    }

    #[tokio::test]
    async fn stops_at_the_limit() {
        let metrics = RouteMetrics::default();
        let script = Script::new(&[500]);
        let mut svc = retry(&script, params(2, RetryBudget::default()), &metrics);
        assert_eq!(send(&mut svc, vec![]).await, 500);
        assert_eq!(script.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_large_body_is_sent_once() {
        let metrics = RouteMetrics::default();
        let script = Script::new(&[500, 200]);
        let mut svc = retry(&script, params(2, RetryBudget::default()), &metrics);
        assert_eq!(send(&mut svc, vec![1u8; 1024 * 1024]).await, 500);
        assert_eq!(script.calls.load(Ordering::SeqCst), 1);
        assert_eq!(lock(&script.bodies)[0].len(), 1024 * 1024);
        let labels = RetryLabels {
            route: Arc::new(RouteLabels::default()),
            result: "not_replayable",
        };
        assert_eq!(metrics.retry_total.get_or_create(&labels).get(), 1);
    }

    #[tokio::test]
    async fn the_budget_bounds_retries() {
        let metrics = RouteMetrics::default();
        let script = Script::new(&[500]);
        let budget = RetryBudget {
            ratio: 0.2,
            min_retries_per_second: 1,
            window_seconds: 10,
        };
        let mut svc = retry(&script, params(3, budget), &metrics);
        for _ in 0..100 {
            assert_eq!(send(&mut svc, vec![]).await, 500);
        }
        let calls = script.calls.load(Ordering::SeqCst);
        // 100 requests: 0.2 × 100 + 1 × 10 retries at most.
        assert!(calls <= 100 + 30, "{calls} attempts");
        assert!(calls >= 100 + 25, "the budget allows its share: {calls}");
        let exhausted = metrics
            .retry_budget_exhausted_total
            .get_or_create(&ParentLabels(Arc::new(RouteLabels::default())))
            .get();
        assert!(exhausted >= 70, "{exhausted}");
    }

    #[tokio::test]
    async fn an_attempt_that_times_out_is_retried() {
        #[derive(Clone)]
        struct SlowFirst(Arc<AtomicUsize>);
        impl tower::Service<Request<BoxBody>> for SlowFirst {
            type Response = Response<BoxBody>;
            type Error = BoxError;
            type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<BoxBody>) -> Self::Future {
                let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
                Box::pin(async move {
                    if first {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    Ok(Response::new(BoxBody::empty()))
                })
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let mut p = params(1, RetryBudget::default());
        p.attempt_timeout = Some(Duration::from_millis(100));
        let mut svc = retrying(SlowFirst(calls.clone()), p, &RouteMetrics::default());
        let rsp = call_once(&mut svc).await;
        assert_eq!(rsp.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
