//! The results of one benchmark run and their Markdown report: tables of absolute values and ratios to the direct call, and the targets, met or not.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::oha::{Load, Protocol, Run};
use crate::resources::Usage;
use crate::testbed::Scenario;
use crate::units::{mb, ms, ratio, signed_ms, thousands};

/// Two hops may add at most this much to the direct call's p99 at the fixed rate, in ms.
pub const TARGET_ADDED_P99_MS: f64 = 0.5;
/// A proxy's peak RSS at the fixed rate must stay under this, in bytes (12 MB).
pub const TARGET_PEAK_RSS_BYTES: u64 = 12_000_000;
/// A share of the machine's CPU used by others during a run above which the report calls the
/// machine busy; `mesh-bench` measures such a run again (a few times at most).
pub const BUSY_ELSEWHERE: f64 = 0.10;
/// The request rate the latency and memory targets are defined at.
pub const TARGET_RATE: u32 = 2_000;

/// Everything one run of `mesh-bench` measured, and how; serialized as the raw results file.
#[derive(Debug, Serialize)]
pub struct Report {
    /// When the run started, RFC 3339 in UTC.
    pub date: String,
    pub machine: Machine,
    /// The command line that produced the report.
    pub command: String,
    /// `oha --version`, when a part that uses it ran.
    pub oha: Option<String>,
    /// `haproxy -v`, when the proxy part ran.
    pub haproxy: Option<String>,
    /// Where the raw results were written, relative to the report when possible.
    pub results_file: Option<String>,
    /// The parts measured in this run.
    pub parts: Vec<Part>,
    /// The proxy part: every scenario's runs (empty when it did not run).
    pub measurements: Vec<Measurement>,
    /// Mutual-TLS handshakes per second of the inbound listener (the proxy part).
    pub handshakes: Option<crate::handshake::Results>,
    /// The discovery part, when it ran.
    pub discovery: Option<crate::discovery::Results>,
    /// The load-balancing part, when it ran.
    pub balance: Option<crate::balance::Results>,
    /// The routes part, when it ran.
    pub routes: Option<crate::routes::Results>,
    /// The authz part, when it ran.
    pub authz: Option<crate::authz::Results>,
    /// The redis part, when it ran.
    pub redis: Option<crate::redis::Results>,
    /// The pre-rebuild proxy of the "(before)" scenarios, when the proxy or redis part ran.
    pub baseline: Option<Baseline>,
    /// How long the whole run took, in seconds.
    pub took_seconds: f64,
    /// The open-files limit (`RLIMIT_NOFILE`) the benchmark and its pods ran with, when it built
    /// pods.
    pub open_files_limit: Option<u64>,
    /// The report's sections of parts that did not run, carried over from the previous report
    /// (see [`sections`]).
    #[serde(skip)]
    pub carried: BTreeMap<Part, String>,
}

/// A part of the benchmark, which `--only` selects and which has its own report section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The proxy against direct calls and HAProxy, on pods.
    Proxy,
    /// Opaque TCP: redis-benchmark through one hop and through twemproxy, on pods.
    Redis,
    /// Discovery: update propagation to 1,000 watchers and the controller's memory.
    Discovery,
    /// Load balancing between equal endpoints, and between a fast and a slow one, on pods.
    Balance,
    /// Outbound routes: 50 HTTPRoutes on a Service against none, on pods.
    Routes,
    /// Inbound authorization: 20 AuthorizationPolicies on a Server against none, on pods.
    Authz,
}

impl Part {
    /// Every part, in the report's order.
    pub const ALL: [Part; 6] = [
        Part::Proxy,
        Part::Redis,
        Part::Discovery,
        Part::Balance,
        Part::Routes,
        Part::Authz,
    ];

    /// The part's name in markers and flags.
    pub fn name(self) -> &'static str {
        match self {
            Part::Proxy => "proxy",
            Part::Redis => "redis",
            Part::Discovery => "discovery",
            Part::Balance => "balance",
            Part::Routes => "routes",
            Part::Authz => "authz",
        }
    }

    /// The heading of the part's section.
    pub fn title(self) -> &'static str {
        match self {
            Part::Proxy => "Proxy: direct, one hop, two hops (plain and mTLS) and HAProxy",
            Part::Redis => "Redis: opaque TCP through one hop and through twemproxy",
            Part::Discovery => "Discovery: update propagation and controller memory",
            Part::Balance => "Load balancing: equal endpoints, and a fast and a slow one",
            Part::Routes => "Routes: 50 HTTPRoutes on a Service against none",
            Part::Authz => "Authorization: 20 AuthorizationPolicies on a Server against none",
        }
    }

    /// The heading's anchor, as GitHub makes it: lowercase, punctuation dropped, spaces to `-`.
    fn anchor(self) -> String {
        self.title()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }

    /// The HTML comment that opens the part's section in the report.
    fn marker(self) -> String {
        format!("<!-- mesh-bench part: {} -->", self.name())
    }
}

/// The sections of a previous report, by part: from each part's marker to the next marker (or
/// the end). A report written before the markers existed has none.
pub fn sections(markdown: &str) -> BTreeMap<Part, String> {
    let mut found: Vec<(usize, Part)> = Part::ALL
        .iter()
        .filter_map(|&part| Some((markdown.find(&part.marker())?, part)))
        .collect();
    found.sort();
    let mut sections = BTreeMap::new();
    for (i, &(start, part)) in found.iter().enumerate() {
        let end = found.get(i + 1).map_or(markdown.len(), |&(next, _)| next);
        let text = markdown[start..end].trim_end();
        sections.insert(part, format!("{text}\n\n"));
    }
    sections
}

/// The machine the numbers come from.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Available cores (`nproc`).
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// The CPU's model name, when `/proc/cpuinfo` has one.
    pub cpu: Option<String>,
    /// Total memory in bytes.
    pub memory_bytes: Option<u64>,
}

/// The pre-rebuild proxy that the "(before)" scenarios run.
#[derive(Debug, Serialize)]
pub struct Baseline {
    /// Its executable, or where it was looked for.
    pub path: String,
    /// Whether it was there: without it the "(before)" scenarios did not run.
    pub found: bool,
    /// The commit it was built from (`COMMIT` next to it, written by scripts/bench-baseline.sh).
    pub commit: Option<String>,
}

