//! `mesh install` / `mesh uninstall`: golden output with fixed certificates, every object checked
//! against the API's types, and the errors of bad flags.

mod support;

use std::time::SystemTime;

use base64::Engine as _;
use mesh_api::identity::ca;
use serde_json::Value;
use support::*;

fn install(extra: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["install", "--ignore-cluster"];
    let certs = cert_flags();
    args.extend(certs.iter().map(String::as_str));
    args.extend(extra);
    render(&args)
}

fn b64(v: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a string"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn install_matches_the_golden_file_and_the_api_types() {
    let (text, docs) = install(&[]);
    golden("install.yaml", &text);
    assert_typed(&docs);
    for (kind, name) in [
        ("Namespace", "mesh"),
        ("ServiceAccount", "mesh-identity"),
        ("ClusterRole", "mesh-destination"),
        ("Deployment", "mesh-destination"),
        ("Deployment", "mesh-identity"),
        ("Deployment", "mesh-injector"),
        ("Service", "mesh-injector"),
        ("ConfigMap", "mesh-trust-anchors"),
        ("Secret", "mesh-identity-issuer"),
        ("MutatingWebhookConfiguration", "mesh-proxy-injector"),
    ] {
        find(&docs, kind, name);
    }
}

#[test]
fn ha_renders_replicas_anti_affinity_and_budgets() {
    let (text, docs) = install(&["--ha"]);
    golden("install-ha.yaml", &text);
    assert_typed(&docs);
    for name in ["mesh-destination", "mesh-identity", "mesh-injector"] {
        let d = find(&docs, "Deployment", name);
        assert_eq!(d["spec"]["replicas"], 3);
        assert!(d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
        find(&docs, "PodDisruptionBudget", name);
    }
}

#[test]
fn flags_and_set_override_the_defaults() {
    let (_, docs) = install(&[
        "--proxy-image",
        "registry.example/mesh/proxy",
        "--controller-image",
        "registry.example/mesh/controller",
        "--image-tag",
        "v9.9.9",
        "--set",
        "controller.logLevel=debug",
        "--set",
        "webhook.timeoutSeconds=5",
    ]);
    let d = find(&docs, "Deployment", "mesh-destination");
    let spec = &d["spec"]["template"]["spec"];
    let app = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "destination")
        .unwrap();
    assert_eq!(app["image"], "registry.example/mesh/controller:v9.9.9");
    assert!(app["args"]
        .as_array()
        .unwrap()
        .contains(&"--log-level=debug".into()));
    let proxy = &spec["containers"][0];
    assert_eq!(proxy["name"], "mesh-proxy");
    assert_eq!(proxy["image"], "registry.example/mesh/proxy:v9.9.9");
    let hook = find(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    assert_eq!(hook["webhooks"][0]["timeoutSeconds"], 5);
}

#[test]
fn the_control_plane_is_never_injected_and_failures_never_block_pods() {
    let (_, docs) = install(&[]);
    let hook = &find(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector")["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert!(hook["timeoutSeconds"].as_u64().unwrap() <= 10);
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert_eq!(
        excluded["values"],
        serde_json::json!(["mesh", "kube-system"])
    );
    // The identity controller runs without a proxy; the others are meshed at install time.
    let identity = find(&docs, "Deployment", "mesh-identity");
    assert!(identity["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    assert_eq!(
        identity["spec"]["template"]["spec"]["serviceAccountName"],
        "mesh-identity"
    );
}

#[test]
fn the_certificates_fit_together() {
    let (_, docs) = install(&[]);
    let anchors = find(&docs, "ConfigMap", "mesh-trust-anchors")["data"]["ca-bundle.crt"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        anchors,
        std::fs::read_to_string(testdata("certs/trust-anchors.pem")).unwrap()
    );
    let tls = find(&docs, "Secret", "mesh-injector-tls");
    let hook = find(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    let bundle = b64(&hook["webhooks"][0]["clientConfig"]["caBundle"]);
    let chain = ca::certs_from_pem(&b64(&tls["data"]["tls.crt"]), "webhook").unwrap();
    let roots = ca::certs_from_pem(&bundle, "bundle").unwrap();
    ca::verify_chain(&chain, &roots, "mesh-injector.mesh.svc", SystemTime::now()).unwrap();
}

#[test]
fn fresh_certificates_are_generated_per_install() {
    let a = stdout(&mesh(&["install", "--ignore-cluster"], None));
    let b = stdout(&mesh(&["install", "--ignore-cluster"], None));
    let anchors = |t: &str| {
        find(&docs(t), "ConfigMap", "mesh-trust-anchors")["data"]["ca-bundle.crt"].clone()
    };
    assert_ne!(anchors(&a), anchors(&b));
    assert_typed(&docs(&a));
}

#[test]
fn bad_flags_are_errors_with_nothing_on_stdout() {
    let anchors = testdata_arg("certs/trust-anchors.pem");
    let webhook_ca = testdata_arg("certs/webhook-ca.crt");
    let issuer = testdata_arg("certs/issuer.crt");
    let webhook_key = testdata_arg("certs/webhook.key");
    for (args, message) in [
        (vec!["--set", "nope=1"], "no value \"nope\""),
        (vec!["--set", "ha=maybe"], "is not true or false"),
        (vec!["--set", "controller"], "expected KEY=VALUE"),
        (vec!["--set", "trustDomain=a b"], "trustDomain"),
        (
            vec!["--identity-trust-anchors-file", anchors.as_str()],
            "go together",
        ),
        (
            // The webhook CA as trust anchors: the issuer does not chain to it.
            vec![
                "--identity-trust-anchors-file",
                webhook_ca.as_str(),
                "--identity-issuer-certificate-file",
                issuer.as_str(),
                "--identity-issuer-key-file",
                webhook_key.as_str(),
            ],
            "does not belong",
        ),
    ] {
        let mut all = vec!["install", "--ignore-cluster"];
        all.extend(args.iter().copied());
        let out = mesh(&all, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn install_without_a_cluster_says_how_to_render_anyway() {
    let out = mesh(
        &["install", "--kubeconfig", "/nonexistent/kubeconfig"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("--ignore-cluster"),
        "{}",
        stderr(&out)
    );
}

/// The control plane's proxies: `(init containers, containers)` of Deployment `name`.
fn pod_shape(docs: &[Value], name: &str) -> (Vec<String>, Vec<String>) {
    let spec = &find(docs, "Deployment", name)["spec"]["template"]["spec"];
    let names = |list: &str| -> Vec<String> {
        spec[list]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    (names("initContainers"), names("containers"))
}

/// The injector's `--native-sidecar=…` argument.
fn injector_mode(docs: &[Value]) -> String {
    let containers =
        &find(docs, "Deployment", "mesh-injector")["spec"]["template"]["spec"]["containers"];
    let injector = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "injector")
        .unwrap();
    injector["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--native-sidecar="))
        .collect()
}

/// Without the header comment, which says why.
fn body(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("# "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Regression: on a 1.28 cluster (no native sidecars by default) the API server refused the
/// destination and injector Deployments: `initContainers[1].livenessProbe: Forbidden: may not
/// be set for init containers without restartPolicy=Always`.
#[tokio::test]
async fn native_sidecars_where_the_cluster_has_none() {
    let classic = (
        vec!["mesh-init".to_string()],
        vec!["mesh-proxy".to_string(), "injector".to_string()],
    );
    let native = (
        vec!["mesh-init".to_string(), "mesh-proxy".to_string()],
        vec!["injector".to_string()],
    );
    let certs = cert_flags();
    let certs: Vec<&str> = certs.iter().map(String::as_str).collect();

    // Without a cluster: classic, which every version runs; the injector decides for itself.
    let (offline, docs) = install(&[]);
    assert_eq!(pod_shape(&docs, "mesh-injector"), classic);
    assert_eq!(injector_mode(&docs), "auto");
    assert!(offline.contains("# proxies: classic sidecars (no cluster was asked"));

    // A 1.28 cluster: classic; a 1.30 one: native.
    let (code, out, err) = mesh_on_cluster(bare_cluster("28").await, "install", &certs).await;
    assert_eq!(code, 0, "{err}");
    let docs = support::docs(&out);
    assert_eq!(pod_shape(&docs, "mesh-injector"), classic);
    assert_eq!(pod_shape(&docs, "mesh-destination").0, classic.0);
    assert!(
        out.contains("# proxies: classic sidecars (the cluster runs 1.28"),
        "{out}"
    );
    assert_eq!(body(&out), body(&offline));

    let (code, out, err) = mesh_on_cluster(bare_cluster("30").await, "install", &certs).await;
    assert_eq!(code, 0, "{err}");
    let docs = support::docs(&out);
    assert_eq!(pod_shape(&docs, "mesh-injector"), native);
    assert_eq!(injector_mode(&docs), "auto");
    assert!(
        out.contains("# proxies: native sidecars (the cluster runs 1.30"),
        "{out}"
    );

    // Asked for, on any cluster or none; the injector is told too.
    let (asked, docs) = install(&["--set", "proxy.nativeSidecar=true"]);
    golden("install-native.yaml", &asked);
    assert_eq!(pod_shape(&docs, "mesh-injector"), native);
    assert_eq!(injector_mode(&docs), "true");
    assert_eq!(body(&asked).replace("=true", "=auto"), body(&out));
    let mut set_false = certs.clone();
    set_false.extend(["--set", "proxy.nativeSidecar=false"]);
    let (_, out, _) = mesh_on_cluster(bare_cluster("30").await, "install", &set_false).await;
    let docs = support::docs(&out);
    assert_eq!(pod_shape(&docs, "mesh-injector"), classic);
    assert_eq!(injector_mode(&docs), "false");
}

#[test]
fn uninstall_lists_what_to_delete_webhook_first() {
    let (text, docs) = render(&["uninstall"]);
    golden("uninstall.yaml", &text);
    assert_eq!(docs[0]["kind"], "MutatingWebhookConfiguration");
    assert_eq!(docs.last().unwrap()["kind"], "Namespace");
}
