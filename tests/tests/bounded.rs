//! Issue 13, "Caches that forget", end to end on pods: everything the proxy keys by a
//! destination (its stacks, resolutions and metric label sets) is dropped once the destination
//! has been idle for a while, so an application that calls 10,000 distinct addresses leaves the
//! proxy's `/metrics` and memory bounded. Needs root.
//!
//! A meshed client pod (no identity, no discovery, idle timeouts of 2 s) calls 10,000 distinct
//! `server:port` destinations where nothing listens, at a steady pace: every connection is
//! refused, so the proxy answers 502 (HTTP) or closes (opaque) at once. After the idle timeouts
//! the `target_addr` label values and the size of `/metrics` must be back near where they
//! started; a second burst of 10,000 new destinations must reuse the first burst's memory rather
//! than add to it. The figures go to RELIABILITY.md's "Resources" (issue 17).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use mesh_cli::local::{require_root, Cluster, MeshOptions, Pod, Proxy};
use mesh_tests::reliability::mb;
use mesh_tests::{fixtures::eventually, record, serve_app, TIMEOUT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long an unused destination's state and its metric label sets are kept.
const IDLE_TIMEOUT: &str = "2s";
/// How long the proxy gets to forget a burst after it ends.
const FORGET_DEADLINE: Duration = Duration::from_secs(30);
/// Distinct destinations per burst.
const DESTINATIONS: u16 = 10_000;
/// The first port of each burst's destinations on the server pod, where nothing listens.
const FIRST_BURST: u16 = 20_000;
const SECOND_BURST: u16 = 30_000;
/// Connections open at once during a burst.
const CONCURRENCY: usize = 64;
/// New destinations per second during a burst (12.5 s a burst). At full speed the number of
/// destinations the proxy holds at once (rate × idle timeout) would vary with the machine's
/// load from one burst to the next, and so would the memory they take; paced, both bursts hold
/// about as many, and their memory compares.
const PER_SECOND: u64 = 800;
/// Every this many destinations one gets an opaque connection rather than an HTTP request.
const OPAQUE_EVERY: u16 = 10;
/// The server pod's app, called once to warm the proxy up.
const APP_PORT: u16 = 8080;
/// How many `target_addr` values above the baseline an idle proxy may still show.
const TARGET_SLACK: usize = 3;
/// How much larger than twice the baseline an idle proxy's `/metrics` may be.
const METRICS_SLACK_BYTES: usize = 4 << 10;
/// How much the proxy's RSS may grow from the first idle period to the second: the larger of
/// these.
const RSS_SLACK_PERCENT: u64 = 20;
const RSS_SLACK_KB: u64 = 8 << 10;

#[test]
fn ten_thousand_destinations_leave_metrics_and_memory_bounded() {
    require_root().expect("end-to-end tests need root and network namespaces");
    let started = Instant::now();
    let mut cluster = Cluster::new("bounded").expect("cluster");
    let server = cluster.add_pod("server").expect("server pod");
    let client = cluster.add_pod("client").expect("client pod");
    let _app = serve_app(&server, APP_PORT, Duration::ZERO, "server").expect("server app");
    let env = [
        ("MESH_PROXY_DESTINATION_IDLE_TIMEOUT", IDLE_TIMEOUT),
        ("MESH_PROXY_METRICS_IDLE_TIMEOUT", IDLE_TIMEOUT),
        // The warm-up's pooled connection is state kept per endpoint too.
        ("MESH_PROXY_POOL_IDLE_TIMEOUT", IDLE_TIMEOUT),
    ];
    let proxy = client
        .mesh(MeshOptions {
            env: env.map(|(k, v)| (k.to_string(), v.to_string())).to_vec(),
            ..MeshOptions::default()
        })
        .expect("the client pod is meshed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Warm-up: one request that succeeds through the proxy, then the baseline.
    let (status, body) = client
        .http_get(SocketAddr::from((server.ip, APP_PORT)), "/")
        .expect("warm-up request through the proxy");
    assert_eq!((status, body.as_str()), (200, "hello"), "warm-up request");
    let baseline = Sample::take(&proxy);
    eprintln!("baseline:           {baseline}");

    let first = burst(&client, server.ip, FIRST_BURST);
    let after_first = Sample::take(&proxy);
    eprintln!("after first burst:  {after_first}  ({first})");
    assert!(
        after_first.targets.len() > baseline.targets.len(),
        "the burst's destinations never showed up in /metrics: {after_first}; the proxy's \
         log:\n{}",
        proxy.log()
    );

    let mut failures = Vec::new();
    let forgotten = |s: &Sample| {
        s.targets.len() <= baseline.targets.len() + TARGET_SLACK
            && s.metrics_bytes <= baseline.metrics_bytes * 2 + METRICS_SLACK_BYTES
    };
    let (idle_first, waited) = settle(&rt, &proxy, forgotten);
    eprintln!("first burst idle:   {idle_first}  (waited {waited:?})");
    check_forgotten(&mut failures, "first", &baseline, &idle_first);

    let second = burst(&client, server.ip, SECOND_BURST);
    let after_second = Sample::take(&proxy);
    eprintln!("after second burst: {after_second}  ({second})");

    let rss_bound =
        (idle_first.rss_kb * (100 + RSS_SLACK_PERCENT) / 100).max(idle_first.rss_kb + RSS_SLACK_KB);
    let (idle_second, waited) = settle(&rt, &proxy, |s| forgotten(s) && s.rss_kb <= rss_bound);
    eprintln!("second burst idle:  {idle_second}  (waited {waited:?})");
    check_forgotten(&mut failures, "second", &baseline, &idle_second);
    if idle_second.rss_kb > rss_bound {
        failures.push(format!(
            "the proxy's memory grew with the second burst instead of reusing the first's: \
             VmRSS {} kB after the first burst went idle, {} kB after the second (bound {} kB: \
             +{RSS_SLACK_PERCENT}% or +{} kB)",
            idle_first.rss_kb, idle_second.rss_kb, rss_bound, RSS_SLACK_KB
        ));
    }
    eprintln!("took {:?}", started.elapsed());
    record!(
        "Resources",
        "10,000 distinct outbound destinations, twice",
        format!(
            "target_addr values {} → {} after a burst → {} idle; /metrics {} → {} → {} bytes; \
             RSS {} → {} (first burst idle) → {} (second burst idle)",
            baseline.targets.len(),
            after_first.targets.len(),
            idle_second.targets.len(),
            baseline.metrics_bytes,
            after_first.metrics_bytes,
            idle_second.metrics_bytes,
            mb(baseline.rss_kb),
            mb(idle_first.rss_kb),
            mb(idle_second.rss_kb),
        ),
        format!(
            "forgotten when idle (≤ {TARGET_SLACK} values above the baseline, /metrics ≤ 2× + 4 \
             KiB); the second burst reuses the first's memory (RSS ≤ +{RSS_SLACK_PERCENT}% or \
             +8 MB)"
        ),
        failures.is_empty()
    );
    assert!(
        failures.is_empty(),
        "{} destinations per burst were not forgotten:\n- {}",
        DESTINATIONS,
        failures.join("\n- ")
    );
}

/// What the proxy holds at one moment: its `/metrics` and its memory.
struct Sample {
    metrics_bytes: usize,
    metrics_lines: usize,
    /// The distinct `target_addr` label values in `/metrics`.
    targets: HashSet<String>,
    /// The distinct `authority` label values in `/metrics`.
    authorities: HashSet<String>,
    /// `VmRSS` of the proxy's process, in kB.
    rss_kb: u64,
}

impl Sample {
    /// Reads the proxy's memory first, so that rendering a large `/metrics` does not count.
    fn take(proxy: &Proxy) -> Sample {
        let rss_kb = rss_kb(proxy.pid());
        let (status, metrics) = proxy.admin_get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics: {metrics}");
        Sample {
            metrics_bytes: metrics.len(),
            metrics_lines: metrics.lines().count(),
            targets: label_values(&metrics, "target_addr"),
            authorities: label_values(&metrics, "authority"),
            rss_kb,
        }
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/metrics {} bytes, {} lines, {} target_addr, {} authority; VmRSS {} kB",
            self.metrics_bytes,
            self.metrics_lines,
            self.targets.len(),
            self.authorities.len(),
            self.rss_kb
        )
    }
}

/// Polls the proxy until `done` holds for a sample or [`FORGET_DEADLINE`] passes; returns the
/// last sample and how long it waited.
fn settle(
    rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    done: impl Fn(&Sample) -> bool,
) -> (Sample, Duration) {
    let start = Instant::now();
    let mut last = None;
    rt.block_on(eventually(FORGET_DEADLINE, || {
        let sample = Sample::take(proxy);
        let ok = done(&sample);
        last = Some(sample);
        async move { ok }
    }));
    // `eventually` calls its closure at least once.
    (last.expect("sampled at least once"), start.elapsed())
}

/// Adds to `failures` what an idle proxy still shows of the burst `which`.
fn check_forgotten(failures: &mut Vec<String>, which: &str, baseline: &Sample, idle: &Sample) {
    let kept: Vec<&String> = idle.targets.difference(&baseline.targets).collect();
    if idle.targets.len() > baseline.targets.len() + TARGET_SLACK {
        failures.push(format!(
            "{FORGET_DEADLINE:?} after the {which} burst, /metrics still has {} distinct \
             target_addr values (baseline {}, at most {TARGET_SLACK} more allowed), e.g. {:?}",
            idle.targets.len(),
            baseline.targets.len(),
            kept.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let bound = baseline.metrics_bytes * 2 + METRICS_SLACK_BYTES;
    if idle.metrics_bytes > bound {
        failures.push(format!(
            "{FORGET_DEADLINE:?} after the {which} burst, /metrics is {} bytes in {} lines \
             (baseline {} bytes in {} lines, bound {bound} bytes)",
            idle.metrics_bytes, idle.metrics_lines, baseline.metrics_bytes, baseline.metrics_lines
        ));
    }
}

/// What a burst's connections saw, by outcome.
struct Outcomes {
    tally: BTreeMap<String, u64>,
    took: Duration,
}

impl fmt::Display for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DESTINATIONS} destinations in {:?}: ", self.took)?;
        let outcomes: Vec<String> = self
            .tally
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        write!(f, "{}", outcomes.join(", "))
    }
}

/// From inside `client`, one connection to each of the [`DESTINATIONS`] ports from `first` on
/// `ip`, [`PER_SECOND`] new ones a second and at most [`CONCURRENCY`] at a time: an HTTP/1.1
/// request on most, opaque bytes on every [`OPAQUE_EVERY`]th. Fails unless the proxy answered
/// every one.
fn burst(client: &Pod, ip: Ipv4Addr, first: u16) -> Outcomes {
    let outcomes = client
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let start = Instant::now();
            let tally = rt.block_on(async move {
                let mut tally = BTreeMap::new();
                let paced_from = tokio::time::Instant::now();
                let mut calls = futures_util::stream::iter(first..first + DESTINATIONS)
                    .map(|port| {
                        let addr = SocketAddr::from((ip, port));
                        let nth = u64::from(port - first);
                        let opaque = nth.is_multiple_of(u64::from(OPAQUE_EVERY));
                        let at = paced_from + Duration::from_micros(nth * 1_000_000 / PER_SECOND);
                        async move {
                            // Pacing, not waiting for a condition: see `PER_SECOND`.
                            tokio::time::sleep_until(at).await;
                            tokio::time::timeout(TIMEOUT, call(addr, opaque))
                                .await
                                .unwrap_or_else(|_| format!("timed out after {TIMEOUT:?}"))
                        }
                    })
                    .buffer_unordered(CONCURRENCY);
                while let Some(outcome) = calls.next().await {
                    *tally.entry(outcome).or_insert(0) += 1;
                }
                tally
            });
            Ok(Outcomes {
                tally,
                took: start.elapsed(),
            })
        })
        .join()
        .expect("burst thread")
        .expect("burst");
    let unanswered: u64 = outcomes
        .tally
        .iter()
        .filter(|(outcome, _)| !outcome.starts_with("HTTP ") && *outcome != "opaque: closed")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        unanswered, 0,
        "the proxy answered every connection of the burst from port {first}: {outcomes}"
    );
    outcomes
}