/// Which table of the report a measurement belongs to (`--series` picks them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Series {
    /// The fixed rate at the usual concurrency: latency, CPU and memory.
    Latency,
    /// No rate limit: maximum throughput.
    Throughput,
    /// HTTP/1.1 at the fixed rate with more connections (`run.connections`): how the tail
    /// grows with the number of connections.
    Connections,
}

/// One scenario under one load, measured in rounds interleaved with the other scenarios.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    pub series: Series,
    pub run: Run,
    pub rounds: Vec<Round>,
    /// Runs thrown away and measured again because other processes were busy meanwhile.
    pub redone: u32,
}

/// One load-generator run.
#[derive(Debug, Serialize)]
pub struct Round {
    /// Requests answered with a 200.
    pub ok: u64,
    /// Requests that failed or got another status.
    pub failed: u64,
    /// Requests cut off by the end of the run (oha cancels them on HTTP/2): not failures.
    pub aborted: u64,
    /// The run's length, in seconds.
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// What each proxy on the path used during the run (fixed-rate runs only).
    pub usage: Vec<Usage>,
    /// CPU seconds spent meanwhile by processes that are not the benchmark's.
    pub others_cpu_seconds: f64,
    /// `oha`'s whole JSON output.
    pub oha: serde_json::Value,
}

impl Round {
    /// The share of the machine's CPU (all `cores`) that others used during the run.
    pub fn others_cpu_share(&self, cores: usize) -> f64 {
        let available = self.seconds * cores.max(1) as f64;
        if available > 0.0 {
            self.others_cpu_seconds / available
        } else {
            0.0
        }
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// CPU seconds per 10,000 requests of each proxy on the path.
    fn cpu_per_10k(&self) -> Vec<f64> {
        self.usage
            .iter()
            .map(|u| {
                if self.ok == 0 {
                    0.0
                } else {
                    u.cpu_seconds / self.ok as f64 * 10_000.0
                }
            })
            .collect()
    }
}

impl Measurement {
    /// The median over the rounds of `value`.
    pub fn median(&self, value: impl Fn(&Round) -> f64) -> f64 {
        median(self.rounds.iter().map(value).collect())
    }

    /// The lowest and highest `value` over the rounds.
    pub fn spread(&self, value: impl Fn(&Round) -> f64) -> (f64, f64) {
        self.rounds
            .iter()
            .map(value)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }

    pub fn p50_ms(&self) -> f64 {
        self.median(|r| r.p50_ms)
    }

    pub fn p99_ms(&self) -> f64 {
        self.median(|r| r.p99_ms)
    }

    pub fn p999_ms(&self) -> f64 {
        self.median(|r| r.p999_ms)
    }

    /// Successful requests per second (the median round).
    pub fn rps(&self) -> f64 {
        self.median(Round::rps)
    }

    /// Failed requests over all rounds.
    pub fn failed(&self) -> u64 {
        self.rounds.iter().map(|r| r.failed).sum()
    }

    /// CPU seconds per 10,000 requests of each proxy on the path (the median round), and
    /// their sum; `None` without proxies.
    pub fn cpu_per_10k(&self) -> Option<(f64, Vec<f64>)> {
        let proxies = self.rounds.first()?.usage.len();
        if proxies == 0 {
            return None;
        }
        let parts: Vec<f64> = (0..proxies)
            .map(|i| self.median(|r| r.cpu_per_10k().get(i).copied().unwrap_or(0.0)))
            .collect();
        Some((self.median(|r| r.cpu_per_10k().iter().sum()), parts))
    }

