//! Unary gRPC over HTTP/2 cleartext: framing, status codes, the server side and a client channel.
//!
//! Only what the demo needs, written out so that every failure has a defined answer: one
//! length-prefixed message each way, no compression, `grpc-status` always sent (in trailers, or
//! trailers-only for protocol errors and refused calls), messages capped at [`MAX_MESSAGE`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::net::{self, Target};

/// The largest message accepted or sent, as in gRPC's default (4 MiB) but smaller: 1 MiB.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// The length prefix of a gRPC message: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// The status codes the demo uses (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    /// The code for a `grpc-status` value; codes the demo does not name read as `Unknown`.
    pub fn from_i32(n: i32) -> Code {
        match n {
            0 => Code::Ok,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            8 => Code::ResourceExhausted,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// A non-OK gRPC status: the numeric code as received (kept even when [`Code`] has no name for
/// it) and the decoded `grpc-message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code: code as i32,
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        Code::from_i32(self.code)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc-status {}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// A unary gRPC service: answers one request message (protobuf bytes, unframed) on a full
/// method path (`/demo.Emoji/ListAll`) with one response message, or a status. An unknown path
/// answers `Code::Unimplemented`. The answer may wait on a back end of the service's own
/// (voting's Redis).
pub trait Unary: Send + Sync + 'static {
    fn call(
        &self,
        path: &str,
        request: Bytes,
    ) -> impl Future<Output = Result<Vec<u8>, Status>> + Send;

    /// A status to answer the call `path` with instead of calling it, as a server that sheds
    /// load does: trailers-only (the status in the response headers, no message), the form a
    /// proxy can see, and retry, without reading the body. `None`, the default, calls
    /// [`Unary::call`].
    fn refuse(&self, _path: &str) -> Option<Status> {
        None
    }
}

/// Decodes a request message, any protobuf error being the caller's: `INVALID_ARGUMENT`.
pub fn decode<M: prost::Message + Default>(message: Bytes) -> Result<M, Status> {
    M::decode(message).map_err(|e| Status::new(Code::InvalidArgument, format!("decoding: {e}")))
}

/// Serves `service` on `listener` (HTTP/2 with prior knowledge; HTTP/1.1 is answered too) until
/// `shutdown` completes, then finishes the calls in flight.
pub async fn serve<U: Unary>(
    listener: TcpListener,
    service: Arc<U>,
    shutdown: impl Future<Output = ()>,
) {
    let svc = hyper::service::service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(handle(&*service, req).await) }
    });
    net::serve(listener, svc, shutdown).await
}

async fn handle<U: Unary>(service: &U, req: Request<Incoming>) -> Response<GrpcBody> {
    if !is_grpc(req.headers()) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected content-type application/grpc\n",
        );
    }
    if req.method() != Method::POST {
        let mut rsp = plain(StatusCode::METHOD_NOT_ALLOWED, "gRPC calls are POST\n");
        rsp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return rsp;
    }
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), PREFIX + MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return trailers_only(&too_large(None));
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a gRPC request");
            return trailers_only(&Status::new(
                Code::InvalidArgument,
                format!("reading the request: {e}"),
            ));
        }
    };
    let message = match unframe(body) {
        Ok(m) => m,
        Err(status) => return trailers_only(&status),
    };
    if let Some(status) = service.refuse(&path) {
        return trailers_only(&status);
    }
    match service.call(&path, message).await {
        Ok(response) if response.len() > MAX_MESSAGE => trailers_only(&Status::new(
            Code::Internal,
            "the response is larger than the message limit",
        )),
        Ok(response) => with_trailers(Some(frame(&response)), None),
        // The service's own answer: headers, then the status in the trailers, as for a
        // success (protocol errors above are trailers-only).
        Err(status) => with_trailers(None, Some(&status)),
    }
}

/// An answer in full: headers, the message if any, then the status in the trailers.
fn with_trailers(message: Option<Bytes>, status: Option<&Status>) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    let code = status.map_or(0, |s| s.code);
    trailers.insert("grpc-status", HeaderValue::from(code));
    if let Some(s) = status {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&s.message)) {
            trailers.insert("grpc-message", v);
        }
    }
    let mut rsp = Response::new(GrpcBody {
        data: message,
        trailers: Some(trailers),
    });
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    rsp
}

/// Whether the content-type is gRPC's: `application/grpc`, optionally `+proto` or `;…`.
fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match ct.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<GrpcBody> {
    let mut rsp = Response::new(GrpcBody {
        data: Some(Bytes::from_static(text.as_bytes())),
        trailers: None,
    });
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// An error answer with no body: the status in the headers (gRPC's "trailers-only").
fn trailers_only(status: &Status) -> Response<GrpcBody> {
    let mut rsp = Response::new(GrpcBody {
        data: None,
        trailers: None,
    });
    let headers = rsp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status.code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&status.message)) {
        headers.insert("grpc-message", v);
    }
    rsp
}

