//! Protocol codecs: the mesh's traffic management for RPC protocols that are not HTTP.
//!
//! A [`Codec`] turns a connection's bytes into [`Frame`]s (requests, responses, one-way
//! messages, heartbeats, errors) with a string [`Metadata`] map (`command`, `key`, `method` …)
//! and, for protocols that carry one, a request id; it writes frames back, and answers a
//! request in the protocol's own terms when the mesh cannot forward it ([`Codec::local_reply`]).
//! Everything else (routing by metadata, balancing per request, mutual TLS between proxies,
//! timeouts, rate limits, metrics and tap) is the framework's, the same for every codec.
//!
//! A codec never panics on what it reads: malformed bytes are a [`CodecError`], which closes
//! the connection they came on and no other; a frame longer than [`MAX_FRAME`] is one too.

pub mod meter;
pub mod redis;
pub mod route;
pub mod serve;
pub mod thrift;
pub mod upstream;

use bytes::{Bytes, BytesMut};
use std::{borrow::Cow, fmt, sync::Arc};

/// The longest frame a codec accepts (16 MiB): a request or response declaring more is a
/// [`CodecError::TooLarge`].
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A protocol the proxy can decode: a name and a codec per connection.
pub trait Protocol: Send + Sync + 'static {
    /// The codec's name, as `appProtocol` spells it after `mesh.io/` (`redis`), and the
    /// `codec` metric label.
    fn name(&self) -> &'static str;

    /// A codec for one connection's bytes read from `side` (each connection has its own: a
    /// codec may keep state, such as the Thrift protocol variant the peer speaks).
    fn codec(&self, side: Side) -> Box<dyn Codec>;
}

/// Which end of a connection a codec reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A client's connection: the codec decodes requests and encodes responses.
    Client,
    /// A server's connection: the codec decodes responses and encodes requests.
    Server,
}

/// One protocol's framing of one connection.
pub trait Codec: Send + 'static {
    /// Takes one whole frame off the front of `buf`; `Ok(None)` when more bytes are needed
    /// (nothing is consumed then). Bytes that cannot be this protocol, or a frame longer than
    /// [`MAX_FRAME`], are an error: the connection is closed.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError>;

    /// Appends `frame` to `dst`: its bytes as decoded, with its [`Frame::id`] and the
    /// metadata keys this codec can write back when they were changed.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError>;

    /// The response to `request` when the mesh cannot forward it (no route, no endpoints, rate
    /// limited, timed out, the upstream failed), in the protocol's own terms: Redis
    /// `-ERR …`, a Thrift `TApplicationException`. `None` for a request that expects no
    /// response (a one-way message).
    fn local_reply(&self, request: &Frame, error: &LocalError) -> Option<Frame>;

    /// The lane of a request: requests of different lanes never share an upstream
    /// connection. A protocol whose servers read each connection in one variant (Thrift's
    /// binary and compact) gives each variant its own lane; most have one.
    fn lane(&self, _request: &Frame) -> u8 {
        0
    }
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A request that expects one response.
    Request,
    /// A request that expects none (a Thrift `oneway` call).
    OneWay,
    /// The response to a request.
    Response,
    /// A response that reports a failure (Redis `-ERR`, a Thrift exception): counted as a
    /// failure by the metrics.
    Error,
    /// A frame the server sends on its own (a Redis pub/sub message, a RESP3 push).
    Push,
    /// A keep-alive; answered by the peer, never routed.
    Heartbeat,
}

/// What a request does to its client connection's upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Session {
    /// Nothing: the request may go on any upstream connection of any endpoint.
    #[default]
    None,
    /// The request changes its connection's state (a transaction, a selected database, a
    /// protocol version, a blocking pop): from this request on, the client connection's
    /// requests go, in order, on one upstream connection of its own.
    Pin,
    /// As `Pin`, and the server may now send frames that answer no request (pub/sub,
    /// `MONITOR`): responses are no longer matched to requests.
    Stream,
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    /// The request id of a protocol that carries one (Thrift's sequence id); responses are
    /// matched back to requests by it, otherwise by order.
    pub id: Option<u32>,
    /// What routing, metrics and tap read: `command` and `key` (Redis), `method` and `type`
    /// (Thrift).
    pub metadata: Metadata,
    /// Requests only: what the request does to its connection.
    pub session: Session,
    /// The frame's bytes as decoded.
    pub bytes: Bytes,
}

