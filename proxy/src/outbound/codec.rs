//! The codec stage of the outbound stack: a connection no built-in protocol claimed goes here
//! first; when its original destination's outbound policy names a codec (the Service port's
//! `appProtocol: mesh.io/redis`), its requests are decoded and each is metered, routed by the
//! Service's MetaRoutes, balanced over the backend's endpoints and sent on the endpoint's
//! shared connection (mutual TLS to a meshed endpoint), or on the client's own once it pinned
//! one. Otherwise (no codec, no controller, or no answer within the failfast timeout) the
//! connection is forwarded as opaque TCP.
//!
//! | stage | target | layers, outer to inner |
//! |---|---|---|
//! | connection | [`OutboundConn`] | the destination's codec, from its policy → serve: decode, answer in order (`codec::serve`) |
//! | request | the connection | metrics and tap (`codec::meter`) → the pinned connection, if any (`codec::upstream::Pinned`) → MetaRoute (matched by `codec::route`): mutations, timeout, weighted backend ([`Router`]) |
//! | backend | [`Logical`] (shared, idle-evicted) | discovery → P2C peak-EWMA (`outbound::backend`) |
//! | endpoint | [`Endpoint`] | the endpoint's shared connection, or a new one the request pins (`codec::upstream::Endpoint`) |

use super::{
    backend::NewBackend,
    policy::{Compiled, PolicyWatch},
    Endpoint, Logical, LogicalAddr, Names, OutboundConn, Policies,
};
use crate::{
    balance::BalanceConfig,
    codec::{
        self,
        meter::Meter,
        serve::{ConnParams, NewServe},
        upstream::{EndpointTarget, NewEndpoint, Pinned},
        Answer, LocalError, Protocol, Req, Served,
    },
    discover::Resolver,
    http::client::NewClient,
    metrics::{Direction, Metrics, Tls},
    svc::{BoxError, BoxIo, Cache, ConnFuture, NewFn, NewService, Param},
    tap::Taps,
};
use futures_util::{
    future::{BoxFuture, Either},
    FutureExt,
};
use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::watch;
use tower::{Layer, ServiceExt};

/// Makes a codec's endpoint stacks from the balancer's endpoints.
#[derive(Clone)]
struct NewCodecEndpoint {
    new: NewEndpoint,
    protocol: Arc<dyn Protocol>,
}

impl NewService<Endpoint> for NewCodecEndpoint {
    type Service = codec::upstream::Endpoint;
    fn new_service(&self, ep: Endpoint) -> Self::Service {
        self.new.new_service(endpoint(ep, &self.protocol))
    }
}
type CodecBackend = super::backend::Backend<NewCodecEndpoint, codec::upstream::Endpoint>;

/// One codec's backends, shared by every connection.
struct PerCodec {
    protocol: Arc<dyn Protocol>,
    new_backend: NewBackend<NewCodecEndpoint>,
    backends: Arc<Cache<LogicalAddr, CodecBackend>>,
}

/// Sends each connection to its destination's codec, or to `O` (opaque forwarding).
#[derive(Clone)]
pub struct NewCodecSwitch<O> {
    shared: Arc<Shared>,
    opaque: O,
}

struct Shared {
    policies: Option<Arc<Policies>>,
    names: Option<Names>,
    failfast: Duration,
    no_tls: &'static str,
    codecs: HashMap<&'static str, PerCodec>,
    metrics: Metrics,
    taps: Taps,
}

/// What the codec stage is built from.
pub struct CodecConfig {
    pub policies: Option<Arc<Policies>>,
    pub names: Option<Names>,
    pub resolver: Option<Arc<Resolver>>,
    pub client: NewClient,
    pub balance: BalanceConfig,
    pub failfast: Duration,
    pub identity: bool,
    pub no_tls: &'static str,
    pub idle: Duration,
    pub metrics: Metrics,
    pub taps: Taps,
}

impl<O> NewCodecSwitch<O> {
    pub fn layer(config: CodecConfig) -> impl tower::Layer<O, Service = Self> + Clone {
        let new_endpoint = NewEndpoint::new(config.client.clone());
        let codecs = codec::NAMES
            .iter()
            .filter_map(|name| codec::by_name(name))
            .map(|protocol| {
                let make = NewCodecEndpoint {
                    new: new_endpoint.clone(),
                    protocol: protocol.clone(),
                };
                let new_backend = NewBackend::new(
                    config.resolver.clone(),
                    make,
                    config.balance.clone(),
                    config.failfast,
                    config.identity,
                    config.idle,
                );
                let per = PerCodec {
                    protocol: protocol.clone(),
                    new_backend,
                    backends: Cache::new(config.idle),
                };
                (protocol.name(), per)
            })
            .collect();
        let shared = Arc::new(Shared {
            policies: config.policies,
            names: config.names,
            failfast: config.failfast,
            no_tls: config.no_tls,
            codecs,
            metrics: config.metrics,
            taps: config.taps,
        });
        tower::layer::layer_fn(move |opaque| Self {
            shared: shared.clone(),
            opaque,
        })
    }
}

