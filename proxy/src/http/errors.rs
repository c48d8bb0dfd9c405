//! The one place where an error becomes what the client gets: a response the proxy makes
//! itself, with the status that says whose fault it was (400, 502, 503, 504) and the reason in
//! `mesh-proxy-error`.
//!
//! Layers below return errors as values ([`NoEndpoints`], [`InvalidUri`], the upstream client's
//! [`UpstreamError`] …); [`Failure::of`] reads the status and the metric label off them, so the
//! metrics layer that records a failure and this layer that answers it always agree.

use super::{client::UpstreamError, PROXY_ERROR_HEADER, PROXY_UNANSWERED_HEADER};
use crate::svc::{BoxBody, BoxError};
use bytes::Bytes;
use futures_util::{future, FutureExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use std::task::{Context, Poll};

/// A mesh service with no endpoints, even after waiting the failfast timeout.
#[derive(Debug, thiserror::Error)]
#[error("no endpoints for {0}")]
pub struct NoEndpoints(pub String);

/// A request URI the proxy cannot forward.
#[derive(Debug, thiserror::Error)]
#[error("invalid request URI")]
pub struct InvalidUri;

/// A request that took longer than its route's `timeouts.request`.
#[derive(Debug, thiserror::Error)]
#[error("the request timed out after {0:?} (its route's request timeout)")]
pub struct RequestTimeout(pub std::time::Duration);

/// An attempt that took longer than its per-attempt timeout (a retry's, or the route's
/// `timeouts.backendRequest`).
#[derive(Debug, thiserror::Error)]
#[error("the backend did not answer within {0:?}")]
pub struct AttemptTimeout(pub std::time::Duration);

/// A request that matches no rule of a Service that has routes.
#[derive(Debug, thiserror::Error)]
#[error("no route of {0} matches the request")]
pub struct NoRoute(pub String);

/// An inbound connection or request that no authorization allows (403, gRPC
/// `PERMISSION_DENIED`); the message names the Server or default policy that refused it.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized: {0}")]
pub struct Unauthorized(pub String);

/// An inbound request over its Server's local rate limit (429, gRPC `RESOURCE_EXHAUSTED`).
#[derive(Debug, thiserror::Error)]
#[error("rate limited by {0}")]
pub struct RateLimited(pub String);

/// A rule whose backend cannot be used (an unknown Service), or that has none.
#[derive(Debug, thiserror::Error)]
#[error("the route has no usable backend: {0}")]
pub struct InvalidBackend(pub String);

/// An error the metrics layer has already recorded (as a response of the endpoint it was
/// sent to): the layers above it answer it without counting it again.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Recorded(pub BoxError);

/// How a failed request is answered and counted.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    /// The `error` label of `response_total`.
    pub label: &'static str,
    /// What the client reads in `mesh-proxy-error` and the body.
    pub message: String,
    /// The upstream never answered: the response says why in `mesh-proxy-unanswered`, and the
    /// client's proxy may send the request to another endpoint ([`unanswered`]).
    pub unanswered: Option<Unanswered>,
}

/// Why the upstream never answered a request, as `mesh-proxy-unanswered` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// `unsent`: the request never reached it (no connection, or the connection was refused
    /// or went away before the request was written): any request may go elsewhere.
    Unsent,
    /// `reset`: the request was written on a connection that was reset or closed before any
    /// answer came: it may have arrived, so only a safe request goes elsewhere.
    Reset,
}

impl Unanswered {
    /// Why `error` says the upstream never answered, if it does.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if unsent(error) {
            Some(Self::Unsent)
        } else if reset_before_answer(error) {
            Some(Self::Reset)
        } else {
            None
        }
    }

    /// Whether a request may go to another endpoint: any when unsent, a safe one when reset.
    pub fn allows(self, safe: bool) -> bool {
        match self {
            Self::Unsent => true,
            Self::Reset => safe,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Unsent => "unsent",
            Self::Reset => "reset",
        }
    }
}

