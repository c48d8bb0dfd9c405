//! The cluster tier: the mesh on a real Kubernetes cluster, as a user would run it. Install,
//! check, the demo application injected by the webhook (real redirect rules, real projected
//! tokens), the viz component through the API server's proxies, scaling and a controller's
//! restart under load without a lost request, and an uninstall that leaves nothing behind.
//!
//! It needs a cluster with the mesh's images loaded: `./scripts/test-kube` (or `just
//! kube-e2e`) brings up `../shared/k8s` and builds and imports the images; with `KUBECONFIG`
//! set it uses that cluster instead. `cargo test` alone skips it (it is `#[ignore]`d, with the
//! reason); run directly without a cluster, it fails saying what to do.

use std::time::Duration;

use mesh_tests::fixtures::eventually;
use mesh_tests::kube::{
    gone, kubectl, kubectl_delete_if_present, kubectl_ok, kubectl_stdin, mesh, mesh_ok, rolled_out,
    Cluster,
};
use serde_json::Value;

const DEMO: &str = include_str!("../../manifests/demo/demo.yaml");
const APPLY: &[&str] = &["apply"];
/// Deletes do not wait (kubectl would wait without end): the tier waits with a deadline.
const DELETE: &[&str] = &["delete", "--wait=false"];
/// The rendering flags a test cluster needs on top of a user's (`MESH_KUBE_INSTALL_FLAGS`,
/// space-separated), e.g. `--set proxy.nativeSidecar=true` on a cluster with the feature gate.
const INSTALL_FLAGS_ENV: &str = "MESH_KUBE_INSTALL_FLAGS";
/// `core` runs install, check, the demo's injection and uninstall only (no viz, no load).
const SCOPE_ENV: &str = "MESH_KUBE_SCOPE";

fn install_flags() -> Vec<String> {
    std::env::var(INSTALL_FLAGS_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
#[ignore = "the cluster tier: ./scripts/test-kube runs it against a real cluster"]
async fn the_mesh_on_a_real_cluster() {
    let cluster = Cluster::from_env();
    let flags = install_flags();
    let native = flags.iter().any(|f| f == "proxy.nativeSidecar=true");
    let all = std::env::var(SCOPE_ENV).as_deref() != Ok("core");
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("== {what} ({} s)", started.elapsed().as_secs());

    step("a clean slate: what an earlier run left is removed");
    clean_slate().await;

    step("mesh check --pre");
    let pre = mesh_ok(&["check", "--pre"]);
    assert!(pre.contains("Status check results are ✔"), "{pre}");

    step("mesh install | kubectl apply -f -");
    let mut args = vec!["install"];
    args.extend(flags.iter().map(String::as_str));
    let install = mesh_ok(&args);
    kubectl_stdin(APPLY, &install);
    step("mesh check --wait 5m");
    let check = mesh_ok(&["check", "--wait", "5m"]);
    assert!(check.contains("Status check results are ✔"), "{check}");

    step("the demo application, injected by the webhook");
    kubectl_stdin(APPLY, DEMO);
    rolled_out("demo", Duration::from_secs(180)).await;
    let pods: Value =
        serde_json::from_str(&kubectl_ok(&["get", "pods", "-n", "demo", "-o", "json"])).unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(
        pods.len(),
        7,
        "emoji, voting, redis, 2 × web, web-v2, vote-bot"
    );
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let spec = &pod["spec"];
        let names = |list: &str| -> Vec<String> {
            spec[list]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names("initContainers")[0], "mesh-init", "{name}");
        let proxy_in = if native {
            "initContainers"
        } else {
            "containers"
        };
        assert!(
            names(proxy_in).contains(&"mesh-proxy".to_string()),
            "{name}: the proxy is not in {proxy_in}: {spec}"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["mesh.io/proxy-version"],
            mesh_cli::install::version(),
            "{name}"
        );
    }
    // mesh-init installed real redirect rules: its log says so.
    let web = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["app"] == "web")
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let init = kubectl_ok(&["logs", "-n", "demo", &web, "-c", "mesh-init"]);
    assert!(
        init.contains("mesh-init: redirecting inbound TCP"),
        "{init}"
    );

    step("mesh version, mesh diagnostics");
    let version = mesh_ok(&["version", "-n", "demo"]);
    let v = mesh_cli::install::version();
    assert!(
        version.contains(&format!("Client version: {v}")),
        "{version}"
    );
    assert!(version.matches(v.as_str()).count() >= 3, "{version}");
    // A pod's readiness reaches its EndpointSlice a moment after the rollout is reported done:
    // the destination follows the slice, so the count settles within seconds.
    let web_endpoints = || {
        mesh_ok(&[
            "diagnostics",
            "endpoints",
            "web-svc.demo.svc.cluster.local:80",
            "-o",
            "json",
        ])
    };
    let web_identity = "web.demo.serviceaccount.identity.mesh.cluster.local";
    eventually(Duration::from_secs(60), || async {
        web_endpoints().matches(web_identity).count() == 2
    })
    .await;
    let endpoints = web_endpoints();
    assert_eq!(
        endpoints.matches(web_identity).count(),
        2,
        "both web pods, with their identity: {endpoints}"
    );
    let metrics = mesh_ok(&[
        "diagnostics",
        "proxy-metrics",
        &format!("po/{web}"),
        "-n",
        "demo",
    ]);
    assert!(metrics.contains("request_total"), "{metrics}");

    step("mesh check --proxy -n demo");
    let proxies = mesh_ok(&["check", "--proxy", "-n", "demo", "--wait", "2m"]);
    assert!(proxies.contains("Status check results are ✔"), "{proxies}");

    if all {
        viz_and_load(&step).await;
    }

    step("uninstall leaves nothing behind");
    kubectl_stdin(DELETE, DEMO);
    if all {
        kubectl_stdin(DELETE, &mesh_ok(&["viz", "uninstall"]));
    }
    kubectl_stdin(DELETE, &mesh_ok(&["uninstall"]));
    for ns in ["demo", "mesh-viz", "mesh"] {
        gone(ns, Duration::from_secs(180)).await;
    }
    let leftovers = kubectl_ok(&[
        "get",
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
        "-o",
        "name",
    ]);
    let ours: Vec<&str> = leftovers.lines().filter(|l| l.contains("mesh")).collect();
    assert!(ours.is_empty(), "left behind: {ours:?}");
    drop(cluster);
}

