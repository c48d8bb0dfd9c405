//! The pod harness itself (`mesh_cli::local`): pods reach each other and nothing else, commands and
//! threads run inside pods, `mesh()` starts and watches a proxy, and a cluster cleans up after itself.
//! These tests need root.

use std::cell::RefCell;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_cli::local::{self, Cluster, MeshOptions, Signal, PROXY_UID};
use mesh_tests::{nat_table, read_marker, serve_markers, success, TIMEOUT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn root() {
    local::require_root().expect("these tests build network namespaces");
}

fn namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Whether `child` exits within [`TIMEOUT`]. A killed process leaves its namespace a moment
/// before its parent can reap it, so this polls.
fn exits(child: &mut std::process::Child) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn pods_reach_each_other_across_the_bridge() {
    root();
    let mut cluster = Cluster::new("reach").expect("cluster");
    let a = cluster.add_pod("a").expect("pod a");
    let b = cluster.add_pod("b").expect("pod b");
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.ip.octets()[..2], [10, 244]);

    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server = a.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
            bound_tx.send(())?;
            let (mut stream, peer) = listener.accept().await?;
            let mut hello = [0; 8];
            stream.read_exact(&mut hello).await?;
            stream.write_all(b"hello b\n").await?;
            anyhow::ensure!(&hello == b"hello a\n", "unexpected greeting {hello:?}");
            Ok(peer)
        })
    });
    bound_rx
        .recv_timeout(TIMEOUT)
        .expect("server in pod a listens");

    let target = SocketAddr::from((a.ip, 8080));
    let answer = b
        .run_in(move || {
            let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(b"hello a\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })
        .join()
        .expect("client thread")
        .expect("client in pod b talks to pod a");
    assert_eq!(answer, "hello b\n");
    let peer = server.join().expect("server thread").expect("server");
    assert_eq!(peer.ip(), b.ip, "pod a sees pod b's own address");
}

#[test]
fn pods_have_no_route_off_the_pod_network() {
    root();
    let mut cluster = Cluster::new("isolated").expect("cluster");
    let pod = cluster.add_pod("a").expect("pod");

    let routes = success(
        pod.command("ip")
            .args(["-4", "route", "show"])
            .output()
            .expect("ip"),
    )
    .expect("ip route");
    assert_eq!(
        routes.lines().map(str::trim).collect::<Vec<_>>(),
        [format!(
            "10.244.0.0/16 dev eth0 proto kernel scope link src {}",
            pod.ip
        )],
        "only the pod network is routed"
    );
    let links = success(
        pod.command("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip"),
    )
    .expect("ip link");
    assert_eq!(links.lines().count(), 2, "only lo and eth0:\n{links}");

    // TEST-NET-1 (RFC 5737): no route, so the kernel refuses before anything is sent.
    let outside = SocketAddr::from(([192, 0, 2, 1], 80));
    let (err, elapsed) = pod
        .run_in(move || {
            let start = Instant::now();
            let result = TcpStream::connect_timeout(&outside, TIMEOUT);
            Ok((result.err(), start.elapsed()))
        })
        .join()
        .expect("client thread")
        .expect("client");
    let err = err.expect("connecting off the pod network fails");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
    assert!(
        elapsed < Duration::from_secs(1),
        "failed at once, took {elapsed:?}"
    );
}

#[test]
fn commands_run_inside_the_pod_as_root_or_as_a_user() {
    root();
    let mut cluster = Cluster::new("commands").expect("cluster");
    let pod = cluster.add_pod("a").expect("pod");

    let addr = success(
        pod.command("ip")
            .args(["-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .expect("ip"),
    )
    .expect("ip addr");
    assert!(addr.contains(&format!("inet {}/16", pod.ip)), "{addr}");

    let id = success(pod.command_as(PROXY_UID, "id").output().expect("id")).expect("id");
    assert_eq!(id.trim(), "uid=2102 gid=2102 groups=2102");
    let caps = success(
        pod.command_as(PROXY_UID, "grep")
            .args(["^CapEff", "/proc/self/status"])
            .output()
            .expect("grep"),
    )
    .expect("grep");
    assert_eq!(
        caps.trim(),
        "CapEff:\t0000000000000000",
        "no capabilities left"
    );
}

#[test]
fn dropping_the_cluster_kills_its_processes_and_removes_its_namespaces() {
    root();
    let mut cluster = Cluster::new("drop").expect("cluster");
    let a = cluster.add_pod("a").expect("pod a");
    let b = cluster.add_pod("b").expect("pod b");
    let mut sleeper = a
        .command("sleep")
        .arg("600")
        .spawn()
        .expect("sleep in pod a");
    let log_dir = cluster.log_dir().to_path_buf();
    let ours = [
        cluster.bridge_netns().to_string(),
        a.netns.clone(),
        b.netns.clone(),
    ];
    assert!(ours.iter().all(|ns| namespaces().contains(ns)));
    assert!(log_dir.is_dir());

    drop(cluster);

    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|ns| ours.contains(ns))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        exits(&mut sleeper),
        "the sleeper was killed with the cluster"
    );
    assert!(
        !log_dir.exists(),
        "log folder {} removed",
        log_dir.display()
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    root();
    let made = RefCell::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut cluster = Cluster::new("panic").expect("cluster");
        let pod = cluster.add_pod("a").expect("pod");
        made.borrow_mut().push(pod.netns.clone());
        made.borrow_mut().push(cluster.bridge_netns().to_string());
        panic!("a test fails while it owns a cluster");
    }));
    assert!(result.is_err());
    let made = made.into_inner();
    assert_eq!(made.len(), 2);
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|ns| made.contains(ns))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_new_cluster_removes_namespaces_left_by_a_crashed_run() {
    root();
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        success(out).unwrap_or_else(|err| panic!("ip {args:?}: {err:#}"))
    };
    // A "crashed run": a namespace named after a process that is alive while the namespace is
    // set up (so that the clusters of tests running in parallel leave it alone), then dies.
    let mut creator = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep");
    let stale = format!("mesh-{}-0-crashed", creator.id());
    let ours = format!("mesh-{}-999999-alive", std::process::id());
    ip(&["netns", "add", &stale]);
    ip(&["netns", "add", &ours]);
    let mut leftover = std::process::Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "600"])
        .spawn()
        .expect("sleep in the stale namespace");
    let deadline = Instant::now() + TIMEOUT;
    while ip(&["netns", "pids", &stale]).trim().is_empty() {
        assert!(Instant::now() < deadline, "sleep never entered {stale}");
        std::thread::sleep(Duration::from_millis(10));
    }
    creator.kill().expect("kill");
    creator.wait().expect("reap");

    // Any new cluster (this one, or one of a test running in parallel) removes it.
    let _cluster = Cluster::new("fresh").expect("cluster");

    let names = namespaces();
    assert!(!names.contains(&stale), "{stale} removed");
    assert!(exits(&mut leftover), "the leftover process was killed");
    assert!(names.contains(&ours), "a live process's namespace stays");
    ip(&["netns", "delete", &ours]);
}

