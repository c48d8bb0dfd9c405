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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::NO_TLS_DISABLED, svc::NewFn};
    use std::{
        convert::Infallible,
        future::{ready, Ready},
        sync::atomic::{AtomicUsize, Ordering},
        time::{Duration, Instant},
    };
    use tower::Service;

    /// A logical stack that answers with its destination.
    #[derive(Clone)]
    struct Answer(LogicalAddr);

    impl Service<Request<BoxBody>> for Answer {
        type Response = LogicalAddr;
        type Error = Infallible;
        type Future = Ready<Result<LogicalAddr, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<BoxBody>) -> Self::Future {
            ready(Ok(self.0.clone()))
        }
    }

    const IDLE: Duration = Duration::from_secs(60);

    fn names() -> Option<Names> {
        Some(Names {
            namespace: "demo".into(),
            cluster_domain: "cluster.local".into(),
        })
    }

    type Router<N> = NewLogicalRouter<N, Answer>;
    type Logicals = Arc<Cache<LogicalAddr, Answer>>;

    /// A router, its cache, and how many logical stacks it made.
    fn router(
        names: Option<Names>,
    ) -> (
        Router<impl NewService<Logical, Service = Answer>>,
        Logicals,
        Arc<AtomicUsize>,
    ) {
        let made = Arc::new(AtomicUsize::new(0));
        let counted = made.clone();
        let new_logical = NewFn(move |logical: Logical| {
            counted.fetch_add(1, Ordering::Relaxed);
            Answer(logical.addr)
        });
        let cache = Cache::new(IDLE);
        let router = NewLogicalRouter::new(new_logical, cache.clone(), names, NO_TLS_DISABLED);
        (router, cache, made)
    }

    fn orig_dst() -> SocketAddr {
        "10.96.0.10:80".parse().unwrap()
    }

    fn web() -> LogicalAddr {
        LogicalAddr::Name("web.demo.svc.cluster.local:80".into())
    }

    /// Where a request to `authority` (a `Host`, or an absolute URI) goes on `conn`.
    async fn send<S>(conn: &mut S, authority: &str) -> LogicalAddr
    where
        S: Service<Request<BoxBody>, Response = LogicalAddr, Error = Infallible>,
    {
        let req = if authority.starts_with("http://") {
            Request::builder().uri(authority)
        } else if authority.is_empty() {
            Request::builder().uri("/")
        } else {
            Request::builder().uri("/").header("host", authority)
        };
        let req = req.body(BoxBody::empty()).unwrap();
        conn.ready().await.unwrap().call(req).await.unwrap()
    }

    #[tokio::test]
    async fn one_authority_makes_one_logical_stack_for_every_connection() {
        let (router, _, made) = router(names());
        let mut conn = router.new_service(OrigDst(orig_dst()));
        for _ in 0..3 {
            assert_eq!(send(&mut conn, "web").await, web());
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);
        let emoji = LogicalAddr::Name("emoji.demo.svc.cluster.local:80".into());
        assert_eq!(send(&mut conn, "emoji").await, emoji);
        assert_eq!(
            made.load(Ordering::Relaxed),
            2,
            "another authority, another"
        );
        assert_eq!(send(&mut conn, "web").await, web());
        let mut other = router.new_service(OrigDst(orig_dst()));
        assert_eq!(send(&mut other, "web").await, web());
        assert_eq!(
            made.load(Ordering::Relaxed),
            2,
            "back to the first, and on another connection: the cached one"
        );
    }

    #[tokio::test]
    async fn short_and_qualified_names_share_one_logical_stack() {
        let (router, _, made) = router(names());
        let mut conn = router.new_service(OrigDst(orig_dst()));
        for authority in [
            "web",
            "web:80",
            "web.demo",
            "WEB.demo.svc",
            "web.demo.svc.cluster.local",
            "web.demo.svc.cluster.local:80",
            "http://web/x",
        ] {
            assert_eq!(send(&mut conn, authority).await, web(), "{authority}");
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);
        let other_port = LogicalAddr::Name("web.demo.svc.cluster.local:8080".into());
        assert_eq!(send(&mut conn, "web:8080").await, other_port);
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn ip_authorities_and_no_discovery_go_to_the_original_destination() {
        let check = |names: Option<Names>, authority: &'static str| async move {
            let (router, _, _) = router(names);
            let mut conn = router.new_service(OrigDst(orig_dst()));
            assert_eq!(
                send(&mut conn, authority).await,
                LogicalAddr::Addr(orig_dst()),
                "{authority:?}"
            );
        };
        check(names(), "10.96.0.10:80").await;
        check(names(), "10.96.0.99:8080").await;
        check(names(), "[fd00::1]:80").await;
        check(names(), "http://10.96.0.10/x").await;
        check(names(), "").await;
        check(None, "web").await;
        check(None, "web.demo.svc.cluster.local:80").await;
    }

    /// Outside a runtime, so that the cache's own sweeper does not run: only these sweeps do.
    #[test]
    fn a_logical_stack_stays_cached_while_a_connection_remembers_it() {
        let (router, cache, _) = router(names());
        let mut conn = router.new_service(OrigDst(orig_dst()));
        let req = Request::builder().uri("http://web/").body(BoxBody::empty());
        // The router finds the logical stack when called (it is always ready).
        drop(conn.call(req.unwrap()));
        assert_eq!(cache.len(), 1);
        let t0 = Instant::now();
        assert_eq!(cache.sweep(t0), 0);
        assert_eq!(cache.sweep(t0 + IDLE * 2), 0, "held by the connection");
        drop(conn);
        assert_eq!(cache.sweep(t0 + IDLE * 2), 0, "unheld from now");
        assert_eq!(cache.sweep(t0 + IDLE * 4), 1, "forgotten when idle");
        assert!(cache.is_empty());
    }
}
