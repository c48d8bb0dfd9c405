//! Opaque TCP: `redis-benchmark` against `redis-server` directly, through one meshed hop (the
//! current and the pre-rebuild proxy, copying bytes on the opaque port 6379) and through
//! twemproxy (`nutcracker`, a Redis-aware proxy) on the client pod's loopback.
//!
//! ```text
//! client         redis-benchmark ─────────────────────────────▶ server  redis-server :6379
//! client-meshed  redis-benchmark ─▶ outbound 4140 (opaque) ────▶ server  redis-server :6379
//! client-before  redis-benchmark ─▶ outbound 4140 (opaque) ────▶ server  redis-server :6379
//! client         redis-benchmark ─▶ nutcracker 127.0.0.1:22121 ─▶ server  redis-server :6379
//! ```

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::Pod;
use serde::Serialize;

use crate::report::BUSY_ELSEWHERE;
use crate::resources::{Meter, Watched};
use crate::testbed::Testbed;
use crate::units::{ms, ratio, thousands};

/// redis-server's port: opaque in the proxy's default `MESH_PROXY_OUTBOUND_OPAQUE_PORTS`.
pub const REDIS_PORT: u16 = 6379;
/// nutcracker's listener, on the client pod's loopback.
const NUTCRACKER_PORT: u16 = 22121;
/// nutcracker's stats listener, on the client pod's loopback.
const NUTCRACKER_STATS_PORT: u16 = 22222;
/// The commands measured, in the order redis-benchmark runs them.
pub const TESTS: [&str; 2] = ["SET", "GET"];
/// How long redis-server and nutcracker may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The warm-up before each scenario's first round: connections open, twemproxy connects.
const WARM_UP_REQUESTS: u64 = 2_000;
/// The slowest rate at which a run is still waited for (round trips per second over both
/// tests); below it the run is killed, so that the benchmark always ends.
const SLOWEST_RATE: u64 = 2_000;
/// How many runs may be measured again because other processes were busy meanwhile.
const MAX_REDOS: u32 = 4;

/// What carries the round trips between redis-benchmark and redis-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// The baseline: the unmeshed client pod to the server pod.
    Direct,
    /// The meshed client pod: its outbound proxy copies the bytes (opaque port).
    OneHop,
    /// The same through the pre-rebuild proxy.
    OneHopBefore,
    /// nutcracker in the unmeshed client pod, which parses each command and forwards it on
    /// its own connection to the server.
    Twemproxy,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::OneHop => "1-hop",
            Scenario::OneHopBefore => "1-hop (before)",
            Scenario::Twemproxy => "twemproxy",
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests of each test per run (`-n`).
    pub requests: u64,
    /// Client connections (`-c`).
    pub connections: u32,
    /// Rounds; each interleaves the scenarios.
    pub rounds: usize,
    /// The machine's cores, to tell when others were busy.
    pub cores: usize,
    /// Where the pre-rebuild proxy was looked for, to say so when the testbed has none.
    pub baseline_path: String,
}

/// Every scenario's rounds, and how they were run.
#[derive(Debug, Serialize)]
pub struct Results {
    pub requests: u64,
    pub connections: u32,
    /// `redis-server --version`, `redis-benchmark --version` and `nutcracker -V`.
    pub versions: Vec<String>,
    pub scenarios: Vec<Measured>,
    /// Scenarios not measured, and why.
    pub missing: Vec<(Scenario, String)>,
    /// Runs thrown away because other processes were busy.
    pub redone: u32,
}

/// One scenario's rounds.
#[derive(Debug, Serialize)]
pub struct Measured {
    pub scenario: Scenario,
    pub rounds: Vec<Round>,
}

