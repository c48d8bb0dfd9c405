//! The tap aggregator in process: the real identity controller (folder of token Secrets, a
//! fresh CA), real proxies with identity on loopback, and a fake Kubernetes API serving the
//! pods (derived from the recorded pod list) and the trust anchors' ConfigMap. Events stream
//! through the aggregator as the tap identity; a pod that is not meshed, an unknown pod and a
//! proxy that allows another tap identity are refused with what to do.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::identity::ca;
use mesh_api::tap::Event;
use mesh_controller::identity::IdentityConfig;
use mesh_controller::source::Source;
use mesh_controller::viz::tap::{self, TapConfig};
use mesh_proxy::{config::Config, drain::Drain, orig_dst::OriginalDst};
use support::{fixture, get};

const DAY: Duration = Duration::from_secs(86_400);
const TAP_ID: &str = "mesh-tap.mesh-viz.serviceaccount.identity.mesh.cluster.local";

/// A service account's token Secret, as the identity controller's folder source reads them.
fn token_secret(namespace: &str, sa: &str, token: &str) -> String {
    use base64::Engine as _;
    format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\n\
         metadata: {{name: {sa}-token, namespace: {namespace}, annotations: {{kubernetes.io/service-account.name: {sa}}}}}\n\
         data: {{token: {}}}\n",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

/// An app behind the proxies: 200 `hello` to everything.
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("hello"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    addr
}

/// Recorded pods, renamed, given an address and (`meshed`) injected with the proxy container.
fn pod(name: &str, ip: &str, meshed: bool) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&fixture("pods-list.json")).unwrap();
    let mut pod = list["items"][0].clone();
    pod["metadata"]["name"] = name.into();
    pod["status"]["podIP"] = ip.into();
    pod["status"]["podIPs"] = serde_json::json!([{ "ip": ip }]);
    if meshed {
        let containers = pod["spec"]["containers"].as_array_mut().unwrap();
        containers.push(serde_json::json!({"name": "mesh-proxy", "image": "mesh-proxy"}));
    }
    pod
}

/// A fake API server: `GET` of the objects in `objects` by path, else the recorded 404.
async fn fake_api(objects: HashMap<String, serde_json::Value>) -> SocketAddr {
    support::fake_api_server(move |req| match objects.get(&req.path) {
        Some(o) => (200, o.to_string()),
        None => (404, fixture("notfound-404.json")),
    })
    .await
}

struct Proxy {
    admin: SocketAddr,
    outbound: SocketAddr,
    _drain: Drain,
}

