//! `mesh viz` end to end on pods: a control plane, a client Deployment calling a two-pod web
//! Deployment over mutual TLS, HTTP and gRPC-shaped traffic with failures; then the real `mesh`
//! binary reads the state folder, enters the pods and answers `stat`, `edges` and `tap`. Needs
//! root.

use http_body_util::BodyExt as _;
use mesh_cli::local::{
    require_root, service_yaml, Cluster, ControlOptions, ControlPlane, Pod, Proxy,
};
use mesh_tests::{fixtures, serve_app};
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Output,
    thread::JoinHandle,
    time::Duration,
};

const SERVICE: &str = "web-svc.demo.svc.cluster.local";
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const APP_PORT: u16 = 8080;

struct Mesh {
    _cluster: Cluster,
    control: ControlPlane,
    webs: Vec<Pod>,
    client: Pod,
    _proxies: Vec<Proxy>,
    _apps: Vec<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Pods `web-1`, `web-2` (Deployment `web`) and `client` (Deployment `client`), all meshed.
fn mesh(name: &str) -> Mesh {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control_pod = cluster.add_pod("control").expect("control pod");
    let webs = vec![
        cluster.add_pod("web-1").expect("web-1"),
        cluster.add_pod("web-2").expect("web-2"),
    ];
    let client = cluster.add_pod("client").expect("client pod");
    let dir = tempfile::tempdir().expect("control folder");
    let control = ControlPlane::start(&control_pod, dir.path(), &ControlOptions::default())
        .expect("control plane");
    control
        .write(
            "web-svc.yaml",
            &service_yaml(
                "demo",
                "web-svc",
                CLUSTER_IP.into(),
                (80, APP_PORT),
                &[("app", "web")],
                &webs,
            ),
        )
        .expect("service");
    let mut apps = Vec::new();
    let mut proxies = Vec::new();
    for web in &webs {
        apps.push(serve_app(web, APP_PORT, Duration::ZERO, &web.name).expect("web app"));
        let opts = control
            .enroll_in(web, "demo", "web", &[("app", "web")], Some("web"))
            .expect("enroll web");
        proxies.push(web.mesh(opts).expect("mesh web"));
    }
    client
        .set_hosts(&[(IpAddr::from(CLUSTER_IP), SERVICE)])
        .expect("hosts file");
    client.route("10.96.0.0/12").expect("service route");
    let opts = control
        .enroll_in(
            &client,
            "demo",
            "client",
            &[("app", "client")],
            Some("client"),
        )
        .expect("enroll client");
    proxies.push(client.mesh(opts).expect("mesh client"));
    Mesh {
        _cluster: cluster,
        control,
        webs,
        client,
        _proxies: proxies,
        _apps: apps,
        _dir: dir,
    }
}

/// Sends `paths` in order from the client pod to `web-svc` over one HTTP/2 connection; returns
/// each answer's status and grpc-status.
fn send(client: &Pod, paths: Vec<&'static str>) -> Vec<(u16, Option<String>)> {
    client
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut h2 = fixtures::h2(SocketAddr::from((CLUSTER_IP, 80))).await;
                let mut answers = Vec::new();
                for path in paths {
                    let req = http::Request::get(format!("http://{SERVICE}{path}"))
                        .header("content-type", "application/grpc")
                        .body(http_body_util::Empty::new().boxed())?;
                    let rsp = h2.send_request(req).await?;
                    let status = rsp.status().as_u16();
                    let body = rsp.into_body().collect().await?;
                    let grpc = body
                        .trailers()
                        .and_then(|t| t.get("grpc-status"))
                        .map(|v| v.to_str().unwrap_or("?").to_string());
                    answers.push((status, grpc));
                }
                Ok(answers)
            })
        })
        .join()
        .expect("client thread")
        .expect("requests")
}

/// Runs the real `mesh` binary.
fn mesh_cmd(state: &Path, args: &[&str]) -> Output {
    std::process::Command::new(mesh_cli::local::binary("mesh").expect("mesh binary"))
        .arg("viz")
        .args(args)
        .arg("--state")
        .arg(state)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mesh")
}

