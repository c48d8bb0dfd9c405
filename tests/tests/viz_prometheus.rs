//! The viz metrics API against a real Prometheus (the Debian package) on the pod harness: a
//! client Deployment calls a two-pod web Deployment over mutual TLS with some failures;
//! Prometheus scrapes the proxies' admin ports every second (static targets labelled with
//! `namespace` and `pod`, as the cluster's kubernetes_sd relabeling does); `mesh-controller
//! metrics-api` reads it; and the shared stat and edges code fold its answer into the same
//! figures as the proxies' own scrapes. Needs root and `/usr/bin/prometheus`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::defaults::ADMIN_PORT;
use mesh_cli::local::{binary, require_root, Pod};
use mesh_tests::web_mesh::WebMesh;
use mesh_viz::model::{Kind, PodInfo, Workload};
use mesh_viz::source::{Direct, MetricsApi, MetricsSource as _, SourceError, Window};
use mesh_viz::stat::{stat, Measure, Scrapes, StatRow};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMETHEUS_PORT: u16 = 9090;
const METRICS_API_PORT: u16 = 8085;
const WAIT: Duration = Duration::from_secs(45);

struct Mesh {
    web: WebMesh,
    viz: Pod,
    pods: Vec<PodInfo>,
}

/// A process of the test in a pod, killed (and reaped) on drop.
struct Killed(Child, &'static str);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Fails with the tail of `log` if the process has exited.
    fn check_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.0.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited ({status}):\n{text}", self.1);
        }
    }
}

/// The web mesh, and an unmeshed `viz` pod for Prometheus and the metrics API.
fn mesh() -> Mesh {
    require_root().expect("end-to-end tests need root and network namespaces");
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} not found: this test runs the Debian package `prometheus` \
         (`apt-get install prometheus`; scripts/test installs it when run as root)"
    );
    let mut web = WebMesh::start("vizprom");
    let viz = web.cluster.add_pod("viz").expect("viz pod");
    let identity = |sa: &str| {
        Some(format!(
            "{sa}.demo.serviceaccount.identity.mesh.cluster.local"
        ))
    };
    let info = |pod: &Pod, deploy: &str, services: &[&str]| PodInfo {
        namespace: "demo".into(),
        name: pod.name.clone(),
        ip: Some(pod.ip.into()),
        owner: Workload::new(Kind::Deployment, "demo", deploy),
        services: services.iter().map(|s| s.to_string()).collect(),
        meshed: true,
        identity: identity(deploy),
        address: pod.ip.to_string(),
    };
    let pods = vec![
        info(&web.webs[0], "web", &["web-svc"]),
        info(&web.webs[1], "web", &["web-svc"]),
        info(&web.client, "client", &[]),
    ];
    Mesh { web, viz, pods }
}

/// Prometheus in the viz pod, scraping every proxy each second, each target labelled with its
/// pod's `namespace` and `pod`.
fn start_prometheus(mesh: &Mesh) -> (Killed, std::path::PathBuf) {
    let dir = mesh.web.dir.path().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).expect("prometheus folder");
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: mesh-proxy\n    static_configs:\n",
    );
    for pod in &mesh.pods {
        config.push_str(&format!(
            "      - targets: [\"{}:{ADMIN_PORT}\"]\n        labels: {{namespace: {}, pod: {}}}\n",
            pod.address, pod.namespace, pod.name
        ));
    }
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("prometheus config");
    let log = dir.join("prometheus.log");
    let child = mesh
        .viz
        .command(PROMETHEUS)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("prometheus log"))
        .spawn()
        .expect("start prometheus");
    let mut prometheus = Killed(child, "prometheus");
    let addr = SocketAddr::from((mesh.viz.ip, PROMETHEUS_PORT));
    if let Err(e) = mesh.viz.wait_http_ok(addr, "/-/ready", WAIT) {
        prometheus.check_running(&log);
        panic!("{e:#}");
    }
    (prometheus, log)
}

/// `mesh-controller metrics-api` in the viz pod, reading `prometheus_url`.
fn start_metrics_api(mesh: &Mesh, prometheus_url: &str, port: u16) -> (Killed, std::path::PathBuf) {
    let log = mesh.web.dir.path().join(format!("metrics-api-{port}.log"));
    let child = mesh
        .viz
        .command(binary("mesh-controller").expect("mesh-controller binary"))
        .arg("metrics-api")
        .arg(format!("--listen=0.0.0.0:{port}"))
        .arg(format!("--prometheus-url={prometheus_url}"))
        .arg("--query-timeout=2s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("metrics-api log"))
        .spawn()
        .expect("start mesh-controller metrics-api");
    let mut api = Killed(child, "mesh-controller metrics-api");
    let addr = SocketAddr::from((mesh.viz.ip, port));
    if let Err(e) = mesh.viz.wait_http_ok(addr, "/ready", WAIT) {
        api.check_running(&log);
        panic!("{e:#}");
    }
    (api, log)
}

/// Reads the samples of `pods` from the metrics API on `port`, from inside the viz pod.
fn read(viz: &Pod, port: u16, pods: &[PodInfo], window: Duration) -> Result<Window, SourceError> {
    let source = MetricsApi {
        api: Arc::new(Direct {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            timeout: Duration::from_secs(10),
        }),
    };
    let pods = pods.to_vec();
    viz.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(source.samples(&pods, window)))
    })
    .join()
    .expect("metrics API thread")
    .expect("runtime")
}

