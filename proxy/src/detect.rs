//! Protocol detection from a connection's first bytes, and the layer that does it.
//!
//! The proxy reads what the client sends first and asks each [`Recognize`] in turn whether
//! these bytes are its protocol: the built-in ones recognise an HTTP/2 connection preface (gRPC
//! included), a TLS ClientHello and an HTTP/1.x request line; anything no one claims is opaque
//! TCP. A client that sends nothing within the timeout is opaque too: it may be waiting for a
//! server that speaks first. The list is open: a codec for a private protocol adds its own
//! `Recognize`, and the stack routes its [`Protocol`] to the codec's stack.

use crate::{
    io::PrefixedIo,
    ports::PortList,
    svc::{BoxConn, BoxError, BoxIo, BoxNewConn, ConnFuture, EitherConn, NewService, Param},
    transport::{ClientAddr, OrigDst},
};
use bytes::{Bytes, BytesMut};
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection speaks: a protocol's name. The built-in ones are constants; a codec names
/// its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocol(pub &'static str);

impl Protocol {
    pub const HTTP1: Self = Self("http/1");
    pub const HTTP2: Self = Self("h2");
    /// A TLS ClientHello: mutual TLS from a peer proxy, or the application's own TLS.
    pub const TLS: Self = Self("tls");
    /// Bytes no protocol claimed: forwarded as they are.
    pub const OPAQUE: Self = Self("opaque");

    pub fn name(self) -> &'static str {
        self.0
    }

    pub fn is_http(self) -> bool {
        self == Self::HTTP1 || self == Self::HTTP2
    }
}

/// One protocol's test on a connection's first bytes.
pub trait Recognize: Send + Sync + 'static {
    fn protocol(&self) -> Protocol;
    /// `Some(true)`: these bytes begin this protocol; `Some(false)`: they do not; `None`: more
    /// bytes are needed to tell.
    fn recognize(&self, prefix: &[u8]) -> Option<bool>;
}

/// The protocols a listener recognises, in the order they are asked.
#[derive(Clone)]
pub struct Recognizers(Arc<[Arc<dyn Recognize>]>);

impl Default for Recognizers {
    /// HTTP/2 first (its preface also looks like an HTTP/1 request line), then TLS, then HTTP/1.
    fn default() -> Self {
        Self(Arc::new([
            Arc::new(Http2) as Arc<dyn Recognize>,
            Arc::new(Tls),
            Arc::new(Http1),
        ]))
    }
}

impl Recognizers {
    /// These, then `more` (a codec's protocols).
    pub fn with(&self, more: impl IntoIterator<Item = Arc<dyn Recognize>>) -> Self {
        Self(self.0.iter().cloned().chain(more).collect())
    }

    fn has(&self, protocol: Protocol) -> bool {
        self.0.iter().any(|r| r.protocol() == protocol)
    }

    /// Decides the protocol from the bytes read so far, or `None` when more bytes are needed:
    /// the first protocol (in order) that claims them; opaque once every protocol said no.
    /// Protocols must not claim each other's bytes: a codec's short command (`PING` with no
    /// line end yet) is decided at once even while HTTP/1 could still be waiting for its line.
    pub fn classify(&self, buf: &[u8]) -> Option<Protocol> {
        if buf.is_empty() {
            return None;
        }
        let mut undecided = false;
        for r in self.0.iter() {
            match r.recognize(buf) {
                Some(true) => return Some(r.protocol()),
                Some(false) => {}
                None => undecided = true,
            }
        }
        (!undecided).then_some(Protocol::OPAQUE)
    }
}

/// Decides the protocol from the bytes read so far with the built-in protocols, or `None` when
/// more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    thread_local! {
        static BUILT_IN: Recognizers = Recognizers::default();
    }
    BUILT_IN.with(|r| r.classify(buf))
}

