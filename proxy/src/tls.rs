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
///
/// Its parts are shared (`Arc`): each connection's future holds them while it reads the hello.
#[derive(Clone)]
pub struct NewTerminate<M, P> {
    config: Arc<TerminateConfig>,
    meshed: Arc<M>,
    passthrough: Arc<P>,
}

impl<M, P> NewTerminate<M, P> {
    pub fn new(config: TerminateConfig, meshed: M, passthrough: P) -> Self {
        Self {
            config: Arc::new(config),
            meshed: Arc::new(meshed),
            passthrough: Arc::new(passthrough),
        }
    }
}

pub struct Terminate<T, M, P> {
    target: Option<T>,
    config: Arc<TerminateConfig>,
    meshed: Arc<M>,
    passthrough: Arc<P>,
}

impl<T, M, P> NewService<T> for NewTerminate<M, P> {
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
    M: NewService<Decided<T>, Service = MS> + Send + Sync + 'static,
    MS: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send,
    P: NewService<T, Service = PS> + Send + Sync + 'static,
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
        crate::svc::then_serve(async move {
            let ClientAddr(client) = target.param();
            let (hello, read) = read_client_hello(&mut io, &config).await;
            let io = BoxIo::new(PrefixedIo::new(read.freeze(), io));
            if hello != Hello::ServerName(Some(config.identity.name().to_string())) {
                return crate::svc::call_conn(passthrough.new_service(target), io).await;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(config.identity.server_config());
            let tls = match tokio::time::timeout(config.timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::info!(%client, %error, "mutual TLS handshake failed");
                    config.refuse.count("tls_handshake");
                    return Ok(crate::svc::conn_done());
                }
                Err(_) => {
                    tracing::info!(%client, "mutual TLS handshake timed out");
                    config.refuse.count("tls_handshake");
                    return Ok(crate::svc::conn_done());
                }
            };
            let Some(client_id) = identity::peer_identity(tls.get_ref().1.peer_certificates())
            else {
                tracing::info!(%client, "the client's certificate names no mesh identity");
                config.refuse.count("no_client_identity");
                return Ok(crate::svc::conn_done());
            };
            let target = Decided {
                parent: target,
                tls: Tls::Established(client_id),
            };
            crate::svc::call_conn(meshed.new_service(target), BoxIo::new(tls)).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::IdentityConfig,
        metrics::{Direction, IdentityMetrics, Metrics, RefusedLabels, NO_TLS_FROM_REMOTE},
        svc::NewFn,
        transport::Accepted,
    };
    use mesh_api::identity::{ca, credentials::provider, Identity};
    use rustls::pki_types::ServerName;
    use std::{io, net::SocketAddr};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    /// Both ends of a connection over 127.0.0.1: (client, server).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn accepted(port: u16) -> Accepted {
        Accepted {
            client: "10.0.0.1:40000".parse().unwrap(),
            orig_dst: SocketAddr::from(([10, 0, 0, 2], port)),
        }
    }

    fn refuse(metrics: &Metrics) -> Refuse {
        Refuse {
            metrics: metrics.clone(),
            direction: Direction::Inbound,
        }
    }

    fn refused(metrics: &Metrics, reason: &'static str) -> u64 {
        let labels = RefusedLabels {
            direction: Direction::Inbound,
            reason,
        };
        metrics.tcp_refused_total.get_or_create(&labels).get()
    }

