//! `mesh-bench`: the mesh proxy (and the pre-rebuild one) against direct calls and HAProxy on network-namespace pods (reported as ratios to the direct call), Redis (the proxy's codec and opaque TCP) against twemproxy with redis-benchmark, discovery's propagation and memory, load balancing between equal endpoints and between a fast and a slow one, 50 HTTPRoutes on a Service against none, and 20 inbound AuthorizationPolicies on a Server against none.
//!
//! ```text
//! scripts/setup-bench.sh && cargo run --release -p mesh-bench -- --out BENCHMARKS.md   # just bench
//! cargo run --release -p mesh-bench -- --quick                                           # smoke run
//! cargo run --release -p mesh-bench -- --only discovery --out BENCHMARKS.md              # one part
//! ```
//!
//! The proxy, redis, balancing, routes and authz parts need root (they build pods out of network namespaces);
//! the discovery part runs the controller on loopback. It stops by itself (every run is bounded in
//! time), and removes its pods when it ends.
#![forbid(unsafe_code)]

mod authz;
mod balance;
mod controller;
mod discovery;
mod handshake;
mod haproxy;
mod oha;
mod redis;
mod report;
mod resources;
mod routes;
mod server;
mod testbed;
mod units;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::haproxy::Haproxy;
use crate::oha::{Load, Oha, Protocol, Run};
use crate::report::{Baseline, Machine, Measurement, Part, Report, Round, Series};
use crate::resources::Meter;
use crate::testbed::{Scenario, Testbed};

/// Benchmarks the mesh: the proxy, discovery and load balancing.
///
/// The proxy part measures latency at a fixed rate (corrected for coordinated omission) and
/// maximum throughput, for HTTP/1.1 and HTTP/2, on network-namespace pods: direct, 1-hop
/// (outbound proxy), 2-hop (outbound and inbound proxy), 2-hop mTLS, each also through the
/// pre-rebuild proxy ("(before)", see --baseline-proxy), haproxy and haproxy nbthread 1; then
/// HTTP/1.1 at the fixed rate with more connections (--connections). The redis part measures
/// redis-benchmark's round trips, not pipelined and pipelined, direct, through twemproxy, through
/// the proxy's Redis codec (one hop, and two hops with mutual TLS) and through one meshed hop
/// that copies bytes (current and pre-rebuild). The discovery part measures how fast an
/// endpoint change reaches 1,000 watchers of the destination controller, and the controller's
/// memory with 10,000 endpoints.
/// The balance part measures how the proxy splits requests between two equal endpoints at 2, 50
/// and 2,000 req/s (the first for 40 s), and compares its split between a fast and a slow
/// endpoint with round-robin's. The routes part measures p99 at the fixed rate and maximum
/// throughput of HTTP/1.1 through one meshed hop to a Service with 50 HTTPRoutes against the same
/// Service without routes, interleaved. The authz part measures the same through two meshed hops
/// with mutual TLS to a server whose port has 20 AuthorizationPolicies (only the last allows the
/// client) against the same port without a policy, interleaved. The proxy, redis, balance,
/// routes and authz parts need root; a whole run takes about 25 minutes on two cores.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version)]
struct Args {
    /// Measure only these parts (comma-separated or repeated); with --out, the report keeps
    /// the other parts' sections from the file it replaces.
    #[arg(long, value_name = "PART", value_delimiter = ',')]
    only: Vec<Part>,

    /// Write the Markdown report to this file, and oha's raw JSON of every run to a dated file
    /// in --results-dir. Without it the report only goes to stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// The length of each fixed-rate (latency) run.
    #[arg(long, value_name = "DURATION", default_value = "6s", value_parser = parse_duration)]
    duration: Duration,

    /// The length of each maximum-throughput run.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    throughput_duration: Duration,

    /// How many times each run is repeated; rounds interleave the scenarios, and the report
    /// shows the median round and the range.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,

