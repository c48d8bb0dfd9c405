//! The tap aggregator (`mesh-controller tap`): in a cluster, `mesh viz tap|top` reach a pod's
//! proxy through it, because only the viz tap identity may tap a proxy from outside its pod.
//!
//! At start it reads the trust anchors, makes a key and asks the identity controller for a
//! certificate for its own identity (`mesh-tap.mesh-viz.serviceaccount.identity.mesh.<td>`)
//! with its projected service-account token; it renews at 70 % of the lifetime, keeping the
//! old certificate meanwhile, and is ready once it holds one. For a request it looks the pod up
//! in the Kubernetes API (its IP, and its service account: the proxy's identity), opens mutual
//! TLS to the proxy's admin port for that identity and streams the proxy's answer back as it
//! comes, until either side goes away.
//!
//! ```text
//! GET /api/v1/pods/<namespace>/<pod>/tap?<filter>   the proxy's GET /v1/tap (JSON lines)
//! GET /api/v1/pods/<namespace>/<pod>/metrics         the proxy's GET /metrics
//! 200 the proxy's body, streamed
//! 400 {"error":"…"}   a bad filter or path
//! 403 {"error":"…"}   the proxy refused the tap (its reason)
//! 404 {"error":"…"}   no such pod, or the pod is not meshed (with what to do)
//! 502 {"error":"…"}   the proxy or the Kubernetes API could not be reached
//! 503 {"error":"…"}   no certificate yet, or the pod has no IP yet
//! ```
//!
//! **Security Invariant:** the aggregator's key never leaves the process; it sends its token
//! only to a server that verified as the identity controller, and talks to a proxy only after
//! the proxy proved the identity of the pod's service account.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use mesh_api::identity::credentials::{provider, Credentials, Renewal};
use mesh_api::identity::{ca, client, CertifyRequest, Identity};
use mesh_api::tap::{Filter, TAP_PATH};
use mesh_api::viz::PODS_PATH;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use super::{error, health, Body, ServeError};

/// The ConfigMap of the mesh's trust anchors, in the control plane's namespace, and its key.
pub const TRUST_ANCHORS_CONFIGMAP: &str = "mesh-trust-anchors";
pub const TRUST_ANCHORS_KEY: &str = "ca-bundle.crt";
/// The service account the aggregator runs as (its identity's first label).
pub const SERVICE_ACCOUNT: &str = "mesh-tap";

/// How long one certify call may take.
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a proxy and getting its response's headers may take.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pod lookup in the Kubernetes API may take.
const KUBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a proxy's error answer passed on.
const MAX_ERROR: usize = 1024;

/// How to run the tap aggregator.
#[derive(Clone, Debug)]
pub struct TapConfig {
    /// Where to serve (plain HTTP: the API server's service proxy calls it).
    pub listen: SocketAddr,
    /// The identity controller, `host:port`.
    pub identity_addr: String,
    /// The projected service-account token (audience `identity.mesh.io`), read at every renewal.
    pub token_file: PathBuf,
    /// The trust domain of workload identities.
    pub trust_domain: String,
    /// The aggregator's own namespace (its identity's second label).
    pub namespace: String,
    /// The control plane's namespace: the trust anchors' ConfigMap is there.
    pub control_plane_namespace: String,
    /// The trust anchors from a file instead of the ConfigMap.
    pub trust_anchors: Option<PathBuf>,
    /// The proxies' admin port.
    pub proxy_admin_port: u16,
}

impl TapConfig {
    /// The defaults of `mesh viz install`, listening on `listen`.
    pub fn new(listen: SocketAddr) -> TapConfig {
        TapConfig {
            listen,
            identity_addr: "mesh-identity.mesh.svc.cluster.local:8080".into(),
            token_file: "/var/run/secrets/tokens/mesh-identity-token".into(),
            trust_domain: "cluster.local".into(),
            namespace: "mesh-viz".into(),
            control_plane_namespace: mesh_api::identity::CONTROL_PLANE_NAMESPACE.into(),
            trust_anchors: None,
            proxy_admin_port: mesh_api::defaults::ADMIN_PORT,
        }
    }
}

