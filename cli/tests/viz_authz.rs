//! `mesh viz authz`: its table and JSON (golden files `golden/viz-authz-*`, `UPDATE_GOLDEN=1`
//! rewrites them) on the recorded local state folder, from the scrapes of web's pods written to
//! the proxy's authorization families (`viz/tests/data/scrape-authz-*.txt`): read from the
//! proxies (two scrapes a window apart, served over an in-memory transport) and from a fake viz
//! metrics API (the cluster's source), both `support::viz`'s. Without authorization samples, it
//! says the workload's proxies counted no decision.

mod support;

use mesh_cli::viz::Target;
use support::golden;
use support::viz::{
    assert_fails, json, run, web_from_the_metrics_api, web_from_the_proxies_over_200ms,
    web_over_a_window,
};

/// The local mesh whose web pods answer their `before` scrape, then their `after` one.
fn local() -> Target {
    web_over_a_window("authz")
}

#[test]
fn from_the_metrics_api() {
    let authz = web_from_the_metrics_api("authz");
    let web = &authz["servers"][1];
    assert_eq!(
        web["server"],
        serde_json::json!({"kind": "Server", "namespace": "demo", "name": "web-http"})
    );
    let page = &web["decisions"][1];
    assert_eq!(page["route"], "web-page");
    assert_eq!(
        page["authorization"],
        serde_json::json!({"kind": "AuthorizationPolicy", "name": "web-from-vote-bot"})
    );
    assert_eq!(
        page["allowed"],
        serde_json::json!({"count": 100, "rate": 20.0})
    );
    assert_eq!(web["decisions"][2]["denied"]["count"], 8);
    assert_eq!(web["decisions"][3]["protocol"], "tcp");
    assert_eq!(
        web["rateLimited"][0],
        serde_json::json!({"name": "web-rl", "scope": "identity", "count": 7, "rate": 1.4})
    );
}

#[test]
fn from_the_proxies_over_a_window() {
    let (authz, window) = web_from_the_proxies_over_200ms("authz");
    let page = &authz["servers"][1]["decisions"][1];
    assert_eq!(page["allowed"]["count"], 100, "{authz}");
    let rate = page["allowed"]["rate"].as_f64().unwrap();
    assert!((rate * window - 100.0).abs() < 1e-6, "{rate} × {window}");
}

#[test]
fn since_the_proxies_started() {
    // One scrape each: the web pods' first.
    golden(
        "viz-authz-web-since-start.txt",
        &run(&local(), &["authz", "deploy/web", "--window", "0s"]).unwrap(),
    );
}

#[test]
fn no_decision_is_said() {
    let t = local();
    assert_eq!(
        run(&t, &["authz", "deploy/client", "--window", "0s"]).unwrap(),
        "deploy/client received no request or connection its inbound policy decided on since \
         its proxies started: its proxies counted no authorization (inbound_http_authz_*, \
         inbound_tcp_authz_*)\n"
    );
    let out = run(&t, &["authz", "po/client", "--window", "10ms"]).unwrap();
    assert!(
        out.starts_with(
            "po/client received no request or connection its inbound policy decided on in the \
             last 10ms: "
        ),
        "{out}"
    );
    let out = run(&t, &["authz", "po/client", "--window", "0s", "-o", "json"]).unwrap();
    assert_eq!(
        json(&out),
        serde_json::json!({"window": 0.0, "servers": []})
    );
}

#[test]
fn errors_say_what_to_do() {
    let t = local();
    assert_fails(
        &t,
        &["authz", "po/legacy"],
        "po/legacy has no meshed pod (legacy): authorization metrics come from the pods' \
         proxies; mesh them first",
    );
    assert_fails(
        &t,
        &["authz", "deploy/nope"],
        "no such resource: deploy/nope in namespace demo",
    );
}
