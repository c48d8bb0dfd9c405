//! Outbound traffic policy end to end on pods: the destination controller runs on a folder of
//! YAML in a pod of its own; a meshed client pod calls `web-svc` by name; its proxy follows the
//! Service's HTTPRoutes and GRPCRoutes (precedence, canary splits, timeouts, budgeted retries,
//! faults, mirrors) to three meshed server pods behind three Services. Needs root.
//!
//! The server application (below) names itself in a `server` header, echoes the `x-rule` header
//! a route's filter sets (so a test sees which rule a request matched), and fails, stalls or
//! echoes bodies by path.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_cli::local::{binary, require_root, service_yaml, Cluster, MeshOptions, Pod, Proxy};
use mesh_tests::fixtures::eventually;
use mesh_tests::metric_sum;
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const CONTROLLER_PORT: u16 = 8086;
const APP_PORT: u16 = 8080;
const WEB: &str = "web-svc.demo.svc.cluster.local";
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const V2_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const MIRROR_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What one server application saw.
#[derive(Clone, Default)]
struct Stats {
    hits: Arc<AtomicU64>,
    counter: Arc<AtomicU64>,
    /// Calls of `/echo-fail-every-2` alone.
    echo_fail: Arc<AtomicU64>,
}

struct Routes {
    /// The destination controller's stderr.
    log: tempfile::NamedTempFile,
    client: Pod,
    client_proxy: Proxy,
    state: tempfile::TempDir,
    controller: Child,
    stats: BTreeMap<&'static str, Stats>,
    _proxies: Vec<Proxy>,
    _apps: Vec<std::thread::JoinHandle<()>>,
    _cluster: Cluster,
}

impl Drop for Routes {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

/// The cluster: a controller pod; `web-v1` behind `web-svc` (10.96.0.10), `web-v2` behind
/// `web-v2` (.11), `mirror` behind `mirror` (.12), all meshed; a meshed client pod; `routes`
/// in the state folder.
fn routes(name: &str, routes_yaml: &str) -> Routes {
    routes_with(name, routes_yaml, "")
}

/// [`routes`], with `annotations` (YAML flow, e.g. `{a: b}`) on Service `web-svc`.
fn routes_with(name: &str, routes_yaml: &str, annotations: &str) -> Routes {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control = cluster.add_pod("control").expect("control pod");
    let servers: Vec<(Pod, &'static str, &'static str, Ipv4Addr)> = [
        ("web-v1", "web-svc", WEB_IP),
        ("web-v2", "web-v2", V2_IP),
        ("mirror", "mirror", MIRROR_IP),
    ]
    .into_iter()
    .map(|(pod, svc, ip)| (cluster.add_pod(pod).expect("server pod"), pod, svc, ip))
    .collect();
    let client = cluster.add_pod("client").expect("client pod");

    let state = tempfile::tempdir().expect("state folder");
    let services: Vec<String> = servers
        .iter()
        .map(|(pod, _, svc, ip)| {
            service_yaml(
                "demo",
                svc,
                *ip,
                (80, APP_PORT),
                &[],
                std::slice::from_ref(pod),
            )
        })
        .collect();
    let mut services = services.join("---\n");
    if !annotations.is_empty() {
        services = services.replacen(
            "metadata: {name: web-svc, namespace: demo}",
            &format!("metadata: {{name: web-svc, namespace: demo, annotations: {annotations}}}"),
            1,
        );
    }
    write(state.path(), "services.yaml", &services);
    write(state.path(), "routes.yaml", routes_yaml);
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let controller = control
        .command(binary("mesh-controller").expect("mesh-controller"))
        .args([
            "destination",
            "--listen",
            &format!("0.0.0.0:{CONTROLLER_PORT}"),
        ])
        .arg("--source")
        .arg(format!("dir:{}", state.path().display()))
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("the controller's log"))
        .spawn()
        .expect("start the controller");
    control
        .wait_http_ok(
            SocketAddr::from(([127, 0, 0, 1], CONTROLLER_PORT)),
            "/ready",
            Duration::from_secs(20),
        )
        .expect("the destination controller gets ready");

