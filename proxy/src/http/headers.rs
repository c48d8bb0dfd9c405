//! The headers the proxy owns, each in a layer of its own:
//!
//! - [`HopByHop`]: headers that belong to one connection, not to the message (both stacks).
//! - [`ClientId`]: inbound, `mesh-client-id` is always removed, then set to the identity the
//!   client's certificate proved, so it cannot be forged from outside the mesh.
//! - [`Upgrade`] and [`Downgrade`]: between proxies requests travel as HTTP/2 over mutual TLS;
//!   outbound, an HTTP/1 request to a meshed endpoint becomes HTTP/2 and carries
//!   `mesh-orig-proto`; inbound, a peer proxy's word restores its version.

use super::{errors::InvalidUri, server::Received, CLIENT_ID_HEADER, ORIG_PROTO_HEADER};
use crate::{
    http::client::{is_tunnel, EndpointAddr},
    metrics::Tls,
    svc::{BoxBody, BoxError, Param, Wrap, WrapLayer},
};
use futures_util::{future, TryFutureExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use std::task::{Context, Poll};

// === hop-by-hop ===

/// Removes hop-by-hop headers from requests and responses.
pub fn hop_by_hop() -> WrapLayer<HopByHopWrap> {
    WrapLayer(HopByHopWrap)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct HopByHopWrap;

impl<T, S> Wrap<T, S> for HopByHopWrap {
    type Service = HopByHop<S>;
    fn wrap(&self, _: &T, inner: S) -> HopByHop<S> {
        HopByHop(inner)
    }
}

#[derive(Clone, Debug)]
pub struct HopByHop<S>(S);

type MapRsp<F> = future::MapOk<F, fn(Response<BoxBody>) -> Response<BoxBody>>;

impl<S> tower::Service<Request<BoxBody>> for HopByHop<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = MapRsp<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let tunnel = is_tunnel(&req);
        strip_hop_by_hop(req.headers_mut(), tunnel);
        self.0.call(req).map_ok(|mut rsp| {
            let upgraded = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(rsp.headers_mut(), upgraded);
            rsp
        })
    }
}