    /// The fixed rate of the latency runs, in requests per second.
    #[arg(long, value_name = "REQ/S", default_value_t = report::TARGET_RATE,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,

    /// A short smoke run of every part: two rounds of 2-second latency runs and 1-second
    /// throughput runs, 5 discovery changes, 2-second balancing runs.
    #[arg(long)]
    quick: bool,

    /// Discovery: the watchers of one service that each change must reach.
    #[arg(long, value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    watchers: u32,

    /// Discovery: how many endpoint changes to write, one after the other.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    changes: u32,

    /// Load balancing: the request rate of the fast/slow runs, through each balancer.
    #[arg(long, value_name = "REQ/S", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(2..=100_000))]
    balance_rate: u32,

    /// Load balancing: the length of each run but the equal endpoints' at 2 req/s, which
    /// takes 40 s (with --quick, this long too).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    balance_duration: Duration,

    /// The load generator; by default `target/bench-tools/bin/oha` (installed by
    /// scripts/setup-bench.sh), else `oha` on the PATH.
    #[arg(long, value_name = "PATH")]
    oha: Option<PathBuf>,

    /// The peer proxy's executable.
    #[arg(long, value_name = "PATH", default_value = "haproxy")]
    haproxy: PathBuf,

    /// The pre-rebuild mesh proxy of the "(before)" scenarios; by default
    /// `target/bench-baseline/mesh-proxy` (built by scripts/setup-bench.sh) when it exists.
    /// Without it those scenarios are left out, and the report says so.
    #[arg(long, value_name = "PATH")]
    baseline_proxy: Option<PathBuf>,

    /// The connection counts of the HTTP/1.1 fixed-rate runs with more connections
    /// (comma-separated); the latency runs' 16 connections are shown next to them (and
    /// measured with them when the latency runs are left out).
    #[arg(long, value_name = "N", value_delimiter = ',', default_value = "50,500",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    connections: Vec<u32>,

    /// The proxy part's runs to make (comma-separated): `latency` (the fixed rate, with the
    /// mutual-TLS handshakes), `throughput` (no rate limit) and `connections` (HTTP/1.1 at the
    /// fixed rate with --connections). With --out, the proxy section then shows only these.
    #[arg(
        long,
        value_name = "SERIES",
        value_delimiter = ',',
        default_value = "latency,throughput,connections"
    )]
    series: Vec<Series>,

    /// Redis: the requests of each redis-benchmark test (SET, GET) per run.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    redis_requests: u64,

    /// Redis: measure only these scenarios besides the direct baseline (comma-separated), e.g.
    /// `--redis-scenarios twemproxy,codec` while tuning the codec.
    #[arg(long, value_name = "SCENARIO", value_delimiter = ',')]
    redis_scenarios: Vec<redis::Scenario>,

    /// Extra environment of the mesh proxies, `KEY=VALUE` (repeatable), e.g.
    /// `--proxy-env MESH_PROXY_WORKER_THREADS=1` to compare proxy settings.
    #[arg(long = "proxy-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    proxy_env: Vec<(String, String)>,

    /// Where the raw results go (with --out).
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results_dir: PathBuf,
}

/// Parses `KEY=VALUE`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The most connections a run may open (`--connections`).
const MAX_CONNECTIONS: u32 = 2_000;
/// The open-files limit the benchmark asks for, which its pods (proxies, HAProxy, the load
/// generator) inherit; the application servers run in this process and hold a socket per
/// connection of every scenario.
pub const OPEN_FILES: u64 = 65_536;
/// redis-benchmark's connections (`-c`).
const REDIS_CONNECTIONS: u32 = 50;

/// Concurrency of the fixed-rate runs: (protocol, connections, HTTP/2 streams per connection).
const RATE_CONCURRENCY: [(Protocol, u32, u32); 2] =
    [(Protocol::Http1, 16, 1), (Protocol::Http2, 4, 4)];