impl Frame {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata.get(key)
    }

    /// The name of the operation, for the `method` metric label and tap: the `command` or
    /// `method` metadata.
    pub fn method(&self) -> Option<&str> {
        self.get("command").or_else(|| self.get("method"))
    }

    /// Whether this frame is a request (one-way included).
    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request | Kind::OneWay)
    }
}

/// A frame's metadata: string keys and values, few, in insertion order. Kept on the heap:
/// a frame (a response above all, which usually has none) moves through every layer of a
/// request stack, and a small frame moves cheaply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(Cow<'static, str>, Text)>,
    /// Keys set since decoding (what `encode` writes back).
    changed: Vec<Cow<'static, str>>,
}

impl Metadata {
    /// Metadata as decoded: nothing counts as changed.
    pub fn decoded<V: Into<Text>>(
        entries: impl IntoIterator<Item = (Cow<'static, str>, V)>,
    ) -> Self {
        Self {
            entries: entries.into_iter().map(|(k, v)| (k, v.into())).collect(),
            changed: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` (a mutation: `encode` writes it back where the codec can).
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Text>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.entries.push((key.clone(), value)),
        }
        if !self.changed.contains(&key) {
            self.changed.push(key);
        }
    }

    /// Whether `key` was set since decoding.
    pub fn is_changed(&self, key: &str) -> bool {
        self.changed.iter().any(|k| k == key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }
}

/// A metadata value: UTF-8 text, usually a slice of the frame's own bytes (decoding a
/// command's name and key copies nothing).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

impl Text {
    /// `part` of `frame` (a slice of it, or a copy when it is not one), when it is UTF-8.
    pub fn shared(frame: &Bytes, part: &[u8]) -> Option<Self> {
        std::str::from_utf8(part).ok()?;
        let (start, end) = (frame.as_ptr() as usize, part.as_ptr() as usize);
        Some(Self(
            if end >= start && end + part.len() <= start + frame.len() {
                frame.slice_ref(part)
            } else {
                Bytes::copy_from_slice(part)
            },
        ))
    }

    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Every constructor checks (or is given) UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(Bytes::from(text.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why the mesh answers a request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalError {
    /// A MetaRoute's rule matched, but none of its backends can be used.
    NoRoute,
    /// The destination has no endpoints (or is unknown).
    NoEndpoints(Arc<str>),
    /// A local rate limit refused it.
    RateLimited,
    /// Its response did not come within the route's timeout.
    Timeout,
    /// The upstream connection failed or closed before the response.
    Unavailable(String),
    /// The inbound policy does not allow the client.
    Unauthorized,
}

impl LocalError {
    /// The `error` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoEndpoints(_) => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Unavailable(_) => "upstream",
            Self::Unauthorized => "unauthorized",
        }
    }
}

impl From<crate::http::errors::NoEndpoints> for LocalError {
    fn from(e: crate::http::errors::NoEndpoints) -> Self {
        Self::NoEndpoints(e.0.into())
    }
}

impl fmt::Display for LocalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRoute => f.write_str("no route has a usable backend"),
            Self::NoEndpoints(dst) => write!(f, "no endpoints for {dst}"),
            Self::RateLimited => f.write_str("rate limited"),
            Self::Timeout => f.write_str("timed out"),
            Self::Unavailable(why) => write!(f, "upstream unavailable: {why}"),
            Self::Unauthorized => f.write_str("unauthorized"),
        }
    }
}

/// Bytes a codec cannot read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not this protocol, or a frame broken inside: `what` says where.
    #[error("malformed {codec} frame: {what}")]
    Malformed {
        codec: &'static str,
        what: Cow<'static, str>,
    },
    /// A frame declared longer than [`MAX_FRAME`].
    #[error("{codec} frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        codec: &'static str,
        len: usize,
        max: usize,
    },
}

impl CodecError {
    pub fn malformed(codec: &'static str, what: impl Into<Cow<'static, str>>) -> Self {
        Self::Malformed {
            codec,
            what: what.into(),
        }
    }
}

/// Where a request went, as its metrics and tap events say.
#[derive(Clone, Debug)]
pub struct Served {
    pub direction: crate::metrics::Direction,
    pub target_addr: std::net::SocketAddr,
    pub dst: Option<Arc<crate::discover::DstLabels>>,
    pub tls: crate::metrics::Tls,
    /// Outbound: the identity the endpoint proved.
    pub server_id: Option<Arc<str>>,
}

/// A request on its way through a request stack.
pub struct Req {
    pub frame: Arc<Frame>,
    /// Its [`Codec::lane`].
    pub lane: u8,
    /// The client connection it came on.
    pub conn: Arc<serve::Conn>,
}

/// What a request stack answers: the response (`None`: the request expects none, or its
/// connection now streams), and where it was served.
pub struct Answer {
    pub frame: Option<Frame>,
    pub info: Arc<Served>,
}

/// A response is an endpoint's success for the balancer: a protocol error (`-ERR`) is the
/// application's answer, not the endpoint failing; failures are the local errors.
impl crate::balance::Outcome for Answer {
    fn is_success(&self) -> bool {
        true
    }
}

/// The names of the codecs this proxy has.
pub const NAMES: [&str; 2] = ["redis", "thrift"];

/// The codecs this proxy has, by name.
pub fn by_name(name: &str) -> Option<Arc<dyn Protocol>> {
    match name {
        "redis" => Some(Arc::new(redis::Redis)),
        "thrift" => Some(Arc::new(thrift::Thrift)),
        _ => None,
    }
}

/// How much a connection's read buffer takes at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Makes room in `buf` to read into: up to a chunk, once less than half of one is free. Its
/// frames share it until the requests they belong to complete, so a buffer made room in is a
/// new allocation: it is made once every few reads, not before each one.
fn make_room(buf: &mut BytesMut) {
    let free = buf.capacity() - buf.len();
    if free < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK - free);
    }
}

#[cfg(test)]
#[rustfmt::skip]
mod tests {
    //! The README's codec, as it is printed there: if it stops compiling, the README is wrong.

    use super::{Codec, CodecError, Frame, Kind, LocalError, Metadata, Protocol, Session, Side};
    use bytes::{Buf, BytesMut};

    struct Lines;

    impl Protocol for Lines {
        fn name(&self) -> &'static str {
            "lines"
        }
        fn codec(&self, side: Side) -> Box<dyn Codec> {
            Box::new(LineCodec { side })
        }
    }

    struct LineCodec {
        side: Side,
    }

    impl Codec for LineCodec {
        fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
            let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                return match buf.len() > 1024 {
                    true => Err(CodecError::malformed("lines", "a line over 1 KiB")),
                    false => Ok(None),
                };
            };
            let bytes = buf.split_to(end + 1).freeze();
            let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let mut words = text.split_whitespace().map(str::to_owned);
            let (kind, metadata) = match self.side {
                Side::Client => {
                    let command = words.next().unwrap_or_default().to_uppercase();
                    let mut meta = vec![("command".into(), command)];
                    meta.extend(words.next().map(|key| ("key".into(), key)));
                    (Kind::Request, meta)
                }
                Side::Server if text.starts_with("ERR") => (Kind::Error, vec![]),
                Side::Server => (Kind::Response, vec![]),
            };
            let metadata = Metadata::decoded(metadata);
            Ok(Some(Frame { kind, id: None, metadata, session: Session::None, bytes }))
        }

        fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
            dst.extend_from_slice(frame.bytes.chunk());
            Ok(())
        }

        fn local_reply(&self, _: &Frame, error: &LocalError) -> Option<Frame> {
            let bytes = format!("ERR mesh: {error}\n").into_bytes().into();
            let metadata = Metadata::default();
            Some(Frame { kind: Kind::Error, id: None, metadata, session: Session::None, bytes })
        }
    }

    #[test]
    fn a_line_protocol_in_fifty_lines() {
        let mut client = Lines.codec(Side::Client);
        let mut buf = BytesMut::from(&b"get user:1\nPING\npartial"[..]);
        let get = client.decode(&mut buf).unwrap().unwrap();
        assert_eq!((get.method(), get.get("key")), (Some("GET"), Some("user:1")));
        let ping = client.decode(&mut buf).unwrap().unwrap();
        assert_eq!((ping.method(), ping.get("key")), (Some("PING"), None));
        assert!(client.decode(&mut buf).unwrap().is_none());
        let reply = client.local_reply(&get, &LocalError::Timeout).unwrap();
        let mut out = BytesMut::new();
        client.encode(&reply, &mut out).unwrap();
        assert_eq!(&out[..], b"ERR mesh: timed out\n");
        let mut server = Lines.codec(Side::Server);
        let mut buf = BytesMut::from(&b"ERR nope\n"[..]);
        assert_eq!(server.decode(&mut buf).unwrap().unwrap().kind, Kind::Error);
        let mut long = BytesMut::from(&[b'x'; 2000][..]);
        assert!(client.decode(&mut long).is_err());
    }
}