/// One connection to `addr`: an HTTP/1.1 request and its status (`HTTP 502`), or opaque bytes
/// and whether the proxy closed the connection (`opaque: closed`); otherwise what failed.
async fn call(addr: SocketAddr, opaque: bool) -> String {
    let result = async {
        let mut io = tokio::net::TcpStream::connect(addr).await?;
        if opaque {
            // No protocol begins with a NUL byte: detection says opaque at once.
            io.write_all(b"\0bounded\n").await?;
        } else {
            let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            io.write_all(request.as_bytes()).await?;
        }
        let mut answer = Vec::new();
        match io.read_to_end(&mut answer).await {
            Ok(_) => {}
            // The proxy may reset an opaque connection whose upstream refused.
            Err(err) if opaque && err.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(err) => return Err(err),
        }
        Ok::<_, std::io::Error>(answer)
    };
    match result.await {
        Ok(_) if opaque => "opaque: closed".to_string(),
        Ok(answer) => {
            let head = String::from_utf8_lossy(&answer);
            match head.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)) {
                Some(status) => format!("HTTP {status}"),
                None => format!("not an HTTP response: {:?}", head.lines().next()),
            }
        }
        Err(err) => format!(
            "{}: {:?}",
            if opaque { "opaque" } else { "http" },
            err.kind()
        ),
    }
}

/// The distinct values of label `name` in a Prometheus text exposition.
fn label_values(metrics: &str, name: &str) -> HashSet<String> {
    let key = format!("{name}=\"");
    let key = key.as_str();
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| {
            line.match_indices(key).filter_map(move |(at, _)| {
                // Only a whole label name: `target_addr=`, not `x_target_addr=`.
                let whole = at == 0 || matches!(line.as_bytes()[at - 1], b'{' | b',');
                let value = &line[at + key.len()..];
                whole.then(|| value.split('"').next().unwrap_or_default().to_string())
            })
        })
        .collect()
}

/// `VmRSS` of process `pid`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
}
