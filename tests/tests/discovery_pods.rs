//! Discovery end to end on pods: the destination controller runs in a pod of its own on a folder
//! of YAML; a meshed client pod calls `web-svc.demo.svc.cluster.local` by name (its resolver
//! answers the ClusterIP from the pod's hosts file) and its proxy balances over three meshed
//! server pods. Needs root.

use mesh_cli::local::{binary, require_root, service_yaml, Cluster, MeshOptions, Pod, Proxy};
use mesh_tests::{serve_app, Load, LoadResult};
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

const SERVICE: &str = "web-svc.demo.svc.cluster.local";
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const APP_PORT: u16 = 8080;
const CONTROLLER_PORT: u16 = 8086;

struct Demo {
    client: Pod,
    servers: Vec<Pod>,
    state: tempfile::TempDir,
    controller: Child,
    _proxies: Vec<Proxy>,
    _apps: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    _cluster: Cluster,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

/// The cluster: a controller pod, three meshed server pods (the last one `slow` late on every
/// request), and a meshed client pod that resolves the service by name.
fn demo(name: &str, slow: Duration) -> Demo {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control = cluster.add_pod("control").expect("control pod");
    let servers: Vec<Pod> = (0..3)
        .map(|i| cluster.add_pod(&format!("web-{i}")).expect("server pod"))
        .collect();
    let client = cluster.add_pod("client").expect("client pod");

    let state = tempfile::tempdir().expect("state folder");
    write_service(state.path(), &servers);
    let controller = control
        .command(binary("mesh-controller").expect("mesh-controller"))
        .args([
            "destination",
            "--listen",
            &format!("0.0.0.0:{CONTROLLER_PORT}"),
        ])
        .arg("--source")
        .arg(format!("dir:{}", state.path().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the controller");
    control
        .wait_http_ok(
            SocketAddr::from(([127, 0, 0, 1], CONTROLLER_PORT)),
            "/ready",
            Duration::from_secs(20),
        )
        .expect("the destination controller gets ready");

    let mut apps = Vec::new();
    let mut proxies = Vec::new();
    for (i, pod) in servers.iter().enumerate() {
        let delay = if i == 2 { slow } else { Duration::ZERO };
        apps.push(serve_app(pod, APP_PORT, delay, &pod.name).expect("server app starts"));
        proxies.push(pod.mesh(MeshOptions::default()).expect("mesh a server pod"));
    }

    client
        .set_hosts(&[(IpAddr::from(CLUSTER_IP), SERVICE)])
        .expect("hosts file");
    client.route("10.96.0.0/12").expect("service route");
    let env = [
        (
            "MESH_PROXY_DESTINATION_ADDR",
            format!("{}:{CONTROLLER_PORT}", control.ip),
        ),
        ("MESH_PROXY_DESTINATION_NAMESPACE", "demo".to_string()),
    ];
    let opts = MeshOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..MeshOptions::default()
    };
    proxies.push(client.mesh(opts).expect("mesh the client pod"));
    Demo {
        client,
        servers,
        state,
        controller,
        _proxies: proxies,
        _apps: apps,
        _cluster: cluster,
    }
}

/// The Service and one EndpointSlice with `servers`, written atomically.
fn write_service(dir: &Path, servers: &[Pod]) {
    let yaml = service_yaml(
        "demo",
        "web-svc",
        CLUSTER_IP.into(),
        (80, APP_PORT),
        &[],
        servers,
    );
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, yaml).expect("write the state");
    std::fs::rename(&tmp, dir.join("web.yaml")).expect("rename the state");
}

/// `mesh-load` in the client pod, calling the service by name for `duration`.
fn start_load(client: &Pod, duration: Duration) -> Load {
    let url = format!("http://{SERVICE}/");
    Load::start(client, env!("CARGO_BIN_EXE_mesh-load"), &url, 4, duration)
        .expect("start mesh-load")
}

/// Requests answered per server and failures.
fn finish_load(
    load: Load,
) -> (
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, u64>,
) {
    let LoadResult {
        servers, failures, ..
    } = load.finish().expect("mesh-load runs");
    (servers, failures)
}

#[test]
fn a_slow_server_pod_gets_a_clearly_smaller_share() {
    let demo = demo("disc-share", Duration::from_millis(25));
    let (servers, failures) = finish_load(start_load(&demo.client, Duration::from_secs(3)));
    assert!(failures.is_empty(), "failures: {failures:?}");
    let total: u64 = servers.values().sum();
    let slow = servers.get("web-2").copied().unwrap_or(0);
    assert!(total > 300, "enough traffic to judge: {servers:?}");
    assert!(
        slow * 10 < total,
        "the slow pod got {slow} of {total}: {servers:?}"
    );
    for fast in ["web-0", "web-1"] {
        assert!(
            servers.get(fast).copied().unwrap_or(0) * 4 > total,
            "{fast} carries its share: {servers:?}"
        );
    }
}

#[test]
fn a_server_pod_removed_from_the_endpoint_slice_under_load_fails_no_request() {
    let demo = demo("disc-remove", Duration::ZERO);
    let load = start_load(&demo.client, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1_500));
    write_service(demo.state.path(), &demo.servers[..2]);
    let (servers, failures) = finish_load(load);
    assert!(failures.is_empty(), "failures: {failures:?}");
    assert!(
        servers.contains_key("web-2"),
        "web-2 served before its removal: {servers:?}"
    );

    // After the change, web-2 gets nothing.
    let (after, failures) = finish_load(start_load(&demo.client, Duration::from_secs(1)));
    assert!(
        failures.is_empty() && !after.contains_key("web-2"),
        "{after:?} {failures:?}"
    );
}

#[test]
fn the_controller_stopped_under_load_fails_no_request() {
    let mut demo = demo("disc-ctl", Duration::ZERO);
    let load = start_load(&demo.client, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1_500));
    demo.controller.kill().expect("stop the controller");
    let _ = demo.controller.wait();
    let (servers, failures) = finish_load(load);
    assert!(failures.is_empty(), "failures: {failures:?}");
    assert_eq!(
        servers.len(),
        3,
        "every server pod kept serving: {servers:?}"
    );
}
