//! `mesh viz`: each command's non-terminal output, pinned by golden files
//! (`golden/viz-*`, `UPDATE_GOLDEN=1` rewrites them), on a recorded local state folder and
//! recorded proxies: the scrapes of the pod harness (`viz/tests/data/scrape-*.txt`) and a tap
//! stream, served over an in-memory transport by a small HTTP server. The errors a user meets
//! say what to do next.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use mesh_cli::viz::Target;
use support::viz::{assert_fails, run, state, Answers, Proxies};
use support::{golden, mesh, stderr, viz_data};

/// The recorded harness: each pod answers its scrape; web-1 and web-2 answer a tap with `tap`
/// (web-1 with the recorded stream, web-2 with nothing), or refuse it (403) without.
fn recorded(tap: Option<&str>) -> Target {
    let mut proxies = HashMap::new();
    for pod in ["web-1", "web-2", "client"] {
        let metrics = viz_data(&format!("scrape-{pod}.txt"));
        let tap = tap.map(|t| {
            if pod == "web-1" {
                t.to_string()
            } else {
                String::new()
            }
        });
        let answers: Answers = Arc::new(move |path| match path {
            "/metrics" => (200, metrics.clone()),
            "/v1/tap" => match &tap {
                Some(t) => (200, t.clone()),
                None => (403, "tap: forbidden\n".into()),
            },
            _ => (404, String::new()),
        });
        proxies.insert(pod.to_string(), answers);
    }
    Target::local(state(), Arc::new(Proxies(proxies)))
}

#[test]
fn stat() {
    let t = recorded(Some(""));
    golden(
        "viz-stat-deploy.txt",
        &run(&t, &["stat", "deploy", "--window", "0s"]).unwrap(),
    );
    let json = run(&t, &["stat", "deploy/web", "--window", "0s", "-o", "json"]).unwrap();
    golden("viz-stat-web.json", &json);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["successRate"], 0.75, "6 of 8 succeeded: {json}");
    assert_eq!(rows[0]["meshedPods"], 2);
    golden(
        "viz-stat-po-to-web.txt",
        &run(
            &t,
            &["stat", "po/client", "--to", "deploy/web", "--window", "0s"],
        )
        .unwrap(),
    );
    golden(
        "viz-stat-ns.txt",
        &run(&t, &["stat", "ns", "--window", "0s"]).unwrap(),
    );
}

#[test]
fn edges() {
    let t = recorded(Some(""));
    golden(
        "viz-edges-deploy.txt",
        &run(&t, &["edges", "deploy"]).unwrap(),
    );
    golden(
        "viz-edges-po.json",
        &run(&t, &["edges", "po", "-o", "json"]).unwrap(),
    );
}

#[test]
fn tap() {
    let t = recorded(Some(&viz_data("tap-web.jsonl")));
    golden("viz-tap-web.txt", &run(&t, &["tap", "deploy/web"]).unwrap());
    golden(
        "viz-tap-web-wide.txt",
        &run(&t, &["tap", "deploy/web", "-o", "wide"]).unwrap(),
    );
    let json = run(&t, &["tap", "deploy/web", "-o", "json"]).unwrap();
    golden("viz-tap-web.json", &json);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["pod"].as_str(), first["event"].as_str()),
        (Some("web-1"), Some("requestStart"))
    );
}

#[test]
fn top() {
    let t = recorded(Some(&viz_data("tap-web.jsonl")));
    golden(
        "viz-top-web.txt",
        &run(&t, &["top", "deploy/web", "--duration", "5s"]).unwrap(),
    );
}

#[test]
fn dashboard() {
    let t = recorded(Some(&viz_data("tap-web.jsonl")));
    golden(
        "viz-dashboard.txt",
        &run(&t, &["dashboard", "deploy/web", "--duration", "200ms"]).unwrap(),
    );
}

#[test]
fn errors_say_what_to_do() {
    let t = recorded(Some(""));
    let check = |args: &[&str], expected: &str| assert_fails(&t, args, expected);
    check(
        &["stat", "deploy/nope"],
        "no such resource: deploy/nope in namespace demo; there are: deploy/client, deploy/web",
    );
    check(
        &["stat", "deploy", "-n", "shop"],
        "no deployment in namespace shop; there are pods in namespaces demo",
    );
    check(
        &["tap", "po/legacy"],
        "po/legacy has no meshed pod (legacy): only meshed pods can be tapped",
    );
    check(&["stat", "cm/x"], "unknown resource kind");
    let forbidden = recorded(None);
    let e = run(&forbidden, &["tap", "po/web-1"]).unwrap_err();
    assert!(
        e.contains("refused the tap (403: tap: forbidden)") && e.contains("loopback"),
        "{e}"
    );
}

#[test]
fn the_binary_explains_a_missing_local_mesh() {
    let check = |args: &[&str], expected: &str| {
        let out = mesh(args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    };
    check(&["viz", "stat", "deploy"], "no local mesh is running");
    check(
        &["viz", "--target", "local", "stat", "deploy"],
        "no local mesh is running (folder /nonexistent/.local/state/mesh/local): start one with `mesh demo`",
    );
    check(
        &["viz", "stat", "deploy", "--state", "/nonexistent"],
        "no local mesh at /nonexistent",
    );
    check(
        &["viz", "--target", "kube", "stat", "deploy"],
        "finding a cluster (KUBECONFIG, ~/.kube/config or in-cluster)",
    );
}
