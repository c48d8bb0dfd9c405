//! The upstream clients, at the bottom of both stacks: one [`Client`] per endpoint sends a
//! request there on a pooled keep-alive HTTP/1 connection, on the endpoint's one multiplexed
//! HTTP/2 connection, or, for an upgrade (WebSocket) or a CONNECT tunnel, on a connection of its
//! own that the two sides are spliced onto.
//!
//! To a meshed endpoint (one whose discovery record names its identity) every connection is
//! mutual TLS with that identity as server name: requests go on its one HTTP/2 connection,
//! upgrades and tunnels on HTTP/1.1 connections of their own. The HTTP/2 connection belongs to
//! the endpoint's client and closes when the endpoint is forgotten.

use super::{errors::InvalidUri, pool::Pool};
use crate::{
    connect::Connect,
    drain::Drain,
    identity::{Alpn, LocalIdentity},
    svc::{lock, BoxBody, BoxError, NewService, Param},
};
use futures_util::future::BoxFuture;
use http::{StatusCode, Version};
use hyper::{body::Incoming, client::conn, Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    io,
    net::SocketAddr,
    sync::Arc,
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
    /// Whether sending the request failed because its body did (hyper's "error from user's
    /// Body stream"): the client broke it off or sent it malformed, not the upstream's fault.
    pub fn request_body_failed(&self) -> bool {
        match self {
            Self::Request { source, .. } => source
                .downcast_ref::<hyper::Error>()
                .is_some_and(|e| e.is_user() && std::error::Error::source(e).is_some()),
            _ => false,
        }
    }

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

/// What a client needs of its endpoint: where it is, and the identity its proxy must prove
/// (`None`: plaintext).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointAddr {
    pub addr: SocketAddr,
    pub server_id: Option<Arc<str>>,
}

/// Makes each endpoint's client; shared by every endpoint of one direction.
#[derive(Clone)]
pub struct NewClient {
    shared: Arc<Shared>,
}

struct Shared {
    /// How long an idle HTTP/1 connection is kept.
    pool_idle_timeout: Duration,
    connect: Connect,
    identity: Option<Arc<LocalIdentity>>,
    /// Upgraded connections and tunnels are in-flight work that shutdown waits for.
    tunnels: Drain,
}

/// An endpoint's HTTP/2 connection and its number.
type H2 = (u64, conn::http2::SendRequest<BoxBody>);

/// Sends requests to one endpoint.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Endpoint>,
}

struct Endpoint {
    target: EndpointAddr,
    /// The endpoint's idle keep-alive HTTP/1 connections.
    h1: Arc<Pool>,
    /// The endpoint's one HTTP/2 connection, opened by whichever request needs it first, and
    /// numbered, so that a request that finds it going away forgets this one and no newer.
    h2: tokio::sync::Mutex<Option<H2>>,
    /// The same connection, read without waiting while it is open.
    h2_open: std::sync::Mutex<Option<H2>>,
    /// The number of the next HTTP/2 connection.
    h2_next: std::sync::atomic::AtomicU64,
    shared: Arc<Shared>,
}

impl NewClient {
    /// Clients whose connections are all opened with `connect`; with `identity`, meshed
    /// endpoints are reached over mutual TLS.
    pub fn new(
        connect: Connect,
        pool_idle_timeout: Duration,
        identity: Option<Arc<LocalIdentity>>,
        tunnels: Drain,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool_idle_timeout,
                connect,
                identity,
                tunnels,
            }),
        }
    }

    /// Opens mutual TLS to the proxy of a meshed endpoint (opaque forwarding shares it).
    pub async fn connect_tls(
        &self,
        target: SocketAddr,
        server_id: &Arc<str>,
        alpn: Alpn,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        self.shared.connect_tls(target, server_id, alpn).await
    }

    /// Opens a plain TCP connection (opaque forwarding).
    pub async fn connect(&self, target: SocketAddr) -> Result<TcpStream, UpstreamError> {
        self.shared.connect(target).await
    }
}

