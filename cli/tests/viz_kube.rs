//! `mesh viz --target kube` through the real binary against an in-process fake API server: the
//! recorded objects (`testdata/k8s-fixtures`, the pods injected with the proxy), the viz
//! component's Services, and its metrics API and tap aggregator answering on the API server's
//! service-proxy paths. Without the viz Services, the error says how to install them. The
//! user is allowed to list namespace demo only, unless `-A` is the test.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mesh_viz::source::{PodSamples, SamplesResponse};
use serde_json::{json, Value};
use support::{fake_api_server, fixture, fixture_json, mesh_on_cluster, viz_data};

/// The recorded pods of Deployment `web`.
const WEB_1: &str = "web-85489d9c68-62pw4";
const WEB_2: &str = "web-85489d9c68-84cz2";

const PROXY: &str = "/api/v1/namespaces/mesh-viz/services";

/// What the fake cluster holds.
struct Cluster {
    /// Whether `mesh viz install` was applied (the Services of mesh-viz exist).
    viz: bool,
    /// Whether the user may list objects of every namespace (otherwise: 403).
    cluster_wide: bool,
    /// The paths asked for, with their queries.
    seen: Mutex<Vec<String>>,
}

/// A list of `kind` with `items`.
fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The recorded pods, injected with the proxy (as `mesh inject` would add its container).
fn meshed_pods() -> Value {
    let mut pods = fixture_json("pods-list.json");
    for pod in pods["items"].as_array_mut().unwrap() {
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "mesh-proxy", "image": "mesh-proxy"}));
    }
    pods
}

/// The recorded Service `web-svc`, renamed to the viz Service `name`.
fn viz_service(name: &str) -> Value {
    let services = fixture_json("services-list.json");
    let mut svc = services["items"][0].clone();
    svc["metadata"]["name"] = name.into();
    svc["metadata"]["namespace"] = "mesh-viz".into();
    svc
}

/// The metrics API's answer: the recorded scrapes of the harness as the two web pods' samples.
fn samples() -> Value {
    let pod = |name: &str, scrape: &str| PodSamples {
        namespace: "demo".into(),
        pod: name.into(),
        before: None,
        after: mesh_viz::prom::parse(&viz_data(scrape)).unwrap(),
    };
    serde_json::to_value(SamplesResponse {
        time: 1_700_000_000.0,
        window: 0.0,
        pods: vec![
            pod(WEB_1, "scrape-web-1.txt"),
            pod(WEB_2, "scrape-web-2.txt"),
        ],
    })
    .unwrap()
}

/// The kinds `mesh viz` lists, by their path of every namespace.
const LISTS: [&str; 7] = [
    "/api/v1/pods",
    "/apis/apps/v1/replicasets",
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/apps/v1/deployments",
    "/apis/apps/v1/statefulsets",
    "/apis/apps/v1/daemonsets",
];

/// A list path of namespace `ns` as its path of every namespace, and `ns`:
/// `/api/v1/namespaces/demo/pods` → (`/api/v1/pods`, Some(demo)).
fn of_namespace(path: &str) -> (String, Option<&str>) {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() == i + 3 => {
            let all = [&parts[..i], &parts[i + 2..]].concat().join("/");
            match LISTS.contains(&all.as_str()) {
                true => (all, Some(parts[i + 1])),
                false => (path.to_string(), None),
            }
        }
        _ => (path.to_string(), None),
    }
}

/// The recorded 403 of a list of every namespace.
fn forbidden(path: &str) -> (u16, String) {
    let resource = path.rsplit('/').next().unwrap();
    let mut status = fixture_json("forbidden-403.json");
    status["message"] = format!(
        "{resource} is forbidden: User \"system:serviceaccount:demo:web\" cannot list resource \"{resource}\" at the cluster scope"
    )
    .into();
    (403, status.to_string())
}

