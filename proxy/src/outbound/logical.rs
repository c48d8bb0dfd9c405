//! The logical destination of each request: its authority, normalised to the service name a
//! pod's DNS would find (or the address the client dialed, for IP authorities and names the
//! mesh cannot know), and the stack of that destination, shared by every connection that calls
//! it and forgotten when no connection has for the idle timeout.
//!
//! A connection usually sends every request to one authority: it remembers the last one, so
//! that a request to the same authority finds its stack without normalising the name again or
//! taking the shared cache's lock.

use super::{Logical, LogicalAddr};
use crate::{
    discover,
    svc::{lock, BoxBody, Cache, NewService, Param},
    transport::OrigDst,
};
use http::Request;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};
use tower::util::Oneshot;
use tower::ServiceExt;

/// How authorities become service names (`MESH_PROXY_DESTINATION_NAMESPACE`,
/// `MESH_PROXY_CLUSTER_DOMAIN`); `None` when discovery is off and every request goes where its
/// connection was going.
#[derive(Clone, Debug)]
pub struct Names {
    pub namespace: String,
    pub cluster_domain: String,
}

/// Routes each request of a connection to its logical destination's stack `N`.
pub struct NewLogicalRouter<N, S> {
    shared: Arc<Shared<N, S>>,
}

impl<N, S> Clone for NewLogicalRouter<N, S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<N, S> {
    new_logical: N,
    cache: Arc<Cache<LogicalAddr, S>>,
    names: Option<Names>,
    no_tls: &'static str,
}

impl<N, S> NewLogicalRouter<N, S>
where
    N: NewService<Logical, Service = S>,
    S: Send + Sync + 'static,
{
    /// `no_tls` is the `no_tls_reason` of a hop that is not mutual TLS.
    pub fn new(
        new_logical: N,
        cache: Arc<Cache<LogicalAddr, S>>,
        names: Option<Names>,
        no_tls: &'static str,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                new_logical,
                cache,
                names,
                no_tls,
            }),
        }
    }
}

/// One connection's router.
pub struct LogicalRouter<N, S> {
    shared: Arc<Shared<N, S>>,
    orig_dst: SocketAddr,
    last: Arc<Mutex<Option<Last<S>>>>,
}

impl<N, S> Clone for LogicalRouter<N, S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            orig_dst: self.orig_dst,
            last: self.last.clone(),
        }
    }
}

/// The connection's last authority and where it went.
struct Last<S> {
    authority: Box<str>,
    service: S,
    _held: Arc<S>,
}

impl<T: Param<OrigDst>, N, S> NewService<T> for NewLogicalRouter<N, S> {
    type Service = LogicalRouter<N, S>;
    fn new_service(&self, target: T) -> Self::Service {
        let OrigDst(orig_dst) = target.param();
        LogicalRouter {
            shared: self.shared.clone(),
            orig_dst,
            last: Arc::default(),
        }
    }
}

impl<N, S> tower::Service<Request<BoxBody>> for LogicalRouter<N, S>
where
    N: NewService<Logical, Service = S>,
    S: tower::Service<Request<BoxBody>> + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Oneshot<S, Request<BoxBody>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let service = {
            let authority = crate::http::authority(&req, None);
            let mut last = lock(&self.last);
            match last.as_ref() {
                Some(last) if *last.authority == *authority => last.service.clone(),
                _ => {
                    let addr = self.logical_addr(&authority);
                    let held = self.shared.cache.get_or_insert_with(&addr, || {
                        self.shared.new_logical.new_service(Logical {
                            addr: addr.clone(),
                            no_tls: self.shared.no_tls,
                        })
                    });
                    let service = (*held).clone();
                    *last = Some(Last {
                        authority: authority.into(),
                        service: service.clone(),
                        _held: held,
                    });
                    service
                }
            }
        };
        service.oneshot(req)
    }
}

impl<N, S> LogicalRouter<N, S> {
    /// The service name for `authority`, or the connection's original destination.
    fn logical_addr(&self, authority: &str) -> LogicalAddr {
        let name = self.shared.names.as_ref().and_then(|names| {
            discover::logical_name(
                authority,
                self.orig_dst.port(),
                &names.namespace,
                &names.cluster_domain,
            )
        });
        match name {
            Some(name) => LogicalAddr::Name(name.into()),
            None => LogicalAddr::Addr(self.orig_dst),
        }
    }
}