impl<T: Param<EndpointAddr>> NewService<T> for NewClient {
    type Service = Client;
    fn new_service(&self, target: T) -> Client {
        let target: EndpointAddr = target.param();
        Client {
            inner: Arc::new(Endpoint {
                h1: Pool::new(self.shared.pool_idle_timeout, MAX_IDLE_HTTP1),
                target,
                h2: tokio::sync::Mutex::new(None),
                h2_open: std::sync::Mutex::new(None),
                h2_next: std::sync::atomic::AtomicU64::new(0),
                shared: self.shared.clone(),
            }),
        }
    }
}

impl tower::Service<Request<BoxBody>> for Client {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let endpoint = self.inner.clone();
        Box::pin(async move {
            if is_tunnel(&req) {
                Ok(endpoint.send_tunnel(req).await?.map(BoxBody::new))
            } else if req.version() == Version::HTTP_2 {
                Ok(endpoint.send_http2(req).await?.map(BoxBody::new))
            } else {
                Ok(endpoint.send_http1(req).await?.map(BoxBody::new))
            }
        })
    }
}

/// Whether an HTTP/1 request switches protocols or opens a tunnel: it then needs a connection
/// of its own.
pub fn is_tunnel<B>(req: &Request<B>) -> bool {
    req.version() != Version::HTTP_2
        && (req.method() == http::Method::CONNECT || super::headers::wants_upgrade(req.headers()))
}

impl Endpoint {
    /// Sends an HTTP/1 request over a pooled keep-alive connection, in origin form; its `Host`
    /// header is sent as the client wrote it. A request that could not be sent on a pooled
    /// connection (the server closed it meanwhile) goes on another, or on a new one.
    async fn send_http1(
        &self,
        mut req: Request<BoxBody>,
    ) -> Result<Response<super::pool::PooledBody>, BoxError> {
        let target = self.target.addr;
        let uri = std::mem::take(req.uri_mut());
        *req.uri_mut() = origin_form(uri).map_err(|_| InvalidUri)?;
        let failed = |source: hyper::Error| UpstreamError::Request {
            target,
            source: source.into(),
        };
        loop {
            let mut conn = match self.h1.checkout() {
                Some(conn) => conn,
                None => self.open_http1().await?,
            };
            if let Err(e) = conn.sender.ready().await {
                if conn.reused() {
                    continue;
                }
                return Err(failed(e).into());
            }
            match conn.sender.try_send_request(req).await {
                Ok(rsp) => return Ok(self.h1.release_on_end(conn, rsp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if conn.reused() => req = unsent,
                    _ => return Err(failed(e.into_error()).into()),
                },
            }
        }
    }

    /// Opens a new HTTP/1 connection of the pool (mutual TLS to a meshed endpoint).
    async fn open_http1(&self) -> Result<super::pool::Pooled, UpstreamError> {
        let target = self.target.addr;
        let handshake = |source| UpstreamError::Handshake { target, source };
        Ok(match &self.target.server_id {
            None => {
                let io = self.shared.connect(target).await?;
                let (sender, conn) = super::pool::handshake(io).await.map_err(handshake)?;
                self.h1.spawn(sender, conn, target)
            }
            Some(id) => {
                let io = self.shared.connect_tls(target, id, Alpn::Http1).await?;
                let (sender, conn) = super::pool::handshake(io).await.map_err(handshake)?;
                self.h1.spawn(sender, conn, target)
            }
        })
    }

    /// Sends an HTTP/2 request on the endpoint's one multiplexed connection, opening it first
    /// when there is none or it closed.
    async fn send_http2(&self, req: Request<BoxBody>) -> Result<Response<Incoming>, BoxError> {
        let target = self.target.addr;
        let request = |e: hyper::Error| UpstreamError::Request {
            target,
            source: e.into(),
        };
        let (mut n, mut sender) = self.http2_sender().await?;
        if sender.ready().await.is_err() {
            // The connection closed, or is going away (the server said GOAWAY: it finishes
            // what it has, takes nothing new), after it was taken: open another, once.
            self.forget_http2(n).await;
            (n, sender) = self.http2_sender().await?;
            if let Err(e) = sender.ready().await {
                self.forget_http2(n).await;
                return Err(request(e).into());
            }
        }
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp),
            Err(mut e) => match e.take_message() {
                // The connection closed or went away before the request was written (a server
                // that drains, or revokes a client's authorization, says GOAWAY): nothing of
                // it reached the server, so it goes once more on a new connection.
                Some(req) => {
                    self.forget_http2(n).await;
                    let (_, mut sender) = self.http2_sender().await?;
                    sender.ready().await.map_err(request)?;
                    Ok(sender.send_request(req).await.map_err(request)?)
                }
                None => Err(request(e.into_error()).into()),
            },
        }
    }

    /// Forgets HTTP/2 connection `n`, if it is still the endpoint's.
    async fn forget_http2(&self, n: u64) {
        let mut slot = self.h2.lock().await;
        for held in [&mut *slot, &mut *lock(&self.h2_open)] {
            if held.as_ref().is_some_and(|(m, _)| *m == n) {
                *held = None;
            }
        }
    }

    async fn http2_sender(&self) -> Result<H2, UpstreamError> {
        if let Some(open) = lock(&self.h2_open).as_ref().filter(|(_, s)| !s.is_closed()) {
            return Ok(open.clone());
        }
        let mut slot = self.h2.lock().await;
        if let Some(open) = slot.as_ref().filter(|(_, s)| !s.is_closed()) {
            return Ok(open.clone());
        }
        let target = self.target.addr;
        let sender = match &self.target.server_id {
            None => http2_handshake(self.shared.connect(target).await?, target).await?,
            Some(id) => {
                let io = self.shared.connect_tls(target, id, Alpn::H2).await?;
                http2_handshake(io, target).await?
            }
        };
        let n = self
            .h2_next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot = Some((n, sender.clone()));
        *lock(&self.h2_open) = Some((n, sender.clone()));
        Ok((n, sender))
    }

    /// Forwards a WebSocket upgrade or a CONNECT on a connection of its own; when the server
    /// accepts, both sides are spliced together until either closes.
    async fn send_tunnel(&self, mut req: Request<BoxBody>) -> Result<Response<Incoming>, BoxError> {
        let target = self.target.addr;
        let connect = req.method() == http::Method::CONNECT;
        let client = hyper::upgrade::on(&mut req);
        let mut sender = match &self.target.server_id {
            None => http1_handshake(self.shared.connect(target).await?, target).await?,
            Some(id) => {
                let io = self.shared.connect_tls(target, id, Alpn::Http1).await?;
                http1_handshake(io, target).await?
            }
        };
        let mut rsp = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Request {
                target,
                source: e.into(),
            })?;
        let accepted = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (connect && rsp.status().is_success());
        if accepted {
            let server = hyper::upgrade::on(&mut rsp);
            self.shared.tunnels.spawn(async move {
                match tokio::try_join!(client, server) {
                    Ok((client, server)) => {
                        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                        if let Err(error) =
                            tokio::io::copy_bidirectional(&mut client, &mut server).await
                        {
                            tracing::debug!(%target, %error, "tunnel closed with an error");
                        }
                    }
                    Err(error) => tracing::debug!(%target, %error, "upgrade failed"),
                }
            });
        }
        Ok(rsp)
    }
}