/// `MESH_VIZ_RECORD=DIR`: keeps the proxies' scrapes and the state folder as test data.
fn record(mesh: &Mesh) {
    let Some(dir) = std::env::var_os("MESH_VIZ_RECORD") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    for pod in mesh.webs.iter().chain([&mesh.client]) {
        let p = pod.clone();
        let body = pod
            .run_in(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(rt.block_on(fixtures::get_h1("127.0.0.1:4191".parse()?, "/metrics")))
            })
            .join()
            .unwrap()
            .unwrap();
        std::fs::write(dir.join(format!("scrape-{}.txt", p.name)), body.1).unwrap();
    }
    for entry in std::fs::read_dir(mesh.control.state_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("state").join(entry.file_name())).unwrap();
    }
}

/// The JSON a `mesh viz` command printed, or a failure with its stderr.
fn json(out: Output) -> serde_json::Value {
    let stdout = mesh_tests::success(out).expect("mesh viz succeeds");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn stat_edges_and_tap_see_the_traffic() {
    let mesh = mesh("viz");
    let state = mesh.control.state_dir().to_path_buf();
    let paths = [["/"; 6].to_vec(), ["/grpc/fail"; 2].to_vec()].concat();
    let answers = send(&mesh.client, paths);
    let failed = answers
        .iter()
        .filter(|(_, grpc)| grpc.as_deref() == Some("2"))
        .count();
    assert_eq!((answers.len(), failed), (8, 2), "{answers:?}");
    record(&mesh);

    // Golden metrics since the proxies started: web served 6 of 8 well; client served nothing.
    let stat = json(mesh_cmd(
        &state,
        &["stat", "deploy", "--window", "0s", "-o", "json"],
    ));
    let row = |name: &str| {
        stat.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {stat}"))
            .clone()
    };
    let web = row("web");
    assert_eq!(
        (&web["meshedPods"], &web["responses"], &web["successRate"]),
        (&2.into(), &8.into(), &0.75.into()),
        "{web}"
    );
    assert!(web["latencyMsP50"].as_f64().is_some(), "{web}");
    assert_eq!(row("client")["successRate"], serde_json::Value::Null);
    // The client's side of the same calls.
    let to = json(mesh_cmd(
        &state,
        &[
            "stat",
            "deploy/client",
            "--to",
            "deploy/web",
            "--window",
            "0s",
            "-o",
            "json",
        ],
    ));
    assert_eq!(
        (&to[0]["responses"], &to[0]["successRate"]),
        (&8.into(), &0.75.into()),
        "{to}"
    );

    // Who talks to whom: client → web over mutual TLS, both identities verified.
    let edges = json(mesh_cmd(&state, &["edges", "deploy", "-o", "json"]));
    assert_eq!(edges.as_array().map(Vec::len), Some(1), "{edges}");
    let edge = &edges[0];
    assert_eq!(
        (&edge["src"]["name"], &edge["dst"]["name"], &edge["mtls"]),
        (&"client".into(), &"web".into(), &true.into()),
        "{edge}"
    );
    assert_eq!(
        edge["clientId"],
        "client.demo.serviceaccount.identity.mesh.cluster.local"
    );
    assert_eq!(
        edge["serverId"],
        "web.demo.serviceaccount.identity.mesh.cluster.local"
    );

    // Tap: the failing gRPC path with its grpc-status, while requests keep coming.
    let tap = std::process::Command::new(mesh_cli::local::binary("mesh").expect("mesh binary"))
        .args([
            "viz",
            "tap",
            "deploy/web",
            "--path",
            "/grpc",
            "-o",
            "json",
            "--duration",
            "8s",
        ])
        .arg("--state")
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mesh viz tap");
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < deadline {
        send(&mesh.client, vec!["/", "/grpc/fail"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = tap.wait_with_output().expect("mesh viz tap");
    let stdout = mesh_tests::success(out).expect("mesh viz tap succeeds");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let start = events
        .iter()
        .find(|e| e["event"] == "requestStart")
        .unwrap_or_else(|| panic!("no request in the tap: {stdout}"));
    assert_eq!(
        start["path"], "/grpc/fail",
        "the filter keeps /grpc only: {start}"
    );
    assert_eq!(start["tls"], true, "{start}");
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "requestStart" || e["path"] == "/grpc/fail"),
        "{stdout}"
    );
    let end = events
        .iter()
        .find(|e| e["event"] == "responseEnd")
        .unwrap_or_else(|| panic!("no response end in the tap: {stdout}"));
    assert_eq!(
        (&end["grpcStatus"], &end["success"]),
        (&2.into(), &false.into()),
        "{end}"
    );
}
