//! Connections to upstream servers: a keep-alive pool for HTTP/1, one multiplexed connection per
//! target for HTTP/2, and a fresh connection for each upgrade (WebSocket) or CONNECT tunnel.
//!
//! To a meshed endpoint (one whose discovery record names its identity) every connection is
//! mutual TLS with that identity as server name: requests go on one HTTP/2 connection per
//! endpoint, upgrades and tunnels on HTTP/1.1 connections of their own.

use crate::{
    connect::Connect,
    identity::{Alpn, LocalIdentity},
};
use futures_util::future::BoxFuture;
use hyper::{body::Incoming, client::conn, Request, Response, Uri};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {target}: {source}")]
    Connect {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("connecting to {target}: timed out after {timeout:?}")]
    ConnectTimeout {
        target: SocketAddr,
        timeout: Duration,
    },
    #[error("mutual TLS with {target} as {server_id}: {source}")]
    Tls {
        target: SocketAddr,
        server_id: Arc<str>,
        source: io::Error,
    },
    #[error("HTTP handshake with {target}: {source}")]
    Handshake {
        target: SocketAddr,
        source: hyper::Error,
    },
    #[error("forwarding to {target}: {source}")]
    Request {
        target: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<crate::connect::ConnectError> for UpstreamError {
    fn from(e: crate::connect::ConnectError) -> Self {
        use crate::connect::ConnectError;
        match e {
            ConnectError::Io { target, source } => UpstreamError::Connect { target, source },
            ConnectError::Timeout { target, timeout } => {
                UpstreamError::ConnectTimeout { target, timeout }
            }
        }
    }
}

impl UpstreamError {
    /// The `error` metric label for this failure.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect { .. } | Self::Handshake { .. } => "connect",
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::Tls { .. } => "tls",
            Self::Request { .. } => "upstream",
        }
    }
}

/// The one HTTP/2 connection to a target, opened by whichever request needs it first.
type Http2Slot = Arc<tokio::sync::Mutex<Option<conn::http2::SendRequest<Incoming>>>>;

/// A target and the identity it must prove (`None`: plaintext).
type Http2Key = (SocketAddr, Option<Arc<str>>);

/// The proxy's upstream connections, shared by every client connection of one direction.
pub struct Upstream {
    h1: Client<PoolConnector, Incoming>,
    h2: Mutex<HashMap<Http2Key, Http2Slot>>,
    connect: Connect,
    identity: Option<Arc<LocalIdentity>>,
}

impl Upstream {
    /// Upstream connections, all opened with `connect`; with `identity`, meshed endpoints are
    /// reached over mutual TLS.
    pub fn new(
        connect: Connect,
        pool_idle_timeout: Duration,
        identity: Option<Arc<LocalIdentity>>,
    ) -> Self {
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle_timeout)
            .pool_max_idle_per_host(128)
            .set_host(false)
            .build(PoolConnector(connect));
        Self {
            h1,
            h2: Mutex::default(),
            connect,
            identity,
        }
    }

    /// Sends an HTTP/1 request over a pooled keep-alive connection to `target`. The request's URI
    /// names the target (the pool's key); its `Host` header is sent as the client wrote it.
    pub async fn send_http1(
        &self,
        target: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.h1.request(req).await.map_err(|e| {
            if e.is_connect() {
                let source = io::Error::other(error_chain(&e));
                UpstreamError::Connect { target, source }
            } else {
                UpstreamError::Request {
                    target,
                    source: e.into(),
                }
            }
        })
    }

    /// Sends an HTTP/2 request on the one multiplexed connection to `target` (mutual TLS when
    /// `server_id` is given), opening it first when there is none or it closed.
    pub async fn send_http2(
        &self,
        target: SocketAddr,
        server_id: Option<&Arc<str>>,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.http2_sender(target, server_id).await?;
        let request = |e: hyper::Error| UpstreamError::Request {
            target,
            source: e.into(),
        };
        sender.ready().await.map_err(request)?;
        sender.send_request(req).await.map_err(request)
    }

    /// Sends an HTTP/1 request that asks to upgrade (WebSocket) or tunnel (CONNECT) on a
    /// connection of its own (mutual TLS when `server_id` is given), which the upgrade then takes
    /// over.
    pub async fn send_upgrade(
        &self,
        target: SocketAddr,
        server_id: Option<&Arc<str>>,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match server_id {
            None => http1_handshake(self.connect(target).await?, target).await?,
            Some(id) => {
                let io = self.connect_tls(target, id, Alpn::Http1).await?;
                http1_handshake(io, target).await?
            }
        };
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Request {
                target,
                source: e.into(),
            })
    }

    async fn http2_sender(
        &self,
        target: SocketAddr,
        server_id: Option<&Arc<str>>,
    ) -> Result<conn::http2::SendRequest<Incoming>, UpstreamError> {
        // A poisoned lock only means a thread panicked while holding it; the map stays valid.
        let slot = self
            .h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((target, server_id.cloned()))
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = match server_id {
            None => http2_handshake(self.connect(target).await?, target).await?,
            Some(id) => {
                http2_handshake(self.connect_tls(target, id, Alpn::H2).await?, target).await?
            }
        };
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Opens a TCP connection to `target` within the connect timeout (and with the socket mark).
    pub async fn connect(&self, target: SocketAddr) -> Result<TcpStream, UpstreamError> {
        Ok(self.connect.connect(target).await?)
    }

    /// Opens mutual TLS to the proxy of a meshed endpoint, which must prove `server_id`; the TLS
    /// handshake gets a connect timeout of its own.
    pub async fn connect_tls(
        &self,
        target: SocketAddr,
        server_id: &Arc<str>,
        alpn: Alpn,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let tls_error = |source| UpstreamError::Tls {
            target,
            server_id: server_id.clone(),
            source,
        };
        let Some(identity) = &self.identity else {
            return Err(tls_error(io::Error::other("identity is disabled")));
        };
        let io = self.connect(target).await?;
        let handshake = identity.connect(io, server_id, alpn);
        let timeout = self.connect.timeout;
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(source)) => Err(tls_error(source)),
            Err(_) => Err(tls_error(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("handshake timed out after {timeout:?}"),
            ))),
        }
    }
}

async fn http2_handshake<I>(
    io: I,
    target: SocketAddr,
) -> Result<conn::http2::SendRequest<Incoming>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| UpstreamError::Handshake { target, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%target, %error, "HTTP/2 upstream connection failed");
        }
    });
    Ok(sender)
}

async fn http1_handshake<I>(
    io: I,
    target: SocketAddr,
) -> Result<conn::http1::SendRequest<Incoming>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| UpstreamError::Handshake { target, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%target, %error, "upgrade connection failed");
        }
    });
    Ok(sender)
}

/// The HTTP/1 pool's connector: [`Connect`] to the target that the request's URI names
/// (`http://IP:PORT/…`, set by the forwarder).
#[derive(Clone, Copy, Debug)]
pub struct PoolConnector(Connect);

impl tower::Service<Uri> for PoolConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.0;
        Box::pin(async move {
            let target: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{uri} does not name an IP address and port"),
                    )
                })?;
            // `send_http1` adds the target; only the cause is wanted here.
            match connect.connect(target).await {
                Ok(io) => Ok(TokioIo::new(io)),
                Err(crate::connect::ConnectError::Io { source, .. }) => Err(source),
                Err(e) => Err(io::Error::new(io::ErrorKind::TimedOut, e.to_string())),
            }
        })
    }
}

/// An error's message followed by its sources', `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
