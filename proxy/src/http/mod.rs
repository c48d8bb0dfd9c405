//! HTTP/1.1 and HTTP/2 proxying: serves a detected client connection with hyper and forwards
//! each request to the connection's target, measuring and classifying the response.
//!
//! Per request, in order: count the request; drop hop-by-hop headers (keeping `Upgrade` for a
//! WebSocket handshake and `te: trailers` for gRPC); forward (a pooled HTTP/1 connection, the
//! target's one HTTP/2 connection, or a dedicated connection for upgrades and CONNECT); wrap the
//! response body so that its end records `response_total` and `response_latency_ms`. A request
//! the proxy cannot forward gets a 502 with a `mesh-proxy-error` header saying why.

pub mod classify;
pub mod upstream;

use crate::{
    detect::Protocol,
    discover::{DstLabels, Picked, Resolver},
    drain::Drain,
    metrics::{Direction, Metrics, RequestLabels},
};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{body::Incoming, server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration, time::Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use upstream::{Upstream, UpstreamError};

/// The body of every response the proxy returns.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header on responses the proxy made itself, saying why forwarding failed.
pub const PROXY_ERROR_HEADER: &str = "mesh-proxy-error";

/// Limits of the HTTP servers.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Forwards HTTP for one direction of the proxy.
pub struct HttpForwarder {
    direction: Direction,
    /// Discovery and balancing (outbound, when a destination controller is configured).
    discovery: Option<Arc<Resolver>>,
    upstream: Upstream,
    metrics: Metrics,
    settings: HttpSettings,
}

/// Where one client connection's requests go.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The upstream address every request of the connection is sent to.
    pub target: SocketAddr,
}

