//! Redis: `redis-benchmark` against `redis-server` directly, through twemproxy (`nutcracker`, a
//! Redis-aware proxy) on the client pod's loopback, through the mesh proxy's Redis codec (one
//! hop to the plain server, and two hops with mutual TLS to a server whose proxy decodes Redis
//! inbound), and through one meshed hop that copies bytes (the current and the pre-rebuild
//! proxy, on the opaque port 6379); each not pipelined (`-P 1`) and pipelined (`-P 16`).
//!
//! ```text
//! client         redis-benchmark ─────────────────────────────────▶ server        redis-server :6379
//! client         redis-benchmark ─▶ nutcracker 127.0.0.1:22121 ───▶ server        redis-server :6379
//! client-codec   redis-benchmark ─▶ outbound (codec) ─────────────▶ server        redis-server :6379
//!                (to 10.96.0.30:6379, appProtocol: mesh.io/redis)
//! client-codec   redis-benchmark ─▶ outbound (codec) ═▶ inbound (codec) ─▶ server-codec redis-server :6379
//!                (to 10.96.0.31:6379, mutual TLS)
//! client-meshed  redis-benchmark ─▶ outbound 4140 (opaque) ───────▶ server        redis-server :6379
//! client-before  redis-benchmark ─▶ outbound 4140 (opaque) ───────▶ server        redis-server :6379
//! ```
//!
//! Every codec run is checked in the proxies' `request_total{codec="redis",method=…}`: a run
//! whose requests were not all decoded fails its scenario instead of being reported.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::{Pod, Proxy};
use serde::Serialize;

use crate::report::BUSY_ELSEWHERE;
use crate::resources::{Meter, Watched};
pub use crate::testbed::REDIS_PORT;
use crate::testbed::{RedisPods, Testbed};
use crate::units::{ms, ratio, thousands};

/// nutcracker's listener, on the client pod's loopback.
const NUTCRACKER_PORT: u16 = 22121;
/// nutcracker's stats listener, on the client pod's loopback.
const NUTCRACKER_STATS_PORT: u16 = 22222;
/// The commands measured, in the order redis-benchmark runs them.
pub const TESTS: [&str; 2] = ["SET", "GET"];
/// redis-benchmark's pipelining depths (`-P`): one request per round trip, then 16 requests
/// sent on a connection before their answers are read.
pub const PIPELINES: [u32; 2] = [1, 16];
/// A pipelined run sends this many times the requests of one that is not, so that it lasts
/// about as long.
const PIPELINED_REQUESTS_FACTOR: u64 = 5;
/// How long redis-server and nutcracker may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The warm-up before each scenario's first round: connections open, twemproxy connects, the
/// codec's policy arrives.
const WARM_UP_REQUESTS: u64 = 2_000;
/// How long the codec may take to be in force: warm-ups are repeated until the client proxy
/// counts all their requests as the codec's.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(15);
/// The slowest rate at which a run is still waited for (round trips per second over both
/// tests, not pipelined); below it the run is killed, so that the benchmark always ends.
const SLOWEST_RATE: u64 = 2_000;
/// [`SLOWEST_RATE`] of pipelined runs, in requests per second.
const SLOWEST_PIPELINED_RATE: u64 = 10_000;
/// How many runs may be measured again because other processes were busy meanwhile.
const MAX_REDOS: u32 = 8;
/// How many lines of a proxy's log a failed scenario shows.
const LOG_TAIL_LINES: usize = 30;
/// The codec label of the proxies' request metrics.
const CODEC: &str = "redis";

/// What carries the round trips between redis-benchmark and redis-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Scenario {
    /// The baseline: the unmeshed client pod to the server pod.
    Direct,
    /// nutcracker in the unmeshed client pod, which parses each command and forwards it on
    /// its own connection to the server.
    Twemproxy,
    /// The codec client pod to a Service with `appProtocol: mesh.io/redis` in front of the
    /// plain server pod: its outbound proxy decodes the commands and pipelines every client's
    /// on one connection.
    Codec,
    /// The same client to such a Service in front of a meshed server pod whose proxy decodes
    /// Redis inbound: two hops, mutual TLS between the proxies.
    CodecTwoHop,
    /// The meshed client pod: its outbound proxy copies the bytes (opaque port).
    OneHop,
    /// The same through the pre-rebuild proxy.
    OneHopBefore,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Twemproxy => "twemproxy",
            Scenario::Codec => "codec 1-hop",
            Scenario::CodecTwoHop => "codec 2-hop",
            Scenario::OneHop => "1-hop",
            Scenario::OneHopBefore => "1-hop (before)",
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests of each test per run (`-n`) not pipelined; pipelined runs send
    /// [`PIPELINED_REQUESTS_FACTOR`] times as many.
    pub requests: u64,
    /// Client connections (`-c`).
    pub connections: u32,
    /// Rounds; each interleaves the scenarios, both pipelining depths.
    pub rounds: usize,
    /// The machine's cores, to tell when others were busy.
    pub cores: usize,
    /// Where the pre-rebuild proxy was looked for, to say so when the testbed has none.
    pub baseline_path: String,
    /// The scenarios to measure besides the direct baseline (all when empty).
    pub scenarios: Vec<Scenario>,
}

impl Plan {
    /// Requests of each test per run at `pipeline` (`-P`).
    pub fn requests(&self, pipeline: u32) -> u64 {
        requests_at(self.requests, pipeline)
    }
}

/// Every scenario's rounds, and how they were run.
#[derive(Debug, Serialize)]
pub struct Results {
    /// Requests of each test per run, not pipelined.
    pub requests: u64,
    /// Requests of each test per pipelined run.
    pub pipelined_requests: u64,
    pub connections: u32,
    /// `redis-server --version`, `redis-benchmark --version` and `nutcracker -V`.
    pub versions: Vec<String>,
    pub scenarios: Vec<Measured>,
    /// Scenarios not measured, and why.
    pub missing: Vec<(Scenario, String)>,
    /// Scenarios that failed (an error, or requests the codec did not count): their rounds are
    /// not reported.
    pub failed: Vec<Failure>,
    /// Runs thrown away because other processes were busy.
    pub redone: u32,
}

/// A scenario that failed at one pipelining depth.
#[derive(Debug, Serialize)]
pub struct Failure {
    pub scenario: Scenario,
    pub pipeline: u32,
    /// The round it failed in (1-based).
    pub round: usize,
    /// The error, with its causes.
    pub why: String,
}

/// One scenario's rounds at one pipelining depth.
#[derive(Debug, Serialize)]
pub struct Measured {
    pub scenario: Scenario,
    /// redis-benchmark's `-P`.
    pub pipeline: u32,
    pub rounds: Vec<Round>,
}

/// One run of redis-benchmark: every test's numbers, and what the proxy on the path used.
#[derive(Debug, Serialize)]
pub struct Round {
    pub tests: Vec<TestRound>,
    /// Requests in the run: every test's (round trips when not pipelined).
    pub round_trips: u64,
    /// CPU seconds of the proxies on the path (mesh-proxy, both for two hops, or nutcracker)
    /// over the whole run.
    pub proxy_cpu_seconds: Option<f64>,
    /// The requests the client proxy counted as the codec's during the run (codec scenarios).
    pub codec_requests: Option<u64>,
    /// CPU seconds spent meanwhile by processes that are not the benchmark's.
    pub others_cpu_seconds: f64,
    /// The run's length, in seconds.
    pub seconds: f64,
    /// redis-benchmark's CSV output.
    pub csv: String,
}