fn respond(cluster: &Cluster, path: &str, query: &str) -> (u16, String) {
    cluster.seen.lock().unwrap().push(format!("{path}?{query}"));
    let recorded = |name: &str| (200, fixture(name));
    let empty = |kind: &str| (200, list(kind, "apps/v1", vec![]).to_string());
    // The viz component's own Services are the check that it is installed.
    let (list_path, namespace) = match path {
        PROXY => (path.to_string(), None),
        _ => of_namespace(path),
    };
    if LISTS.contains(&list_path.as_str()) {
        match namespace {
            None if !cluster.cluster_wide => return forbidden(path),
            // The recorded objects are all of namespace demo.
            Some(ns) if ns != "demo" => {
                let kind = list_path.rsplit('/').next().unwrap();
                return (200, list(kind, "v1", vec![]).to_string());
            }
            _ => {}
        }
    }
    match list_path.as_str() {
        "/api/v1/pods" => (200, meshed_pods().to_string()),
        "/apis/apps/v1/replicasets" => recorded("replicasets-list.json"),
        "/api/v1/services" => recorded("services-list.json"),
        "/apis/discovery.k8s.io/v1/endpointslices" => recorded("endpointslices-list.json"),
        "/apis/apps/v1/deployments" => recorded("deployments-list.json"),
        "/apis/apps/v1/statefulsets" => empty("StatefulSetList"),
        "/apis/apps/v1/daemonsets" => empty("DaemonSetList"),
        PROXY if cluster.viz => (
            200,
            list(
                "ServiceList",
                "v1",
                vec![viz_service("metrics-api"), viz_service("tap")],
            )
            .to_string(),
        ),
        PROXY => (200, list("ServiceList", "v1", vec![]).to_string()),
        _ if cluster.viz
            && path == format!("{PROXY}/http:metrics-api:8085/proxy/api/v1/samples") =>
        {
            (200, samples().to_string())
        }
        _ if cluster.viz
            && path == format!("{PROXY}/http:tap:8089/proxy/api/v1/pods/demo/{WEB_1}/tap") =>
        {
            (200, viz_data("tap-web.jsonl"))
        }
        _ if cluster.viz
            && path == format!("{PROXY}/http:tap:8089/proxy/api/v1/pods/demo/{WEB_2}/tap") =>
        {
            (200, String::new())
        }
        _ => (404, fixture("notfound-404.json")),
    }
}

/// Runs `mesh viz ARGS` against a fake cluster: (exit code, stdout, stderr, paths asked for).
async fn viz(installed: bool, args: &[&str]) -> (i32, String, String, Vec<String>) {
    on(installed, false, args).await
}

/// [`viz`] on a cluster that lets the user list every namespace or not.
async fn on(
    installed: bool,
    cluster_wide: bool,
    args: &[&str],
) -> (i32, String, String, Vec<String>) {
    let cluster = Arc::new(Cluster {
        viz: installed,
        cluster_wide,
        seen: Mutex::default(),
    });
    let api = {
        let cluster = cluster.clone();
        fake_api_server(move |r| respond(&cluster, &r.path, &r.query)).await
    };
    let (code, out, err) = mesh_on_cluster(api, "viz", args).await;
    let seen = cluster.seen.lock().unwrap().clone();
    (code, out, err, seen)
}

