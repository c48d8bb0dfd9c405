//! Response classification and the response body that records it when the response ends.
//!
//! HTTP 5xx is a failure. A gRPC response (content type `application/grpc…`) is decided by its
//! `grpc-status`: in the trailers, or in the headers of a trailers-only response; `0` is a
//! success, anything else (or no status at all) a failure.
//!
//! The same places tell a tapped request's taps about its response: [`ResponseMeter::new`] its
//! start, the body's end (or [`record_error`]) its end, so nothing is measured twice.

use crate::metrics::{Classification, Metrics, RequestLabels, ResponseLabels};
use crate::tap::Tapped;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

/// Decides a response's class from its status and, for gRPC, its `grpc-status`.
pub fn classify(status: StatusCode, grpc: bool, grpc_status: Option<u32>) -> Classification {
    if status.is_server_error() {
        return Classification::Failure;
    }
    match (grpc, grpc_status) {
        (false, _) | (true, Some(0)) => Classification::Success,
        (true, _) => Classification::Failure,
    }
}

/// Whether headers describe a gRPC message stream.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The `grpc-status` in `headers`, if any and well-formed.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Records one response in the metrics when it ends (or is dropped).
pub struct ResponseMeter {
    metrics: Metrics,
    labels: RequestLabels,
    start: Instant,
    status: StatusCode,
    grpc: bool,
    grpc_status: Option<u32>,
    /// The taps that took the request, and the body bytes they are told of.
    tap: Option<(Tapped, u64)>,
}

impl ResponseMeter {
    /// Starts metering a response whose headers just arrived (and tells the taps).
    pub fn new(
        metrics: Metrics,
        labels: RequestLabels,
        start: Instant,
        status: StatusCode,
        headers: &HeaderMap,
        tapped: Option<Tapped>,
    ) -> Self {
        if let Some(tapped) = &tapped {
            tapped.response_start(status);
        }
        Self {
            metrics,
            labels,
            start,
            status,
            grpc: is_grpc(headers),
            grpc_status: grpc_status(headers),
            tap: tapped.map(|t| (t, 0)),
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(status) = grpc_status(trailers) {
            self.grpc_status = Some(status);
        }
    }

    /// Records the response; `failure` says how its stream broke, if it did.
    fn finish(self, failure: Option<&str>) {
        let classification = classify(self.status, self.grpc, self.grpc_status);
        if let Some((tapped, bytes)) = self.tap {
            let success = classification == Classification::Success;
            tapped.response_end(self.grpc_status, bytes, success, failure);
        }
        let labels = ResponseLabels {
            request: self.labels,
            classification,
            status_code: Some(self.status.as_u16()),
            grpc_status: self.grpc_status,
            error: None,
        };
        record(&self.metrics, &labels, self.start);
    }
}

/// Records a response the proxy made up itself because forwarding failed (`bytes` of body), and
/// tells the taps that took the request.
pub fn record_error(
    metrics: &Metrics,
    labels: RequestLabels,
    start: Instant,
    status: StatusCode,
    error: &'static str,
    tapped: Option<Tapped>,
    bytes: u64,
) {
    if let Some(tapped) = tapped {
        tapped.response_start(status);
        tapped.response_end(None, bytes, false, Some(error));
    }
    let labels = ResponseLabels {
        request: labels,
        classification: Classification::Failure,
        status_code: Some(status.as_u16()),
        grpc_status: None,
        error: Some(error),
    };
    record(metrics, &labels, start);
}

fn record(metrics: &Metrics, labels: &ResponseLabels, start: Instant) {
    metrics.response_total.get_or_create(labels).inc();
    let ms = start.elapsed().as_secs_f64() * 1_000.0;
    metrics
        .response_latency_ms
        .get_or_create(labels)
        .observe(ms);
}

pin_project_lite::pin_project! {
    /// A response body that classifies and records its response once the stream ends, fails or
    /// is dropped by the client.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        meter: Option<ResponseMeter>,
        // Whether the inner body said it had ended (hyper may drop it then without polling on).
        ended: bool,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(meter) = this.meter.take() {
                // Dropped before its end: the client went away (or reset the stream).
                meter.finish((!*this.ended).then_some(FAILURE_CANCELLED));
            }
        }
    }
}

