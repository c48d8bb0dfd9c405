//! Authorization, after TLS termination (the identity is the one the client proved, never a
//! header): per request on HTTP ([`NewAuthorizeHttp`]: 403, gRPC `PERMISSION_DENIED`, with
//! `mesh-proxy-error` naming the policy) and per connection on opaque ports
//! ([`NewAuthorizeTcp`]: a reset). Both decide with the port's policy of the moment, so an
//! update applies to the next request or connection; a connection whose client the new policy
//! no longer allows is closed: an opaque one at once, an HTTP one after its in-flight requests
//! (the HTTP server's [`CloseSignal`](crate::http::server::CloseSignal), made here). Then the
//! Server's local rate limit ([`NewRateLimit`], with the limiters of [`super::ratelimit`]): 429,
//! gRPC `RESOURCE_EXHAUSTED`.

use crate::{
    http::{errors::RateLimited, server::CloseSignal},
    metrics::{AuthzMetrics, RateLimitLabels},
    svc::{reset, BoxBody, BoxError, BoxIo, ConnFuture, NewService, Param},
    transport::ClientAddr,
};
use futures_util::future::{self, Either};
use http::{Request, Response};
use std::task::{Context, Poll};
use tower::ServiceExt;

use super::policy::{PolicyHandle, ServerLabels};
use std::sync::Arc;

/// The close signal of an HTTP connection: its authorization revoked.
pub fn close_when_revoked(
    policy: &PolicyHandle,
    client: ClientAddr,
    id: ClientIdentity,
) -> CloseSignal {
    let policy = policy.clone();
    CloseSignal::new(move || {
        let ClientAddr(addr) = client;
        Box::pin(policy.clone().revoked(addr.ip(), id.0.clone()))
    })
}

// === HTTP ===

/// Refuses the requests no authorization of the port's policy allows.
#[derive(Clone)]
pub struct NewAuthorizeHttp<N> {
    inner: N,
}

impl<N> NewAuthorizeHttp<N> {
    pub fn layer() -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(|inner| Self { inner })
    }
}

/// The request check of [`NewAuthorizeHttp`].
#[derive(Clone)]
pub struct Authorize {
    policy: PolicyHandle,
    client: ClientAddr,
    id: ClientIdentity,
}

pub type AuthorizeHttp<S> = Gated<Authorize, S>;

impl<T, N> NewService<T> for NewAuthorizeHttp<N>
where
    T: Param<PolicyHandle> + Param<ClientAddr> + Param<ClientIdentity>,
    N: NewService<T>,
{
    type Service = AuthorizeHttp<N::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        Gated {
            check: Authorize {
                policy: target.param(),
                client: target.param(),
                id: target.param(),
            },
            inner: self.inner.new_service(target),
        }
    }
}

impl Check for Authorize {
    fn check(&self, req: &Request<BoxBody>) -> Result<(), BoxError> {
        let ClientAddr(client) = self.client;
        let policy = self.policy.current();
        policy
            .authorize_http(req, client.ip(), self.id.0.as_deref())
            .inspect_err(|error| {
                tracing::info!(%client, id = ?self.id.0, %error, "request refused");
            })
    }
}

/// A check a request must pass before it goes on: its error answers the request.
pub trait Check {
    fn check(&self, req: &Request<BoxBody>) -> Result<(), BoxError>;
}

/// A request service that forwards what its check passes and refuses the rest, without
/// calling the inner service.
#[derive(Clone)]
pub struct Gated<C, S> {
    check: C,
    inner: S,
}

impl<C: Check, S> tower::Service<Request<BoxBody>> for Gated<C, S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = Either<future::Ready<Result<Response<BoxBody>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        match self.check.check(&req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(error) => Either::Left(future::ready(Err(error))),
        }
    }
}

// === opaque ===

/// Resets the opaque connections no authorization of the port's policy allows, and closes
/// the allowed ones whose authorization is revoked.
#[derive(Clone)]
pub struct NewAuthorizeTcp<N> {
    inner: N,
}

impl<N> NewAuthorizeTcp<N> {
    pub fn layer() -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(|inner| Self { inner })
    }
}

pub struct AuthorizeTcp<T, N> {
    target: Option<T>,
    inner: N,
}

