//! The HTTP server at the top of both stacks' HTTP path: serves a connection whose protocol was
//! detected as HTTP/1 or HTTP/2 with hyper, and hands each request, its body boxed, to the
//! connection's request stack. On shutdown, in-flight requests finish and the connection is
//! closed gracefully.

use super::errors::Failure;
use crate::{
    detect::Protocol,
    drain::Drain,
    metrics::Tls,
    svc::{BoxBody, BoxError, BoxIo, ConnFuture, NewService, Param},
    tap::{ConnTap, Taps},
    transport::{ClientAddr, OrigDst},
};
use futures_util::{future::BoxFuture, FutureExt};
use http::{Request, Response};
use hyper::{body::Incoming, server::conn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::ServiceExt;

/// Limits of the HTTP servers.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// What every request of a connection knows of it.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    /// The identity the client proved over mutual TLS (inbound).
    pub client_id: Option<Arc<str>>,
    /// The connection's numbering of its tapped requests.
    pub tap: ConnTap,
}

/// A request's extension: when the server received it, and on which connection.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub conn: Arc<ConnInfo>,
}

/// A connection's own reason to close gracefully, besides the proxy's shutdown: an inbound
/// connection whose authorization was revoked. The server then finishes the requests in flight
/// and takes no more. Most targets have none ([`CloseSignal::never`]).
#[derive(Clone, Default)]
pub struct CloseSignal(Option<Arc<CloseFn>>);

type CloseFn = dyn Fn() -> BoxFuture<'static, ()> + Send + Sync;

impl CloseSignal {
    /// A signal that completes when the future `make` returns does.
    pub fn new(make: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(make)))
    }

    pub fn never() -> Self {
        Self(None)
    }

    /// Completes when the connection should close.
    pub fn wait(&self) -> BoxFuture<'static, ()> {
        match &self.0 {
            Some(make) => make(),
            None => Box::pin(futures_util::future::pending()),
        }
    }
}

/// Serves HTTP connections with the request stack `N` makes for each.
#[derive(Clone)]
pub struct NewServeHttp<N> {
    settings: HttpSettings,
    drain: Drain,
    taps: Taps,
    inner: N,
}

impl<N> NewServeHttp<N> {
    pub fn layer(
        settings: HttpSettings,
        drain: Drain,
        taps: Taps,
    ) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            settings: settings.clone(),
            drain: drain.clone(),
            taps: taps.clone(),
            inner,
        })
    }
}

pub struct ServeHttp<S> {
    protocol: Protocol,
    close: CloseSignal,
    conn: Arc<ConnInfo>,
    settings: HttpSettings,
    drain: Drain,
    service: S,
}

impl<T, N, S> NewService<T> for NewServeHttp<N>
where
    T: Param<Protocol> + Param<ClientAddr> + Param<OrigDst> + Param<Tls> + Param<CloseSignal>,
    N: NewService<T, Service = S>,
{
    type Service = ServeHttp<S>;
    fn new_service(&self, target: T) -> ServeHttp<S> {
        let ClientAddr(client) = target.param();
        let OrigDst(orig_dst) = target.param();
        let client_id = match target.param() {
            Tls::Established(id) => Some(id),
            Tls::NoIdentity(_) => None,
        };
        ServeHttp {
            protocol: target.param(),
            close: target.param(),
            conn: Arc::new(ConnInfo {
                client,
                orig_dst,
                client_id,
                tap: self.taps.connection(),
            }),
            settings: self.settings.clone(),
            drain: self.drain.clone(),
            service: self.inner.new_service(target),
        }
    }
}

impl<S> tower::Service<BoxIo> for ServeHttp<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        self.serve(io)
    }
}

