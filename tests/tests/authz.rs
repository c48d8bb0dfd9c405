//! Inbound policy end to end on pods: the destination and identity controllers run in a pod of
//! their own on a folder of YAML; a meshed `voting` pod serves HTTP on 8080 and 8081 and an
//! opaque, server-speaks-first TCP protocol on 9000; its clients are the meshed pods `web` and
//! `bot` (service accounts `web` and `vote-bot`) and the unmeshed pods `plain-in` and
//! `plain-out`. The voting pod's proxy follows the `policy.mesh.io` resources of the folder:
//! Servers, AuthorizationPolicies, MeshTLS and Network authentications, rate limits, and its
//! default inbound policy. Needs root.

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_cli::local::{require_root, Cluster, ControlOptions, ControlPlane, Pod, Proxy};
use mesh_tests::fixtures::eventually;
use mesh_tests::{metric_sum, serve_app, serve_markers, Load, Markers};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    thread::JoinHandle,
    time::{Duration, Instant},
};

const HTTP_PORT: u16 = 8080;
const WILD_PORT: u16 = 8081;
const OPEN_PORT: u16 = 8082;
const TCP_PORT: u16 = 9000;
const WEB_ID: &str = "web.demo.serviceaccount.identity.mesh.cluster.local";

/// The clients, by pod name.
const CLIENTS: [&str; 4] = ["web", "bot", "plain-in", "plain-out"];

struct Mesh {
    control: ControlPlane,
    voting: Pod,
    voting_proxy: Option<Proxy>,
    clients: BTreeMap<&'static str, Pod>,
    _client_proxies: Vec<Proxy>,
    _apps: Vec<JoinHandle<anyhow::Result<()>>>,
    _markers: Markers,
    _dir: tempfile::TempDir,
    _cluster: Cluster,
}

/// The pods, with `policy` (YAML, `{plain-in}` and such replaced by the pods' addresses) in the
/// state folder, and the voting pod's proxy configured with `env`.
fn mesh(name: &str, policy: &str, env: &[(&str, &str)]) -> Mesh {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control_pod = cluster.add_pod("control").expect("control pod");
    let voting = cluster.add_pod("voting").expect("voting pod");
    let clients: BTreeMap<&'static str, Pod> = CLIENTS
        .into_iter()
        .map(|c| (c, cluster.add_pod(c).expect("client pod")))
        .collect();
    let dir = tempfile::tempdir().expect("control folder");
    let control = ControlPlane::start(&control_pod, dir.path(), &ControlOptions::default())
        .expect("control plane");
    let apps = vec![
        serve_app(&voting, HTTP_PORT, Duration::ZERO, "voting").expect("app"),
        serve_app(&voting, WILD_PORT, Duration::ZERO, "voting-wild").expect("app"),
        serve_app(
            &voting,
            OPEN_PORT,
            Duration::from_millis(300),
            "voting-slow",
        )
        .expect("app"),
    ];
    let markers = serve_markers(
        &voting,
        &[(SocketAddr::from(([0, 0, 0, 0], TCP_PORT)), "voting-tcp")],
    )
    .expect("the opaque server");
    let mut client_proxies = Vec::new();
    for (pod, sa) in [("web", "web"), ("bot", "vote-bot")] {
        let mut opts = control
            .enroll(&clients[pod], "demo", sa, &[("app", pod)])
            .expect("enroll a client");
        // What a client's `config.mesh.io/opaque-ports` annotation would say.
        opts.env.push((
            "MESH_PROXY_OUTBOUND_OPAQUE_PORTS".into(),
            TCP_PORT.to_string(),
        ));
        client_proxies.push(clients[pod].mesh(opts).expect("mesh a client"));
    }
    let mut mesh = Mesh {
        control,
        voting,
        voting_proxy: None,
        clients,
        _client_proxies: client_proxies,
        _apps: apps,
        _markers: markers,
        _dir: dir,
        _cluster: cluster,
    };
    mesh.set_policy(policy);
    mesh.start_voting(env);
    mesh
}