/// Why the tap aggregator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("reading the trust anchors {path}: {source}")]
    AnchorsFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "reading the trust anchors (ConfigMap {namespace}/{TRUST_ANCHORS_CONFIGMAP}): {reason}"
    )]
    AnchorsConfigMap { namespace: String, reason: String },
    #[error("the trust anchors: {0}")]
    Anchors(String),
    #[error("the tap identity: {0}")]
    Identity(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A started tap aggregator; dropping it stops it.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    _renew: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Whether the aggregator holds a certificate.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until the server stops (normally never).
    pub async fn wait(&mut self) -> Result<(), TapError> {
        match (&mut self.task).await {
            Ok(result) => Ok(result?),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        self._renew.abort();
    }
}

/// Reads the trust anchors, makes the key, binds, and starts serving and renewing; returns at
/// once (not ready until the first certificate arrives).
pub async fn start(config: TapConfig, kube: kube::Client) -> Result<Running, TapError> {
    let anchors = trust_anchors(&config, &kube).await?;
    let name = Identity::new(SERVICE_ACCOUNT, &config.namespace, &config.trust_domain)
        .map_err(|e| TapError::Identity(e.to_string()))?;
    let controller = Identity::controller(&config.trust_domain)
        .map_err(|e| TapError::Identity(e.to_string()))?;
    let identity = Arc::new(TapIdentity::new(name, anchors)?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| TapError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| TapError::Bind {
        addr: config.listen,
        source,
    })?;
    let ready = Arc::new(AtomicBool::new(false));
    let renew = tokio::spawn(identity.clone().run(
        config.identity_addr.clone(),
        controller.dns_name(),
        config.token_file.clone(),
        ready.clone(),
    ));
    let state = Arc::new(State {
        kube,
        identity,
        ready: ready.clone(),
        trust_domain: config.trust_domain,
        admin_port: config.proxy_admin_port,
    });
    tracing::info!(%addr, identity = %state.identity.name(), "serving the tap aggregator");
    let task = tokio::spawn(super::serve(listener, move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    }));
    Ok(Running {
        addr,
        ready,
        task,
        _renew: renew,
    })
}

async fn trust_anchors(
    config: &TapConfig,
    kube: &kube::Client,
) -> Result<Vec<CertificateDer<'static>>, TapError> {
    let pem = match &config.trust_anchors {
        Some(path) => {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| TapError::AnchorsFile {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => {
            let namespace = config.control_plane_namespace.clone();
            let fail = |reason: String| TapError::AnchorsConfigMap {
                namespace: namespace.clone(),
                reason,
            };
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(kube.clone(), &namespace);
            let map = api
                .get_opt(TRUST_ANCHORS_CONFIGMAP)
                .await
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail("not found: is the mesh installed (`mesh install`)?".into()))?;
            map.data
                .and_then(|mut d| d.remove(TRUST_ANCHORS_KEY))
                .ok_or_else(|| fail(format!("it has no {TRUST_ANCHORS_KEY}")))?
        }
    };
    ca::certs_from_pem(&pem, "the trust anchors").map_err(|e| TapError::Anchors(e.to_string()))
}

// === the aggregator's identity ===

/// The aggregator's credentials and the client configuration presenting them.
struct TapIdentity {
    credentials: Arc<Credentials>,
    /// Mutual TLS to the proxies' admin servers (HTTP/1.1).
    client: Arc<rustls::ClientConfig>,
}