    let mut stats = BTreeMap::new();
    let mut apps = Vec::new();
    let mut proxies = Vec::new();
    for (pod, name, _, _) in &servers {
        let s = Stats::default();
        apps.push(serve(pod, name, s.clone()));
        stats.insert(*name, s);
        proxies.push(pod.mesh(MeshOptions::default()).expect("mesh a server pod"));
    }
    client
        .set_hosts(&[
            (IpAddr::from(WEB_IP), WEB),
            (IpAddr::from(V2_IP), "web-v2.demo.svc.cluster.local"),
        ])
        .expect("hosts file");
    client.route("10.96.0.0/12").expect("service route");
    let env = [
        (
            "MESH_PROXY_DESTINATION_ADDR",
            format!("{}:{CONTROLLER_PORT}", control.ip),
        ),
        ("MESH_PROXY_DESTINATION_NAMESPACE", "demo".to_string()),
    ];
    let client_proxy = client
        .mesh(MeshOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..MeshOptions::default()
        })
        .expect("mesh the client pod");
    Routes {
        log,
        client,
        client_proxy,
        state,
        controller,
        stats,
        _proxies: proxies,
        _apps: apps,
        _cluster: cluster,
    }
}

/// Writes a state file atomically.
fn write(dir: &Path, file: &str, yaml: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).expect("write the state");
    std::fs::rename(&tmp, dir.join(file)).expect("rename the state");
}

impl Routes {
    fn set_routes(&self, yaml: &str) {
        write(self.state.path(), "routes.yaml", yaml);
    }

    /// Runs `f` in the client pod.
    fn in_client<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        self.client
            .run_in(move || Ok(runtime().block_on(f())))
            .join()
            .expect("the client thread does not panic")
            .expect("the client thread enters the pod")
    }

    fn metrics(&self) -> String {
        let (status, body) = self.client_proxy.admin_get("/metrics").expect("metrics");
        assert_eq!(status, 200);
        body
    }

    fn hits(&self, app: &str) -> u64 {
        self.stats[app].hits.load(Ordering::SeqCst)
    }

    /// Waits until a request to `path` (with `headers`) is answered by rule `rule`: the
    /// controller has read the routes and the proxy has them.
    fn wait_for_rule(&self, path: &'static str, rule: &'static str) {
        let seen = self.in_client(move || async move {
            eventually(Duration::from_secs(10), || async {
                probe(path).await.rule == rule
            })
            .await
        });
        assert!(seen, "the routes took effect: {path} → {rule}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// === the server application ===

/// Serves the test application in `pod` on port 8080 until the process ends.
fn serve(pod: &Pod, name: &'static str, stats: Stats) -> std::thread::JoinHandle<()> {
    let (up, is_up) = std::sync::mpsc::channel();
    let thread = pod.run_in(move || {
        runtime().block_on(async move {
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], APP_PORT)))
                    .await
                    .expect("bind the app");
            let _ = up.send(());
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return Ok(());
                };
                let stats = stats.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let stats = stats.clone();
                        async move { Ok::<_, Infallible>(handle(name, &stats, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        })
    });
    is_up
        .recv_timeout(Duration::from_secs(10))
        .expect("the app starts");
    std::thread::spawn(move || {
        let _ = thread.join();
    })
}

async fn handle(
    name: &str,
    stats: &Stats,
    req: Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    stats.hits.fetch_add(1, Ordering::SeqCst);
    let n = stats.counter.fetch_add(1, Ordering::SeqCst);
    if name == "mirror" && req.headers().contains_key("x-hang") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let rule = req.headers().get("x-rule").cloned();
    let path = req.uri().path().to_owned();
    let (status, body) = match path.as_str() {
        "/fail" => (500, Bytes::new()),
        "/fail-every-5" if n % 5 == 4 => (500, Bytes::new()),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            (200, Bytes::new())
        }
        "/slow-every-2" => {
            if n.is_multiple_of(2) {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            (200, Bytes::new())
        }
        "/echo" | "/echo-fail-every-2" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            match body {
                Ok(_)
                    if path == "/echo-fail-every-2"
                        && stats
                            .echo_fail
                            .fetch_add(1, Ordering::SeqCst)
                            .is_multiple_of(2) =>
                {
                    (500, Bytes::new())
                }
                Ok(body) => (200, body),
                Err(_) => (400, Bytes::new()),
            }
        }
        _ => (200, Bytes::from_static(b"ok")),
    };
    let mut rsp = http::Response::new(Full::new(body).boxed());
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    rsp.headers_mut().insert("server", name.parse().unwrap());
    if let Some(rule) = rule {
        rsp.headers_mut().insert("rule", rule);
    }
    rsp
}

// === the client ===

/// What a test reads of a response.
#[derive(Clone, Debug, Default)]
struct Answer {
    status: u16,
    server: String,
    rule: String,
    grpc_status: Option<String>,
    proxy_error: Option<String>,
    body: Bytes,
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// A client connection from the client pod to `web-svc` (its ClusterIP), through its proxy.
struct Client {
    conn: Conn,
}

impl Client {
    async fn connect() -> tokio::net::TcpStream {
        let addr = SocketAddr::from((WEB_IP, 80));
        tokio::net::TcpStream::connect(addr).await.expect("connect")
    }