impl<T, N: Clone> NewService<T> for NewAuthorizeTcp<N> {
    type Service = AuthorizeTcp<T, N>;
    fn new_service(&self, target: T) -> Self::Service {
        AuthorizeTcp {
            target: Some(target),
            inner: self.inner.clone(),
        }
    }
}

impl<T, N, S> tower::Service<BoxIo> for AuthorizeTcp<T, N>
where
    T: Param<PolicyHandle> + Param<ClientAddr> + Param<ClientIdentity> + Send + 'static,
    N: NewService<T, Service = S> + Send + 'static,
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let target = self
            .target
            .take()
            .expect("a connection's service serves it once");
        let policy: PolicyHandle = target.param();
        let ClientAddr(client) = target.param();
        let ClientIdentity(id) = target.param();
        if let Err(error) = policy.current().authorize_tcp(client.ip(), id.as_deref()) {
            tracing::info!(%client, ?id, %error, "connection refused");
            reset(&io);
            return Box::pin(future::ready(Ok(())));
        }
        let forward = self.inner.new_service(target).oneshot(io);
        Box::pin(async move {
            tokio::select! {
                res = forward => res,
                () = policy.revoked(client.ip(), id.clone()) => {
                    // Dropping the forwarding closes both sides.
                    tracing::info!(%client, ?id, "authorization revoked: closing the connection");
                    Ok(())
                }
            }
        })
    }
}

// === rate limits ===

/// Refuses the requests over the port's rate limit, if its Server has one.
#[derive(Clone)]
pub struct NewRateLimit<N> {
    metrics: AuthzMetrics,
    inner: N,
}

impl<N> NewRateLimit<N> {
    pub fn layer(metrics: AuthzMetrics) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            metrics: metrics.clone(),
            inner,
        })
    }
}

/// The request check of [`NewRateLimit`].
#[derive(Clone)]
pub struct RateLimit {
    policy: PolicyHandle,
    client_id: Option<Arc<str>>,
    metrics: AuthzMetrics,
}

pub type RateLimitService<S> = Gated<RateLimit, S>;

/// A connection's client identity, as it proved it over mutual TLS.
#[derive(Clone, Debug)]
pub struct ClientIdentity(pub Option<Arc<str>>);

impl<T, N> NewService<T> for NewRateLimit<N>
where
    T: Param<PolicyHandle> + Param<ClientIdentity>,
    N: NewService<T>,
{
    type Service = RateLimitService<N::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        let ClientIdentity(client_id) = target.param();
        Gated {
            check: RateLimit {
                policy: target.param(),
                client_id,
                metrics: self.metrics.clone(),
            },
            inner: self.inner.new_service(target),
        }
    }
}

impl Check for RateLimit {
    fn check(&self, _: &Request<BoxBody>) -> Result<(), BoxError> {
        Ok(self.admit()?)
    }
}

/// A codec's request over the port's rate limit gets the codec's local reply.
impl<S> tower::Service<crate::codec::Req> for Gated<RateLimit, S>
where
    S: tower::Service<
        crate::codec::Req,
        Response = crate::codec::Answer,
        Error = crate::codec::LocalError,
    >,
{
    type Response = crate::codec::Answer;
    type Error = crate::codec::LocalError;
    type Future =
        Either<future::Ready<Result<crate::codec::Answer, crate::codec::LocalError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: crate::codec::Req) -> Self::Future {
        match self.check.admit() {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(_) => Either::Left(future::ready(Err(crate::codec::LocalError::RateLimited))),
        }
    }
}

impl RateLimit {
    /// Takes a request from the limiters of the port's Server, if it has any; counts a
    /// refusal.
    fn admit(&self) -> Result<(), RateLimited> {
        let policy = self.policy.current();
        if let Some(limiter) = &policy.rate_limit {
            if let Err(scope) = limiter.admit(self.client_id.as_deref()) {
                let ServerLabels {
                    srv_kind, srv_name, ..
                } = &policy.server;
                let c = limiter.config();
                self.metrics
                    .ratelimit_total
                    .get_or_create(&RateLimitLabels {
                        srv_kind,
                        srv_name: srv_name.clone(),
                        ratelimit_name: c.name.as_str().into(),
                        scope: scope.as_str(),
                    })
                    .inc();
                return Err(RateLimited(format!(
                    "{}/{} ({} limit)",
                    c.namespace,
                    c.name,
                    scope.as_str()
                )));
            }
        }
        Ok(())
    }
}