/// One run of redis-benchmark: every test's numbers, and what the proxy on the path used.
#[derive(Debug, Serialize)]
pub struct Round {
    pub tests: Vec<TestRound>,
    /// Round trips in the run: every test's requests.
    pub round_trips: u64,
    /// CPU seconds of the proxy on the path (mesh-proxy or nutcracker) over the whole run.
    pub proxy_cpu_seconds: Option<f64>,
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
    /// Requests per second; each is one round trip (no pipelining).
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Starts redis-server in the server pod and nutcracker in the client pod, then measures every
/// scenario in `plan.rounds` interleaved rounds.
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

    let mut missing = Vec::new();
    let mut targets: Vec<(Scenario, &Pod, SocketAddr, Option<Watched>)> = vec![
        (Scenario::Direct, pods.client, upstream, None),
        (
            Scenario::OneHop,
            pods.meshed.0,
            upstream,
            Some(watched("client proxy", pods.meshed.1)),
        ),
    ];
    match pods.before {
        Some((pod, pid)) => targets.push((
            Scenario::OneHopBefore,
            pod,
            upstream,
            Some(watched("client proxy", pid)),
        )),
        None => missing.push((
            Scenario::OneHopBefore,
            format!(
                "no pre-rebuild proxy at `{}` (scripts/setup-bench.sh builds it, or pass \
                 --baseline-proxy PATH)",
                plan.baseline_path
            ),
        )),
    }
    targets.push((
        Scenario::Twemproxy,
        pods.client,
        SocketAddr::from((Ipv4Addr::LOCALHOST, NUTCRACKER_PORT)),
        Some(watched("nutcracker", nutcracker.pid())),
    ));

    let mut scenarios: Vec<Measured> = targets
        .iter()
        .map(|&(scenario, ..)| Measured {
            scenario,
            rounds: Vec::new(),
        })
        .collect();
    let mut redos_left = MAX_REDOS;
    let mut redone = 0;
    for round in 0..plan.rounds {
        for (measured, (scenario, pod, addr, proxy)) in scenarios.iter_mut().zip(&targets) {
            let what = format!("redis {} run, round {}", scenario.name(), round + 1);
            if round == 0 {
                benchmark(pod, *addr, plan.connections, WARM_UP_REQUESTS)
                    .with_context(|| format!("{what}: warming up"))?;
            }
            loop {
                if crate::INTERRUPTED.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                let watched: Vec<Watched> = proxy.iter().cloned().collect();
                let meter = Meter::start(clock_ticks, &watched)?;
                let started = Instant::now();
                let csv = benchmark(pod, *addr, plan.connections, plan.requests)
                    .with_context(|| what.clone())?;
                let seconds = started.elapsed().as_secs_f64();
                let metered = meter.finish()?;
                let tests = parse_csv(&csv).with_context(|| format!("{what}: {csv}"))?;
                let r = Round {
                    round_trips: plan.requests * tests.len() as u64,
                    tests,
                    proxy_cpu_seconds: metered.usage.first().map(|u| u.cpu_seconds),
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
                    "mesh-bench: {what:<42} {}  others' CPU {:.0} %",
                    numbers.join("  "),
                    others * 100.0
                );
                if others > BUSY_ELSEWHERE && redos_left > 0 {
                    redos_left -= 1;
                    redone += 1;
                    eprintln!("mesh-bench: the machine was busy; measuring again");
                    continue;
                }
                measured.rounds.push(r);
                break;
            }
        }
    }
    Ok(Results {
        requests: plan.requests,
        connections: plan.connections,
        versions,
        scenarios,
        missing,
        redone,
    })
}

// === impl Results ===

impl Results {
    fn find(&self, scenario: Scenario) -> Option<&Measured> {
        self.scenarios.iter().find(|m| m.scenario == scenario)
    }