impl<S> ServeHttp<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// Serves one connection, as [`tower::Service::call`] does a socket's: any byte stream
    /// will do (the fuzz targets serve connections held in memory).
    pub fn serve<I>(&mut self, io: I) -> ConnFuture
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let service = self.service.clone();
        let info = self.conn.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let req = req.map(BoxBody::new);
            let mut req = req;
            req.extensions_mut().insert(Received {
                at: Instant::now(),
                conn: info.clone(),
            });
            let rsp: BoxFuture<'static, Result<Response<BoxBody>, Infallible>> =
                Box::pin(service.clone().oneshot(req).map(|result| {
                    // The stack answers its errors itself (`errors::RespondLayer`); one that
                    // still gets here is answered the same way.
                    Ok(result.unwrap_or_else(|error| Failure::of(&*error).response(false)))
                }));
            rsp
        });
        let io = TokioIo::new(io);
        let drain = self.drain.clone();
        let close = self.close.wait();
        let settings = self.settings.clone();
        let http2 = self.protocol == Protocol::HTTP2;
        Box::pin(async move {
            if http2 {
                let mut builder = conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_header_list_size(settings.max_header_bytes.try_into().unwrap_or(u32::MAX));
                let conn = builder.serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res?,
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await?
                    }
                    () = close => {
                        conn.as_mut().graceful_shutdown();
                        conn.await?
                    }
                }
            } else {
                let mut builder = conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(settings.header_read_timeout)
                    .max_buf_size(settings.max_header_bytes);
                let conn = builder.serve_connection(io, service).with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res?,
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await?
                    }
                    () = close => {
                        conn.as_mut().graceful_shutdown();
                        conn.await?
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{Metrics, NO_TLS_DISABLED},
        svc::NewFn,
        tap::TapConfig,
    };
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn as client;
    use tokio::net::{TcpListener, TcpStream};

    /// A detected HTTP connection.
    #[derive(Clone)]
    struct Conn {
        protocol: Protocol,
        client: SocketAddr,
        orig_dst: SocketAddr,
        tls: Tls,
        close: CloseSignal,
    }

    impl Param<CloseSignal> for Conn {
        fn param(&self) -> CloseSignal {
            self.close.clone()
        }
    }

    impl Param<Protocol> for Conn {
        fn param(&self) -> Protocol {
            self.protocol
        }
    }

    impl Param<ClientAddr> for Conn {
        fn param(&self) -> ClientAddr {
            ClientAddr(self.client)
        }
    }

    impl Param<OrigDst> for Conn {
        fn param(&self) -> OrigDst {
            OrigDst(self.orig_dst)
        }
    }

    impl Param<Tls> for Conn {
        fn param(&self) -> Tls {
            self.tls.clone()
        }
    }

    fn orig_dst() -> SocketAddr {
        "10.96.0.10:80".parse().unwrap()
    }

    /// A request stack that answers with what it knows of the request: its version, its
    /// connection (client, original destination, client identity) and its body; `/fail` fails.
    async fn echo(req: Request<BoxBody>) -> Result<Response<BoxBody>, BoxError> {
        if req.uri().path() == "/fail" {
            return Err("the stack failed".into());
        }
        let version = req.version();
        let conn = req
            .extensions()
            .get::<Received>()
            .expect("the server notes where a request arrived")
            .conn
            .clone();
        let body = req.into_body().collect().await?.to_bytes();
        let seen = format!(
            "{version:?} {} {} {:?} {}",
            conn.client,
            conn.orig_dst,
            conn.client_id,
            String::from_utf8_lossy(&body)
        );
        Ok(Response::new(BoxBody::new(Full::new(Bytes::from(seen)))))
    }

    /// A connection from a client on 127.0.0.1 to the server, served as `protocol` with
    /// `tls`: the client's end and its address, and the connection's future.
    async fn connect(
        protocol: Protocol,
        tls: Tls,
        drain: &Drain,
    ) -> (
        TcpStream,
        SocketAddr,
        tokio::task::JoinHandle<Result<(), BoxError>>,
    ) {
        connect_closing(protocol, tls, drain, CloseSignal::never()).await
    }

    async fn connect_closing(
        protocol: Protocol,
        tls: Tls,
        drain: &Drain,
        close: CloseSignal,
    ) -> (
        TcpStream,
        SocketAddr,
        tokio::task::JoinHandle<Result<(), BoxError>>,
    ) {
        let settings = HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        };
        let taps = Taps::new(&TapConfig::default(), None, Metrics::new(10, false));
        let layer = NewServeHttp::layer(settings, drain.clone(), taps);
        let serve = tower::Layer::layer(&layer, NewFn(|_: Conn| tower::service_fn(echo)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, client_addr) = listener.accept().await.unwrap();
        let target = Conn {
            protocol,
            client: client_addr,
            orig_dst: orig_dst(),
            tls,
            close,
        };
        let conn = tokio::spawn(serve.new_service(target).oneshot(BoxIo::new(io)));
        (client, client_addr, conn)
    }

    /// Sends `path` with `body` over `io` in the connection's protocol.
    async fn send(protocol: Protocol, io: TcpStream, path: &str, body: &str) -> Response<Bytes> {
        let body = Full::new(Bytes::from(body.to_string()));
        let rsp = if protocol == Protocol::HTTP2 {
            let io = TokioIo::new(io);
            let (mut sender, conn) = client::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            let uri = format!("http://web{path}");
            let req = Request::post(uri).body(body).unwrap();
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = client::http1::handshake(TokioIo::new(io)).await.unwrap();
            tokio::spawn(conn);
            let req = Request::post(path).header("host", "web").body(body);
            sender.send_request(req.unwrap()).await.unwrap()
        };
        let (parts, body) = rsp.into_parts();
        Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
    }

    const PROTOCOLS: [Protocol; 2] = [Protocol::HTTP1, Protocol::HTTP2];

    #[tokio::test]
    async fn requests_are_served_with_the_connection_they_arrived_on() {
        let id: Arc<str> = Arc::from("web.demo.serviceaccount.identity.mesh.cluster.local");
        for (protocol, tls) in [
            (Protocol::HTTP1, Tls::NoIdentity(NO_TLS_DISABLED)),
            (Protocol::HTTP2, Tls::Established(id.clone())),
        ] {
            let drain = Drain::new();
            let (io, client, _) = connect(protocol, tls.clone(), &drain).await;
            let rsp = send(protocol, io, "/x", "hello").await;
            assert_eq!(rsp.status(), http::StatusCode::OK);
            let (version, client_id) = match tls {
                Tls::Established(id) => ("HTTP/2.0", Some(id)),
                Tls::NoIdentity(_) => ("HTTP/1.1", None),
            };
            assert_eq!(
                rsp.body(),
                &format!("{version} {client} {} {client_id:?} hello", orig_dst()),
                "{protocol:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_error_that_reaches_the_server_is_answered_as_a_failure() {
        for protocol in PROTOCOLS {
            let drain = Drain::new();
            let (io, _, _) = connect(protocol, Tls::NoIdentity(NO_TLS_DISABLED), &drain).await;
            let rsp = send(protocol, io, "/fail", "").await;
            assert_eq!(rsp.status(), http::StatusCode::BAD_GATEWAY, "{protocol:?}");
            assert_eq!(
                rsp.headers()[crate::http::PROXY_ERROR_HEADER],
                "the stack failed",
                "{protocol:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_idle_connection_closes_once_draining_starts() {
        for protocol in PROTOCOLS {
            let drain = Drain::new();
            let (io, _, conn) = connect(protocol, Tls::NoIdentity(NO_TLS_DISABLED), &drain).await;
            let rsp = send(protocol, io, "/x", "").await;
            assert_eq!(rsp.status(), http::StatusCode::OK);
            drain.start();
            tokio::time::timeout(Duration::from_secs(10), conn)
                .await
                .expect("closed within the deadline")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_closes_when_its_own_signal_fires() {
        for protocol in PROTOCOLS {
            let drain = Drain::new();
            let (tx, rx) = tokio::sync::watch::channel(false);
            let close = CloseSignal::new(move || {
                let mut rx = rx.clone();
                Box::pin(async move {
                    let _ = rx.wait_for(|closed| *closed).await;
                })
            });
            let tls = Tls::NoIdentity(NO_TLS_DISABLED);
            let (io, _, conn) = connect_closing(protocol, tls, &drain, close).await;
            let rsp = send(protocol, io, "/x", "").await;
            assert_eq!(rsp.status(), http::StatusCode::OK);
            tx.send_replace(true);
            tokio::time::timeout(Duration::from_secs(10), conn)
                .await
                .expect("closed within the deadline")
                .unwrap()
                .unwrap();
            assert!(!drain.is_draining(), "only this connection closed");
        }
    }
}
