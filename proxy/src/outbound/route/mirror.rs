//! Request mirrors (Gateway API's `RequestMirror`): a share of a rule's requests is copied to
//! another backend, fire and forget. A copy never delays or fails the original: it is sent from
//! a task of its own, its response is read and dropped, and it is dropped (counted in
//! `mirror_dropped_total`) when too many copies are in flight or when the mirror does not answer
//! within [`MIRROR_TIMEOUT`]. A request with a body is copied only when the body is small enough
//! to keep ([`MAX_REPLAY`]); the original then waits for its body to be read, which a small body
//! costs little.

use super::split::{BackendRef, Backends};
use crate::{
    http::{
        filters::hit,
        replay::{clone_head, MAX_REPLAY},
    },
    metrics::{BackendKey, RouteMetrics},
    outbound::Logical,
    svc::{BoxBody, BoxError, NewService, Param, Wrap},
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::metrics::counter::Counter;
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// How long a mirror has to answer (and its body to end) before its copy is dropped.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);
/// Copies in flight per rule and mirror; more are dropped.
pub const MAX_IN_FLIGHT: usize = 100;

/// A rule's mirrors: where copies go and which share.
#[derive(Clone, Debug, Default)]
pub struct MirrorsParam(pub Vec<(BackendRef, f64)>);

/// Adds each target's mirrors around its service.
pub struct MirrorLayer<N, S> {
    pub backends: Backends<N, S>,
    pub metrics: RouteMetrics,
}

impl<N: Clone, S> Clone for MirrorLayer<N, S> {
    fn clone(&self) -> Self {
        Self {
            backends: self.backends.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

struct Target<S> {
    backend: S,
    _held: Arc<S>,
    percent: f64,
    sent: Counter,
    dropped: Counter,
    in_flight: Arc<Semaphore>,
}

impl<T, I, N, S> Wrap<T, I> for MirrorLayer<N, S>
where
    T: Param<MirrorsParam>,
    N: NewService<Logical, Service = S>,
    S: Clone + Send + Sync + 'static,
{
    type Service = Mirror<I, S>;
    fn wrap(&self, target: &T, inner: I) -> Mirror<I, S> {
        let MirrorsParam(mirrors) = target.param();
        let targets = mirrors
            .into_iter()
            .filter(|(b, percent)| b.error.is_none() && *percent > 0.0)
            .map(|(backend, percent)| {
                let held = self.backends.get(&backend.addr);
                let key = BackendKey(backend.labels);
                Target {
                    backend: (*held).clone(),
                    _held: held,
                    percent,
                    sent: self.metrics.mirror_total.get_or_create(&key).clone(),
                    dropped: self
                        .metrics
                        .mirror_dropped_total
                        .get_or_create(&key)
                        .clone(),
                    in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                }
            })
            .collect::<Vec<_>>();
        Mirror {
            inner,
            targets: targets.into(),
        }
    }
}

pub struct Mirror<I, S> {
    inner: I,
    targets: Arc<[Target<S>]>,
}

impl<I: Clone, S> Clone for Mirror<I, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            targets: self.targets.clone(),
        }
    }
}

impl<I, S> tower::Service<Request<BoxBody>> for Mirror<I, S>
where
    I: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    I::Future: Send + 'static,
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
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
        let chosen: Vec<usize> = (0..self.targets.len())
            .filter(|i| hit(self.targets[*i].percent))
            .collect();
        if chosen.is_empty() {
            return Box::pin(inner.oneshot(req));
        }
        let targets = self.targets.clone();
        Box::pin(async move {
            let (head, body) = req.into_parts();
            let body = if body.is_end_stream() {
                Some(Bytes::new())
            } else if body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= MAX_REPLAY as u64)
            {
                // A known, small length: keep it for the copies.
                Some(Limited::new(body, MAX_REPLAY).collect().await?.to_bytes())
            } else {
                for i in &chosen {
                    targets[*i].dropped.inc();
                }
                return inner.oneshot(Request::from_parts(head, body)).await;
            };
            let body = body.unwrap_or_default();
            for i in chosen {
                let target = &targets[i];
                let Ok(permit) = target.in_flight.clone().try_acquire_owned() else {
                    target.dropped.inc();
                    continue;
                };
                target.sent.inc();
                let copy =
                    Request::from_parts(clone_head(&head), BoxBody::new(Full::new(body.clone())));
                let backend = target.backend.clone();
                let dropped = target.dropped.clone();
                tokio::spawn(async move {
                    let sent = async {
                        let rsp = backend.oneshot(copy).await?;
                        // Read the answer to its end so the connection can be reused.
                        rsp.into_body().collect().await?;
                        Ok::<_, BoxError>(())
                    };
                    match tokio::time::timeout(MIRROR_TIMEOUT, sent).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%error, "mirror failed"),
                        Err(_) => {
                            dropped.inc();
                            tracing::debug!("mirror too slow: dropped");
                        }
                    }
                    drop(permit);
                });
            }
            let req = Request::from_parts(head, BoxBody::new(Full::new(body)));
            inner.oneshot(req).await
        })
    }
}