impl HttpForwarder {
    pub fn new(
        direction: Direction,
        discovery: Option<Arc<Resolver>>,
        upstream: Upstream,
        metrics: Metrics,
        settings: HttpSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            direction,
            discovery,
            upstream,
            metrics,
            settings,
        })
    }

    /// Serves one client connection that speaks `protocol` (HTTP/1 or HTTP/2) until it closes,
    /// or until shutdown, when in-flight requests finish and the connection is closed gracefully.
    pub async fn serve<I>(self: &Arc<Self>, io: I, protocol: Protocol, route: Route, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let tunnels = drain.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            let tunnels = tunnels.clone();
            async move { Ok::<_, Infallible>(this.forward(req, route, &tunnels).await) }
        });
        let io = TokioIo::new(io);
        // Inline rather than through `Drain::serve`: passing these connection futures through a
        // generic function trips the compiler's higher-ranked `Send` inference for the
        // request futures they hold.
        let result = match protocol {
            Protocol::Http2 => {
                let mut builder = conn::http2::Builder::new(TokioExecutor::new());
                builder.timer(TokioTimer::new()).max_header_list_size(
                    self.settings
                        .max_header_bytes
                        .try_into()
                        .unwrap_or(u32::MAX),
                );
                let conn = builder.serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res,
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
            _ => {
                let mut builder = conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(self.settings.header_read_timeout)
                    .max_buf_size(self.settings.max_header_bytes);
                let conn = builder.serve_connection(io, service).with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res,
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(direction = self.direction.as_str(), %error, "HTTP connection ended with an error");
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        route: Route,
        tunnels: &Drain,
    ) -> Response<BoxBody> {
        let start = Instant::now();
        let authority = authority(&req, route.target);
        let target = match &self.discovery {
            Some(resolver) => {
                let name = resolver
                    .logical_name(&authority, route.target.port())
                    .unwrap_or_else(|| route.target.to_string());
                resolver.pick(name).await
            }
            None => Picked::Original,
        };
        let (addr, dst, in_flight) = match target {
            Picked::Original => (route.target, None, None),
            Picked::Endpoint(ep, in_flight) => (ep.balance.addr, Some(ep.labels), Some(in_flight)),
            Picked::NoEndpoints(name) => {
                let labels = self.labels(&authority, route.target, None);
                self.metrics.request_total.get_or_create(&labels).inc();
                let msg = format!("no endpoints for {name}");
                return self.error(
                    labels,
                    start,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_endpoints",
                    &msg,
                );
            }
        };
        let labels = self.labels(&authority, addr, dst);
        self.metrics.request_total.get_or_create(&labels).inc();

        let tunnel = req.version() != Version::HTTP_2
            && (req.method() == Method::CONNECT || wants_upgrade(req.headers()));
        strip_hop_by_hop(req.headers_mut(), tunnel);
        let result = if tunnel {
            self.forward_tunnel(req, addr, tunnels).await
        } else if req.version() == Version::HTTP_2 {
            self.upstream.send_http2(addr, req).await
        } else {
            match origin_uri(req.uri(), addr) {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    self.upstream.send_http1(addr, req).await
                }
                Err(_) => {
                    return self.error(
                        labels,
                        start,
                        StatusCode::BAD_REQUEST,
                        "invalid_uri",
                        "invalid request URI",
                    )
                }
            }
        };
        if let (Some(mut in_flight), Some(resolver)) = (in_flight, &self.discovery) {
            let success = matches!(&result, Ok(rsp) if !rsp.status().is_server_error());
            in_flight.record(&resolver.config().balance, success, Instant::now());
        }
        match result {
            Ok(mut rsp) => {
                let upgraded = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(rsp.headers_mut(), upgraded);
                let meter = classify::ResponseMeter::new(
                    self.metrics.clone(),
                    labels,
                    start,
                    rsp.status(),
                    rsp.headers(),
                );
                rsp.map(|body| {
                    classify::MeteredBody::new(body, meter)
                        .map_err(BoxError::from)
                        .boxed_unsync()
                })
            }
            Err(error) => {
                tracing::info!(direction = self.direction.as_str(), %error, "request failed");
                let msg = upstream::error_chain(&error);
                let status = match error {
                    UpstreamError::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                self.error(labels, start, status, error.label(), &msg)
            }
        }
    }

    fn labels(
        &self,
        authority: &str,
        target: SocketAddr,
        dst: Option<Arc<DstLabels>>,
    ) -> RequestLabels {
        RequestLabels {
            direction: self.direction,
            authority: self.metrics.authority_label(authority),
            target_addr: target,
            dst,
        }
    }

    /// Forwards a WebSocket upgrade or a CONNECT on a connection of its own; when the server
    /// accepts, both sides are spliced together until either closes.
    async fn forward_tunnel(
        &self,
        mut req: Request<Incoming>,
        target: SocketAddr,
        tunnels: &Drain,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let connect = req.method() == Method::CONNECT;
        let client = hyper::upgrade::on(&mut req);
        let mut rsp = self.upstream.send_upgrade(target, req).await?;
        let accepted = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (connect && rsp.status().is_success());
        if accepted {
            let server = hyper::upgrade::on(&mut rsp);
            tunnels.spawn(async move {
                match tokio::try_join!(client, server) {
                    Ok((client, server)) => {
                        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                        if let Err(error) =
                            tokio::io::copy_bidirectional(&mut client, &mut server).await
                        {
                            tracing::debug!(%target, %error, "tunnel closed with an error");
                        }
                    }
                    Err(error) => tracing::debug!(%target, %error, "upgrade failed"),
                }
            });
        }
        Ok(rsp)
    }

    fn error(
        &self,
        labels: RequestLabels,
        start: Instant,
        status: StatusCode,
        label: &'static str,
        msg: &str,
    ) -> Response<BoxBody> {
        classify::record_error(&self.metrics, labels, start, status, label);
        error_response(status, msg)
    }
}

/// A response the proxy makes itself, with the reason in a header and the body.
pub fn error_response(status: StatusCode, msg: &str) -> Response<BoxBody> {
    let body = Full::new(Bytes::from(format!("{msg}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
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

/// The request's logical destination: the URI's authority (HTTP/2, absolute-form) or the `Host`
/// header; the target address when the client gave neither.
fn authority<B>(req: &Request<B>, target: SocketAddr) -> String {
    if let Some(authority) = req.uri().authority() {
        return authority.as_str().to_string();
    }
    match req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(host) => host.to_string(),
        None => target.to_string(),
    }
}

/// `http://target/path?query`: the URI the HTTP/1 pool is keyed by.
fn origin_uri(uri: &Uri, target: SocketAddr) -> Result<Uri, http::Error> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(target.to_string())
        .path_and_query(path)
        .build()
}

/// Whether an HTTP/1 request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the headers that belong to one connection, not to the message (RFC 9110 §7.6.1):
/// `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, `Upgrade` and `TE` (but `te: trailers`, which gRPC needs). When
/// `keep_upgrade` is set (a protocol switch), `Connection: upgrade` and `Upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(t.is_empty() || keep_upgrade && t == "upgrade"))
        .collect();
    for name in &named {
        if name != "te" {
            headers.remove(name.as_str());
        }
    }
    for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        headers.remove(name);
    }
    let trailers_only = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .all(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    if !trailers_only {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers() {
        fn check(input: &[(&str, &str)], keep_upgrade: bool, expected: &[&str]) {
            let mut h = headers(input);
            strip_hop_by_hop(&mut h, keep_upgrade);
            assert_eq!(names(&h), expected, "{input:?}");
        }
        check(
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "5"),
                ("host", "a"),
            ],
            false,
            &["host: a"],
        );
        check(
            &[
                ("transfer-encoding", "chunked"),
                ("proxy-connection", "close"),
            ],
            false,
            &[],
        );
        check(
            &[("te", "trailers"), ("content-type", "application/grpc")],
            false,
            &["content-type: application/grpc", "te: trailers"],
        );
        check(&[("te", "gzip, trailers")], false, &[]);
        check(
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "k"),
            ],
            true,
            &[
                "connection: upgrade",
                "sec-websocket-key: k",
                "upgrade: websocket",
            ],
        );
        check(&[("connection", "upgrade"), ("upgrade", "h2c")], false, &[]);
    }

    #[test]
    fn upgrade_requests_need_both_headers() {
        assert!(wants_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn authority_prefers_the_uri_then_host() {
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let req = Request::builder()
            .uri("http://web.demo:8080/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(authority(&req, target), "web.demo:8080");
        let req = Request::builder()
            .uri("/x")
            .header("host", "web")
            .body(())
            .unwrap();
        assert_eq!(authority(&req, target), "web");
        let req = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(authority(&req, target), "10.0.0.1:80");
    }

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
}