fn too_large(len: Option<usize>) -> Status {
    let got = len.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
    Status::new(
        Code::ResourceExhausted,
        format!("message larger than {MAX_MESSAGE} bytes{got}"),
    )
}

// === framing ===

/// Frames one message: a zero compression flag, its length, the bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(PREFIX + message.len());
    buf.put_u8(0);
    // A message never exceeds MAX_MESSAGE (checked by callers), which fits in a u32.
    buf.put_u32(message.len() as u32);
    buf.put_slice(message);
    buf.freeze()
}

/// Reads exactly one framed message from a whole body.
pub fn unframe(mut body: Bytes) -> Result<Bytes, Status> {
    if body.len() < PREFIX {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "expected one length-prefixed message, got {} bytes",
                body.len()
            ),
        ));
    }
    let flag = body.get_u8();
    let len = body.get_u32() as usize;
    match flag {
        0 => {}
        1 => {
            return Err(Status::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ))
        }
        n => {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("invalid compression flag {n}"),
            ))
        }
    }
    if len > MAX_MESSAGE {
        return Err(too_large(Some(len)));
    }
    if body.len() != len {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "the message prefix says {len} bytes, the body holds {}",
                body.len()
            ),
        ));
    }
    Ok(body)
}

/// Percent-encodes a `grpc-message`: bytes outside printable ASCII, and `%`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a `grpc-message`; malformed escapes are kept as they are.
pub fn percent_decode(message: &str) -> String {
    let bytes = message.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

// === impl GrpcBody ===

/// A response body of at most one data frame, then optional trailers.
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let n = self.data.as_ref().map_or(0, |d| d.len() as u64);
        SizeHint::with_exact(n)
    }
}

// === client ===

/// Why a call did not return a message.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with a non-OK `grpc-status`.
    #[error("{0}")]
    Status(Status),
    /// No connection could be made, or it broke, or a proxy answered that the server is away.
    #[error("{0} is unavailable: {1}")]
    Unavailable(String, String),
    /// The call did not finish within the channel's timeout.
    #[error("calling {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// The answer was not a valid gRPC response.
    #[error("calling {0}: invalid response: {1}")]
    Protocol(String, String),
}

/// A gRPC client for one back end: one multiplexed HTTP/2 connection, made on first use and
/// made again after it fails; every call bounded by a timeout. Requests carry the target's
/// authority as `:authority`, so a proxy in between can route them by name.
pub struct Channel {
    target: Target,
    timeout: Duration,
    conn: Mutex<Option<(u64, http2::SendRequest<Full<Bytes>>)>>,
}

impl Channel {
    pub fn new(target: Target, timeout: Duration) -> Channel {
        Channel {
            target,
            timeout,
            conn: Mutex::new(None),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Calls `path` (`/demo.Emoji/ListAll`) with `request`.
    pub async fn call<Req, Rsp>(&self, path: &str, request: &Req) -> Result<Rsp, CallError>
    where
        Req: prost::Message,
        Rsp: prost::Message + Default,
    {
        let call = self.call_raw(path, request.encode_to_vec());
        let message = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result?,
            Err(_) => return Err(CallError::Timeout(self.target.authority(), self.timeout)),
        };
        Rsp::decode(message).map_err(|e| self.protocol(format!("decoding the message: {e}")))
    }

    async fn call_raw(&self, path: &str, request: Vec<u8>) -> Result<Bytes, CallError> {
        let (generation, mut sender) = self.connection().await?;
        let uri = format!("http://{}{path}", self.target.authority());
        let millis = self.timeout.as_millis().clamp(1, 99_999_999);
        let req = Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("grpc-timeout", format!("{millis}m"))
            .header(http::header::USER_AGENT, "mesh-demo-app")
            .body(Full::new(frame(&request)))
            .map_err(|e| self.protocol(format!("building the request: {e}")))?;
        let rsp = match sender.send_request(req).await {
            Ok(rsp) => rsp,
            Err(e) => {
                self.forget(generation).await;
                return Err(self.unavailable(e));
            }
        };
        match rsp.status() {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => {
                return Err(self.unavailable(format!("HTTP status {}", rsp.status())))
            }
            StatusCode::GATEWAY_TIMEOUT => {
                return Err(CallError::Timeout(self.target.authority(), self.timeout))
            }
            s => return Err(self.protocol(format!("HTTP status {s}"))),
        }
        if let Some(status) = status_of(rsp.headers()) {
            return match status {
                Ok(()) => Err(self.protocol("grpc-status 0 without a message".into())),
                Err(s) => Err(CallError::Status(s)),
            };
        }
        let body = match Limited::new(rsp.into_body(), PREFIX + MAX_MESSAGE)
            .collect()
            .await
        {
            Ok(body) => body,
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(CallError::Status(too_large(None)))
            }
            Err(e) => {
                self.forget(generation).await;
                return Err(self.unavailable(e));
            }
        };
        let status = body.trailers().and_then(status_of);
        match status {
            Some(Ok(())) => unframe(body.to_bytes()).map_err(|s| self.protocol(s.to_string())),
            Some(Err(s)) => Err(CallError::Status(s)),
            None => Err(self.protocol("no grpc-status in the trailers".into())),
        }
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> Result<(u64, http2::SendRequest<Full<Bytes>>), CallError> {
        let mut conn = self.conn.lock().await;
        if let Some((generation, sender)) = conn.as_ref() {
            if !sender.is_closed() {
                return Ok((*generation, sender.clone()));
            }
        }
        let generation = conn.as_ref().map_or(0, |(g, _)| g + 1);
        *conn = None;
        let stream = self
            .target
            .connect()
            .await
            .map_err(|e| self.unavailable(e))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unavailable(e))?;
        let authority = self.target.authority();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %authority, error = %e, "connection closed");
            }
        });
        *conn = Some((generation, sender.clone()));
        Ok((generation, sender))
    }

    /// Drops connection `generation` after it failed, so that the next call makes a new one.
    async fn forget(&self, generation: u64) {
        let mut conn = self.conn.lock().await;
        if let Some((g, sender)) = conn.take() {
            if g != generation {
                *conn = Some((g, sender));
            }
        }
    }

    fn unavailable(&self, e: impl fmt::Display) -> CallError {
        CallError::Unavailable(self.target.authority(), e.to_string())
    }

    fn protocol(&self, e: String) -> CallError {
        CallError::Protocol(self.target.authority(), e)
    }
}