impl TapIdentity {
    fn new(name: Identity, anchors: Vec<CertificateDer<'static>>) -> Result<Self, TapError> {
        let fail = |e: String| TapError::Identity(e);
        let key = ca::new_key().map_err(|e| fail(e.to_string()))?;
        let credentials =
            Arc::new(Credentials::new(&name, &key, anchors).map_err(|e| fail(e.to_string()))?);
        let roots = credentials
            .roots()
            .map_err(|e| TapError::Anchors(e.to_string()))?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(credentials.clone());
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TapIdentity {
            credentials,
            client: Arc::new(client),
        })
    }

    fn name(&self) -> &str {
        self.credentials.name()
    }

    /// Gets a certificate, then keeps renewing it; sets `ready` once the first arrives.
    async fn run(
        self: Arc<Self>,
        addr: String,
        server_name: String,
        token_file: PathBuf,
        ready: Arc<AtomicBool>,
    ) {
        let mut renewal = Renewal::new();
        loop {
            let wait = match self.refresh(&addr, &server_name, &token_file).await {
                Ok(not_after) => {
                    ready.store(true, Ordering::Release);
                    let wait = renewal.succeeded(not_after);
                    tracing::info!(identity = %self.name(), renew_in = ?wait, "certificate obtained");
                    wait
                }
                Err(error) => {
                    let wait = renewal.failed();
                    let serving = self.credentials.current().is_some();
                    tracing::warn!(identity = %self.name(), %error, retry_in = ?wait, serving_old = serving, "certificate refresh failed");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One certify call; the new certificate serves from the next handshake on.
    async fn refresh(
        &self,
        addr: &str,
        server_name: &str,
        token_file: &std::path::Path,
    ) -> Result<SystemTime, String> {
        let token = tokio::fs::read_to_string(token_file)
            .await
            .map_err(|e| format!("reading the token {}: {e}", token_file.display()))?;
        let request = CertifyRequest {
            csr_pem: self.credentials.csr_pem().to_string(),
            token: token.trim().to_string(),
        };
        let anchors = self.credentials.anchors();
        let response = client::certify(addr, server_name, anchors, &request, CERTIFY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        self.credentials
            .accept(&response.cert_chain_pem)
            .map_err(|e| format!("the identity controller sent an unusable certificate: {e}"))
    }
}

// === the server ===

struct State {
    kube: kube::Client,
    identity: Arc<TapIdentity>,
    ready: Arc<AtomicBool>,
    trust_domain: String,
    admin_port: u16,
}

/// What a request asks of which pod's proxy.
#[derive(Debug, PartialEq)]
struct Call<'a> {
    namespace: &'a str,
    pod: &'a str,
    /// The proxy's path and query.
    upstream: String,
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served".into());
    }
    let path = req.uri().path();
    if path == "/ready" && !state.ready.load(Ordering::Acquire) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no certificate from the identity controller yet".into(),
        );
    }
    if let Some(rsp) = health(path) {
        return rsp;
    }
    if path == SCRAPE_TARGETS_PATH {
        return scrape_targets(state).await;
    }
    let call = match parse(path, req.uri().query()) {
        Ok(call) => call,
        Err((status, message)) => return error(status, message),
    };
    if !state.ready.load(Ordering::Acquire) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the tap aggregator has no certificate from the identity controller yet: \
             is the identity controller running? (`mesh check`)"
                .into(),
        );
    }
    let proxy = match lookup(state, call.namespace, call.pod).await {
        Ok(proxy) => proxy,
        Err((status, message)) => return error(status, message),
    };
    let who = format!("{}/{}", call.namespace, call.pod);
    match forward(state, &who, &proxy, &call.upstream).await {
        Ok(rsp) => rsp,
        Err((status, message)) => {
            tracing::info!(pod = %who, %status, %message, "proxy call failed");
            error(status, message)
        }
    }
}

type Failure = (StatusCode, String);

