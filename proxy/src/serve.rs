//! One listener of the proxy: accepts connections, finds where each was going, detects its
//! protocol, and hands it to the HTTP forwarder or copies it as opaque TCP.

use crate::{
    balance::InFlight,
    detect::{self, Protocol},
    discover::{Picked, Resolver},
    drain::Drain,
    http::{HttpForwarder, Route},
    io::{CountingIo, PrefixedIo},
    metrics::{Direction, Metrics, RefusedLabels, TcpLabels},
    orig_dst::OriginalDst,
    ports::PortList,
    tcp,
};
use bytes::Bytes;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::{TcpListener, TcpStream};

/// How one direction's listener treats its connections.
pub struct Listener {
    pub direction: Direction,
    pub original_dst: OriginalDst,
    pub opaque_ports: PortList,
    pub detect_timeout: Duration,
    /// The most bytes read while detecting (the HTTP header limit).
    pub detect_capacity: usize,
    pub connect_timeout: Duration,
    /// The proxy's own ports: a connection that was going to one of them would loop.
    pub own_ports: Vec<u16>,
    pub http: Arc<HttpForwarder>,
    /// Discovery for opaque connections, resolved by their original destination.
    pub discovery: Option<Arc<Resolver>>,
    pub metrics: Metrics,
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

    async fn serve(self: Arc<Self>, stream: TcpStream, client: SocketAddr, drain: Drain) {
        let _ = stream.set_nodelay(true);
        let orig_dst = match self.original_dst.lookup(&stream) {
            Ok(addr) => addr,
            Err(error) => {
                tracing::warn!(%client, %error, "reading the original destination failed");
                return self.refuse(stream, "original_dst");
            }
        };
        if let Some(reason) = self.loops(&stream, orig_dst) {
            tracing::info!(%client, %orig_dst, reason, "refused a connection that would loop back to the proxy");
            return self.refuse(stream, reason);
        }
        let target = match self.direction {
            Direction::Outbound => orig_dst,
            // The application listens on the pod's loopback at the port the client dialed.
            Direction::Inbound => SocketAddr::new(loopback(orig_dst.ip()), orig_dst.port()),
        };

        let labels = TcpLabels {
            direction: self.direction,
            target_addr: target,
        };
        let m = &self.metrics;
        m.tcp_open_total.get_or_create(&labels).inc();
        let open = m.tcp_open_connections.get_or_create(&labels).clone();
        open.inc();
        let read = m.tcp_read_bytes_total.get_or_create(&labels).clone();
        let written = m.tcp_write_bytes_total.get_or_create(&labels).clone();
        let mut io = CountingIo::new(stream, read, written);

        let (protocol, prefix) = if self.opaque_ports.contains(orig_dst.port()) {
            (Protocol::Opaque, Bytes::new())
        } else {
            match detect::detect(&mut io, self.detect_timeout, self.detect_capacity).await {
                Ok(d) => {
                    if let Some(fallback) = d.fallback {
                        tracing::debug!(%client, %target, ?fallback, "no protocol detected; forwarding as opaque TCP");
                    }
                    (d.protocol, d.prefix)
                }
                Err(error) => {
                    tracing::debug!(%client, %error, "connection failed during detection");
                    (Protocol::Opaque, Bytes::new())
                }
            }
        };
        tracing::debug!(direction = self.direction.as_str(), %client, %target, ?protocol, "accepted");

        let mut io = PrefixedIo::new(prefix, io);
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                self.http.serve(io, protocol, Route { target }, drain).await
            }
            Protocol::Tls | Protocol::Opaque => match self.discover(orig_dst).await {
                Err(name) => {
                    tracing::info!(%client, %name, "no endpoints; resetting the connection");
                    let _ = io.get_ref().get_ref().set_zero_linger();
                }
                Ok(picked) => {
                    let mut _open_on_endpoint = None;
                    let (target, in_flight) = match picked {
                        Some((endpoint, in_flight)) => (endpoint, Some(in_flight)),
                        None => (target, None),
                    };
                    let connected = tcp::connect(target, self.connect_timeout).await;
                    if let (Some(mut in_flight), Some(resolver)) = (in_flight, &self.discovery) {
                        let now = Instant::now();
                        in_flight.record(&resolver.config().balance, connected.is_ok(), now);
                        // Until it closes, the connection counts as load on its endpoint.
                        _open_on_endpoint = Some(in_flight);
                    }
                    let result = match connected {
                        Ok(server) => tcp::copy(&mut io, server, target).await,
                        Err(e) => Err(e),
                    };
                    if let Err(error) = result {
                        tracing::info!(direction = self.direction.as_str(), %client, %error, "TCP forwarding failed");
                        if let tcp::TcpError::Connect(_) = error {
                            // An unreachable upstream is a reset for the client, as if it had
                            // dialed the upstream itself.
                            let _ = io.get_ref().get_ref().set_zero_linger();
                        }
                    }
                }
            },
        }
        open.dec();
        m.tcp_close_total.get_or_create(&labels).inc();
    }

    /// Picks an endpoint for an opaque connection by its original destination (a ClusterIP):
    /// `Ok(None)` when discovery is off or the address is not a mesh service, `Err` with the
    /// name when the service has no endpoints.
    async fn discover(
        &self,
        orig_dst: SocketAddr,
    ) -> Result<Option<(SocketAddr, InFlight)>, String> {
        let Some(resolver) = &self.discovery else {
            return Ok(None);
        };
        match resolver.pick(orig_dst.to_string()).await {
            Picked::Original => Ok(None),
            Picked::Endpoint(ep, in_flight) => Ok(Some((ep.balance.addr, in_flight))),
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

    fn refuse(&self, stream: TcpStream, reason: &'static str) {
        let labels = RefusedLabels {
            direction: self.direction,
            reason,
        };
        self.metrics.tcp_refused_total.get_or_create(&labels).inc();
        let _ = stream.set_zero_linger();
    }
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
