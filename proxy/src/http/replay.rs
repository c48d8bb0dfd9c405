//! A request body that can be sent again: the first attempt streams it from the client as
//! usual while a copy of up to [`MAX_REPLAY`] bytes is kept; a retry replays the copy, then goes
//! on reading from the client where the previous attempt stopped. A body larger than that stops
//! being kept as soon as it passes the limit (the attempt goes on streaming), and cannot be
//! replayed.
//!
//! Attempts are made one after the other, never at once, so one lock around the shared state is
//! only ever taken by one attempt's body.

use crate::svc::{lock, BoxBody, BoxError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

/// The most a replayable body keeps (64 KiB).
pub const MAX_REPLAY: usize = 64 * 1024;

/// A copy of a request's head (for another attempt, or a mirror).
pub fn clone_head(head: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    *req.extensions_mut() = head.extensions.clone();
    req.into_parts().0
}

/// One attempt's view of a replayable body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// How many of the kept chunks this attempt has sent.
    sent: usize,
    /// Whether this attempt has sent the trailers.
    sent_trailers: bool,
    size: SizeHint,
}

struct Shared {
    /// The client's body, not read to its end yet.
    inner: Option<BoxBody>,
    kept: Vec<Bytes>,
    kept_len: usize,
    trailers: Option<HeaderMap>,
    /// More than `limit` was read: nothing is kept any more.
    overflow: bool,
    limit: usize,
}

impl ReplayBody {
    /// Wraps `body`; `None` when its length is known to be over `limit` (it is handed back).
    pub fn new(body: BoxBody, limit: usize) -> Result<Self, BoxBody> {
        let size = body.size_hint();
        if size.lower() > limit as u64 {
            return Err(body);
        }
        let ended = body.is_end_stream();
        Ok(Self {
            shared: Arc::new(Mutex::new(Shared {
                inner: (!ended).then_some(body),
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                overflow: false,
                limit,
            })),
            sent: 0,
            sent_trailers: false,
            size,
        })
    }

    /// A new attempt's body, from the start; `None` when the body cannot be replayed.
    pub fn replay(&self) -> Option<Self> {
        if lock(&self.shared).overflow {
            return None;
        }
        Some(Self {
            shared: self.shared.clone(),
            sent: 0,
            sent_trailers: false,
            size: self.size,
        })
    }

    /// Whether a retry could send the whole body again.
    pub fn is_replayable(&self) -> bool {
        !lock(&self.shared).overflow
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = lock(&this.shared);
        if let Some(chunk) = shared.kept.get(this.sent) {
            this.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(inner) = shared.inner.as_mut() else {
            if !this.sent_trailers {
                this.sent_trailers = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Err(_)) => false,
            Some(Ok(_)) => shared.inner.as_ref().is_some_and(|b| b.is_end_stream()),
        };
        if ended {
            shared.inner = None;
        }
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !shared.overflow {
                        if shared.kept_len + data.len() > shared.limit {
                            shared.overflow = true;
                            shared.kept = Vec::new();
                        } else {
                            shared.kept_len += data.len();
                            shared.kept.push(data.clone());
                            this.sent = shared.kept.len();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        shared.trailers = Some(trailers.clone());
                        this.sent_trailers = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.inner.is_none()
            && self.sent >= shared.kept.len()
            && (self.sent_trailers || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunks(parts: &[&'static [u8]], trailers: bool) -> BoxBody {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        BoxBody::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    async fn read(body: ReplayBody) -> (Vec<u8>, Option<HeaderMap>) {
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_small_body_is_sent_again_whole() {
        let body = ReplayBody::new(chunks(&[b"hello ", b"world"], true), 64).unwrap();
        let again = body.replay().unwrap();
        let (first, t1) = read(body).await;
        let (second, t2) = read(again).await;
        assert_eq!(first, b"hello world");
        assert_eq!(second, b"hello world");
        assert_eq!(t1.unwrap()["grpc-status"], "0");
        assert_eq!(t2.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_retry_goes_on_where_a_partial_attempt_stopped() {
        let mut body = ReplayBody::new(chunks(&[b"a", b"b", b"c"], false), 64).unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let again = body.replay().unwrap();
        drop(body);
        assert_eq!(read(again).await.0, b"abc");
    }

    #[tokio::test]
    async fn a_large_body_streams_but_is_not_replayable() {
        let body = ReplayBody::new(chunks(&[b"0123456789", b"0123456789"], false), 15).unwrap();
        let probe = body.replay().unwrap();
        assert_eq!(read(body).await.0.len(), 20);
        assert!(!probe.is_replayable());
        assert!(probe.replay().is_none());
        let known = BoxBody::new(Full::new(Bytes::from(vec![0u8; 100])));
        assert!(
            ReplayBody::new(known, 15).is_err(),
            "a length over the limit is refused at once"
        );
    }

    #[tokio::test]
    async fn an_empty_body_replays_empty() {
        let body = ReplayBody::new(BoxBody::empty(), 64).unwrap();
        assert!(body.is_end_stream());
        let again = body.replay().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(read(again).await.0, b"");
    }
}