#[test]
fn mesh_runs_the_real_proxy_and_the_pods_traffic_goes_through_it() {
    root();
    let mut cluster = Cluster::new("real-proxy").expect("cluster");
    let client = cluster.add_pod("client").expect("client pod");
    let server = cluster.add_pod("server").expect("server pod");
    let _app = serve_markers(&server, &[(([0, 0, 0, 0], 80).into(), "server app")])
        .expect("app in the server pod");
    let options = MeshOptions {
        // The marker server speaks first: skip protocol detection.
        env: vec![("MESH_PROXY_OUTBOUND_OPAQUE_PORTS".into(), "80".into())],
        ..MeshOptions::default()
    };
    let mut proxy = client.mesh(options).expect("the client pod is meshed");

    assert_eq!(
        proxy.admin_get("/live").expect("admin"),
        (200, "live\n".into())
    );
    let app = SocketAddr::from((server.ip, 80));
    assert_eq!(
        read_marker(&client, app).expect("through the proxy"),
        "server app"
    );
    let (status, _metrics) = proxy.admin_get("/metrics").expect("admin");
    assert_eq!(status, 200);

    proxy.signal(Signal::SIGTERM).expect("signal");
    let status = proxy.wait_timeout(Duration::from_secs(10)).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        proxy.log()
    );
    // With the proxy gone the redirect leads nowhere: the connection above went through it.
    let err = read_marker(&client, app).expect_err("no proxy, no connection");
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
}

