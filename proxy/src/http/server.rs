//! The HTTP server at the top of both stacks' HTTP path: serves a connection whose protocol was
//! detected as HTTP/1 or HTTP/2 with hyper, and hands each request, its body boxed, to the
//! connection's request stack. On shutdown, in-flight requests finish and the connection is
//! closed gracefully.

use super::errors::Failure;
use crate::{
    detect::Protocol,
    drain::Drain,
    metrics::Tls,
    svc::{BoxBody, BoxError, BoxIo, ConnFuture, NewService, Param},
    tap::{ConnTap, Taps},
    transport::{ClientAddr, OrigDst},
};
use futures_util::{future::BoxFuture, FutureExt};
use http::{Request, Response};
use hyper::{body::Incoming, server::conn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::ServiceExt;

/// Limits of the HTTP servers.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// What every request of a connection knows of it.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    /// The identity the client proved over mutual TLS (inbound).
    pub client_id: Option<Arc<str>>,
    /// The connection's numbering of its tapped requests.
    pub tap: ConnTap,
}

/// A request's extension: when the server received it, and on which connection.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub conn: Arc<ConnInfo>,
}

/// Serves HTTP connections with the request stack `N` makes for each.
#[derive(Clone)]
pub struct NewServeHttp<N> {
    settings: HttpSettings,
    drain: Drain,
    taps: Taps,
    inner: N,
}

impl<N> NewServeHttp<N> {
    pub fn layer(
        settings: HttpSettings,
        drain: Drain,
        taps: Taps,
    ) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            settings: settings.clone(),
            drain: drain.clone(),
            taps: taps.clone(),
            inner,
        })
    }
}

pub struct ServeHttp<S> {
    protocol: Protocol,
    conn: Arc<ConnInfo>,
    settings: HttpSettings,
    drain: Drain,
    service: S,
}

impl<T, N, S> NewService<T> for NewServeHttp<N>
where
    T: Param<Protocol> + Param<ClientAddr> + Param<OrigDst> + Param<Tls>,
    N: NewService<T, Service = S>,
{
    type Service = ServeHttp<S>;
    fn new_service(&self, target: T) -> ServeHttp<S> {
        let ClientAddr(client) = target.param();
        let OrigDst(orig_dst) = target.param();
        let client_id = match target.param() {
            Tls::Established(id) => Some(id),
            Tls::NoIdentity(_) => None,
        };
        ServeHttp {
            protocol: target.param(),
            conn: Arc::new(ConnInfo {
                client,
                orig_dst,
                client_id,
                tap: self.taps.connection(),
            }),
            settings: self.settings.clone(),
            drain: self.drain.clone(),
            service: self.inner.new_service(target),
        }
    }
}

impl<S> tower::Service<BoxIo> for ServeHttp<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let service = self.service.clone();
        let info = self.conn.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let req = req.map(BoxBody::new);
            let mut req = req;
            req.extensions_mut().insert(Received {
                at: Instant::now(),
                conn: info.clone(),
            });
            let rsp: BoxFuture<'static, Result<Response<BoxBody>, Infallible>> =
                Box::pin(service.clone().oneshot(req).map(|result| {
                    // The stack answers its errors itself (`errors::RespondLayer`); one that
                    // still gets here is answered the same way.
                    Ok(result.unwrap_or_else(|error| Failure::of(&*error).response()))
                }));
            rsp
        });
        let io = TokioIo::new(io);
        let drain = self.drain.clone();
        let settings = self.settings.clone();
        let http2 = self.protocol == Protocol::HTTP2;
        Box::pin(async move {
            if http2 {
                let mut builder = conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_header_list_size(settings.max_header_bytes.try_into().unwrap_or(u32::MAX));
                let conn = builder.serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res?,
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await?
                    }
                }
            } else {
                let mut builder = conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(settings.header_read_timeout)
                    .max_buf_size(settings.max_header_bytes);
                let conn = builder.serve_connection(io, service).with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res?,
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await?
                    }
                }
            }
            Ok(())
        })
    }
}