/// A tapped response's failure when its body failed mid-stream.
pub const FAILURE_STREAM_RESET: &str = "stream_reset";
/// A tapped response's failure when the client went away before its end.
pub const FAILURE_CANCELLED: &str = "cancelled";

impl<B: Body> MeteredBody<B> {
    pub fn new(inner: B, meter: ResponseMeter) -> Self {
        Self {
            ended: inner.is_end_stream(),
            inner,
            meter: Some(meter),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                *this.ended = this.inner.is_end_stream();
                if let Some(meter) = this.meter.as_mut() {
                    if let Some(trailers) = frame.trailers_ref() {
                        meter.trailers(trailers);
                    } else if let (Some(data), Some((_, bytes))) =
                        (frame.data_ref(), meter.tap.as_mut())
                    {
                        *bytes += data.len() as u64;
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(meter) = this.meter.take() {
                    meter.finish(Some(FAILURE_STREAM_RESET));
                }
            }
            None => {
                if let Some(meter) = this.meter.take() {
                    meter.finish(None);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Direction;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    #[test]
    fn classification() {
        use Classification::*;
        fn check(status: u16, grpc: bool, grpc_status: Option<u32>, expected: Classification) {
            let got = classify(StatusCode::from_u16(status).unwrap(), grpc, grpc_status);
            assert_eq!(
                got, expected,
                "{status} grpc={grpc} grpc-status={grpc_status:?}"
            );
        }
        check(200, false, None, Success);
        check(404, false, None, Success);
        check(500, false, None, Failure);
        check(503, false, None, Failure);
        check(200, true, Some(0), Success);
        check(200, true, Some(2), Failure);
        check(200, true, Some(14), Failure);
        check(200, true, None, Failure);
        check(502, true, Some(0), Failure);
    }

    fn labels(m: &Metrics) -> RequestLabels {
        RequestLabels {
            direction: Direction::Inbound,
            authority: m.authority_label("svc:80"),
            target_addr: "127.0.0.1:80".parse().unwrap(),
            dst: None,
            tls: crate::metrics::Tls::NoIdentity(crate::metrics::NO_TLS_FROM_REMOTE),
        }
    }

    fn grpc_headers(status: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        if let Some(s) = status {
            h.insert("grpc-status", s.parse().unwrap());
        }
        h
    }

    async fn drain_with_trailers(m: &Metrics, headers: HeaderMap, trailers: Option<HeaderMap>) {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"x")))];
        frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let meter = ResponseMeter::new(
            m.clone(),
            labels(m),
            Instant::now(),
            StatusCode::OK,
            &headers,
            None,
        );
        MeteredBody::new(body, meter).collect().await.unwrap();
    }

    #[tokio::test]
    async fn grpc_status_in_trailers_decides() {
        let m = Metrics::new(10, false);
        drain_with_trailers(&m, grpc_headers(None), Some(grpc_headers(Some("7")))).await;
        let text = m.encode();
        assert!(
            text.contains(r#"classification="failure",status_code="200",grpc_status="7"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn trailers_only_grpc_response_decides_by_headers() {
        let m = Metrics::new(10, false);
        drain_with_trailers(&m, grpc_headers(Some("0")), None).await;
        let text = m.encode();
        assert!(
            text.contains(r#"classification="success",status_code="200",grpc_status="0"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_dropped_body_is_still_recorded_once() {
        let m = Metrics::new(10, false);
        let meter = ResponseMeter::new(
            m.clone(),
            labels(&m),
            Instant::now(),
            StatusCode::OK,
            &HeaderMap::new(),
            None,
        );
        drop(MeteredBody::new(
            http_body_util::Empty::<Bytes>::new(),
            meter,
        ));
        assert!(m
            .encode()
            .contains(r#"classification="success",status_code="200"} 1"#));
    }
}
