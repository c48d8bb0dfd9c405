//! The HTTP server at the top of both stacks' HTTP path: serves a connection whose protocol was
//! detected as HTTP/1 or HTTP/2 with hyper, and hands each request, its body boxed, to the
//! connection's request stack. On shutdown, in-flight requests finish and the connection is
//! closed gracefully.

use super::{errors::Failure, idle};
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

/// The most streams an HTTP/2 client may have open on one connection (SETTINGS_MAX_CONCURRENT_
/// STREAMS); h2 refuses more with REFUSED_STREAM, and ends the connection with GOAWAY
/// ENHANCE_YOUR_CALM after 1,024 such refusals. Hyper's default today, set here because hyper
/// does not promise to keep it.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 200;

/// The most response bytes one HTTP/2 stream may have queued in the proxy while the client does
/// not read them (hyper's default: 400 KiB). With [`HTTP2_MAX_CONCURRENT_STREAMS`], what a
/// client that never reads its socket makes one connection hold: 200 × 64 KiB = 12.5 MiB, not
/// 78 MiB (issue 17: 100 such streams took the proxy's RSS up by 33 MB).
pub const HTTP2_MAX_SEND_BUF_BYTES: usize = 64 << 10;

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
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Readiness + Send + Unpin + 'static,
    {
        let drain = self.drain.clone();
        let close = self.close.wait();
        let settings = self.settings.clone();
        // Two futures, each boxed on its own: one async block for both protocols would be as
        // large as an HTTP/2 connection's state for every HTTP/1 connection too (issue 17:
        // 10,000 idle HTTP/1 connections).
        if self.protocol == Protocol::HTTP2 {
            let service =
                self.hyper_service(|body: Incoming| (BoxBody::new(body), ()), |rsp, ()| rsp);
            let io = TokioIo::new(io);
            let mut builder = conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(settings.max_header_bytes.try_into().unwrap_or(u32::MAX))
                .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
                .max_send_buf_size(HTTP2_MAX_SEND_BUF_BYTES);
            Box::pin(async move {
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
                Ok(())
            })
        } else {
            // Every request and response tells `watch` whether the connection is idle, so that
            // it can wait for the next request without hyper's buffers (`idle`).
            let watch = Arc::new(idle::Watch::default());
            let service = self.hyper_service(
                {
                    let watch = watch.clone();
                    move |body: Incoming| {
                        let (body, finished) = watch.request(body);
                        (BoxBody::new(body), finished)
                    }
                },
                |rsp: Response<BoxBody>, finished| {
                    rsp.map(|body| idle::ResponseBody::new(body, finished))
                },
            );
            let mut builder = conn::http1::Builder::new();
            // `max_header_size` is the limit on a head; `max_buf_size` alone is not one: a
            // read may fill the buffer past it, and a head that then parses is served.
            // `half_close`: a client may shut down its writing side once its request is
            // sent (`shutdown(SHUT_WR)`, as HTTP/1.0 clients and many scripts do) and still
            // reads the answer; without it hyper drops the request in flight at the EOF.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .max_buf_size(settings.max_header_bytes)
                .max_header_size(settings.max_header_bytes)
                .half_close(true);
            let stop = Box::pin(async move {
                tokio::select! {
                    () = drain.signaled() => {}
                    () = close => {}
                }
            });
            Box::pin(idle::serve(
                builder,
                io,
                service,
                watch,
                idle::Idle {
                    park_after: idle::Idle::PARK_AFTER,
                    timeout: settings.header_read_timeout,
                },
                stop,
            ))
        }
    }

    /// The connection's requests as hyper calls them: `request` boxes a request's body (and
    /// says what the response needs to know of it), `response` wraps the stack's answer.
    fn hyper_service<B, X>(
        &self,
        request: impl Fn(Incoming) -> (BoxBody, X) + Send + Sync + Unpin + 'static,
        response: impl Fn(Response<BoxBody>, X) -> Response<B> + Send + Sync + Clone + Unpin + 'static,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future = BoxFuture<'static, Result<Response<B>, Infallible>>,
    > + Unpin
           + Send
           + 'static
    where
        X: Send + 'static,
        B: http_body::Body + Send + 'static,
    {
        // Boxed, so that the service (and hyper's connection) is `Unpin` whatever `S` is.
        let service = Box::new(self.service.clone());
        let info = self.conn.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (parts, body) = req.into_parts();
            let (body, x) = request(body);
            let mut req = Request::from_parts(parts, body);
            req.extensions_mut().insert(Received {
                at: Instant::now(),
                conn: info.clone(),
            });
            let response = response.clone();
            let rsp: BoxFuture<'static, Result<Response<B>, Infallible>> =
                Box::pin((*service).clone().oneshot(req).map(move |result| {
                    // The stack answers its errors itself (`errors::RespondLayer`); one that
                    // still gets here is answered the same way.
                    let rsp = result.unwrap_or_else(|error| Failure::of(&*error).response(false));
                    Ok(response(rsp, x))
                }));
            rsp
        })
    }
}