/// One test (command) of one run, as redis-benchmark reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TestRound {
    /// `SET` or `GET`.
    pub test: String,
    /// Requests per second (each one round trip when not pipelined).
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Starts redis-server in the server pods and nutcracker in the client pod, then measures every
/// scenario at both pipelining depths in `plan.rounds` interleaved rounds.
pub fn run(testbed: &Testbed, plan: &Plan, clock_ticks: u64) -> anyhow::Result<Results> {
    let pods = testbed.redis_pods();
    let log_dir = testbed.log_dir();
    let versions = versions()?;
    let _redis = Daemon::start(
        "redis-server",
        pods.server,
        redis_server(pods.server, log_dir),
        REDIS_PORT,
        &log_dir.join("redis-server.log"),
    )?;
    let _codec_redis = match &pods.codec {
        Some(codec) => {
            let dir = log_dir.join("redis-server-codec");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(Daemon::start(
                "redis-server",
                codec.server,
                redis_server(codec.server, &dir),
                REDIS_PORT,
                &log_dir.join("redis-server-codec.log"),
            )?)
        }
        None => None,
    };
    let upstream = SocketAddr::from((pods.server.ip, REDIS_PORT));
    let config = log_dir.join("nutcracker.yml");
    std::fs::write(&config, nutcracker_config(upstream))
        .with_context(|| format!("writing {}", config.display()))?;
    let nutcracker_log = log_dir.join("nutcracker.log");
    let mut command = pods.client.command("nutcracker");
    command
        .arg("-c")
        .arg(&config)
        .arg("-o")
        .arg(&nutcracker_log)
        .args(["-s", &NUTCRACKER_STATS_PORT.to_string(), "-a", "127.0.0.1"]);
    let nutcracker = Daemon::start(
        "nutcracker",
        pods.client,
        command,
        NUTCRACKER_PORT,
        &nutcracker_log,
    )?;

    let (paths, missing) = paths(&pods, upstream, nutcracker.pid(), plan);
    let mut runs: Vec<(usize, Measured)> = Vec::new();
    for pipeline in PIPELINES {
        for (i, path) in paths.iter().enumerate() {
            runs.push((
                i,
                Measured {
                    scenario: path.scenario,
                    pipeline,
                    rounds: Vec::new(),
                },
            ));
        }
    }
    let mut failed: Vec<Failure> = Vec::new();
    let mut redos_left = MAX_REDOS;
    let mut redone = 0;
    for round in 0..plan.rounds {
        for (i, measured) in &mut runs {
            let path = &paths[*i];
            let pipeline = measured.pipeline;
            if failed
                .iter()
                .any(|f| f.scenario == path.scenario && f.pipeline == pipeline)
            {
                continue;
            }
            let what = format!(
                "redis {} -P {pipeline} run, round {}",
                path.scenario.name(),
                round + 1
            );
            let measured_round = (|| {
                if round == 0 {
                    path.warm_up(plan.connections, pipeline)
                        .context("warming up")?;
                }
                measure(
                    path,
                    plan,
                    pipeline,
                    clock_ticks,
                    &what,
                    &mut redos_left,
                    &mut redone,
                )
            })();
            match measured_round {
                Ok(r) => measured.rounds.push(r),
                Err(err) if crate::INTERRUPTED.load(Ordering::Relaxed) => return Err(err),
                Err(err) if path.scenario == Scenario::Direct => {
                    return Err(err.context(what));
                }
                Err(err) => {
                    let why = format!("{err:#}");
                    eprintln!("mesh-bench: FAILED: {what}: {why}");
                    for proxy in path.proxies() {
                        eprintln!(
                            "mesh-bench: the last lines of {}'s proxy log:\n{}",
                            proxy.pod().name,
                            tail(&proxy.log(), LOG_TAIL_LINES)
                        );
                    }
                    failed.push(Failure {
                        scenario: path.scenario,
                        pipeline,
                        round: round + 1,
                        why,
                    });
                }
            }
        }
    }
    let scenarios = runs
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| {
            !failed
                .iter()
                .any(|f| f.scenario == m.scenario && f.pipeline == m.pipeline)
        })
        .collect();
    Ok(Results {
        requests: plan.requests(1),
        pipelined_requests: plan.requests(PIPELINES[1]),
        connections: plan.connections,
        versions,
        scenarios,
        missing,
        failed,
        redone,
    })
}

/// Where one scenario's redis-benchmark runs, what it calls, the processes measured, and the
/// proxies whose metrics must count its requests as the codec's.
struct LoadPath<'a> {
    scenario: Scenario,
    pod: &'a Pod,
    addr: SocketAddr,
    watched: Vec<Watched>,
    codec: Option<CodecCheck<'a>>,
}

/// The proxies of a codec scenario: the client's (outbound), and the server's (inbound) for
/// two hops, whose requests must also be over mutual TLS.
struct CodecCheck<'a> {
    client: &'a Proxy,
    server: Option<&'a Proxy>,
    /// The pod redis-server runs in.
    redis: &'a Pod,
}

/// What the proxies of a codec scenario counted: the client's outbound requests, and the
/// server's inbound ones for two hops.
struct Seen {
    client: Counted,
    server: Option<Counted>,
}

/// Every scenario the testbed can run, in the report's order, and those it cannot, with why.
fn paths<'a>(
    pods: &RedisPods<'a>,
    upstream: SocketAddr,
    nutcracker: u32,
    plan: &Plan,
) -> (Vec<LoadPath<'a>>, Vec<(Scenario, String)>) {
    let mut missing = Vec::new();
    let mut paths = vec![
        LoadPath {
            scenario: Scenario::Direct,
            pod: pods.client,
            addr: upstream,
            watched: Vec::new(),
            codec: None,
        },
        LoadPath {
            scenario: Scenario::Twemproxy,
            pod: pods.client,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, NUTCRACKER_PORT)),
            watched: vec![watched("nutcracker", nutcracker)],
            codec: None,
        },
    ];
    match &pods.codec {
        Some(codec) => {
            let client = watched("client proxy", codec.client_proxy.pid());
            paths.push(LoadPath {
                scenario: Scenario::Codec,
                pod: codec.client,
                addr: codec.one_hop,
                watched: vec![client.clone()],
                codec: Some(CodecCheck {
                    client: codec.client_proxy,
                    server: None,
                    redis: pods.server,
                }),
            });
            paths.push(LoadPath {
                scenario: Scenario::CodecTwoHop,
                pod: codec.client,
                addr: codec.two_hop,
                watched: vec![client, watched("server proxy", codec.server_proxy.pid())],
                codec: Some(CodecCheck {
                    client: codec.client_proxy,
                    server: Some(codec.server_proxy),
                    redis: codec.server,
                }),
            });
        }
        None => {
            for scenario in [Scenario::Codec, Scenario::CodecTwoHop] {
                missing.push((scenario, "the testbed has no codec pods".to_string()));
            }
        }
    }
    paths.push(LoadPath {
        scenario: Scenario::OneHop,
        pod: pods.meshed.0,
        addr: upstream,
        watched: vec![watched("client proxy", pods.meshed.1)],
        codec: None,
    });
    match pods.before {
        Some((pod, pid)) => paths.push(LoadPath {
            scenario: Scenario::OneHopBefore,
            pod,
            addr: upstream,
            watched: vec![watched("client proxy", pid)],
            codec: None,
        }),
        None => missing.push((
            Scenario::OneHopBefore,
            format!(
                "no pre-rebuild proxy at `{}` (scripts/setup-bench.sh builds it, or pass \
                 --baseline-proxy PATH)",
                plan.baseline_path
            ),
        )),
    }
    if !plan.scenarios.is_empty() {
        paths.retain(|path| {
            let keep = path.scenario == Scenario::Direct || plan.scenarios.contains(&path.scenario);
            if !keep {
                missing.push((
                    path.scenario,
                    "not selected (--redis-scenarios)".to_string(),
                ));
            }
            keep
        });
    }
    (paths, missing)
}

