//! A backend's requests, balanced over its endpoints: the destination controller's live
//! endpoint set for the backend's name (discovery), each endpoint with its own stack (made once,
//! kept while the endpoint stays), and P2C over peak-EWMA load to pick one per request
//! (`balance::Balance`).
//!
//! A name the controller does not know, or no answer from it yet, sends the request where its
//! connection was going; a known service with no endpoints fails it (503) after waiting the
//! failfast timeout for some to appear.

use super::{Endpoint, Logical};
use crate::{
    balance::{Balance, BalanceConfig},
    discover::{self, Destination, Resolution, Resolver},
    http::{errors::NoEndpoints, server::Received},
    svc::{lock, BoxBody, Cache, NewService},
};
use futures_util::future::{BoxFuture, Either};
use http::Request;
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
    /// How long an original destination's stack is kept unused.
    idle: Duration,
}

impl<N> NewBackend<N> {
    pub fn new(
        resolver: Option<Arc<Resolver>>,
        new_endpoint: N,
        balance: BalanceConfig,
        failfast: Duration,
        identity: bool,
        idle: Duration,
    ) -> Self {
        Self {
            resolver,
            new_endpoint,
            balance: Arc::new(balance),
            failfast,
            identity,
            idle,
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
    logical: Logical,
    destination: Option<Arc<Destination>>,
    new_endpoint: N,
    config: Arc<BalanceConfig>,
    failfast: Duration,
    identity: bool,
    /// The balancer over the latest endpoint set, and the set it was made from.
    current: Mutex<Option<Current<S>>>,
    /// Stacks of the original destinations, while the name is not (yet) known; each is
    /// forgotten when not used for the idle timeout.
    originals: Arc<Cache<SocketAddr, S>>,
}

impl<N, S> NewService<Logical> for NewBackend<N>
where
    N: NewService<Endpoint, Service = S> + Clone,
    S: Send + Sync + 'static,
{
    type Service = Backend<N, S>;
    fn new_service(&self, logical: Logical) -> Self::Service {
        let destination = self
            .resolver
            .as_ref()
            .map(|r| r.resolve(&logical.addr.to_string()));
        Backend {
            shared: Arc::new(Shared {
                logical,
                destination,
                new_endpoint: self.new_endpoint.clone(),
                config: self.balance.clone(),
                failfast: self.failfast,
                identity: self.identity,
                current: Mutex::default(),
                originals: Cache::new(self.idle),
            }),
        }
    }
}

/// What a backend reads of a request: where its connection was going, for a name the
/// controller does not know (yet).
pub trait Routed {
    fn orig_dst(&self) -> Option<SocketAddr>;
}

impl Routed for Request<BoxBody> {
    fn orig_dst(&self) -> Option<SocketAddr> {
        self.extensions().get::<Received>().map(|r| r.conn.orig_dst)
    }
}

impl Routed for crate::codec::Req {
    fn orig_dst(&self) -> Option<SocketAddr> {
        Some(self.conn.orig_dst)
    }
}

impl<N, S, R, Rsp, E> tower::Service<R> for Backend<N, S>
where
    N: NewService<Endpoint, Service = S> + Send + Sync + 'static,
    S: tower::Service<R, Response = Rsp, Error = E> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    R: Routed + crate::balance::Resend<E> + Send + 'static,
    Rsp: crate::balance::Outcome + Send + 'static,
    E: From<NoEndpoints> + Send + 'static,
{
    type Response = Rsp;
    type Error = E;
    /// The balancer's own future in the usual case (endpoints known); boxed while they are
    /// awaited.
    type Future =
        Either<<Balance<S> as tower::Service<R>>::Future, BoxFuture<'static, Result<Rsp, E>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        // The usual case: endpoints are known; the balancer is always ready.
        if let Some(destination) = &self.shared.destination {
            // Read in place, under the resolution's read lock: no copy of the set's handle.
            if let Resolution::Endpoints(endpoints) = &*destination.now() {
                if !endpoints.is_empty() {
                    let call = self
                        .shared
                        .with_balance(endpoints, |balance| balance.call(req));
                    return Either::Left(call);
                }
            }
        }
        let shared = self.shared.clone();
        Either::Right(Box::pin(async move {
            let resolution = match &shared.destination {
                Some(destination) => destination.ready(shared.failfast).await,
                None => Resolution::Unknown,
            };
            match resolution {
                Resolution::Pending | Resolution::Unknown => {
                    let Some(orig_dst) = req.orig_dst() else {
                        return Err(NoEndpoints(shared.logical.addr.to_string()).into());
                    };
                    shared.original(orig_dst).oneshot(req).await
                }
                Resolution::Endpoints(endpoints) if endpoints.is_empty() => {
                    Err(NoEndpoints(shared.logical.addr.to_string()).into())
                }
                Resolution::Endpoints(endpoints) => shared.balance(&endpoints).oneshot(req).await,
            }
        }))
    }
}

impl<N, S> Shared<N, S>
where
    N: NewService<Endpoint, Service = S>,
    S: Clone + Send + Sync + 'static,
{
    /// The balancer over `endpoints`: the current one, or a new one that keeps the stacks of
    /// the endpoints that stayed.
    fn balance(&self, endpoints: &Arc<Vec<discover::Endpoint>>) -> Balance<S> {
        self.with_balance(endpoints, |balance| balance.clone())
    }

    /// `f` of the balancer over `endpoints`, in place (as [`Self::balance`]).
    fn with_balance<R>(
        &self,
        endpoints: &Arc<Vec<discover::Endpoint>>,
        f: impl FnOnce(&mut Balance<S>) -> R,
    ) -> R {
        let mut current = lock(&self.current);
        if let Some((from, balance)) = current.as_mut() {
            if Arc::ptr_eq(from, endpoints) {
                return f(balance);
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
        let (_, balance) = current.insert((endpoints.clone(), balance));
        f(balance)
    }

    fn endpoint(&self, ep: &discover::Endpoint) -> Endpoint {
        Endpoint {
            addr: ep.balance.addr,
            server_id: ep.identity.clone().filter(|_| self.identity),
            dst: Some(ep.labels.clone()),
            no_tls: self.logical.no_tls,
        }
    }

    /// The stack for an original destination.
    fn original(&self, addr: SocketAddr) -> S {
        let stack = self.originals.get_or_insert_with(&addr, || {
            self.new_endpoint.new_service(Endpoint {
                addr,
                server_id: None,
                dst: None,
                no_tls: self.logical.no_tls,
            })
        });
        (*stack).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svc::BoxError;
    use http::Response;

    const IDLE: Duration = Duration::from_secs(60);
    use crate::{
        discover::DiscoveryConfig,
        http::server::ConnInfo,
        metrics::{Metrics, NO_TLS_DISABLED},
        outbound::{Logical, LogicalAddr},
        svc::NewFn,
        tap::{TapConfig, Taps},
    };
    use http_body_util::StreamBody;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use mesh_api::destination::{self as api, Add, Remove, Update};
    use std::{
        collections::HashSet,
        convert::Infallible,
        future::{ready, Ready},
    };
    use tokio::{net::TcpListener, sync::mpsc};

    const WEB: &str = "web.demo.svc.cluster.local:80";

    /// An endpoint stack that answers with its address in the `endpoint` header.
    #[derive(Clone)]
    struct Answer(SocketAddr);

    impl tower::Service<Request<BoxBody>> for Answer {
        type Response = Response<BoxBody>;
        type Error = BoxError;
        type Future = Ready<Result<Response<BoxBody>, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<BoxBody>) -> Self::Future {
            let mut rsp = Response::new(BoxBody::empty());
            let addr = self
                .0
                .to_string()
                .parse()
                .expect("an address is a header value");
            rsp.headers_mut().insert("endpoint", addr);
            ready(Ok(rsp))
        }
    }

    /// Endpoint stacks, and the targets they were made for, in order.
    fn new_endpoint() -> (
        impl NewService<Endpoint, Service = Answer> + Clone + Send + Sync + 'static,
        Arc<Mutex<Vec<Endpoint>>>,
    ) {
        let made = Arc::new(Mutex::new(Vec::new()));
        let noted = made.clone();
        let new_endpoint = NewFn(move |ep: Endpoint| {
            let addr = ep.addr;
            lock(&noted).push(ep);
            Answer(addr)
        });
        (new_endpoint, made)
    }

    fn made_for(made: &Mutex<Vec<Endpoint>>) -> Vec<u16> {
        lock(made).iter().map(|ep| ep.addr.port()).collect()
    }

    fn route() -> Logical {
        Logical {
            addr: LogicalAddr::Name(WEB.into()),
            no_tls: NO_TLS_DISABLED,
        }
    }

    fn orig_dst() -> SocketAddr {
        "10.96.0.10:80".parse().unwrap()
    }

    /// A request as the HTTP server hands it on, from a connection to [`orig_dst`].
    fn request() -> Request<BoxBody> {
        let taps = Taps::new(&TapConfig::default(), None, Metrics::new(10, false));
        let mut req = Request::builder()
            .uri("/")
            .header("host", "web")
            .body(BoxBody::empty())
            .unwrap();
        req.extensions_mut().insert(Received {
            at: std::time::Instant::now(),
            conn: Arc::new(ConnInfo {
                client: "10.0.0.1:40000".parse().unwrap(),
                orig_dst: orig_dst(),
                client_id: None,
                tap: taps.connection(),
            }),
        });
        req
    }

    /// Sends a request; the address of the endpoint that answered.
    async fn send<S>(backend: &mut S) -> Result<SocketAddr, BoxError>
    where
        S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    {
        let rsp = backend.ready().await?.call(request()).await?;
        let endpoint = rsp.headers()["endpoint"].to_str().unwrap();
        Ok(endpoint.parse().unwrap())
    }

    fn endpoint(port: u16, identity: Option<&str>) -> api::Endpoint {
        api::Endpoint {
            addr: SocketAddr::from(([10, 244, 0, 9], port)),
            weight: api::DEFAULT_WEIGHT,
            labels: Default::default(),
            identity: identity.map(String::from),
            protocol_hint: None,
        }
    }

    /// A destination controller on 127.0.0.1 that answers one watch with the updates sent to
    /// the returned sender, and a resolver that watches it.
    async fn discovery() -> (Arc<Resolver>, mpsc::UnboundedSender<Update>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel::<Update>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let rx = rx.clone();
                let watch = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                    let updates = lock(&rx).take().expect("one watch");
                    let lines = futures_util::stream::unfold(updates, |mut updates| async move {
                        let line = http_body::Frame::data(updates.recv().await?.to_line());
                        Some((Ok::<_, Infallible>(line), updates))
                    });
                    ready(Ok::<_, Infallible>(Response::new(StreamBody::new(lines))))
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), watch);
                tokio::spawn(conn);
            }
        });
        let resolver = Resolver::new(DiscoveryConfig {
            controller: addr.to_string(),
            namespace: "demo".into(),
            cluster_domain: "cluster.local".into(),
            failfast_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(60),
            balance: BalanceConfig::default(),
            connector: Default::default(),
        });
        (resolver, tx)
    }

    /// Waits, within a deadline, for the resolution of [`WEB`] to satisfy `f`.
    async fn resolved(resolver: &Resolver, f: impl FnMut(&Resolution) -> bool) {
        let mut state = resolver.resolve(WEB).subscribe();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(f))
            .await
            .expect("resolved within the deadline")
            .expect("still watching");
    }

    /// The backend of [`route`], over endpoint stacks made by `new_endpoint`.
    fn backend<N: NewService<Endpoint, Service = S> + Clone, S: Send + Sync + 'static>(
        resolver: Option<Arc<Resolver>>,
        new_endpoint: N,
        failfast: Duration,
        identity: bool,
    ) -> Backend<N, S> {
        NewBackend::new(
            resolver,
            new_endpoint,
            Default::default(),
            failfast,
            identity,
            IDLE,
        )
        .new_service(route())
    }

    fn endpoints(n: usize) -> impl FnMut(&Resolution) -> bool {
        move |r| matches!(r, Resolution::Endpoints(eps) if eps.len() == n)
    }

    #[tokio::test]
    async fn without_discovery_requests_go_to_the_original_destination() {
        let (new_endpoint, made) = new_endpoint();
        let mut backend = backend(None, new_endpoint, Duration::from_secs(30), false);
        for _ in 0..3 {
            assert_eq!(send(&mut backend).await.unwrap(), orig_dst());
        }
        let made = lock(&made).clone();
        let expected = Endpoint {
            addr: orig_dst(),
            server_id: None,
            dst: None,
            no_tls: NO_TLS_DISABLED,
        };
        assert_eq!(made, [expected], "one stack, made once");
    }

    #[tokio::test]
    async fn endpoint_stacks_are_made_once_and_kept_while_their_endpoint_stays() {
        let (resolver, updates) = discovery().await;
        let (new_endpoint, made) = new_endpoint();
        let mut backend = backend(
            Some(resolver.clone()),
            new_endpoint,
            Duration::from_secs(30),
            false,
        );
        let add = |ports: &[u16]| {
            let endpoints = ports.iter().map(|&p| endpoint(p, None)).collect();
            Update::Add(Add { endpoints })
        };
        // The first request waits (within the failfast timeout) for the first endpoints.
        updates.send(add(&[1, 2])).unwrap();
        let mut answered = HashSet::new();
        for _ in 0..4 {
            answered.insert(send(&mut backend).await.unwrap().port());
        }
        assert_eq!(
            answered,
            HashSet::from([1, 2]),
            "both endpoints take requests"
        );
        assert_eq!(made_for(&made), [1, 2], "one stack per endpoint, made once");

        updates.send(add(&[3])).unwrap();
        resolved(&resolver, endpoints(3)).await;
        send(&mut backend).await.unwrap();
        assert_eq!(
            made_for(&made),
            [1, 2, 3],
            "a new set: only the new endpoint's"
        );

        let gone = Remove {
            addrs: vec![SocketAddr::from(([10, 244, 0, 9], 1))],
        };
        updates.send(Update::Remove(gone)).unwrap();
        resolved(&resolver, endpoints(2)).await;
        for _ in 0..4 {
            assert_ne!(send(&mut backend).await.unwrap().port(), 1);
        }
        assert_eq!(made_for(&made), [1, 2, 3], "those that stay are kept");
    }

    #[tokio::test]
    async fn an_endpoints_identity_is_used_only_with_identity_on() {
        for identity in [false, true] {
            let (resolver, updates) = discovery().await;
            let (new_endpoint, made) = new_endpoint();
            let mut backend = backend(
                Some(resolver),
                new_endpoint,
                Duration::from_secs(30),
                identity,
            );
            let meshed = endpoint(
                1,
                Some("web.demo.serviceaccount.identity.mesh.cluster.local"),
            );
            let endpoints = vec![meshed];
            updates.send(Update::Add(Add { endpoints })).unwrap();
            send(&mut backend).await.unwrap();
            let server_id = lock(&made)[0].server_id.clone();
            assert_eq!(server_id.is_some(), identity, "identity on: {identity}");
        }
    }

    #[tokio::test]
    async fn a_known_service_with_no_endpoints_fails() {
        let (resolver, updates) = discovery().await;
        let (new_endpoint, made) = new_endpoint();
        let mut backend = backend(
            Some(resolver.clone()),
            new_endpoint,
            Duration::from_millis(50),
            false,
        );
        let none = api::NoEndpoints { exists: true };
        updates.send(Update::NoEndpoints(none)).unwrap();
        resolved(&resolver, endpoints(0)).await;
        let err = send(&mut backend).await.unwrap_err();
        assert!(err.is::<NoEndpoints>(), "{err}");
        assert_eq!(err.to_string(), format!("no endpoints for {WEB}"));
        assert!(lock(&made).is_empty());
    }

    #[tokio::test]
    async fn a_name_the_controller_does_not_know_goes_to_the_original_destination() {
        let (resolver, updates) = discovery().await;
        let (new_endpoint, _) = new_endpoint();
        let mut backend = backend(
            Some(resolver.clone()),
            new_endpoint,
            Duration::from_secs(30),
            false,
        );
        let unknown = api::NoEndpoints { exists: false };
        updates.send(Update::NoEndpoints(unknown)).unwrap();
        resolved(&resolver, |r| matches!(r, Resolution::Unknown)).await;
        assert_eq!(send(&mut backend).await.unwrap(), orig_dst());
    }
}