    async fn h1() -> Self {
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(Self::connect().await))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        Self {
            conn: Conn::H1(send),
        }
    }

    async fn h2() -> Self {
        let (send, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(Self::connect().await),
        )
        .await
        .expect("handshake");
        tokio::spawn(conn);
        Self {
            conn: Conn::H2(send),
        }
    }

    /// Sends a request to `web-svc`; the answer and how long it took.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (Duration, Answer) {
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| *k == "host") {
            req = req.header("host", WEB);
        }
        if matches!(self.conn, Conn::H2(_)) {
            req = Request::builder()
                .method(method)
                .uri(format!("http://{WEB}{path}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body).boxed()).expect("request");
        let start = Instant::now();
        let rsp = match &mut self.conn {
            Conn::H1(send) => {
                send.ready().await.expect("connection");
                send.send_request(req).await
            }
            Conn::H2(send) => send.send_request(req).await,
        }
        .expect("the proxy answers");
        let header = |name: &str| {
            rsp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        let mut answer = Answer {
            status: rsp.status().as_u16(),
            server: header("server").unwrap_or_default(),
            rule: header("rule").unwrap_or_default(),
            grpc_status: header("grpc-status"),
            proxy_error: header("mesh-proxy-error"),
            body: Bytes::new(),
        };
        answer.body = rsp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (start.elapsed(), answer)
    }
}

/// `GET path` on a connection of its own.
async fn probe(path: &str) -> Answer {
    get(&mut Client::h1().await, path).await
}

async fn get(client: &mut Client, path: &str) -> Answer {
    client.request("GET", path, &[], Bytes::new()).await.1
}

// === route YAML ===

fn parent() -> &'static str {
    "parentRefs: [{group: core, kind: Service, name: web-svc, port: 80}]"
}

/// A rule that tags the request with `x-rule: tag` and sends it to web-svc.
fn tagged(matches: &str, tag: &str) -> String {
    format!(
        "  - matches: {matches}\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-rule, value: \"{tag}\"}}]}}}}]\n    backendRefs: [{{name: web-svc, port: 80}}]\n"
    )
}

fn http_route(name: &str, created: &str, rules: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: \"{created}\"}}\nspec:\n  {}\n  rules:\n{}",
        parent(),
        rules.concat()
    )
}

fn grpc_route(name: &str, created: &str, rules: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: \"{created}\"}}\nspec:\n  {}\n  rules:\n{}",
        parent(),
        rules.concat()
    )
}

/// One rule for everything, with `extra` YAML lines (indented by four) in it.
fn one_rule(name: &str, extra: &str, backends: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  {}\n  rules:\n  - backendRefs: {backends}\n{extra}",
        parent()
    )
}

// === the tests ===

/// A request (method, path, headers) and the rule that must answer it.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