/// `/api/v1/pods/<ns>/<pod>/<tap|metrics>` and its query, as the call to the proxy.
fn parse<'a>(path: &'a str, query: Option<&str>) -> Result<Call<'a>, Failure> {
    let bad = |m: String| (StatusCode::NOT_FOUND, m);
    let usage = || {
        bad(format!(
            "no such path: {path} (the tap aggregator serves {PODS_PATH}/<namespace>/<pod>/tap \
             and …/metrics)"
        ))
    };
    let rest = path
        .strip_prefix(PODS_PATH)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(usage)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, pod, what] = parts[..] else {
        return Err(usage());
    };
    for (what, name) in [("namespace", namespace), ("pod", pod)] {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("invalid {what} name {name:?}"),
            ));
        }
    }
    let upstream = match what {
        "tap" => {
            let filter = Filter::from_query(query.unwrap_or(""))
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad tap filter: {e}")))?;
            let query = filter.to_query();
            if query.is_empty() {
                TAP_PATH.to_string()
            } else {
                format!("{TAP_PATH}?{query}")
            }
        }
        "metrics" => "/metrics".to_string(),
        _ => return Err(usage()),
    };
    Ok(Call {
        namespace,
        pod,
        upstream,
    })
}

/// Prometheus' HTTP service discovery of the proxies: what the viz component's Prometheus scrapes
/// (its config names this path), so it needs no Kubernetes discovery of its own (Debian's
/// Prometheus is built without it) and no access to the Kubernetes API.
pub const SCRAPE_TARGETS_PATH: &str = "/api/v1/scrape-targets";

/// `GET /api/v1/scrape-targets`: every running meshed pod's proxy admin address, labelled with
/// the pod's `namespace` and `pod` (what the metrics API groups samples by), in Prometheus'
/// `http_sd_configs` format. A failure answers 502, which Prometheus treats as "keep the last
/// targets".
async fn scrape_targets(state: &State) -> Response<Body> {
    let api: kube::Api<Pod> = kube::Api::all(state.kube.clone());
    let pods = match tokio::time::timeout(KUBE_TIMEOUT, api.list(&Default::default())).await {
        Ok(Ok(pods)) => pods,
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("listing pods in the Kubernetes API: {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("listing pods: the Kubernetes API did not answer within {KUBE_TIMEOUT:?}"),
            )
        }
    };
    let groups = scrape_groups(&pods.items, &state.trust_domain, state.admin_port);
    super::json(StatusCode::OK, &groups)
}

/// The target groups of `pods`: one per running meshed pod with an IP.
fn scrape_groups(pods: &[Pod], trust_domain: &str, admin_port: u16) -> Vec<serde_json::Value> {
    pods.iter()
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|p| {
            let namespace = p.metadata.namespace.as_deref()?;
            let name = p.metadata.name.as_deref()?;
            let proxy = proxy_of(p, namespace, name, trust_domain, admin_port).ok()?;
            Some(serde_json::json!({
                "targets": [proxy.addr.to_string()],
                "labels": {"namespace": namespace, "pod": name},
            }))
        })
        .collect()
}

/// Where a pod's proxy is and who it must prove to be.
#[derive(Debug)]
struct Proxy {
    addr: SocketAddr,
    identity: String,
}

/// The pod's proxy, from the Kubernetes API.
async fn lookup(state: &State, namespace: &str, name: &str) -> Result<Proxy, Failure> {
    let api: kube::Api<Pod> = kube::Api::namespaced(state.kube.clone(), namespace);
    let pod = tokio::time::timeout(KUBE_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| {
            (
                StatusCode::BAD_GATEWAY,
                format!("looking up pod {namespace}/{name}: the Kubernetes API did not answer within {KUBE_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("looking up pod {namespace}/{name} in the Kubernetes API: {e}"),
            )
        })?
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!(
                    "pod {namespace}/{name} not found: `kubectl -n {namespace} get pods` lists them"
                ),
            )
        })?;
    proxy_of(&pod, namespace, name, &state.trust_domain, state.admin_port)
}