/// Concurrency of the maximum-throughput runs: 32 requests in flight either way.
const MAX_CONCURRENCY: [(Protocol, u32, u32); 2] =
    [(Protocol::Http1, 32, 1), (Protocol::Http2, 4, 8)];
/// The warm-up before each fixed-rate run: connections open, pools fill, caches warm.
const WARM_UP: Duration = Duration::from_secs(1);
/// How many runs may be measured again because other processes took more than
/// [`report::BUSY_ELSEWHERE`] of the CPU meanwhile (bounded, so that the benchmark still ends).
const MAX_REDOS: u32 = 12;
/// The longest run accepted, so that a benchmark always stops in reasonable time.
const MAX_RUN: Duration = Duration::from_secs(120);

/// Discovery: the time from one endpoint change to the next (at least).
const CHANGE_SPACING: Duration = Duration::from_millis(300);
/// Discovery's memory benchmark: 100 services × 100 endpoints = 10,000 endpoints (and pods).
const LARGE_SERVICES: usize = 100;
const LARGE_ENDPOINTS_PER_SERVICE: usize = 100;
/// Load balancing: how long the slow endpoint waits before answering.
const SLOW_DELAY: Duration = Duration::from_millis(10);
/// Load balancing: the load generator's HTTP/1.1 connections through the proxy (half of them
/// to each endpoint for round-robin).
const BALANCE_CONNECTIONS: u32 = 16;

