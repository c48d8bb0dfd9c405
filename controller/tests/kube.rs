//! The Kubernetes source against an in-process fake API server that serves the recorded
//! fixtures: lists, then watch streams as chunked JSON lines, including a 410 Expired that
//! forces a re-list.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_controller::index::IndexConfig;
use mesh_controller::source::Source;
use mesh_controller::{start, DestinationConfig};
use support::{eventually, fixture, kubeconfig, wait_ready, Watch};
use tokio::sync::Semaphore;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The fake API server's state: request counts and a gate on the EndpointSlice watch events.
struct Fake {
    /// (path, "list" | "watch") → count.
    requests: Mutex<HashMap<(String, &'static str), usize>>,
    /// One permit lets one EndpointSlice watch event through.
    slice_events: Arc<Semaphore>,
    /// A path RBAC forbids: 403 with the recorded Status.
    forbidden: Option<&'static str>,
}

impl Fake {
    fn count(&self, path: &str, verb: &'static str) -> usize {
        let requests = self.requests.lock().expect("lock");
        requests.get(&(path.to_owned(), verb)).copied().unwrap_or(0)
    }
}

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const REPLICASETS: &str = "/apis/apps/v1/replicasets";

fn respond(fake: &Fake, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("");
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let n = {
        let mut requests = fake.requests.lock().expect("lock");
        let count = requests
            .entry((path.clone(), if watch { "watch" } else { "list" }))
            .or_default();
        *count += 1;
        *count
    };
    let list = |name: &str| Full::new(Bytes::from(fixture(name))).boxed_unsync();
    if fake.forbidden == Some(path.as_str()) {
        let mut r = http::Response::new(list("forbidden-403.json"));
        *r.status_mut() = http::StatusCode::FORBIDDEN;
        return r;
    }
    let body = match (path.as_str(), watch) {
        (SERVICES, false) => list("services-list.json"),
        (SLICES, false) => list("endpointslices-list.json"),
        (PODS, false) => list("pods-list.json"),
        (REPLICASETS, false) => list("replicasets-list.json"),
        // The first EndpointSlice watch is from a compacted version: 410, then the stream ends.
        (SLICES, true) if n == 1 => list("watch-expired-410.jsonl"),
        (SLICES, true) => lines(
            fixture("endpointslices-watch.jsonl"),
            Some(fake.slice_events.clone()),
        ),
        (PODS, true) if n == 1 => lines(fixture("pods-watch.jsonl"), None),
        (_, true) => lines(String::new(), None),
        _ => {
            let mut r = http::Response::new(list("notfound-404.json"));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            return r;
        }
    };
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch body: each line as its own chunk (each waiting for a permit when gated), then
/// held open like a real watch.
fn lines(text: String, gate: Option<Arc<Semaphore>>) -> Body {
    let lines: Vec<Bytes> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| Bytes::from(format!("{l}\n")))
        .collect();
    let stream = futures_util::stream::iter(lines)
        .then(move |line| {
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                Ok::<_, Infallible>(Frame::data(line))
            }
        })
        .chain(futures_util::stream::pending());
    StreamBody::new(stream).boxed_unsync()
}

async fn fake_api_server(forbidden: Option<&'static str>) -> (SocketAddr, Arc<Fake>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = Arc::new(Fake {
        requests: Mutex::default(),
        slice_events: Arc::new(Semaphore::new(0)),
        forbidden,
    });
    let state = fake.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(&state, req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, fake)
}

#[tokio::test]
async fn kube_source_follows_the_api_and_relists_on_410() {
    let (api, fake) = fake_api_server(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig(dir.path(), api, Some("demo"));
    let running = start(DestinationConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        source: Source::Kube {
            kubeconfig: Some(kubeconfig),
        },
        index: IndexConfig::default(),
    })
    .await
    .expect("start");
    let addr = running.addr;
    wait_ready(addr).await;

    let web = Watch::start(addr, "web-svc.demo.svc.cluster.local:80");
    let headless = Watch::start(addr, "web-headless.demo:8080");
    web.wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    headless
        .wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    let e = web.endpoint("10.244.0.5:8080").expect("endpoint");
    assert_eq!(e.labels.get("deployment").map(String::as_str), Some("web"));
    assert_eq!(
        e.labels.get("pod").map(String::as_str),
        Some("web-85489d9c68-62pw4")
    );
    assert_eq!(
        e.identity, None,
        "the recorded pods have no mesh-proxy container"
    );

    // The 410 on the first EndpointSlice watch made the watcher list again.
    eventually(
        "EndpointSlices re-listed after 410",
        Duration::from_secs(10),
        || fake.count(SLICES, "list") >= 2 && fake.count(SLICES, "watch") >= 2,
    )
    .await;

    // Scale 2 → 3: the new pod (from the pod watch) joins with its owner.
    fake.slice_events.add_permits(1);
    web.wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080", "10.244.0.7:8080"])
        .await;
    let third = web.endpoint("10.244.0.7:8080").expect("endpoint");
    assert_eq!(
        third.labels.get("pod").map(String::as_str),
        Some("web-85489d9c68-4kkhz")
    );
    assert_eq!(
        third.labels.get("deployment").map(String::as_str),
        Some("web")
    );
    fake.slice_events.add_permits(1);
    headless
        .wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080", "10.244.0.7:8080"])
        .await;

    // The new pod turns not ready: it leaves both sets.
    fake.slice_events.add_permits(4);
    web.wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    headless
        .wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    let removed = web.0.lock().expect("lock").updates.iter().any(|u| {
        matches!(u, mesh_api::destination::Update::Remove(r) if r.addrs == ["10.244.0.7:8080".parse().expect("addr")])
    });
    assert!(removed, "a remove delta was sent");

    let (_, metrics) = support::get(addr, "/metrics").await;
    assert!(
        metrics.contains("mesh_destination_index_services 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_destination_index_pods 3"),
        "{metrics}"
    );
}

/// Regression: where RBAC forbids listing ReplicaSets cluster-wide, the destination stayed
/// unready forever. It now serves; a pod's Deployment then comes from its pod-template-hash.
#[tokio::test]
async fn forbidden_replicasets_degrade_owner_labels_not_readiness() {
    let (api, fake) = fake_api_server(Some(REPLICASETS)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start(DestinationConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        source: Source::Kube {
            kubeconfig: Some(kubeconfig(dir.path(), api, Some("demo"))),
        },
        index: IndexConfig::default(),
    })
    .await
    .expect("start");
    wait_ready(running.addr).await;
    let web = Watch::start(running.addr, "web-svc.demo.svc.cluster.local:80");
    web.wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    let e = web.endpoint("10.244.0.5:8080").expect("endpoint");
    assert_eq!(
        e.labels.get("pod").map(String::as_str),
        Some("web-85489d9c68-62pw4")
    );
    // Without the ReplicaSet, the Deployment still follows from the pod's pod-template-hash.
    assert_eq!(
        e.labels.get("deployment").map(String::as_str),
        Some("web"),
        "{:?}",
        e.labels
    );
    // It keeps asking, so a fixed ClusterRole takes effect without a restart.
    eventually(
        "ReplicaSets asked for again",
        Duration::from_secs(10),
        || fake.count(REPLICASETS, "list") >= 2,
    )
    .await;
}
