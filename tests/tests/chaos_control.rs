//! Control-plane chaos under load (issue 17, "Chaos under load"): a control plane, two meshed
//! `web` pods behind `web-svc` and a meshed client that calls `web-svc` by name with `mesh-load`'s
//! open loop (`MESH_CHAOS_RATE` requests a second, default 2,000), while the control plane is
//! hurt: the destination controller and the identity controller crash and come back,
//! certificates live 10 s, and the identity controller switches to an issuer under a new trust
//! anchor. Every check's target is 0 requests lost. Needs root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mesh_api::identity::ca;
use mesh_cli::local::{require_root, Cluster, ControlOptions, ControlPlane, Pod, Proxy};
use mesh_tests::fixtures::eventually;
use mesh_tests::reliability::thousands;
use mesh_tests::web_mesh::{mesh_client, mesh_web, web_svc};
use mesh_tests::{
    http_get, metric_sum, raw_request, record, Load, LoadResult, APP_PORT, CLIENT_ID, CLUSTER_IP,
    SERVICE, WEB_ID,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const SECTION: &str = "Chaos under load";
/// How long each load runs.
const LOAD: Duration = Duration::from_secs(30);
/// When, after the load starts, the control plane is hurt.
const CHAOS_AT: Duration = Duration::from_secs(10);
/// The load's connections.
const CONNECTIONS: usize = 32;

/// The open loop's rate: `MESH_CHAOS_RATE`, default 2,000 requests a second.
fn rate() -> u32 {
    std::env::var("MESH_CHAOS_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(2_000)
}

struct Mesh {
    control: ControlPlane,
    webs: Vec<Pod>,
    web_proxies: Vec<Proxy>,
    client: Pod,
    client_proxy: Proxy,
    /// An unmeshed pod, for probes.
    probe: Pod,
    _apps: Vec<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    _cluster: Cluster,
}

/// The mesh of `tests/src/web_mesh.rs`, with certificates of `leaf_lifetime` and, with
/// `next_anchor`, proxies that trust a second anchor from the start.
fn mesh(name: &str, leaf_lifetime: Option<Duration>, next_anchor: bool) -> Mesh {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control_pod = cluster.add_pod("control").expect("control pod");
    let webs = vec![
        cluster.add_pod("web-1").expect("web-1"),
        cluster.add_pod("web-2").expect("web-2"),
    ];
    let client = cluster.add_pod("client").expect("client pod");
    let probe = cluster.add_pod("probe").expect("probe pod");
    let dir = tempfile::tempdir().expect("test folder");
    let mut control =
        ControlPlane::start(&control_pod, dir.path(), &ControlOptions { leaf_lifetime })
            .expect("control plane");
    if next_anchor {
        control
            .add_next_trust_anchor()
            .expect("a second trust anchor");
    }
    control
        .write("web-svc.yaml", &web_svc(&webs))
        .expect("service");
    let (apps, web_proxies) = webs.iter().map(|web| mesh_web(&control, web)).unzip();
    let client_proxy = mesh_client(&control, &client);
    let m = Mesh {
        control,
        webs,
        web_proxies,
        client,
        client_proxy,
        probe,
        _apps: apps,
        _dir: dir,
        _cluster: cluster,
    };
    // Both web pods answer before the load starts, so it measures the chaos, not the start.
    let answered_by = |web: &str| {
        let web = web.to_string();
        poll(Duration::from_secs(20), || {
            (0..20).any(|_| m.call().is_some_and(|by| by == web))
        })
    };
    for web in &m.webs {
        assert!(answered_by(&web.name), "{} never answers", web.name);
    }
    m
}

impl Mesh {
    /// One call from the client to `web-svc`: which web pod answered 200, if one did.
    fn call(&self) -> Option<String> {
        let response = raw_request(
            &self.client,
            SocketAddr::from((CLUSTER_IP, 80)),
            http_get("/", SERVICE, ""),
        )
        .ok()?;
        if !response.starts_with("HTTP/1.1 200") {
            return None;
        }
        response.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("server-addr")
                .then(|| value.trim().to_string())
        })
    }

    fn proxies(&self) -> Vec<(&'static str, &Proxy)> {
        proxy_list(&self.client_proxy, &self.web_proxies)
    }
}

