//! A backend's requests, balanced over its endpoints: the destination controller's live
//! endpoint set for the backend's name (discovery), each endpoint with its own stack (made once,
//! kept while the endpoint stays), and P2C over peak-EWMA load to pick one per request
//! (`balance::Balance`).
//!
//! A name the controller does not know, or no answer from it yet, sends the request where its
//! connection was going; a known service with no endpoints fails it (503) after waiting the
//! failfast timeout for some to appear.

use super::{Endpoint, Route};
use crate::{
    balance::{Balance, BalanceConfig},
    discover::{self, Destination, Resolution, Resolver},
    http::{errors::NoEndpoints, server::Received},
    svc::{lock, BoxBody, BoxError, NewService},
};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tower::ServiceExt;

/// Makes each backend's balancer, over endpoint stacks made by `N`.
#[derive(Clone)]
pub struct NewBackend<N> {
    resolver: Option<Arc<Resolver>>,
    new_endpoint: N,
    balance: Arc<BalanceConfig>,
    failfast: Duration,
    /// Whether identity is on: endpoints with an identity are then reached over mutual TLS.
    identity: bool,
}

impl<N> NewBackend<N> {
    pub fn new(
        resolver: Option<Arc<Resolver>>,
        new_endpoint: N,
        balance: BalanceConfig,
        failfast: Duration,
        identity: bool,
    ) -> Self {
        Self {
            resolver,
            new_endpoint,
            balance: Arc::new(balance),
            failfast,
            identity,
        }
    }
}

/// One backend: its endpoints and their stacks.
pub struct Backend<N, S> {
    shared: Arc<Shared<N, S>>,
}

impl<N, S> Clone for Backend<N, S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// A balancer and the endpoint set it was made from.
type Current<S> = (Arc<Vec<discover::Endpoint>>, Balance<S>);

struct Shared<N, S> {
    route: Route,
    destination: Option<Arc<Destination>>,
    new_endpoint: N,
    config: Arc<BalanceConfig>,
    failfast: Duration,
    identity: bool,
    /// The balancer over the latest endpoint set, and the set it was made from.
    current: Mutex<Option<Current<S>>>,
    /// Stacks of the original destinations, while the name is not (yet) known.
    originals: Mutex<HashMap<SocketAddr, S>>,
}

impl<N: NewService<Endpoint, Service = S> + Clone, S> NewService<Route> for NewBackend<N> {
    type Service = Backend<N, S>;
    fn new_service(&self, route: Route) -> Self::Service {
        let destination = self
            .resolver
            .as_ref()
            .map(|r| r.resolve(&route.logical.addr.to_string()));
        Backend {
            shared: Arc::new(Shared {
                route,
                destination,
                new_endpoint: self.new_endpoint.clone(),
                config: self.balance.clone(),
                failfast: self.failfast,
                identity: self.identity,
                current: Mutex::default(),
                originals: Mutex::default(),
            }),
        }
    }
}

impl<N, S> tower::Service<Request<BoxBody>> for Backend<N, S>
where
    N: NewService<Endpoint, Service = S> + Send + Sync + 'static,
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
        let shared = self.shared.clone();
        Box::pin(async move {
            let resolution = match &shared.destination {
                Some(destination) => destination.ready(shared.failfast).await,
                None => Resolution::Unknown,
            };
            match resolution {
                Resolution::Pending | Resolution::Unknown => {
                    let Some(orig_dst) =
                        req.extensions().get::<Received>().map(|r| r.conn.orig_dst)
                    else {
                        return Err(NoEndpoints(shared.route.logical.addr.to_string()).into());
                    };
                    shared.original(orig_dst).oneshot(req).await
                }
                Resolution::Endpoints(endpoints) if endpoints.is_empty() => {
                    Err(NoEndpoints(shared.route.logical.addr.to_string()).into())
                }
                Resolution::Endpoints(endpoints) => shared.balance(&endpoints).oneshot(req).await,
            }
        })
    }
}

impl<N: NewService<Endpoint, Service = S>, S: Clone> Shared<N, S> {
    /// The balancer over `endpoints`: the current one, or a new one that keeps the stacks of
    /// the endpoints that stayed.
    fn balance(&self, endpoints: &Arc<Vec<discover::Endpoint>>) -> Balance<S> {
        let mut current = lock(&self.current);
        if let Some((from, balance)) = current.as_ref() {
            if Arc::ptr_eq(from, endpoints) {
                return balance.clone();
            }
        }
        let old: HashMap<Endpoint, S> = current
            .take()
            .map(|(from, balance)| {
                from.iter()
                    .zip(balance.endpoints())
                    .map(|(ep, (_, svc))| (self.endpoint(ep), svc.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let set: Arc<[_]> = endpoints
            .iter()
            .map(|ep| {
                let target = self.endpoint(ep);
                let svc = match old.get(&target) {
                    Some(svc) => svc.clone(),
                    None => self.new_endpoint.new_service(target),
                };
                (ep.balance.clone(), svc)
            })
            .collect();
        let balance = Balance::new(set, self.config.clone());
        *current = Some((endpoints.clone(), balance.clone()));
        balance
    }

    fn endpoint(&self, ep: &discover::Endpoint) -> Endpoint {
        Endpoint {
            addr: ep.balance.addr,
            server_id: ep.identity.clone().filter(|_| self.identity),
            dst: Some(ep.labels.clone()),
            no_tls: self.route.logical.no_tls,
        }
    }

    /// The stack for an original destination.
    fn original(&self, addr: SocketAddr) -> S {
        lock(&self.originals)
            .entry(addr)
            .or_insert_with(|| {
                self.new_endpoint.new_service(Endpoint {
                    addr,
                    server_id: None,
                    dst: None,
                    no_tls: self.route.logical.no_tls,
                })
            })
            .clone()
    }
}