impl Shared {
    /// Opens a TCP connection to `target` within the connect timeout (and with the socket mark).
    async fn connect(&self, target: SocketAddr) -> Result<TcpStream, UpstreamError> {
        Ok(self.connect.connect(target).await?)
    }

    /// Opens mutual TLS to the proxy of a meshed endpoint, which must prove `server_id`; the TLS
    /// handshake gets a connect timeout of its own.
    async fn connect_tls(
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

/// `/path?query`: what an HTTP/1 request line names on a connection to the endpoint itself.
fn origin_form(uri: Uri) -> Result<Uri, http::Error> {
    let path = uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Ok(Uri::from_parts({
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(path);
        parts
    })?)
}

/// How many response bytes one stream of an upstream HTTP/2 connection may have in flight to
/// the proxy before the proxy's client reads them (hyper's default: 2 MiB).
pub const HTTP2_STREAM_WINDOW: u32 = 128 << 10;

/// The same for the whole connection (hyper's default: 5 MiB): as many stream windows as one
/// client connection may have streams ([`HTTP2_MAX_CONCURRENT_STREAMS`]), 25 MiB. Streams whose
/// clients do not read hold their window's worth of the connection's; with hyper's defaults three
/// such streams filled it, and every other client's responses on the shared connection (the
/// inbound proxy's one connection to its application) waited with them (issue 17). Now no one
/// client connection can fill it alone; clients that together hold more stalled streams than it
/// has windows still can.
///
/// [`HTTP2_MAX_CONCURRENT_STREAMS`]: super::server::HTTP2_MAX_CONCURRENT_STREAMS
pub const HTTP2_CONNECTION_WINDOW: u32 =
    HTTP2_STREAM_WINDOW * super::server::HTTP2_MAX_CONCURRENT_STREAMS;

async fn http2_handshake<I>(
    io: I,
    target: SocketAddr,
) -> Result<conn::http2::SendRequest<BoxBody>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
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
) -> Result<conn::http1::SendRequest<BoxBody>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = super::pool::handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake { target, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%target, %error, "upgrade connection failed");
        }
    });
    Ok(sender)
}

