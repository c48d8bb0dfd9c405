//! The injector webhook over real TLS, with the recorded AdmissionReviews and a fake API server
//! that serves the recorded namespace (annotated `mesh.io/inject: enabled`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use mesh_api::identity::ca::{self, LeafNames, Signer};
use mesh_api::inject::ProxyConfig;
use mesh_controller::injector::{self, InjectorConfig, Namespaces, SidecarPolicy};
use serde_json::Value;
use support::fixture;

/// Serves `GET /api/v1/namespaces/demo` and `GET /version` from the recordings (the version
/// with `minor` in place of the recorded 28), 404 for anything else.
async fn fake_api_server(minor: &'static str) -> SocketAddr {
    support::fake_api_server(move |req| match req.path.as_str() {
        "/api/v1/namespaces/demo" => (200, fixture("namespace-demo.json")),
        "/version" => (200, version(minor)),
        _ => (404, fixture("notfound-404.json")),
    })
    .await
}

/// The recorded `/version` of a 1.28 API server, as another minor version would answer it.
fn version(minor: &str) -> String {
    let mut v: Value = serde_json::from_str(&fixture("version.json")).unwrap();
    v["minor"] = minor.into();
    v["gitVersion"] = format!("v1.{minor}.7").into();
    v.to_string()
}

struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    _running: injector::Running,
    _dir: tempfile::TempDir,
}

/// The injector with `--native-sidecar=auto` on an API server of version 1.`minor`.
async fn webhook_on(minor: &'static str) -> Webhook {
    webhook(minor, SidecarPolicy::Auto).await
}

async fn webhook(minor: &'static str, sidecar: SidecarPolicy) -> Webhook {
    let api = fake_api_server(minor).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), api, None);
    let client = mesh_controller::source::kube::client(Some(&kubeconfig))
        .await
        .unwrap();
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
    let signer = Signer::from_pem(&anchor.cert_pem, &anchor.key_pem).unwrap();
    let names = LeafNames {
        dns: vec!["mesh-injector.mesh.svc".into()],
        uris: vec![],
    };
    let (issued, key) = signer
        .issue_with_key(&names, Duration::from_secs(3600))
        .unwrap();
    let cert = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert, &issued.chain_pem).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let config = InjectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: cert,
        tls_key: key_path,
        proxy: ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", &anchor.cert_pem),
        sidecar,
    };
    let running = injector::start(config, Namespaces::Kube(client))
        .await
        .unwrap();
    Webhook {
        addr: running.addr,
        ca_pem: anchor.cert_pem,
        _running: running,
        _dir: dir,
    }
}

/// One request over TLS, verifying the server as the API server would (the CA bundle and the
/// service's name).
async fn call(hook: &Webhook, method: &str, path: &str, body: String) -> (u16, String) {
    support::tls_call(
        hook.addr,
        &hook.ca_pem,
        "mesh-injector.mesh.svc",
        method,
        path,
        body,
    )
    .await
}

fn patched(review: &str, answer: &str) -> Option<Value> {
    let review: Value = serde_json::from_str(review).unwrap();
    let answer: Value = serde_json::from_str(answer).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    let patch = answer["response"]["patch"].as_str()?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    Some(pod)
}

fn container_names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_annotated_pod_is_injected_over_tls() {
    let hook = webhook_on("30").await;
    let review = fixture("admissionreview-pod-create-bare-pod.json");
    let (status, answer) = call(&hook, "POST", "/inject", review.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let pod = patched(&review, &answer).expect("a patch");
    assert_eq!(
        container_names(&pod, "initContainers"),
        ["mesh-init", "mesh-proxy"]
    );
    assert_eq!(container_names(&pod, "containers"), ["app"]);
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
}

/// Regression: on a 1.28 API server (no native sidecars by default) every injected pod was
/// refused, its init container's probes `Forbidden … without restartPolicy=Always`.
#[tokio::test]
async fn native_sidecars_where_the_cluster_has_none() {
    let review = fixture("admissionreview-pod-create-bare-pod.json");
    let hook = webhook_on("28").await;
    let (status, answer) = call(&hook, "POST", "/inject", review.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let pod = patched(&review, &answer).expect("a patch");
    assert_eq!(container_names(&pod, "initContainers"), ["mesh-init"]);
    assert_eq!(container_names(&pod, "containers"), ["mesh-proxy", "app"]);
    let (_, metrics) = call(&hook, "GET", "/metrics", String::new()).await;
    assert!(
        metrics.contains("injector_native_sidecar{source=\"version\"} 0"),
        "{metrics}"
    );

    // Configured explicitly, the version does not matter.
    let hook = webhook("28", SidecarPolicy::Fixed(true)).await;
    let (_, answer) = call(&hook, "POST", "/inject", review.clone()).await;
    let pod = patched(&review, &answer).expect("a patch");
    assert_eq!(
        container_names(&pod, "initContainers"),
        ["mesh-init", "mesh-proxy"]
    );
    let (_, metrics) = call(&hook, "GET", "/metrics", String::new()).await;
    assert!(
        metrics.contains("injector_native_sidecar{source=\"configured\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_pod_of_an_annotated_namespace_is_injected() {
    let hook = webhook_on("30").await;
    // The ReplicaSet's pod has no annotation; namespace demo (read from the API) has one.
    let review = fixture("admissionreview-pod-create-from-replicaset.json");
    let (status, answer) = call(&hook, "POST", "/inject", review.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let pod = patched(&review, &answer).expect("a patch");
    assert!(container_names(&pod, "initContainers").contains(&"mesh-proxy".to_string()));
}

#[tokio::test]
async fn an_unannotated_pod_in_an_unknown_namespace_is_allowed_unchanged() {
    let hook = webhook_on("30").await;
    let mut review: Value =
        serde_json::from_str(&fixture("admissionreview-pod-create-from-replicaset.json")).unwrap();
    review["request"]["namespace"] = "elsewhere".into();
    let review = review.to_string();
    let (status, answer) = call(&hook, "POST", "/inject", review.clone()).await;
    assert_eq!(status, 200);
    assert!(patched(&review, &answer).is_none(), "{answer}");
}

#[tokio::test]
async fn health_metrics_and_bad_requests() {
    let hook = webhook_on("30").await;
    assert_eq!(call(&hook, "GET", "/ready", String::new()).await.0, 200);
    assert_eq!(call(&hook, "GET", "/live", String::new()).await.0, 200);
    assert_eq!(call(&hook, "POST", "/inject", "{}".into()).await.0, 400);
    let review = fixture("admissionreview-pod-create-bare-pod.json");
    call(&hook, "POST", "/inject", review).await;
    let (status, metrics) = call(&hook, "GET", "/metrics", String::new()).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("injector_admissions_total{decision=\"injected\"} 1"),
        "{metrics}"
    );
}