#[test]
fn matches_follow_gateway_api_precedence() {
    let a = http_route(
        "a",
        "2026-01-01T00:00:00Z",
        &[
            tagged("[{path: {type: PathPrefix, value: /api}}]", "a/0"),
            tagged("[{path: {type: Exact, value: /api/exact}}]", "a/1"),
            tagged("[{path: {type: PathPrefix, value: /api}, method: POST}]", "a/2"),
            tagged(
                "[{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: \"true\"}]}]",
                "a/3",
            ),
            tagged("[{path: {type: PathPrefix, value: /api/v2}}]", "a/4"),
            tagged("[{path: {type: PathPrefix, value: /}}]", "a/5"),
            tagged(
                "[{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]",
                "a/6",
            ),
            tagged(
                "[{path: {type: PathPrefix, value: /q}, queryParams: [{name: v, value: \"2\"}]}]",
                "a/7",
            ),
            tagged(
                "[{path: {type: PathPrefix, value: /q}, headers: [{name: x-a, value: \"1\"}]}]",
                "a/8",
            ),
            tagged("[{path: {type: PathPrefix, value: /tie}}]", "a/9"),
            tagged("[{path: {type: PathPrefix, value: /first}}]", "a/10"),
            tagged("[{path: {type: PathPrefix, value: /first}}]", "a/11"),
        ],
    );
    let b = http_route(
        "b",
        "2026-02-01T00:00:00Z",
        &[
            tagged("[{path: {type: PathPrefix, value: /tie}}]", "b/0"),
            tagged(
                "[{path: {type: PathPrefix, value: /api}, method: POST, headers: [{name: x-canary, value: \"true\"}]}]",
                "b/1",
            ),
            tagged("[{path: {type: Exact, value: /api/exact}}]", "b/2"),
            tagged("[{path: {type: PathPrefix, value: /api/v2/deep}}]", "b/3"),
            tagged("[{path: {type: PathPrefix, value: /tie2}}]", "b/4"),
        ],
    );
    let c = http_route(
        "c",
        "2026-02-01T00:00:00Z",
        &[tagged("[{path: {type: PathPrefix, value: /tie2}}]", "c/0")],
    );
    let g = grpc_route(
        "g",
        "2025-12-01T00:00:00Z",
        &[
            tagged(
                "[{method: {service: demo.Voting, method: VoteDoughnut}}]",
                "g/0",
            ),
            tagged("[{method: {service: demo.Voting}}]", "g/1"),
            tagged("[{method: {method: VoteJoy}}]", "g/2"),
        ],
    );
    let mesh = routes("rt-prec", &[a, b, c, g].join("---\n"));
    mesh.wait_for_rule("/api/x", "a/0");

    // method, path, headers, the rule that must answer.
    let cases: Vec<Case> = vec![
        ("GET", "/api/x", vec![], "a/0"),
        ("GET", "/api", vec![], "a/0"),
        ("DELETE", "/api/x", vec![], "a/0"),
        ("GET", "/apix", vec![], "a/5"),
        ("GET", "/api/exact", vec![], "a/1"),
        ("POST", "/api/x", vec![], "a/2"),
        ("POST", "/api/x", vec![("x-canary", "true")], "b/1"),
        ("GET", "/api/x", vec![("x-canary", "true")], "a/3"),
        ("GET", "/api/x", vec![("x-canary", "false")], "a/0"),
        ("GET", "/api/v2/x", vec![], "a/4"),
        ("GET", "/api/v2/deep/x", vec![], "b/3"),
        ("GET", "/re/123", vec![], "a/6"),
        ("GET", "/re/abc", vec![], "a/5"),
        ("GET", "/q?v=2", vec![], "a/7"),
        ("GET", "/q?v=2", vec![("x-a", "1")], "a/8"),
        ("GET", "/q?v=3", vec![], "a/5"),
        ("GET", "/tie", vec![], "a/9"),
        ("GET", "/tie2", vec![], "b/4"),
        ("GET", "/first/x", vec![], "a/10"),
        ("GET", "/", vec![], "a/5"),
        ("POST", "/demo.Voting/VoteDoughnut", vec![], "g/0"),
        ("POST", "/demo.Voting/Results", vec![], "g/1"),
        ("POST", "/demo.Emoji/VoteJoy", vec![], "g/2"),
        ("POST", "/demo.Emoji/VoteJoyful", vec![], "a/5"),
    ];
    assert!(cases.len() >= 20);
    let got = mesh.in_client(move || async move {
        let mut h1 = Client::h1().await;
        let mut h2 = Client::h2().await;
        let mut got = Vec::new();
        for (method, path, headers, want) in cases {
            // gRPC paths over HTTP/2, like a gRPC client.
            let client = if path.starts_with("/demo.") {
                &mut h2
            } else {
                &mut h1
            };
            let (_, answer) = client.request(method, path, &headers, Bytes::new()).await;
            got.push((format!("{method} {path} {headers:?}"), want, answer.rule));
        }
        got
    });
    let wrong: Vec<_> = got.iter().filter(|(_, want, rule)| want != rule).collect();
    assert!(
        wrong.is_empty(),
        "requests that took the wrong rule: {wrong:#?}"
    );
}

