//! `mesh viz` end to end on pods: a control plane, a client Deployment calling a two-pod web
//! Deployment over mutual TLS, HTTP and gRPC-shaped traffic with failures; then the real `mesh`
//! binary reads the state folder, enters the pods and answers `stat`, `edges` and `tap`. Needs
//! root.

use mesh_api::defaults::LOCAL_ADMIN_ADDR;
use mesh_tests::fixtures;
use mesh_tests::web_mesh::WebMesh;
use std::{path::Path, process::Output, time::Duration};

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
fn record(mesh: &WebMesh) {
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
                Ok(rt.block_on(fixtures::get_h1(LOCAL_ADMIN_ADDR, "/metrics")))
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
    let mesh = WebMesh::start("viz");
    let state = mesh.control.state_dir().to_path_buf();
    let paths = [["/"; 6].to_vec(), ["/grpc/fail"; 2].to_vec()].concat();
    let answers = mesh.send(paths);
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
        mesh.send(vec!["/", "/grpc/fail"]);
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
