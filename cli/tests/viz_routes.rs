//! `mesh viz routes`: its table and JSON (golden files `golden/viz-routes-*`, `UPDATE_GOLDEN=1`
//! rewrites them) on the recorded local state folder, from the scrapes of web's pods written to
//! the proxy's route families (`viz/tests/data/scrape-routes-*.txt`): read from the proxies
//! (two scrapes a window apart, served over an in-memory transport) and from a fake viz metrics
//! API (the cluster's source), both `support::viz`'s. Without route samples, it says the
//! workload sent no routed traffic.

mod support;

use mesh_cli::viz::Target;
use support::golden;
use support::viz::{
    assert_fails, json, run, web_from_the_metrics_api, web_from_the_proxies_over_200ms,
    web_over_a_window,
};

/// The local mesh whose web pods answer their `before` scrape, then their `after` one.
fn local() -> Target {
    web_over_a_window("routes")
}

#[test]
fn from_the_metrics_api() {
    let routes = web_from_the_metrics_api("routes");
    let voting = &routes["routes"][2];
    assert_eq!(voting["route"]["name"], "voting-split");
    assert_eq!(
        (voting["requests"].as_u64(), voting["rps"].as_f64()),
        (Some(100), Some(20.0))
    );
    assert_eq!(voting["retries"]["budgetExhausted"], 2);
    let backends: Vec<&str> = voting["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["voting-shadow", "voting-v1", "voting-v2"]);
}

#[test]
fn from_the_proxies_over_a_window() {
    let (routes, window) = web_from_the_proxies_over_200ms("routes");
    let voting = &routes["routes"][2];
    assert_eq!(voting["requests"], 100, "{routes}");
    let rps = voting["rps"].as_f64().unwrap();
    assert!((rps * window - 100.0).abs() < 1e-6, "{rps} × {window}");
    assert_eq!(voting["successRate"], 0.92);
}

#[test]
fn since_the_proxies_started() {
    // One scrape each: the web pods' first.
    golden(
        "viz-routes-web-since-start.txt",
        &run(&local(), &["routes", "deploy/web", "--window", "0s"]).unwrap(),
    );
}

#[test]
fn no_routed_traffic_is_said() {
    let t = local();
    assert_eq!(
        run(&t, &["routes", "deploy/client", "--window", "0s"]).unwrap(),
        "deploy/client sent no routed traffic since its proxies started: its proxies counted no \
         request on a route (outbound_http_route_*); routes count the HTTP requests a workload \
         sends to a Service\n"
    );
    let out = run(&t, &["routes", "po/client", "--window", "10ms"]).unwrap();
    assert!(
        out.starts_with("po/client sent no routed traffic in the last 10ms: "),
        "{out}"
    );
    let out = run(&t, &["routes", "po/client", "--window", "0s", "-o", "json"]).unwrap();
    assert_eq!(json(&out), serde_json::json!({"window": 0.0, "routes": []}));
}

#[test]
fn errors_say_what_to_do() {
    let t = local();
    assert_fails(
        &t,
        &["routes", "po/legacy"],
        "po/legacy has no meshed pod (legacy): route metrics come from the pods' proxies; mesh \
         them first",
    );
    assert_fails(
        &t,
        &["routes", "deploy/nope"],
        "no such resource: deploy/nope in namespace demo",
    );
    assert_fails(
        &t,
        &["routes", "deploy/web", "-o", "yaml"],
        "invalid value 'yaml'",
    );
}
