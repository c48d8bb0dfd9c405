//! One listener of the proxy: accepts connections, finds where each was going, detects its
//! protocol, and hands it to the HTTP forwarder or copies it as opaque TCP.
//!
//! Inbound, a TLS ClientHello for the proxy's own identity is mutual TLS from another proxy: it
//! is terminated here, the client's identity verified, and what it carries detected again. TLS
//! for any other name is the application's own and passes through untouched. On a port that
//! requires identity, everything else is refused.

use crate::{
    balance::InFlight,
    connect::Connect,
    detect::{self, Protocol},
    discover::{Picked, Resolver},
    drain::Drain,
    http::{HttpForwarder, Route},
    identity::{self, Alpn, Hello, LocalIdentity},
    io::{CountingIo, PrefixedIo},
    metrics::{
        Direction, Metrics, RefusedLabels, TcpLabels, Tls, NO_TLS_DISABLED, NO_TLS_FROM_DISCOVERY,
        NO_TLS_FROM_REMOTE,
    },
    orig_dst::OriginalDst,
    ports::PortList,
    tcp,
};
use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
};

/// How long an opaque inbound port waits for a ClientHello (identity on) before it takes the
/// connection as plaintext: a peer proxy sends it at once.
const OPAQUE_TLS_PEEK: Duration = Duration::from_secs(1);

/// How one direction's listener treats its connections.
pub struct Listener {
    pub direction: Direction,
    pub original_dst: OriginalDst,
    pub opaque_ports: PortList,
    pub detect_timeout: Duration,
    /// The most bytes read while detecting (the HTTP header limit).
    pub detect_capacity: usize,
    /// How upstream connections are opened (timeout, socket mark).
    pub connect: Connect,
    /// The proxy's own ports: a connection that was going to one of them would loop.
    pub own_ports: Vec<u16>,
    pub http: Arc<HttpForwarder>,
    /// Discovery for opaque connections, resolved by their original destination.
    pub discovery: Option<Arc<Resolver>>,
    pub metrics: Metrics,
    /// The proxy's identity, when mutual TLS is on.
    pub identity: Option<Arc<LocalIdentity>>,
    /// Inbound ports that take only mutual TLS from other proxies.
    pub require_identity_ports: PortList,
}

/// Where an accepted connection goes.
struct Conn {
    client: SocketAddr,
    orig_dst: SocketAddr,
    target: SocketAddr,
    /// Inbound: whether the client connection is mesh TLS.
    tls: Option<Tls>,
}