/// Set by Ctrl-C or SIGTERM: the benchmark stops before its next run and removes its pods.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = watch_interrupts() {
        eprintln!("mesh: {err:#}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh: {err:#}");
            if INTERRUPTED.load(Ordering::Relaxed) {
                ExitCode::from(130)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn run(mut args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let parts: Vec<Part> = if args.only.is_empty() {
        Part::ALL.to_vec()
    } else {
        Part::ALL
            .into_iter()
            .filter(|p| args.only.contains(p))
            .collect()
    };
    let testbed_parts = parts.contains(&Part::Proxy) || parts.contains(&Part::Redis);
    let pods = testbed_parts
        || parts.contains(&Part::Balance)
        || parts.contains(&Part::Routes)
        || parts.contains(&Part::Authz);
    let mut open_files_limit = None;
    if pods {
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "mesh-bench needs root for the proxy, redis, balance, routes and authz parts: they \
                 build pods out of network namespaces, veth links and iptables rules. Run it as \
                 root, e.g. \
                 `sudo -E just bench`, or measure only discovery with `--only discovery`"
            );
        }
        mesh_cli::local::require_root()?;
        let most = args.connections.iter().copied().max().unwrap_or(0);
        open_files_limit = Some(raise_open_files(most)?);
    }
    if args.quick {
        args.duration = Duration::from_secs(2);
        args.throughput_duration = Duration::from_secs(1);
        args.rounds = 2;
        args.changes = args.changes.min(5);
        args.balance_duration = Duration::from_secs(2);
        args.redis_requests = args.redis_requests.min(20_000);
    }
    for (flag, d) in [
        ("--duration", args.duration),
        ("--throughput-duration", args.throughput_duration),
        ("--balance-duration", args.balance_duration),
    ] {
        if d < Duration::from_secs(1) || d > MAX_RUN {
            bail!(
                "{flag} {}: expected 1s to {}",
                humantime::format_duration(d),
                humantime::format_duration(MAX_RUN)
            );
        }
    }

    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let baseline = testbed_parts.then(|| baseline(args.baseline_proxy.as_deref()));
    let oha = if pods {
        Some(Oha::new(&oha_path(args.oha.as_deref()))?)
    } else {
        None
    };
    let haproxy_version = if parts.contains(&Part::Proxy) {
        Some(Haproxy::version(&args.haproxy)?)
    } else {
        None
    };
    let clock_ticks = resources::clock_ticks()?;
    let results_file = args.out.as_ref().map(|_| {
        args.results_dir
            .join(format!("{}.json", date.replace(':', "-")))
    });
    // The report promises quiet proxies, whatever this shell exports.
    let mut proxy_env = vec![("MESH_PROXY_LOG".to_string(), "warn".to_string())];
    proxy_env.extend(args.proxy_env.iter().cloned());
    let work = tempfile::Builder::new()
        .prefix("mesh-bench-")
        .tempdir()
        .context("creating a work folder")?;

    let mut measurements = Vec::new();
    let mut handshakes = None;
    let mut redis = None;
    if let (true, Some(oha)) = (testbed_parts, &oha) {
        eprintln!("mesh-bench: building the pods");
        let baseline_program = baseline
            .as_ref()
            .filter(|b| b.found)
            .map(|b| PathBuf::from(&b.path));
        match &baseline_program {
            Some(path) => eprintln!("mesh-bench: the pre-rebuild proxy is {}", path.display()),
            None => eprintln!(
                "mesh-bench: no pre-rebuild proxy at {}: the \"(before)\" scenarios are left out",
                baseline.as_ref().map_or("", |b| b.path.as_str())
            ),
        }
        let testbed = Testbed::start(
            &args.haproxy,
            &proxy_env,
            baseline_program.as_deref(),
            parts.contains(&Part::Redis),
        )?;
        let measured = (|| {
            if parts.contains(&Part::Proxy) {
                measurements = measure(&testbed, oha, &args, clock_ticks)?;
                if args.series.contains(&Series::Latency) {
                    eprintln!("mesh-bench: mutual-TLS handshakes");
                    let h = handshake::run(
                        &testbed,
                        args.throughput_duration,
                        args.rounds as usize,
                        clock_ticks,
                    )
                    .context("handshakes")?;
                    handshakes = Some(h);
                }
            }
            if parts.contains(&Part::Redis) {
                eprintln!("mesh-bench: redis");
                let plan = redis::Plan {
                    requests: args.redis_requests,
                    connections: REDIS_CONNECTIONS,
                    rounds: args.rounds as usize,
                    cores: machine().cores,
                    baseline_path: baseline.as_ref().map_or(String::new(), |b| b.path.clone()),
                    scenarios: args.redis_scenarios.clone(),
                };
                redis = Some(redis::run(&testbed, &plan, clock_ticks).context("redis")?);
            }
            anyhow::Ok(())
        })();
        let log_dir = testbed.log_dir().to_path_buf();
        if measured.is_err() && !INTERRUPTED.load(Ordering::Relaxed) {
            // Keep the proxies' logs for the post-mortem: copy them before the cluster goes.
            keep_logs(&log_dir);
        }
        drop(testbed);
        measured?;
    }
    let discovery = if parts.contains(&Part::Discovery) {
        eprintln!("mesh-bench: discovery");
        let plan = discovery::Plan {
            watchers: args.watchers as usize,
            changes: args.changes as usize,
            spacing: CHANGE_SPACING,
            services: LARGE_SERVICES,
            endpoints_per_service: LARGE_ENDPOINTS_PER_SERVICE,
            memory_watchers: args.watchers as usize,
        };
        match discovery::run(&plan, work.path()) {
            Ok(results) => Some(results),
            Err(err) => {
                // Keep the controllers' logs and folders for the post-mortem.
                eprintln!(
                    "mesh-bench: discovery's folders and logs kept in {}",
                    work.keep().display()
                );
                return Err(err.context("discovery"));
            }
        }
    } else {
        None
    };
    let balance = match (parts.contains(&Part::Balance), &oha) {
        (true, Some(oha)) => {
            eprintln!("mesh-bench: load balancing");
            let plan = balance::Plan {
                rate: args.balance_rate,
                duration: args.balance_duration,
                // A smoke run keeps the trickle as short as every other run.
                trickle_duration: if args.quick {
                    args.balance_duration
                } else {
                    balance::TRICKLE_DURATION
                },
                delay: SLOW_DELAY,
                connections: BALANCE_CONNECTIONS,
            };
            Some(balance::run(&plan, oha, &proxy_env, work.path()).context("load balancing")?)
        }
        _ => None,
    };
    let routes = match (parts.contains(&Part::Routes), &oha) {
        (true, Some(oha)) => {
            eprintln!("mesh-bench: routes");
            let plan = routes::Plan {
                latency: plan(&args, String::new(), Protocol::Http1, true),
                throughput: plan(&args, String::new(), Protocol::Http1, false),
                rounds: args.rounds,
                clock_ticks,
                cores: machine().cores,
            };
            Some(routes::run(&plan, oha, &proxy_env, work.path()).context("routes")?)
        }
        _ => None,
    };
    let authz = match (parts.contains(&Part::Authz), &oha) {
        (true, Some(oha)) => {
            eprintln!("mesh-bench: authz");
            let plan = authz::Plan {
                latency: plan(&args, String::new(), Protocol::Http1, true),
                throughput: plan(&args, String::new(), Protocol::Http1, false),
                rounds: args.rounds,
                clock_ticks,
                cores: machine().cores,
            };
            Some(authz::run(&plan, oha, &proxy_env).context("authz")?)
        }
        _ => None,
    };

    // With --only, the parts not measured keep their sections of the report being replaced.
    let carried = match &args.out {
        Some(out) if parts.len() < Part::ALL.len() => match std::fs::read_to_string(out) {
            Ok(old) => report::sections(&old),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", out.display())),
        },
        _ => Default::default(),
    };
    let report = Report {
        date,
        machine: machine(),
        command: command_line(),
        oha: oha.map(|o| o.version.clone()),
        haproxy: haproxy_version,
        results_file: results_file
            .as_ref()
            .map(|f| relative_to_report(f, args.out.as_deref())),
        parts,
        measurements,
        handshakes,
        discovery,
        balance,
        routes,
        authz,
        redis,
        baseline,
        took_seconds: started.elapsed().as_secs_f64(),
        open_files_limit,
        carried,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    if let (Some(out), Some(results)) = (&args.out, &results_file) {
        if let Some(dir) = results.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(&report).context("serializing the results")?;
        std::fs::write(results, json + "\n")
            .with_context(|| format!("writing {}", results.display()))?;
        std::fs::write(out, &markdown).with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "mesh-bench: wrote {} and {}",
            out.display(),
            results.display()
        );
    }
    Ok(())
}

