//! The certify client: asks the identity controller for a certificate over verified TLS.
//!
//! The controller's serving certificate is checked against the trust anchors and its name
//! (`mesh-identity.mesh.serviceaccount.identity.mesh.<td>`) during the TLS handshake, so the
//! token is only ever sent to the real controller. TLS 1.3, ALPN `h2` then `http/1.1`; the
//! request is a JSON `POST` to [`CERTIFY_PATH`].
//!
//! ```no_run
//! # async fn f(anchors: Vec<rustls_pki_types::CertificateDer<'static>>, csr_pem: String) {
//! use mesh_api::identity::{client::certify, CertifyRequest, Identity};
//! use std::time::Duration;
//!
//! let controller = Identity::controller("cluster.local").unwrap();
//! let request = CertifyRequest { csr_pem, token: "…".into() };
//! let response = certify(
//!     "mesh-identity.mesh.svc.cluster.local:8080",
//!     &controller.dns_name(),
//!     &anchors,
//!     &request,
//!     Duration::from_secs(10),
//! )
//! .await;
//! # }
//! ```
//!
//! The client does not retry: [`CertifyError::is_retryable`] tells the caller whether trying
//! again later may help.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};

use super::{ca, CertifyRequest, CertifyResponse, ErrorBody, CERTIFY_PATH};
pub use crate::destination::Connector;
use crate::wire::AbortOnDrop;

/// The largest response body read (a chain of a few certificates is ~2 KiB).
const MAX_RESPONSE: usize = 256 * 1024;

/// Why a certify call failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The arguments cannot make a request (no anchors, a bad server name, a bad address).
    #[error("certify request to {addr}: {reason}")]
    Config {
        /// The controller's address.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// The address did not resolve or the TCP connection failed.
    #[error("connecting to the identity controller at {addr}: {source}")]
    Connect {
        /// The controller's address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed, including a server certificate that does not verify against
    /// the trust anchors or is not for the expected name. Nothing was sent.
    #[error("TLS handshake with the identity controller at {addr} ({server_name}): {source}")]
    Tls {
        /// The controller's address.
        addr: String,
        /// The name its certificate was checked for.
        server_name: String,
        /// The cause (rustls's reason).
        source: std::io::Error,
    },
    /// The HTTP exchange failed (connection reset, protocol error).
    #[error("certify request to {addr}: {source}")]
    Http {
        /// The controller's address.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The whole call took longer than its timeout.
    #[error("certify request to {addr}: no answer within {timeout:?}")]
    Timeout {
        /// The controller's address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The controller refused: its status and its [`ErrorBody`] message.
    #[error("the identity controller refused ({status}): {message}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The server's message (or the start of the body if it was not an `ErrorBody`).
        message: String,
    },
    /// A success whose body is not a [`CertifyResponse`] with a usable chain and expiry.
    #[error("the identity controller's answer is unusable: {0}")]
    Response(String),
}

impl CertifyError {
    /// Whether trying again later may succeed: connection failures, timeouts, HTTP errors and
    /// `5xx` yes; a refusal (`4xx`), a TLS verification failure or a bad answer no.
    pub fn is_retryable(&self) -> bool {
        match self {
            CertifyError::Connect { .. }
            | CertifyError::Timeout { .. }
            | CertifyError::Http { .. } => true,
            CertifyError::Status { status, .. } => status.is_server_error(),
            CertifyError::Config { .. } | CertifyError::Tls { .. } | CertifyError::Response(_) => {
                false
            }
        }
    }
}

/// Asks the identity controller at `addr` (`host:port`, resolved with the system resolver) to
/// certify `request`, verifying that it is `server_name` under `anchors` before sending the
/// token. The whole call (resolution, handshake, request, body) is bounded by `timeout`.
///
/// The returned chain is parsed (it has at least one certificate and a valid expiry) but not
/// verified for a name: the caller knows which identity it asked for and checks it.
pub async fn certify(
    addr: &str,
    server_name: &str,
    anchors: &[CertificateDer<'static>],
    request: &CertifyRequest,
    timeout: Duration,
) -> Result<CertifyResponse, CertifyError> {
    certify_with(
        &Connector::default(),
        addr,
        server_name,
        anchors,
        request,
        timeout,
    )
    .await
}

/// [`certify`], with the TCP connection opened by `connector`.
pub async fn certify_with(
    connector: &Connector,
    addr: &str,
    server_name: &str,
    anchors: &[CertificateDer<'static>],
    request: &CertifyRequest,
    timeout: Duration,
) -> Result<CertifyResponse, CertifyError> {
    let exchange = exchange(connector, addr, server_name, anchors, request);
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CertifyError::Timeout {
            addr: addr.to_owned(),
            timeout,
        })?
}

async fn exchange(
    connector: &Connector,
    addr: &str,
    server_name: &str,
    anchors: &[CertificateDer<'static>],
    request: &CertifyRequest,
) -> Result<CertifyResponse, CertifyError> {
    let config_err = |reason: String| CertifyError::Config {
        addr: addr.to_owned(),
        reason,
    };
    let tls = tls_config(anchors).map_err(config_err)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| config_err(format!("{server_name:?} is not a server name: {e}")))?;
    let body = serde_json::to_vec(request)
        .map_err(|e| config_err(format!("encoding the request: {e}")))?;

    let tcp = connect(connector, addr).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|source| CertifyError::Tls {
            addr: addr.to_owned(),
            server_name: server_name.to_owned(),
            source,
        })?;
    // The handshake verified the server: only now does the token leave.
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let http_err = |source| CertifyError::Http {
        addr: addr.to_owned(),
        source,
    };
    // HTTP/2 carries the authority in the URI, HTTP/1.1 in `host` with an origin-form target.
    let req = if h2 {
        http::Request::post(format!("https://{server_name}{CERTIFY_PATH}"))
    } else {
        http::Request::post(CERTIFY_PATH).header(http::header::HOST, server_name)
    };
    let req = req
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json");
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| config_err(format!("building the request: {e}")))?;
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(http_err)?;
        let _conn = AbortOnDrop(tokio::spawn(conn));
        read(sender.send_request(req).await.map_err(http_err)?).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http_err)?;
        let _conn = AbortOnDrop(tokio::spawn(conn));
        read(sender.send_request(req).await.map_err(http_err)?).await
    };
    let (status, body) = response.map_err(|e| match e {
        ReadError::Http(source) => http_err(source),
        ReadError::TooLarge => {
            CertifyError::Response(format!("the body is larger than {MAX_RESPONSE} bytes"))
        }
    })?;
    if !status.is_success() {
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)])
                .trim()
                .to_owned(),
        };
        return Err(CertifyError::Status { status, message });
    }
    let response: CertifyResponse = serde_json::from_slice(&body)
        .map_err(|e| CertifyError::Response(format!("not a certify response: {e}")))?;
    ca::certs_from_pem(&response.cert_chain_pem, "the certificate chain")
        .map_err(|e| CertifyError::Response(e.to_string()))?;
    if ca::parse_rfc3339(&response.expires_at).is_none() {
        return Err(CertifyError::Response(format!(
            "expires_at {:?} is not an RFC 3339 time",
            response.expires_at
        )));
    }
    Ok(response)
}

