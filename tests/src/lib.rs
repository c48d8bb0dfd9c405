//! End-to-end tests of the mesh on network-namespace pods (see `tests/tests/`); this library holds their shared helpers.

pub mod capture;
pub mod fixtures;
pub mod h2raw;
pub mod kube;
pub mod mtls;
pub mod redis;
pub mod reliability;
pub mod state;
pub mod web_mesh;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::{service_yaml, Pod};
use tokio::io::AsyncWriteExt as _;

/// How long a helper waits for a connection, a read or a server to come up.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The name the client pods call the web service by.
pub const SERVICE: &str = "web-svc.demo.svc.cluster.local";
/// The web service's ClusterIP.
pub const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
/// The web app's port: the web service's port 80 goes there.
pub const APP_PORT: u16 = 8080;
/// The identity of service account `web` in `demo`.
pub const WEB_ID: &str = "web.demo.serviceaccount.identity.mesh.cluster.local";
/// The identity of service account `client` in `demo`.
pub const CLIENT_ID: &str = "client.demo.serviceaccount.identity.mesh.cluster.local";

/// The Service `web-svc` ([`CLUSTER_IP`], port 80 → [`APP_PORT`]) with the pod `web` as its one
/// endpoint.
pub fn web_service(web: &Pod) -> String {
    service_yaml(
        "demo",
        "web-svc",
        CLUSTER_IP.into(),
        (80, APP_PORT),
        &[("app", "web")],
        std::slice::from_ref(web),
    )
}

/// Lets the application of `client` call [`SERVICE`] by name: a hosts entry for it and a route
/// to the service range.
pub fn reach_service_by_name(client: &Pod) -> anyhow::Result<()> {
    client.set_hosts(&[(IpAddr::from(CLUSTER_IP), SERVICE)])?;
    client.route("10.96.0.0/12")
}

/// `GET path` over HTTP/1.1 with `Host: host`, the `extra` header lines (each ending in `\r\n`)
/// and `Connection: close`.
pub fn http_get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

/// Sends `request` (raw HTTP/1.1 with `Connection: close`, see [`http_get`]) to `addr` from
/// inside `pod` and returns the whole response.
pub fn raw_request(pod: &Pod, addr: SocketAddr, request: String) -> anyhow::Result<String> {
    pod.run_in(move || {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
    .join()
    .expect("request thread")
}

/// The sum of the values of the metric lines of `metrics` that start with `name` and contain
/// all of `must_contain`, as a whole number (0 when there is none).
pub fn metric_sum(metrics: &str, name: &str, must_contain: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|s| l.contains(s)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// TCP servers in a pod that answer every connection with one line, their marker, and close.
///
/// Dropping it stops the servers and joins their thread.
pub struct Markers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts marker servers in `pod`, one per `(address, marker)`, and returns once all listen.
///
/// ```no_run
/// # fn demo(pod: &mesh_cli::local::Pod) -> anyhow::Result<()> {
/// let _servers = mesh_tests::serve_markers(pod, &[("0.0.0.0:80".parse()?, "server")])?;
/// assert_eq!(mesh_tests::read_marker(pod, "127.0.0.1:80".parse()?)?, "server");
/// # Ok(()) }
/// ```
pub fn serve_markers(pod: &Pod, listeners: &[(SocketAddr, &str)]) -> anyhow::Result<Markers> {
    let listeners: Vec<(SocketAddr, String)> = listeners
        .iter()
        .map(|(addr, marker)| (*addr, format!("{marker}\n")))
        .collect();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            for (addr, marker) in listeners {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                tokio::spawn(async move {
                    while let Ok((mut stream, _)) = listener.accept().await {
                        // A client that went away early is not the server's problem.
                        let _ = stream.write_all(marker.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
            // The receiver only goes away when the caller gave up waiting.
            let _ = ready_tx.send(());
            // Stop when told to, or when the handle is gone.
            let _ = stop_rx.await;
            Ok(())
        })
    });
    let mut markers = Markers {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    if ready_rx.recv_timeout(TIMEOUT).is_err() {
        // The thread ended (bind failed) or hangs: report what it says.
        return Err(markers
            .join()
            .err()
            .unwrap_or_else(|| anyhow!("marker servers in pod {} did not start", pod.name)));
    }
    Ok(markers)
}

/// Connects from inside `pod` to `addr` and returns the line it answers, trimmed.
pub fn read_marker(pod: &Pod, addr: SocketAddr) -> anyhow::Result<String> {
    pod.run_in(move || {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.trim().to_string())
    })
    .join()
    .map_err(|_| anyhow!("client thread panicked"))?
    .with_context(|| format!("reading a marker from {addr} in pod {}", pod.name))
}

/// Starts the test application ([`fixtures::named_app`]) in `pod` on `0.0.0.0:port`, naming
/// itself `name`, every answer `delay` late; returns once it listens. It serves until the
/// process ends.
pub fn serve_app(
    pod: &Pod,
    port: u16,
    delay: Duration,
    name: &str,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let name = name.to_string();
    let (up, is_up) = mpsc::channel();
    let thread = pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            fixtures::named_app(SocketAddr::from(([0, 0, 0, 0], port)), delay, Some(&name)).await;
            let _ = up.send(());
            std::future::pending::<()>().await;
            Ok(())
        })
    });
    is_up
        .recv_timeout(TIMEOUT)
        .map_err(|_| anyhow!("the app in pod {} did not start on port {port}", pod.name))?;
    Ok(thread)
}

