//! Where an opaque outbound connection goes: discovery by its original destination (a
//! `ClusterIP:port`), one endpoint picked by P2C over peak-EWMA load, and the connection counted
//! as that endpoint's load until it closes. Not a mesh service, or discovery off: the original
//! destination.

use super::OutboundConn;
use crate::{
    balance::{self, BalanceConfig},
    discover::{Resolution, Resolver},
    metrics::{Direction, TcpLabels, Tls},
    svc::{BoxError, BoxIo, ConnFuture, NewService},
    tcp::TcpEndpoint,
};
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::ServiceExt;

/// Picks each opaque connection's endpoint, then serves it with `N`'s service for it.
#[derive(Clone)]
pub struct NewOpaqueEndpoint<N> {
    resolver: Option<Arc<Resolver>>,
    balance: Arc<BalanceConfig>,
    failfast: Duration,
    identity: bool,
    no_tls: &'static str,
    inner: N,
}

impl<N> NewOpaqueEndpoint<N> {
    pub fn layer(
        resolver: Option<Arc<Resolver>>,
        balance: BalanceConfig,
        failfast: Duration,
        identity: bool,
        no_tls: &'static str,
    ) -> impl tower::Layer<N, Service = Self> + Clone {
        let balance = Arc::new(balance);
        tower::layer::layer_fn(move |inner| Self {
            resolver: resolver.clone(),
            balance: balance.clone(),
            failfast,
            identity,
            no_tls,
            inner,
        })
    }
}

pub struct OpaqueEndpoint<N> {
    conn: OutboundConn,
    stack: NewOpaqueEndpoint<N>,
}

impl<N: Clone> NewService<OutboundConn> for NewOpaqueEndpoint<N> {
    type Service = OpaqueEndpoint<N>;
    fn new_service(&self, conn: OutboundConn) -> Self::Service {
        OpaqueEndpoint {
            conn,
            stack: self.clone(),
        }
    }
}

impl<N, S> tower::Service<BoxIo> for OpaqueEndpoint<N>
where
    N: NewService<TcpEndpoint, Service = S> + Clone + Send + Sync + 'static,
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let conn = self.conn.clone();
        let stack = self.stack.clone();
        Box::pin(async move {
            let endpoint = stack.endpoint(&conn).await;
            stack.inner.new_service(endpoint).oneshot(io).await
        })
    }
}

impl<N> NewOpaqueEndpoint<N> {
    async fn endpoint(&self, conn: &OutboundConn) -> TcpEndpoint {
        let labels = |target_addr, tls| TcpLabels {
            direction: Direction::Outbound,
            target_addr,
            tls: Some(tls),
        };
        let original = TcpEndpoint {
            addr: conn.orig_dst,
            server_id: None,
            labels: labels(conn.orig_dst, Tls::NoIdentity(self.no_tls)),
            in_flight: None,
            unavailable: None,
        };
        let Some(resolver) = &self.resolver else {
            return original;
        };
        let destination = resolver.resolve(&conn.orig_dst.to_string());
        let endpoints = match destination.ready(self.failfast).await {
            Resolution::Pending | Resolution::Unknown => return original,
            Resolution::Endpoints(endpoints) => endpoints,
        };
        let now = Instant::now();
        let picked = balance::pick(
            &endpoints,
            |e| &e.balance,
            &self.balance,
            now,
            |n| fastrand::usize(..n),
        );
        let Some(ep) = picked else {
            return TcpEndpoint {
                labels: TcpLabels {
                    tls: None,
                    ..original.labels.clone()
                },
                unavailable: Some(destination.authority.clone()),
                ..original
            };
        };
        let server_id = ep.identity.clone().filter(|_| self.identity);
        let tls = match &server_id {
            Some(id) => Tls::Established(id.clone()),
            None => Tls::NoIdentity(self.no_tls),
        };
        TcpEndpoint {
            addr: ep.balance.addr,
            server_id,
            labels: labels(ep.balance.addr, tls),
            in_flight: Some((ep.balance.start(now), self.balance.clone())),
            unavailable: None,
        }
    }
}