struct Http2;
impl Recognize for Http2 {
    fn protocol(&self) -> Protocol {
        Protocol::HTTP2
    }
    fn recognize(&self, buf: &[u8]) -> Option<bool> {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        (n == H2_PREFACE.len()).then_some(true)
    }
}

struct Tls;
impl Recognize for Tls {
    fn protocol(&self) -> Protocol {
        Protocol::TLS
    }
    fn recognize(&self, buf: &[u8]) -> Option<bool> {
        if buf.first() != Some(&0x16) {
            return Some(false);
        }
        classify_tls(buf)
    }
}

struct Http1;
impl Recognize for Http1 {
    fn protocol(&self) -> Protocol {
        Protocol::HTTP1
    }
    fn recognize(&self, buf: &[u8]) -> Option<bool> {
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => Some(is_http1_request_line(&buf[..end])),
            None if http1_prefix_plausible(buf) => None,
            None => Some(false),
        }
    }
}

/// Why detection ended without a decision from the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The client sent nothing (or not enough) before the timeout.
    Timeout,
    /// The client closed its side before enough bytes arrived.
    Eof,
}

/// The outcome of [`detect`]: the protocol and the bytes already read, which must be replayed.
#[derive(Debug)]
pub struct Detected {
    pub protocol: Protocol,
    pub prefix: Bytes,
    pub fallback: Option<Fallback>,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from `io` until the built-in protocols decide, `capacity` bytes were read, the peer
/// closes, or `timeout` passes (see [`Recognizers::detect`]).
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
    capacity: usize,
) -> std::io::Result<Detected> {
    Recognizers::default().detect(io, timeout, capacity).await
}

impl Recognizers {
    /// Reads from `io` until a protocol is decided, `capacity` bytes were read, the peer closes,
    /// or `timeout` passes. Undecided input is opaque, except a plausible HTTP/1 request line
    /// that fills the whole buffer (HTTP/1, so the HTTP server can refuse it as too long) or is
    /// still unfinished at the timeout (HTTP/1, so the HTTP server's header timeout applies).
    pub async fn detect<I: AsyncRead + Unpin>(
        &self,
        io: &mut I,
        timeout: Duration,
        capacity: usize,
    ) -> std::io::Result<Detected> {
        let mut buf = BytesMut::with_capacity(capacity.min(8 * 1024));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if buf.len() >= capacity {
                let protocol = if http1_prefix_plausible(&buf) {
                    Protocol::HTTP1
                } else {
                    Protocol::OPAQUE
                };
                return Ok(Detected {
                    protocol,
                    prefix: buf.freeze(),
                    fallback: None,
                });
            }
            let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
            let fallback = match read {
                Err(_elapsed) => Some(Fallback::Timeout),
                Ok(Ok(0)) => Some(Fallback::Eof),
                Ok(Ok(_)) => None,
                Ok(Err(e)) => return Err(e),
            };
            if let Some(fallback) = fallback {
                // A request line begun but not ended when the time is up is HTTP/1 still: as
                // opaque TCP it would reach the application past the HTTP stack (its header
                // read timeout, the removal of a client's own `mesh-client-id`, per-route
                // authorization), for any client that drips its first line slowly enough.
                // Silence stays opaque: a client of a server-speaks-first protocol sends nothing.
                let protocol = if fallback == Fallback::Timeout
                    && self.has(Protocol::HTTP1)
                    && http1_prefix_plausible(&buf)
                {
                    Protocol::HTTP1
                } else {
                    Protocol::OPAQUE
                };
                return Ok(Detected {
                    protocol,
                    prefix: buf.freeze(),
                    fallback: Some(fallback),
                });
            }
            if let Some(protocol) = self.classify(&buf) {
                return Ok(Detected {
                    protocol,
                    prefix: buf.freeze(),
                    fallback: None,
                });
            }
        }
    }
}

// === the layer ===

/// A connection whose protocol is known.
#[derive(Clone, Debug)]
pub struct Detect<T> {
    pub protocol: Protocol,
    pub parent: T,
}