/// Every run, in order: per protocol, the fixed-rate runs, then the maximum-throughput runs;
/// then HTTP/1.1 at the fixed rate with each of `--connections`. Each in rounds that interleave
/// the scenarios.
fn measure(
    testbed: &Testbed,
    oha: &Oha,
    args: &Args,
    clock_ticks: u64,
) -> anyhow::Result<Vec<Measurement>> {
    let cores = machine().cores;
    let mut redos_left = MAX_REDOS;
    let mut measurements: Vec<Measurement> = Vec::new();
    let mut blocks: Vec<(Protocol, Series, Option<u32>)> = Vec::new();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        blocks.push((protocol, Series::Latency, None));
        blocks.push((protocol, Series::Throughput, None));
    }
    // The latency runs already measure the usual number of connections.
    let usual = plan(args, String::new(), Protocol::Http1, true).connections;
    let latency = args.series.contains(&Series::Latency);
    for &connections in &args.connections {
        if connections != usual || !latency {
            blocks.push((Protocol::Http1, Series::Connections, Some(connections)));
        }
    }
    blocks.retain(|(_, series, _)| args.series.contains(series));
    for (protocol, series, connections) in blocks {
        let rate = series != Series::Throughput;
        let scenarios: &[Scenario] = match series {
            Series::Connections => &Scenario::CONNECTIONS,
            _ => &Scenario::ALL,
        };
        let first = measurements.len();
        for &scenario in scenarios {
            let Some(target) = testbed.target(scenario, protocol) else {
                continue;
            };
            let mut run = plan(args, target.url, protocol, rate);
            if let Some(connections) = connections {
                run.connections = connections;
            }
            measurements.push(Measurement {
                scenario,
                series,
                run,
                rounds: Vec::new(),
                redone: 0,
            });
        }
        for round in 0..args.rounds {
            for m in &mut measurements[first..] {
                let what = format!(
                    "{} {:?} {} run, round {}",
                    m.scenario.name(),
                    protocol,
                    match series {
                        Series::Latency => "fixed-rate".to_string(),
                        Series::Throughput => "throughput".to_string(),
                        Series::Connections => format!("{}-connection", m.run.connections),
                    },
                    round + 1
                );
                let mut warm_up = rate && round == 0;
                loop {
                    if INTERRUPTED.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                    let r = measure_round(testbed, oha, clock_ticks, m.scenario, &m.run, warm_up)
                        .with_context(|| what.clone())?;
                    warm_up = false;
                    let others = r.others_cpu_share(cores);
                    eprintln!(
                        "mesh-bench: {what:<52} {:>7.0} req/s  p50 {:.3}  p99 {:.3}  \
                         p99.9 {:.3} ms  errors {}  others' CPU {:.0} %",
                        r.rps(),
                        r.p50_ms,
                        r.p99_ms,
                        r.p999_ms,
                        r.failed,
                        others * 100.0
                    );
                    if others > report::BUSY_ELSEWHERE && redos_left > 0 {
                        // Someone else took the CPU: this run measured them, not us.
                        redos_left -= 1;
                        m.redone += 1;
                        eprintln!("mesh-bench: the machine was busy; measuring again");
                        continue;
                    }
                    m.rounds.push(r);
                    break;
                }
            }
        }
    }
    Ok(measurements)
}

