//! The injector webhook (`mesh-controller injector`): AdmissionReview v1 over TLS, answered
//! with the JSONPatch that adds what `mesh inject --manual` adds.
//!
//! It never blocks a pod by its own fault: every answer allows the pod (the webhook is also
//! registered with `failurePolicy: Ignore` and a short timeout), a namespace it cannot read
//! counts as unannotated, and every decision is logged. `/ready`, `/live` and `/metrics` are
//! served on the same TLS port.

pub mod review;
pub mod sidecar;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::inject::ProxyConfig;
use tokio::net::TcpListener;

use review::Decision;
use sidecar::Sidecar;
pub use sidecar::SidecarPolicy;

/// The largest AdmissionReview accepted (the API server sends the whole pod).
pub const MAX_REVIEW: usize = 1024 * 1024;
/// How long a namespace lookup may take before it counts as unannotated.
pub const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run the injector.
#[derive(Clone, Debug)]
pub struct InjectorConfig {
    /// Where to listen (`0.0.0.0:8443`).
    pub listen: SocketAddr,
    /// The serving certificate chain, PEM.
    pub tls_cert: PathBuf,
    /// Its private key, PEM.
    pub tls_key: PathBuf,
    /// What the proxy is configured with (its `native_sidecar` is replaced by `sidecar`'s).
    pub proxy: ProxyConfig,
    /// Whether the proxy is a native sidecar: configured, or from the API server's version.
    pub sidecar: SidecarPolicy,
}

/// Why the injector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificate or key.
    #[error("reading {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The listener.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where namespace annotations come from.
#[derive(Clone)]
pub enum Namespaces {
    /// The Kubernetes API.
    Kube(kube::Client),
    /// Fixed (tests, and pods that only use their own annotations).
    Fixed(BTreeMap<String, BTreeMap<String, String>>),
}

impl Namespaces {
    async fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        match self {
            Namespaces::Fixed(all) => all.get(name).cloned().unwrap_or_default(),
            Namespaces::Kube(client) => {
                let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                    kube::Api::all(client.clone());
                match tokio::time::timeout(NAMESPACE_TIMEOUT, api.get(name)).await {
                    Ok(Ok(ns)) => ns.metadata.annotations.unwrap_or_default(),
                    Ok(Err(error)) => {
                        tracing::warn!(namespace = name, %error, "reading the namespace failed; using the pod's annotations only");
                        BTreeMap::new()
                    }
                    Err(_) => {
                        tracing::warn!(
                            namespace = name,
                            "reading the namespace timed out; using the pod's annotations only"
                        );
                        BTreeMap::new()
                    }
                }
            }
        }
    }
}

/// Counts of decisions, for `/metrics`.
#[derive(Default)]
struct Counts([AtomicU64; 5]);

const LABELS: [&str; 5] = ["injected", "not_requested", "skipped", "ignored", "failed"];

impl Counts {
    fn count(&self, d: &Decision) {
        let i = LABELS.iter().position(|l| *l == d.label()).unwrap_or(4);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self) -> String {
        let mut out = String::from(
            "# HELP injector_admissions_total Admission reviews answered, by decision.\n\
             # TYPE injector_admissions_total counter\n",
        );
        for (label, n) in LABELS.iter().zip(&self.0) {
            out.push_str(&format!(
                "injector_admissions_total{{decision=\"{label}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

struct State {
    proxy: ProxyConfig,
    sidecar: Arc<Sidecar>,
    namespaces: Namespaces,
    counts: Counts,
}

/// A started injector.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Error>,
    /// `auto`'s reader of the API server's version.
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits until the server fails (normally never).
    pub async fn wait(&mut self) -> std::io::Error {
        match (&mut self.task).await {
            Ok(e) => e,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => std::io::Error::other("the injector was stopped"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

/// Loads the certificate, binds, and serves in the background.
pub async fn start(config: InjectorConfig, namespaces: Namespaces) -> Result<Running, StartError> {
    let tls = tls_config(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let sidecar = Sidecar::new(config.sidecar);
    let follower = match (&config.sidecar, &namespaces) {
        (SidecarPolicy::Auto, Namespaces::Kube(client)) => {
            Some(sidecar::follow(client.clone(), sidecar.clone()).await)
        }
        _ => None,
    };
    let state = Arc::new(State {
        proxy: config.proxy,
        sidecar,
        namespaces,
        counts: Counts::default(),
    });
    tracing::info!(%addr, "injector listening");
    let task = tokio::spawn(serve(listener, tokio_rustls::TlsAcceptor::from(tls), state));
    Ok(Running {
        addr,
        task,
        follower,
    })
}

fn tls_config(config: &InjectorConfig) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use mesh_api::identity::ca;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| StartError::Tls {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let bad = |path: &PathBuf, e: &dyn std::fmt::Display| StartError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let chain = ca::certs_from_pem(&read(&config.tls_cert)?, "the serving certificate")
        .map_err(|e| bad(&config.tls_cert, &e))?;
    // PKCS#8, SEC1 or PKCS#1, as openssl, step and cert-manager write it.
    let key = ca::key_from_pem(&read(&config.tls_key)?, "the serving key (--tls-key)")
        .map_err(|e| bad(&config.tls_key, &e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&config.tls_cert, &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| bad(&config.tls_key, &e))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) -> std::io::Error {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(error) => return error,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Some(tls) = crate::tls::accept(&acceptor, tcp, peer, HANDSHAKE_TIMEOUT).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") | (&Method::GET, "/live") => text(StatusCode::OK, "ok\n", PLAIN),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            format!("{}{}# EOF\n", state.counts.encode(), state.sidecar.encode()),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
                Ok(body) => body.to_bytes(),
                Err(error) => {
                    tracing::warn!(%error, "unreadable admission review");
                    return text(StatusCode::BAD_REQUEST, format!("{error}\n"), PLAIN);
                }
            };
            match review::parse(&body) {
                Ok(request) => {
                    let answer = admit(state, request).await;
                    text(
                        StatusCode::OK,
                        serde_json::to_vec(&answer).expect("JSON serializes"),
                        "application/json",
                    )
                }
                Err(error) => {
                    tracing::warn!(%error, "refused a request");
                    text(StatusCode::BAD_REQUEST, format!("{error}\n"), PLAIN)
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
    }
}

async fn admit(state: &State, request: review::Request) -> serde_json::Value {
    let namespace = if request.what == "CREATE Pod" {
        state.namespaces.annotations(&request.namespace).await
    } else {
        BTreeMap::new()
    };
    let proxy = ProxyConfig {
        native_sidecar: state.sidecar.native(),
        ..state.proxy.clone()
    };
    let (decision, patch) = review::decide(&request, &namespace, &proxy);
    state.counts.count(&decision);
    let pod = review::pod_name(&request.object);
    let ns = request.namespace.as_str();
    match &decision {
        Decision::Injected => tracing::info!(namespace = ns, pod, "injected"),
        Decision::NotRequested => {
            tracing::info!(namespace = ns, pod, "not injected: not requested")
        }
        Decision::Skipped(why) => tracing::info!(namespace = ns, pod, reason = %why, "skipped"),
        Decision::Ignored(what) => tracing::info!(namespace = ns, request = %what, "ignored"),
        Decision::Failed(why) => {
            tracing::warn!(namespace = ns, pod, reason = %why, "not injected: injection failed")
        }
    }
    review::answer(&request.uid, &decision, patch.as_ref())
}
