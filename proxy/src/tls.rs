//! Inbound mutual TLS: a ClientHello for the proxy's own identity is another proxy's mutual TLS,
//! terminated here with the client's identity verified; TLS for any other name is the
//! application's own and passes through untouched. On a port that requires identity, every
//! connection that is not mutual TLS from another proxy is refused.

use crate::{
    identity::{self, Hello, LocalIdentity},
    io::PrefixedIo,
    metrics::Tls,
    ports::PortList,
    svc::{BoxError, BoxIo, ConnFuture, NewService, Param},
    transport::{ClientAddr, OrigDst, Refuse},
};
use bytes::BytesMut;
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::AsyncReadExt;
use tower::ServiceExt;

/// A connection whose TLS is decided: terminated mutual TLS with the identity the client
/// proved, or no mesh identity and why.
#[derive(Clone, Debug)]
pub struct Decided<T> {
    pub parent: T,
    pub tls: Tls,
}

impl<T> Param<Tls> for Decided<T> {
    fn param(&self) -> Tls {
        self.tls.clone()
    }
}

impl<T: Param<ClientAddr>> Param<ClientAddr> for Decided<T> {
    fn param(&self) -> ClientAddr {
        self.parent.param()
    }
}

impl<T: Param<OrigDst>> Param<OrigDst> for Decided<T> {
    fn param(&self) -> OrigDst {
        self.parent.param()
    }
}

/// How the proxy terminates mutual TLS.
#[derive(Clone)]
pub struct TerminateConfig {
    pub identity: Arc<LocalIdentity>,
    /// How long the handshake, and reading a whole ClientHello, may take.
    pub timeout: Duration,
    /// The most bytes a ClientHello may take.
    pub capacity: usize,
    pub refuse: Refuse,
}

/// Terminates mutual TLS addressed to the proxy's identity, then serves what it carries with
/// `M`; any other TLS is served, as it is, by `P`.
#[derive(Clone)]
pub struct NewTerminate<M, P> {
    config: TerminateConfig,
    meshed: M,
    passthrough: P,
}

impl<M, P> NewTerminate<M, P> {
    pub fn new(config: TerminateConfig, meshed: M, passthrough: P) -> Self {
        Self {
            config,
            meshed,
            passthrough,
        }
    }
}

pub struct Terminate<T, M, P> {
    target: Option<T>,
    config: TerminateConfig,
    meshed: M,
    passthrough: P,
}

impl<T, M: Clone, P: Clone> NewService<T> for NewTerminate<M, P> {
    type Service = Terminate<T, M, P>;
    fn new_service(&self, target: T) -> Self::Service {
        Terminate {
            target: Some(target),
            config: self.config.clone(),
            meshed: self.meshed.clone(),
            passthrough: self.passthrough.clone(),
        }
    }
}

impl<T, M, MS, P, PS> tower::Service<BoxIo> for Terminate<T, M, P>
where
    T: Param<ClientAddr> + Send + 'static,
    M: NewService<Decided<T>, Service = MS> + Clone + Send + 'static,
    MS: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send,
    P: NewService<T, Service = PS> + Clone + Send + 'static,
    PS: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut io: BoxIo) -> ConnFuture {
        let target = self
            .target
            .take()
            .expect("a connection's service serves it once");
        let config = self.config.clone();
        let meshed = self.meshed.clone();
        let passthrough = self.passthrough.clone();
        Box::pin(async move {
            let ClientAddr(client) = target.param();
            let (hello, read) = read_client_hello(&mut io, &config).await;
            let io = BoxIo::new(PrefixedIo::new(read.freeze(), io));
            if hello != Hello::ServerName(Some(config.identity.name().to_string())) {
                return passthrough.new_service(target).oneshot(io).await;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(config.identity.server_config());
            let tls = match tokio::time::timeout(config.timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::info!(%client, %error, "mutual TLS handshake failed");
                    config.refuse.count("tls_handshake");
                    return Ok(());
                }
                Err(_) => {
                    tracing::info!(%client, "mutual TLS handshake timed out");
                    config.refuse.count("tls_handshake");
                    return Ok(());
                }
            };
            let Some(client_id) = identity::peer_identity(tls.get_ref().1.peer_certificates())
            else {
                tracing::info!(%client, "the client's certificate names no mesh identity");
                config.refuse.count("no_client_identity");
                return Ok(());
            };
            let target = Decided {
                parent: target,
                tls: Tls::Established(client_id),
            };
            meshed.new_service(target).oneshot(BoxIo::new(tls)).await
        })
    }
}

/// Reads until the ClientHello is complete (within the timeout and the buffer), and returns
/// what it says with every byte read.
async fn read_client_hello(io: &mut BoxIo, config: &TerminateConfig) -> (Hello, BytesMut) {
    let deadline = tokio::time::Instant::now() + config.timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return (Hello::Incomplete, buf),
        }
        let hello = identity::client_hello(&buf);
        if hello != Hello::Incomplete || buf.len() >= config.capacity {
            return (hello, buf);
        }
    }
}

/// Refuses connections on the ports that take only mutual TLS from other proxies; the rest go
/// on with no mesh identity (`reason` says why).
#[derive(Clone)]
pub struct NewRequireIdentity<N> {
    ports: PortList,
    reason: &'static str,
    refuse: Refuse,
    inner: N,
}

impl<N> NewRequireIdentity<N> {
    pub fn layer(
        ports: PortList,
        reason: &'static str,
        refuse: Refuse,
    ) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            ports: ports.clone(),
            reason,
            refuse: refuse.clone(),
            inner,
        })
    }
}

pub enum RequireIdentity<S> {
    Refused(Box<(Refuse, ClientAddr)>),
    Admitted(S),
}

impl<T, N> NewService<T> for NewRequireIdentity<N>
where
    T: Param<OrigDst> + Param<ClientAddr>,
    N: NewService<Decided<T>>,
{
    type Service = RequireIdentity<N::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        let OrigDst(orig_dst) = target.param();
        if self.ports.contains(orig_dst.port()) {
            return RequireIdentity::Refused(Box::new((self.refuse.clone(), target.param())));
        }
        RequireIdentity::Admitted(self.inner.new_service(Decided {
            parent: target,
            tls: Tls::NoIdentity(self.reason),
        }))
    }
}

impl<S> tower::Service<BoxIo> for RequireIdentity<S>
where
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Refused(_) => Poll::Ready(Ok(())),
            Self::Admitted(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        match self {
            Self::Refused(refused) => {
                let (refuse, ClientAddr(client)) = &**refused;
                tracing::info!(%client, "refused a connection without a mesh identity on a port that requires one");
                refuse.refuse(&io, "identity_required");
                Box::pin(async { Ok(()) })
            }
            Self::Admitted(s) => s.call(io),
        }
    }
}