/// The load-generator run of one scenario: fixed-rate or maximum throughput.
fn plan(args: &Args, url: String, protocol: Protocol, rate: bool) -> Run {
    let (table, load, duration) = if rate {
        (RATE_CONCURRENCY, Load::Rate(args.rate), args.duration)
    } else {
        (MAX_CONCURRENCY, Load::Max, args.throughput_duration)
    };
    let (connections, streams) = table
        .iter()
        .find(|(p, _, _)| *p == protocol)
        .map_or((1, 1), |&(_, c, s)| (c, s));
    Run {
        url,
        protocol,
        load,
        connections,
        streams,
        duration,
        host: None,
    }
}

/// One run of one scenario, measuring the proxies on its path.
fn measure_round(
    testbed: &Testbed,
    oha: &Oha,
    clock_ticks: u64,
    scenario: Scenario,
    run: &Run,
    warm_up: bool,
) -> anyhow::Result<Round> {
    let target = testbed
        .target(scenario, run.protocol)
        .ok_or_else(|| anyhow::anyhow!("this testbed has no {} scenario", scenario.name()))?;
    if warm_up {
        let warm_up = Run {
            duration: WARM_UP,
            ..run.clone()
        };
        oha.run(target.pod, &warm_up).context("warming up")?;
    }
    let meter = Meter::start(clock_ticks, &target.watched)?;
    let outcome = oha.run(target.pod, run)?;
    let metered = meter.finish()?;
    if outcome.ok == 0 {
        bail!(
            "no request succeeded ({} failed); oha's output: {}",
            outcome.failed,
            outcome.raw
        );
    }
    Ok(Round {
        ok: outcome.ok,
        failed: outcome.failed,
        aborted: outcome.aborted,
        seconds: outcome.seconds,
        p50_ms: outcome.p50 * 1e3,
        p99_ms: outcome.p99 * 1e3,
        p999_ms: outcome.p999 * 1e3,
        // Proxy usage is reported for fixed-rate runs only, where the load is the same for all.
        usage: if matches!(run.load, Load::Rate(_)) {
            metered.usage
        } else {
            Vec::new()
        },
        others_cpu_seconds: metered.others_cpu_seconds,
        oha: outcome.raw,
    })
}