/// Removes the demo, viz and the control plane if an earlier (failed) run left them, and waits
/// until their namespaces are gone.
async fn clean_slate() {
    kubectl_delete_if_present(DEMO);
    kubectl_delete_if_present(&mesh_ok(&["viz", "uninstall"]));
    kubectl_delete_if_present(&mesh_ok(&["uninstall"]));
    for ns in ["demo", "mesh-viz", "mesh"] {
        gone(ns, Duration::from_secs(180)).await;
    }
}

/// The viz component on the demo, then scaling and a controller restart under load.
async fn viz_and_load(step: &impl Fn(&str)) {
    step("mesh viz install, stat, edges, tap, top");
    kubectl_stdin(APPLY, &mesh_ok(&["viz", "install"]));
    rolled_out("mesh-viz", Duration::from_secs(180)).await;
    // web's success rate falls below 100 % (the doughnut votes) once Prometheus has scraped.
    let mut stat = String::new();
    let seen = eventually(Duration::from_secs(120), || {
        let out = mesh(&["viz", "stat", "deploy", "-n", "demo", "-o", "json"]);
        stat = String::from_utf8_lossy(&out.stdout).to_string();
        let rows: Vec<Value> = serde_json::from_str(&stat).unwrap_or_default();
        let web_rate = rows
            .iter()
            .find(|r| r["kind"] == "deployment" && r["name"] == "web")
            .and_then(|r| r["successRate"].as_f64());
        async move { web_rate.is_some_and(|r| r < 1.0 && r > 0.0) }
    })
    .await;
    assert!(
        seen,
        "web's success rate never showed the failing votes: {stat}"
    );
    // Every edge appears, mutual TLS, once both sides' proxies have been scraped.
    let expected = [
        ("vote-bot", "web"),
        ("web", "emoji"),
        ("web", "voting"),
        ("voting", "redis"),
    ];
    let mut edges = String::new();
    let all_secured = eventually(Duration::from_secs(120), || {
        let out = mesh(&["viz", "edges", "deploy", "-n", "demo"]);
        edges = String::from_utf8_lossy(&out.stdout).to_string();
        let secured = expected.iter().all(|(src, dst)| {
            edges.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 7
                    && cols[0] == *src
                    && cols[1] == *dst
                    && cols[4] == "√"
                    && cols[5].contains(".serviceaccount.identity.mesh.")
                    && cols[6].contains(".serviceaccount.identity.mesh.")
            })
        });
        async move { secured }
    })
    .await;
    assert!(
        all_secured,
        "not every edge showed up as mutual TLS with both identities: {expected:?}\n{edges}"
    );
    let mut top = String::new();
    let voting_seen = eventually(Duration::from_secs(60), || {
        top = mesh_ok(&["viz", "top", "deploy/web", "-n", "demo", "--duration", "5s"]);
        let seen = top.contains("/demo.Voting/");
        async move { seen }
    })
    .await;
    assert!(
        voting_seen,
        "mesh viz top never showed web's calls to voting:\n{top}"
    );
    // voting refuses one call in ten with UNAVAILABLE (14), which the voting route retries:
    // the tap of web's outbound proxy sees those attempts too, so one doughnut vote may end
    // with 14; of three, one ends with the doughnut's own failure, 2.
    let tap = tap_lines("deploy/web", "/demo.Voting/VoteDoughnut", 3).await;
    assert!(tap.iter().any(|l| l.contains("grpc-status=2")), "{tap:?}");

    step("mesh viz routes: the canary split and the retried voting route");
    // The demo's HTTPRoute sends 10 % of vote-bot's calls to web-v2, through the destination
    // controller's route watch of the real API server.
    let mut routes = String::new();
    let split_seen = eventually(Duration::from_secs(120), || {
        let out = mesh(&[
            "viz",
            "routes",
            "deploy/vote-bot",
            "-n",
            "demo",
            "-o",
            "json",
        ]);
        routes = String::from_utf8_lossy(&out.stdout).to_string();
        let json: Value = serde_json::from_str(&routes).unwrap_or_default();
        let canary = json["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["route"]["name"] == "web-canary");
        let served = |name: &str| {
            canary.is_some_and(|r| {
                r["backends"].as_array().into_iter().flatten().any(|b| {
                    b["backend"]["name"] == name && b["requests"].as_f64().unwrap_or(0.0) > 0.0
                })
            })
        };
        let both = served("web-svc") && served("web-v2");
        async move { both }
    })
    .await;
    assert!(
        split_seen,
        "both backends of web-canary served vote-bot: {routes}"
    );
    let retried = eventually(Duration::from_secs(120), || {
        let out = mesh(&["viz", "routes", "deploy/web", "-n", "demo", "-o", "json"]);
        routes = String::from_utf8_lossy(&out.stdout).to_string();
        let json: Value = serde_json::from_str(&routes).unwrap_or_default();
        let ok = json["routes"].as_array().into_iter().flatten().any(|r| {
            r["route"]["name"] == "voting" && r["retries"]["success"].as_f64().unwrap_or(0.0) > 0.0
        });
        async move { ok }
    })
    .await;
    assert!(
        retried,
        "web's voting route retried UNAVAILABLE answers: {routes}"
    );

    step("scaling web under load loses no request");
    let load = start_load("web-svc.demo.svc.cluster.local:80/api/list", 45);
    for replicas in ["4", "1", "2"] {
        kubectl_ok(&["scale", "deploy/web", "-n", "demo", "--replicas", replicas]);
        rolled_out("demo", Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let result = finish_load(&load, Duration::from_secs(120)).await;
    assert_no_failures(&result, "while web scaled 2 → 4 → 1 → 2");

    step("restarting the destination controller under load loses no request");
    let load = start_load("web-svc.demo.svc.cluster.local:80/api/list", 30);
    tokio::time::sleep(Duration::from_secs(5)).await;
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        "mesh",
        "-l",
        "mesh.io/control-plane-component=destination",
        "--wait=false",
    ]);
    rolled_out("mesh", Duration::from_secs(120)).await;
    let result = finish_load(&load, Duration::from_secs(120)).await;
    assert_no_failures(&result, "while the destination controller restarted");
}

