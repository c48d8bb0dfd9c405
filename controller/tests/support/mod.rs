//! Helpers of the controller's integration tests: a controller on a folder and the files it
//! reads, watches that record what they were sent, plain HTTP requests, polling with a
//! deadline, and a fake Kubernetes API server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::destination::{Endpoint, Update};
use mesh_controller::index::IndexConfig;
use mesh_controller::source::Source;
use mesh_controller::{start, DestinationConfig, Running};

/// Polls `cond` every 20 ms until it holds, or panics after `deadline` with `what`.
pub async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "not true within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A controller on a free local port reading the folder `dir`, once it is ready.
pub async fn on_folder(dir: &Path) -> Running {
    let running = start(DestinationConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        source: Source::Dir(dir.to_owned()),
        index: IndexConfig::default(),
    })
    .await
    .expect("start");
    wait_ready(running.addr).await;
    running
}

/// Writes a file atomically (a temporary file renamed over it), as editors and kubectl do.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// Every line a JSON-lines watch (the outbound or the inbound policy's) received, and the
/// error that ended it.
pub struct Lines<T>(Arc<Mutex<(Vec<T>, Option<String>)>>);

impl<T: Clone + Send + 'static> Lines<T> {
    /// Follows `stream` in the background.
    pub fn follow<E: std::fmt::Display>(
        stream: impl Stream<Item = Result<T, E>> + Send + 'static,
    ) -> Self {
        let lines = Lines(Arc::new(Mutex::new((Vec::new(), None))));
        let state = lines.0.clone();
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(line) = stream.next().await {
                let mut s = state.lock().expect("lock");
                match line {
                    Ok(policy) => s.0.push(policy),
                    Err(e) => s.1 = Some(e.to_string()),
                }
            }
        });
        lines
    }

    pub fn last(&self) -> Option<T> {
        self.0.lock().expect("lock").0.last().cloned()
    }

    pub fn count(&self) -> usize {
        self.0.lock().expect("lock").0.len()
    }

    pub fn error(&self) -> Option<String> {
        self.0.lock().expect("lock").1.clone()
    }

    /// Waits until the last line holds.
    pub async fn wait(&self, what: &str, cond: impl Fn(&T) -> bool) {
        eventually(what, Duration::from_secs(10), || {
            self.last().is_some_and(|p| cond(&p))
        })
        .await;
    }
}

/// What a watch client holds after applying every update it received.
#[derive(Debug, Default)]
pub struct Seen {
    /// The current endpoints.
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
    /// The last `noEndpoints` since the last add (`None` after an add).
    pub no_endpoints: Option<bool>,
    /// Every update, in order.
    pub updates: Vec<Update>,
    /// The error that ended the watch, if any.
    pub error: Option<String>,
}

/// A watch running in the background through `mesh_api::destination::watch`.
#[derive(Clone)]
pub struct Watch(pub Arc<Mutex<Seen>>);

impl Watch {
    pub fn start(addr: SocketAddr, authority: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        let stream = mesh_api::destination::watch(addr, authority);
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(update) = stream.next().await {
                let mut s = state.lock().expect("lock");
                match update {
                    Ok(update) => {
                        match &update {
                            Update::Add(add) => {
                                s.no_endpoints = None;
                                for e in &add.endpoints {
                                    s.endpoints.insert(e.addr, e.clone());
                                }
                            }
                            Update::Remove(r) => {
                                for a in &r.addrs {
                                    s.endpoints.remove(a);
                                }
                            }
                            Update::NoEndpoints(n) => {
                                s.endpoints.clear();
                                s.no_endpoints = Some(n.exists);
                            }
                        }
                        s.updates.push(update);
                    }
                    Err(e) => s.error = Some(e.to_string()),
                }
            }
        });
        Watch(seen)
    }

    /// The current endpoint addresses, as strings.
    pub fn addrs(&self) -> Vec<String> {
        let s = self.0.lock().expect("lock");
        s.endpoints.keys().map(ToString::to_string).collect()
    }

    pub fn no_endpoints(&self) -> Option<bool> {
        self.0.lock().expect("lock").no_endpoints
    }

    pub fn endpoint(&self, addr: &str) -> Option<Endpoint> {
        let addr: SocketAddr = addr.parse().ok()?;
        self.0.lock().expect("lock").endpoints.get(&addr).cloned()
    }

    /// Waits until the endpoint addresses are `expected`.
    pub async fn wait_addrs(&self, expected: &[&str]) {
        let what = format!("endpoints are {expected:?}");
        eventually(&what, Duration::from_secs(10), || {
            let got = self.addrs();
            got == expected && (!expected.is_empty() || self.no_endpoints().is_some())
        })
        .await;
    }

    /// Waits until the watch says `noEndpoints{exists}`.
    pub async fn wait_no_endpoints(&self, exists: bool) {
        let what = format!("noEndpoints{{exists:{exists}}}");
        eventually(&what, Duration::from_secs(10), || {
            self.no_endpoints() == Some(exists) && self.addrs().is_empty()
        })
        .await;
    }
}

/// An HTTP/1.1 GET, for health, metrics and bad requests.
pub async fn get(addr: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The same GET over HTTP/2 prior knowledge.
pub async fn get_h2(addr: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until `/ready` answers 200.
pub async fn wait_ready(addr: SocketAddr) {
    let start = tokio::time::Instant::now();
    loop {
        if get(addr, "/ready").await.0 == http::StatusCode::OK {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not ready within 15s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A recorded fixture from `testdata/k8s-fixtures` (responses of a real API server).
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../testdata/k8s-fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// One request to the fake API server, with its body.
pub struct ApiRequest {
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub body: Bytes,
}

/// A fake Kubernetes API server on a free local port: every request is answered with the status
/// and JSON body `respond` returns.
pub async fn fake_api_server(
    respond: impl Fn(&ApiRequest) -> (u16, String) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let respond = respond.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, text) = respond(&ApiRequest {
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().unwrap_or("").to_string(),
                                body,
                            });
                            let mut r = http::Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Writes `dir/kubeconfig`, whose current context is the (fake) API server at `api`, in
/// `namespace` when given.
pub fn kubeconfig(dir: &Path, api: SocketAddr, namespace: Option<&str>) -> PathBuf {
    let path = dir.join("kubeconfig");
    let namespace = namespace
        .map(|n| format!(", namespace: {n}"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake{namespace}}}}}]\n\
             current-context: fake\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

/// One request over TLS to `addr`, verifying the server as the API server verifies a webhook:
/// against `ca_pem` and as `server_name`. The status and the body.
pub async fn tls_call(
    addr: SocketAddr,
    ca_pem: &str,
    server_name: &str,
    method: &str,
    path: &str,
    body: String,
) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in mesh_api::identity::ca::certs_from_pem(ca_pem, "ca").expect("the CA bundle") {
        roots.add(cert).expect("a root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).expect("name");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the CA bundle");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", server_name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