// === helpers ===

/// Catches Ctrl-C and SIGTERM on a thread of its own: the first sets [`INTERRUPTED`] (with
/// Ctrl-C the load generator, the proxies and HAProxy get it from the terminal too and stop; a
/// load run a SIGTERM interrupts ends by itself, bounded as every run is), a second exits at
/// once.
fn watch_interrupts() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    /// The next Ctrl-C or SIGTERM.
    async fn either(interrupt: &mut Signal, terminate: &mut Signal) {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    let (mut interrupt, mut terminate) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .context("listening for Ctrl-C and SIGTERM")?;
    std::thread::spawn(move || {
        rt.block_on(async {
            either(&mut interrupt, &mut terminate).await;
            INTERRUPTED.store(true, Ordering::Relaxed);
            eprintln!("mesh-bench: interrupted: removing the pods (Ctrl-C again to quit now)");
            either(&mut interrupt, &mut terminate).await;
            std::process::exit(130);
        });
    });
    Ok(())
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|err| format!("{err} (expected e.g. 10s or 1m)"))
}

/// `--oha`, else the one scripts/setup-bench.sh installs, else `oha` on the PATH.
fn oha_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    let tools = std::env::var_os("MESH_BENCH_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("bench-tools")
        });
    let installed = tools.join("bin").join("oha");
    if installed.is_file() {
        installed
    } else {
        PathBuf::from("oha")
    }
}

/// The pre-rebuild proxy: `--baseline-proxy`, else the one scripts/bench-baseline.sh builds,
/// with the commit it was built from when a `COMMIT` file lies next to it.
fn baseline(flag: Option<&Path>) -> Baseline {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("bench-baseline")
            .join("mesh-proxy"),
    };
    // Shown in the report: without `..` where the path resolves.
    let path = path.canonicalize().unwrap_or(path);
    let found = path.is_file();
    let commit = path
        .parent()
        .and_then(|dir| std::fs::read_to_string(dir.join("COMMIT")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| found && !c.is_empty());
    Baseline {
        path: path.display().to_string(),
        found,
        commit,
    }
}

/// Raises this process's open-files limit (soft, and hard if need be: root may) to
/// [`OPEN_FILES`], which every pod's processes inherit; fails if it stays too low for runs with
/// `connections` connections.
fn raise_open_files(connections: u32) -> anyhow::Result<u64> {
    // A proxy holds two sockets per connection; this process's servers one per connection of
    // the scenario running, plus the idle upstream connections the proxies keep from earlier
    // ones; and a margin for everything else.
    let needed = 6 * u64::from(connections.max(32)) + 1_024;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < OPEN_FILES
        && setrlimit(Resource::RLIMIT_NOFILE, OPEN_FILES, hard.max(OPEN_FILES)).is_err()
    {
        // Not allowed to raise the hard limit: go as far as it.
        setrlimit(
            Resource::RLIMIT_NOFILE,
            hard.min(OPEN_FILES).max(soft),
            hard,
        )
        .context("raising RLIMIT_NOFILE")?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < needed {
        bail!(
            "the open-files limit is {soft} and could not be raised to {needed}, which runs \
             with {connections} connections need: raise it (`ulimit -Hn`), or pass fewer \
             --connections"
        );
    }
    Ok(soft)
}

/// The command that produced the report, as someone would type it again.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let mut line = "scripts/setup-bench.sh && cargo run --release -p mesh-bench --".to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg);
    }
    line
}