    /// A connection-level stage that reads each connection to its end, then sends its target
    /// and the bytes it read.
    fn reader<T: Send + 'static>(
        tx: mpsc::UnboundedSender<(T, Vec<u8>)>,
    ) -> impl NewService<
        T,
        Service = impl tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>
                      + Send,
    > + Clone
           + Send
           + 'static {
        NewFn(move |target: T| {
            let tx = tx.clone();
            let mut target = Some(target);
            tower::service_fn(move |mut io: BoxIo| -> ConnFuture {
                let tx = tx.clone();
                let target = target.take();
                Box::pin(async move {
                    let mut bytes = Vec::new();
                    io.read_to_end(&mut bytes).await?;
                    let _ = tx.send((target.expect("a connection is served once"), bytes));
                    Ok(())
                })
            })
        })
    }

    /// The proxy's identity (`web.demo…`), without a certificate.
    fn local_identity(dir: &std::path::Path) -> Arc<LocalIdentity> {
        let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(86_400)).unwrap();
        let config = IdentityConfig {
            name: Identity::new("web", "demo", "cluster.local").unwrap(),
            addr: "127.0.0.1:1".into(),
            server_name: Identity::controller("cluster.local").unwrap(),
            token_file: dir.join("token"),
            trust_anchors: ca::certs_from_pem(&anchor.cert_pem, "anchors").unwrap(),
            dir: dir.to_path_buf(),
        };
        LocalIdentity::new(config, IdentityMetrics::default(), Default::default()).unwrap()
    }

    /// The ClientHello a rustls client sends for `server_name` (the same bytes tokio-rustls
    /// writes first).
    fn client_hello(server_name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    fn terminate_config(identity: Arc<LocalIdentity>, metrics: &Metrics) -> TerminateConfig {
        TerminateConfig {
            identity,
            timeout: Duration::from_secs(30),
            capacity: 16 * 1024,
            refuse: refuse(metrics),
        }
    }

    /// The identity-required layer for port 8443, over a stage that reports what it reads.
    fn require_identity_on_8443(
        metrics: &Metrics,
        tx: mpsc::UnboundedSender<(Decided<Accepted>, Vec<u8>)>,
    ) -> impl NewService<Accepted, Service = impl tower::Service<BoxIo, Response = (), Error = BoxError>>
    {
        let layer =
            NewRequireIdentity::layer("8443".parse().unwrap(), NO_TLS_FROM_REMOTE, refuse(metrics));
        tower::Layer::layer(&layer, reader::<Decided<Accepted>>(tx))
    }

    #[tokio::test]
    async fn a_port_that_requires_identity_refuses_a_connection_with_a_reset() {
        let metrics = Metrics::new(10, true);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stack = require_identity_on_8443(&metrics, tx);
        let (mut client, server) = tcp_pair().await;
        stack
            .new_service(accepted(8443))
            .oneshot(BoxIo::new(server))
            .await
            .unwrap();
        let err = client.read(&mut [0; 1]).await.expect_err("a reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert_eq!(refused(&metrics, "identity_required"), 1);
        assert!(rx.try_recv().is_err(), "the stage below never sees it");
    }

    #[tokio::test]
    async fn other_ports_pass_with_no_identity_and_the_reason() {
        let metrics = Metrics::new(10, true);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stack = require_identity_on_8443(&metrics, tx);
        let (mut client, server) = tcp_pair().await;
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        stack
            .new_service(accepted(8080))
            .oneshot(BoxIo::new(server))
            .await
            .unwrap();
        let (target, bytes) = rx.recv().await.unwrap();
        assert_eq!(target.tls, Tls::NoIdentity(NO_TLS_FROM_REMOTE));
        assert_eq!(target.parent.orig_dst.port(), 8080);
        assert_eq!(bytes, b"hello");
        assert_eq!(refused(&metrics, "identity_required"), 0);
    }

    /// What the passthrough stage reads of a connection that sent `sent` on the TLS stage,
    /// and whether the meshed stage was asked for it.
    async fn passthrough(sent: &[u8]) -> (Vec<u8>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(10, true);
        let (meshed_tx, mut meshed_rx) = mpsc::unbounded_channel();
        let (pass_tx, mut pass_rx) = mpsc::unbounded_channel();
        let terminate = NewTerminate::new(
            terminate_config(local_identity(dir.path()), &metrics),
            reader::<Decided<Accepted>>(meshed_tx),
            reader::<Accepted>(pass_tx),
        );
        let (mut client, server) = tcp_pair().await;
        client.write_all(sent).await.unwrap();
        client.shutdown().await.unwrap();
        terminate
            .new_service(accepted(8080))
            .oneshot(BoxIo::new(server))
            .await
            .unwrap();
        let (_, bytes) = pass_rx.try_recv().expect("passed through");
        (bytes, meshed_rx.try_recv().is_ok())
    }

    #[tokio::test]
    async fn tls_for_another_name_passes_through_with_every_byte() {
        let mut sent = client_hello("db.example.com");
        // What a TLS 1.3 client sends next (a middlebox-compatibility ChangeCipherSpec): the
        // bytes after the hello are replayed too.
        let after_hello = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
        sent.extend_from_slice(&after_hello);
        assert_eq!(
            identity::client_hello(&sent),
            Hello::ServerName(Some("db.example.com".into())),
            "the stage decides on the server name"
        );
        let (got, meshed) = passthrough(&sent).await;
        assert_eq!(got, sent);
        assert!(!meshed);
    }

    #[tokio::test]
    async fn bytes_that_are_not_a_client_hello_pass_through() {
        let sent = b"\x16\x03\x01\x00\x05\x02hello".to_vec();
        let (got, meshed) = passthrough(&sent).await;
        assert_eq!(got, sent);
        assert!(!meshed);
    }

    #[tokio::test]
    async fn a_hello_for_the_proxys_name_is_terminated_and_a_failed_handshake_counted() {
        // Without a certificate the proxy cannot answer: the handshake fails.
        let dir = tempfile::tempdir().unwrap();
        let identity = local_identity(dir.path());
        let metrics = Metrics::new(10, true);
        let (meshed_tx, mut meshed_rx) = mpsc::unbounded_channel();
        let (pass_tx, mut pass_rx) = mpsc::unbounded_channel();
        let terminate = NewTerminate::new(
            terminate_config(identity.clone(), &metrics),
            reader::<Decided<Accepted>>(meshed_tx),
            reader::<Accepted>(pass_tx),
        );
        let (mut client, server) = tcp_pair().await;
        client
            .write_all(&client_hello(identity.name()))
            .await
            .unwrap();
        terminate
            .new_service(accepted(8080))
            .oneshot(BoxIo::new(server))
            .await
            .unwrap();
        assert_eq!(refused(&metrics, "tls_handshake"), 1);
        assert!(pass_rx.try_recv().is_err(), "not passed through");
        assert!(meshed_rx.try_recv().is_err(), "no identity proven");
    }
}
