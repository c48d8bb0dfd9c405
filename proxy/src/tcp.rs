//! Opaque TCP forwarding, at the bottom of both stacks' opaque path: connect to the endpoint
//! (mutual TLS to a meshed one), then copy bytes both ways, each direction's end (half-close)
//! passed on. An unreachable upstream is a reset for the client, as if it had dialed the
//! upstream itself.

use crate::{
    balance::{BalanceConfig, InFlight},
    http::client::{NewClient, UpstreamError},
    identity::Alpn,
    metrics::TcpLabels,
    svc::{reset, BoxError, BoxIo, ConnFuture, NewService, Param},
};
use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where an opaque connection goes.
pub struct TcpEndpoint {
    pub addr: SocketAddr,
    /// The identity the endpoint's proxy must prove (mutual TLS), if it is meshed.
    pub server_id: Option<Arc<str>>,
    pub labels: TcpLabels,
    /// The connection counted as load on its endpoint (discovered endpoints).
    pub in_flight: Option<(InFlight, Arc<BalanceConfig>)>,
    /// Set when there is nowhere to go (a service without endpoints): the connection is reset.
    pub unavailable: Option<String>,
}

impl Param<TcpLabels> for TcpEndpoint {
    fn param(&self) -> TcpLabels {
        self.labels.clone()
    }
}

/// Forwards each connection to its [`TcpEndpoint`].
#[derive(Clone)]
pub struct NewForward {
    client: NewClient,
}

impl NewForward {
    pub fn new(client: NewClient) -> Self {
        Self { client }
    }
}

pub struct Forward {
    target: Option<TcpEndpoint>,
    client: NewClient,
}

impl NewService<TcpEndpoint> for NewForward {
    type Service = Forward;
    fn new_service(&self, target: TcpEndpoint) -> Forward {
        Forward {
            target: Some(target),
            client: self.client.clone(),
        }
    }
}

impl tower::Service<BoxIo> for Forward {
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
        let client = self.client.clone();
        Box::pin(async move {
            if let Some(name) = &target.unavailable {
                tracing::info!(%name, "no endpoints; resetting the connection");
                reset(&io);
                return Ok(());
            }
            let addr = target.addr;
            let mut in_flight = target.in_flight;
            let mut record = |success| {
                if let Some((in_flight, config)) = in_flight.as_mut() {
                    in_flight.record(config, success, Instant::now());
                }
            };
            let result = match &target.server_id {
                None => match client.connect(addr).await {
                    Ok(server) => {
                        record(true);
                        copy(&mut io, server, addr).await
                    }
                    Err(e) => {
                        record(false);
                        Err(TcpError::Connect(e))
                    }
                },
                Some(id) => match client.connect_tls(addr, id, Alpn::None).await {
                    Ok(server) => {
                        record(true);
                        copy(&mut io, server, addr).await
                    }
                    Err(e) => {
                        record(false);
                        Err(TcpError::Connect(e))
                    }
                },
            };
            // The endpoint counts the connection as load until it closes.
            drop(in_flight);
            if let Err(error) = result {
                tracing::info!(%error, "TCP forwarding failed");
                if let TcpError::Connect(_) = error {
                    reset(&io);
                }
            }
            Ok(())
        })
    }
}

/// Copies bytes between `client` and `server` until both directions end.
pub async fn copy<I, S>(
    client: &mut I,
    mut server: S,
    target: SocketAddr,
) -> Result<(u64, u64), TcpError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // copy_bidirectional shuts down each write side when the other side's read ends, so a
    // client's half-close reaches the server while the server's answer still flows back.
    tokio::io::copy_bidirectional(client, &mut server)
        .await
        .map_err(|source| TcpError::Io { target, source })
}

/// Why an opaque connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error(transparent)]
    Connect(UpstreamError),
    #[error("copying to and from {target}: {source}")]
    Io {
        target: SocketAddr,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::Connect;

    /// Connects to `target` and copies bytes between it and `client` until both directions end,
    /// returning the bytes copied (client to server, server to client). When the upstream cannot be
    /// reached the error is returned and `client` is left to the caller, which resets it.
    async fn forward<I>(
        client: &mut I,
        target: SocketAddr,
        connect: &Connect,
    ) -> Result<(u64, u64), TcpError>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let server = connect
            .connect(target)
            .await
            .map_err(|e| TcpError::Connect(e.into()))?;
        copy(client, server, target).await
    }

    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const CONNECT: Connect = Connect {
        timeout: Duration::from_secs(5),
        mark: None,
    };

    #[tokio::test]
    async fn half_close_reaches_the_server_and_its_reply_comes_back() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut io, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap(); // ends only on the client's half-close
            io.write_all(&got).await.unwrap();
            io.write_all(b"!").await.unwrap();
        });
        let (mut client, mut proxy_side) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(async move { forward(&mut proxy_side, target, &CONNECT).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert_eq!(reply, "ping!");
        echo.await.unwrap();
        assert_eq!(proxy.await.unwrap().unwrap(), (4, 5));
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let (_client, mut proxy_side) = tokio::io::duplex(64);
        let err = forward(&mut proxy_side, target, &CONNECT)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("connection refused"),
            "{err}"
        );
    }
}