/// Runs the open loop from `client` for [`LOAD`], doing `chaos` [`CHAOS_AT`] into it.
fn under_load(client: &Pod, chaos: impl FnOnce()) -> LoadResult {
    let start = Instant::now();
    let load = Load::start_rate(
        client,
        env!("CARGO_BIN_EXE_mesh-load"),
        &format!("http://{SERVICE}/"),
        rate(),
        CONNECTIONS,
        LOAD,
    )
    .expect("mesh-load starts");
    // Pacing the chaos into the load, not waiting for a condition.
    std::thread::sleep(CHAOS_AT);
    chaos();
    let result = load.finish().expect("mesh-load reports");
    ELAPSED.with(|e| e.set(start.elapsed()));
    result
}

thread_local! {
    /// How long the last [`under_load`] took until its last answer (at most the grace after
    /// the load's end): what the achieved rate is counted over.
    static ELAPSED: std::cell::Cell<Duration> = const { std::cell::Cell::new(LOAD) };
}

/// `identity_cert_refresh_total{result="ok"}` of `proxy`.
fn renewals(proxy: &Proxy) -> u64 {
    let (_, metrics) = proxy.admin_get("/metrics").expect("metrics");
    metric_sum(&metrics, "identity_cert_refresh_total", &["result=\"ok\""])
}

/// What each proxy's identity looks like: its identity metrics and the identity lines of its
/// log, for a failure's message.
fn identity_state(m: &Mesh) -> String {
    let mut out = String::new();
    for (name, proxy) in m.proxies() {
        let (_, metrics) = proxy.admin_get("/metrics").unwrap_or_default();
        out.push_str(&format!("--- {name} in {}:\n", proxy.pod().name));
        for line in metrics.lines().filter(|l| l.starts_with("identity_")) {
            out.push_str(line);
            out.push('\n');
        }
        let log = proxy.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("certificate") || l.contains("identity"))
            .collect();
        for line in lines.iter().rev().take(8).rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Polls `f` until it is true or `within` passes.
fn poll(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(eventually(within, || std::future::ready(f())))
}

/// The figure's load part: `2,000 req/s × 30 s (achieved 1,987 req/s, p99 12 ms): 60,000
/// sent, 0 lost`.
fn figure(result: &LoadResult, what: &str) -> String {
    let elapsed = ELAPSED.with(|e| e.get()).max(LOAD);
    let achieved = result.answered() as f64 / elapsed.as_secs_f64();
    format!(
        "{} req/s × {} s {what} (answered {} req/s over {:.1} s; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms): {} sent, {} lost",
        thousands(u64::from(rate())),
        LOAD.as_secs(),
        thousands(achieved.round() as u64),
        elapsed.as_secs_f64(),
        result.latency_ms[0],
        result.latency_ms[1],
        result.latency_ms[2],
        thousands(result.sent),
        result.losses(),
    )
}

/// The tests of this file load the machine (2,000 requests a second, or 10,000 connections)
/// and measure what it does: one at a time, also under a plain `cargo test`.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn destination_controller_restart_under_load_loses_nothing() {
    let _serial = serial();
    let mut m = mesh("chaos-dst", None, false);
    let outage = Duration::from_secs(5);
    let result = under_load(&m.client, || {
        m.control
            .restart_destination(outage)
            .expect("the destination controller restarts")
    });
    // The proxies reconnected: a change made after the restart reaches the client's proxy.
    m.control
        .write("web-svc.yaml", &web_svc(&m.webs[..1]))
        .expect("service");
    let only_web_1 = poll(Duration::from_secs(20), || {
        (0..10).all(|_| m.call().is_some_and(|by| by == m.webs[0].name))
    });
    let passed = result.lost() == 0 && only_web_1;
    let figure = figure(
        &result,
        &format!(
            "with the destination controller killed and down {} s",
            outage.as_secs()
        ),
    );
    let figure = if only_web_1 {
        format!("{figure}; an endpoint change after the restart reached the client")
    } else {
        format!("{figure}; an endpoint change after the restart never reached the client")
    };
    assert!(
        record!(
            SECTION,
            "Destination controller restart",
            figure,
            "0 lost; proxies reconnect",
            passed
        ),
        "{result:?}"
    );
}

