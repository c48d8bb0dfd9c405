//! What the CLI's tests share: running `mesh`, golden files, fixed certificates, typed checks,
//! and a fake Kubernetes API server to run `mesh` against; `viz`, running `mesh viz` in-process
//! against recorded proxies.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

pub mod viz;

/// `cli/tests/`.
pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// A file of the fixed test data (`cli/tests/testdata/…`).
pub fn testdata(name: &str) -> PathBuf {
    tests_dir().join("testdata").join(name)
}

/// A file of the fixed test data as a command line argument.
pub fn testdata_arg(name: &str) -> String {
    testdata(name).display().to_string()
}

/// A file of the viz crate's recorded data (`viz/tests/data/…`): proxy scrapes, tap streams.
pub fn viz_data(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../viz/tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A recorded Kubernetes response (`testdata/k8s-fixtures/…`).
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/k8s-fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A recorded Kubernetes response, parsed.
pub fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The flags that make `mesh install` deterministic: the fixed certificates.
pub fn cert_flags() -> Vec<String> {
    let c = |n: &str| testdata_arg(&format!("certs/{n}"));
    [
        ("--identity-trust-anchors-file", c("trust-anchors.pem")),
        ("--identity-issuer-certificate-file", c("issuer.crt")),
        ("--identity-issuer-key-file", c("issuer.key")),
        ("--webhook-ca-file", c("webhook-ca.crt")),
        ("--webhook-certificate-file", c("webhook.crt")),
        ("--webhook-key-file", c("webhook.key")),
    ]
    .into_iter()
    .flat_map(|(f, v)| [f.to_string(), v])
    .collect()
}

/// Runs `mesh` with `args` and `stdin`, without a cluster (no KUBECONFIG).
pub fn mesh(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = mesh_command()
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run mesh");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("mesh output")
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// Compares `actual` with `cli/tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites the file.
pub fn golden(name: &str, actual: &str) {
    let path = tests_dir().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a)
            .map(|(i, (e, a))| format!("first difference at line {}:\n- {e}\n+ {a}", i + 1))
            .unwrap_or_else(|| "one is a prefix of the other".into());
        panic!(
            "{} differs from the output ({diff}); if the change is intended, run with UPDATE_GOLDEN=1 and review the diff",
            path.display()
        );
    }
}

/// Runs `mesh ARGS`, which must succeed: its stdout and the documents in it.
pub fn render(args: &[&str]) -> (String, Vec<Value>) {
    let out = mesh(args, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let docs = docs(&text);
    (text, docs)
}

/// The object of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every document of a YAML stream.
pub fn docs(yaml: &str) -> Vec<Value> {
    mesh_cli::manifest::parse(yaml, "output")
        .expect("valid YAML")
        .1
}

/// Checks every object against its k8s-openapi type.
pub fn assert_typed(docs: &[Value]) {
    for doc in docs {
        if let Err(e) = mesh_cli::manifest::check_typed(doc) {
            panic!("{}: {e}", mesh_cli::manifest::describe(doc));
        }
    }
}

/// One request to the fake API server, with its body.
pub struct ApiRequest {
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub body: Bytes,
}

/// What the fake API server answers to one request.
pub enum Answer {
    /// A whole JSON body.
    Whole(u16, String),
    /// The status and headers, then the text and a body that stays open, as a watch does until
    /// the client goes away (with no text: an answer that stalls after its headers).
    Open(u16, String),
    /// No answer at all, not even headers.
    Never,
}

/// A fake Kubernetes API server on a free local port: every request is answered with the status
/// and JSON body `respond` returns.
pub async fn fake_api_server(
    respond: impl Fn(&ApiRequest) -> (u16, String) + Send + Sync + 'static,
) -> SocketAddr {
    fake_api_server_streams(move |req| {
        let (status, text) = respond(req);
        Answer::Whole(status, text)
    })
    .await
}

/// How [`fake_api_server_hanging`] fails to answer a request.
pub enum Hang {
    /// No answer at all, not even headers.
    Never,
    /// The status and headers, then a body that never ends.
    AfterHeaders(u16),
}

/// [`fake_api_server`], except for the requests `hangs` picks, which are never answered (or
/// never finished): an API server, or a service it proxies, that hangs.
pub async fn fake_api_server_hanging(
    hangs: impl Fn(&ApiRequest) -> Option<Hang> + Send + Sync + 'static,
    respond: impl Fn(&ApiRequest) -> (u16, String) + Send + Sync + 'static,
) -> SocketAddr {
    fake_api_server_streams(move |req| match hangs(req) {
        Some(Hang::Never) => Answer::Never,
        Some(Hang::AfterHeaders(status)) => Answer::Open(status, String::new()),
        None => {
            let (status, text) = respond(req);
            Answer::Whole(status, text)
        }
    })
    .await
}

/// The fake API server the others are made of: every request is answered as `respond` says,
/// whole, left open ([`Answer::Open`]) or never ([`Answer::Never`]).
pub async fn fake_api_server_streams(
    respond: impl Fn(&ApiRequest) -> Answer + Send + Sync + 'static,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let respond = respond.clone();
                        async move {
                            let answer = respond(&ApiRequest::read(req).await);
                            Ok::<_, Infallible>(answer.into_response().await)
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

/// An API server that accepts connections and then says nothing, ever (not even HTTP: it
/// reads nothing).
pub async fn silent_api_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    addr
}

/// Runs `mesh COMMAND --kubeconfig <the fake cluster at api> ARGS`: (exit code, stdout, stderr).
pub async fn mesh_on_cluster(
    api: SocketAddr,
    command: &str,
    args: &[&str],
) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), api);
    let mut all: Vec<String> = vec![
        command.into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    // The binary blocks; run it off the runtime that serves the fake.
    let out = tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        mesh(&all, None)
    })
    .await
    .unwrap();
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

