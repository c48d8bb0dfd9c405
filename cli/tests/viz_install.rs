//! `mesh viz install` / `mesh viz uninstall`: golden output, every object checked against the
//! API's types, and what the rest of the mesh relies on (the tap identity, Prometheus' pod
//! labels, the Services the CLI reaches through the API server).

mod support;

use serde_json::Value;
use support::*;

fn install(extra: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["viz", "install"];
    args.extend(extra);
    render(&args)
}

fn pod_spec<'a>(docs: &'a [Value], deployment: &str) -> &'a Value {
    &find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
}

#[test]
fn install_matches_the_golden_file_and_the_api_types() {
    let (text, docs) = install(&[]);
    golden("viz-install.yaml", &text);
    assert_typed(&docs);
    let ns = find(&docs, "Namespace", "mesh-viz");
    assert_eq!(ns["metadata"]["annotations"]["mesh.io/inject"], "enabled");
    for (kind, name) in [
        ("ServiceAccount", "mesh-prometheus"),
        ("ConfigMap", "mesh-prometheus-config"),
        ("Service", "prometheus"),
        ("Deployment", "mesh-metrics-api"),
        ("Service", "metrics-api"),
        ("Deployment", "mesh-tap"),
        ("Service", "tap"),
    ] {
        find(&docs, kind, name);
    }
    // Prometheus needs no access to the Kubernetes API.
    assert!(!docs
        .iter()
        .any(|d| d["metadata"]["name"] == "mesh-viz-prometheus"));
}

#[test]
fn every_container_runs_as_non_root_with_a_memory_limit() {
    let (_, docs) = install(&[]);
    for deployment in ["mesh-prometheus", "mesh-metrics-api", "mesh-tap"] {
        let spec = pod_spec(&docs, deployment);
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"], true,
            "{deployment}"
        );
        for c in spec["containers"].as_array().unwrap() {
            assert!(
                c["resources"]["limits"]["memory"].is_string(),
                "{deployment}: {c}"
            );
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        }
    }
}

#[test]
fn the_tap_aggregator_has_the_proxies_default_tap_identity_and_least_privilege() {
    let (_, docs) = install(&[]);
    let spec = pod_spec(&docs, "mesh-tap");
    // <serviceaccount>.<namespace>: what MESH_PROXY_TAP_IDENTITY defaults to.
    assert_eq!(spec["serviceAccountName"], "mesh-tap");
    assert_eq!(
        find(&docs, "ServiceAccount", "mesh-tap")["metadata"]["namespace"],
        "mesh-viz"
    );
    let rules = &find(&docs, "ClusterRole", "mesh-viz-tap")["rules"];
    assert_eq!(
        rules,
        &serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
    );
    let anchors = find(&docs, "Role", "mesh-viz-tap-trust-anchors");
    assert_eq!(anchors["metadata"]["namespace"], "mesh");
    assert_eq!(
        anchors["rules"][0]["resourceNames"][0],
        "mesh-trust-anchors"
    );
    let token = &spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], mesh_api::identity::TOKEN_AUDIENCE);
    // It makes its own mutual TLS to the proxies' admin ports: no proxy of its own.
    let template = &find(&docs, "Deployment", "mesh-tap")["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["mesh.io/inject"],
        "disabled"
    );
}

#[test]
fn prometheus_labels_samples_with_their_pod() {
    let (_, docs) = install(&["--set", "prometheus.scrapeInterval=5s"]);
    let config = find(&docs, "ConfigMap", "mesh-prometheus-config")["data"]["prometheus.yml"]
        .as_str()
        .unwrap();
    let config: Value = serde_yaml_ng::from_str(config).expect("prometheus.yml is YAML");
    assert_eq!(config["global"]["scrape_interval"], "5s");
    // Its targets come from the tap aggregator's HTTP service discovery, which labels each
    // proxy with its pod's namespace and name (no Kubernetes discovery in Prometheus).
    let job = &config["scrape_configs"][0];
    assert_eq!(
        job["http_sd_configs"][0]["url"],
        "http://tap.mesh-viz.svc.cluster.local:8089/api/v1/scrape-targets"
    );
    assert!(job.get("kubernetes_sd_configs").is_none());
    let prometheus = find(&docs, "ServiceAccount", "mesh-prometheus");
    assert_eq!(prometheus["automountServiceAccountToken"], false);
    // The metrics API reads the Prometheus Service the manifests create.
    let args = &pod_spec(&docs, "mesh-metrics-api")["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--prometheus-url=http://prometheus.mesh-viz.svc.cluster.local:9090"),
        "{args}"
    );
    let port = &find(&docs, "Service", "metrics-api")["spec"]["ports"][0];
    assert_eq!(port["port"], 8085);
}

#[test]
fn a_bad_value_says_where_the_values_are() {
    let out = mesh(&["viz", "install", "--set", "nope=1"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("manifests/viz/values.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn uninstall_lists_the_cluster_wide_objects_then_the_namespace() {
    let (text, docs) = render(&["viz", "uninstall"]);
    golden("viz-uninstall.yaml", &text);
    assert_eq!(docs[0]["kind"], "ClusterRoleBinding");
    let last = docs.last().unwrap();
    assert_eq!(
        (&last["kind"], &last["metadata"]["name"]),
        (&"Namespace".into(), &"mesh-viz".into())
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "mesh"),
        "the RoleBinding in the control plane's namespace does not go with mesh-viz: {text}"
    );
}