fn proxy_of(
    pod: &Pod,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    admin_port: u16,
) -> Result<Proxy, Failure> {
    let spec = pod.spec.as_ref();
    let meshed = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == mesh_api::inject::PROXY_CONTAINER)
    });
    if !meshed {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "pod {namespace}/{name} is not meshed: mesh it with `mesh inject` \
                 (e.g. `kubectl get deploy -n {namespace} -o yaml | mesh inject - | kubectl apply -f -`)"
            ),
        ));
    }
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "pod {namespace}/{name} has no IP yet: is it running? \
                     (`kubectl -n {namespace} get pod {name}`)"
                ),
            )
        })?;
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let identity = Identity::new(account, namespace, trust_domain).map_err(|e| {
        (
            StatusCode::BAD_GATEWAY,
            format!("pod {namespace}/{name} has no valid identity: {e}"),
        )
    })?;
    Ok(Proxy {
        addr: SocketAddr::new(ip, admin_port),
        identity: identity.dns_name(),
    })
}

/// `GET upstream` on the proxy over mutual TLS; a success streams back as it comes.
async fn forward(
    state: &State,
    who: &str,
    proxy: &Proxy,
    upstream: &str,
) -> Result<Response<Body>, Failure> {
    let unreachable = |what: String| {
        (
            StatusCode::BAD_GATEWAY,
            format!(
                "{what} (the proxy of pod {who} at {}, identity {})",
                proxy.addr, proxy.identity
            ),
        )
    };
    let exchange = async {
        let tcp = TcpStream::connect(proxy.addr)
            .await
            .map_err(|e| unreachable(format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(proxy.identity.clone())
            .map_err(|e| unreachable(format!("not a server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(state.identity.client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("mutual TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let req = Request::get(upstream)
            .header(http::header::HOST, proxy.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(format!("building the request: {e}")))?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        Ok::<_, Failure>((rsp, conn))
    };
    let (rsp, conn) = tokio::time::timeout(PROXY_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {PROXY_TIMEOUT:?}")))??;
    let status = rsp.status();
    if !status.is_success() {
        let text = match Limited::new(rsp.into_body(), MAX_ERROR).collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_string(),
            Err(_) => String::new(),
        };
        return Err((
            status,
            format!("the proxy of pod {who} answered {status}: {text}"),
        ));
    }
    let content_type = rsp.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = WithConn {
        body: rsp.into_body(),
        _conn: conn,
    };
    let mut out = Response::new(body.map_err(Into::into).boxed_unsync());
    if let Some(content_type) = content_type {
        out.headers_mut()
            .insert(http::header::CONTENT_TYPE, content_type);
    }
    Ok(out)
}

/// A proxy's response body that holds its connection: when the caller goes away and the body
/// is dropped, the connection to the proxy closes (which ends a tap there at once).
struct WithConn {
    body: Incoming,
    _conn: AbortOnDrop,
}

impl http_body::Body for WithConn {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::defaults::ADMIN_PORT;

    fn check(path: &str, query: Option<&str>, expected: Result<(&str, &str, &str), u16>) {
        let got = parse(path, query)
            .map(|c| (c.namespace, c.pod, c.upstream))
            .map_err(|(status, _)| status.as_u16());
        let expected = expected.map(|(n, p, u)| (n, p, u.to_string()));
        assert_eq!(got, expected, "{path}?{query:?}");
    }

    #[test]
    fn paths() {
        check(
            "/api/v1/pods/demo/web-1/tap",
            Some("method=GET&dst.deployment=web"),
            Ok(("demo", "web-1", "/v1/tap?method=GET&dst.deployment=web")),
        );
        check(
            "/api/v1/pods/demo/web-1/tap",
            None,
            Ok(("demo", "web-1", "/v1/tap")),
        );
        check(
            "/api/v1/pods/demo/web-1/metrics",
            Some("ignored=1"),
            Ok(("demo", "web-1", "/metrics")),
        );
        check("/api/v1/pods/demo/web-1/tap", Some("rate=0"), Err(400));
        check("/api/v1/pods/demo/web-1/tap", Some("x=1"), Err(400));
        check("/api/v1/pods/Demo/web-1/tap", None, Err(400));
        check("/api/v1/pods/demo/web%2F1/tap", None, Err(400));
        check("/api/v1/pods/demo/web-1/exec", None, Err(404));
        check("/api/v1/pods/demo/tap", None, Err(404));
        check("/api/v1/pods/demo/web-1/tap/more", None, Err(404));
        check("/v1/tap", None, Err(404));
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn scrape_targets_are_the_running_meshed_pods_admin_ports() {
        let pods = [
            "metadata: {name: web-1, namespace: demo}\n\
             spec: {containers: [{name: app}, {name: mesh-proxy}]}\n\
             status: {phase: Running, podIP: 10.244.0.5}",
            "metadata: {name: web-2, namespace: demo}\n\
             spec: {containers: [{name: app}], initContainers: [{name: mesh-proxy}]}\n\
             status: {phase: Running, podIP: 10.244.0.6}",
            // Not meshed, not running, or going away: not scraped.
            "metadata: {name: db, namespace: demo}\n\
             spec: {containers: [{name: db}]}\nstatus: {phase: Running, podIP: 10.244.0.7}",
            "metadata: {name: web-3, namespace: demo}\n\
             spec: {containers: [{name: mesh-proxy}]}\nstatus: {phase: Pending}",
            "metadata: {name: web-4, namespace: demo, deletionTimestamp: '2026-01-01T00:00:00Z'}\n\
             spec: {containers: [{name: mesh-proxy}]}\nstatus: {phase: Running, podIP: 10.244.0.8}",
        ]
        .map(pod);
        let groups = scrape_groups(&pods, "cluster.local", ADMIN_PORT);
        assert_eq!(
            serde_json::Value::Array(groups),
            serde_json::json!([
                {"targets": ["10.244.0.5:4191"], "labels": {"namespace": "demo", "pod": "web-1"}},
                {"targets": ["10.244.0.6:4191"], "labels": {"namespace": "demo", "pod": "web-2"}},
            ])
        );
    }

    #[test]
    fn a_pods_proxy_is_its_ip_and_service_account() {
        let meshed = pod(
            "spec: {serviceAccountName: web, containers: [{name: app}, {name: mesh-proxy}]}\n\
                          status: {podIP: 10.244.0.5}",
        );
        let proxy = proxy_of(&meshed, "demo", "web-1", "cluster.local", ADMIN_PORT).unwrap();
        assert_eq!(proxy.addr, "10.244.0.5:4191".parse().unwrap());
        assert_eq!(
            proxy.identity,
            "web.demo.serviceaccount.identity.mesh.cluster.local"
        );
        // A native sidecar, and the default service account.
        let native = pod(
            "spec: {containers: [{name: app}], initContainers: [{name: mesh-proxy}]}\n\
                          status: {podIP: 10.244.0.6}",
        );
        let proxy = proxy_of(&native, "demo", "web-2", "cluster.local", ADMIN_PORT).unwrap();
        assert!(proxy.identity.starts_with("default.demo."), "{proxy:?}");

        let plain = pod("spec: {containers: [{name: app}]}\nstatus: {podIP: 10.244.0.7}");
        let (status, message) =
            proxy_of(&plain, "demo", "web-3", "cluster.local", ADMIN_PORT).unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            message.contains("not meshed: mesh it with `mesh inject`"),
            "{message}"
        );
        let pending = pod("spec: {containers: [{name: mesh-proxy}]}\nstatus: {phase: Pending}");
        let (status, message) =
            proxy_of(&pending, "demo", "web-4", "cluster.local", ADMIN_PORT).unwrap_err();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message.contains("no IP yet"), "{message}");
    }
}
