//! `mesh diagnostics` through the real binary. In a cluster: an in-process fake API server whose
//! service-proxy path to the destination controller streams watch lines written with the wire
//! types of `mesh_api::destination` (and then stays open, as a watch does), and whose pod-proxy
//! path answers a recorded proxy scrape. On a local mesh's folder: the same watch served by an
//! in-process fake controller on loopback, found through the control pod's object. (Entering
//! the pods' network namespaces is left to the end-to-end demo test.)

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mesh_api::destination::{Add, Endpoint, NoEndpoints, ProtocolHint, Update, DEFAULT_WEIGHT};
use mesh_api::inject::{self as core, ProxyConfig};
use serde_json::Value;
use support::*;

/// The recorded pods of Deployment `web`: the first one meshed, the second not (yet).
const WEB_1: &str = "web-85489d9c68-62pw4";
const WEB_2: &str = "web-85489d9c68-84cz2";

const WATCH: &str =
    "/api/v1/namespaces/mesh/services/http:mesh-destination:8086/proxy/v1/destination/watch";

/// The recorded pod `name`, injected with the proxy when `meshed`.
fn pod(name: &str, meshed: bool) -> Value {
    let list = fixture_json("pods-list.json");
    let mut pod = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == name)
        .unwrap()
        .clone();
    if meshed {
        let config = ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", "anchors");
        core::inject(&mut pod, &BTreeMap::new(), &config).unwrap();
    }
    pod
}

/// What the destination controller answers for `web-svc.demo:80` over the recorded objects:
/// an endpoint per address of the EndpointSlice of `web-svc`, labelled with its pod and
/// Deployment; identity and protocol hint only for the meshed pod.
fn web_svc() -> Update {
    let slices = fixture_json("endpointslices-list.json");
    let slice = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web-svc")
        .unwrap();
    let port = slice["ports"][0]["port"].as_u64().unwrap();
    let endpoints = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let pod = e["targetRef"]["name"].as_str().unwrap();
            let meshed = pod == WEB_1;
            let labels = [
                ("namespace", "demo"),
                ("service", "web-svc"),
                ("pod", pod),
                ("deployment", "web"),
            ];
            Endpoint {
                addr: format!("{}:{port}", e["addresses"][0].as_str().unwrap())
                    .parse()
                    .unwrap(),
                weight: DEFAULT_WEIGHT,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                identity: meshed
                    .then(|| "web.demo.serviceaccount.identity.mesh.cluster.local".to_string()),
                protocol_hint: meshed.then_some(ProtocolHint::H2),
            }
        })
        .collect();
    Update::Add(Add { endpoints })
}

/// The watch's answer for the query `authority=…`, as lines of the wire types.
fn watch(query: &str) -> Answer {
    let lines = |updates: &[Update]| -> String {
        updates
            .iter()
            .map(|u| String::from_utf8(u.to_line().to_vec()).unwrap())
            .collect()
    };
    let none = |exists| Update::NoEndpoints(NoEndpoints { exists });
    match query {
        // The first message is the full state; a later delta must not be waited for.
        "authority=web-svc.demo.svc.cluster.local%3A80" | "authority=web-svc.demo%3A80" => {
            Answer::Open(200, lines(&[web_svc()]))
        }
        "authority=empty.demo%3A80" => Answer::Open(200, lines(&[none(true)])),
        "authority=example.com%3A443" => Answer::Open(200, lines(&[none(false)])),
        // Headers, then nothing.
        "authority=slow.demo%3A80" => Answer::Open(200, String::new()),
        // What the controller says of a name it cannot parse.
        _ => Answer::Whole(
            400,
            "authority \"web-svc.demo:http\" needs a numeric port (HOST:PORT)\n".into(),
        ),
    }
}

fn respond(r: &ApiRequest, installed: bool) -> Answer {
    let pods = "/api/v1/namespaces/demo/pods";
    match r.path.as_str() {
        WATCH if installed => watch(&r.query),
        WATCH => {
            let mut status = fixture_json("notfound-404.json");
            status["message"] = "services \"mesh-destination\" not found".into();
            Answer::Whole(404, status.to_string())
        }
        p if p == format!("{pods}/{WEB_1}") => Answer::Whole(200, pod(WEB_1, true).to_string()),
        p if p == format!("{pods}/{WEB_2}") => Answer::Whole(200, pod(WEB_2, false).to_string()),
        p if p == format!("{pods}/{WEB_1}:4191/proxy/metrics") => {
            Answer::Whole(200, viz_data("scrape-web-1.txt"))
        }
        _ => Answer::Whole(404, fixture("notfound-404.json")),
    }
}

/// Runs `mesh diagnostics ARGS` against the fake cluster: (exit code, stdout, stderr, requests).
async fn diagnostics(installed: bool, args: &[&str]) -> (i32, String, String, Vec<String>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let api = fake_api_server_streams(move |r| {
        log.lock().unwrap().push(format!("{}?{}", r.path, r.query));
        respond(r, installed)
    })
    .await;
    let (code, out, err) = mesh_on_cluster(api, "diagnostics", args).await;
    let seen = seen.lock().unwrap().clone();
    (code, out, err, seen)
}