#[test]
fn a_request_no_rule_matches_is_a_404_or_unimplemented() {
    let only = http_route(
        "only",
        "2026-01-01T00:00:00Z",
        &[tagged("[{path: {type: PathPrefix, value: /only}}]", "only")],
    );
    let mesh = routes("rt-404", &only);
    mesh.wait_for_rule("/only", "only");
    let (h1, by_ip, grpc) = mesh.in_client(|| async {
        let h1 = get(&mut Client::h1().await, "/other").await;
        // Called by its ClusterIP, the Service has the same routes.
        let by_ip = Client::h1()
            .await
            .request("GET", "/other", &[("host", "10.96.0.10")], Bytes::new())
            .await
            .1;
        let grpc = Client::h2()
            .await
            .request(
                "POST",
                "/demo.Voting/Results",
                &[("content-type", "application/grpc")],
                Bytes::new(),
            )
            .await
            .1;
        (h1, by_ip, grpc)
    });
    assert_eq!(h1.status, 404);
    assert_eq!(by_ip.status, 404, "by ClusterIP: {by_ip:?}");
    assert!(h1.proxy_error.unwrap_or_default().contains("no route"));
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.grpc_status.as_deref(), Some("12"), "UNIMPLEMENTED");
    assert_eq!(mesh.hits("web-v1"), 1, "only the probe reached the app");

    // A tap of the client's proxy names the route a request took.
    let route = mesh.in_client(|| async {
        use futures_util::StreamExt;
        let admin = mesh_api::defaults::LOCAL_ADMIN_ADDR;
        let io = tokio::net::TcpStream::connect(admin).await.expect("admin");
        let filter = mesh_api::tap::Filter::from_query("").expect("filter");
        let events = mesh_api::tap::stream(io, &admin.to_string(), &filter)
            .await
            .expect("tap");
        futures_util::pin_mut!(events);
        let sent = tokio::spawn(async { probe("/only/x").await });
        let mut route = None;
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_secs(5), events.next()).await
        {
            if let mesh_api::tap::Event::RequestStart { route: r, path, .. } = event {
                if path == "/only/x" {
                    route = r;
                    break;
                }
            }
        }
        sent.await.expect("the request");
        route
    });
    assert_eq!(
        route.map(|r| r.to_string()).as_deref(),
        Some("HTTPRoute/demo/only"),
        "tap events carry the route"
    );

    // The controller goes away: the proxy keeps the last routes it had.
    let mut mesh = mesh;
    mesh.controller.kill().expect("stop the controller");
    let _ = mesh.controller.wait();
    let (only, other) = mesh.in_client(|| async {
        let mut c = Client::h1().await;
        (get(&mut c, "/only").await, get(&mut c, "/other").await)
    });
    assert_eq!((only.status, only.rule.as_str()), (200, "only"));
    assert_eq!(other.status, 404, "the routes stay without the controller");
}

fn split(v1: u32, v2: u32) -> String {
    one_rule(
        "canary",
        "",
        &format!(
            "[{{name: web-svc, port: 80, weight: {v1}}}, {{name: web-v2, port: 80, weight: {v2}}}]"
        ),
    )
}

#[test]
fn a_canary_split_lands_on_its_weights_and_moves_under_load_without_failing() {
    let mesh = routes("rt-split", &split(90, 10));
    // Wait for the split: some request reaches v2.
    let ready = mesh.in_client(|| async {
        eventually(Duration::from_secs(10), || async {
            probe("/").await.server == "web-v2"
        })
        .await
    });
    assert!(ready, "the canary gets traffic");

    let (v1, v2, failed) = mesh.in_client(|| async {
        let mut c = Client::h1().await;
        let (mut v1, mut v2, mut failed) = (0, 0, 0);
        for _ in 0..2_000 {
            match get(&mut c, "/").await {
                a if a.status != 200 => failed += 1,
                a if a.server == "web-v2" => v2 += 1,
                _ => v1 += 1,
            }
        }
        (v1, v2, failed)
    });
    assert_eq!(failed, 0);
    let share = f64::from(v2) / f64::from(v1 + v2);
    assert!(
        (0.07..=0.13).contains(&share),
        "10% ± 3% to the canary: {v2} of {}",
        v1 + v2
    );

    // Under load from four connections, move everything to v2: within 2 s every request goes
    // there, and none fails.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let load = {
        let client = mesh.client.clone();
        std::thread::spawn(move || {
            client
                .run_in(move || {
                    Ok(runtime().block_on(async move {
                        let log = Arc::new(Mutex::new(Vec::new()));
                        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                        let mut tasks = Vec::new();
                        for _ in 0..4 {
                            let log = log.clone();
                            let stop = stop.clone();
                            tasks.push(tokio::spawn(async move {
                                let mut c = Client::h1().await;
                                while !stop.load(Ordering::SeqCst) {
                                    let a = get(&mut c, "/").await;
                                    log.lock()
                                        .unwrap()
                                        .push((Instant::now(), a.status, a.server));
                                }
                            }));
                        }
                        let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
                        stop.store(true, Ordering::SeqCst);
                        for t in tasks {
                            let _ = t.await;
                        }
                        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
                    }))
                })
                .join()
                .expect("the load thread")
                .expect("enter the pod")
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let changed = Instant::now();
    mesh.set_routes(&split(0, 100));
    std::thread::sleep(Duration::from_secs(3));
    tx.send(()).unwrap();
    let log = load.join().expect("load");
    let failed: Vec<_> = log.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "no request fails: {failed:?}");
    let late_v1 = log
        .iter()
        .filter(|(at, _, server)| *at > changed + Duration::from_secs(2) && server == "web-v1")
        .count();
    let after = log
        .iter()
        .filter(|(at, _, _)| *at > changed + Duration::from_secs(2))
        .count();
    assert!(after > 50, "load went on after the change: {after}");
    assert_eq!(late_v1, 0, "2 s after the change everything goes to v2");
}

fn retried(path_annotations: &str, extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: retried\n  namespace: demo\n  annotations: {{{path_annotations}}}\nspec:\n  {}\n  rules:\n  - backendRefs: [{{name: web-svc, port: 80}}]\n{extra}",
        parent()
    )
}