/// The target of a codec's endpoint.
fn endpoint(ep: Endpoint, protocol: &Arc<dyn Protocol>) -> EndpointTarget {
    let tls = match &ep.server_id {
        Some(id) => Tls::Established(id.clone()),
        None => Tls::NoIdentity(ep.no_tls),
    };
    EndpointTarget {
        addr: ep.addr,
        server_id: ep.server_id.clone(),
        info: Arc::new(Served {
            direction: Direction::Outbound,
            target_addr: ep.addr,
            dst: ep.dst.clone(),
            tls,
            server_id: ep.server_id.clone(),
        }),
        protocol: protocol.clone(),
    }
}

pub struct CodecSwitch<O> {
    conn: Option<OutboundConn>,
    shared: Arc<Shared>,
    opaque: O,
}

impl<O: Clone> NewService<OutboundConn> for NewCodecSwitch<O> {
    type Service = CodecSwitch<O>;
    fn new_service(&self, conn: OutboundConn) -> Self::Service {
        CodecSwitch {
            conn: Some(conn),
            shared: self.shared.clone(),
            opaque: self.opaque.clone(),
        }
    }
}

impl<O, S> tower::Service<BoxIo> for CodecSwitch<O>
where
    O: NewService<OutboundConn, Service = S> + Send + 'static,
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let conn = self
            .conn
            .take()
            .expect("a connection's service serves it once");
        let shared = self.shared.clone();
        let opaque = self.opaque.new_service(conn.clone());
        Box::pin(async move {
            match shared.codec_of(&conn).await {
                Some(serve) => serve.oneshot(io).await,
                None => opaque.oneshot(io).await,
            }
        })
    }
}

/// A codec connection's request stack.
type Requests = Meter<Pinned<Router<NewBackend<NewCodecEndpoint>>>>;

/// A codec connection's target.
struct CodecConn {
    conn: OutboundConn,
    protocol: Arc<dyn Protocol>,
}

impl Param<ConnParams> for CodecConn {
    fn param(&self) -> ConnParams {
        ConnParams {
            client: self.conn.client,
            orig_dst: self.conn.orig_dst,
            client_id: None,
            protocol: self.protocol.clone(),
        }
    }
}

impl Shared {
    /// The codec stack for `conn`, when its destination has a codec.
    async fn codec_of(
        self: &Arc<Self>,
        conn: &OutboundConn,
    ) -> Option<codec::serve::Serve<Requests>> {
        let policies = self.policies.as_ref()?;
        let watch = policies.watch(&conn.orig_dst.to_string());
        let compiled = {
            let mut policy = watch.subscribe();
            let known = tokio::time::timeout(self.failfast, policy.wait_for(Option::is_some));
            let compiled = match known.await {
                Ok(Ok(compiled)) => compiled.clone(),
                _ => None,
            };
            compiled?
        };
        let name = compiled.policy.codec.as_deref()?;
        let Some(per) = self.codecs.get(name) else {
            tracing::info!(codec = name, dst = %conn.orig_dst, "unknown codec: forwarded as opaque TCP");
            return None;
        };
        let logical = match (&compiled.policy.parent, &self.names) {
            (Some(p), Some(names)) => LogicalAddr::Name(
                format!(
                    "{}.{}.svc.{}:{}",
                    p.name, p.namespace, names.cluster_domain, p.port
                )
                .into(),
            ),
            _ => LogicalAddr::Addr(conn.orig_dst),
        };
        let authority = self.metrics.authority_label(&logical.to_string());
        let fallback = Served {
            direction: Direction::Outbound,
            target_addr: conn.orig_dst,
            dst: None,
            tls: Tls::NoIdentity(self.no_tls),
            server_id: None,
        };
        let router = Router::new(
            watch,
            Logical {
                addr: logical,
                no_tls: self.no_tls,
            },
            per.new_backend.clone(),
            per.backends.clone(),
        );
        let requests = Meter::new(
            Pinned::layer().layer(router),
            self.metrics.clone(),
            self.taps.clone(),
            per.protocol.name(),
            authority,
            fallback,
        );
        let target = CodecConn {
            conn: conn.clone(),
            protocol: per.protocol.clone(),
        };
        let serve =
            NewServe::layer(self.taps.clone()).layer(NewFn(move |_: CodecConn| requests.clone()));
        Some(serve.new_service(target))
    }
}