impl<T> Detect<T> {
    pub fn new(parent: T, protocol: Protocol) -> Self {
        Self { protocol, parent }
    }
}

impl<T> Param<Protocol> for Detect<T> {
    fn param(&self) -> Protocol {
        self.protocol
    }
}

impl<T: Param<OrigDst>> Param<OrigDst> for Detect<T> {
    fn param(&self) -> OrigDst {
        self.parent.param()
    }
}

impl<T: Param<ClientAddr>> Param<ClientAddr> for Detect<T> {
    fn param(&self) -> ClientAddr {
        self.parent.param()
    }
}

/// How the detection layer reads.
#[derive(Clone)]
pub struct DetectConfig {
    pub recognizers: Recognizers,
    pub timeout: Duration,
    /// The most bytes read while detecting (the HTTP header limit).
    pub capacity: usize,
    /// Ports whose traffic is opaque: not read at all…
    pub opaque_ports: PortList,
    /// …unless this is set: then read this long for a TLS ClientHello only (inbound with
    /// identity on, where a peer proxy wraps even opaque traffic in mutual TLS and sends its
    /// hello at once, while a plaintext client of a server-speaks-first protocol sends nothing).
    pub opaque_tls_peek: Option<Duration>,
}

/// Detects each connection's protocol, then serves it with `N`'s service for
/// [`Detect<T>`]; the bytes read are replayed to it.
///
/// The configuration and the stages after detection are shared (`Arc`): each connection's
/// future holds them while it waits for the client's first bytes, and a copy of the stack by
/// value in each of 10,000 idle connections was kilobytes apiece (issue 17).
#[derive(Clone)]
pub struct NewDetect<N> {
    config: Arc<DetectConfig>,
    inner: Arc<N>,
}

impl DetectConfig {
    pub fn layer<N>(self) -> impl tower::Layer<N, Service = NewDetect<N>> + Clone {
        let config = Arc::new(self);
        tower::layer::layer_fn(move |inner| NewDetect {
            config: config.clone(),
            inner: Arc::new(inner),
        })
    }
}

#[derive(Clone)]
pub struct DetectService<T, N> {
    target: T,
    config: Arc<DetectConfig>,
    inner: Arc<N>,
}

impl<T, N> NewService<T> for NewDetect<N> {
    type Service = DetectService<T, N>;
    fn new_service(&self, target: T) -> Self::Service {
        DetectService {
            target,
            config: self.config.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T, N, S> tower::Service<BoxIo> for DetectService<T, N>
where
    T: Param<OrigDst> + Param<ClientAddr> + Clone + Send + 'static,
    N: NewService<Detect<T>, Service = S> + Send + Sync + 'static,
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture> + Send,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut io: BoxIo) -> ConnFuture {
        let target = self.target.clone();
        let config = self.config.clone();
        let inner = self.inner.clone();
        crate::svc::then_serve(async move {
            let OrigDst(orig_dst) = target.param();
            let opaque = config.opaque_ports.contains(orig_dst.port());
            let (protocol, prefix) = match (opaque, config.opaque_tls_peek) {
                (true, None) => (Protocol::OPAQUE, Bytes::new()),
                (true, Some(peek)) => {
                    let timeout = config.timeout.min(peek);
                    match sniff(&config, &mut io, target.param(), timeout).await {
                        (Protocol::TLS, prefix) => (Protocol::TLS, prefix),
                        (_, prefix) => (Protocol::OPAQUE, prefix),
                    }
                }
                (false, _) => sniff(&config, &mut io, target.param(), config.timeout).await,
            };
            let io: BoxIo = if prefix.is_empty() {
                io
            } else {
                BoxIo::new(PrefixedIo::new(prefix, io))
            };
            crate::svc::call_conn(inner.new_service(Detect::new(target, protocol)), io).await
        })
    }
}

/// Hands a connection to the implementation of its protocol: HTTP/1 and HTTP/2 to `H`, a
/// protocol a codec registered to that codec's stage, anything else to `O` (opaque).
pub struct NewSwitch<H, O, T> {
    http: H,
    opaque: O,
    codecs: Arc<[(Protocol, BoxNewConn<T>)]>,
}

impl<H: Clone, O: Clone, T> Clone for NewSwitch<H, O, T> {
    fn clone(&self) -> Self {
        Self {
            http: self.http.clone(),
            opaque: self.opaque.clone(),
            codecs: self.codecs.clone(),
        }
    }
}

impl<H, O, T> NewSwitch<H, O, T> {
    pub fn new(http: H, opaque: O) -> Self {
        Self {
            http,
            opaque,
            codecs: Arc::new([]),
        }
    }