    /// The peak RSS of each proxy on the path: the highest over the rounds, in bytes.
    pub fn peak_rss(&self) -> Vec<u64> {
        let proxies = self.rounds.first().map_or(0, |r| r.usage.len());
        (0..proxies)
            .map(|i| {
                self.rounds
                    .iter()
                    .filter_map(|r| r.usage.get(i).map(|u| u.peak_rss_bytes))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// A target to design for, and whether this run met it.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub target: String,
    /// One cell per protocol: the measured value and met / not met.
    pub cells: Vec<String>,
}

impl Report {
    /// The measurement of `scenario` in `protocol`, fixed-rate (`rate`) or maximum throughput,
    /// at the usual concurrency.
    pub fn find(&self, protocol: Protocol, rate: bool, scenario: Scenario) -> Option<&Measurement> {
        self.rows(protocol, rate).find(|m| m.scenario == scenario)
    }

    /// The HTTP/1.1 fixed-rate measurement of `scenario` with `connections` connections: the
    /// latency table's when it used that many, else the connections table's.
    pub fn find_connections(&self, scenario: Scenario, connections: u32) -> Option<&Measurement> {
        self.measurements.iter().find(|m| {
            m.run.protocol == Protocol::Http1
                && matches!(m.series, Series::Latency | Series::Connections)
                && m.run.connections == connections
                && m.scenario == scenario
        })
    }

    /// The connection counts of the connections table, the latency table's HTTP/1.1 first.
    fn connection_counts(&self) -> Vec<u32> {
        let mut counts: Vec<u32> = self
            .measurements
            .iter()
            .filter(|m| m.series == Series::Connections)
            .map(|m| m.run.connections)
            .collect();
        if counts.is_empty() {
            return counts;
        }
        if let Some(usual) = self
            .measurements
            .iter()
            .find(|m| m.series == Series::Latency && m.run.protocol == Protocol::Http1)
        {
            counts.push(usual.run.connections);
        }
        counts.sort_unstable();
        counts.dedup();
        counts
    }

    /// Whether the "(before)" scenarios could run.
    fn has_baseline(&self) -> bool {
        self.baseline.as_ref().is_some_and(|b| b.found)
    }

    /// The rate of the fixed-rate runs.
    fn rate(&self) -> Option<u32> {
        self.measurements.iter().find_map(|m| match m.run.load {
            Load::Rate(rate) => Some(rate),
            Load::Max => None,
        })
    }

    /// The targets, evaluated on this run.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let rate = self.rate().unwrap_or(TARGET_RATE);
        let at = if rate == TARGET_RATE {
            format!("{} req/s", thousands(f64::from(rate)))
        } else {
            format!(
                "{} req/s (the target is defined at {} req/s)",
                thousands(f64::from(rate)),
                thousands(f64::from(TARGET_RATE))
            )
        };
        let per_protocol = |cell: &dyn Fn(Protocol) -> Option<String>| -> Vec<String> {
            PROTOCOLS
                .iter()
                .map(|&p| cell(p).unwrap_or_else(|| "not measured".to_string()))
                .collect()
        };
        let latency = per_protocol(&|p| {
            let direct = self.find(p, true, Scenario::Direct)?;
            let two = self.find(p, true, Scenario::TwoHop)?;
            let added = two.p99_ms() - direct.p99_ms();
            // The verdict means little when the baseline moves more than the margin.
            let (lo, hi) = direct.spread(|r| r.p99_ms);
            let margin = (added - TARGET_ADDED_P99_MS).abs();
            let noise = if direct.rounds.len() > 1 && hi - lo > margin {
                format!(" (within noise: direct p99 ranged over {} ms)", ms(hi - lo))
            } else {
                String::new()
            };
            Some(format!(
                "{} ms: {}{noise}",
                signed_ms(added),
                met(added < TARGET_ADDED_P99_MS)
            ))
        });
        let memory = per_protocol(&|p| {
            let peak = [Scenario::OneHop, Scenario::TwoHop]
                .iter()
                .filter_map(|&s| self.find(p, true, s))
                .flat_map(Measurement::peak_rss)
                .max()?;
            Some(format!(
                "{} MB: {}",
                mb(peak),
                met(peak < TARGET_PEAK_RSS_BYTES)
            ))
        });
        // One hop's maximum throughput against a peer's.
        let against = |peer: Scenario| {
            per_protocol(&|p| {
                let one = self.find(p, false, Scenario::OneHop)?.rps();
                let peer = self.find(p, false, peer)?.rps();
                Some(format!(
                    "{} vs {} req/s ({}): {}",
                    thousands(one),
                    thousands(peer),
                    ratio(one, peer),
                    met(one >= peer)
                ))
            })
        };
        let throughput = against(Scenario::Haproxy);
        let one_thread = against(Scenario::HaproxyOneThread);
        let after_before = |after: Scenario| {
            let no_baseline = !self.has_baseline();
            per_protocol(&|p| {
                if no_baseline {
                    return Some("not measured (no pre-rebuild proxy)".to_string());
                }
                let before = after.before()?;
                let (a_max, b_max) = (self.find(p, false, after)?, self.find(p, false, before)?);
                let (a_rate, b_rate) = (self.find(p, true, after)?, self.find(p, true, before)?);
                let (a_rps, b_rps) = (a_max.rps(), b_max.rps());
                let (a_p99, b_p99) = (a_rate.p99_ms(), b_rate.p99_ms());
                // Say when the rounds of the two overlap: the verdict is then within noise.
                let mut noise = Vec::new();
                if a_max.rounds.len() > 1
                    && overlap(a_max.spread(Round::rps), b_max.spread(Round::rps))
                {
                    noise.push("req/s");
                }
                if a_rate.rounds.len() > 1
                    && overlap(a_rate.spread(|r| r.p99_ms), b_rate.spread(|r| r.p99_ms))
                {
                    noise.push("p99");
                }
                let noise = if noise.is_empty() {
                    String::new()
                } else {
                    format!(" (the rounds' {} ranges overlap)", noise.join(" and "))
                };
                Some(format!(
                    "{} vs {} req/s ({}), p99 {} vs {} ms: {}{noise}",
                    thousands(a_rps),
                    thousands(b_rps),
                    ratio(a_rps, b_rps),
                    ms(a_p99),
                    ms(b_p99),
                    met(a_rps >= b_rps && a_p99 <= b_p99)
                ))
            })
        };
        let after_before_target = |after: Scenario| {
            format!(
                "{0} after the rebuild: maximum throughput at least, and p99 at {at} at most, \
                 the pre-rebuild proxy's ({0} vs {0} (before))",
                after.name()
            )
        };
        vec![
            Verdict {
                target: format!("p99 added by two hops at {at} under {TARGET_ADDED_P99_MS} ms"),
                cells: latency,
            },
            Verdict {
                target: format!(
                    "proxy peak RSS at {at} under {} MB",
                    TARGET_PEAK_RSS_BYTES / 1_000_000
                ),
                cells: memory,
            },
            Verdict {
                target: "maximum throughput of one hop at least HAProxy's (1-hop vs haproxy)"
                    .to_string(),
                cells: throughput,
            },
            Verdict {
                target: "maximum throughput of one hop at least HAProxy's with one thread \
                         (1-hop vs haproxy nbthread 1)"
                    .to_string(),
                cells: one_thread,
            },
            Verdict {
                target: after_before_target(Scenario::OneHop),
                cells: after_before(Scenario::OneHop),
            },
            Verdict {
                target: after_before_target(Scenario::TwoHop),
                cells: after_before(Scenario::TwoHop),
            },
            Verdict {
                target: after_before_target(Scenario::TwoHopMtls),
                cells: after_before(Scenario::TwoHopMtls),
            },
        ]
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        // Invariant: formatting into a `String` never fails.
        self.write_markdown(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "# Benchmarks\n")?;
        writeln!(
            out,
            "Written by `mesh-bench` (bench/); do not edit by hand: `just bench` measures again \
             and rewrites this file (`--only PART` measures some parts and keeps the others' \
             sections as they were, each with its own date).\n"
        )?;
        let m = &self.machine;
        let mut machine = format!("{} cores (nproc), Linux {}", m.cores, m.kernel);
        if let Some(cpu) = &m.cpu {
            write!(machine, ", {cpu}")?;
        }
        if let Some(mem) = m.memory_bytes {
            write!(machine, ", {:.1} GB memory", mem as f64 / 1e9)?;
        }
        writeln!(out, "- machine: {machine}")?;
        writeln!(
            out,
            "- last run: {}, `{}`, took {}",
            self.date,
            self.command,
            took(self.took_seconds)
        )?;
        let sections: Vec<String> = Part::ALL
            .iter()
            .filter(|p| self.parts.contains(p) || self.carried.contains_key(p))
            .map(|p| format!("[{}](#{})", p.title(), p.anchor()))
            .collect();
        writeln!(out, "- parts: {}\n", sections.join(", "))?;

        for part in Part::ALL {
            if !self.parts.contains(&part) {
                if let Some(text) = self.carried.get(&part) {
                    out.push_str(text);
                }
                continue;
            }
            writeln!(out, "{}\n", part.marker())?;
            writeln!(out, "## {}\n", part.title())?;
            let mut provenance = format!("Measured {} by `{}`", self.date, self.command);
            if part == Part::Proxy {
                if let (Some(oha), Some(haproxy)) = (&self.oha, &self.haproxy) {
                    write!(provenance, " with {oha} and {haproxy}")?;
                }
            } else if matches!(part, Part::Balance | Part::Routes | Part::Authz) {
                if let Some(oha) = &self.oha {
                    write!(provenance, " with {oha}")?;
                }
            }
            if let Some(file) = &self.results_file {
                write!(provenance, "; raw results in `{file}`")?;
            }
            writeln!(out, "_{provenance}._\n")?;
            match part {
                Part::Proxy => self.write_proxy(out)?,
                Part::Discovery => {
                    if let Some(d) = &self.discovery {
                        d.write_markdown(out)?;
                    }
                }
                Part::Balance => {
                    if let Some(b) = &self.balance {
                        b.write_markdown(out)?;
                    }
                }
                Part::Redis => {
                    if let Some(r) = &self.redis {
                        r.write_markdown(out)?;
                    }
                }
                Part::Routes => {
                    if let Some(r) = &self.routes {
                        r.write_markdown(out)?;
                    }
                }
                Part::Authz => {
                    if let Some(a) = &self.authz {
                        a.write_markdown(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The proxy part: how it is measured, the targets, both protocols, the noise.
    fn write_proxy(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "{}",
            METHOD.replace("{body}", &crate::server::BODY.len().to_string())
        )?;
        self.write_method_extras(out)?;

        writeln!(out, "### Targets\n")?;
        writeln!(out, "| target | HTTP/1.1 | HTTP/2 |")?;
        writeln!(out, "|---|---|---|")?;
        for verdict in self.verdicts() {
            writeln!(
                out,
                "| {} | {} |",
                verdict.target,
                verdict.cells.join(" | ")
            )?;
        }
        writeln!(out)?;

        if self.parts.contains(&Part::Redis) || self.carried.contains_key(&Part::Redis) {
            writeln!(
                out,
                "The opaque-TCP targets (one hop against twemproxy, and against the pre-rebuild \
                 proxy, on redis-benchmark) are in [{}](#{}).\n",
                Part::Redis.title(),
                Part::Redis.anchor()
            )?;
        }

        for protocol in PROTOCOLS {
            self.write_protocol(out, protocol)?;
        }
        self.write_connections(out)?;
        if let Some(handshakes) = &self.handshakes {
            handshakes.write_markdown(out)?;
        }
        self.write_noise(out)
    }

    fn write_protocol(&self, out: &mut String, protocol: Protocol) -> std::fmt::Result {
        let (rate, max) = (
            self.rows(protocol, true).next().is_some(),
            self.rows(protocol, false).next().is_some(),
        );
        if !rate && !max {
            // Not measured (`--series connections`): no empty tables.
            return Ok(());
        }
        writeln!(out, "### {}\n", protocol_name(protocol))?;
        if rate {
            self.write_latency(out, protocol)?;
        }
        if max {
            self.write_throughput(out, protocol)?;
        }
        Ok(())
    }

    fn write_latency(&self, out: &mut String, protocol: Protocol) -> std::fmt::Result {
        let direct = self.find(protocol, true, Scenario::Direct);
        if let Some(first) = self.rows(protocol, true).next() {
            writeln!(
                out,
                "#### Latency at a fixed rate\n\n{}, {}, corrected for coordinated omission; \
                 each value is the median of {} rounds. \"added\" is the difference to the \
                 direct call, \"×\" the ratio to it. Proxy CPU is user + system time of the \
                 proxies on the path per 10,000 requests (for two hops: the sum, then client + \
                 server); peak RSS is `VmHWM` during the runs (1 MB = 10⁶ bytes; for two hops: \
                 client / server).\n",
                rate_text(&first.run),
                concurrency_text(&first.run),
                first.rounds.len(),
            )?;
        }
        writeln!(
            out,
            "| scenario | p50 ms | p99 ms | p99.9 ms | p50 added | p99 added | p99.9 added | \
             p99 × direct | req/s | errors | proxy CPU s / 10k req | proxy peak RSS MB |"
        )?;
        writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for m in self.rows(protocol, true) {
            let added = |value: f64, base: Option<f64>| match base {
                Some(base) => signed_ms(value - base),
                None => "–".to_string(),
            };
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m.scenario.name(),
                ms(m.p50_ms()),
                ms(m.p99_ms()),
                ms(m.p999_ms()),
                added(m.p50_ms(), direct.map(Measurement::p50_ms)),
                added(m.p99_ms(), direct.map(Measurement::p99_ms)),
                added(m.p999_ms(), direct.map(Measurement::p999_ms)),
                direct.map_or("–".to_string(), |d| ratio(m.p99_ms(), d.p99_ms())),
                thousands(m.rps()),
                m.failed(),
                cpu_cell(m),
                rss_cell(m),
            )?;
        }
        writeln!(out)
    }

    fn write_throughput(&self, out: &mut String, protocol: Protocol) -> std::fmt::Result {
        let direct = self.find(protocol, false, Scenario::Direct);
        if let Some(first) = self.rows(protocol, false).next() {
            writeln!(
                out,
                "#### Maximum throughput\n\nNo rate limit, {}, {} per run; the median of {} \
                 rounds. Latency here is mostly queueing.\n",
                concurrency_text(&first.run),
                humantime::format_duration(first.run.duration),
                first.rounds.len(),
            )?;
        }
        writeln!(
            out,
            "| scenario | req/s | × direct | p50 ms | p99 ms | errors |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
        for m in self.rows(protocol, false) {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                m.scenario.name(),
                thousands(m.rps()),
                direct.map_or("–".to_string(), |d| ratio(m.rps(), d.rps())),
                ms(m.p50_ms()),
                ms(m.p99_ms()),
                m.failed(),
            )?;
        }
        writeln!(out)
    }

    /// How far the rounds of each scenario are apart: differences smaller than that are noise.
    fn write_noise(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "### Noise\n")?;
        writeln!(
            out,
            "Every scenario ran in rounds, interleaved with the others (direct, 1-hop, 1-hop \
             (before), 2-hop, …, haproxy nbthread 1, direct, …), so slow drifts of the machine hit \
             all of them alike. The range over the rounds is the run-to-run noise; differences \
             smaller than it mean nothing.\n"
        )?;
        let counts: Vec<u32> = self
            .connection_counts()
            .into_iter()
            .filter(|&c| {
                self.measurements
                    .iter()
                    .any(|m| m.series == Series::Connections && m.run.connections == c)
            })
            .collect();
        let mut heading =
            "| scenario | HTTP/1.1 p99 ms | HTTP/1.1 max req/s | HTTP/2 p99 ms | HTTP/2 max req/s |"
                .to_string();
        for c in &counts {
            write!(heading, " HTTP/1.1 p99 ms, {c} connections |")?;
        }
        writeln!(out, "{heading}")?;
        writeln!(
            out,
            "|---|---:|---:|---:|---:|{}",
            "---:|".repeat(counts.len())
        )?;
        let mut noisy = false;
        for scenario in Scenario::ALL {
            if !self.measurements.iter().any(|m| m.scenario == scenario) {
                continue;
            }
            let mut cells = Vec::new();
            for protocol in PROTOCOLS {
                cells.push(match self.find(protocol, true, scenario) {
                    Some(m) => {
                        let (lo, hi) = m.spread(|r| r.p99_ms);
                        noisy |= hi - lo >= TARGET_ADDED_P99_MS / 2.0;
                        format!("{}–{}", ms(lo), ms(hi))
                    }
                    None => "–".to_string(),
                });
                cells.push(match self.find(protocol, false, scenario) {
                    Some(m) => {
                        let (lo, hi) = m.spread(Round::rps);
                        noisy |= (hi - lo) >= 0.1 * m.rps();
                        format!("{}–{}", thousands(lo), thousands(hi))
                    }
                    None => "–".to_string(),
                });
            }
            for &c in &counts {
                cells.push(
                    match self
                        .find_connections(scenario, c)
                        .filter(|m| m.series == Series::Connections)
                    {
                        Some(m) => {
                            let (lo, hi) = m.spread(|r| r.p99_ms);
                            format!("{}–{}", ms(lo), ms(hi))
                        }
                        None => "–".to_string(),
                    },
                );
            }
            writeln!(out, "| {} | {} |", scenario.name(), cells.join(" | "))?;
        }
        writeln!(out)?;
        let shares: Vec<f64> = self
            .measurements
            .iter()
            .flat_map(|m| &m.rounds)
            .map(|r| r.others_cpu_share(self.machine.cores))
            .collect();
        let busiest = shares.iter().copied().fold(0.0, f64::max);
        if !shares.is_empty() {
            writeln!(
                out,
                "Other processes on the machine (not the benchmark's) used {:.0} % of its CPU \
                 on average during the runs, at most {:.0} % in one run{}.\n",
                shares.iter().sum::<f64>() / shares.len() as f64 * 100.0,
                busiest * 100.0,
                if busiest >= BUSY_ELSEWHERE {
                    ": the machine was not quiet, which alone can explain outliers"
                } else {
                    ""
                }
            )?;
        }
        let redone: u32 = self.measurements.iter().map(|m| m.redone).sum();
        if redone > 0 {
            writeln!(
                out,
                "{redone} run(s) were thrown away and measured again because other processes \
                 used more than {:.0} % of the CPU meanwhile (the raw results keep only the runs \
                 shown).\n",
                BUSY_ELSEWHERE * 100.0
            )?;
        }
        let rounds = self.measurements.first().map_or(0, |m| m.rounds.len());
        if rounds < 2 {
            writeln!(
                out,
                "One round only: there is no measure of the noise. Run with more rounds before \
                 trusting a small difference.\n"
            )?;
        } else if noisy {
            writeln!(
                out,
                "**These numbers are noisy**: some p99 moves by half the latency target or more \
                 between rounds, or some throughput by a tenth. The load generator, the proxies, \
                 HAProxy and the server share {} cores, so every scenario also measures how they \
                 compete for them; take the small differences with a grain of salt.\n",
                self.machine.cores
            )?;
        } else {
            writeln!(
                out,
                "The rounds agree closely against the targets. Still, the load generator, the \
                 proxies and the server share {} cores, so the proxies' numbers include competing \
                 with the load generator for CPU.\n",
                self.machine.cores
            )?;
        }
        Ok(())
    }

    /// The measurements of `protocol`, fixed-rate or max at the usual concurrency, in the
    /// order they ran.
    fn rows(&self, protocol: Protocol, rate: bool) -> impl Iterator<Item = &Measurement> {
        let series = if rate {
            Series::Latency
        } else {
            Series::Throughput
        };
        self.measurements
            .iter()
            .filter(move |m| m.run.protocol == protocol && m.series == series)
    }

    /// What the fixed method text cannot say: the pre-rebuild proxy, the connections series
    /// and the open-files limit.
    fn write_method_extras(&self, out: &mut String) -> std::fmt::Result {
        match &self.baseline {
            Some(b) if b.found => writeln!(
                out,
                "The \"(before)\" scenarios run the pre-rebuild proxy{} (`{}`, built by \
                 scripts/bench-baseline.sh), in pods of its own, with the same environment as \
                 the current proxy.\n",
                b.commit
                    .as_ref()
                    .map(|c| format!(", commit `{}`", &c[..c.len().min(7)]))
                    .unwrap_or_default(),
                b.path
            )?,
            Some(b) => writeln!(
                out,
                "**The pre-rebuild proxy was not found** (`{}`): the \"(before)\" scenarios \
                 and targets were not measured. `scripts/setup-bench.sh` builds it (or pass \
                 `--baseline-proxy PATH`).\n",
                b.path
            )?,
            None => {}
        }
        let counts = self.connection_counts();
        if counts.len() > 1 {
            let names: Vec<String> = Scenario::CONNECTIONS
                .iter()
                .filter(|s| self.measurements.iter().any(|m| m.scenario == **s))
                .map(|s| s.name().to_string())
                .collect();
            let rate = self.rate().unwrap_or(TARGET_RATE);
            let per_connection: Vec<String> = counts
                .iter()
                .map(|&c| format!("{c} ({:.0} req/s each)", f64::from(rate) / f64::from(c)))
                .collect();
            writeln!(
                out,
                "Last, HTTP/1.1 fixed-rate runs at the same rate with more connections (`oha -c`), \
                 in rounds and with a warm-up like the others, for {}: the latency table's \
                 connections and these, {} connections in all, show how the tail grows with \
                 the number of connections at the same request rate.{}\n",
                names.join(", "),
                per_connection.join(", "),
                self.open_files_limit
                    .map(|l| format!(
                        " The benchmark runs with an open-files limit of {} (it asks for \
                         {}), which its pods' proxies, HAProxy and load generator inherit.",
                        thousands(l as f64),
                        thousands(crate::OPEN_FILES as f64)
                    ))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }

    /// The connections table: HTTP/1.1 at the fixed rate with the latency table's connections
    /// and more.
    fn write_connections(&self, out: &mut String) -> std::fmt::Result {
        let counts = self.connection_counts();
        if counts.len() < 2 {
            return Ok(());
        }
        let columns: Vec<String> = counts.iter().map(u32::to_string).collect();
        let columns = columns.join(" / ");
        let first = self
            .measurements
            .iter()
            .find(|m| m.series == Series::Connections);
        writeln!(
            out,
            "### HTTP/1.1 with more connections
"
        )?;
        if let Some(first) = first {
            writeln!(
                out,
                "{}, corrected for coordinated omission, with {columns} connections; each value \
                 is the median of {} rounds, for each number of connections in turn. Proxy CPU \
                 as above (for two hops: the sum).\n",
                rate_text(&first.run),
                first.rounds.len(),
            )?;
        }
        writeln!(
            out,
            "| scenario | p50 ms ({columns}) | p99 ms ({columns}) | p99.9 ms ({columns}) \
             | p99 × direct ({columns}) | proxy CPU s / 10k req ({columns}) | errors |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
        for scenario in Scenario::CONNECTIONS {
            let row: Vec<Option<&Measurement>> = counts
                .iter()
                .map(|&c| self.find_connections(scenario, c))
                .collect();
            if row.iter().all(|m| m.is_none()) {
                continue;
            }
            let cells = |value: &dyn Fn(&Measurement) -> String| -> String {
                row.iter()
                    .map(|m| m.map_or("–".to_string(), value))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let versus: Vec<String> = counts
                .iter()
                .zip(&row)
                .map(
                    |(&c, m)| match (m, self.find_connections(Scenario::Direct, c)) {
                        (Some(m), Some(d)) => ratio(m.p99_ms(), d.p99_ms()),
                        _ => "–".to_string(),
                    },
                )
                .collect();
            let errors: u64 = row.iter().flatten().map(|m| m.failed()).sum();
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {errors} |",
                scenario.name(),
                cells(&|m| ms(m.p50_ms())),
                cells(&|m| ms(m.p99_ms())),
                cells(&|m| ms(m.p999_ms())),
                versus.join(" / "),
                cells(&|m| m
                    .cpu_per_10k()
                    .map_or("–".to_string(), |(t, _)| format!("{t:.2}"))),
            )?;
        }
        writeln!(out)
    }
}

// === helpers ===

const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

/// How the benchmark measures, for the report's reader.
const METHOD: &str = "\
### How it is measured

Every scenario runs on network-namespace pods of one local cluster (`10.244.0.0/16`; nothing \
leaves the machine). The server application is a small hyper server (HTTP/1.1 and HTTP/2 with \
prior knowledge) answering every request with a {body}-byte 200; the load generator is `oha`, run \
inside the client pod.

- **direct**: unmeshed client pod → unmeshed server pod; the baseline of every ratio.
- **1-hop**: meshed client pod (`mesh-init` redirect + `mesh-proxy` outbound) → unmeshed server pod.
- **2-hop**: meshed client pod → meshed server pod (outbound proxy, then inbound proxy), \
plaintext, by the server's IP (no discovery, no identity).
- **2-hop mTLS**: the same with identity: the client calls the server's ClusterIP, its proxy \
resolves it through the destination controller, then opens mutual TLS (TLS 1.3, ECDSA P-256 \
certificates from the identity controller) and carries the requests as HTTP/2 to the server's \
proxy, which restores HTTP/1.1 where the client spoke it.
- **1-hop (before)**, **2-hop (before)**, **2-hop mTLS (before)**: the same paths through the \
pre-rebuild proxy (below), in pods of their own (`client-before` → `server` or \
`server-before`; `client-mtls-before` → `server-mtls-before` behind a ClusterIP of its own), \
measured in the same run and interleaved with the others, so that before and after see the same \
machine.
- **haproxy**: HAProxy (`mode http`, default threads) in the unmeshed client pod, forwarding to \
the server pod; the load generator targets it on the pod's loopback. HTTP/1.1 is forwarded as \
HTTP/1.1 and HTTP/2 as HTTP/2, like the mesh proxy does.
- **haproxy nbthread 1**: the same configuration with `nbthread 1` (a second HAProxy in the \
client pod, on other ports): one thread, like the mesh proxy's one worker.

Each protocol first gets fixed-rate runs, measuring latency and the proxies' CPU and memory, \
then maximum-throughput runs. Each kind of run is repeated in rounds that interleave the \
scenarios, and the tables show the median round; the first round of each scenario is preceded \
by a one-second warm-up at the same rate. The proxies run with their defaults (one worker \
thread on the single-threaded scheduler, log level `warn`) unless the command says otherwise \
(`--proxy-env`); HAProxy runs with its default of one thread per core, or one thread for \
haproxy nbthread 1; nothing is pinned to a core.
";

/// `1234.5` seconds → `20 min 35 s`.
fn took(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match seconds / 60 {
        0 => format!("{seconds} s"),
        minutes => format!("{minutes} min {} s", seconds % 60),
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "HTTP/1.1",
        Protocol::Http2 => "HTTP/2",
    }
}

fn rate_text(run: &Run) -> String {
    match run.load {
        Load::Rate(rate) => format!(
            "{} requests per second for {}",
            thousands(f64::from(rate)),
            humantime::format_duration(run.duration)
        ),
        Load::Max => "no rate limit".to_string(),
    }
}

fn concurrency_text(run: &Run) -> String {
    match run.protocol {
        Protocol::Http1 => format!("{} connections", run.connections),
        Protocol::Http2 => format!("{} connections × {} streams", run.connections, run.streams),
    }
}

fn cpu_cell(m: &Measurement) -> String {
    match m.cpu_per_10k() {
        None => "–".to_string(),
        Some((total, parts)) if parts.len() < 2 => format!("{total:.2}"),
        Some((total, parts)) => {
            let parts: Vec<String> = parts.iter().map(|p| format!("{p:.2}")).collect();
            format!("{total:.2} ({})", parts.join(" + "))
        }
    }
}

fn rss_cell(m: &Measurement) -> String {
    let peaks = m.peak_rss();
    if peaks.is_empty() {
        return "–".to_string();
    }
    peaks.iter().map(|&p| mb(p)).collect::<Vec<_>>().join(" / ")
}

/// The middle value (the mean of the middle two for an even count); 0 for none.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Whether two spreads (lowest, highest) over rounds overlap: which of two scenarios is ahead is
/// then within the noise.
pub(crate) fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// What a verdict within the noise says after it.
pub(crate) const OVERLAP: &str = " (the rounds' ranges overlap)";

pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A measurement whose rounds have these p99s (ms), `ok` requests each in 10 s, and proxies
    /// that used (CPU seconds, peak RSS bytes).
    fn measurement(
        scenario: Scenario,
        protocol: Protocol,
        load: Load,
        p99s: &[f64],
        ok: u64,
        usage: &[(f64, u64)],
    ) -> Measurement {
        let round = |p99_ms: f64| Round {
            ok,
            failed: 0,
            aborted: 0,
            seconds: 10.0,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            p999_ms: p99_ms * 2.0,
            others_cpu_seconds: 0.0,
            usage: usage
                .iter()
                .map(|&(cpu_seconds, peak_rss_bytes)| Usage {
                    name: "proxy".to_string(),
                    cpu_seconds,
                    peak_rss_bytes,
                })
                .collect(),
            oha: serde_json::Value::Null,
        };
        Measurement {
            scenario,
            series: match load {
                Load::Rate(_) => Series::Latency,
                Load::Max => Series::Throughput,
            },
            run: Run {
                url: "http://10.244.0.2:8080/".to_string(),
                protocol,
                load,
                connections: 16,
                streams: 1,
                duration: Duration::from_secs(10),
                host: None,
            },
            rounds: p99s.iter().map(|&p| round(p)).collect(),
            redone: 0,
        }
    }

    fn report(measurements: Vec<Measurement>) -> Report {
        Report {
            date: "2026-01-01T00:00:00Z".to_string(),
            machine: Machine {
                cores: 2,
                kernel: "6.1.0".to_string(),
                cpu: None,
                memory_bytes: None,
            },
            command: "mesh-bench".to_string(),
            oha: Some("oha 1.16.0".to_string()),
            haproxy: Some("HAProxy version 2.6".to_string()),
            results_file: None,
            parts: vec![Part::Proxy],
            measurements,
            handshakes: None,
            discovery: None,
            balance: None,
            routes: None,
            authz: None,
            redis: None,
            baseline: None,
            took_seconds: 61.0,
            open_files_limit: None,
            carried: BTreeMap::new(),
        }
    }

    #[test]
    fn numbers() {
        let check = |value: f64, expected: &str| assert_eq!(thousands(value), expected);
        check(0.0, "0");
        check(999.4, "999");
        check(1000.0, "1,000");
        check(123_456.7, "123,457");
        check(1_234_567.0, "1,234,567");
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(3.0, 0.0), "–");
        assert_eq!(mb(11_999_999), "12.0");
        assert_eq!(signed_ms(0.25), "+0.250");
        assert_eq!(signed_ms(-0.25), "-0.250");
    }

    #[test]
    fn medians() {
        let check = |values: &[f64], expected: f64| assert_eq!(median(values.to_vec()), expected);
        check(&[], 0.0);
        check(&[3.0], 3.0);
        check(&[3.0, 1.0, 2.0], 2.0);
        check(&[4.0, 1.0, 3.0, 2.0], 2.5);
    }

    #[test]
    fn verdicts() {
        use Protocol::*;
        use Scenario::*;
        let rate = Load::Rate(2_000);
        let r = report(vec![
            measurement(Direct, Http1, rate, &[0.2, 0.21, 0.19], 20_000, &[]),
            measurement(
                TwoHop,
                Http1,
                rate,
                &[0.6, 0.5, 0.7],
                20_000,
                &[(1.0, 8_000_000), (1.0, 13_000_000)],
            ),
            measurement(OneHop, Http1, Load::Max, &[1.0], 100_000, &[]),
            measurement(Haproxy, Http1, Load::Max, &[1.0], 90_000, &[]),
            measurement(HaproxyOneThread, Http1, Load::Max, &[1.0], 80_000, &[]),
            measurement(OneHop, Http1, rate, &[0.3, 0.35, 0.32], 20_000, &[]),
            measurement(OneHopBefore, Http1, rate, &[0.4, 0.45, 0.5], 20_000, &[]),
            measurement(OneHopBefore, Http1, Load::Max, &[1.0], 90_000, &[]),
            measurement(TwoHopBefore, Http1, rate, &[0.55, 0.65, 0.75], 20_000, &[]),
            measurement(TwoHop, Http1, Load::Max, &[1.0], 80_000, &[]),
            measurement(TwoHopBefore, Http1, Load::Max, &[1.0], 85_000, &[]),
            measurement(Direct, Http2, rate, &[0.2, 1.5, 0.25], 20_000, &[]),
            measurement(TwoHop, Http2, rate, &[0.9], 20_000, &[(1.0, 8_000_000)]),
        ]);
        let cells = |r: &Report| -> Vec<Vec<String>> {
            r.verdicts().into_iter().map(|v| v.cells).collect()
        };
        // Without the pre-rebuild proxy, its rows say so.
        assert_eq!(
            cells(&r)[4],
            [
                "not measured (no pre-rebuild proxy)",
                "not measured (no pre-rebuild proxy)"
            ]
        );
        let mut r = r;
        r.baseline = Some(Baseline {
            path: "target/bench-baseline/mesh-proxy".to_string(),
            found: true,
            commit: None,
        });
        let cells = cells(&r);
        assert_eq!(
            cells,
            [
                vec![
                    "+0.400 ms: met",
                    "+0.650 ms: **not met** (within noise: direct p99 ranged over 1.300 ms)"
                ],
                vec!["13.0 MB: **not met**", "8.0 MB: met"],
                vec!["10,000 vs 9,000 req/s (1.11×): met", "not measured"],
                vec!["10,000 vs 8,000 req/s (1.25×): met", "not measured"],
                vec![
                    "10,000 vs 9,000 req/s (1.11×), p99 0.320 vs 0.450 ms: met",
                    "not measured"
                ],
                vec![
                    "8,000 vs 8,500 req/s (0.94×), p99 0.600 vs 0.650 ms: **not met** (the \
                     rounds' p99 ranges overlap)",
                    "not measured"
                ],
                vec!["not measured", "not measured"],
            ]
        );
        let two = r.find(Http1, true, TwoHop).expect("measured");
        assert_eq!(two.cpu_per_10k(), Some((1.0, vec![0.5, 0.5])));
        assert_eq!(cpu_cell(two), "1.00 (0.50 + 0.50)");
        assert_eq!(rss_cell(two), "8.0 / 13.0");
        assert_eq!(two.p99_ms(), 0.6);
        assert_eq!(two.spread(|r| r.p99_ms), (0.5, 0.7));
    }

    #[test]
    fn markdown_has_tables_per_protocol() {
        use Protocol::*;
        use Scenario::*;
        let rate = Load::Rate(2_000);
        let r = report(vec![
            measurement(Direct, Http1, rate, &[0.2], 20_000, &[]),
            measurement(OneHop, Http1, rate, &[0.3], 20_000, &[(1.0, 8_000_000)]),
            measurement(Direct, Http2, Load::Max, &[1.0], 50_000, &[]),
        ]);
        let md = r.markdown();
        assert!(md.contains("### HTTP/1.1\n"), "{md}");
        assert!(md.contains("### HTTP/2\n"), "{md}");
        assert!(
            md.contains("[Proxy: direct, one hop, two hops (plain and mTLS) and HAProxy](#proxy-direct-one-hop-two-hops-plain-and-mtls-and-haproxy)"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1-hop | 0.150 | 0.300 | 0.600 | +0.050 | +0.100 | +0.200 | 1.50× | 2,000 | 0 \
                 | 0.50 | 8.0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| direct | 5,000 | 1.00× | 0.500 | 1.000 | 0 |"),
            "{md}"
        );
        assert!(md.contains("One round only"), "{md}");
    }

    #[test]
    fn connections_table_and_missing_baseline() {
        use Protocol::*;
        use Scenario::*;
        let rate = Load::Rate(2_000);
        let with = |mut m: Measurement, connections: u32| {
            m.series = Series::Connections;
            m.run.connections = connections;
            m
        };
        let mut r = report(vec![
            measurement(Direct, Http1, rate, &[0.2], 20_000, &[]),
            measurement(OneHop, Http1, rate, &[0.4], 20_000, &[(1.0, 8_000_000)]),
            with(measurement(Direct, Http1, rate, &[0.3], 20_000, &[]), 50),
            with(
                measurement(OneHop, Http1, rate, &[0.9], 20_000, &[(2.0, 8_000_000)]),
                50,
            ),
            with(measurement(Direct, Http1, rate, &[0.3], 20_000, &[]), 500),
            with(
                measurement(OneHop, Http1, rate, &[1.5], 20_000, &[(4.0, 8_000_000)]),
                500,
            ),
        ]);
        r.baseline = Some(Baseline {
            path: "/repo/target/bench-baseline/mesh-proxy".to_string(),
            found: false,
            commit: None,
        });
        r.open_files_limit = Some(65_536);
        let md = r.markdown();
        assert!(md.contains("### HTTP/1.1 with more connections\n"), "{md}");
        assert!(
            md.contains(
                "| 1-hop | 0.200 / 0.450 / 0.750 | 0.400 / 0.900 / 1.500 | 0.800 / 1.800 / 3.000 \
                 | 2.00× / 3.00× / 5.00× | 0.50 / 1.00 / 2.00 | 0 |"
            ),
            "{md}"
        );
        // The latency table keeps only the usual concurrency.
        assert!(md.contains("| 1-hop | 0.200 | 0.400 | 0.800 |"), "{md}");
        assert!(!md.contains("| 1-hop | 0.450 |"), "{md}");
        assert!(
            md.contains("16 (125 req/s each), 50 (40 req/s each), 500 (4 req/s each)"),
            "{md}"
        );
        assert!(md.contains("an open-files limit of 65,536"), "{md}");
        assert!(
            md.contains(
                "**The pre-rebuild proxy was not found** (`/repo/target/bench-baseline/mesh-proxy`)"
            ),
            "{md}"
        );
        assert!(
            md.contains("| HTTP/1.1 p99 ms, 50 connections | HTTP/1.1 p99 ms, 500 connections |"),
            "{md}"
        );
        assert!(md.contains("took 1 min 1 s"), "{md}");
        assert_eq!(
            r.find_connections(OneHop, 16).map(|m| m.series),
            Some(Series::Latency)
        );
    }

    #[test]
    fn other_parts_are_carried_over() {
        let old = "# Benchmarks\n\nintro\n\n<!-- mesh-bench part: proxy -->\n\n## Proxy\n\nold \
                   proxy\n\n<!-- mesh-bench part: balance -->\n\n## Load balancing\n\nold lb\n";
        let carried = sections(old);
        assert_eq!(
            carried.get(&Part::Proxy).map(String::as_str),
            Some("<!-- mesh-bench part: proxy -->\n\n## Proxy\n\nold proxy\n\n")
        );
        assert_eq!(
            carried.get(&Part::Balance).map(String::as_str),
            Some("<!-- mesh-bench part: balance -->\n\n## Load balancing\n\nold lb\n\n")
        );
        assert!(sections("# Benchmarks\n\nno markers\n").is_empty());

        let mut r = report(Vec::new());
        r.parts = vec![Part::Discovery];
        r.carried = carried;
        let md = r.markdown();
        // The proxy section comes first, as it was; the (empty) discovery part follows; the
        // balancing section last, as it was.
        let proxy = md.find("old proxy").expect("proxy carried");
        let discovery = md
            .find("<!-- mesh-bench part: discovery -->")
            .expect("discovery written");
        let lb = md.find("old lb").expect("balancing carried");
        assert!(proxy < discovery && discovery < lb, "{md}");
    }
}