/// One measured run of `path` at `pipeline`, measured again (while `redos_left` lasts) when
/// other processes were busy meanwhile; a codec run whose requests the proxies did not all
/// count fails.
fn measure(
    path: &LoadPath<'_>,
    plan: &Plan,
    pipeline: u32,
    clock_ticks: u64,
    what: &str,
    redos_left: &mut u32,
    redone: &mut u32,
) -> anyhow::Result<Round> {
    let requests = plan.requests(pipeline);
    loop {
        if crate::INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let before = path.seen()?;
        let meter = Meter::start(clock_ticks, &path.watched)?;
        let started = Instant::now();
        let csv = benchmark(
            path.pod,
            path.addr,
            plan.connections,
            requests,
            pipeline,
            &|| path.keep_diagnostics(what),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let metered = meter.finish()?;
        let tests = parse_csv(&csv).with_context(|| format!("redis-benchmark's output: {csv}"))?;
        let codec_requests = match (&before, path.seen()?) {
            (Some(before), Some(after)) => Some(
                check_codec(&before.until(&after), requests)
                    .map_err(|why| anyhow!("not every request went through the codec: {why}"))?,
            ),
            _ => None,
        };
        let r = Round {
            round_trips: requests * tests.len() as u64,
            tests,
            proxy_cpu_seconds: (!metered.usage.is_empty())
                .then(|| metered.usage.iter().map(|u| u.cpu_seconds).sum()),
            codec_requests,
            others_cpu_seconds: metered.others_cpu_seconds,
            seconds,
            csv,
        };
        let others = r.others_cpu_seconds / (seconds * plan.cores.max(1) as f64);
        let numbers: Vec<String> = r
            .tests
            .iter()
            .map(|t| format!("{} {:.0}/s p99 {:.3} ms", t.test, t.rps, t.p99_ms))
            .collect();
        eprintln!(
            "mesh-bench: {what:<48} {}  others' CPU {:.0} %",
            numbers.join("  "),
            others * 100.0
        );
        if others > BUSY_ELSEWHERE && *redos_left > 0 {
            *redos_left -= 1;
            *redone += 1;
            eprintln!("mesh-bench: the machine was busy; measuring again");
            continue;
        }
        return Ok(r);
    }
}

// === impl LoadPath ===

impl LoadPath<'_> {
    /// Warms the path up; for a codec scenario, again until the client proxy counts a whole
    /// warm-up as the codec's (its policy may come after the first connections, which are then
    /// forwarded as opaque TCP), failing after [`IN_FORCE_TIMEOUT`].
    fn warm_up(&self, connections: u32, pipeline: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + IN_FORCE_TIMEOUT;
        loop {
            let before = self.seen()?;
            benchmark(
                self.pod,
                self.addr,
                connections,
                WARM_UP_REQUESTS,
                pipeline,
                &|| self.keep_diagnostics("warm-up"),
            )?;
            let (Some(before), Some(after)) = (before, self.seen()?) else {
                return Ok(());
            };
            match check_codec(&before.until(&after), WARM_UP_REQUESTS) {
                Ok(_) => return Ok(()),
                Err(why) if Instant::now() >= deadline => bail!(
                    "the codec was not in force after {IN_FORCE_TIMEOUT:?} of warm-ups: {why}"
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The codec scenario's proxies' counts; `None` for the other scenarios.
    fn seen(&self) -> anyhow::Result<Option<Seen>> {
        let Some(codec) = &self.codec else {
            return Ok(None);
        };
        let client = Counted::parse(&metrics(codec.client)?, "outbound");
        let server = match codec.server {
            Some(proxy) => Some(Counted::parse(&metrics(proxy)?, "inbound")),
            None => None,
        };
        Ok(Some(Seen { client, server }))
    }

    /// For a codec scenario whose redis-benchmark is stuck, before it is killed: keeps each
    /// proxy's log and `/metrics`, the sockets of the pods on the path (`ss -tnpoi`) and
    /// redis-server's `INFO`, in a folder that outlives the pods, and says where.
    fn keep_diagnostics(&self, what: &str) {
        let Some(codec) = &self.codec else {
            return;
        };
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = std::env::temp_dir()
            .join(format!("mesh-bench-redis-{}", std::process::id()))
            .join(name);
        let kept = (|| -> anyhow::Result<()> {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let write = |file: String, text: &str| {
                std::fs::write(dir.join(&file), text)
                    .with_context(|| format!("writing {file} in {}", dir.display()))
            };
            for proxy in self.proxies() {
                let pod = &proxy.pod().name;
                write(format!("{pod}-proxy.log"), &proxy.log())?;
                let metrics = metrics(proxy).unwrap_or_else(|err| format!("{err:#}"));
                write(format!("{pod}-proxy-metrics.txt"), &metrics)?;
            }
            let mut pods = vec![self.pod, codec.redis];
            pods.extend(codec.server.map(Proxy::pod));
            for pod in pods {
                write(
                    format!("{}-ss.txt", pod.name),
                    &output(pod.command("ss").arg("-tnpoi")),
                )?;
            }
            write(
                format!("{}-redis-info.txt", codec.redis.name),
                &output(
                    codec
                        .redis
                        .command("timeout")
                        .args(["5", "redis-cli", "-h", "127.0.0.1", "-p"])
                        .arg(REDIS_PORT.to_string())
                        .arg("INFO"),
                ),
            )?;
            Ok(())
        })();
        match kept {
            Ok(()) => eprintln!(
                "mesh-bench: {what} is stuck: the proxies' logs and metrics, the pods' sockets \
                 and redis-server's INFO are in {}",
                dir.display()
            ),
            Err(err) => eprintln!("mesh-bench: keeping what explains {what}: {err:#}"),
        }
    }

    /// The mesh proxies whose logs explain a failure of the codec scenarios.
    fn proxies(&self) -> Vec<&Proxy> {
        self.codec
            .iter()
            .flat_map(|c| std::iter::once(c.client).chain(c.server))
            .collect()
    }
}

// === impl Seen ===

impl Seen {
    /// What was counted from `self` until `after`.
    fn until(&self, after: &Seen) -> Seen {
        Seen {
            client: after.client.since(&self.client),
            server: match (&self.server, &after.server) {
                (Some(before), Some(after)) => Some(after.since(before)),
                _ => None,
            },
        }
    }
}

/// Checks that the codec counted every one of `requests` of each test in `seen` (what one run
/// added): the client proxy's, and with two hops the server proxy's too, both over mutual TLS.
/// Returns the client proxy's count of the tests' requests; the error says what was missing.
fn check_codec(seen: &Seen, requests: u64) -> Result<u64, String> {
    let mut missing = Vec::new();
    let mut counted = 0;
    let mutual_tls = seen.server.is_some();
    for test in TESTS {
        let client = seen.client.method(test);
        counted += client.requests;
        let mut check = |who: &str, count: Count| {
            if count.requests < requests {
                missing.push(format!(
                    "the {who} proxy counted {} {test} requests with codec=\"{CODEC}\" of {} sent",
                    thousands(count.requests as f64),
                    thousands(requests as f64)
                ));
            } else if mutual_tls && count.mutual_tls < requests {
                missing.push(format!(
                    "the {who} proxy counted {} {test} requests over mutual TLS (tls=\"true\") \
                     of {} sent",
                    thousands(count.mutual_tls as f64),
                    thousands(requests as f64)
                ));
            }
        };
        check("client", client);
        if let Some(server) = &seen.server {
            check("server", server.method(test));
        }
    }
    if missing.is_empty() {
        Ok(counted)
    } else {
        Err(missing.join("; "))
    }
}

/// The proxy's `/metrics`.
fn metrics(proxy: &Proxy) -> anyhow::Result<String> {
    let (status, body) = proxy
        .admin_get("/metrics")
        .with_context(|| format!("reading the metrics of {}'s proxy", proxy.pod().name))?;
    if status != 200 {
        bail!("{}'s proxy answered {status} to /metrics", proxy.pod().name);
    }
    Ok(body)
}

/// What `command` printed (stdout, then stderr), or why it did not run.
fn output(command: &mut Command) -> String {
    match command.stdin(Stdio::null()).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => format!("not run: {err}"),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A proxy's `request_total` samples with `codec="redis"` in one direction, by method.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counted(BTreeMap<String, Count>);

/// Requests of one method: all of them, and those over mutual TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Count {
    requests: u64,
    mutual_tls: u64,
}

impl Counted {
    /// The samples of `request_total{direction=<direction>,…,codec="redis",method=…}` in the
    /// Prometheus text format, summed by method (over targets and peers).
    fn parse(metrics: &str, direction: &str) -> Counted {
        let mut counted: BTreeMap<String, Count> = BTreeMap::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let Some(value) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            let labels = parse_labels(labels);
            let label = |key: &str| labels.get(key).map(String::as_str);
            if label("direction") != Some(direction) || label("codec") != Some(CODEC) {
                continue;
            }
            let count = counted
                .entry(label("method").unwrap_or_default().to_string())
                .or_default();
            count.requests += value as u64;
            if label("tls") == Some("true") {
                count.mutual_tls += value as u64;
            }
        }
        Counted(counted)
    }

    /// The increase of each method's counts since `before` (a count that went down, after a
    /// restart, counts from zero).
    fn since(&self, before: &Counted) -> Counted {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        Counted(
            self.0
                .iter()
                .map(|(method, now)| {
                    let then = before.0.get(method).copied().unwrap_or_default();
                    let count = Count {
                        requests: delta(now.requests, then.requests),
                        mutual_tls: delta(now.mutual_tls, then.mutual_tls),
                    };
                    (method.clone(), count)
                })
                .collect(),
        )
    }

    fn method(&self, method: &str) -> Count {
        self.0.get(method).copied().unwrap_or_default()
    }
}

/// `a="1",b="x\"y"` → {a: 1, b: x"y}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let key = key.trim_start_matches(',').trim();
        let mut value = String::new();
        let mut end = after.len();
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.to_string(), value);
        rest = &after[end..];
    }
    labels
}