#[test]
fn retries_hide_a_flaky_backend_and_the_budget_stops_a_storm() {
    // web-svc retries up to 3 times; web-v2, whose app always fails on /fail, has its own
    // route and budget (20% of its requests plus 10 per second).
    let storm = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: storm\n  namespace: demo\n  annotations: {retry.mesh.io/http: 5xx, retry.mesh.io/limit: \"3\"}\nspec:\n  parentRefs: [{group: core, kind: Service, name: web-v2, port: 80}]\n  rules:\n  - backendRefs: [{name: web-v2, port: 80}]\n";
    // A backend failing 20% of its attempts needs retries for 25% of the requests (a retry
    // fails 20% of the time too): web-svc's budget is raised to 30% for it. web-v2 keeps the
    // default budget.
    let mesh = routes_with(
        "rt-retry",
        &format!(
            "{}{storm}",
            retried("retry.mesh.io/http: 5xx, retry.mesh.io/limit: \"3\"", "")
        ),
        "{retry.mesh.io/budget-ratio: \"0.3\"}",
    );
    // The retry is in force once a failing request is tried four times.
    let stats = mesh.stats["web-v1"].clone();
    let ready = mesh.in_client(move || async move {
        eventually(Duration::from_secs(10), || {
            let stats = stats.clone();
            async move {
                let before = stats.hits.load(Ordering::SeqCst);
                probe("/fail").await;
                stats.hits.load(Ordering::SeqCst) - before >= 4
            }
        })
        .await
    });
    assert!(ready, "a failing request is retried");

    let ok = mesh.in_client(|| async {
        let mut c = Client::h1().await;
        let mut ok = 0u32;
        for _ in 0..2_000 {
            if get(&mut c, "/fail-every-5").await.status == 200 {
                ok += 1;
            }
        }
        ok
    });
    assert!(
        ok >= 1_998,
        "retries hide a 20% failure: {ok} of 2000 succeeded"
    );
    let metrics = mesh.metrics();
    let retries = metric_sum(
        &metrics,
        "outbound_http_retry_total",
        &["result=\"success\""],
    );
    assert!(retries >= 350, "the retries are counted: {retries}");

    // Everything fails on web-v2: retries stay within its budget, 20% of its requests plus
    // 10 per second of the 10 s window (or of the run, if it is longer).
    let hits = mesh.hits("web-v2");
    let n = 2_000u64;
    let started = Instant::now();
    let failed = mesh.in_client(move || async move {
        let mut c = Client::h1().await;
        let mut failed = 0u64;
        for _ in 0..n {
            let a = c
                .request(
                    "GET",
                    "/fail",
                    &[("host", "web-v2.demo.svc.cluster.local")],
                    Bytes::new(),
                )
                .await
                .1;
            if a.status == 500 && a.server == "web-v2" {
                failed += 1;
            }
        }
        failed
    });
    let seconds = started.elapsed().as_secs().max(10) + 1;
    assert_eq!(failed, n);
    let retries = mesh.hits("web-v2") - hits - n;
    let budget = n / 5 + 10 * seconds;
    assert!(
        retries <= budget,
        "no storm: {retries} retries for {n} failing requests (budget {budget})"
    );
    assert!(
        retries >= n / 10,
        "the budget's share was used: {retries} retries"
    );
    let metrics = mesh.metrics();
    let exhausted = metric_sum(
        &metrics,
        "retry_budget_exhausted_total",
        &["parent_name=\"web-v2\""],
    );
    assert!(
        exhausted >= n - budget,
        "the budget refused retries, counted: {exhausted}"
    );
    let counted = metric_sum(
        &metrics,
        "outbound_http_retry_total",
        &["route_name=\"storm\"", "result=\"failure\""],
    );
    assert_eq!(counted, retries, "every retry is counted");
}

#[test]
fn timeouts_answer_504_or_deadline_exceeded_and_a_slow_attempt_is_retried() {
    let mesh = routes(
        "rt-timeout",
        &[
            http_route(
                "slow",
                "2026-01-01T00:00:00Z",
                &[format!(
                    "{}    timeouts: {{request: 300ms}}\n",
                    tagged("[{path: {type: Exact, value: /slow}}]", "slow")
                )],
            ),
            http_route(
                "per-try",
                "2026-01-01T00:00:00Z",
                &[format!(
                    "{}    timeouts: {{request: 5s, backendRequest: 300ms}}\n",
                    tagged("[{path: {type: Exact, value: /slow-every-2}}]", "per-try")
                )],
            )
            .replace(
                "namespace: demo,",
                "namespace: demo, annotations: {retry.mesh.io/http: 5xx, retry.mesh.io/limit: \"2\"},",
            ),
        ]
        .join("---\n"),
    );
    mesh.wait_for_rule("/slow-every-2", "per-try");
    let (took, h1, grpc, per_try) = mesh.in_client(|| async {
        let (took, h1) = Client::h1()
            .await
            .request("GET", "/slow", &[], Bytes::new())
            .await;
        let grpc = Client::h2()
            .await
            .request(
                "POST",
                "/slow",
                &[("content-type", "application/grpc")],
                Bytes::new(),
            )
            .await
            .1;
        let mut c = Client::h1().await;
        let mut per_try = Vec::new();
        for _ in 0..4 {
            per_try.push(get(&mut c, "/slow-every-2").await.status);
        }
        (took, h1, grpc, per_try)
    });
    assert_eq!(h1.status, 504);
    assert!(
        took < Duration::from_secs(2),
        "answered at the timeout, not the app's 2 s"
    );
    assert!(h1.proxy_error.unwrap_or_default().contains("timed out"));
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.grpc_status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(per_try, [200; 4], "every slow first attempt was retried");
    let retries = metric_sum(
        &mesh.metrics(),
        "outbound_http_retry_total",
        &["result=\"success\""],
    );
    assert!(retries >= 1, "retries counted: {retries}");
}

#[test]
fn a_small_body_is_replayed_on_retry_and_a_large_one_is_sent_once() {
    let mesh = routes(
        "rt-body",
        &retried("retry.mesh.io/http: 5xx, retry.mesh.io/limit: \"1\"", ""),
    );
    mesh.wait_for_rule("/", "");
    let small: Bytes = (0..10 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let large: Bytes = (0..1024 * 1024)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let (s, l_ok, l_fail) = {
        let (small, large) = (small.clone(), large.clone());
        mesh.in_client(move || async move {
            let mut c = Client::h1().await;
            // The app fails the first, third … call of /echo-fail-every-2: the first attempt
            // fails, its retry succeeds; the next request's first attempt fails again.
            let s = c.request("POST", "/echo-fail-every-2", &[], small).await.1;
            let l_ok = c.request("POST", "/echo", &[], large.clone()).await.1;
            let l_fail = c.request("POST", "/echo-fail-every-2", &[], large).await.1;
            (s, l_ok, l_fail)
        })
    };
    assert_eq!(s.status, 200, "the retry succeeded");
    assert_eq!(s.body, small, "the retry carried the same 10 KiB body");
    assert_eq!(l_ok.status, 200);
    assert_eq!(
        l_ok.body.len(),
        large.len(),
        "a large body goes through whole"
    );
    assert_eq!(l_fail.status, 500, "a large body is not retried");
    let not_replayable = metric_sum(
        &mesh.metrics(),
        "outbound_http_retry_total",
        &["result=\"not_replayable\""],
    );
    assert_eq!(not_replayable, 1);
}

fn fault_yaml(abort: u32, delay: u32) -> String {
    format!(
        "apiVersion: policy.mesh.io/v1alpha1\nkind: HTTPFault\nmetadata: {{name: flaky, namespace: demo}}\nspec:\n  abort: {{httpStatus: 503, percent: {abort}}}\n  delay: {{duration: 1ms, percent: {delay}}}\n---\n{}",
        one_rule(
            "faulty",
            "    filters: [{type: ExtensionRef, extensionRef: {group: policy.mesh.io, kind: HTTPFault, name: flaky}}]\n",
            "[{name: web-svc, port: 80}]"
        )
    )
}

#[test]
fn faults_hit_their_percentages() {
    let mesh = routes("rt-fault", &fault_yaml(20, 10));
    let ready = mesh.in_client(|| async {
        eventually(Duration::from_secs(10), || async {
            probe("/").await.status == 503
        })
        .await
    });
    assert!(ready, "the fault is in force");
    let hits = mesh.hits("web-v1");
    let n = 2_000u32;
    let aborted = mesh.in_client(move || async move {
        let mut c = Client::h1().await;
        let mut aborted = 0u32;
        for _ in 0..n {
            let a = get(&mut c, "/").await;
            if a.status == 503 {
                assert!(a.proxy_error.unwrap_or_default().contains("flaky"));
                aborted += 1;
            }
        }
        aborted
    });
    let share = f64::from(aborted) / f64::from(n);
    assert!(
        (0.17..=0.23).contains(&share),
        "20% ± 3% aborted: {aborted} of {n}"
    );
    let reached = mesh.hits("web-v1") - hits;
    assert_eq!(
        reached,
        u64::from(n - aborted),
        "aborted requests never reach the app"
    );
    let metrics = mesh.metrics();
    let delayed = metric_sum(&metrics, "fault_injected_total", &["kind=\"delay\""]) as f64;
    let total = metric_sum(
        &metrics,
        "outbound_http_route_request_total",
        &["route_name=\"faulty\""],
    ) as f64;
    assert!(
        (0.07..=0.13).contains(&(delayed / total)),
        "10% ± 3% delayed: {delayed} of {total}"
    );
}

#[test]
fn a_mirror_gets_copies_and_a_hanging_one_does_not_slow_the_original() {
    let mesh = routes(
        "rt-mirror",
        &one_rule(
            "mirrored",
            "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}]\n",
            "[{name: web-svc, port: 80}]",
        ),
    );
    let ready = mesh.in_client(|| async {
        eventually(Duration::from_secs(10), || async {
            probe("/").await.status == 200
        })
        .await
    });
    assert!(ready);
    let seen = || mesh.hits("mirror");
    assert!(
        runtime().block_on(eventually(Duration::from_secs(10), || {
            let s = seen();
            async move { s > 0 }
        })),
        "the mirror gets copies"
    );
    let before = (mesh.hits("web-v1"), seen());
    let body: Bytes = Bytes::from(vec![b'x'; 1024]);
    let n = 100;
    mesh.in_client(move || async move {
        let mut c = Client::h1().await;
        for _ in 0..n {
            assert_eq!(
                c.request("POST", "/echo", &[], body.clone()).await.1.status,
                200
            );
        }
    });
    let originals = mesh.hits("web-v1") - before.0;
    assert_eq!(originals, n);
    assert!(
        runtime().block_on(eventually(Duration::from_secs(10), || {
            let copies = seen() - before.1;
            async move { copies == n }
        })),
        "every request was copied: {} of {n}",
        seen() - before.1
    );

    // The mirror hangs on these: the originals keep their pace.
    let slowest = mesh.in_client(|| async {
        let mut c = Client::h1().await;
        let mut slowest = Duration::ZERO;
        for _ in 0..50 {
            let (took, a) = c
                .request("GET", "/", &[("x-hang", "1")], Bytes::new())
                .await;
            assert_eq!(a.status, 200);
            slowest = slowest.max(took);
        }
        slowest
    });
    assert!(
        slowest < Duration::from_secs(2),
        "a hanging mirror does not hold the original (slowest {slowest:?}; the mirror hangs 60 s)"
    );
    let dropped = || metric_sum(&mesh.metrics(), "mirror_dropped_total", &[]);
    assert!(
        runtime().block_on(eventually(Duration::from_secs(15), || {
            let d = dropped();
            async move { d >= 50 }
        })),
        "hanging copies are dropped and counted: {}",
        dropped()
    );
}

#[test]
fn an_invalid_route_is_left_out_and_the_others_still_work() {
    let good = http_route(
        "good",
        "2026-01-01T00:00:00Z",
        &[tagged("[{path: {type: PathPrefix, value: /good}}]", "good")],
    );
    let bad_regex = http_route(
        "bad-regex",
        "2026-01-01T00:00:00Z",
        &[tagged(
            "[{path: {type: RegularExpression, value: \"/bad/(\"}}]",
            "bad-regex",
        )],
    );
    let unknown = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: unknown-backend, namespace: demo}}\nspec:\n  {}\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /gone}}}}]\n    backendRefs: [{{name: no-such-svc, port: 80}}]\n",
        parent()
    );
    let mesh = routes("rt-invalid", &[good, bad_regex, unknown].join("---\n"));
    mesh.wait_for_rule("/good", "good");
    let (bad, gone) = mesh.in_client(|| async {
        let mut c = Client::h1().await;
        (get(&mut c, "/bad/(").await, get(&mut c, "/gone").await)
    });
    assert_eq!(bad.status, 404, "the invalid route is not served: {bad:?}");
    let log = std::fs::read_to_string(mesh.log.path()).expect("the controller's log");
    let warning = log
        .lines()
        .find(|l| l.contains("bad-regex"))
        .unwrap_or_else(|| panic!("the controller names the invalid route:\n{log}"));
    assert!(
        warning.contains("routes.yaml") && warning.contains("regular expression"),
        "with its file and reason: {warning}"
    );
    assert_eq!(
        gone.status, 500,
        "an unknown backend's share is a 500: {gone:?}"
    );
    assert!(gone
        .proxy_error
        .unwrap_or_default()
        .contains("BackendNotFound"));
}