impl Listener {
    /// Accepts connections until shutdown begins; each is served as tracked in-flight work.
    pub async fn run(self: Arc<Self>, listener: TcpListener, drain: Drain) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => break,
            };
            match accepted {
                Ok((stream, client)) => {
                    drain.spawn(self.clone().serve(stream, client, drain.clone()));
                }
                Err(error) => {
                    // Out of file descriptors or a connection reset before accept: back off a
                    // little rather than spin.
                    tracing::warn!(direction = self.direction.as_str(), %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(direction = self.direction.as_str(), "listener closed");
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream, client: SocketAddr, drain: Drain) {
        let _ = stream.set_nodelay(true);
        let orig_dst = match self.original_dst.lookup(&stream) {
            Ok(addr) => addr,
            Err(error) => {
                tracing::warn!(%client, %error, "reading the original destination failed");
                return self.refuse(&stream, "original_dst");
            }
        };
        if let Some(reason) = self.loops(&stream, orig_dst) {
            tracing::info!(%client, %orig_dst, reason, "refused a connection that would loop back to the proxy");
            return self.refuse(&stream, reason);
        }
        let target = match self.direction {
            Direction::Outbound => orig_dst,
            // The application listens on the pod's loopback at the port the client dialed.
            Direction::Inbound => SocketAddr::new(loopback(orig_dst.ip()), orig_dst.port()),
        };
        let mut conn = Conn {
            client,
            orig_dst,
            target,
            tls: None,
        };
        let opaque = self.opaque_ports.contains(orig_dst.port());
        let (protocol, mut prefix) = match (self.direction, &self.identity, opaque) {
            // Another proxy wraps even opaque traffic in mutual TLS, so an opaque inbound port
            // still looks for a ClientHello; only briefly, for clients of protocols whose server
            // speaks first.
            (Direction::Inbound, Some(_), true) => {
                let timeout = self.detect_timeout.min(OPAQUE_TLS_PEEK);
                match self.sniff(&mut stream, &conn, timeout).await {
                    (Protocol::Tls, prefix) => (Protocol::Tls, prefix),
                    (_, prefix) => (Protocol::Opaque, prefix),
                }
            }
            _ => self.detect(&mut stream, &conn).await,
        };
        if self.direction == Direction::Inbound {
            if let (Some(identity), Protocol::Tls) = (&self.identity, protocol) {
                let (hello, read) = self.read_client_hello(&mut stream, prefix).await;
                prefix = read;
                if hello == Hello::ServerName(Some(identity.name().to_string())) {
                    let io = PrefixedIo::new(prefix, stream);
                    return self.serve_mesh_tls(io, identity, conn, drain).await;
                }
            }
            if self.require_identity_ports.contains(orig_dst.port()) {
                tracing::info!(%client, port = orig_dst.port(), "refused a connection without a mesh identity on a port that requires one");
                return self.refuse(&stream, "identity_required");
            }
            conn.tls = Some(Tls::NoIdentity(match self.identity {
                Some(_) => NO_TLS_FROM_REMOTE,
                None => NO_TLS_DISABLED,
            }));
        }
        self.forward(PrefixedIo::new(prefix, stream), protocol, conn, drain)
            .await
    }

    /// Terminates mutual TLS from another proxy, then serves what it carries.
    async fn serve_mesh_tls(
        &self,
        io: PrefixedIo<TcpStream>,
        identity: &LocalIdentity,
        mut conn: Conn,
        drain: Drain,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
        let mut tls = match tokio::time::timeout(self.detect_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::info!(client = %conn.client, %error, "mutual TLS handshake failed");
                return self.count_refused("tls_handshake");
            }
            Err(_) => {
                tracing::info!(client = %conn.client, "mutual TLS handshake timed out");
                return self.count_refused("tls_handshake");
            }
        };
        let Some(client_id) = identity::peer_identity(tls.get_ref().1.peer_certificates()) else {
            tracing::info!(client = %conn.client, "the client's certificate names no mesh identity");
            return self.count_refused("no_client_identity");
        };
        conn.tls = Some(Tls::Established(client_id));
        let (protocol, prefix) = self.detect(&mut tls, &conn).await;
        self.forward(PrefixedIo::new(prefix, tls), protocol, conn, drain)
            .await
    }

    /// The protocol of a connection and the bytes read to decide it; opaque ports skip it.
    async fn detect<I: AsyncRead + Unpin>(&self, io: &mut I, conn: &Conn) -> (Protocol, Bytes) {
        if self.opaque_ports.contains(conn.orig_dst.port()) {
            return (Protocol::Opaque, Bytes::new());
        }
        self.sniff(io, conn, self.detect_timeout).await
    }

    /// Reads a connection's first bytes (within `timeout`) and says what they are.
    async fn sniff<I: AsyncRead + Unpin>(
        &self,
        io: &mut I,
        conn: &Conn,
        timeout: Duration,
    ) -> (Protocol, Bytes) {
        match detect::detect(io, timeout, self.detect_capacity).await {
            Ok(d) => {
                if let Some(fallback) = d.fallback {
                    tracing::debug!(client = %conn.client, target = %conn.target, ?fallback, "no protocol detected; forwarding as opaque TCP");
                }
                (d.protocol, d.prefix)
            }
            Err(error) => {
                tracing::debug!(client = %conn.client, %error, "connection failed during detection");
                (Protocol::Opaque, Bytes::new())
            }
        }
    }

    /// Reads until the ClientHello in `prefix` is complete (within the detection timeout and
    /// buffer), and returns what it says with every byte read.
    async fn read_client_hello(&self, stream: &mut TcpStream, prefix: Bytes) -> (Hello, Bytes) {
        let deadline = tokio::time::Instant::now() + self.detect_timeout;
        let mut buf = BytesMut::from(&prefix[..]);
        loop {
            let hello = identity::client_hello(&buf);
            if hello != Hello::Incomplete || buf.len() >= self.detect_capacity {
                return (hello, buf.freeze());
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return (Hello::Incomplete, buf.freeze()),
            }
        }
    }

    /// Forwards a connection whose protocol is known: HTTP to the forwarder, the rest as
    /// opaque TCP.
    async fn forward<I>(&self, io: I, protocol: Protocol, conn: Conn, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
    {
        tracing::debug!(direction = self.direction.as_str(), client = %conn.client, target = %conn.target, ?protocol, "accepted");
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let open = self.open(conn.target, conn.tls.clone());
                let io = open.count(io);
                let route = Route {
                    target: conn.target,
                    tls: conn.tls.unwrap_or(Tls::NoIdentity(NO_TLS_FROM_REMOTE)),
                    client: conn.client,
                    orig_dst: conn.orig_dst,
                };
                self.http.serve(io, protocol, route, drain).await
            }
            Protocol::Tls | Protocol::Opaque => self.forward_opaque(io, conn).await,
        }
    }

    async fn forward_opaque<I>(&self, io: I, conn: Conn)
    where
        I: AsyncRead + AsyncWrite + Socket + Unpin,
    {
        let picked = match self.discover(conn.orig_dst).await {
            Err(name) => {
                tracing::info!(client = %conn.client, %name, "no endpoints; resetting the connection");
                let _open = self.open(conn.target, conn.tls);
                let _ = io.tcp().set_zero_linger();
                return;
            }
            Ok(picked) => picked,
        };
        let (target, mut in_flight, server_id) = match picked {
            Some((endpoint, in_flight, server_id)) => (
                endpoint,
                Some(in_flight),
                server_id.filter(|_| self.identity.is_some()),
            ),
            None => (conn.target, None, None),
        };
        let tls = match (self.direction, &server_id) {
            (Direction::Inbound, _) => conn.tls,
            (Direction::Outbound, Some(id)) => Some(Tls::Established(id.clone())),
            (Direction::Outbound, None) if self.identity.is_some() => {
                Some(Tls::NoIdentity(NO_TLS_FROM_DISCOVERY))
            }
            (Direction::Outbound, None) => Some(Tls::NoIdentity(NO_TLS_DISABLED)),
        };
        let open = self.open(target, tls);
        let mut io = open.count(io);
        let upstream = self.http.upstream();
        let result = match &server_id {
            None => match tcp::connect(target, &self.connect).await {
                Ok(server) => {
                    self.record(&mut in_flight, true);
                    tcp::copy(&mut io, server, target).await
                }
                Err(e) => {
                    self.record(&mut in_flight, false);
                    Err(e)
                }
            },
            Some(id) => match upstream.connect_tls(target, id, Alpn::None).await {
                Ok(server) => {
                    self.record(&mut in_flight, true);
                    tcp::copy(&mut io, server, target).await
                }
                Err(e) => {
                    self.record(&mut in_flight, false);
                    Err(tcp::TcpError::Connect(e))
                }
            },
        };
        if let Err(error) = result {
            tracing::info!(direction = self.direction.as_str(), client = %conn.client, %error, "TCP forwarding failed");
            if let tcp::TcpError::Connect(_) = error {
                // An unreachable upstream is a reset for the client, as if it had dialed the
                // upstream itself.
                let _ = io.get_ref().tcp().set_zero_linger();
            }
        }
    }

    /// Feeds a connection attempt's outcome to the balancer. (An open connection keeps counting
    /// as load on its endpoint until it closes: the caller holds `in_flight` until then.)
    fn record(&self, in_flight: &mut Option<InFlight>, success: bool) {
        if let (Some(in_flight), Some(resolver)) = (in_flight.as_mut(), &self.discovery) {
            in_flight.record(&resolver.config().balance, success, Instant::now());
        }
    }

    /// Counts an open connection until the returned guard drops.
    fn open(&self, target: SocketAddr, tls: Option<Tls>) -> OpenConn {
        let labels = TcpLabels {
            direction: self.direction,
            target_addr: target,
            tls,
        };
        let m = &self.metrics;
        m.tcp_open_total.get_or_create(&labels).inc();
        let open = m.tcp_open_connections.get_or_create(&labels).clone();
        open.inc();
        OpenConn {
            read: m.tcp_read_bytes_total.get_or_create(&labels).clone(),
            written: m.tcp_write_bytes_total.get_or_create(&labels).clone(),
            close: m.tcp_close_total.get_or_create(&labels).clone(),
            open,
        }
    }

    /// Picks an endpoint for an opaque connection by its original destination (a ClusterIP):
    /// `Ok(None)` when discovery is off or the address is not a mesh service, `Err` with the
    /// name when the service has no endpoints.
    async fn discover(
        &self,
        orig_dst: SocketAddr,
    ) -> Result<Option<(SocketAddr, InFlight, Option<Arc<str>>)>, String> {
        let Some(resolver) = &self.discovery else {
            return Ok(None);
        };
        match resolver.pick(orig_dst.to_string()).await {
            Picked::Original => Ok(None),
            Picked::Endpoint(ep, in_flight) => Ok(Some((ep.balance.addr, in_flight, ep.identity))),
            Picked::NoEndpoints(name) => Err(name),
        }
    }

    /// Why a connection to `orig_dst` would come back to the proxy, if it would.
    fn loops(&self, stream: &TcpStream, orig_dst: SocketAddr) -> Option<&'static str> {
        if stream.local_addr().ok() == Some(orig_dst) {
            // Not redirected: the client dialed the proxy's port itself.
            return Some("not_redirected");
        }
        let own_port = self.own_ports.contains(&orig_dst.port());
        let local = orig_dst.ip().is_loopback() || self.direction == Direction::Inbound;
        (own_port && local).then_some("own_port")
    }

    /// Refuses a connection with a reset, counting why.
    fn refuse(&self, stream: &TcpStream, reason: &'static str) {
        self.count_refused(reason);
        let _ = stream.set_zero_linger();
    }

    fn count_refused(&self, reason: &'static str) {
        let labels = RefusedLabels {
            direction: self.direction,
            reason,
        };
        self.metrics.tcp_refused_total.get_or_create(&labels).inc();
    }
}

/// An open connection's metrics: counted open until dropped.
struct OpenConn {
    read: Counter,
    written: Counter,
    close: Counter,
    open: Gauge,
}

impl OpenConn {
    fn count<I>(&self, io: I) -> CountingIo<I> {
        CountingIo::new(io, self.read.clone(), self.written.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.open.dec();
        self.close.inc();
    }
}

/// A connection that can reach its TCP socket (to reset it).
pub trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl<T: Socket> Socket for PrefixedIo<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<T: Socket> Socket for CountingIo<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<T: Socket> Socket for tokio_rustls::server::TlsStream<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
