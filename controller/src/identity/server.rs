//! The identity API over TLS: certify, health and metrics, with a self-issued serving certificate.
//!
//! TLS 1.3 with ALPN `h2` and `http/1.1` (hyper-util's auto builder serves both), no client
//! certificate. The serving certificate is issued by the controller's own CA for its identity
//! and swapped for a fresh one at ~70 % of its lifetime ([`ServingCert`]); a failed renewal is
//! retried every 10 s while the old one keeps serving. Routes:
//! `POST /v1/identity/certify`, `GET /ready`, `GET /live`, `GET /metrics`; every error answer is
//! a JSON [`ErrorBody`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::identity::{ca, CertifyRequest, CertifyResponse, ErrorBody, Identity, CERTIFY_PATH};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use super::csr::{self, CsrError};
use super::token::{TokenError, TokenReviewer};
use super::{Ca, IssueError, StartError};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest certify request body read (a CSR and a token are a few KiB).
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The retry interval of a failed serving-certificate renewal.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[error("accepting connections: {0}")]
pub struct ServeError(std::io::Error);

impl From<std::io::Error> for ServeError {
    fn from(e: std::io::Error) -> Self {
        Self(e)
    }
}

/// Everything a request needs.
pub struct State {
    ca: Arc<Ca>,
    reviewer: TokenReviewer,
    controller: Identity,
    serving: Arc<ServingCert>,
    tls: Arc<rustls::ServerConfig>,
    metrics: Metrics,
}