impl Failure {
    /// What `error` means for the client.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let error = match error.downcast_ref::<Recorded>() {
            Some(Recorded(inner)) => &**inner,
            None => error,
        };
        let (status, label) = if error.is::<NoEndpoints>() {
            (StatusCode::SERVICE_UNAVAILABLE, "no_endpoints")
        } else if error.is::<InvalidUri>() {
            (StatusCode::BAD_REQUEST, "invalid_uri")
        } else if error.is::<RequestTimeout>() {
            (StatusCode::GATEWAY_TIMEOUT, "request_timeout")
        } else if error.is::<AttemptTimeout>() {
            (StatusCode::GATEWAY_TIMEOUT, "response_timeout")
        } else if error.is::<NoRoute>() {
            (StatusCode::NOT_FOUND, "no_route")
        } else if error.is::<Unauthorized>() {
            (StatusCode::FORBIDDEN, "unauthorized")
        } else if error.is::<RateLimited>() {
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        } else if error.is::<InvalidBackend>() {
            (StatusCode::INTERNAL_SERVER_ERROR, "invalid_backend")
        } else if error
            .downcast_ref::<UpstreamError>()
            .is_some_and(UpstreamError::request_body_failed)
        {
            // The client's own body broke off or was malformed (a bad chunk line): its fault,
            // not the application's.
            (StatusCode::BAD_REQUEST, "request_body")
        } else if let Some(upstream) = error.downcast_ref::<UpstreamError>() {
            let status = match upstream {
                UpstreamError::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            (status, upstream.label())
        } else {
            (StatusCode::BAD_GATEWAY, "upstream")
        };
        let unanswered = Unanswered::of(error);
        Self {
            status,
            label,
            message: error_chain(error),
            unanswered,
        }
    }

    /// The response the client gets; a gRPC client gets its status in gRPC's terms.
    pub fn response(&self, grpc: bool) -> Response<BoxBody> {
        let mut rsp = if grpc {
            grpc_error_response(grpc_code(self.status), &self.message)
        } else {
            error_response(self.status, &self.message)
        };
        if let Some(why) = self.unanswered {
            rsp.headers_mut().insert(
                PROXY_UNANSWERED_HEADER,
                HeaderValue::from_static(why.as_str()),
            );
        }
        rsp
    }
}

/// `error` and its sources, outermost first. The endpoint's metrics layer wraps what it counted
/// in [`Recorded`], whose `source` skips the wrapped error itself: this yields it.
pub fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |err| match err.downcast_ref::<Recorded>() {
        Some(recorded) => Some(&*recorded.0),
        None => err.source(),
    })
    .filter(|err| !err.is::<Recorded>())
}

