//! HTTP/1.1 and HTTP/2 proxying: serves a detected client connection with hyper and forwards
//! each request to the connection's target, measuring and classifying the response.
//!
//! Per request, in order: count the request; drop hop-by-hop headers (keeping `Upgrade` for a
//! WebSocket handshake and `te: trailers` for gRPC); forward (a pooled HTTP/1 connection, the
//! target's one HTTP/2 connection, or a dedicated connection for upgrades and CONNECT); wrap the
//! response body so that its end records `response_total` and `response_latency_ms`. A request
//! the proxy cannot forward gets a 502 with a `mesh-proxy-error` header saying why.
//!
//! Between proxies (an outbound request to an endpoint with an identity) requests travel as
//! HTTP/2 over mutual TLS; an HTTP/1 request carries `mesh-orig-proto` so the inbound proxy
//! restores its version. Inbound, `mesh-client-id` is always removed, then set to the identity
//! the client's certificate proved, so it cannot be forged from outside the mesh.

pub mod classify;
pub mod upstream;

use crate::{
    detect::Protocol,
    discover::{DstLabels, Picked, Resolver},
    drain::Drain,
    metrics::{Direction, Metrics, RequestLabels, Tls, NO_TLS_DISABLED, NO_TLS_FROM_DISCOVERY},
    tap::{ConnTap, RequestMeta, Tapped, Taps},
};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
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

/// The request header carrying the client's verified identity to the application (inbound).
pub const CLIENT_ID_HEADER: &str = "mesh-client-id";

/// The request header that tells the inbound proxy an HTTP/2 request between proxies was
/// HTTP/1 (`HTTP/1.1` or `HTTP/1.0`) in the client application.
pub const ORIG_PROTO_HEADER: &str = "mesh-orig-proto";

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
    /// Whether identity is on: requests to meshed endpoints then go over mutual TLS.
    identity: bool,
    taps: Taps,
}

/// Where one client connection's requests go, and what is known of the client.
#[derive(Clone, Debug)]
pub struct Route {
    /// The upstream address every request of the connection is sent to.
    pub target: SocketAddr,
    /// Inbound: whether the client connection is mutual TLS, and the identity it proved.
    pub tls: Tls,
    /// The client's address.
    pub client: SocketAddr,
    /// Where the client's connection was going (inbound: the pod's address it dialed).
    pub orig_dst: SocketAddr,
}

/// A client connection as its requests see it: its route and its number for tap.
struct ConnState {
    route: Route,
    tap: ConnTap,
}

impl HttpForwarder {
    pub fn new(
        direction: Direction,
        discovery: Option<Arc<Resolver>>,
        upstream: Upstream,
        metrics: Metrics,
        settings: HttpSettings,
        identity: bool,
        taps: Taps,
    ) -> Arc<Self> {
        Arc::new(Self {
            direction,
            discovery,
            upstream,
            metrics,
            settings,
            identity,
            taps,
        })
    }