/// TLS 1.3 only, ring, the anchors as the only roots, no client certificate, ALPN h2 then
/// http/1.1.
fn tls_config(anchors: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    if anchors.is_empty() {
        return Err("no trust anchors".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots
            .add(anchor.clone())
            .map_err(|e| format!("a trust anchor is not usable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn connect(connector: &Connector, addr: &str) -> Result<tokio::net::TcpStream, CertifyError> {
    let connect_err = |source| CertifyError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await.map_err(connect_err)? {
        match connector.connect(resolved).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(connect_err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolved to no address",
        )
    })))
}

enum ReadError {
    Http(hyper::Error),
    TooLarge,
}

async fn read(
    response: http::Response<hyper::body::Incoming>,
) -> Result<(StatusCode, Bytes), ReadError> {
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => ReadError::Http(*e),
            Err(_) => ReadError::TooLarge,
        })?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        let status = |code: u16| CertifyError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
        };
        assert!(status(503).is_retryable());
        assert!(status(500).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(!status(400).is_retryable());
        let timeout = CertifyError::Timeout {
            addr: "a:1".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable());
        assert!(!CertifyError::Response("x".into()).is_retryable());
    }

    #[tokio::test]
    async fn no_anchors_is_a_configuration_error() {
        let request = CertifyRequest {
            csr_pem: String::new(),
            token: String::new(),
        };
        let e = certify(
            "127.0.0.1:1",
            "x.example",
            &[],
            &request,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CertifyError::Config { .. }), "{e}");
        assert!(e.to_string().contains("no trust anchors"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_retryable_connect_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
        let anchors = ca::certs_from_pem(&anchor.cert_pem, "anchor").unwrap();
        let request = CertifyRequest {
            csr_pem: String::new(),
            token: String::new(),
        };
        let e = certify(
            &format!("127.0.0.1:{port}"),
            "x.example",
            &anchors,
            &request,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CertifyError::Connect { .. }), "{e}");
        assert!(e.is_retryable());
    }
}