/// The first `n` `end` lines of `mesh viz tap RESOURCE -n demo --path PATH`.
async fn tap_lines(resource: &str, path: &str, n: usize) -> Vec<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(mesh_tests::kube::mesh_binary())
        .args(["viz", "tap", resource, "-n", "demo", "--path", path])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mesh viz tap runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ends = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("end ") {
                ends.push(line);
                if ends.len() >= n {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no tap events for {path} within 60s: {ends:?}"
    );
    ends
}

/// Starts `mesh-load` in a meshed pod of `demo` against `http://TARGET` for `seconds`.
fn start_load(target: &str, seconds: u64) -> String {
    let name = format!("load-{}-{seconds}s", std::process::id());
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "load",
                "image": "localhost/mesh-load:test",
                "imagePullPolicy": "IfNotPresent",
                "args": [
                    format!("http://{target}"),
                    "--concurrency", "4",
                    "--duration-ms", (seconds * 1000).to_string(),
                ],
            }],
        },
    });
    kubectl_stdin(APPLY, &pod.to_string());
    name
}

/// Waits for the load pod's JSON result.
async fn finish_load(name: &str, within: Duration) -> Value {
    let mut result = None;
    let done = eventually(within, || {
        let out = kubectl(&["logs", "-n", "demo", name, "-c", "load"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        result = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        let found = result.is_some();
        async move { found }
    })
    .await;
    assert!(
        done,
        "the load pod {name} printed no result within {within:?}"
    );
    kubectl(&["delete", "pod", "-n", "demo", name, "--wait=false"]);
    result.unwrap()
}

fn assert_no_failures(result: &Value, when: &str) {
    let answered: u64 = result["servers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(answered > 100, "{when}: only {answered} answers: {result}");
    assert_eq!(
        result["failures"],
        serde_json::json!({}),
        "{when}: requests failed ({answered} answered)"
    );
}