/// The `grpc-status` (and `grpc-message`) in a header map, if there is one.
fn status_of(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let raw = headers.get("grpc-status")?;
    let code = raw
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(Code::Unknown as i32);
    if code == 0 {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Err(Status { code, message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_unframe(body: &[u8], expected: Result<&[u8], Code>) {
        let got = unframe(Bytes::copy_from_slice(body));
        match (got, expected) {
            (Ok(m), Ok(e)) => assert_eq!(&m[..], e, "{body:?}"),
            (Err(s), Err(c)) => assert_eq!(s.code(), c, "{body:?}: {s}"),
            (got, expected) => panic!("{body:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn unframe_cases() {
        check_unframe(&[0, 0, 0, 0, 0], Ok(b""));
        check_unframe(&[0, 0, 0, 0, 2, 8, 1], Ok(&[8, 1]));
        check_unframe(&[], Err(Code::InvalidArgument));
        check_unframe(&[0, 0, 0], Err(Code::InvalidArgument));
        check_unframe(&[0, 0, 0, 0, 3, 1], Err(Code::InvalidArgument));
        check_unframe(&[0, 0, 0, 0, 1, 1, 2], Err(Code::InvalidArgument));
        check_unframe(&[1, 0, 0, 0, 1, 1], Err(Code::Unimplemented));
        check_unframe(&[7, 0, 0, 0, 1, 1], Err(Code::InvalidArgument));
        check_unframe(&[0, 0, 0x20, 0, 0], Err(Code::ResourceExhausted));
        check_unframe(&[0, 0xff, 0xff, 0xff, 0xff], Err(Code::ResourceExhausted));
    }

    #[test]
    fn frame_round_trips() {
        let m = frame(b"hello");
        assert_eq!(&m[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(&unframe(m).unwrap()[..], b"hello");
    }

    fn check_percent(raw: &str, encoded: &str) {
        assert_eq!(percent_encode(raw), encoded);
        assert_eq!(percent_decode(encoded), raw);
    }

    #[test]
    fn grpc_message_encoding() {
        check_percent("plain text", "plain text");
        check_percent("100%", "100%25");
        check_percent("🍩 fails", "%F0%9F%8D%A9 fails");
        check_percent("a\nb", "a%0Ab");
        // Malformed escapes are kept.
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    fn check_content_type(ct: Option<&str>, expected: bool) {
        let mut headers = HeaderMap::new();
        if let Some(ct) = ct {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(ct).unwrap(),
            );
        }
        assert_eq!(is_grpc(&headers), expected, "{ct:?}");
    }

    #[test]
    fn content_types() {
        check_content_type(Some("application/grpc"), true);
        check_content_type(Some("application/grpc+proto"), true);
        check_content_type(Some("application/grpc; charset=utf-8"), true);
        check_content_type(Some("application/grpcx"), false);
        check_content_type(Some("application/json"), false);
        check_content_type(None, false);
    }

    #[test]
    fn statuses_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(status_of(&h), Some(Ok(())));
        h.insert("grpc-status", HeaderValue::from_static("2"));
        h.insert("grpc-message", HeaderValue::from_static("no%20way"));
        assert_eq!(
            status_of(&h),
            Some(Err(Status {
                code: 2,
                message: "no way".into()
            }))
        );
        h.insert("grpc-status", HeaderValue::from_static("garbage"));
        assert_eq!(status_of(&h).unwrap().unwrap_err().code(), Code::Unknown);
    }
}