/// Whether an HTTP/1 request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
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
    if headers.contains_key(header::CONNECTION) {
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

// === mesh-client-id ===

/// Inbound: replaces any `mesh-client-id` with the identity the connection proved.
pub fn client_id() -> WrapLayer<ClientIdWrap> {
    WrapLayer(ClientIdWrap)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ClientIdWrap;

impl<T: Param<Tls>, S> Wrap<T, S> for ClientIdWrap {
    type Service = ClientId<S>;
    fn wrap(&self, target: &T, inner: S) -> ClientId<S> {
        let id = match target.param() {
            Tls::Established(id) => HeaderValue::from_str(&id).ok(),
            Tls::NoIdentity(_) => None,
        };
        ClientId { id, inner }
    }
}

#[derive(Clone, Debug)]
pub struct ClientId<S> {
    /// The client's verified identity, when the connection is mutual TLS.
    id: Option<HeaderValue>,
    inner: S,
}

impl<S: tower::Service<Request<BoxBody>>> tower::Service<Request<BoxBody>> for ClientId<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> S::Future {
        match &self.id {
            Some(id) => req.headers_mut().insert(CLIENT_ID_HEADER, id.clone()),
            None => req.headers_mut().remove(CLIENT_ID_HEADER),
        };
        self.inner.call(req)
    }
}

// === mesh-orig-proto ===

/// Outbound: an HTTP/1 request to a meshed endpoint travels as HTTP/2 (with
/// `mesh-orig-proto`); a `mesh-orig-proto` from the application never leaves the pod.
pub fn upgrade() -> WrapLayer<UpgradeWrap> {
    WrapLayer(UpgradeWrap)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct UpgradeWrap;

impl<T: Param<EndpointAddr>, S> Wrap<T, S> for UpgradeWrap {
    type Service = Upgrade<S>;
    fn wrap(&self, target: &T, inner: S) -> Upgrade<S> {
        Upgrade {
            meshed: target.param().server_id.is_some(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Upgrade<S> {
    meshed: bool,
    inner: S,
}

impl<S> tower::Service<Request<BoxBody>> for Upgrade<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = future::Either<S::Future, future::Ready<Result<Response<BoxBody>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        req.headers_mut().remove(ORIG_PROTO_HEADER);
        if self.meshed && !is_tunnel(&req) {
            let fallback = req.extensions().get::<Received>().map(|r| r.conn.orig_dst);
            let authority = super::authority(&req, fallback).into_owned();
            req = match to_http2(req, &authority) {
                Ok(req) => req,
                Err(_) => return future::Either::Right(future::err(Box::new(InvalidUri))),
            };
        }
        future::Either::Left(self.inner.call(req))
    }
}

/// Inbound: restores the HTTP/1 version a peer proxy carried as HTTP/2; only a peer proxy's
/// word (a mutual TLS connection) is taken.
pub fn downgrade() -> WrapLayer<DowngradeWrap> {
    WrapLayer(DowngradeWrap)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DowngradeWrap;

impl<T: Param<Tls>, S> Wrap<T, S> for DowngradeWrap {
    type Service = Downgrade<S>;
    fn wrap(&self, target: &T, inner: S) -> Downgrade<S> {
        Downgrade {
            from_peer: matches!(target.param(), Tls::Established(_)),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Downgrade<S> {
    from_peer: bool,
    inner: S,
}

impl<S: tower::Service<Request<BoxBody>>> tower::Service<Request<BoxBody>> for Downgrade<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> S::Future {
        if let Some(proto) = req.headers_mut().remove(ORIG_PROTO_HEADER) {
            if self.from_peer {
                restore_http1(&mut req, &proto);
            }
        }
        self.inner.call(req)
    }
}

/// Turns a request into HTTP/2 for the hop between proxies: an absolute URI from its authority,
/// and `mesh-orig-proto` when it was HTTP/1.
pub fn to_http2<B>(mut req: Request<B>, authority: &str) -> Result<Request<B>, http::Error> {
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
pub fn restore_http1<B>(req: &mut Request<B>, proto: &HeaderValue) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower::ServiceExt;

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

    /// A service that answers with the request's headers and version, as it received them.
    fn echo() -> impl tower::Service<
        Request<BoxBody>,
        Response = Response<BoxBody>,
        Error = BoxError,
        Future = future::Ready<Result<Response<BoxBody>, BoxError>>,
    > + Clone {
        tower::service_fn(|req: Request<BoxBody>| {
            let mut rsp = Response::new(BoxBody::default());
            *rsp.headers_mut() = req.headers().clone();
            *rsp.version_mut() = req.version();
            future::ok(rsp)
        })
    }

    async fn send<S>(svc: &mut S, req: Request<BoxBody>) -> Response<BoxBody>
    where
        S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    {
        svc.ready().await.unwrap().call(req).await.unwrap()
    }

    #[tokio::test]
    async fn the_client_id_is_the_proven_one_or_none() {
        let forged = || {
            Request::builder()
                .header(CLIENT_ID_HEADER, "admin.forged")
                .body(BoxBody::default())
                .unwrap()
        };
        let mut plain = ClientIdWrap.wrap(&Tls::NoIdentity("x"), echo());
        assert!(!send(&mut plain, forged())
            .await
            .headers()
            .contains_key(CLIENT_ID_HEADER));
        let mut mtls = ClientIdWrap.wrap(&Tls::Established(Arc::from("web.demo.sa")), echo());
        assert_eq!(
            send(&mut mtls, forged()).await.headers()[CLIENT_ID_HEADER],
            "web.demo.sa"
        );
    }

    #[tokio::test]
    async fn only_a_peer_proxy_restores_http1() {
        let carried = || {
            Request::builder()
                .version(Version::HTTP_2)
                .uri("http://web:80/")
                .header(ORIG_PROTO_HEADER, "HTTP/1.1")
                .body(BoxBody::default())
                .unwrap()
        };
        let mut from_peer = DowngradeWrap.wrap(&Tls::Established(Arc::from("a")), echo());
        let rsp = send(&mut from_peer, carried()).await;
        assert_eq!(rsp.version(), Version::HTTP_11);
        assert_eq!(rsp.headers()[header::HOST], "web:80");
        assert!(!rsp.headers().contains_key(ORIG_PROTO_HEADER));
        let mut from_outside = DowngradeWrap.wrap(&Tls::NoIdentity("x"), echo());
        let rsp = send(&mut from_outside, carried()).await;
        assert_eq!(rsp.version(), Version::HTTP_2, "not a peer's word");
        assert!(!rsp.headers().contains_key(ORIG_PROTO_HEADER));
    }

    #[tokio::test]
    async fn meshed_endpoints_get_http2_and_the_app_cannot_claim_a_protocol() {
        let h1 = || {
            Request::builder()
                .uri("/x")
                .header(header::HOST, "web:80")
                .header(ORIG_PROTO_HEADER, "HTTP/1.0")
                .body(BoxBody::default())
                .unwrap()
        };
        let meshed = EndpointAddr {
            addr: "10.0.0.1:80".parse().unwrap(),
            server_id: Some(Arc::from("web.demo.sa")),
        };
        let rsp = send(&mut UpgradeWrap.wrap(&meshed, echo()), h1()).await;
        assert_eq!(rsp.version(), Version::HTTP_2);
        assert_eq!(rsp.headers()[ORIG_PROTO_HEADER], "HTTP/1.1");
        let plain = EndpointAddr {
            server_id: None,
            ..meshed
        };
        let rsp = send(&mut UpgradeWrap.wrap(&plain, echo()), h1()).await;
        assert_eq!(rsp.version(), Version::HTTP_11);
        assert!(!rsp.headers().contains_key(ORIG_PROTO_HEADER));
    }

    #[tokio::test]
    async fn hop_by_hop_headers_leave_both_ways() {
        let mut svc = HopByHopWrap.wrap(&(), echo());
        let req = Request::builder()
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("x-kept", "1")
            .body(BoxBody::default())
            .unwrap();
        let rsp = send(&mut svc, req).await;
        assert_eq!(names(rsp.headers()), ["x-kept: 1"]);
    }
}