// === routing ===

/// Routes one logical destination's requests: by its policy's MetaRoutes to backends made by
/// `N` (shared by every connection, forgotten when idle), else to the destination itself.
pub struct Router<N: NewService<Logical>> {
    /// Held, so that the policy is followed while connections use it.
    _watch: Arc<PolicyWatch>,
    policy: watch::Receiver<Option<Arc<Compiled>>>,
    /// The policy as last seen: read again only when it changed.
    current: Option<Arc<Compiled>>,
    logical: Logical,
    new_backend: N,
    backends: Arc<Cache<LogicalAddr, N::Service>>,
    /// The backend of requests no MetaRoute matches, once used: held (so that the cache
    /// keeps it), and a handle of this router's own that requests are sent on without a
    /// lookup or a copy.
    default: Option<(Arc<N::Service>, N::Service)>,
}

impl<N: NewService<Logical> + Clone> Clone for Router<N>
where
    N::Service: Clone,
{
    fn clone(&self) -> Self {
        Self {
            _watch: self._watch.clone(),
            policy: self.policy.clone(),
            current: self.current.clone(),
            logical: self.logical.clone(),
            new_backend: self.new_backend.clone(),
            backends: self.backends.clone(),
            default: self.default.clone(),
        }
    }
}

impl<N: NewService<Logical>> Router<N> {
    pub fn new(
        watch: Arc<PolicyWatch>,
        logical: Logical,
        new_backend: N,
        backends: Arc<Cache<LogicalAddr, N::Service>>,
    ) -> Self {
        let mut policy = watch.subscribe();
        let current = policy.borrow_and_update().clone();
        Self {
            current,
            policy,
            _watch: watch,
            logical,
            new_backend,
            backends,
            default: None,
        }
    }

    fn backend(&self, addr: LogicalAddr) -> Arc<N::Service>
    where
        N::Service: Send + Sync + 'static,
    {
        let logical = Logical {
            addr: addr.clone(),
            no_tls: self.logical.no_tls,
        };
        self.backends
            .get_or_insert_with(&addr, || self.new_backend.new_service(logical))
    }
}