/// The most idle HTTP/1 connections an endpoint keeps.
const MAX_IDLE_HTTP1: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::errors::Failure;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
    };
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    /// An HTTP/1 and HTTP/2 server on 127.0.0.1 that answers with what it received (version,
    /// URI, `Host`), and how many connections it accepted.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let echo = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let host = req.headers().get(http::header::HOST);
                    let host = host.map_or("-", |h| h.to_str().unwrap_or("?"));
                    let seen = format!("{:?} {} {host}", req.version(), req.uri());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
                });
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(io), echo).await;
                });
            }
        });
        (addr, accepted)
    }

    /// The client of the endpoint at `addr`, plaintext.
    fn client(addr: SocketAddr) -> Client {
        let connect = Connect {
            timeout: Duration::from_secs(10),
            mark: None,
        };
        let new_client = NewClient::new(connect, Duration::from_secs(60), None, Drain::new());
        new_client.new_service(EndpointAddr {
            addr,
            server_id: None,
        })
    }

    fn request(version: Version, uri: &str, host: Option<&str>) -> Request<BoxBody> {
        let mut req = Request::builder().version(version).uri(uri);
        if let Some(host) = host {
            req = req.header(http::header::HOST, host);
        }
        req.body(BoxBody::empty()).unwrap()
    }

    /// What the server says it received.
    async fn send(client: &Client, req: Request<BoxBody>) -> String {
        let rsp = client.clone().oneshot(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http1_requests_go_to_the_endpoint_in_origin_form_with_their_host() {
        let (addr, _) = server().await;
        let client = client(addr);
        for uri in ["http://web.demo:8080/path?q=1", "/path?q=1"] {
            let req = request(Version::HTTP_11, uri, Some("web.demo:8080"));
            assert_eq!(
                send(&client, req).await,
                "HTTP/1.1 /path?q=1 web.demo:8080",
                "{uri}"
            );
        }
        let req = request(
            Version::HTTP_11,
            "http://web.demo:8080",
            Some("web.demo:8080"),
        );
        assert_eq!(send(&client, req).await, "HTTP/1.1 / web.demo:8080");
    }

    #[tokio::test]
    async fn http2_requests_to_one_endpoint_share_one_connection() {
        let (addr, accepted) = server().await;
        let client = client(addr);
        let req = || request(Version::HTTP_2, "http://web.demo:8080/x", None);
        let (a, b, c) = tokio::join!(
            send(&client, req()),
            send(&client, req()),
            send(&client, req())
        );
        for seen in [a, b, c] {
            assert_eq!(seen, "HTTP/2.0 http://web.demo:8080/x -");
        }
        send(&client, req()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let client = client(addr);
        for (version, uri) in [
            (Version::HTTP_11, "/x"),
            (Version::HTTP_2, "http://web.demo:8080/x"),
        ] {
            let req = request(version, uri, Some("web.demo:8080"));
            let err = client.clone().oneshot(req).await.unwrap_err();
            let upstream = err
                .downcast_ref::<UpstreamError>()
                .expect("an UpstreamError");
            assert!(
                matches!(upstream, UpstreamError::Connect { target, .. } if *target == addr),
                "{version:?}: {upstream:?}"
            );
            assert_eq!(upstream.label(), "connect");
            let failure = Failure::of(&*err);
            assert_eq!(
                (failure.status, failure.label),
                (StatusCode::BAD_GATEWAY, "connect")
            );
        }
    }
}
