//! HTTP in both stacks, one concern per module:
//!
//! - [`server`]: serves a detected HTTP/1 or HTTP/2 connection with hyper, boxes each request's
//!   body and notes when and on which connection the request arrived; [`idle`]: an idle HTTP/1
//!   connection waits for its next request without hyper's buffers.
//! - [`errors`]: turns every error below into the response the client gets (502/503/504 with
//!   `mesh-proxy-error`).
//! - [`headers`]: hop-by-hop headers, `mesh-client-id`, and HTTP/1↔HTTP/2 between proxies
//!   (`mesh-orig-proto`).
//! - [`matches`]: Gateway API route matching in precedence order (outbound routing, inbound
//!   per-route authorization).
//! - [`classify`]: request metrics, response classification and tap.
//! - [`client`]: the upstream clients (HTTP/1 pool, one HTTP/2 connection per endpoint,
//!   upgrades and tunnels), and [`pool`]: an endpoint's keep-alive HTTP/1 connections.
//!
//! Which of them a direction uses, and in which order, only `inbound::stack` and
//! `outbound::stack` say.

pub mod classify;
pub mod client;
pub mod errors;
pub mod filters;
pub mod headers;
pub mod idle;
pub mod matches;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod server;
pub mod timeout;

use http::{header, Request};
use std::{borrow::Cow, net::SocketAddr};

pub use errors::error_response;
pub use headers::strip_hop_by_hop;
pub use server::HttpSettings;

/// The header on responses the proxy made itself, saying why forwarding failed.
pub const PROXY_ERROR_HEADER: &str = "mesh-proxy-error";

/// The header on an error response the proxy made because its upstream never answered the
/// request: `unsent` (it never got it) or `reset` (the connection was reset or closed before an
/// answer). The client's proxy may then send the request to another endpoint: any request when
/// `unsent`, a safe one when `reset` (`balance::Resend`).
pub const PROXY_UNANSWERED_HEADER: &str = "mesh-proxy-unanswered";

/// The request header carrying the client's verified identity to the application (inbound).
pub const CLIENT_ID_HEADER: &str = "mesh-client-id";

/// The request header that tells the inbound proxy an HTTP/2 request between proxies was
/// HTTP/1 (`HTTP/1.1` or `HTTP/1.0`) in the client application.
pub const ORIG_PROTO_HEADER: &str = "mesh-orig-proto";

/// The request's authority: the URI's (HTTP/2, absolute-form) or the `Host` header; `fallback`
/// (the address the client dialed) when the client gave neither. Borrowed unless it falls back.
pub fn authority<B>(req: &Request<B>, fallback: Option<SocketAddr>) -> Cow<'_, str> {
    if let Some(authority) = req.uri().authority() {
        return Cow::Borrowed(authority.as_str());
    }
    match req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(host) => Cow::Borrowed(host),
        None => Cow::Owned(fallback.map(|a| a.to_string()).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_prefers_the_uri_then_host() {
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let req = Request::builder()
            .uri("http://web.demo:8080/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(authority(&req, Some(target)), "web.demo:8080");
        let req = Request::builder()
            .uri("/x")
            .header("host", "web")
            .body(())
            .unwrap();
        assert_eq!(authority(&req, Some(target)), "web");
        let req = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(authority(&req, Some(target)), "10.0.0.1:80");
    }
}