/// Whether `error` says the request was written on a connection that was reset or closed
/// before any answer came: the endpoint may have got it, and never answered. (Not a request
/// body that failed: that is the client's.)
fn reset_before_answer(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut sending = false;
    for err in causes(error) {
        if let Some(up) = err.downcast_ref::<UpstreamError>() {
            if !matches!(up, UpstreamError::Request { .. }) || up.request_body_failed() {
                return false;
            }
            sending = true;
        } else if sending {
            if let Some(h) = err.downcast_ref::<hyper::Error>() {
                if h.is_incomplete_message() || h.is_canceled() {
                    return true;
                }
            }
            let io = err
                .downcast_ref::<std::io::Error>()
                .or_else(|| err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
            if let Some(io) = io {
                use std::io::ErrorKind::*;
                if matches!(
                    io.kind(),
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                ) {
                    return true;
                }
            }
            // The peer's HTTP/2 connection went away (GOAWAY) with the request on it.
            if err
                .downcast_ref::<h2::Error>()
                .is_some_and(h2::Error::is_go_away)
            {
                return true;
            }
        }
    }
    false
}

/// Whether `error` says the request never reached the upstream: it could not connect (or
/// not within the connect timeout, or not over TLS), or the upstream refused the stream
/// (HTTP/2 `REFUSED_STREAM`). Not a failure while sending: that one may have reached it.
pub fn unsent(error: &(dyn std::error::Error + 'static)) -> bool {
    for err in causes(error) {
        if let Some(up) = err.downcast_ref::<UpstreamError>() {
            return matches!(
                up,
                UpstreamError::Connect { .. }
                    | UpstreamError::ConnectTimeout { .. }
                    | UpstreamError::Tls { .. }
                    | UpstreamError::Handshake { .. }
            );
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
    }
    false
}

/// Why a peer proxy's error response says its upstream never answered the request
/// ([`Failure::unanswered`]), if it does.
pub fn unanswered<B>(rsp: &Response<B>) -> Option<Unanswered> {
    if !rsp.status().is_server_error() {
        return None;
    }
    match rsp.headers().get(PROXY_UNANSWERED_HEADER)?.as_bytes() {
        b"unsent" => Some(Unanswered::Unsent),
        b"reset" => Some(Unanswered::Reset),
        _ => None,
    }
}

/// The gRPC status code that says what an HTTP error status says.
pub fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,       // INTERNAL: the proxy could not read the request
        403 => 7,        // PERMISSION_DENIED
        404 => 12,       // UNIMPLEMENTED: no route for the method
        429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        504 => 4,        // DEADLINE_EXCEEDED
        _ => 13,         // INTERNAL
    }
}

/// A trailers-only gRPC response the proxy makes itself: status 200, `grpc-status` and
/// `grpc-message` in the headers, the reason in `mesh-proxy-error`.
pub fn grpc_error_response(code: u16, msg: &str) -> Response<BoxBody> {
    let mut rsp = Response::new(BoxBody::empty());
    let clean = msg.replace(|c: char| !c.is_ascii() || c.is_ascii_control(), " ");
    let reason =
        HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
    let headers = rsp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    // grpc-message is percent-encoded; the cleaned text only needs its '%' escaped.
    if let Ok(v) = HeaderValue::from_str(&clean.replace('%', "%25")) {
        headers.insert("grpc-message", v);
    }
    headers.insert(PROXY_ERROR_HEADER, reason);
    rsp
}

/// A response the proxy makes itself, with the reason in a header and the body.
pub fn error_response(status: StatusCode, msg: &str) -> Response<BoxBody> {
    let body = BoxBody::new(Full::new(Bytes::from(format!("{msg}\n"))));
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    let reason =
        HeaderValue::from_str(&msg.replace(|c: char| !c.is_ascii() || c.is_ascii_control(), " "))
            .unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
    rsp.headers_mut().insert(PROXY_ERROR_HEADER, reason);
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// An error's message followed by its sources', `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

type Answer = fn(Result<Response<BoxBody>, BoxError>) -> Result<Response<BoxBody>, BoxError>;

fn respond_http(
    result: Result<Response<BoxBody>, BoxError>,
) -> Result<Response<BoxBody>, BoxError> {
    Ok(result.unwrap_or_else(|error| answer(&error, false)))
}

fn respond_grpc(
    result: Result<Response<BoxBody>, BoxError>,
) -> Result<Response<BoxBody>, BoxError> {
    Ok(result.unwrap_or_else(|error| answer(&error, true)))
}

fn answer(error: &BoxError, grpc: bool) -> Response<BoxBody> {
    let failure = Failure::of(&**error);
    tracing::info!(error = %failure.message, "request failed");
    failure.response(grpc)
}

/// Answers every error of the stack below with the response the client gets.
#[derive(Clone, Copy, Debug, Default)]
pub struct RespondLayer;

#[derive(Clone, Debug)]
pub struct Respond<S>(S);

impl<S> tower::Layer<S> for RespondLayer {
    type Service = Respond<S>;
    fn layer(&self, inner: S) -> Respond<S> {
        Respond(inner)
    }
}

impl<S> tower::Service<Request<BoxBody>> for Respond<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = future::Map<S::Future, Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let grpc = super::classify::is_grpc(req.headers());
        let respond = if grpc { respond_grpc } else { respond_http };
        self.0.call(req).map(respond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tower::{Service, ServiceExt};

    #[test]
    fn error_responses_carry_a_clean_reason() {
        let rsp = error_response(
            StatusCode::BAD_GATEWAY,
            "connecting to 10.0.0.1:80: connection refused\r\nx",
        );
        assert_eq!(rsp.status(), 502);
        assert_eq!(
            rsp.headers()[PROXY_ERROR_HEADER],
            "connecting to 10.0.0.1:80: connection refused  x"
        );
    }

    #[test]
    fn each_error_has_its_status_and_label() {
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let check = |error: BoxError, status: u16, label: &str| {
            let failure = Failure::of(&*error);
            assert_eq!((failure.status.as_u16(), failure.label), (status, label));
            let recorded: BoxError = Box::new(Recorded(error));
            let failure = Failure::of(&*recorded);
            assert_eq!(
                (failure.status.as_u16(), failure.label),
                (status, label),
                "recorded errors answer the same"
            );
        };
        check(Box::new(NoEndpoints("web:80".into())), 503, "no_endpoints");
        check(Box::new(InvalidUri), 400, "invalid_uri");
        check(
            Box::new(UpstreamError::ConnectTimeout {
                target,
                timeout: std::time::Duration::from_secs(1),
            }),
            504,
            "connect_timeout",
        );
        check(
            Box::new(UpstreamError::Connect {
                target,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }),
            502,
            "connect",
        );
        check("anything else".into(), 502, "upstream");
    }

    /// A request that never reached the upstream is answered `mesh-proxy-unanswered: unsent`,
    /// one written on a connection reset or closed before an answer `reset`; one the upstream
    /// answered badly is neither.
    #[test]
    fn a_reset_before_an_answer_is_said_unanswered() {
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let sent =
            |source: BoxError| -> BoxError { Box::new(UpstreamError::Request { target, source }) };
        let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for (error, unanswered) in [
            (sent(reset().into()), Some(Unanswered::Reset)),
            (
                sent(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                Some(Unanswered::Reset),
            ),
            (sent("the server answered garbage".into()), None),
            (
                Box::new(UpstreamError::Connect {
                    target,
                    source: reset(),
                }),
                Some(Unanswered::Unsent),
            ),
        ] {
            let message = error.to_string();
            let recorded: BoxError = Box::new(Recorded(error));
            let rsp = Failure::of(&*recorded).response(false);
            assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(super::unanswered(&rsp), unanswered, "{message}");
        }
    }

    /// Regression (issue 17, HTTP/1 attacks): a request whose body the client broke (a malformed
    /// chunk line) was answered 502, blaming the application; it is the client's 400.
    #[tokio::test]
    async fn a_request_body_that_fails_is_the_clients_400() {
        use http_body_util::{BodyExt as _, StreamBody};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                let _ = req.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
        });
        let io = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, BoxError>> = vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(b"hello"))),
            Err("invalid chunk size line".into()),
        ];
        let body = BoxBody::new(StreamBody::new(futures_util::stream::iter(chunks)));
        let error = sender
            .send_request(Request::post("/").body(body).unwrap())
            .await
            .expect_err("the body failed");
        let error: BoxError = Box::new(UpstreamError::Request {
            target,
            source: error.into(),
        });
        let failure = Failure::of(&*error);
        assert_eq!(
            (failure.status.as_u16(), failure.label),
            (400, "request_body")
        );
        let other: BoxError = Box::new(UpstreamError::Request {
            target,
            source: "connection reset".into(),
        });
        assert_eq!(Failure::of(&*other).status.as_u16(), 502);
    }

    #[tokio::test]
    async fn the_layer_turns_errors_into_responses() {
        let failing = tower::service_fn(|_: Request<BoxBody>| async {
            Err::<Response<BoxBody>, BoxError>(Box::new(NoEndpoints("web.demo:80".into())))
        });
        let mut svc = tower::Layer::layer(&RespondLayer, failing);
        let req = Request::new(BoxBody::default());
        let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(
            rsp.headers()[PROXY_ERROR_HEADER],
            "no endpoints for web.demo:80"
        );
    }
}