// === impl Results ===

impl Results {
    fn find(&self, scenario: Scenario, pipeline: u32) -> Option<&Measured> {
        self.scenarios
            .iter()
            .find(|m| m.scenario == scenario && m.pipeline == pipeline)
    }

    fn failure(&self, scenario: Scenario, pipeline: u32) -> Option<&Failure> {
        self.failed
            .iter()
            .find(|f| f.scenario == scenario && f.pipeline == pipeline)
    }

    /// The comparison rows: (row, one cell per test). Targets (codec 1-hop against twemproxy,
    /// 1-hop against twemproxy and against the pre-rebuild proxy) say whether they are met;
    /// codec 2-hop against direct is a ratio only. Each at both pipelining depths.
    pub fn verdicts(&self) -> Vec<(String, Vec<String>)> {
        let versus = |a: Scenario, b: Scenario, pipeline: u32, target: bool| -> Vec<String> {
            TESTS
                .iter()
                .map(|test| {
                    for s in [a, b] {
                        if self.failure(s, pipeline).is_some() {
                            return format!("{} failed (see above)", s.name());
                        }
                    }
                    match (self.find(a, pipeline), self.find(b, pipeline)) {
                        (Some(a), Some(b)) => {
                            let (x, y) = (a.rps(test), b.rps(test));
                            let mut cell = format!(
                                "{} vs {} {}/s ({})",
                                thousands(x),
                                thousands(y),
                                unit(pipeline),
                                ratio(x, y),
                            );
                            if target {
                                write!(cell, ": {}", crate::report::met(x >= y))
                                    .expect("writing to a String");
                                // As in the other parts: a verdict the noise could turn.
                                if a.overlaps(b, test) {
                                    cell.push_str(crate::report::OVERLAP);
                                }
                            }
                            cell
                        }
                        _ => "not measured".to_string(),
                    }
                })
                .collect()
        };
        let mut rows = Vec::new();
        let rate = |pipeline: u32| match pipeline {
            1 => "-P 1".to_string(),
            p => format!("-P {p}: requests per second"),
        };
        for pipeline in PIPELINES {
            rows.push((
                format!(
                    "round trips per second of codec 1-hop at least twemproxy's ({})",
                    rate(pipeline)
                ),
                versus(Scenario::Codec, Scenario::Twemproxy, pipeline, true),
            ));
        }
        for pipeline in PIPELINES {
            rows.push((
                format!("codec 2-hop (mutual TLS) against direct (-P {pipeline})"),
                versus(Scenario::CodecTwoHop, Scenario::Direct, pipeline, false),
            ));
        }
        for pipeline in PIPELINES {
            rows.push((
                format!(
                    "round trips per second of one hop at least twemproxy's (1-hop vs \
                     twemproxy, -P {pipeline})"
                ),
                versus(Scenario::OneHop, Scenario::Twemproxy, pipeline, true),
            ));
        }
        for pipeline in PIPELINES {
            rows.push((
                format!(
                    "round trips per second of one hop at least the pre-rebuild proxy's \
                     (1-hop vs 1-hop (before), -P {pipeline})"
                ),
                versus(Scenario::OneHop, Scenario::OneHopBefore, pipeline, true),
            ));
        }
        rows
    }

    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "`redis-server` (Debian's, no persistence) listens on port {REDIS_PORT} in the \
             unmeshed server pod, and for codec 2-hop in a meshed one. `redis-benchmark -c {c} \
             -n N -P P -t set,get --csv` runs in a client pod with {c} connections; each run is \
             N SETs, then N GETs. Not pipelined (`-P 1`, N = {n1}) every request is one round \
             trip; pipelined (`-P {p}`, N = {n16}) each connection sends {p} requests before it \
             reads their answers, and the rates are requests per second (redis-benchmark's \
             rps). Port {REDIS_PORT} is opaque in the proxy's default \
             `MESH_PROXY_OUTBOUND_OPAQUE_PORTS`: without a codec the proxy copies bytes without \
             parsing them, one upstream connection per client connection.\n",
            c = self.connections,
            n1 = thousands(self.requests as f64),
            n16 = thousands(self.pipelined_requests as f64),
            p = PIPELINES[1],
        )?;
        writeln!(
            out,
            "- **direct**: the unmeshed client pod → the server pod; the baseline.\n\
             - **twemproxy**: `nutcracker` (one pool, `redis: true`, the server as its only \
             server, its defaults otherwise) in the unmeshed client pod on 127.0.0.1:\
             {NUTCRACKER_PORT}; it parses every command and, by default, forwards them all on \
             one connection to the server (pipelining the clients' requests), which a \
             byte-copying proxy cannot do.\n\
             - **codec 1-hop**: a client pod meshed with discovery and identity (the control \
             plane's controllers) calls the ClusterIP of a Service whose port {REDIS_PORT} has \
             `appProtocol: mesh.io/redis`, in front of the unmeshed server pod: its outbound \
             proxy decodes every command and pipelines all clients' requests on one shared \
             connection to the server. The one-hop counterpart of twemproxy.\n\
             - **codec 2-hop**: the same client pod to a second such Service, in front of a \
             meshed server pod whose proxy has `MESH_PROXY_INBOUND_CODEC_PORTS={REDIS_PORT}=redis`: \
             one shared mutual-TLS connection between the proxies; the server's proxy decodes \
             the requests again and forwards them on one connection to redis-server per peer \
             connection.\n\
             - **1-hop**: the meshed client pod without a control plane (`mesh-init` redirect + \
             `mesh-proxy` outbound, the same pod and proxy as the proxy part's 1-hop) → the \
             server pod, the bytes copied on the opaque port.\n\
             - **1-hop (before)**: the same through the pre-rebuild proxy.\n"
        )?;
        writeln!(
            out,
            "Each scenario's first round at each depth is preceded by a warm-up of {} requests \
             per test; the rounds interleave the scenarios and both depths, and the tables show \
             the median round. Every codec run is checked in the proxies' metrics: the client \
             proxy's `request_total{{direction=\"outbound\",codec=\"redis\",method=…}}` must \
             have grown by at least the run's requests of each test (for codec 2-hop over mutual \
             TLS, `tls=\"true\"`, and in the server proxy's inbound `request_total` too), or the \
             scenario fails rather than being reported; the warm-up is repeated until it holds \
             (at most {IN_FORCE_TIMEOUT:?}). Proxy CPU is user + system time of the proxies on \
             the path (mesh-proxy, client + server for two hops, or nutcracker) per 10,000 \
             requests. Versions: {}.\n",
            thousands(WARM_UP_REQUESTS as f64),
            self.versions.join("; "),
        )?;
        for (scenario, why) in &self.missing {
            writeln!(out, "**{} was not measured**: {why}.\n", scenario.name())?;
        }
        for f in &self.failed {
            writeln!(
                out,
                "**{} (-P {}) failed** in round {}: {}.\n",
                f.scenario.name(),
                f.pipeline,
                f.round,
                f.why.trim_end_matches('.')
            )?;
        }

        writeln!(out, "### Targets\n")?;
        writeln!(out, "| target | {} |", TESTS.join(" | "))?;
        writeln!(out, "|---|---|---|")?;
        for (target, cells) in self.verdicts() {
            writeln!(out, "| {target} | {} |", cells.join(" | "))?;
        }
        writeln!(out)?;

        for pipeline in PIPELINES {
            self.write_table(out, pipeline)?;
        }
        if self.redone > 0 {
            writeln!(
                out,
                "{} run(s) were thrown away and measured again because other processes used \
                 more than {:.0} % of the CPU meanwhile.\n",
                self.redone,
                BUSY_ELSEWHERE * 100.0
            )?;
        }
        Ok(())
    }

    /// The table of one pipelining depth: every scenario's tests.
    fn write_table(&self, out: &mut String, pipeline: u32) -> std::fmt::Result {
        let measured: Vec<&Measured> = self
            .scenarios
            .iter()
            .filter(|m| m.pipeline == pipeline)
            .collect();
        if measured.is_empty() {
            return Ok(());
        }
        let rounds = measured.iter().map(|m| m.rounds.len()).max().unwrap_or(0);
        match pipeline {
            1 => writeln!(out, "### Round trips, not pipelined (-P 1)\n")?,
            p => writeln!(out, "### Requests, pipelined (-P {p})\n")?,
        }
        writeln!(
            out,
            "The median of {rounds} rounds; the range is over the rounds.\n"
        )?;
        let unit = unit(pipeline);
        writeln!(
            out,
            "| scenario | test | {unit}/s | range | × direct | × twemproxy | p50 ms | p99 ms \
             | proxy CPU s / 10k {unit} |"
        )?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        let direct = self.find(Scenario::Direct, pipeline);
        let twemproxy = self.find(Scenario::Twemproxy, pipeline);
        for m in measured {
            for test in TESTS {
                let rps = m.rps(test);
                let (lo, hi) = m.spread(test);
                let versus = |base: Option<&Measured>| {
                    base.map_or("–".to_string(), |b| ratio(rps, b.rps(test)))
                };
                writeln!(
                    out,
                    "| {} | {test} | {} | {}–{} | {} | {} | {} | {} | {} |",
                    m.scenario.name(),
                    thousands(rps),
                    thousands(lo),
                    thousands(hi),
                    versus(direct),
                    versus(twemproxy),
                    ms(m.median(|r| r.test(test).map_or(0.0, |t| t.p50_ms))),
                    ms(m.median(|r| r.test(test).map_or(0.0, |t| t.p99_ms))),
                    m.cpu_per_10k()
                        .map_or("–".to_string(), |c| format!("{c:.3}")),
                )?;
            }
        }
        writeln!(out)
    }
}

