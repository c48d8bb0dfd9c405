//! Where every connection starts and what is counted of it: the accept loop of a listener, the
//! refusal of connections that would loop back into the proxy, and the TCP metrics layer.

use crate::{
    drain::Drain,
    io::CountingIo,
    metrics::{Direction, Metrics, RefusedLabels, TargetMetrics, TcpHandles, TcpLabels},
    orig_dst::OriginalDst,
    svc::{reset, BoxError, BoxIo, ConnFuture, NewService, Param, Socket},
};
use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::net::{TcpListener, TcpStream};

/// The client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Where a connection was going before the redirect rules brought it to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst(pub SocketAddr);

/// An accepted connection: the first target of both stacks.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
}

impl Param<ClientAddr> for Accepted {
    fn param(&self) -> ClientAddr {
        ClientAddr(self.client)
    }
}

impl Param<OrigDst> for Accepted {
    fn param(&self) -> OrigDst {
        OrigDst(self.orig_dst)
    }
}

/// Counts refused connections, by reason, and resets them.
#[derive(Clone)]
pub struct Refuse {
    pub metrics: Metrics,
    pub direction: Direction,
}

impl Refuse {
    /// Refuses a connection with a reset, counting why.
    pub fn refuse(&self, io: &dyn Socket, reason: &'static str) {
        self.count(reason);
        reset(io);
    }

    pub fn count(&self, reason: &'static str) {
        let labels = RefusedLabels {
            direction: self.direction,
            reason,
        };
        self.metrics.tcp_refused_total.get_or_create(&labels).inc();
    }
}

/// One listener: where it learns original destinations, which of them loop back, and how its
/// connections are refused.
pub struct Listen {
    pub original_dst: OriginalDst,
    /// The proxy's own ports: a connection that was going to one of them would loop…
    pub own_ports: Vec<u16>,
    /// …on any address (inbound: every address is the pod's), or only on loopback (outbound).
    pub own_ports_on_any_address: bool,
    pub refuse: Refuse,
}

impl Listen {
    /// Accepts connections until shutdown begins; each is served by `stack`'s service for its
    /// [`Accepted`] target, as in-flight work that shutdown waits for.
    pub async fn run<N, S>(self, listener: TcpListener, stack: N, drain: Drain)
    where
        N: NewService<Accepted, Service = S> + Send + Sync + 'static,
        S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>
            + Send
            + 'static,
    {
        let direction = self.refuse.direction.as_str();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => break,
            };
            match accepted {
                Ok((stream, client)) => {
                    let Some(target) = self.admit(&stream, client) else {
                        continue;
                    };
                    let conn = crate::svc::then_serve(crate::svc::call_conn(
                        stack.new_service(target),
                        BoxIo::new(stream),
                    ));
                    drain.spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(direction, %client, %error, "connection failed");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors or a connection reset before accept: back off a
                    // little rather than spin.
                    tracing::warn!(direction, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(direction, "listener closed");
    }

    /// The connection's target, or `None` when it is refused.
    fn admit(&self, stream: &TcpStream, client: SocketAddr) -> Option<Accepted> {
        let _ = stream.set_nodelay(true);
        let orig_dst = match self.original_dst.lookup(stream) {
            Ok(addr) => addr,
            Err(error) => {
                tracing::warn!(%client, %error, "reading the original destination failed");
                self.refuse.refuse(stream, "original_dst");
                return None;
            }
        };
        if let Some(reason) = self.loops(stream, orig_dst) {
            tracing::info!(%client, %orig_dst, reason, "refused a connection that would loop back to the proxy");
            self.refuse.refuse(stream, reason);
            return None;
        }
        Some(Accepted { client, orig_dst })
    }

    /// Why a connection to `orig_dst` would come back to the proxy, if it would.
    fn loops(&self, stream: &TcpStream, orig_dst: SocketAddr) -> Option<&'static str> {
        if stream.local_addr().ok() == Some(orig_dst) {
            // Not redirected: the client dialed the proxy's port itself.
            return Some("not_redirected");
        }
        let own_port = self.own_ports.contains(&orig_dst.port());
        let local = orig_dst.ip().is_loopback() || self.own_ports_on_any_address;
        (own_port && local).then_some("own_port")
    }
}

// === TCP metrics ===

/// Counts a connection in the `tcp_*` families while its service serves it, labelled by what
/// its target says.
#[derive(Clone)]
pub struct NewTcpMetrics<N> {
    metrics: Metrics,
    inner: N,
}

impl<N> NewTcpMetrics<N> {
    pub fn layer(metrics: Metrics) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            metrics: metrics.clone(),
            inner,
        })
    }
}