    /// The target rows: one hop against twemproxy, and after against before; one cell per test.
    pub fn verdicts(&self) -> Vec<(String, Vec<String>)> {
        let versus = |a: Scenario, b: Scenario| -> Vec<String> {
            TESTS
                .iter()
                .map(|test| {
                    match (
                        self.find(a).map(|m| m.rps(test)),
                        self.find(b).map(|m| m.rps(test)),
                    ) {
                        (Some(x), Some(y)) => format!(
                            "{} vs {} round trips/s ({}): {}",
                            thousands(x),
                            thousands(y),
                            ratio(x, y),
                            crate::report::met(x >= y)
                        ),
                        _ => "not measured".to_string(),
                    }
                })
                .collect()
        };
        vec![
            (
                "round trips per second of one hop at least twemproxy's (1-hop vs twemproxy)"
                    .to_string(),
                versus(Scenario::OneHop, Scenario::Twemproxy),
            ),
            (
                "round trips per second of one hop at least the pre-rebuild proxy's \
                 (1-hop vs 1-hop (before))"
                    .to_string(),
                versus(Scenario::OneHop, Scenario::OneHopBefore),
            ),
        ]
    }

    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "`redis-server` (Debian's, no persistence) listens on port {REDIS_PORT} in the \
             unmeshed server pod. `redis-benchmark -c {} -n {} -P 1 -t set,get --csv` runs in a \
             client pod: {} connections, no pipelining, so every request is one round trip; \
             each run is {} SETs, then {} GETs. Port {REDIS_PORT} is opaque in the proxy's \
             default `MESH_PROXY_OUTBOUND_OPAQUE_PORTS`: the proxy copies bytes without \
             parsing them, one upstream connection per client connection.\n",
            self.connections,
            self.requests,
            self.connections,
            thousands(self.requests as f64),
            thousands(self.requests as f64),
        )?;
        writeln!(
            out,
            "- **direct**: the unmeshed client pod → the server pod; the baseline.\n\
             - **1-hop**: the meshed client pod (`mesh-init` redirect + `mesh-proxy` outbound, \
             the same pod and proxy as the proxy part's 1-hop) → the server pod.\n\
             - **1-hop (before)**: the same through the pre-rebuild proxy.\n\
             - **twemproxy**: `nutcracker` (one pool, `redis: true`, the server as its only \
             server, its defaults otherwise) in the unmeshed client pod on 127.0.0.1:\
             {NUTCRACKER_PORT}; it parses every command and, by default, forwards them all on \
             one connection to the server (pipelining the clients' requests), which a \
             byte-copying proxy cannot do.\n"
        )?;
        writeln!(
            out,
            "Each scenario's first round is preceded by a warm-up of {} requests; the rounds \
             interleave the scenarios and the tables show the median round. Proxy CPU is user + \
             system time of the proxy on the path (mesh-proxy or nutcracker) per 10,000 round \
             trips. Versions: {}.\n",
            thousands(WARM_UP_REQUESTS as f64),
            self.versions.join("; "),
        )?;
        for (scenario, why) in &self.missing {
            writeln!(out, "**{} was not measured**: {why}.\n", scenario.name())?;
        }

        writeln!(out, "### Targets\n")?;
        writeln!(out, "| target | {} |", TESTS.join(" | "))?;
        writeln!(out, "|---|---|---|")?;
        for (target, cells) in self.verdicts() {
            writeln!(out, "| {target} | {} |", cells.join(" | "))?;
        }
        writeln!(out)?;

        let rounds = self.scenarios.first().map_or(0, |m| m.rounds.len());
        writeln!(out, "### Round trips\n")?;
        writeln!(
            out,
            "The median of {rounds} rounds; the range is over the rounds.\n"
        )?;
        writeln!(
            out,
            "| scenario | test | round trips/s | range | × direct | × twemproxy | p50 ms | p99 ms \
             | proxy CPU s / 10k round trips |"
        )?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        let direct = self.find(Scenario::Direct);
        let twemproxy = self.find(Scenario::Twemproxy);
        for m in &self.scenarios {
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
                        .map_or("–".to_string(), |c| format!("{c:.2}")),
                )?;
            }
        }
        writeln!(out)?;
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
}

// === impl Measured ===

impl Measured {
    /// The median round's round trips per second of `test`.
    pub fn rps(&self, test: &str) -> f64 {
        self.median(|r| r.test(test).map_or(0.0, |t| t.rps))
    }