    /// Adds the stages of further protocols (recognised by a [`Recognize`] the detection layer
    /// was given).
    pub fn with_codecs(self, codecs: impl IntoIterator<Item = (Protocol, BoxNewConn<T>)>) -> Self {
        Self {
            codecs: codecs.into_iter().collect(),
            ..self
        }
    }
}

impl<T, H, O> NewService<T> for NewSwitch<H, O, T>
where
    T: Param<Protocol>,
    H: NewService<T>,
    O: NewService<T>,
{
    type Service = EitherConn<H::Service, EitherConn<O::Service, BoxConn>>;
    fn new_service(&self, target: T) -> Self::Service {
        let protocol: Protocol = target.param();
        if protocol.is_http() {
            return EitherConn::A(self.http.new_service(target));
        }
        match self.codecs.iter().find(|(p, _)| *p == protocol) {
            Some((_, codec)) => EitherConn::B(EitherConn::B(codec.new_service(target))),
            None => EitherConn::B(EitherConn::A(self.opaque.new_service(target))),
        }
    }
}

/// Reads a connection's first bytes (within `timeout`) and says what they are.
async fn sniff(
    config: &DetectConfig,
    io: &mut BoxIo,
    ClientAddr(client): ClientAddr,
    timeout: Duration,
) -> (Protocol, Bytes) {
    match config
        .recognizers
        .detect(io, timeout, config.capacity)
        .await
    {
        Ok(d) => {
            if let Some(fallback) = d.fallback {
                tracing::debug!(%client, ?fallback, protocol = d.protocol.name(), "detection ended undecided");
            }
            (d.protocol, d.prefix)
        }
        Err(error) => {
            tracing::debug!(%client, %error, "connection failed during detection");
            (Protocol::OPAQUE, Bytes::new())
        }
    }
}

/// A TLS record of type handshake (0x16), version 3.x, carrying a ClientHello (type 1).
fn classify_tls(buf: &[u8]) -> Option<bool> {
    match buf {
        [0x16, 0x03, minor, _, _, 0x01, ..] if *minor <= 0x04 => Some(true),
        [0x16] | [0x16, 0x03] | [0x16, 0x03, _] | [0x16, 0x03, _, _] | [0x16, 0x03, _, _, _] => {
            None
        }
        _ => Some(false),
    }
}

/// `METHOD SP request-target SP HTTP/1.x`, with an optional trailing `\r`.
fn is_http1_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|&b| is_token(b))
        && !target.is_empty()
        && target.iter().all(|&b| b.is_ascii_graphic())
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Whether `buf` (with no line end yet) could still become an HTTP/1 request line.
fn http1_prefix_plausible(buf: &[u8]) -> bool {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(end) => return is_http1_request_line(&buf[..end]),
        None => buf,
    };
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next();
    let version = parts.next();
    let method_ok = !method.is_empty() && method.len() <= 32 && method.iter().all(|&b| is_token(b));
    let target_ok = target.is_none_or(|t| t.iter().all(|&b| b.is_ascii_graphic()));
    let version_ok = version.is_none_or(|v| {
        let v = v.strip_suffix(b"\r").unwrap_or(v);
        let n = v.len().min(8);
        v.len() <= 8 && (v[..n] == b"HTTP/1.1"[..n] || v[..n] == b"HTTP/1.0"[..n])
    });
    method_ok && target_ok && version_ok
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expected: Option<Protocol>) {
        assert_eq!(
            classify(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn http1() {
        check(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(Protocol::HTTP1));
        check(b"POST /a?b=c HTTP/1.0\r\n", Some(Protocol::HTTP1));
        check(b"GET / HTTP/1.1\n", Some(Protocol::HTTP1));
        check(
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            Some(Protocol::HTTP1),
        );
        check(b"GET", None);
        check(b"GET /index.html HTT", None);
        check(b"GET /index.html HTTP/1.1", None);
        check(b"GET / HTTP/2.0\r\n", Some(Protocol::OPAQUE));
        check(b"GET /a b HTTP/1.1\r\n", Some(Protocol::OPAQUE));
        check(b"G(T / HTTP/1.1\r\n", Some(Protocol::OPAQUE));
    }

    #[test]
    fn http2_preface() {
        check(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::HTTP2));
        check(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            Some(Protocol::HTTP2),
        );
        check(b"PRI * HTTP/2", None);
        check(b"PRI * HTTP/2.0\r\n\r\nXX", Some(Protocol::OPAQUE));
    }

    #[test]
    fn tls_client_hello() {
        check(
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00],
            Some(Protocol::TLS),
        );
        check(&[0x16, 0x03, 0x03, 0x00, 0x40, 0x01], Some(Protocol::TLS));
        check(&[0x16, 0x03], None);
        check(
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x02],
            Some(Protocol::OPAQUE),
        );
        check(&[0x16, 0x07], Some(Protocol::OPAQUE));
    }

    #[test]
    fn opaque() {
        check(b"\x00\x01binary", Some(Protocol::OPAQUE));
        check(b"*1\r\n$4\r\nPING\r\n", Some(Protocol::OPAQUE));
        check(b"SSH-2.0-OpenSSH_9.2\r\n", Some(Protocol::OPAQUE));
        check(b"hello world\n", Some(Protocol::OPAQUE));
        check(b"", None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"GET POST HTTP/1.1\r\n PRI * HTTP/2.0 \x16\x03\x01\x00";
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 3 {
                    0 => alphabet[(next() % alphabet.len() as u64) as usize],
                    _ => next() as u8,
                })
                .collect();
            let _ = classify(&bytes);
            let _ = http1_prefix_plausible(&bytes);
        }
    }

    #[tokio::test]
    async fn silent_client_is_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let d = detect(&mut server, Duration::from_millis(20), 1024)
            .await
            .unwrap();
        assert_eq!(
            (d.protocol, d.fallback, d.prefix.len()),
            (Protocol::OPAQUE, Some(Fallback::Timeout), 0)
        );
    }

    /// Regression (issue 17, HTTP/1 attacks): a request line dripped slower than the timeout
    /// went to the application as opaque TCP, past the HTTP stack (its header read timeout,
    /// the removal of a client's own `mesh-client-id`). Unfinished, it is HTTP/1 still; bytes
    /// that cannot begin a request line stay opaque.
    #[tokio::test]
    async fn a_request_line_unfinished_at_the_timeout_is_http1() {
        use tokio::io::AsyncWriteExt;
        for (sent, expected) in [
            (&b"GET /spo"[..], Protocol::HTTP1),
            (b"G", Protocol::HTTP1),
            // The start of a TLS record header: undecided, but no request line.
            (b"\x16\x03\x01", Protocol::OPAQUE),
        ] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            let d = detect(&mut server, Duration::from_millis(20), 1024)
                .await
                .unwrap();
            assert_eq!(
                (d.protocol, d.fallback, &d.prefix[..]),
                (expected, Some(Fallback::Timeout), sent),
                "{:?}",
                String::from_utf8_lossy(sent)
            );
        }
    }

    #[tokio::test]
    async fn bytes_arriving_in_pieces_are_kept() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        let write = async {
            client.write_all(b"GET /x ").await.unwrap();
            tokio::task::yield_now().await;
            client
                .write_all(b"HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
        };
        let (d, ()) = tokio::join!(detect(&mut server, Duration::from_secs(5), 1024), write);
        let d = d.unwrap();
        assert_eq!(d.protocol, Protocol::HTTP1);
        assert!(d.prefix.starts_with(b"GET /x HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_request_line_longer_than_the_buffer_is_http1() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        tokio::io::AsyncWriteExt::write_all(&mut client, long.as_bytes())
            .await
            .unwrap();
        let d = detect(&mut server, Duration::from_secs(5), 1024)
            .await
            .unwrap();
        assert_eq!(d.protocol, Protocol::HTTP1);
    }

    /// The detection layer and the protocol switch, on connections over 127.0.0.1.
    mod layer {
        use super::*;
        use crate::{svc::NewFn, transport::Accepted};
        use std::net::SocketAddr;
        use tokio::io::AsyncWriteExt;
        use tokio::net::{TcpListener, TcpStream};
        use tokio::sync::mpsc;
        use tower::ServiceExt;

        /// What a stage was given: its name, the protocol of its target, and every byte it read.
        type Served = (&'static str, Protocol, Vec<u8>);

        /// A toy codec's protocol: lines that start with `PING`.
        const PING: Protocol = Protocol("ping");

        struct Ping;
        impl Recognize for Ping {
            fn protocol(&self) -> Protocol {
                PING
            }
            fn recognize(&self, prefix: &[u8]) -> Option<bool> {
                let n = prefix.len().min(4);
                if prefix[..n] != b"PING"[..n] {
                    return Some(false);
                }
                (n == 4).then_some(true)
            }
        }

        #[test]
        fn a_codecs_short_command_is_decided_without_waiting_for_a_line_end() {
            let recognizers = Recognizers::default().with([Arc::new(Ping) as Arc<dyn Recognize>]);
            assert_eq!(recognizers.classify(b"PING"), Some(PING));
            assert_eq!(
                recognizers.classify(b"PIN"),
                None,
                "could still be HTTP/1 or PING"
            );
            assert_eq!(
                recognizers.classify(b"GET / HTTP/1.1\r\n"),
                Some(Protocol::HTTP1)
            );
        }

        /// A connection-level stage that reads each connection to its end, then sends what it
        /// was given.
        fn reader<T: Param<Protocol> + Send + 'static>(
            name: &'static str,
            tx: mpsc::UnboundedSender<Served>,
        ) -> impl NewService<
            T,
            Service = impl tower::Service<
                BoxIo,
                Response = (),
                Error = BoxError,
                Future = ConnFuture,
            > + Send
                          + 'static,
        > + Clone
               + Send
               + Sync
               + 'static {
            NewFn(move |target: T| {
                let tx = tx.clone();
                let protocol = target.param();
                tower::service_fn(move |mut io: BoxIo| -> ConnFuture {
                    let tx = tx.clone();
                    Box::pin(async move {
                        let mut bytes = Vec::new();
                        io.read_to_end(&mut bytes).await?;
                        let _ = tx.send((name, protocol, bytes));
                        Ok(())
                    })
                })
            })
        }

        fn config(recognizers: Recognizers, opaque_ports: &str) -> DetectConfig {
            DetectConfig {
                recognizers,
                // Longer than any test: a test that waited for it would time out.
                timeout: Duration::from_secs(60),
                capacity: 1024,
                opaque_ports: opaque_ports.parse().unwrap(),
                opaque_tls_peek: None,
            }
        }

        /// Serves one connection to `port` that sends `sent` and closes its side, with `stack`.
        async fn serve<N, S>(stack: &N, port: u16, sent: &[u8])
        where
            N: NewService<Accepted, Service = S>,
            S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>,
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, client_addr) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            client.shutdown().await.unwrap();
            let target = Accepted {
                client: client_addr,
                orig_dst: SocketAddr::from(([10, 0, 0, 2], port)),
            };
            let conn = stack.new_service(target).oneshot(BoxIo::new(server));
            tokio::time::timeout(Duration::from_secs(10), conn)
                .await
                .expect("served within the deadline")
                .unwrap();
        }

        #[tokio::test]
        async fn the_bytes_read_to_detect_are_replayed_to_the_inner_stage() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let stack = tower::Layer::layer(&config(Recognizers::default(), "").layer(), {
                reader::<Detect<Accepted>>("inner", tx)
            });
            let sent = b"GET /x HTTP/1.1\r\nHost: web\r\n\r\nand what follows";
            serve(&stack, 80, sent).await;
            assert_eq!(
                rx.try_recv().unwrap(),
                ("inner", Protocol::HTTP1, sent.to_vec())
            );
        }

        #[tokio::test]
        async fn opaque_ports_skip_detection() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let stack = tower::Layer::layer(
                &config(Recognizers::default(), "5432").layer(),
                reader::<Detect<Accepted>>("inner", tx),
            );
            let sent = b"GET / HTTP/1.1\r\n\r\n";
            serve(&stack, 5432, sent).await;
            assert_eq!(
                rx.try_recv().unwrap(),
                ("inner", Protocol::OPAQUE, sent.to_vec()),
                "HTTP on an opaque port is not looked at"
            );
            serve(&stack, 5433, sent).await;
            assert_eq!(rx.try_recv().unwrap().1, Protocol::HTTP1);
        }

        #[tokio::test]
        async fn an_opaque_port_with_a_tls_peek_sees_only_a_client_hello() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let detect = DetectConfig {
                opaque_tls_peek: Some(Duration::from_secs(60)),
                ..config(Recognizers::default(), "5432")
            };
            let stack =
                tower::Layer::layer(&detect.layer(), reader::<Detect<Accepted>>("inner", tx));
            let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
            serve(&stack, 5432, &hello).await;
            assert_eq!(
                rx.try_recv().unwrap(),
                ("inner", Protocol::TLS, hello.to_vec())
            );
            let http = b"GET / HTTP/1.1\r\n\r\n";
            serve(&stack, 5432, http).await;
            assert_eq!(
                rx.try_recv().unwrap(),
                ("inner", Protocol::OPAQUE, http.to_vec()),
                "anything else stays opaque, its bytes replayed"
            );
        }

        #[tokio::test]
        async fn the_switch_routes_a_codecs_protocol_to_its_stage() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let ping = reader::<Detect<Accepted>>("ping", tx.clone());
            let codec: BoxNewConn<Detect<Accepted>> =
                Arc::new(NewFn(move |t| BoxConn::new(ping.new_service(t))));
            let switch = NewSwitch::new(reader("http", tx.clone()), reader("opaque", tx))
                .with_codecs([(PING, codec)]);
            let recognizers = Recognizers::default().with([Arc::new(Ping) as Arc<dyn Recognize>]);
            let stack = tower::Layer::layer(&config(recognizers, "").layer(), switch);
            let cases: [(&[u8], &str, Protocol); 6] = [
                (b"PING\r\n", "ping", PING),
                (b"PING and more\r\n", "ping", PING),
                (
                    b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
                    "http",
                    Protocol::HTTP1,
                ),
                (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http", Protocol::HTTP2),
                (b"PONG\r\n", "opaque", Protocol::OPAQUE),
                (b"\x00\x01binary", "opaque", Protocol::OPAQUE),
            ];
            for (sent, stage, protocol) in cases {
                serve(&stack, 80, sent).await;
                assert_eq!(
                    rx.try_recv().unwrap(),
                    (stage, protocol, sent.to_vec()),
                    "{:?}",
                    String::from_utf8_lossy(sent)
                );
            }
        }
    }
}
