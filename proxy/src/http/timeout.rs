//! A route's request timeout (`timeouts.request`): the whole request, retries included, must
//! have its response headers within it, else it fails with [`RequestTimeout`] (504, or gRPC
//! `DEADLINE_EXCEEDED`).

use super::errors::RequestTimeout;
use crate::svc::{BoxBody, BoxError, Param, Wrap};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::{
    task::{Context, Poll},
    time::Duration,
};

/// The timeout a target's requests get; `None`: none.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTimeoutParam(pub Option<Duration>);

/// Wraps each target's service in its request timeout.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer;

impl<T: Param<RequestTimeoutParam>, S> Wrap<T, S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn wrap(&self, target: &T, inner: S) -> Timeout<S> {
        let RequestTimeoutParam(timeout) = target.param();
        Timeout { inner, timeout }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> tower::Service<Request<BoxBody>> for Timeout<S>
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
        let call = self.inner.call(req);
        match self.timeout {
            None => Box::pin(call),
            Some(t) => Box::pin(async move {
                match tokio::time::timeout(t, call).await {
                    Ok(result) => result,
                    Err(_) => Err(RequestTimeout(t).into()),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        http::errors::Failure,
        svc::{NewFn, NewService, WrapLayer},
    };
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn a_slow_answer_is_a_504() {
        let slow = tower::service_fn(|_: Request<BoxBody>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, BoxError>(Response::new(BoxBody::empty()))
        });
        let new = tower::Layer::layer(&WrapLayer(TimeoutLayer), NewFn(move |_| slow));
        let mut svc = new.new_service(RequestTimeoutParam(Some(Duration::from_millis(20))));
        let error = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(BoxBody::empty()))
            .await
            .unwrap_err();
        let failure = Failure::of(&*error);
        assert_eq!(failure.status, 504);
        assert_eq!(failure.label, "request_timeout");
        let grpc = failure.response(true);
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");

        let mut none = new.new_service(RequestTimeoutParam(None));
        let rsp = none
            .ready()
            .await
            .unwrap()
            .call(Request::new(BoxBody::empty()));
        assert!(rsp.await.is_ok(), "no timeout: it waits");
    }
}
