//! Handshakes per second of the inbound listener: fresh mutual-TLS connections (no session
//! resumption) from the unmeshed client pod to the mTLS server pod's proxy, against the same
//! handshakes to a bare rustls server in the plain server pod (the baseline: the TLS work alone,
//! same keys, same verification, no proxy).
//!
//! Each connection completes the handshake with a mesh client certificate, sends close_notify
//! and reads until the server closes, so the server's verification of the client certificate is
//! inside the measured time. Behind the proxy the (empty) connection is then forwarded to the
//! application, which the baseline does not do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use mesh_api::identity::{ca, Identity};
use mesh_cli::local::{Pod, TRUST_DOMAIN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::resources::{Meter, Watched};
use crate::testbed::Testbed;

/// The baseline TLS server's port in the plain server pod.
const BASELINE_PORT: u16 = 8443;
/// Connections in flight at once.
const CONCURRENCY: usize = 16;
/// A certificate's lifetime here: longer than any run.
const LIFETIME: Duration = Duration::from_secs(86_400);

/// The handshake part's results.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Results {
    pub concurrency: usize,
    pub seconds_per_round: f64,
    pub rounds: usize,
    pub rows: Vec<Row>,
}

/// One target's median round.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub target: String,
    pub handshakes_per_second: f64,
    pub failed: u64,
    /// CPU time of the proxy per 1,000 handshakes (user + system), when a proxy was measured.
    pub proxy_cpu_s_per_1k: Option<f64>,
}

/// One round against one target.
struct Round {
    per_second: f64,
    failed: u64,
    cpu_s_per_1k: Option<f64>,
}

/// Measures `rounds` interleaved rounds of `duration` against the proxy and the baseline.
pub fn run(
    testbed: &Testbed,
    duration: Duration,
    rounds: usize,
    clock_ticks: u64,
) -> anyhow::Result<Results> {
    let (client, server_mtls, proxy, plain, control) = testbed.handshake_pods();
    let server_id = Identity::new("server", "bench", TRUST_DOMAIN)?;
    let client_id = Identity::new("client", "bench", TRUST_DOMAIN)?;
    let anchors = ca::certs_from_pem(control.trust_anchors_pem(), "trust anchors")?;
    let (client_chain, client_key) = control.issue(&client_id, LIFETIME)?;
    let (server_chain, server_key) = control.issue(&server_id, LIFETIME)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for anchor in &anchors {
        roots.add(anchor.clone())?;
    }
    let roots = Arc::new(roots);
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain(&client_chain)?, key(&client_key)?)?;
    // Every connection a full handshake.
    client_config.resumption = rustls::client::Resumption::disabled();
    let client_config = Arc::new(client_config);

    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()?;
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&server_chain)?, key(&server_key)?)?;
    server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let _baseline = serve_baseline(plain, Arc::new(server_config))?;
    // Thousands of new connections a second from one pod: let it reuse ports in TIME_WAIT and
    // use the whole port range, or later rounds measure port exhaustion instead of TLS.
    let sysctl = client
        .command("sysctl")
        .args([
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ])
        .status()
        .context("running sysctl in the client pod")?;
    if !sysctl.success() {
        anyhow::bail!("sysctl in the client pod failed ({sysctl})");
    }

    let targets = [
        (
            "mesh-proxy inbound",
            SocketAddr::from((server_mtls.ip, crate::server::PORT)),
            Some(Watched {
                name: "server proxy".into(),
                pid: proxy.pid(),
            }),
        ),
        (
            "rustls server (baseline)",
            SocketAddr::from((plain.ip, BASELINE_PORT)),
            None,
        ),
    ];
    let mut measured: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (name, addr, watched)) in targets.iter().enumerate() {
            let watched: Vec<Watched> = watched.iter().cloned().collect();
            let meter = Meter::start(clock_ticks, &watched)?;
            let (ok, failed, seconds) = drive(
                client,
                *addr,
                server_id.dns_name(),
                client_config.clone(),
                duration,
            )
            .with_context(|| format!("{name}, round {}", round + 1))?;
            let metered = meter.finish()?;
            let cpu = metered
                .usage
                .first()
                .map(|u| u.cpu_seconds / (ok.max(1) as f64) * 1_000.0);
            eprintln!(
                "mesh-bench: handshakes to {name:<26} round {}: {:>6.0}/s, {failed} failed",
                round + 1,
                ok as f64 / seconds
            );
            if ok == 0 {
                anyhow::bail!("no handshake to {name} succeeded ({failed} failed)");
            }
            measured[i].push(Round {
                per_second: ok as f64 / seconds,
                failed,
                cpu_s_per_1k: cpu,
            });
        }
    }
    let rows = targets
        .iter()
        .zip(measured)
        .map(|((name, _, _), mut rounds)| {
            rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
            let median = &rounds[rounds.len() / 2];
            Row {
                target: name.to_string(),
                handshakes_per_second: median.per_second,
                failed: rounds.iter().map(|r| r.failed).sum(),
                proxy_cpu_s_per_1k: median.cpu_s_per_1k,
            }
        })
        .collect();
    Ok(Results {
        concurrency: CONCURRENCY,
        seconds_per_round: duration.as_secs_f64(),
        rounds,
        rows,
    })
}