/// What the rates of `pipeline` count: round trips, or requests when pipelined.
fn unit(pipeline: u32) -> &'static str {
    if pipeline > 1 {
        "requests"
    } else {
        "round trips"
    }
}

/// Requests of each test per run at `pipeline`, from those of a run that is not pipelined.
fn requests_at(requests: u64, pipeline: u32) -> u64 {
    if pipeline > 1 {
        requests * PIPELINED_REQUESTS_FACTOR
    } else {
        requests
    }
}

// === impl Measured ===

impl Measured {
    /// The median round's requests per second of `test`.
    pub fn rps(&self, test: &str) -> f64 {
        self.median(|r| r.test(test).map_or(0.0, |t| t.rps))
    }

    /// The lowest and highest requests per second of `test` over the rounds.
    fn spread(&self, test: &str) -> (f64, f64) {
        self.rounds
            .iter()
            .filter_map(|r| r.test(test))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
                (lo.min(t.rps), hi.max(t.rps))
            })
    }

    /// Whether both were measured in more than one round and their rounds' requests per
    /// second of `test` span ranges that overlap: which of the two is faster is then within
    /// the noise.
    fn overlaps(&self, other: &Self, test: &str) -> bool {
        self.rounds.len() > 1
            && other.rounds.len() > 1
            && crate::report::overlap(self.spread(test), other.spread(test))
    }

    fn median(&self, value: impl Fn(&Round) -> f64) -> f64 {
        crate::report::median(self.rounds.iter().map(value).collect())
    }

    /// The proxies' CPU seconds per 10,000 requests (all tests), the median round.
    fn cpu_per_10k(&self) -> Option<f64> {
        self.rounds.first()?.proxy_cpu_seconds?;
        Some(self.median(|r| match r.proxy_cpu_seconds {
            Some(cpu) if r.round_trips > 0 => cpu / r.round_trips as f64 * 10_000.0,
            _ => 0.0,
        }))
    }
}