    /// The lowest and highest round trips per second of `test` over the rounds.
    fn spread(&self, test: &str) -> (f64, f64) {
        self.rounds
            .iter()
            .filter_map(|r| r.test(test))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
                (lo.min(t.rps), hi.max(t.rps))
            })
    }

    fn median(&self, value: impl Fn(&Round) -> f64) -> f64 {
        crate::report::median(self.rounds.iter().map(value).collect())
    }

    /// The proxy's CPU seconds per 10,000 round trips (all tests), the median round.
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

/// Runs `redis-benchmark` in `pod` against `addr` and returns its CSV output; killed if it runs
/// slower than [`SLOWEST_RATE`].
fn benchmark(
    pod: &Pod,
    addr: SocketAddr,
    connections: u32,
    requests: u64,
) -> anyhow::Result<String> {
    let what = format!("redis-benchmark against {addr} in pod {}", pod.name);
    let mut child = pod
        .command("redis-benchmark")
        .args(benchmark_args(addr, connections, requests))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = crate::oha::drain(child.stdout.take());
    let stderr = crate::oha::drain(child.stderr.take());
    let limit = Duration::from_secs(10 + requests * TESTS.len() as u64 / SLOWEST_RATE.max(1));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break status;
        }
        if crate::INTERRUPTED.load(Ordering::Relaxed) || Instant::now() >= deadline {
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

/// redis-benchmark's arguments: GET and SET, `connections` clients, no pipelining, CSV output.
pub fn benchmark_args(addr: SocketAddr, connections: u32, requests: u64) -> Vec<String> {
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
        "1".to_string(),
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

    #[test]
    fn report() {
        let round = |set: f64, get: f64, cpu: Option<f64>| Round {
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
            others_cpu_seconds: 0.0,
            seconds: 1.0,
            csv: String::new(),
        };
        let measured = |scenario, rounds| Measured { scenario, rounds };
        let results = Results {
            requests: 10_000,
            connections: 50,
            versions: vec!["Redis server v=7.0.15".into()],
            scenarios: vec![
                measured(
                    Scenario::Direct,
                    vec![
                        round(50_000.0, 60_000.0, None),
                        round(40_000.0, 50_000.0, None),
                    ],
                ),
                measured(Scenario::OneHop, vec![round(30_000.0, 40_000.0, Some(0.4))]),
                measured(
                    Scenario::Twemproxy,
                    vec![round(40_000.0, 30_000.0, Some(0.2))],
                ),
            ],
            missing: vec![(Scenario::OneHopBefore, "no pre-rebuild proxy".into())],
            redone: 0,
        };
        let verdicts: Vec<Vec<String>> = results.verdicts().into_iter().map(|v| v.1).collect();
        assert_eq!(
            verdicts,
            [
                vec![
                    "30,000 vs 40,000 round trips/s (0.75×): **not met**",
                    "40,000 vs 30,000 round trips/s (1.33×): met"
                ],
                vec!["not measured", "not measured"],
            ]
        );
        let mut md = String::new();
        results
            .write_markdown(&mut md)
            .expect("writing to a String");
        assert!(
            md.contains(
                "| direct | SET | 45,000 | 40,000–50,000 | 1.00× | 1.12× | 0.500 | 1.000 | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1-hop | GET | 40,000 | 40,000–40,000 | 0.73× | 1.33× | 0.400 | 0.900 | 0.20 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("**1-hop (before) was not measured**: no pre-rebuild proxy."),
            "{md}"
        );
    }

    #[test]
    fn arguments_and_configuration() {
        let addr = SocketAddr::from(([10, 244, 0, 2], REDIS_PORT));
        assert_eq!(
            benchmark_args(addr, 50, 100_000).join(" "),
            "-h 10.244.0.2 -p 6379 -c 50 -n 100000 -P 1 -t set,get --csv"
        );
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
    }
}