impl State {
    /// Issues the first serving certificate and builds the TLS configuration.
    pub fn new(
        ca: Arc<Ca>,
        reviewer: TokenReviewer,
        controller: Identity,
    ) -> Result<Arc<Self>, StartError> {
        let (key, not_after) = serving_key(&ca, &controller)?;
        let serving = Arc::new(ServingCert {
            current: RwLock::new(Arc::new(key)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| StartError::Config(format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(serving.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let metrics = Metrics::default();
        metrics.issuer_expiration.set(unix(ca.issuer_not_after()));
        metrics.serving_expiration.set(unix(not_after));
        Ok(Arc::new(Self {
            ca,
            reviewer,
            controller,
            serving,
            tls: Arc::new(tls),
            metrics,
        }))
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }
}

/// Serves the identity API on `listener` until `stop` turns true (then drains) or the task is
/// dropped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let renew = AbortOnDrop(tokio::spawn(renew(state.clone())));
    let acceptor = tokio_rustls::TlsAcceptor::from(state.tls.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Handshakes in progress belong to the server: dropped with it.
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if crate::http::is_transient(&error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
                Err(error) => return Err(error.into()),
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        handshakes.spawn(async move {
            let Some(tls) = crate::tls::accept(&acceptor, tcp, peer, HANDSHAKE_TIMEOUT).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, peer, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(renew);
    tracing::info!("identity controller draining");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

async fn route(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (path.as_str(), req.method()) {
        (CERTIFY_PATH, &Method::POST) => certify_route(state, peer, req).await,
        (CERTIFY_PATH, _) => {
            state.metrics.count(Outcome::BadRequest);
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{CERTIFY_PATH} takes POST"),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            r
        }
        ("/ready" | "/live" | "/metrics", &Method::GET) => match path.as_str() {
            "/ready" => text(
                StatusCode::OK,
                "ready\n".into(),
                "text/plain; charset=utf-8",
            ),
            "/live" => text(StatusCode::OK, "live\n".into(), "text/plain; charset=utf-8"),
            _ => text(
                StatusCode::OK,
                state.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        },
        ("/ready" | "/live" | "/metrics", _) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes GET"));
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
            r
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

async fn certify_route(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                state,
                peer,
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Outcome::BadRequest,
                    format!("the request body is larger than {MAX_REQUEST} bytes"),
                ),
            )
        }
        Err(e) => {
            return refuse(
                state,
                peer,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    Outcome::BadRequest,
                    format!("reading the request body: {e}"),
                ),
            )
        }
    };
    let request: CertifyRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return refuse(
                state,
                peer,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    Outcome::BadRequest,
                    format!("the body is not a certify request ({{\"csr_pem\", \"token\"}}): {e}"),
                ),
            )
        }
    };
    match certify(state, &request).await {
        Ok((response, identity, serial)) => {
            state.metrics.count(Outcome::Ok);
            tracing::info!(
                %identity,
                %serial,
                expires_at = %response.expires_at,
                %peer,
                "issued a certificate"
            );
            let body = serde_json::to_string(&response).unwrap_or_default();
            text(StatusCode::OK, body, "application/json")
        }
        Err(refusal) => refuse(state, peer, refusal),
    }
}

/// Checks the request and issues the leaf, or says why not. Nothing is signed unless every
/// check passed.
async fn certify(
    state: &State,
    request: &CertifyRequest,
) -> Result<(CertifyResponse, Identity, String), Refusal> {
    // The CSR's own checks first: they are cheap, a TokenReview is not.
    let parsed = csr::parse(&request.csr_pem).map_err(Refusal::from)?;
    let identity = state
        .reviewer
        .review(&request.token)
        .await
        .map_err(|e| match e {
            TokenError::Rejected(_) => {
                Refusal::new(StatusCode::FORBIDDEN, Outcome::BadToken, e.to_string())
            }
            TokenError::Unavailable(_) => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Outcome::Unavailable,
                e.to_string(),
            ),
        })?;
    let key = parsed.check_for(&identity).map_err(Refusal::from)?;
    let issued = state.ca.issue(&key, &identity).map_err(|e| {
        let status = match e {
            IssueError::IssuerExpired => StatusCode::SERVICE_UNAVAILABLE,
            IssueError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal::new(
            status,
            Outcome::Unavailable,
            format!("issuing for {identity}: {e}"),
        )
    })?;
    let response = CertifyResponse {
        cert_chain_pem: issued.chain_pem,
        expires_at: ca::rfc3339(issued.not_after),
    };
    Ok((response, identity, issued.serial))
}

/// A refused request: its status, its metric label and its message.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    outcome: Outcome,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, outcome: Outcome, message: String) -> Self {
        Self {
            status,
            outcome,
            message,
        }
    }
}

impl From<CsrError> for Refusal {
    fn from(e: CsrError) -> Self {
        match e {
            CsrError::Malformed(_) => {
                Refusal::new(StatusCode::BAD_REQUEST, Outcome::BadCsr, e.to_string())
            }
            CsrError::Mismatch { .. } => Refusal::new(
                StatusCode::FORBIDDEN,
                Outcome::IdentityMismatch,
                e.to_string(),
            ),
        }
    }
}

fn refuse(state: &State, peer: SocketAddr, refusal: Refusal) -> Response<Body> {
    state.metrics.count(refusal.outcome);
    let result = refusal.outcome.as_str();
    if refusal.status.is_server_error() {
        tracing::warn!(%peer, status = refusal.status.as_u16(), result, reason = %refusal.message, "certify request failed");
    } else {
        tracing::info!(%peer, status = refusal.status.as_u16(), result, reason = %refusal.message, "certify request refused");
    }
    error(refusal.status, refusal.message)
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    let body = serde_json::to_string(&ErrorBody { error: message }).unwrap_or_default();
    text(status, body, "application/json")
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

// === impl ServingCert ===

/// The controller's serving certificate, swapped when renewed.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a valid certificate (writers only swap an Arc).
        Some(match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// Issues a serving certificate for `controller` and loads it for rustls.
fn serving_key(ca: &Ca, controller: &Identity) -> Result<(CertifiedKey, SystemTime), StartError> {
    let (issued, key_pem) = ca.issue_with_key(controller)?;
    let chain = ca::certs_from_pem(&issued.chain_pem, "the serving certificate")?;
    let key = ca::key_from_pem(&key_pem, "the serving key")?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| StartError::Config(format!("loading the serving key: {e}")))?;
    Ok((CertifiedKey::new(chain, signing), issued.not_after))
}

/// Renews the serving certificate at ~70 % of its lifetime, forever.
async fn renew(state: Arc<State>) {
    let mut issued_at = SystemTime::now();
    let mut not_after = state.ca.lifetime_now().map_or(issued_at, |l| issued_at + l);
    loop {
        let lifetime = not_after.duration_since(issued_at).unwrap_or_default();
        let at = issued_at + lifetime.mul_f64(0.7);
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        match serving_key(&state.ca, &state.controller) {
            Ok((key, expires)) => {
                match state.serving.current.write() {
                    Ok(mut current) => *current = Arc::new(key),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
                }
                issued_at = SystemTime::now();
                not_after = expires;
                state.metrics.serving_expiration.set(unix(expires));
                tracing::info!(expires_at = %ca::rfc3339(expires), "renewed the serving certificate");
            }
            Err(error) => {
                tracing::warn!(%error, "renewing the serving certificate failed; retrying in 10s");
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }
}

// === Metrics ===

/// The outcome of a certify request: the `result` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    Ok,
    BadRequest,
    BadCsr,
    BadToken,
    IdentityMismatch,
    Unavailable,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::BadCsr => "bad_csr",
            Outcome::BadToken => "bad_token",
            Outcome::IdentityMismatch => "identity_mismatch",
            Outcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

struct Metrics {
    certify: Family<ResultLabel, Counter>,
    issuer_expiration: Gauge,
    serving_expiration: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("identity");
        let certify = Family::<ResultLabel, Counter>::default();
        registry.register("certify", "Certify requests, by result", certify.clone());
        let issuer_expiration = Gauge::default();
        registry.register(
            "issuer_expiration_timestamp_seconds",
            "When the issuer certificate expires (Unix time)",
            issuer_expiration.clone(),
        );
        let serving_expiration = Gauge::default();
        registry.register(
            "serving_cert_expiration_timestamp_seconds",
            "When the controller's own serving certificate expires (Unix time)",
            serving_expiration.clone(),
        );
        Self {
            certify,
            issuer_expiration,
            serving_expiration,
            registry,
        }
    }
}

impl Metrics {
    fn count(&self, outcome: Outcome) {
        self.certify
            .get_or_create(&ResultLabel {
                result: outcome.as_str(),
            })
            .inc();
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