/// A proxy of service account `web` in `demo` with its admin server on `admin`, in front of
/// `app`; `tap_identity` is its `MESH_PROXY_TAP_IDENTITY` (unset: the default).
async fn proxy(
    state: &std::path::Path,
    identity_addr: SocketAddr,
    anchors: &str,
    admin: SocketAddr,
    app: SocketAddr,
    tap_identity: Option<&str>,
) -> Proxy {
    let dir = state.join(format!("proxy-{}", admin.ip()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "web-token").unwrap();
    let mut env: HashMap<&str, String> = HashMap::from([
        (
            "MESH_PROXY_IDENTITY_NAME",
            "web.demo.serviceaccount.identity.mesh.cluster.local".into(),
        ),
        ("MESH_PROXY_IDENTITY_ADDR", identity_addr.to_string()),
        (
            "MESH_PROXY_IDENTITY_TOKEN_FILE",
            dir.join("token").display().to_string(),
        ),
        ("MESH_PROXY_TRUST_ANCHORS", anchors.to_string()),
        (
            "MESH_PROXY_IDENTITY_DIR",
            dir.join("key").display().to_string(),
        ),
        ("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0".into()),
        ("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0".into()),
        ("MESH_PROXY_ADMIN_ADDR", admin.to_string()),
    ]);
    if let Some(id) = tap_identity {
        env.insert("MESH_PROXY_TAP_IDENTITY", id.into());
    }
    let config = Config::from_env(|var| env.get(var).cloned()).expect("a valid configuration");
    let drain = Drain::new();
    let started = mesh_proxy::start_with(&config, drain.clone(), [OriginalDst::Fixed(app); 2])
        .await
        .expect("the proxy starts");
    let proxy = Proxy {
        admin: started.admin,
        outbound: started.outbound,
        _drain: drain,
    };
    wait_for("the proxy's certificate", || async {
        get(proxy.admin, "/ready").await.0 == 200
    })
    .await;
    proxy
}

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not true within 15s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on the aggregator, the response with its streaming body.
async fn call(addr: SocketAddr, path: &str) -> http::Response<Incoming> {
    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// The `error` of a JSON error answer.
async fn error_of(rsp: http::Response<Incoming>) -> String {
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    value["error"].as_str().unwrap().to_string()
}

/// The value of the first `name` line of a Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn taps_stream_through_the_aggregator_as_the_tap_identity() {
    let state = tempfile::tempdir().unwrap();
    let anchor = ca::new_trust_anchor("cluster.local", 365 * DAY).unwrap();
    let issuer = ca::new_issuer(&anchor, "cluster.local", 30 * DAY).unwrap();
    for (file, pem) in [
        ("anchors.pem", &anchor.cert_pem),
        ("issuer.crt", &issuer.cert_pem),
        ("issuer.key", &issuer.key_pem),
    ] {
        std::fs::write(state.path().join(file), pem).unwrap();
    }
    let objects = state.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(
        objects.join("web.yaml"),
        token_secret("demo", "web", "web-token"),
    )
    .unwrap();
    std::fs::write(
        objects.join("tap.yaml"),
        token_secret("mesh-viz", "mesh-tap", "tap-token"),
    )
    .unwrap();
    let mut config = IdentityConfig::new(
        state.path().join("issuer.crt"),
        state.path().join("issuer.key"),
        state.path().join("anchors.pem"),
        Source::Dir(objects),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    let identity = mesh_controller::identity::start(config).await.unwrap();

    // Two proxies with one admin port on two loopback addresses: the aggregator dials every
    // pod's IP on the same port, as in a cluster.
    let app = app().await;
    let web = proxy(
        state.path(),
        identity.addr,
        &anchor.cert_pem,
        "127.0.0.1:0".parse().unwrap(),
        app,
        None,
    )
    .await;
    let port = web.admin.port();
    let other = proxy(
        state.path(),
        identity.addr,
        &anchor.cert_pem,
        SocketAddr::new("127.0.0.3".parse().unwrap(), port),
        app,
        Some("someone-else.mesh-viz.serviceaccount.identity.mesh.cluster.local"),
    )
    .await;

    let pods = "/api/v1/namespaces/demo/pods";
    let kube = fake_api(HashMap::from([
        (format!("{pods}/web-1"), pod("web-1", "127.0.0.1", true)),
        (format!("{pods}/web-2"), pod("web-2", "127.0.0.3", true)),
        (format!("{pods}/plain"), pod("plain", "127.0.0.4", false)),
        (
            "/api/v1/namespaces/mesh/configmaps/mesh-trust-anchors".into(),
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "mesh-trust-anchors", "namespace": "mesh"},
                "data": {"ca-bundle.crt": anchor.cert_pem},
            }),
        ),
    ]))
    .await;
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{kube}").parse().unwrap()))
            .unwrap();
    std::fs::write(state.path().join("tap-token"), "tap-token\n").unwrap();
    let mut config = TapConfig::new("127.0.0.1:0".parse().unwrap());
    config.identity_addr = identity.addr.to_string();
    config.token_file = state.path().join("tap-token");
    config.proxy_admin_port = port;
    let aggregator = tap::start(config, client)
        .await
        .expect("the aggregator starts");
    let addr = aggregator.addr;
    wait_for("the aggregator's certificate", || async {
        get(addr, "/ready").await.0 == 200
    })
    .await;
    assert!(aggregator.is_ready());

    // Events stream through as the proxy sends them.
    let rsp = call(addr, "/api/v1/pods/demo/web-1/tap?method=GET").await;
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let outbound = web.outbound;
    let traffic = tokio::spawn(async move {
        loop {
            let _ = get(outbound, "/hello").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut text = String::new();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = body.frame().await.expect("more body").expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                return serde_json::from_str::<Event>(line).expect("an event");
            }
        }
    })
    .await
    .expect("an event within 10s");
    let Event::RequestStart { method, path, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/hello"));
    traffic.abort();
    let active = || async { metric(&get(web.admin, "/metrics").await.1, "tap_active") };
    assert_eq!(active().await, Some(1.0));
    // The caller goes away: the tap at the proxy ends.
    drop(body);
    wait_for("the proxy's tap ends with its caller", || async {
        active().await == Some(0.0)
    })
    .await;

    // The proxy's metrics, through the aggregator.
    let rsp = call(addr, "/api/v1/pods/demo/web-1/metrics").await;
    assert_eq!(rsp.status(), 200);
    let text = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("request_total"),
        "{text:?}"
    );

    // A proxy that allows another tap identity: its 403 passes through, with its reason.
    let rsp = call(addr, "/api/v1/pods/demo/web-2/tap").await;
    assert_eq!(rsp.status(), 403);
    let message = error_of(rsp).await;
    assert!(
        message.contains(&format!("{TAP_ID} may not tap")),
        "{message}"
    );

    // A pod without the proxy, and a pod that does not exist.
    let rsp = call(addr, "/api/v1/pods/demo/plain/tap").await;
    assert_eq!(rsp.status(), 404);
    let message = error_of(rsp).await;
    assert!(
        message.contains("pod demo/plain is not meshed: mesh it with `mesh inject`"),
        "{message}"
    );
    let rsp = call(addr, "/api/v1/pods/demo/nope/tap").await;
    assert_eq!(rsp.status(), 404);
    let message = error_of(rsp).await;
    assert!(message.contains("pod demo/nope not found"), "{message}");

    // A bad filter never reaches a proxy.
    let rsp = call(addr, "/api/v1/pods/demo/web-1/tap?bogus=1").await;
    assert_eq!(rsp.status(), 400);
    drop(other);
}