/// A connection whose readiness to be read can be awaited without reading it: what lets an
/// idle HTTP/1 connection wait for its next request without hyper's buffers (`idle`).
pub trait Readiness {
    /// Whether it can: a connection that cannot is never parked.
    const PARKS: bool;

    /// Ready once there is something to read (bytes, the end, or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

/// A socket, bare or under TLS: the reader above it found nothing to read (a TLS stream reads
/// its socket until it would block), so the socket's readiness is the connection's.
impl Readiness for BoxIo {
    const PARKS: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        crate::svc::Socket::tcp(self).poll_read_ready(cx)
    }
}

/// A connection held in memory (tests, fuzzing): never parked.
impl Readiness for tokio::io::DuplexStream {
    const PARKS: bool = false;

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
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
    /// connection (client, original destination, client identity) and its body; `/fail` fails,
    /// `/slow` answers 200 ms after the body ended.
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
        let slow = req.uri().path() == "/slow";
        let body = req.into_body().collect().await?.to_bytes();
        if slow {
            // Answers after the client's EOF has arrived (the half-close test).
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

    /// Regression (issue 17, HTTP/1 attacks): a client that shut down its writing side after
    /// a whole request (`shutdown(SHUT_WR)`, as HTTP/1.0 clients and scripts do) got no answer:
    /// hyper's HTTP/1 server, without `half_close`, aborted the request in flight at the EOF.
    #[tokio::test]
    async fn a_half_closed_http1_client_still_gets_its_answer() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let drain = Drain::new();
        let tls = Tls::NoIdentity(NO_TLS_DISABLED);
        let (mut io, _, _) = connect(Protocol::HTTP1, tls, &drain).await;
        io.write_all(b"POST /slow HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), io.read_to_string(&mut answer))
            .await
            .expect("answered or closed within the deadline")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
        assert!(answer.ends_with(" hello"), "{answer:?}");
    }

    /// Regression (issue 17, HTTP/1 attacks): a 100 KiB HTTP/1 head was served under a 64 KiB
    /// `max_header_bytes`: `max_buf_size` bounds the buffer only while the head is incomplete,
    /// and the read that grows the buffer past it (its capacity doubles) brought the rest in.
    #[tokio::test]
    async fn an_http1_head_over_the_limit_is_refused_with_431() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let settings = HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
        };
        let taps = Taps::new(&TapConfig::default(), None, Metrics::new(10, false));
        let layer = NewServeHttp::layer(settings, Drain::new(), taps);
        let serve = tower::Layer::layer(&layer, NewFn(|_: Conn| tower::service_fn(echo)));
        let target = Conn {
            protocol: Protocol::HTTP1,
            client: "127.0.0.1:40000".parse().unwrap(),
            orig_dst: orig_dst(),
            tls: Tls::NoIdentity(NO_TLS_DISABLED),
            close: CloseSignal::never(),
        };
        // The whole head is there before the server reads, as from a fast client.
        let (mut client, io) = tokio::io::duplex(1 << 20);
        let head = format!(
            "GET /x HTTP/1.1\r\nhost: web\r\nconnection: close\r\nx-long: {}\r\n\r\n",
            "a".repeat(100 << 10)
        );
        client.write_all(head.as_bytes()).await.unwrap();
        tokio::spawn(serve.new_service(target).serve(io));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
            .await
            .expect("answered or closed within the deadline")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 431 "),
            "{}",
            &answer[..answer.len().min(200)]
        );
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

    /// Issue 17, HTTP/2 attacks: the proxy tells an HTTP/2 client its stream limit in its first
    /// SETTINGS frame (SETTINGS_MAX_CONCURRENT_STREAMS), rather than relying on hyper's default.
    #[tokio::test]
    async fn an_http2_client_is_told_the_stream_limit() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let drain = Drain::new();
        let tls = Tls::NoIdentity(NO_TLS_DISABLED);
        let (mut io, _, _) = connect(Protocol::HTTP2, tls, &drain).await;
        // The preface and an empty SETTINGS frame.
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut head))
            .await
            .expect("the server's SETTINGS within the deadline")
            .unwrap();
        assert_eq!(
            head[3], 0x4,
            "the server's first frame is SETTINGS: {head:?}"
        );
        let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        io.read_exact(&mut payload).await.unwrap();
        let max_streams = payload
            .chunks_exact(6)
            .find(|p| p[..2] == [0, 0x3])
            .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
        assert_eq!(max_streams, Some(HTTP2_MAX_CONCURRENT_STREAMS));
    }
}
