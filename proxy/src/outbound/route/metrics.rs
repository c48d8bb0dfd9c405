//! Route and backend metrics: requests, responses by classification (HTTP status, and
//! `grpc-status` in headers or trailers) and latency to the response's headers, per route
//! (retries inside one response) and per route backend (each attempt).

use crate::{
    http::classify::{classify, grpc_status, is_grpc},
    metrics::{BackendKey, Classification, Classified, RouteKey, RouteMetrics},
    svc::{BoxBody, BoxError},
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

/// The counters of one route, or one route backend.
#[derive(Clone)]
pub struct Handles {
    request: Counter,
    success: Counter,
    failure: Counter,
    latency: Histogram,
}

impl Handles {
    pub fn route(metrics: &RouteMetrics, key: &RouteKey) -> Self {
        let class = |classification| {
            metrics
                .response_total
                .get_or_create(&Classified {
                    labels: key.clone(),
                    classification,
                })
                .clone()
        };
        Self {
            request: metrics.request_total.get_or_create(key).clone(),
            success: class(Classification::Success),
            failure: class(Classification::Failure),
            latency: metrics.response_latency_ms.get_or_create(key).clone(),
        }
    }

    pub fn backend(metrics: &RouteMetrics, key: &BackendKey) -> Self {
        let class = |classification| {
            metrics
                .backend_response_total
                .get_or_create(&Classified {
                    labels: key.clone(),
                    classification,
                })
                .clone()
        };
        Self {
            request: metrics.backend_request_total.get_or_create(key).clone(),
            success: class(Classification::Success),
            failure: class(Classification::Failure),
            latency: metrics
                .backend_response_latency_ms
                .get_or_create(key)
                .clone(),
        }
    }
}

/// Counts a service's requests and classifies its responses.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    /// `None`: not metered (a destination that is no Service).
    handles: Option<Arc<Handles>>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, handles: Option<Handles>) -> Self {
        Self {
            inner,
            handles: handles.map(Arc::new),
        }
    }
}

impl<S> tower::Service<Request<BoxBody>> for Metered<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let Some(handles) = self.handles.clone() else {
            return Box::pin(self.inner.call(req));
        };
        handles.request.inc();
        let start = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            handles
                .latency
                .observe(start.elapsed().as_secs_f64() * 1_000.0);
            match result {
                Ok(rsp) => {
                    let status = rsp.status();
                    let grpc = is_grpc(rsp.headers());
                    let in_headers = grpc_status(rsp.headers());
                    if !grpc || in_headers.is_some() || rsp.body().is_end_stream() {
                        let class = classify(status, grpc, in_headers);
                        count(&handles, class);
                        Ok(rsp)
                    } else {
                        // gRPC's status comes in the trailers.
                        Ok(rsp.map(|body| {
                            BoxBody::new(Classify {
                                inner: body,
                                handles: Some(handles),
                                status,
                            })
                        }))
                    }
                }
                Err(error) => {
                    handles.failure.inc();
                    Err(error)
                }
            }
        })
    }
}

fn count(handles: &Handles, class: Classification) {
    match class {
        Classification::Success => handles.success.inc(),
        Classification::Failure => handles.failure.inc(),
    };
}

/// A gRPC response body that classifies its response by the trailers' `grpc-status`.
struct Classify {
    inner: BoxBody,
    handles: Option<Arc<Handles>>,
    status: StatusCode,
}

impl Classify {
    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        if let Some(handles) = self.handles.take() {
            let code = trailers.and_then(grpc_status);
            count(&handles, classify(self.status, true, code));
        }
    }
}

impl Drop for Classify {
    fn drop(&mut self) {
        // Ended without trailers, or cancelled: a failure.
        self.finish(None);
    }
}

impl Body for Classify {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    this.finish(Some(trailers));
                }
            }
            Some(Err(_)) | None => this.finish(None),
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

/// Counts each rule's requests and responses under its route's labels.
#[derive(Clone)]
pub struct RouteMetricsLayer(pub RouteMetrics);

impl<T: crate::svc::Param<Option<RouteKey>>, S> crate::svc::Wrap<T, S> for RouteMetricsLayer {
    type Service = Metered<Tagged<S>>;
    fn wrap(&self, target: &T, inner: S) -> Metered<Tagged<S>> {
        let key = target.param();
        let handles = key.as_ref().map(|key| Handles::route(&self.0, key));
        Metered::new(Tagged { inner, key }, handles)
    }
}

/// Tags each request with its route, for the tap events further in.
#[derive(Clone)]
pub struct Tagged<S> {
    inner: S,
    key: Option<RouteKey>,
}

impl<S: tower::Service<Request<BoxBody>>> tower::Service<Request<BoxBody>> for Tagged<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> S::Future {
        if let Some(key) = &self.key {
            req.extensions_mut().insert(key.clone());
        }
        self.inner.call(req)
    }
}