    /// The upstream connections (opaque forwarding shares their mutual TLS).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Serves one client connection that speaks `protocol` (HTTP/1 or HTTP/2) until it closes,
    /// or until shutdown, when in-flight requests finish and the connection is closed gracefully.
    pub async fn serve<I>(self: &Arc<Self>, io: I, protocol: Protocol, route: Route, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let tunnels = drain.clone();
        let conn = Arc::new(ConnState {
            route,
            tap: self.taps.connection(),
        });
        let service = service_fn(move |req| {
            let this = this.clone();
            let tunnels = tunnels.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(this.forward(req, &conn, &tunnels).await) }
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
        conn: &ConnState,
        tunnels: &Drain,
    ) -> Response<BoxBody> {
        let start = Instant::now();
        let route = &conn.route;
        if self.direction == Direction::Inbound {
            let orig_proto = req.headers_mut().remove(ORIG_PROTO_HEADER);
            req.headers_mut().remove(CLIENT_ID_HEADER);
            if let Tls::Established(client_id) = &route.tls {
                if let Ok(value) = HeaderValue::from_str(client_id) {
                    req.headers_mut().insert(CLIENT_ID_HEADER, value);
                }
                // Only a peer proxy's word on the original protocol is taken.
                if let Some(proto) = orig_proto {
                    restore_http1(&mut req, &proto);
                }
            }
        }
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
        let (addr, dst, in_flight, server_id) = match target {
            Picked::Original => (route.target, None, None, None),
            Picked::Endpoint(ep, in_flight) => (
                ep.balance.addr,
                Some(ep.labels),
                Some(in_flight),
                ep.identity.filter(|_| self.identity),
            ),
            Picked::NoEndpoints(name) => {
                let tls = self.request_tls(route, None);
                let labels = self.labels(&authority, route.target, None, tls);
                self.metrics.request_total.get_or_create(&labels).inc();
                let tapped = self.tap(conn, start, &req, &authority, &labels, None);
                let msg = format!("no endpoints for {name}");
                return self.error(
                    labels,
                    start,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_endpoints",
                    &msg,
                    tapped,
                );
            }
        };
        let labels = self.labels(
            &authority,
            addr,
            dst,
            self.request_tls(route, server_id.as_ref()),
        );
        self.metrics.request_total.get_or_create(&labels).inc();
        let tapped = self.tap(conn, start, &req, &authority, &labels, server_id.as_ref());

        let tunnel = req.version() != Version::HTTP_2
            && (req.method() == Method::CONNECT || wants_upgrade(req.headers()));
        strip_hop_by_hop(req.headers_mut(), tunnel);
        if self.direction == Direction::Outbound {
            req.headers_mut().remove(ORIG_PROTO_HEADER);
        }
        // The request as it goes upstream: HTTP/2 between proxies (on the endpoint's one
        // connection), else as the client sent it, HTTP/1 in origin form for the pool.
        let prepared = if tunnel || req.version() == Version::HTTP_2 && server_id.is_none() {
            Ok(req)
        } else if server_id.is_some() {
            to_http2(req, &authority)
        } else {
            origin_uri(req.uri(), addr).map(|uri| {
                *req.uri_mut() = uri;
                req
            })
        };
        let Ok(req) = prepared else {
            return self.error(
                labels,
                start,
                StatusCode::BAD_REQUEST,
                "invalid_uri",
                "invalid request URI",
                tapped,
            );
        };
        let result = if tunnel {
            self.forward_tunnel(req, addr, server_id.as_ref(), tunnels)
                .await
        } else if req.version() == Version::HTTP_2 {
            self.upstream
                .send_http2(addr, server_id.as_ref(), req)
                .await
        } else {
            self.upstream.send_http1(addr, req).await
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
                    tapped,
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
                self.error(labels, start, status, error.label(), &msg, tapped)
            }
        }
    }

    /// Offers a starting request to the taps: nothing but one atomic load when nobody taps.
    fn tap(
        &self,
        conn: &ConnState,
        start: Instant,
        req: &Request<Incoming>,
        authority: &str,
        labels: &RequestLabels,
        server_id: Option<&Arc<str>>,
    ) -> Option<Tapped> {
        if !self.taps.is_active() {
            return None;
        }
        let route = &conn.route;
        let client_id = match (&route.tls, self.direction) {
            (Tls::Established(id), Direction::Inbound) => Some(id),
            _ => None,
        };
        let meta = RequestMeta {
            direction: self.direction,
            method: req.method(),
            authority,
            path: req.uri().path(),
            headers: req.headers(),
            client: route.client,
            client_id,
            target: match self.direction {
                Direction::Inbound => route.orig_dst,
                Direction::Outbound => labels.target_addr,
            },
            dst: labels.dst.as_deref(),
            server_id,
            tls: matches!(labels.tls, Tls::Established(_)),
        };
        self.taps.start(&conn.tap, start, &meta)
    }

