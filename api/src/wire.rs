//! What the API's streaming clients share: splitting a body into lines, a connection task that
//! ends with its call, and the text of an error answer.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// The longest line the streaming clients accept (1 MiB).
pub const MAX_LINE: usize = 1024 * 1024;

/// Aborts a connection task when dropped: the connection serves one call.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The first `limit` bytes of an error answer's body, as trimmed text; reads no more than that
/// (a misbehaving server cannot make the client buffer a large body), and an unreadable body is
/// empty text.
pub(crate) async fn error_text(body: Incoming, limit: usize) -> String {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// The current line is longer than [`MAX_LINE`].
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

/// Splits a byte stream into lines, whatever the frame boundaries; skips blank lines.
#[derive(Default)]
pub struct LineDecoder {
    buf: BytesMut,
    /// How far `buf` is known to hold no newline.
    scanned: usize,
}

impl LineDecoder {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete, non-blank line (without its newline), if one is buffered.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, TooLong> {
        loop {
            let Some(pos) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_LINE {
                    return Err(TooLong);
                }
                return Ok(None);
            };
            let end = self.scanned + pos;
            self.scanned = 0;
            if end > MAX_LINE {
                return Err(TooLong);
            }
            let mut line = self.buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(line.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_lines(frames: &[&[u8]], expected: Result<Vec<&str>, TooLong>) {
        let mut d = LineDecoder::default();
        let mut got = Vec::new();
        let mut result = Ok(());
        for frame in frames {
            d.push(frame);
            loop {
                match d.next_line() {
                    Ok(Some(line)) => got.push(String::from_utf8_lossy(&line).into_owned()),
                    Ok(None) => break,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        match expected {
            Ok(lines) => {
                assert_eq!(result, Ok(()));
                assert_eq!(got, lines);
            }
            Err(e) => assert_eq!(result, Err(e)),
        }
    }

    #[test]
    fn lines() {
        check_lines(&[b"a\nb\n"], Ok(vec!["a", "b"]));
        check_lines(&[b"a", b"b\nc", b"\n"], Ok(vec!["ab", "c"]));
        check_lines(&[b"\n\r\n  \nx\r\n"], Ok(vec!["x"]));
        check_lines(&[b"partial"], Ok(vec![]));
        let big = vec![b'x'; MAX_LINE + 1];
        check_lines(&[&big], Err(TooLong));
        let mut exact = vec![b'x'; MAX_LINE];
        exact.push(b'\n');
        check_lines(
            &[&exact[..10], &exact[10..]],
            Ok(vec![&"x".repeat(MAX_LINE)]),
        );
    }
}