/// What a client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Allowed,
    /// 403 (HTTP), `PERMISSION_DENIED` (gRPC), or a refused connection (opaque).
    Denied,
    /// Anything else: what went wrong.
    Failed(String),
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Http1,
    Http2,
    Grpc,
    Opaque,
}

impl Mesh {
    fn start_voting(&mut self, env: &[(&str, &str)]) {
        self.voting_proxy = None;
        let mut opts = self
            .control
            .enroll(&self.voting, "demo", "voting", &[("app", "voting")])
            .expect("enroll voting");
        opts.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.voting_proxy = Some(self.voting.mesh(opts).expect("mesh voting"));
    }

    fn set_policy(&self, yaml: &str) {
        let mut yaml = yaml.to_string();
        for (name, pod) in &self.clients {
            yaml = yaml.replace(&format!("{{{name}}}"), &pod.ip.to_string());
        }
        self.control.write("policy.yaml", &yaml).expect("policy");
    }

    fn metrics(&self) -> String {
        let proxy = self.voting_proxy.as_ref().expect("the voting proxy");
        let (status, body) = proxy.admin_get("/metrics").expect("metrics");
        assert_eq!(status, 200);
        body
    }

    /// One call from `client` to the voting pod's `port`, optionally with a forged
    /// `mesh-client-id` header.
    fn call(&self, client: &str, proto: Proto, port: u16, forge: bool) -> Seen {
        let addr = SocketAddr::from((self.voting.ip, port));
        self.clients[client]
            .run_in(move || Ok(runtime().block_on(call(addr, proto, forge))))
            .join()
            .expect("the client thread does not panic")
            .expect("the client enters its pod")
    }

    /// Waits until `client`'s call is `seen` (the controller has read the folder and the proxy
    /// has the policy).
    fn wait_for(&self, client: &str, proto: Proto, port: u16, seen: Seen) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let last = self.call(client, proto, port, false);
            if last == seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{client} → {port} ({proto:?}) never became {seen:?}: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn call(addr: SocketAddr, proto: Proto, forge: bool) -> Seen {
    let timeout = Duration::from_secs(5);
    match proto {
        Proto::Opaque => {
            use tokio::io::AsyncReadExt;
            let attempt = async {
                let mut io = tokio::net::TcpStream::connect(addr).await?;
                let mut line = String::new();
                io.read_to_string(&mut line).await?;
                Ok::<_, std::io::Error>(line)
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(line)) if line.trim() == "voting-tcp" => Seen::Allowed,
                _ => Seen::Denied,
            }
        }
        _ => tokio::time::timeout(timeout, http_call(addr, proto, forge))
            .await
            .unwrap_or_else(|_| Seen::Failed("no answer within 5 s".into())),
    }
}

async fn http_call(addr: SocketAddr, proto: Proto, forge: bool) -> Seen {
    let io = match tokio::net::TcpStream::connect(addr).await {
        Ok(io) => TokioIo::new(io),
        Err(e) => return Seen::Failed(format!("connect: {e}")),
    };
    let mut req = Request::builder()
        .uri(format!("http://{addr}/"))
        .header("host", addr.to_string());
    if forge {
        req = req.header("mesh-client-id", WEB_ID);
    }
    if let Proto::Grpc = proto {
        req = req
            .method("POST")
            .uri(format!("http://{addr}/demo.Voting/Vote"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).expect("a request");
    let rsp = match proto {
        Proto::Http1 => match hyper::client::conn::http1::handshake(io).await {
            Ok((mut send, conn)) => {
                tokio::spawn(conn);
                send.send_request(req).await
            }
            Err(e) => return Seen::Failed(format!("handshake: {e}")),
        },
        _ => match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
            Ok((mut send, conn)) => {
                tokio::spawn(conn);
                send.send_request(req).await
            }
            Err(e) => return Seen::Failed(format!("handshake: {e}")),
        },
    };
    let rsp = match rsp {
        Ok(rsp) => rsp,
        Err(e) => return Seen::Failed(format!("request: {e}")),
    };
    let (head, body) = rsp.into_parts();
    let _ = body.collect().await;
    let error = head
        .headers
        .get("mesh-proxy-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let denied = match proto {
        Proto::Grpc => head.headers.get("grpc-status").is_some_and(|s| s == "7"),
        _ => head.status == StatusCode::FORBIDDEN,
    };
    if denied && error.starts_with("unauthorized: ") {
        Seen::Denied
    } else if denied {
        Seen::Failed(format!("a denial that names no policy: {error:?}"))
    } else if head.status == StatusCode::OK {
        Seen::Allowed
    } else {
        Seen::Failed(format!("{}: {error}", head.status))
    }
}

// === policies ===

const AUTHNS: &str = "\
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web-only, namespace: demo}
spec: {identityRefs: [{kind: ServiceAccount, name: web}]}
---
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: demo-accounts, namespace: demo}
spec: {identities: ['*.demo.serviceaccount.identity.mesh.cluster.local']}
---
apiVersion: policy.mesh.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: plain-in, namespace: demo}
spec: {networks: [{cidr: '{plain-in}/32'}]}
---
apiVersion: policy.mesh.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: anywhere, namespace: demo}
spec: {networks: [{cidr: 0.0.0.0/0, except: ['{plain-out}/32']}]}
";