    /// The `tls` label of a request: the client connection's inbound, the hop to the chosen
    /// endpoint outbound.
    fn request_tls(&self, route: &Route, server_id: Option<&Arc<str>>) -> Tls {
        match (self.direction, server_id) {
            (Direction::Inbound, _) => route.tls.clone(),
            (Direction::Outbound, Some(id)) => Tls::Established(id.clone()),
            (Direction::Outbound, None) if self.identity => Tls::NoIdentity(NO_TLS_FROM_DISCOVERY),
            (Direction::Outbound, None) => Tls::NoIdentity(NO_TLS_DISABLED),
        }
    }

    fn labels(
        &self,
        authority: &str,
        target: SocketAddr,
        dst: Option<Arc<DstLabels>>,
        tls: Tls,
    ) -> RequestLabels {
        RequestLabels {
            direction: self.direction,
            authority: self.metrics.authority_label(authority),
            target_addr: target,
            dst,
            tls,
        }
    }

    /// Forwards a WebSocket upgrade or a CONNECT on a connection of its own; when the server
    /// accepts, both sides are spliced together until either closes.
    async fn forward_tunnel(
        &self,
        mut req: Request<Incoming>,
        target: SocketAddr,
        server_id: Option<&Arc<str>>,
        tunnels: &Drain,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let connect = req.method() == Method::CONNECT;
        let client = hyper::upgrade::on(&mut req);
        let mut rsp = self.upstream.send_upgrade(target, server_id, req).await?;
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
        tapped: Option<Tapped>,
    ) -> Response<BoxBody> {
        let rsp = error_response(status, msg);
        let bytes = rsp.body().size_hint().exact().unwrap_or(0);
        classify::record_error(&self.metrics, labels, start, status, label, tapped, bytes);
        rsp
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

/// Turns a request into HTTP/2 for the hop between proxies: an absolute URI from its authority,
/// and `mesh-orig-proto` when it was HTTP/1.
fn to_http2<B>(mut req: Request<B>, authority: &str) -> Result<Request<B>, http::Error> {
    let orig = match req.version() {
        Version::HTTP_2 => return Ok(req),
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    if req.uri().authority().is_none() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()?;
    }
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut()
        .insert(ORIG_PROTO_HEADER, HeaderValue::from_static(orig));
    Ok(req)
}

/// Restores an HTTP/1 request that a peer proxy carried as HTTP/2: its version, and its `Host`
/// from the `:authority` when the client's header did not travel.
fn restore_http1<B>(req: &mut Request<B>, proto: &HeaderValue) {
    *req.version_mut() = match proto.as_bytes() {
        b"HTTP/1.0" => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
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
    fn http1_travels_as_http2_between_proxies_and_comes_back() {
        let req = Request::builder()
            .version(Version::HTTP_10)
            .uri("/a?b=1")
            .header("host", "web.demo:8080")
            .body(())
            .unwrap();
        let mut h2 = to_http2(req, "web.demo:8080").unwrap();
        assert_eq!(h2.version(), Version::HTTP_2);
        assert_eq!(h2.uri(), "http://web.demo:8080/a?b=1");
        assert_eq!(h2.headers()[ORIG_PROTO_HEADER], "HTTP/1.0");
        h2.headers_mut().remove(header::HOST);
        let proto = h2.headers_mut().remove(ORIG_PROTO_HEADER).unwrap();
        restore_http1(&mut h2, &proto);
        assert_eq!(h2.version(), Version::HTTP_10);
        assert_eq!(h2.headers()[header::HOST], "web.demo:8080");

        let grpc = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://web:80/pkg.Svc/Call")
            .body(())
            .unwrap();
        let grpc = to_http2(grpc, "web:80").unwrap();
        assert!(!grpc.headers().contains_key(ORIG_PROTO_HEADER));
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