/// Starts `mesh COMMAND --kubeconfig <the fake cluster at api> ARGS` with its stdout and
/// stderr piped, for a test that reads them while it runs; keep the folder (the kubeconfig)
/// until it ends.
pub fn spawn_mesh_on_cluster(
    api: SocketAddr,
    command: &str,
    args: &[&str],
) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), api);
    let child = mesh_command()
        .arg(command)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("run mesh");
    (child, dir)
}

/// The recorded `/version` of the 1.28 API server as one of minor version `minor` answers it.
pub fn version_answer(minor: &str) -> String {
    let mut v = fixture_json("version.json");
    v["minor"] = minor.into();
    v["gitVersion"] = format!("v1.{minor}.7").into();
    v.to_string()
}

/// A fake API server of version 1.`minor` with no mesh installed: `/version`, and 404 for
/// anything else (so `mesh install` finds no control plane).
pub async fn bare_cluster(minor: &'static str) -> SocketAddr {
    fake_api_server(move |req| match req.path.as_str() {
        "/version" => (200, version_answer(minor)),
        _ => (404, fixture("notfound-404.json")),
    })
    .await
}

/// A local address where nothing listens: a cluster that cannot be reached.
pub fn unreachable_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// === the fake API server's and `mesh`'s helpers ===

/// `mesh` without a cluster (no KUBECONFIG), its stdout and stderr piped.
fn mesh_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesh"));
    command
        .env_remove("KUBECONFIG")
        .env_remove("MESH_LOCAL_STATE")
        .env("HOME", "/nonexistent")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Writes `dir/kubeconfig`, whose current context is the fake API server at `api`.
fn kubeconfig(dir: &Path, api: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl ApiRequest {
    /// The request's method, path, query and whole body (empty if it could not be read).
    async fn read(req: http::Request<hyper::body::Incoming>) -> Self {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        ApiRequest {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            body,
        }
    }
}

impl Answer {
    async fn into_response(self) -> http::Response<Body> {
        match self {
            Answer::Whole(status, text) => {
                let mut r = http::Response::new(BodyExt::boxed(Full::new(Bytes::from(text))));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Answer::Open(status, text) => {
                use futures_util::StreamExt as _;
                let first = (!text.is_empty())
                    .then(|| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(text))));
                let stream =
                    futures_util::stream::iter(first).chain(futures_util::stream::pending());
                let mut r =
                    http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r
            }
            Answer::Never => std::future::pending().await,
        }
    }
}

/// The recorded pods of namespace demo, each injected with the proxy `version` trusting
/// `anchors` (PEM), as the webhook would have written them.
pub fn injected_pods(anchors: &str, version: &str) -> Vec<Value> {
    let config = mesh_api::inject::ProxyConfig::new("ghcr.io/mesh/proxy", version, anchors);
    fixture_json("pods-list.json")["items"]
        .as_array()
        .expect("a pod list")
        .iter()
        .map(|pod| {
            let mut pod = pod.clone();
            mesh_api::inject::inject(&mut pod, &Default::default(), &config)
                .expect("the recorded pods inject");
            pod
        })
        .collect()
}
