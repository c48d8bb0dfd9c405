//! Protocol detection from a connection's first bytes.
//!
//! The proxy reads what the client sends first and decides: an HTTP/2 connection preface (gRPC
//! included), an HTTP/1.x request line, a TLS ClientHello, or anything else (opaque TCP). A
//! client that sends nothing within the timeout is opaque too: it may be waiting for a server
//! that speaks first.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// A TLS ClientHello: the application's own TLS, passed through untouched.
    Tls,
    Opaque,
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

/// Reads from `io` until [`classify`] decides, `capacity` bytes were read, the peer closes, or
/// `timeout` passes. Undecided input is opaque, except a plausible HTTP/1 request line that fills
/// the whole buffer: that is HTTP/1, so the HTTP server can refuse it as too long.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
    capacity: usize,
) -> std::io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(capacity.min(8 * 1024));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.len() >= capacity {
            let protocol = if http1_prefix_plausible(&buf) {
                Protocol::Http1
            } else {
                Protocol::Opaque
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
            return Ok(Detected {
                protocol: Protocol::Opaque,
                prefix: buf.freeze(),
                fallback: Some(fallback),
            });
        }
        if let Some(protocol) = classify(&buf) {
            return Ok(Detected {
                protocol,
                prefix: buf.freeze(),
                fallback: None,
            });
        }
    }
}

/// Decides the protocol from the bytes read so far, or `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 first: its preface also looks like an HTTP/1 request line.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    if buf[0] == 0x16 {
        return classify_tls(buf);
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if is_http1_request_line(&buf[..end]) => Some(Protocol::Http1),
        Some(_) => Some(Protocol::Opaque),
        None if http1_prefix_plausible(buf) => None,
        None => Some(Protocol::Opaque),
    }
}

/// A TLS record of type handshake (0x16), version 3.x, carrying a ClientHello (type 1).
fn classify_tls(buf: &[u8]) -> Option<Protocol> {
    match buf {
        [0x16, 0x03, minor, _, _, 0x01, ..] if *minor <= 0x04 => Some(Protocol::Tls),
        [0x16] | [0x16, 0x03] | [0x16, 0x03, _] | [0x16, 0x03, _, _] | [0x16, 0x03, _, _, _] => {
            None
        }
        _ => Some(Protocol::Opaque),
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
        check(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(Protocol::Http1));
        check(b"POST /a?b=c HTTP/1.0\r\n", Some(Protocol::Http1));
        check(b"GET / HTTP/1.1\n", Some(Protocol::Http1));
        check(
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            Some(Protocol::Http1),
        );
        check(b"GET", None);
        check(b"GET /index.html HTT", None);
        check(b"GET /index.html HTTP/1.1", None);
        check(b"GET / HTTP/2.0\r\n", Some(Protocol::Opaque));
        check(b"GET /a b HTTP/1.1\r\n", Some(Protocol::Opaque));
        check(b"G(T / HTTP/1.1\r\n", Some(Protocol::Opaque));
    }

    #[test]
    fn http2_preface() {
        check(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Http2));
        check(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            Some(Protocol::Http2),
        );
        check(b"PRI * HTTP/2", None);
        check(b"PRI * HTTP/2.0\r\n\r\nXX", Some(Protocol::Opaque));
    }

    #[test]
    fn tls_client_hello() {
        check(
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00],
            Some(Protocol::Tls),
        );
        check(&[0x16, 0x03, 0x03, 0x00, 0x40, 0x01], Some(Protocol::Tls));
        check(&[0x16, 0x03], None);
        check(
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x02],
            Some(Protocol::Opaque),
        );
        check(&[0x16, 0x07], Some(Protocol::Opaque));
    }

    #[test]
    fn opaque() {
        check(b"\x00\x01binary", Some(Protocol::Opaque));
        check(b"*1\r\n$4\r\nPING\r\n", Some(Protocol::Opaque));
        check(b"SSH-2.0-OpenSSH_9.2\r\n", Some(Protocol::Opaque));
        check(b"hello world\n", Some(Protocol::Opaque));
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
            (Protocol::Opaque, Some(Fallback::Timeout), 0)
        );
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
        assert_eq!(d.protocol, Protocol::Http1);
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
        assert_eq!(d.protocol, Protocol::Http1);
    }
}