fn server(name: &str, port: u16, extra: &str) -> String {
    format!(
        "---\napiVersion: policy.mesh.io/v1alpha1\nkind: Server\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec: {{podSelector: {{matchLabels: {{app: voting}}}}, port: {port}{extra}}}\n"
    )
}

fn authz(name: &str, kind: &str, target: &str, authns: &[&str]) -> String {
    let group = if kind == "HTTPRoute" {
        "gateway.networking.k8s.io"
    } else {
        "policy.mesh.io"
    };
    let refs: Vec<String> = authns
        .iter()
        .map(|a| {
            let kind = if matches!(*a, "plain-in" | "anywhere") {
                "NetworkAuthentication"
            } else {
                "MeshTLSAuthentication"
            };
            format!("{{group: policy.mesh.io, kind: {kind}, name: {a}}}")
        })
        .collect();
    format!(
        "---\napiVersion: policy.mesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec: {{targetRef: {{group: {group}, kind: {kind}, name: {target}}}, \
         requiredAuthenticationRefs: [{}]}}\n",
        refs.join(", ")
    )
}

/// The matrix's policy: 8080 and 9000 take `web` by identity or `plain-in` by address; 8081
/// takes any identity of the namespace.
fn matrix_policy(http_access: &str) -> String {
    [
        AUTHNS.to_string(),
        server(
            "voting-http",
            HTTP_PORT,
            &format!(", accessPolicy: {http_access}"),
        ),
        server("voting-wild", WILD_PORT, ""),
        server("voting-tcp", TCP_PORT, ", proxyProtocol: opaque"),
        authz("http-web", "Server", "voting-http", &["web-only"]),
        authz("http-plain", "Server", "voting-http", &["plain-in"]),
        authz("wild-demo", "Server", "voting-wild", &["demo-accounts"]),
        authz("tcp-web", "Server", "voting-tcp", &["web-only"]),
        authz("tcp-plain", "Server", "voting-tcp", &["plain-in"]),
    ]
    .concat()
}