#[test]
fn identity_controller_restart_under_load_loses_nothing() {
    let _serial = serial();
    // Certificates of 20 s renew every ~14 s: the restart falls between renewals of every proxy,
    // the next renewal needs the restarted controller, and a 3 s outage leaves 6 s to spare.
    let mut m = mesh("chaos-id", Some(Duration::from_secs(20)), false);
    let outage = Duration::from_secs(3);
    let mut at_restart = Vec::new();
    let result = under_load(&m.client, || {
        m.control
            .restart_identity(outage)
            .expect("the identity controller restarts");
        at_restart = std::iter::once(&m.client_proxy)
            .chain(&m.web_proxies)
            .map(renewals)
            .collect();
    });
    let renewed_after = poll(Duration::from_secs(20), || {
        m.proxies()
            .iter()
            .zip(&at_restart)
            .all(|((_, p), before)| renewals(p) > *before)
    });
    let passed = result.lost() == 0 && renewed_after;
    let figure = format!(
        "{}; {} proxies renewed from the restarted controller",
        figure(
            &result,
            &format!(
                "with the identity controller killed and down {} s",
                outage.as_secs()
            )
        ),
        if renewed_after { "all" } else { "not all" }
    );
    assert!(
        record!(
            SECTION,
            "Identity controller restart",
            figure,
            "0 lost; proxies keep their certificates and renew after",
            passed
        ),
        "{result:?}"
    );
}

#[test]
fn certificates_of_ten_seconds_rotate_under_load_without_a_loss() {
    let _serial = serial();
    let m = mesh("chaos-rot", Some(Duration::from_secs(10)), false);
    let before: Vec<u64> = m.proxies().iter().map(|(_, p)| renewals(p)).collect();
    let result = under_load(&m.client, || {});
    let during: Vec<u64> = m
        .proxies()
        .iter()
        .zip(&before)
        .map(|((_, p), b)| renewals(p).saturating_sub(*b))
        .collect();
    let least = during.iter().copied().min().unwrap_or(0);
    let passed = result.lost() == 0 && least >= 2;
    let figure = figure(
        &result,
        &format!(
            "across {least}+ renewals of every proxy's 10 s certificate (client, web-1, web-2: {during:?})"
        ),
    );
    assert!(
        record!(
            SECTION,
            "Certificate rotation (10 s certificates)",
            figure,
            "0 lost; ≥ 2 renewals each",
            passed
        ),
        "{result:?}\n{}",
        identity_state(&m)
    );
}