/// The stat rows of the Deployments `web` (inbound) and `client` (`--to deploy/web`).
fn rows(
    pods: &[PodInfo],
    before: Option<&Scrapes>,
    after: &Scrapes,
    window: f64,
) -> (StatRow, StatRow) {
    let web: Vec<PodInfo> = pods
        .iter()
        .filter(|p| p.owner.name == "web")
        .cloned()
        .collect();
    let client: Vec<PodInfo> = pods
        .iter()
        .filter(|p| p.owner.name == "client")
        .cloned()
        .collect();
    let web_row = stat(
        &[(web[0].owner.clone(), web.clone())],
        before,
        after,
        window,
        &Measure::Inbound,
    );
    let to_row = stat(
        &[(client[0].owner.clone(), client.clone())],
        before,
        after,
        window,
        &Measure::To(web),
    );
    (web_row[0].clone(), to_row[0].clone())
}

#[test]
fn the_metrics_api_answers_stat_from_prometheus() {
    let mesh = mesh();
    let (mut prometheus, prometheus_log) = start_prometheus(&mesh);
    let (mut api, api_log) = start_metrics_api(
        &mesh,
        &format!("http://127.0.0.1:{PROMETHEUS_PORT}"),
        METRICS_API_PORT,
    );

    let paths = [["/"; 6].to_vec(), ["/grpc/fail"; 2].to_vec()].concat();
    let answers = mesh.web.send(paths);
    let failed = answers
        .iter()
        .filter(|(_, g)| g.as_deref() == Some("2"))
        .count();
    assert_eq!((answers.len(), failed), (8, 2), "{answers:?}");

    // What the proxies themselves say, folded by the same code.
    let mut own = Scrapes::new();
    for (proxy, pod) in mesh.web.web_proxies.iter().zip(&mesh.pods) {
        let (status, body) = proxy.admin_get("/metrics").expect("scrape web proxy");
        assert_eq!(status, 200, "{body}");
        let samples = mesh_viz::prom::parse(&body).expect("parse scrape");
        own.insert((pod.namespace.clone(), pod.name.clone()), samples);
    }
    let (web_own, _) = rows(&mesh.pods, None, &own, 0.0);
    assert_eq!(
        (web_own.responses, web_own.success_rate),
        (8, Some(0.75)),
        "the proxies' own figures: {web_own:?}"
    );

    // Prometheus scrapes every second: poll until its figures catch up (bounded).
    let deadline = Instant::now() + WAIT;
    let (web, to, window) = loop {
        prometheus.check_running(&prometheus_log);
        api.check_running(&api_log);
        let last = match read(&mesh.viz, METRICS_API_PORT, &mesh.pods, Duration::ZERO) {
            Ok(window) => {
                let (web, to) = rows(&mesh.pods, None, &window.after, 0.0);
                if web.responses == web_own.responses && to.responses == web_own.responses {
                    break (web, to, window);
                }
                format!(
                    "web {web:?}, client --to web {to:?}, missing {:?}",
                    window.missing
                )
            }
            Err(e) => format!("{e}"),
        };
        assert!(
            Instant::now() < deadline,
            "the metrics API did not catch up with the proxies in {WAIT:?}; last: {last}\n\
             metrics-api log:\n{}",
            std::fs::read_to_string(&api_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(window.missing.is_empty(), "{:?}", window.missing);
    assert_eq!(window.before, None);
    assert_eq!(
        (web.responses, web.success_rate, web.meshed_pods, web.pods),
        (8, Some(0.75), 2, 2),
        "{web:?}"
    );
    assert_eq!(
        web.latency_ms_p50.is_some(),
        web_own.latency_ms_p50.is_some()
    );
    assert_eq!((to.responses, to.success_rate), (8, Some(0.75)), "{to:?}");

    // The same edges as the proxies' own scrapes would give: client → web, mutual TLS.
    let edges = mesh_viz::edges::edges(&mesh.pods, &window.after, Kind::Deployment);
    assert_eq!(edges.len(), 1, "{edges:?}");
    assert_eq!(
        (
            edges[0].src.name.as_str(),
            edges[0].dst.name.as_str(),
            edges[0].mtls
        ),
        ("client", "web", true),
        "{edges:?}"
    );
    assert_eq!(
        edges[0].server_id.as_deref(),
        Some("web.demo.serviceaccount.identity.mesh.cluster.local")
    );

    // A window reaching back before Prometheus started: nothing then, so all of it is new, and
    // there is a rate.
    let long = read(
        &mesh.viz,
        METRICS_API_PORT,
        &mesh.pods,
        Duration::from_secs(600),
    )
    .expect("samples over a window");
    assert_eq!(long.seconds, 600.0);
    let (web, _) = rows(&mesh.pods, long.before.as_ref(), &long.after, long.seconds);
    assert_eq!(
        (web.responses, web.success_rate),
        (8, Some(0.75)),
        "{web:?}"
    );
    assert!(web.rps.is_some(), "{web:?}");

    // A metrics API whose Prometheus is gone answers 503 with what to do next.
    drop(prometheus);
    let e =
        read(&mesh.viz, METRICS_API_PORT, &mesh.pods, Duration::ZERO).expect_err("no Prometheus");
    let message = e.to_string();
    assert!(
        matches!(e, SourceError::Unavailable(_))
            && message.contains("cannot reach Prometheus")
            && message.contains("mesh viz install"),
        "{message}"
    );
}