#[test]
fn the_identity_matrix_holds_for_every_protocol() {
    let mesh = mesh("authz-matrix", &matrix_policy("deny"), &[]);
    mesh.wait_for("bot", Proto::Http1, HTTP_PORT, Seen::Denied);
    use Seen::*;
    // client, forged mesh-client-id, port, allowed or not.
    let table: &[(&str, bool, u16, Seen)] = &[
        ("web", false, HTTP_PORT, Allowed),
        ("bot", false, HTTP_PORT, Denied),
        ("plain-in", false, HTTP_PORT, Allowed),
        ("plain-out", false, HTTP_PORT, Denied),
        ("plain-out", true, HTTP_PORT, Denied),
        ("web", false, WILD_PORT, Allowed),
        ("bot", false, WILD_PORT, Allowed),
        ("plain-in", false, WILD_PORT, Denied),
        ("plain-out", true, WILD_PORT, Denied),
    ];
    let mut failures = Vec::new();
    for (client, forge, port, expected) in table {
        let (forge, port) = (*forge, *port);
        for proto in [Proto::Http1, Proto::Http2, Proto::Grpc] {
            let seen = mesh.call(client, proto, port, forge);
            if seen != *expected {
                failures.push(format!(
                    "{client} → {port} {proto:?} forged={forge}: {seen:?}, expected {expected:?}"
                ));
            }
        }
    }
    for (client, expected) in [
        ("web", Allowed),
        ("bot", Denied),
        ("plain-in", Allowed),
        ("plain-out", Denied),
    ] {
        let seen = mesh.call(client, Proto::Opaque, TCP_PORT, false);
        if seen != expected {
            failures.push(format!(
                "{client} → {TCP_PORT} opaque: {seen:?}, expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let metrics = mesh.metrics();
    let count = |family: &str, labels: &[&str]| metric_sum(&metrics, family, labels);
    assert_eq!(
        count(
            "inbound_http_authz_allow_total",
            &["srv_name=\"voting-http\"", "authz_name=\"http-web\""]
        ),
        3
    );
    // bot, plain-out and plain-out forging web's identity, in three protocols, and the one
    // denial `wait_for` saw.
    assert_eq!(
        count(
            "inbound_http_authz_deny_total",
            &["srv_name=\"voting-http\""]
        ),
        3 * 3 + 1,
        "{metrics}"
    );
    assert_eq!(
        count("inbound_tcp_authz_deny_total", &["srv_name=\"voting-tcp\""]),
        2
    );
    assert_eq!(
        count(
            "inbound_tcp_authz_allow_total",
            &["srv_name=\"voting-tcp\"", "authz_name=\"tcp-plain\""]
        ),
        1
    );
}

#[test]
fn audit_allows_what_deny_refuses_and_counts_it() {
    let mut mesh = mesh("authz-audit", &matrix_policy("audit"), &[]);
    mesh.wait_for("web", Proto::Http1, HTTP_PORT, Seen::Allowed);
    for client in CLIENTS {
        assert_eq!(
            mesh.call(client, Proto::Http1, HTTP_PORT, false),
            Seen::Allowed,
            "{client}"
        );
    }
    let audited = metric_sum(
        &mesh.metrics(),
        "inbound_http_authz_audit_total",
        &["srv_name=\"voting-http\""],
    );
    assert_eq!(audited, 2, "bot and plain-out: what deny would refuse");

    // The default policies, on a port no Server selects; the cluster is web and plain-in.
    let cluster = format!(
        "{}/32,{}/32",
        mesh.clients["web"].ip, mesh.clients["plain-in"].ip
    );
    use Seen::*;
    for (policy, expected) in [
        ("all-unauthenticated", [Allowed, Allowed, Allowed, Allowed]),
        ("all-authenticated", [Allowed, Allowed, Denied, Denied]),
        ("cluster-authenticated", [Allowed, Denied, Denied, Denied]),
        (
            "cluster-unauthenticated",
            [Allowed, Denied, Allowed, Denied],
        ),
        ("deny", [Denied, Denied, Denied, Denied]),
        ("audit", [Allowed, Allowed, Allowed, Allowed]),
    ] {
        mesh.start_voting(&[
            ("MESH_PROXY_INBOUND_DEFAULT_POLICY", policy),
            ("MESH_PROXY_INBOUND_CLUSTER_NETWORKS", &cluster),
        ]);
        let seen: Vec<Seen> = CLIENTS
            .iter()
            .map(|c| mesh.call(c, Proto::Http1, OPEN_PORT, false))
            .collect();
        assert_eq!(seen, expected, "{policy}: {CLIENTS:?}");
        if policy == "audit" {
            let audited = metric_sum(
                &mesh.metrics(),
                "inbound_http_authz_audit_total",
                &["srv_kind=\"default\"", "srv_name=\"audit\""],
            );
            assert_eq!(audited, 4);
        }
    }
}

#[test]
fn routes_have_their_own_authorizations() {
    let policy = [
        AUTHNS.to_string(),
        server("voting-http", HTTP_PORT, ""),
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: reads, namespace: demo}\n\
         spec: {parentRefs: [{group: policy.mesh.io, kind: Server, name: voting-http}], \
         rules: [{matches: [{method: GET}]}]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: writes, namespace: demo}\n\
         spec: {parentRefs: [{group: policy.mesh.io, kind: Server, name: voting-http}], \
         rules: [{matches: [{method: POST}]}]}\n"
            .to_string(),
        authz("reads-anyone", "HTTPRoute", "reads", &["anywhere"]),
        authz("writes-web", "HTTPRoute", "writes", &["web-only"]),
    ]
    .concat();
    let mesh = mesh("authz-routes", &policy, &[]);
    use Seen::*;
    mesh.wait_for("bot", Proto::Grpc, HTTP_PORT, Denied);
    // GET: anyone but plain-out (excepted from the network); POST (gRPC): web only.
    for (client, get, post) in [
        ("web", Allowed, Allowed),
        ("bot", Allowed, Denied),
        ("plain-in", Allowed, Denied),
        ("plain-out", Denied, Denied),
    ] {
        assert_eq!(
            mesh.call(client, Proto::Http1, HTTP_PORT, false),
            get,
            "{client} GET"
        );
        assert_eq!(
            mesh.call(client, Proto::Grpc, HTTP_PORT, false),
            post,
            "{client} POST"
        );
    }
    let metrics = mesh.metrics();
    assert!(
        metric_sum(
            &metrics,
            "inbound_http_authz_allow_total",
            &["route_name=\"writes\"", "authz_name=\"writes-web\""]
        ) >= 1,
        "{metrics}"
    );
}

fn rate_limit(total: u32, identity: Option<u32>, web_override: Option<u32>) -> String {
    let mut spec = format!("total: {{requestsPerSecond: {total}}}");
    if let Some(rps) = identity {
        spec.push_str(&format!(", identity: {{requestsPerSecond: {rps}}}"));
    }
    if let Some(rps) = web_override {
        spec.push_str(&format!(
            ", overrides: [{{requestsPerSecond: {rps}, clientRefs: [{{kind: ServiceAccount, name: web}}]}}]"
        ));
    }
    [
        AUTHNS.to_string(),
        server("voting-http", HTTP_PORT, ""),
        authz("anyone", "Server", "voting-http", &["anywhere"]),
        format!(
            "---\napiVersion: policy.mesh.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\n\
             metadata: {{name: voting-rl, namespace: demo}}\n\
             spec: {{targetRef: {{group: policy.mesh.io, kind: Server, name: voting-http}}, {spec}}}\n"
        ),
    ]
    .concat()
}

/// Answers a `mesh-load` run got, and its failures other than 429.
fn load(mesh: &Mesh, client: &str, secs: u64) -> Load {
    let url = format!("http://{}:{HTTP_PORT}/", mesh.voting.ip);
    Load::start(
        &mesh.clients[client],
        env!("CARGO_BIN_EXE_mesh-load"),
        &url,
        2,
        Duration::from_secs(secs),
    )
    .expect("start mesh-load")
}

fn answered(load: Load) -> (u64, BTreeMap<String, u64>) {
    let result = load.finish().expect("mesh-load");
    let ok = result.servers.values().sum();
    let other: BTreeMap<String, u64> = result
        .failures
        .into_iter()
        .filter(|(k, _)| !k.contains("429"))
        .collect();
    (ok, other)
}

fn within(got: u64, target: u64, what: &str) {
    let (low, high) = (target * 9 / 10, target * 11 / 10);
    assert!(
        (low..=high).contains(&got),
        "{what}: {got} answered, expected {target} ± 10 %"
    );
}

#[test]
fn local_rate_limits_hold_in_total_and_per_identity() {
    let mut mesh = mesh("authz-ratelimit", &rate_limit(100, None, None), &[]);
    mesh.wait_for("web", Proto::Http1, HTTP_PORT, Seen::Allowed);
    // Wait until the rate limit is in force: a burst is refused.
    assert!(
        (0..50).any(|_| mesh.clients["web"]
            .http_get(SocketAddr::from((mesh.voting.ip, HTTP_PORT)), "/")
            .map(|(s, _)| s == 429)
            .unwrap_or(false)),
        "the rate limit applies"
    );
    // A fresh proxy, so the limiter starts full, as over any 10 s of a longer run.
    mesh.start_voting(&[]);
    mesh.wait_for("web", Proto::Http1, HTTP_PORT, Seen::Allowed);
    let (ok, other) = answered(load(&mesh, "web", 10));
    assert!(other.is_empty(), "only 429s fail: {other:?}");
    within(ok, 100 * 10, "100 rps in total over 10 s");

    mesh.set_policy(&rate_limit(1000, Some(10), Some(50)));
    mesh.start_voting(&[]);
    mesh.wait_for("bot", Proto::Http1, HTTP_PORT, Seen::Allowed);
    let (web, bot) = (load(&mesh, "web", 10), load(&mesh, "bot", 10));
    let ((web, web_other), (bot, bot_other)) = (answered(web), answered(bot));
    assert!(
        web_other.is_empty() && bot_other.is_empty(),
        "{web_other:?} {bot_other:?}"
    );
    within(bot, 10 * 10, "10 rps for an identity over 10 s");
    within(web, 50 * 10, "web's override, 50 rps over 10 s");
    let limited = metric_sum(
        &mesh.metrics(),
        "inbound_http_local_ratelimit_total",
        &["ratelimit_name=\"voting-rl\"", "scope=\"identity\""],
    );
    assert!(limited > 0, "refusals are counted by scope");
}

#[test]
fn revoking_an_authorization_under_load_refuses_new_requests_and_cuts_none() {
    let open = [
        AUTHNS.to_string(),
        server("voting-slow", OPEN_PORT, ""),
        authz("slow-web", "Server", "voting-slow", &["web-only"]),
    ]
    .concat();
    let mesh = mesh("authz-revoke", &open, &[]);
    mesh.wait_for("web", Proto::Http1, OPEN_PORT, Seen::Allowed);
    // Requests of 300 ms, four at a time, for 6 s; the authorization goes after 2 s.
    let url = format!("http://{}:{OPEN_PORT}/", mesh.voting.ip);
    let load = Load::start(
        &mesh.clients["web"],
        env!("CARGO_BIN_EXE_mesh-load"),
        &url,
        4,
        Duration::from_secs(6),
    )
    .expect("start mesh-load");
    std::thread::sleep(Duration::from_secs(2));
    let revoked = [
        AUTHNS.to_string(),
        server("voting-slow", OPEN_PORT, ""),
        authz("slow-web", "Server", "voting-slow", &["plain-in"]),
    ]
    .concat();
    let start = Instant::now();
    mesh.set_policy(&revoked);
    let addr = SocketAddr::from((mesh.voting.ip, OPEN_PORT));
    let refused = mesh.clients["web"]
        .run_in(move || {
            Ok(
                runtime().block_on(eventually(Duration::from_secs(2), || async move {
                    call(addr, Proto::Http1, false).await == Seen::Denied
                })),
            )
        })
        .join()
        .expect("the client thread")
        .expect("the pod");
    assert!(
        refused,
        "new requests refused within 2 s of the change (took {:?})",
        start.elapsed()
    );
    let result = load.finish().expect("mesh-load");
    let answered: u64 = result.servers.values().sum();
    assert!(answered > 0, "requests went through before the change");
    let cut: BTreeMap<_, _> = result
        .failures
        .iter()
        .filter(|(k, _)| !k.contains("403"))
        .collect();
    assert!(
        cut.is_empty(),
        "no request in flight was cut off: {cut:?}\nweb's proxy:\n{}\nvoting's proxy:\n{}",
        mesh._client_proxies[0].log(),
        mesh.voting_proxy
            .as_ref()
            .map(Proxy::log)
            .unwrap_or_default()
    );
    assert!(
        result.failures.keys().any(|k| k.contains("403")),
        "requests after the change were refused: {:?}",
        result.failures
    );
}