impl<N, S> tower::Service<Req> for Router<N>
where
    N: NewService<Logical, Service = S>,
    S: tower::Service<Req, Response = Answer, Error = LocalError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = LocalError;
    /// The default backend's own future (the usual case), or a routed request's.
    type Future = Either<S::Future, BoxFuture<'static, Result<Answer, LocalError>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LocalError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        if self.policy.has_changed().unwrap_or(false) {
            self.current = self.policy.borrow_and_update().clone();
        }
        let rule = self
            .current
            .as_deref()
            .and_then(|p| p.meta.select(&req.frame));
        let Some(rule) = rule else {
            let (_, backend) = match &mut self.default {
                Some(default) => default,
                None => {
                    let held = self.backend(self.logical.addr.clone());
                    let own = (*held).clone();
                    self.default.insert((held, own))
                }
            };
            // A backend is ready at once but for backpressure, which it says here.
            return match backend.ready().now_or_never() {
                Some(Ok(backend)) => Either::Left(backend.call(req)),
                Some(Err(error)) => Either::Right(Box::pin(async { Err(error) })),
                None => Either::Right(Box::pin(backend.clone().oneshot(req))),
            };
        };
        let Some(backend) = rule.pick(|n| fastrand::u64(..n)) else {
            return Either::Right(Box::pin(async { Err(LocalError::NoRoute) }));
        };
        if backend.error.is_some() {
            return Either::Right(Box::pin(async { Err(LocalError::NoRoute) }));
        }
        if !rule.mutations.is_empty() {
            let frame = Arc::make_mut(&mut req.frame);
            for (key, value) in &rule.mutations {
                frame.metadata.set(key.clone(), value.clone());
            }
        }
        let (timeout, addr) = (
            rule.timeout,
            LogicalAddr::Name(backend.authority.as_str().into()),
        );
        let call = (*self.backend(addr)).clone().oneshot(req);
        Either::Right(Box::pin(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .unwrap_or(Err(LocalError::Timeout)),
                None => call.await,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    //! The MetaRoute router on loopback: a Redis client connection served through it, with
    //! backends that answer with their own name.

    use super::*;
    use crate::{
        codec::{redis::Redis, Frame, Kind, Metadata, Session},
        metrics::Direction,
        tap::TapConfig,
    };
    use mesh_api::policy::{
        Backend as MetaBackend, MetaMatch, MetaMatchKind, MetaRoute, MetaRule, MetaValueMatch,
        OutboundPolicy,
    };
    use std::net::SocketAddr;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    /// Backends that answer every request with `+<their logical address>`.
    #[derive(Clone)]
    struct NewNamed;

    #[derive(Clone)]
    struct Named(Arc<str>);

    impl NewService<Logical> for NewNamed {
        type Service = Named;
        fn new_service(&self, logical: Logical) -> Named {
            Named(logical.addr.to_string().into())
        }
    }

    impl tower::Service<Req> for Named {
        type Response = Answer;
        type Error = LocalError;
        type Future = futures_util::future::Ready<Result<Answer, LocalError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LocalError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Req) -> Self::Future {
            let frame = Frame {
                kind: Kind::Response,
                id: None,
                metadata: Metadata::default(),
                session: Session::None,
                bytes: format!("+{}\r\n", self.0).into_bytes().into(),
            };
            futures_util::future::ready(Ok(Answer {
                frame: Some(frame),
                info: Arc::new(Served {
                    direction: Direction::Outbound,
                    target_addr: "127.0.0.1:6379".parse().unwrap(),
                    dst: None,
                    tls: Tls::NoIdentity("test"),
                    server_id: None,
                }),
            }))
        }
    }

    struct Target;

    impl Param<ConnParams> for Target {
        fn param(&self) -> ConnParams {
            ConnParams {
                client: "127.0.0.1:1".parse().unwrap(),
                orig_dst: "10.0.0.1:6379".parse().unwrap(),
                client_id: None,
                protocol: Arc::new(Redis),
            }
        }
    }

    /// `session:*` keys to `sessions`.
    fn sessions_route() -> OutboundPolicy {
        OutboundPolicy {
            codec: Some("redis".into()),
            meta_routes: vec![MetaRoute {
                namespace: "demo".into(),
                name: "sessions".into(),
                rules: vec![MetaRule {
                    matches: vec![MetaMatch {
                        metadata: vec![MetaValueMatch {
                            key: "key".into(),
                            kind: MetaMatchKind::Prefix,
                            value: "session:".into(),
                        }],
                    }],
                    backends: vec![MetaBackend {
                        authority: "sessions.demo.svc.cluster.local:6379".into(),
                        namespace: "demo".into(),
                        name: "sessions".into(),
                        port: 6379,
                        weight: 1,
                        error: None,
                    }],
                    ..Default::default()
                }],
            }],
            ..OutboundPolicy::default()
        }
    }

    /// One command on `io`, and its one-line reply.
    async fn ask(io: &mut TcpStream, command: &str) -> String {
        io.write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n") {
            let mut byte = [0];
            assert_eq!(io.read(&mut byte).await.unwrap(), 1, "the proxy closed");
            reply.push(byte[0]);
        }
        String::from_utf8(reply).unwrap().trim_end().to_owned()
    }

    #[tokio::test]
    async fn an_open_connection_follows_a_policy_update() {
        let (update, policy) =
            watch::channel(Some(Arc::new(Compiled::new(OutboundPolicy::default()))));
        let logical = Logical {
            addr: LogicalAddr::Name("main.demo.svc.cluster.local:6379".into()),
            no_tls: "test",
        };
        let router = Router::new(
            PolicyWatch::following(policy),
            logical,
            NewNamed,
            Cache::new(Duration::from_secs(60)),
        );
        let metrics = Metrics::new(10, false);
        let taps = Taps::new(&TapConfig::default(), None, metrics.clone());
        let serve = NewServe::layer(taps).layer(NewFn(move |_: Target| router.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            serve.new_service(Target).oneshot(BoxIo::new(io)).await
        });
        let mut io = TcpStream::connect(addr).await.unwrap();

        assert_eq!(
            ask(&mut io, "GET session:1").await,
            "+main.demo.svc.cluster.local:6379",
            "no MetaRoute yet: the Service itself"
        );
        update
            .send(Some(Arc::new(Compiled::new(sessions_route()))))
            .unwrap();
        assert_eq!(
            ask(&mut io, "GET session:1").await,
            "+sessions.demo.svc.cluster.local:6379",
            "the same connection's next request follows the new MetaRoute"
        );
        assert_eq!(
            ask(&mut io, "GET user:1").await,
            "+main.demo.svc.cluster.local:6379"
        );
        update
            .send(Some(Arc::new(Compiled::new(OutboundPolicy::default()))))
            .unwrap();
        assert_eq!(
            ask(&mut io, "GET session:1").await,
            "+main.demo.svc.cluster.local:6379",
            "and leaves it once the route is gone"
        );
    }
}