#[tokio::test]
async fn stat_reads_the_metrics_api_through_the_service_proxy() {
    let (code, out, err, seen) =
        viz(true, &["stat", "deploy", "-n", "demo", "--window", "0s"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: BTreeMap<&str, Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0], cols)
        })
        .collect();
    let web = &rows["deploy/web"];
    assert_eq!(
        (web[1], web[2]),
        ("2/2", "75.00%"),
        "both pods meshed, 6 of 8 succeeded:\n{out}"
    );
    assert!(
        seen.contains(&format!(
            "{PROXY}/http:metrics-api:8085/proxy/api/v1/samples?namespace=demo&window=0ms"
        )),
        "{seen:#?}"
    );
    // JSON too, from the same samples.
    let (code, out, err, _) = viz(
        true,
        &[
            "stat",
            "deploy/web",
            "-n",
            "demo",
            "--window",
            "0s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["successRate"], 0.75, "{out}");
}

#[tokio::test]
async fn tap_streams_through_the_tap_aggregator() {
    let (code, out, err, seen) =
        viz(true, &["tap", "deploy/web", "-n", "demo", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = viz_data("tap-web.jsonl").lines().count();
    assert_eq!(events.len(), expected, "{out}");
    assert_eq!(
        (events[0]["pod"].as_str(), events[0]["event"].as_str()),
        (Some(WEB_1), Some("requestStart"))
    );
    assert!(
        seen.iter().any(|p| p.starts_with(&format!(
            "{PROXY}/http:tap:8089/proxy/api/v1/pods/demo/{WEB_2}/tap"
        ))),
        "every meshed pod of the Deployment is tapped: {seen:#?}"
    );
}

#[tokio::test]
async fn without_the_viz_component_the_error_says_how_to_install_it() {
    for args in [
        &["stat", "deploy", "-n", "demo"][..],
        &["tap", "deploy/web", "-n", "demo"][..],
    ] {
        let (code, _, err, _) = viz(false, args).await;
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("viz is not installed: run `mesh viz install | kubectl apply -f -`"),
            "{args:?}: {err}"
        );
    }
}

/// The object lists among the paths asked for.
fn lists(seen: &[String]) -> Vec<String> {
    seen.iter()
        .map(|p| p.split('?').next().unwrap())
        .filter(|p| *p != PROXY && LISTS.contains(&of_namespace(p).0.as_str()))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn with_a_namespace_viz_lists_only_that_namespace() {
    for args in [
        &["stat", "deploy", "-n", "demo", "--window", "0s"][..],
        &["edges", "deploy", "-n", "demo"],
        &["tap", "deploy/web", "-n", "demo", "-o", "json"],
        &["top", "deploy/web", "-n", "demo", "--duration", "0s"],
    ] {
        let (code, out, err, seen) = viz(true, args).await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let lists = lists(&seen);
        assert_eq!(lists.len(), LISTS.len(), "{args:?}: {lists:#?}");
        assert!(
            lists.iter().all(|p| p.contains("/namespaces/demo/")),
            "{args:?}: {lists:#?}"
        );
    }
}

#[tokio::test]
async fn without_a_namespace_viz_lists_the_default_namespace_and_those_named() {
    // `default` has nothing: the error says so, and nothing of another namespace was listed.
    let (code, _, err, seen) = viz(true, &["stat", "deploy", "--window", "0s"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no deployment in namespace default"), "{err}");
    assert!(
        lists(&seen)
            .iter()
            .all(|p| p.contains("/namespaces/default/")),
        "{seen:#?}"
    );
    // ns/demo names its namespace.
    let (code, out, err, seen) = viz(true, &["stat", "ns/demo", "--window", "0s"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ns/demo"), "{out}");
    let lists = lists(&seen);
    assert_eq!(lists.len(), 2 * LISTS.len(), "default and demo: {lists:#?}");
}

#[tokio::test]
async fn all_namespaces_lists_the_whole_cluster_where_the_user_may() {
    let (code, out, err, seen) = on(true, true, &["stat", "ns", "-A", "--window", "0s"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ns/demo"), "{out}");
    assert!(
        lists(&seen).iter().all(|p| !p.contains("/namespaces/")),
        "{seen:#?}"
    );
    // A user allowed one namespace is told what was refused.
    let (code, _, err, _) = on(true, false, &["stat", "ns", "-A", "--window", "0s"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "of every namespace (-A; without it, mesh viz lists only the namespaces it needs)"
        ),
        "{err}"
    );
    assert!(err.contains("is forbidden"), "{err}");
}