fn shell_quote(arg: &str) -> String {
    let plain = arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c));
    if plain && !arg.is_empty() {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `file` relative to the report's folder when it lies below it, else as given.
fn relative_to_report(file: &Path, report: Option<&Path>) -> String {
    let base = report
        .and_then(|r| r.parent())
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .and_then(|p| p.canonicalize().ok());
    let file_abs = file
        .parent()
        .and_then(|p| {
            std::fs::create_dir_all(p).ok()?;
            p.canonicalize().ok()
        })
        .and_then(|dir| Some(dir.join(file.file_name()?)));
    match (base, file_abs) {
        (Some(base), Some(abs)) => abs
            .strip_prefix(&base)
            .map(|rel| rel.display().to_string())
            .unwrap_or_else(|_| abs.display().to_string()),
        _ => file.display().to_string(),
    }
}

/// Cores, kernel, CPU model and memory of this machine.
fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, name)| name.trim().to_string()),
        memory_bytes: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024),
    }
}

/// Copies the cluster's logs to a folder that outlives it, and says where.
fn keep_logs(log_dir: &Path) {
    let kept = std::env::temp_dir().join(format!("mesh-bench-logs-{}", std::process::id()));
    let copied = std::fs::create_dir_all(&kept).and_then(|()| {
        for entry in std::fs::read_dir(log_dir)? {
            let entry = entry?;
            std::fs::copy(entry.path(), kept.join(entry.file_name()))?;
        }
        Ok(())
    });
    match copied {
        Ok(()) => eprintln!(
            "mesh-bench: proxy and haproxy logs kept in {}",
            kept.display()
        ),
        Err(err) => eprintln!(
            "mesh-bench: keeping the logs of {}: {err}",
            log_dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let check = |arg: &str, expected: &str| assert_eq!(shell_quote(arg), expected);
        check("--out", "--out");
        check("BENCHMARKS.md", "BENCHMARKS.md");
        check("a b", "'a b'");
        check("it's", r"'it'\''s'");
        check("", "''");
    }

    #[test]
    fn arguments_parse() {
        let args = Args::try_parse_from(["mesh-bench", "--duration", "15s", "--rate", "500"])
            .expect("valid arguments");
        assert_eq!(args.duration, Duration::from_secs(15));
        assert_eq!(args.rate, 500);
        assert!(args.only.is_empty());
        let args = Args::try_parse_from(["mesh-bench", "--only", "discovery,balance"])
            .expect("valid arguments");
        assert_eq!(args.only, [Part::Discovery, Part::Balance]);
        assert!(Args::try_parse_from(["mesh-bench", "--only", "everything"]).is_err());
        assert!(Args::try_parse_from(["mesh-bench", "--duration", "soon"]).is_err());
        assert!(Args::try_parse_from(["mesh-bench", "--rate", "0"]).is_err());
        assert_eq!(args.connections, [50, 500]);
        assert_eq!(args.redis_requests, 100_000);
        assert!(args.baseline_proxy.is_none());
        let args = Args::try_parse_from([
            "mesh-bench",
            "--only",
            "redis",
            "--connections",
            "64",
            "--baseline-proxy",
            "/tmp/mesh-proxy",
        ])
        .expect("valid arguments");
        assert_eq!(args.only, [Part::Redis]);
        assert_eq!(args.connections, [64]);
        assert_eq!(args.baseline_proxy, Some(PathBuf::from("/tmp/mesh-proxy")));
        assert!(Args::try_parse_from(["mesh-bench", "--connections", "0"]).is_err());
        let args = Args::try_parse_from(["mesh-bench", "--series", "connections"])
            .expect("valid arguments");
        assert_eq!(args.series, [Series::Connections]);
        assert!(Args::try_parse_from(["mesh-bench", "--series", "all"]).is_err());
        assert!(Args::try_parse_from(["mesh-bench", "--connections", "5000"]).is_err());
    }
}