// === mesh() with a stand-in proxy ===
//
// These drive `Pod::mesh` with a small Python program in place of `mesh-proxy`, so they test the
// harness (mesh-init, the proxy's user and environment, its log, the readiness wait, signals) and
// not the proxy.

/// Writes an executable stand-in proxy into the cluster's log folder (readable by the proxy user).
fn stand_in(cluster: &Cluster, name: &str, body: &str) -> PathBuf {
    let path = cluster.log_dir().join(name);
    std::fs::write(&path, format!("#!/usr/bin/python3\n{body}")).expect("write stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Serves `GET /ready` → 200 on the admin port and reports who it runs as; exits on SIGTERM.
const READY_PROXY: &str = r#"
import http.server, os, signal, sys
print(f"uid={os.getuid()} log={os.environ.get('MESH_PROXY_LOG')} extra={os.environ.get('MESH_PROXY_EXTRA')}", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(b"ready\n")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 4191), Ready).serve_forever()
"#;

fn python(path: &Path) -> MeshOptions {
    MeshOptions {
        proxy_program: Some(path.to_path_buf()),
        ..MeshOptions::default()
    }
}

#[test]
fn mesh_runs_init_then_the_proxy_as_its_user_until_ready() {
    root();
    let mut cluster = Cluster::new("mesh").expect("cluster");
    let pod = cluster.add_pod("a").expect("pod");
    let program = stand_in(&cluster, "ready-proxy", READY_PROXY);
    let mut opts = python(&program);
    opts.env = vec![("MESH_PROXY_EXTRA".into(), "yes".into())];
    opts.skip_inbound_ports = vec![22];
    let mut proxy = pod.mesh(opts).expect("meshed");

    assert_eq!(
        proxy.admin_get("/ready").expect("admin"),
        (200, "ready\n".into())
    );
    assert_eq!(proxy.admin_get("/nope").expect("admin").0, 404);
    let nat = nat_table(&pod).expect("nat table");
    assert!(nat.contains("-A OUTPUT -j MESH_OUTBOUND"), "{nat}");
    assert!(nat.contains("--dport 22 -j RETURN"), "{nat}");
    assert!(
        proxy.log().contains("uid=2102 log=warn extra=yes"),
        "{}",
        proxy.log()
    );

    proxy.signal(Signal::SIGTERM).expect("signal");
    let status = proxy
        .wait_timeout(TIMEOUT)
        .expect("wait")
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(7));
    assert!(
        proxy.signal(Signal::SIGTERM).is_err(),
        "no signals to a reaped pid"
    );
}

#[test]
fn mesh_reports_a_proxy_that_exits_early_with_its_log() {
    root();
    let mut cluster = Cluster::new("early").expect("cluster");
    let pod = cluster.add_pod("a").expect("pod");
    let program = stand_in(
        &cluster,
        "failing-proxy",
        "import sys\nprint('MESH_PROXY_FOO: expected a duration', file=sys.stderr)\nsys.exit(2)\n",
    );
    let err = pod.mesh(python(&program)).expect_err("the proxy fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exited (exit status: 2) before it was ready"),
        "{msg}"
    );
    assert!(msg.contains("MESH_PROXY_FOO: expected a duration"), "{msg}");
}

#[test]
fn mesh_gives_up_on_a_proxy_that_never_gets_ready() {
    root();
    let mut cluster = Cluster::new("slow").expect("cluster");
    let pod = cluster.add_pod("a").expect("pod");
    let program = stand_in(
        &cluster,
        "silent-proxy",
        "import time\nprint('starting', flush=True)\ntime.sleep(600)\n",
    );
    let start = Instant::now();
    let opts = MeshOptions {
        ready_timeout: Duration::from_millis(500),
        ..python(&program)
    };
    let err = pod.mesh(opts).expect_err("never ready");
    let msg = format!("{err:#}");
    assert!(msg.contains("not ready after 500ms"), "{msg}");
    assert!(
        msg.contains("connection refused") || msg.contains("Connection refused"),
        "{msg}"
    );
    assert!(msg.contains("starting"), "the log tail: {msg}");
    assert!(start.elapsed() < TIMEOUT, "took {:?}", start.elapsed());
    // The failed proxy was killed: nothing is left in the pod.
    let left = std::process::Command::new("ip")
        .args(["netns", "pids", &pod.netns])
        .output()
        .expect("ip netns pids");
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}