fn chain(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(ca::certs_from_pem(pem, "a certificate chain")?)
}

fn key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    Ok(ca::key_from_pem(pem, "a private key")?)
}

/// The baseline: a rustls server in `pod` that completes the handshake, reads to the end and
/// closes. It runs until the process exits.
fn serve_baseline(
    pod: &Pod,
    config: Arc<rustls::ServerConfig>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let (up, is_up) = std::sync::mpsc::channel();
    let thread = pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], BASELINE_PORT)))
                    .await?;
            let _ = up.send(());
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            loop {
                let (io, _) = listener.accept().await?;
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(io).await {
                        let mut sink = Vec::new();
                        let _ = tls.read_to_end(&mut sink).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        })
    });
    is_up
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("the baseline TLS server did not start"))?;
    Ok(thread)
}

/// Runs [`CONCURRENCY`] handshake loops from `pod` against `addr` for `duration`: handshakes
/// completed, failed, and the seconds it took.
fn drive(
    pod: &Pod,
    addr: SocketAddr,
    server_name: String,
    config: Arc<rustls::ClientConfig>,
    duration: Duration,
) -> anyhow::Result<(u64, u64, f64)> {
    pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ok = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let connector = tokio_rustls::TlsConnector::from(config);
            let name = ServerName::try_from(server_name)?;
            let start = Instant::now();
            let deadline = start + duration;
            let mut tasks = Vec::new();
            for _ in 0..CONCURRENCY {
                let (ok, failed, connector, name) =
                    (ok.clone(), failed.clone(), connector.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let attempt = async {
                            let io = tokio::net::TcpStream::connect(addr).await?;
                            let mut tls = connector.connect(name.clone(), io).await?;
                            tls.shutdown().await?;
                            let mut sink = Vec::new();
                            tls.read_to_end(&mut sink).await?;
                            std::io::Result::Ok(())
                        };
                        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                            Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            for task in tasks {
                task.await?;
            }
            let seconds = start.elapsed().as_secs_f64();
            anyhow::Ok((
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                seconds,
            ))
        })
    })
    .join()
    .map_err(|_| anyhow!("the handshake thread panicked"))?
}

impl Results {
    /// The section of the report.
    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        use std::fmt::Write as _;
        writeln!(out, "### Mutual-TLS handshakes\n")?;
        writeln!(
            out,
            "Fresh connections (no session resumption) from the unmeshed client pod, each a full \
             TLS 1.3 handshake with a mesh client certificate (ECDSA P-256), close_notify, then \
             reading until the server closes; {} at once, {} s per round, the median of {} \
             interleaved rounds. The baseline is a bare rustls server with the same keys and \
             client verification; behind the proxy each connection is also forwarded (empty) to \
             the application.\n",
            self.concurrency, self.seconds_per_round, self.rounds
        )?;
        writeln!(
            out,
            "| target | handshakes/s | × baseline | failed | proxy CPU s / 1k handshakes |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|")?;
        let baseline = self.rows.last().map(|r| r.handshakes_per_second);
        for row in &self.rows {
            writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} |",
                row.target,
                row.handshakes_per_second,
                baseline.map_or("–".into(), |b| format!(
                    "{:.2}×",
                    row.handshakes_per_second / b
                )),
                row.failed,
                row.proxy_cpu_s_per_1k
                    .map_or("–".into(), |c| format!("{c:.3}")),
            )?;
        }
        writeln!(out)
    }
}