#[tokio::test]
async fn endpoints_of_a_service_through_the_service_proxy() {
    let (code, out, err, seen) =
        diagnostics(true, &["endpoints", "web-svc.demo.svc.cluster.local:80"]).await;
    assert_eq!(code, 0, "{err}");
    golden("diagnostics-endpoints.txt", &out);
    assert!(
        seen.contains(&format!(
            "{WATCH}?authority=web-svc.demo.svc.cluster.local%3A80"
        )),
        "{seen:?}"
    );

    let (code, out, err, _) = diagnostics(
        true,
        &[
            "endpoints",
            "web-svc.demo.svc.cluster.local:80",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["authority"], "web-svc.demo.svc.cluster.local:80");
    assert_eq!(answer["exists"], true);
    let endpoints: Vec<Endpoint> = serde_json::from_value(answer["endpoints"].clone()).unwrap();
    let Update::Add(expected) = web_svc() else {
        unreachable!()
    };
    assert_eq!(endpoints, expected.endpoints);
}

#[tokio::test]
async fn a_bare_service_name_is_in_the_namespace_of_n() {
    let (code, out, err, seen) =
        diagnostics(true, &["endpoints", "web-svc:80", "-n", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{WEB_1}  deployment/web")), "{out}");
    assert!(
        seen.contains(&format!("{WATCH}?authority=web-svc.demo%3A80")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn names_without_endpoints_get_a_clear_answer() {
    let (code, out, err, _) = diagnostics(true, &["endpoints", "example.com:443"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("example.com:443: unknown to the destination controller"),
        "{out}"
    );
    let (code, out, _, _) = diagnostics(true, &["endpoints", "empty.demo:80", "-o", "json"]).await;
    assert_eq!(code, 0);
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (answer["exists"].clone(), answer["endpoints"].clone()),
        (true.into(), Value::Array(vec![]))
    );
}

#[tokio::test]
async fn the_controllers_refusal_and_a_missing_control_plane_are_errors() {
    let (code, out, err, _) = diagnostics(true, &["endpoints", "web-svc.demo:http"]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("the destination controller answered 400: authority \"web-svc.demo:http\" needs a numeric port"),
        "{err}"
    );
    let (code, _, err, _) = diagnostics(false, &["endpoints", "web-svc.demo:80"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("services \"mesh-destination\" not found")
            && err.contains("is the control plane installed?"),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_controller_times_out() {
    let (code, _, err, _) =
        diagnostics(true, &["endpoints", "slow.demo:80", "--timeout", "1s"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("asking the destination controller about slow.demo:80: no answer within 1s"),
        "{err}"
    );
}

#[tokio::test]
async fn proxy_metrics_through_the_pod_proxy() {
    let (code, out, err, seen) = diagnostics(
        true,
        &["proxy-metrics", &format!("po/{WEB_1}"), "-n", "demo"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, viz_data("scrape-web-1.txt"));
    assert!(
        seen.contains(&format!(
            "/api/v1/namespaces/demo/pods/{WEB_1}:4191/proxy/metrics?"
        )),
        "{seen:?}"
    );

    let (code, _, err, _) = diagnostics(
        true,
        &["proxy-metrics", &format!("po/{WEB_2}"), "-n", "demo"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("pod demo/{WEB_2} is not meshed")),
        "{err}"
    );
    let (code, _, err, _) = diagnostics(true, &["proxy-metrics", "po/gone", "-n", "demo"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no pod gone in namespace demo"), "{err}");
    let (code, _, err, _) = diagnostics(true, &["proxy-metrics", "deploy/web"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("use po/NAME"), "{err}");
}

#[tokio::test]
async fn endpoints_on_a_local_mesh_folder() {
    // The destination controller of a folder whose control pod runs in this network namespace
    // (no mesh.io/local-netns), as in-process tests run it: on loopback.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let controller = fake_api_server_streams(move |r| {
        log.lock().unwrap().push(format!("{}?{}", r.path, r.query));
        match r.path.as_str() {
            "/v1/destination/watch" => watch(&r.query),
            _ => Answer::Whole(404, String::new()),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pod-mesh-control.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: control, namespace: mesh, \
             labels: {{mesh.io/control-plane-ns: mesh}}}}\n\
             spec: {{containers: [{{name: destination, image: mesh-controller, \
             ports: [{{name: grpc, containerPort: {}}}]}}]}}\n\
             status: {{phase: Running, podIP: 127.0.0.1}}\n",
            controller.port()
        ),
    )
    .unwrap();
    let state = dir.path().display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        mesh(
            &["diagnostics", "endpoints", "web-svc:80", "--state", &state],
            None,
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The same table as through the service proxy.
    golden("diagnostics-endpoints.txt", &stdout(&out));
    // The demo's namespace completes the bare name.
    assert_eq!(
        *seen.lock().unwrap(),
        ["/v1/destination/watch?authority=web-svc.demo%3A80"]
    );

    // Without the control pod's object, it says what to do.
    std::fs::remove_file(dir.path().join("pod-mesh-control.yaml")).unwrap();
    let state = dir.path().display().to_string();
    let out = mesh(
        &["diagnostics", "endpoints", "web-svc:80", "--state", &state],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("mesh demo down; mesh demo"),
        "{}",
        stderr(&out)
    );
}