pub struct TcpMetrics<S> {
    open: OpenConn,
    inner: S,
}

impl<T: Param<TcpLabels>, N: NewService<T>> NewService<T> for NewTcpMetrics<N> {
    type Service = TcpMetrics<N::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        let open = OpenConn::new(&self.metrics, &target.param());
        TcpMetrics {
            open,
            inner: self.inner.new_service(target),
        }
    }
}

impl<S> tower::Service<BoxIo> for TcpMetrics<S>
where
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let open = self.open.clone_guard();
        let io = CountingIo::new(
            io,
            open.handles.read_bytes.clone(),
            open.handles.write_bytes.clone(),
        );
        let conn = self.inner.call(BoxIo::new(io));
        Box::pin(async move {
            let result = conn.await;
            drop(open);
            result
        })
    }
}

/// An open connection's metrics: counted open until the last guard drops. It holds its
/// target's label sets, which stay while a connection to the target is open.
struct OpenConn {
    handles: TcpHandles,
    _target: Arc<TargetMetrics>,
    /// Whether this guard counts the connection (one guard does).
    counts: bool,
}

impl OpenConn {
    fn new(m: &Metrics, labels: &TcpLabels) -> Self {
        let target = m.target(labels.direction, labels.target_addr);
        let handles = target.tcp(labels);
        handles.open_total.inc();
        handles.open_connections.inc();
        OpenConn {
            handles,
            _target: target,
            counts: true,
        }
    }

    /// Moves the counting to a new guard (the one the connection's future holds).
    fn clone_guard(&mut self) -> Self {
        let counts = std::mem::replace(&mut self.counts, false);
        OpenConn {
            handles: self.handles.clone(),
            _target: self._target.clone(),
            counts,
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        if self.counts {
            self.handles.open_connections.dec();
            self.handles.close_total.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svc::NewFn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Target(TcpLabels);
    impl Param<TcpLabels> for Target {
        fn param(&self) -> TcpLabels {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn a_connection_counts_open_then_closed_with_its_bytes() {
        let metrics = Metrics::new(10, false);
        let echo = NewFn(|_: Target| {
            tower::service_fn(|mut io: BoxIo| -> ConnFuture {
                Box::pin(async move {
                    let mut buf = [0; 4];
                    io.read_exact(&mut buf).await?;
                    io.write_all(b"pong!").await?;
                    Ok(())
                })
            })
        });
        let stack = tower::Layer::layer(&NewTcpMetrics::layer(metrics.clone()), echo);
        let labels = TcpLabels {
            direction: Direction::Inbound,
            target_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).await.unwrap();
            got
        });
        let (stream, _) = listener.accept().await.unwrap();
        let svc = stack.new_service(Target(labels.clone()));
        assert_eq!(metrics.tcp_open_connections.get_or_create(&labels).get(), 1);
        svc.oneshot(BoxIo::new(stream)).await.unwrap();
        assert_eq!(client.await.unwrap(), "pong!");
        assert_eq!(metrics.tcp_open_connections.get_or_create(&labels).get(), 0);
        assert_eq!(metrics.tcp_close_total.get_or_create(&labels).get(), 1);
        assert_eq!(metrics.tcp_read_bytes_total.get_or_create(&labels).get(), 4);
        assert_eq!(
            metrics.tcp_write_bytes_total.get_or_create(&labels).get(),
            5
        );
    }
}