impl Round {
    fn test(&self, test: &str) -> Option<&TestRound> {
        self.tests.iter().find(|t| t.test == test)
    }
}

// === helpers ===

/// A long-running program in a pod (redis-server, nutcracker). Dropping it kills it (SIGKILL)
/// and reaps it.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Spawns `command` (stdout and stderr to `log`) and waits until `port` accepts on `pod`'s
    /// loopback.
    fn start(
        name: &str,
        pod: &Pod,
        mut command: Command,
        port: u16,
        log: &Path,
    ) -> anyhow::Result<Daemon> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {name} in pod {}: install it with `scripts/setup-bench.sh`",
                    pod.name
                )
            })?;
        // On an error `daemon` is dropped, which kills it.
        let mut daemon = Daemon { child };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait().context("waiting for it")? {
                bail!(
                    "{name} in pod {} exited ({status}); its log ({}):\n{}",
                    pod.name,
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default().trim()
                );
            }
            let listening = pod
                .run_in(move || {
                    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                    Ok(TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok())
                })
                .join()
                .map_err(|_| anyhow!("the readiness probe thread panicked"))??;
            if listening {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} in pod {} not listening on port {port} after {READY_TIMEOUT:?}",
                    pod.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (`ip netns exec` execs into the program, keeping it).
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Our own child: already gone is fine, `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-server on every address of `pod`, in the foreground, without persistence; its working
/// folder is `dir`.
fn redis_server(pod: &Pod, dir: &Path) -> Command {
    let mut command = pod.command("redis-server");
    command
        .args(["--port", &REDIS_PORT.to_string()])
        .args(["--bind", "0.0.0.0", "--protected-mode", "no"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    command
}

/// nutcracker's configuration: one Redis pool on the client pod's loopback with `upstream` as
/// its only server (weight 1), its defaults otherwise (one server connection).
pub fn nutcracker_config(upstream: SocketAddr) -> String {
    format!(
        "\
bench:
  listen: 127.0.0.1:{NUTCRACKER_PORT}
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  servers:
   - {upstream}:1
"
    )
}

fn watched(name: &str, pid: u32) -> Watched {
    Watched {
        name: name.to_string(),
        pid,
    }
}

/// The versions of the three programs, e.g. `Redis server v=7.0.15`.
fn versions() -> anyhow::Result<Vec<String>> {
    let mut versions = Vec::new();
    for (program, flag) in [
        ("redis-server", "--version"),
        ("redis-benchmark", "--version"),
        ("nutcracker", "-V"),
    ] {
        let output = Command::new(program)
            .arg(flag)
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!("running {program} {flag}: install it with `scripts/setup-bench.sh`")
            })?;
        // nutcracker prints its version on stderr.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        if !output.status.success() || first.is_empty() {
            bail!("{program} {flag} failed ({})", output.status);
        }
        versions.push(short_version(first));
    }
    Ok(versions)
}

/// `Redis server v=7.0.15 sha=… malloc=…` → `Redis server v=7.0.15`; `This is nutcracker-0.5.0`
/// → `nutcracker-0.5.0`.
fn short_version(line: &str) -> String {
    let line = line.strip_prefix("This is ").unwrap_or(line);
    match line.find(" sha=") {
        Some(end) => line[..end].to_string(),
        None => line.to_string(),
    }
}

/// Runs `redis-benchmark` in `pod` against `addr` at `pipeline` and returns its CSV output;
/// killed if it runs slower than [`SLOWEST_RATE`] (not pipelined) or
/// [`SLOWEST_PIPELINED_RATE`], after `stuck` has looked at what holds it up.
fn benchmark(
    pod: &Pod,
    addr: SocketAddr,
    connections: u32,
    requests: u64,
    pipeline: u32,
    stuck: &dyn Fn(),
) -> anyhow::Result<String> {
    let what = format!(
        "redis-benchmark -P {pipeline} against {addr} in pod {}",
        pod.name
    );
    let mut child = pod
        .command("redis-benchmark")
        .args(benchmark_args(addr, connections, requests, pipeline))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = crate::oha::drain(child.stdout.take());
    let stderr = crate::oha::drain(child.stderr.take());
    let limit = run_limit(requests, pipeline);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break status;
        }
        if crate::INTERRUPTED.load(Ordering::Relaxed) || Instant::now() >= deadline {
            if !crate::INTERRUPTED.load(Ordering::Relaxed) {
                stuck();
            }
            // Our own child: kill it by its handle, then reap it.
            let _ = child.kill();
            let _ = child.wait();
            if crate::INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            bail!("{what} still ran after {limit:?}: killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = crate::oha::join(stdout);
    let stderr = crate::oha::join(stderr);
    if !status.success() {
        bail!("{what} failed ({status}): {}", stderr.trim());
    }
    Ok(stdout)
}

/// How long a run of `requests` per test at `pipeline` may take: 10 s, plus its requests at
/// the slowest rate waited for.
fn run_limit(requests: u64, pipeline: u32) -> Duration {
    let slowest = if pipeline > 1 {
        SLOWEST_PIPELINED_RATE
    } else {
        SLOWEST_RATE
    };
    Duration::from_secs(10 + requests * TESTS.len() as u64 / slowest.max(1))
}

/// redis-benchmark's arguments: GET and SET, `connections` clients, `pipeline` requests per
/// round trip, CSV output.
pub fn benchmark_args(
    addr: SocketAddr,
    connections: u32,
    requests: u64,
    pipeline: u32,
) -> Vec<String> {
    [
        "-h".to_string(),
        addr.ip().to_string(),
        "-p".to_string(),
        addr.port().to_string(),
        "-c".to_string(),
        connections.to_string(),
        "-n".to_string(),
        requests.to_string(),
        "-P".to_string(),
        pipeline.to_string(),
        "-t".to_string(),
        "set,get".to_string(),
        "--csv".to_string(),
    ]
    .to_vec()
}

/// Parses redis-benchmark's `--csv` output: a header line, then one line per test.
fn parse_csv(csv: &str) -> anyhow::Result<Vec<TestRound>> {
    let mut lines = csv.lines().map(str::trim).filter(|l| !l.is_empty());
    let fields = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let header = fields(lines.next().ok_or_else(|| anyhow!("no output"))?);
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("no {name:?} column in {header:?}"))
    };
    let (test, rps, p50, p99) = (
        column("test")?,
        column("rps")?,
        column("p50_latency_ms")?,
        column("p99_latency_ms")?,
    );
    let mut tests = Vec::new();
    for line in lines {
        let row = fields(line);
        let number = |i: usize| -> anyhow::Result<f64> {
            let value = row.get(i).ok_or_else(|| anyhow!("short line {line:?}"))?;
            value
                .parse()
                .map_err(|_| anyhow!("{value:?} in {line:?} is not a number"))
        };
        tests.push(TestRound {
            test: row.get(test).cloned().unwrap_or_default(),
            rps: number(rps)?,
            p50_ms: number(p50)?,
            p99_ms: number(p99)?,
        });
    }
    for name in TESTS {
        if !tests.iter().any(|t| t.test == name) {
            bail!("no {name} line");
        }
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                   \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"53475.93\",\"0.632\",\"0.144\",\"0.615\",\"0.927\",\"1.135\",\"6.095\"\n\
                   \"GET\",\"57971.02\",\"0.577\",\"0.144\",\"0.559\",\"0.799\",\"0.895\",\"5.167\"\n";
        assert_eq!(
            parse_csv(csv).expect("valid output"),
            [
                TestRound {
                    test: "SET".into(),
                    rps: 53475.93,
                    p50_ms: 0.615,
                    p99_ms: 1.135
                },
                TestRound {
                    test: "GET".into(),
                    rps: 57971.02,
                    p50_ms: 0.559,
                    p99_ms: 0.895
                },
            ]
        );
        let err = |csv: &str| format!("{:#}", parse_csv(csv).expect_err("invalid output"));
        assert_eq!(err(""), "no output");
        assert_eq!(
            err("\"test\",\"rps\",\"p50_latency_ms\",\"p99_latency_ms\"\n\"SET\",\"1\",\"2\",\"3\"\n"),
            "no GET line"
        );
        assert!(err("\"test\",\"rps\"\n").starts_with("no \"p50_latency_ms\" column"));
    }

    fn round(set: f64, get: f64, cpu: Option<f64>) -> Round {
        Round {
            tests: vec![
                TestRound {
                    test: "SET".into(),
                    rps: set,
                    p50_ms: 0.5,
                    p99_ms: 1.0,
                },
                TestRound {
                    test: "GET".into(),
                    rps: get,
                    p50_ms: 0.4,
                    p99_ms: 0.9,
                },
            ],
            round_trips: 20_000,
            proxy_cpu_seconds: cpu,
            codec_requests: None,
            others_cpu_seconds: 0.0,
            seconds: 1.0,
            csv: String::new(),
        }
    }

    fn measured(scenario: Scenario, pipeline: u32, rounds: Vec<Round>) -> Measured {
        Measured {
            scenario,
            pipeline,
            rounds,
        }
    }

    #[test]
    fn a_verdict_says_when_the_rounds_overlap() {
        let results = Results {
            requests: 10_000,
            pipelined_requests: 50_000,
            connections: 50,
            versions: vec![],
            scenarios: vec![
                measured(
                    Scenario::Twemproxy,
                    1,
                    vec![
                        round(40_000.0, 30_000.0, Some(0.2)),
                        round(50_000.0, 30_000.0, Some(0.2)),
                    ],
                ),
                // SET: 45,000–55,000 against 40,000–50,000, within the noise; GET: every
                // round below every round of twemproxy.
                measured(
                    Scenario::Codec,
                    1,
                    vec![
                        round(45_000.0, 20_000.0, Some(0.2)),
                        round(55_000.0, 25_000.0, Some(0.2)),
                    ],
                ),
            ],
            missing: vec![],
            failed: vec![],
            redone: 0,
        };
        let verdicts = results.verdicts();
        let (_, cells) = verdicts
            .iter()
            .find(|(n, _)| n == "round trips per second of codec 1-hop at least twemproxy's (-P 1)")
            .expect("the row");
        assert_eq!(
            cells,
            &[
                "50,000 vs 45,000 round trips/s (1.11×): met (the rounds' ranges overlap)",
                "22,500 vs 30,000 round trips/s (0.75×): **not met**"
            ]
        );
    }

    #[test]
    fn report() {
        let results = Results {
            requests: 10_000,
            pipelined_requests: 50_000,
            connections: 50,
            versions: vec!["Redis server v=7.0.15".into()],
            scenarios: vec![
                measured(
                    Scenario::Direct,
                    1,
                    vec![
                        round(50_000.0, 60_000.0, None),
                        round(40_000.0, 50_000.0, None),
                    ],
                ),
                measured(
                    Scenario::Twemproxy,
                    1,
                    vec![round(40_000.0, 30_000.0, Some(0.2))],
                ),
                measured(
                    Scenario::Codec,
                    1,
                    vec![round(44_000.0, 29_000.0, Some(0.3))],
                ),
                measured(
                    Scenario::CodecTwoHop,
                    1,
                    vec![round(22_500.0, 27_500.0, Some(0.6))],
                ),
                measured(
                    Scenario::OneHop,
                    1,
                    vec![round(30_000.0, 40_000.0, Some(0.4))],
                ),
                measured(
                    Scenario::Direct,
                    16,
                    vec![round(400_000.0, 500_000.0, None)],
                ),
                measured(
                    Scenario::Twemproxy,
                    16,
                    vec![round(200_000.0, 250_000.0, Some(0.1))],
                ),
                measured(
                    Scenario::OneHop,
                    16,
                    vec![round(300_000.0, 300_000.0, Some(0.1))],
                ),
            ],
            missing: vec![(Scenario::OneHopBefore, "no pre-rebuild proxy".into())],
            failed: vec![
                Failure {
                    scenario: Scenario::Codec,
                    pipeline: 16,
                    round: 2,
                    why: "not every request went through the codec: the client proxy counted \
                          0 SET requests with codec=\"redis\" of 50,000 sent"
                        .into(),
                },
                Failure {
                    scenario: Scenario::CodecTwoHop,
                    pipeline: 16,
                    round: 1,
                    why: "warming up: redis-benchmark failed.".into(),
                },
            ],
            redone: 0,
        };
        let verdicts: Vec<(String, Vec<String>)> = results.verdicts();
        let row = |name: &str| -> Vec<String> {
            verdicts
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no row {name:?} in {verdicts:?}"))
                .1
                .clone()
        };
        assert_eq!(
            row("round trips per second of codec 1-hop at least twemproxy's (-P 1)"),
            [
                "44,000 vs 40,000 round trips/s (1.10×): met",
                "29,000 vs 30,000 round trips/s (0.97×): **not met**"
            ]
        );
        assert_eq!(
            row(
                "round trips per second of codec 1-hop at least twemproxy's \
                 (-P 16: requests per second)"
            ),
            [
                "codec 1-hop failed (see above)",
                "codec 1-hop failed (see above)"
            ]
        );
        assert_eq!(
            row("codec 2-hop (mutual TLS) against direct (-P 1)"),
            [
                "22,500 vs 45,000 round trips/s (0.50×)",
                "27,500 vs 55,000 round trips/s (0.50×)"
            ]
        );
        assert_eq!(
            row("round trips per second of one hop at least twemproxy's (1-hop vs twemproxy, -P 16)"),
            [
                "300,000 vs 200,000 requests/s (1.50×): met",
                "300,000 vs 250,000 requests/s (1.20×): met"
            ]
        );
        assert_eq!(
            row(
                "round trips per second of one hop at least the pre-rebuild proxy's \
                 (1-hop vs 1-hop (before), -P 1)"
            ),
            ["not measured", "not measured"]
        );
        assert_eq!(verdicts.len(), 8);

        let mut md = String::new();
        results
            .write_markdown(&mut md)
            .expect("writing to a String");
        for line in [
            "| direct | SET | 45,000 | 40,000–50,000 | 1.00× | 1.12× | 0.500 | 1.000 | – |",
            "| 1-hop | GET | 40,000 | 40,000–40,000 | 0.73× | 1.33× | 0.400 | 0.900 | 0.200 |",
            "| codec 1-hop | SET | 44,000 | 44,000–44,000 | 0.98× | 1.10× | 0.500 | 1.000 | 0.150 |",
            "| codec 2-hop | GET | 27,500 | 27,500–27,500 | 0.50× | 0.92× | 0.400 | 0.900 | 0.300 |",
            "### Round trips, not pipelined (-P 1)",
            "### Requests, pipelined (-P 16)",
            "| scenario | test | requests/s | range | × direct | × twemproxy | p50 ms | p99 ms \
             | proxy CPU s / 10k requests |",
            "| twemproxy | SET | 200,000 | 200,000–200,000 | 0.50× | 1.00× | 0.500 | 1.000 | 0.050 |",
            "**1-hop (before) was not measured**: no pre-rebuild proxy.",
            "**codec 1-hop (-P 16) failed** in round 2: not every request went through the \
             codec: the client proxy counted 0 SET requests with codec=\"redis\" of 50,000 sent.",
            "**codec 2-hop (-P 16) failed** in round 1: warming up: redis-benchmark failed.\n",
            "(`-P 1`, N = 10,000)",
            "(`-P 16`, N = 50,000)",
        ] {
            assert!(md.contains(line), "no {line:?} in:\n{md}");
        }
        // A failed scenario has no rows.
        assert!(!md.contains("| codec 1-hop | SET | 0 |"), "{md}");
    }

    /// The client proxy's metrics after a codec run: outbound Redis requests to two targets
    /// (summed), an HTTP request and an inbound one (not counted).
    const CLIENT_METRICS: &str = "\
# HELP request_total Requests.
# TYPE request_total counter
request_total{direction=\"outbound\",authority=\"10.96.0.30:6379\",target_addr=\"10.244.0.2:6379\",tls=\"no_identity\",no_tls_reason=\"not_provided_by_service_discovery\",codec=\"redis\",method=\"SET\"} 60000
request_total{direction=\"outbound\",authority=\"10.96.0.31:6379\",target_addr=\"10.244.0.9:6379\",tls=\"true\",server_id=\"redis-server.bench.serviceaccount.identity.mesh.cluster.local\",codec=\"redis\",method=\"SET\"} 40000
request_total{direction=\"outbound\",authority=\"10.96.0.31:6379\",target_addr=\"10.244.0.9:6379\",tls=\"true\",server_id=\"x\",codec=\"redis\",method=\"GET\"} 100002
request_total{direction=\"outbound\",authority=\"10.96.0.31:6379\",target_addr=\"10.244.0.9:6379\",tls=\"true\",server_id=\"x\",codec=\"redis\",method=\"CONFIG\"} 2
request_total{direction=\"outbound\",authority=\"web:80\",target_addr=\"10.244.0.9:80\",tls=\"true\",server_id=\"x\"} 7
request_total{direction=\"inbound\",authority=\"\",target_addr=\"127.0.0.1:6379\",tls=\"true\",client_id=\"x\",codec=\"redis\",method=\"GET\"} 5
response_total{direction=\"outbound\",authority=\"10.96.0.30:6379\",target_addr=\"10.244.0.2:6379\",tls=\"true\",codec=\"redis\",method=\"SET\",classification=\"success\"} 60000
";

    #[test]
    fn codec_counts() {
        let counted = Counted::parse(CLIENT_METRICS, "outbound");
        let count = |requests, mutual_tls| Count {
            requests,
            mutual_tls,
        };
        assert_eq!(counted.method("SET"), count(100_000, 40_000));
        assert_eq!(counted.method("GET"), count(100_002, 100_002));
        assert_eq!(counted.method("CONFIG"), count(2, 2));
        assert_eq!(counted.method("DEL"), count(0, 0));
        assert_eq!(
            Counted::parse(CLIENT_METRICS, "inbound").method("GET"),
            count(5, 5)
        );
        assert_eq!(Counted::parse("", "outbound"), Counted::default());

        let before = Counted::parse(
            "request_total{direction=\"outbound\",codec=\"redis\",method=\"SET\",tls=\"true\"} 10\n\
             request_total{direction=\"outbound\",codec=\"redis\",method=\"GET\"} 200000\n",
            "outbound",
        );
        let since = counted.since(&before);
        assert_eq!(since.method("SET"), count(99_990, 39_990));
        // Counted from zero again (a restart): the whole count.
        assert_eq!(since.method("GET"), count(100_002, 100_002));

        assert_eq!(
            parse_labels(r#"a="1",b="x\"y",c="",d="\\n""#),
            BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x\"y".to_string()),
                ("c".to_string(), String::new()),
                ("d".to_string(), "\\n".to_string()),
            ])
        );
    }

    #[test]
    fn codec_check() {
        let counted = |set: (u64, u64), get: (u64, u64)| {
            let count = |(requests, mutual_tls)| Count {
                requests,
                mutual_tls,
            };
            Counted(BTreeMap::from([
                ("SET".to_string(), count(set)),
                ("GET".to_string(), count(get)),
            ]))
        };
        let one_hop = |set, get| Seen {
            client: counted(set, get),
            server: None,
        };
        assert_eq!(
            check_codec(&one_hop((100_000, 0), (100_001, 0)), 100_000),
            Ok(200_001)
        );
        assert_eq!(
            check_codec(&one_hop((0, 0), (100_000, 0)), 100_000),
            Err(
                "the client proxy counted 0 SET requests with codec=\"redis\" of 100,000 sent"
                    .into()
            )
        );
        let two_hop = |client, server| Seen {
            client,
            server: Some(server),
        };
        let all = counted((1_000, 1_000), (1_000, 1_000));
        assert_eq!(
            check_codec(&two_hop(all.clone(), all.clone()), 1_000),
            Ok(2_000)
        );
        assert_eq!(
            check_codec(
                &two_hop(
                    counted((1_000, 0), (1_000, 1_000)),
                    counted((999, 999), (1_000, 1_000))
                ),
                1_000
            ),
            Err(
                "the client proxy counted 0 SET requests over mutual TLS (tls=\"true\") of \
                 1,000 sent; the server proxy counted 999 SET requests with codec=\"redis\" of \
                 1,000 sent"
                    .into()
            )
        );
    }

    #[test]
    fn arguments_and_configuration() {
        let addr = SocketAddr::from(([10, 244, 0, 2], REDIS_PORT));
        assert_eq!(
            benchmark_args(addr, 50, 100_000, 1).join(" "),
            "-h 10.244.0.2 -p 6379 -c 50 -n 100000 -P 1 -t set,get --csv"
        );
        assert_eq!(
            benchmark_args(
                SocketAddr::from(([10, 96, 0, 30], REDIS_PORT)),
                50,
                500_000,
                16
            )
            .join(" "),
            "-h 10.96.0.30 -p 6379 -c 50 -n 500000 -P 16 -t set,get --csv"
        );
        let plan = Plan {
            requests: 20_000,
            connections: 50,
            rounds: 2,
            cores: 2,
            baseline_path: String::new(),
            scenarios: Vec::new(),
        };
        assert_eq!(
            PIPELINES.map(|p| plan.requests(p)),
            [20_000, 20_000 * PIPELINED_REQUESTS_FACTOR]
        );
        // 200,000 round trips at 2,000/s; 1,000,000 pipelined requests at 10,000/s.
        assert_eq!(run_limit(100_000, 1), Duration::from_secs(110));
        assert_eq!(run_limit(500_000, 16), Duration::from_secs(110));
        let config = nutcracker_config(addr);
        assert!(config.contains("  redis: true\n"), "{config}");
        assert!(config.contains("  listen: 127.0.0.1:22121\n"), "{config}");
        assert!(
            config.ends_with("  servers:\n   - 10.244.0.2:6379:1\n"),
            "{config}"
        );
        assert_eq!(
            short_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0"),
            "Redis server v=7.0.15"
        );
        assert_eq!(
            short_version("This is nutcracker-0.5.0"),
            "nutcracker-0.5.0"
        );
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