/// `mesh-load` running in a pod (see `src/bin/mesh-load.rs`).
pub struct Load(std::process::Child);

/// What a `mesh-load` run saw: answers per server, and failures by reason.
#[derive(Debug)]
pub struct LoadResult {
    pub servers: std::collections::BTreeMap<String, u64>,
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Requests sent (in the open loop: due), each either answered or failed.
    pub sent: u64,
    /// Latency percentiles of the answered requests, ms: p50, p99, max.
    pub latency_ms: [f64; 3],
    /// When the failures happened, ms after the start, with their reasons (the first 1,000).
    pub failed_at_ms: Vec<(u64, String)>,
}

impl LoadResult {
    /// Requests answered 200.
    pub fn answered(&self) -> u64 {
        self.servers.values().sum()
    }

    /// Requests that failed.
    pub fn lost(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The failures as one line: `3 (failed: status 503 ×2, failed: connect ×1; at 1200–1450 ms)`,
    /// or `0`.
    pub fn losses(&self) -> String {
        if self.lost() == 0 {
            return "0".into();
        }
        let reasons: Vec<String> = self
            .failures
            .iter()
            .map(|(reason, n)| format!("{reason} ×{n}"))
            .collect();
        let first = self.failed_at_ms.first().map(|f| f.0).unwrap_or(0);
        let last = self.failed_at_ms.last().map(|f| f.0).unwrap_or(0);
        format!(
            "{} ({}; at {first}–{last} ms)",
            self.lost(),
            reasons.join(", ")
        )
    }
}

impl Load {
    /// Starts `mesh_load` (the binary's path: `env!("CARGO_BIN_EXE_mesh-load")` in a test) in
    /// `pod`, calling `url` on `concurrency` connections for `duration`.
    pub fn start(
        pod: &Pod,
        mesh_load: &str,
        url: &str,
        concurrency: usize,
        duration: Duration,
    ) -> anyhow::Result<Load> {
        let child = pod
            .command(mesh_load)
            .arg(url)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--duration-ms", &duration.as_millis().to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting mesh-load")?;
        Ok(Load(child))
    }

    /// Starts `mesh_load` in `pod` as an open loop: a GET of `url` every 1/`rate` s for
    /// `duration`, on up to `connections` connections; the requests still unanswered 5 s after
    /// the end count as lost.
    pub fn start_rate(
        pod: &Pod,
        mesh_load: &str,
        url: &str,
        rate: u32,
        connections: usize,
        duration: Duration,
    ) -> anyhow::Result<Load> {
        let child = pod
            .command(mesh_load)
            .arg(url)
            .args(["--rate", &rate.to_string()])
            .args(["--concurrency", &connections.to_string()])
            .args(["--duration-ms", &duration.as_millis().to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting mesh-load")?;
        Ok(Load(child))
    }

    /// Waits for the run to end and reads its report.
    pub fn finish(self) -> anyhow::Result<LoadResult> {
        let out = self.0.wait_with_output().context("waiting for mesh-load")?;
        let stdout = success(out).context("mesh-load")?;
        let json: serde_json::Value =
            serde_json::from_str(&stdout).context("mesh-load prints JSON")?;
        let map = |key: &str| {
            json[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let latency = |p: &str| json["latency_ms"][p].as_f64().unwrap_or(0.0);
        Ok(LoadResult {
            servers: map("servers"),
            failures: map("failures"),
            sent: json["sent"].as_u64().unwrap_or(0),
            latency_ms: [latency("p50"), latency("p99"), latency("max")],
            failed_at_ms: serde_json::from_value(json["failed_at_ms"].clone()).unwrap_or_default(),
        })
    }
}

/// The pod's nat table as `iptables-save -t nat` prints it, without comments and counters, so
/// two saves of the same rules compare equal.
pub fn nat_table(pod: &Pod) -> anyhow::Result<String> {
    let output = pod.command("iptables-save").args(["-t", "nat"]).output()?;
    let stdout = success(output).context("iptables-save -t nat")?;
    Ok(stdout
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.rfind(" [") {
            Some(at) if line.starts_with(':') => format!("{} [0:0]", &line[..at]),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The stdout of a command that must have succeeded; otherwise an error with its stderr.
pub fn success(output: Output) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// === impl Markers ===

impl Markers {
    fn join(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            // The server may have ended already.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("marker server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        if let Err(err) = self.join() {
            eprintln!("marker servers: {err:#}");
        }
    }
}