#[test]
fn a_trust_anchor_rotation_under_load_loses_nothing_and_ends_on_the_new_anchor() {
    let _serial = serial();
    let mut m = mesh("chaos-ta", Some(Duration::from_secs(10)), true);
    let anchors = ca::certs_from_pem(m.control.trust_anchors_pem(), "the bundle").expect("pem");
    assert_eq!(
        anchors.len(),
        2,
        "the proxies trust the old and the new anchor"
    );
    let (old, new) = (anchors[0].clone(), anchors[1].clone());
    let pids: Vec<u32> = m.proxies().iter().map(|(_, p)| p.pid()).collect();
    let on = |control: &ControlPlane, probe: &Pod, proxies: &[(&str, &Proxy)], anchor| {
        proxies
            .iter()
            .filter(|(name, p)| chains_to(control, probe, p, name, anchor).is_ok())
            .count()
    };
    assert_eq!(
        on(&m.control, &m.probe, &m.proxies(), &old),
        3,
        "every proxy starts on the old anchor"
    );
    assert_eq!(
        on(&m.control, &m.probe, &m.proxies(), &new),
        0,
        "the probe tells the anchors apart"
    );
    // At 10 s into the load the identity controller switches; the proxies renew at 70 % of their
    // 10 s certificates, so every one should be on the new chain well before the load ends.
    let mut moved = None;
    let result = under_load(&m.client, || {
        m.control
            .rotate_issuer()
            .expect("the identity controller switches issuers");
        let switched = Instant::now();
        let proxies = proxy_list(&m.client_proxy, &m.web_proxies);
        let all = poll(LOAD - CHAOS_AT - Duration::from_secs(2), || {
            on(&m.control, &m.probe, &proxies, &new) == proxies.len()
        });
        moved = all.then(|| switched.elapsed());
    });
    let on_new = on(&m.control, &m.probe, &m.proxies(), &new);
    let on_old = on(&m.control, &m.probe, &m.proxies(), &old);
    let same_pids = m.proxies().iter().map(|(_, p)| p.pid()).collect::<Vec<_>>() == pids;
    let passed = result.lost() == 0 && moved.is_some() && on_new == 3 && on_old == 0 && same_pids;
    let moved = match moved {
        Some(after) => format!(
            "every proxy on the new anchor {:.1} s after the switch, under load",
            after.as_secs_f64()
        ),
        None => "not every proxy on the new anchor before the load ended".into(),
    };
    let figure =
        format!(
        "{}; {moved}; at the end {on_new} of 3 chain to the new anchor, {on_old} to the old; {}",
        figure(
            &result,
            "with the identity controller switched to an issuer under a new anchor",
        ),
        if same_pids { "no proxy restarted" } else { "a proxy restarted" },
    );
    assert!(
        record!(
            SECTION,
            "Trust-anchor rotation",
            figure,
            "0 lost; every proxy on the new anchor, none restarted",
            passed
        ),
        "{result:?}\n{}",
        identity_state(&m)
    );
}

/// The client's proxy, then the web pods'.
fn proxy_list<'a>(client: &'a Proxy, webs: &'a [Proxy]) -> Vec<(&'static str, &'a Proxy)> {
    let mut proxies = vec![(CLIENT_ID, client)];
    proxies.extend(webs.iter().map(|p| (WEB_ID, p)));
    proxies
}

/// Whether `proxy`'s certificate (for `name`) chains to `anchor`: a mutual-TLS handshake from
/// `probe` with the proxy's inbound port, trusting `anchor` alone, presenting a certificate of
/// the control plane's current issuer. (No admin endpoint or metric names the anchor.)
fn chains_to(
    control: &ControlPlane,
    probe: &Pod,
    proxy: &Proxy,
    name: &str,
    anchor: &CertificateDer<'static>,
) -> Result<(), String> {
    let addr = SocketAddr::from((proxy.pod().ip, APP_PORT));
    let (chain, key) = control
        .issue(
            &mesh_api::identity::Identity::new("probe", "demo", "cluster.local")
                .expect("an identity"),
            Duration::from_secs(60),
        )
        .expect("a probe certificate");
    let (anchor, name) = (anchor.clone(), name.to_string());
    probe
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(handshake(addr, &name, anchor, &chain, &key)))
        })
        .join()
        .map_err(|_| "the probe thread panicked".to_string())?
        .map_err(|e| format!("{e:#}"))?
}

/// A TLS 1.3 handshake with `addr` for `server_name`, trusting `anchor` alone.
async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    anchor: CertificateDer<'static>,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor).map_err(|e| e.to_string())?;
    let chain = ca::certs_from_pem(chain_pem, "chain").map_err(|e| e.to_string())?;
    let key: PrivateKeyDer<'static> =
        ca::key_from_pem(key_pem, "key").map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let attempt = async {
        let io = tokio::net::TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no handshake within 5 s".into()),
    }
}
