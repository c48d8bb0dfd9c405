//! Outbound routes on pods: what 50 Gateway API HTTPRoutes on a Service cost the client's proxy (rule selection in precedence order, a header filter, the route's layers) against the same Service with no route (the default route), measured interleaved in one run.
//!
//! ```text
//! client-meshed ─ oha ─▶ 10.96.0.10:80 ─▶ outbound proxy ─▶ server app :8080
//!                 Host: web-svc.demo.svc…       ▲ endpoints and the outbound policy of web-svc from
//!                 GET /svc-24/v1/items          │ mesh-controller in pod `controller` (:8086), whose
//!                                               │ folder holds web-svc and routes.yaml: no route, or
//!                                               │ 50 HTTPRoutes (rewritten before every run)
//! ```
//!
//! The scenarios share everything but the routes: the same pods, the same proxy, the same
//! Service. Before each run the benchmark writes the routes file of its scenario, waits until a
//! probe request is counted on the route the load must take (`route-24`, or the default route),
//! and warms up; after each run it checks in the proxy's `outbound_http_route_request_total` that
//! every request of the run took that route, so it cannot measure the default route by mistake.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt as _;
use mesh_api::policy::{self, OutboundPolicy};
use mesh_cli::local::{service_yaml, Cluster, MeshOptions, Pod, Proxy};
use serde::Serialize;

use crate::controller::{self, Controller};
use crate::oha::{Load, Oha, Run};
use crate::report::{self, met, Round, Series};
use crate::resources::{Meter, Watched};
use crate::server::{self, Server};
use crate::units::{ms, ratio, thousands};

/// How many HTTPRoutes the routed scenario attaches to the Service.
pub const ROUTES: usize = 50;
/// The route whose second match the load's requests take: in the middle of the precedence
/// order (see [`routes_yaml`]).
pub const MATCHED: usize = 24;
/// The target: 50 routes cost at most this share of p99 and of maximum throughput.
pub const TARGET_COST: f64 = 0.05;

/// The Service's ClusterIP, name and authority (as the proxy's policy watch names it).
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE: &str = "web-svc";
const NAMESPACE: &str = "demo";
const SERVICE_HOST: &str = "web-svc.demo.svc.cluster.local";
/// The service network the meshed client routes to its `eth0`, so that connections to the
/// ClusterIP reach its redirect rules.
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// How long the controller in its pod may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change of the routes file may take to reach the proxy.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(15);
/// The warm-up before every run: the policy changed just before, so its rule stacks are new.
const WARM_UP: Duration = Duration::from_secs(1);
/// The proxy's counter of requests per route.
const ROUTE_REQUESTS: &str = "outbound_http_route_request_total";
/// The route name of the default route in the proxy's metrics.
const DEFAULT_ROUTE: &str = "default";

/// The two states of the Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// No HTTPRoute: every request takes the Service's default route.
    NoRoutes,
    /// [`ROUTES`] HTTPRoutes on the Service; the load takes `route-24`.
    Routes,
}

impl Scenario {
    pub const ALL: [Scenario; 2] = [Scenario::NoRoutes, Scenario::Routes];

    /// The scenario's name in the report.
    pub fn name(self) -> String {
        match self {
            Scenario::NoRoutes => "no routes".to_string(),
            Scenario::Routes => format!("{ROUTES} routes"),
        }
    }

    /// The route (its name in the proxy's metrics) every request of the load must take.
    fn route(self) -> String {
        match self {
            Scenario::NoRoutes => DEFAULT_ROUTE.to_string(),
            Scenario::Routes => route_name(MATCHED),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The fixed-rate run (its URL and host are set here).
    pub latency: Run,
    /// The maximum-throughput run.
    pub throughput: Run,
    /// Rounds of each run, interleaving the scenarios.
    pub rounds: u32,
    /// `getconf CLK_TCK`.
    pub clock_ticks: u64,
    /// The machine's cores, to tell when others used it.
    pub cores: usize,
}

/// Everything the routes part measured.
#[derive(Debug, Serialize)]
pub struct Results {
    /// HTTPRoutes in the routed scenario, and the matches of all of them.
    pub routes: usize,
    pub matches: usize,
    /// The path of the load's requests.
    pub path: String,
    /// The route the load takes in the routed scenario, and the 1-based position of the
    /// match it takes in the precedence order of the policy the controller served.
    pub matched_route: String,
    pub matched_position: usize,
    /// The machine's cores (the share of the CPU others used is of all of them).
    pub cores: usize,
    /// Both scenarios, per series, in the order they ran.
    pub measurements: Vec<Measurement>,
}

/// One scenario under one load, in rounds interleaved with the other scenario.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    pub series: Series,
    pub run: Run,
    pub rounds: Vec<Round>,
    /// Per round: the requests the proxy counted on the scenario's route during the run.
    pub routed: Vec<u64>,
    /// Runs measured again because other processes were busy meanwhile.
    pub redone: u32,
}

impl Measurement {
    fn median(&self, value: impl Fn(&Round) -> f64) -> f64 {
        report::median(self.rounds.iter().map(value).collect())
    }

    fn spread(&self, value: impl Fn(&Round) -> f64) -> (f64, f64) {
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

    pub fn rps(&self) -> f64 {
        self.median(Round::rps)
    }

    pub fn failed(&self) -> u64 {
        self.rounds.iter().map(|r| r.failed).sum()
    }

    /// The proxy's CPU seconds per 10,000 requests (the median round); `None` without usage.
    pub fn cpu_per_10k(&self) -> Option<f64> {
        self.rounds.first()?.usage.first()?;
        Some(self.median(cpu_per_10k))
    }
}

/// The proxy's CPU seconds per 10,000 requests of one round.
fn cpu_per_10k(r: &Round) -> f64 {
    match r.usage.first() {
        Some(u) if r.ok > 0 => u.cpu_seconds / r.ok as f64 * 10_000.0,
        _ => 0.0,
    }
}

/// Builds the pods, measures both scenarios in interleaved rounds, removes the pods.
pub fn run(
    plan: &Plan,
    oha: &Oha,
    proxy_env: &[(String, String)],
    work: &Path,
) -> anyhow::Result<Results> {
    let program = controller::binary()?;
    let mut cluster = Cluster::new("bench-rt").context("creating the routes cluster")?;
    let controller_pod = cluster.add_pod("controller")?;
    let server_pod = cluster.add_pod("server")?;
    let client = cluster.add_pod("client-meshed")?;

    let _server = Server::start(&server_pod)?;
    let folder = work.join("routes");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    write_atomically(
        &folder,
        "services.yaml",
        &service_yaml(
            NAMESPACE,
            SERVICE,
            CLUSTER_IP,
            (80, server::PORT),
            &[],
            std::slice::from_ref(&server_pod),
        ),
    )?;
    // The routes first, to read back the policy the controller serves with them.
    write_atomically(&folder, "routes.yaml", &routes_yaml(ROUTES))?;
    let mut ctl = Controller::start_in(
        &controller_pod,
        &program,
        &folder,
        &cluster.log_dir().join("controller.log"),
    )?;
    ctl.wait_ready(READY_TIMEOUT, |addr| {
        controller_pod
            .run_in(move || controller::http_status(addr, "/ready"))
            .join()
            .map_err(|_| anyhow!("the readiness probe thread panicked"))?
    })?;
    let served = served_policy(&controller_pod, ctl.addr, ROUTES)
        .context("reading the outbound policy the controller serves")?;
    let (matched_position, matches) = position(&served, &route_name(MATCHED), 0, 1)
        .ok_or_else(|| anyhow!("the served policy has no {}", route_name(MATCHED)))?;
    let filtered = served
        .routes
        .iter()
        .all(|r| r.rules.iter().all(|rule| !rule.filters.is_empty()));
    if !filtered {
        bail!("the served policy lost a route's RequestHeaderModifier filter");
    }
    eprintln!(
        "mesh-bench: the controller serves {} routes, {matches} matches; the load takes match \
         {matched_position} in precedence order",
        served.routes.len()
    );

    client
        .route(SERVICE_CIDR)
        .context("routing the service network in the client pod")?;
    let mut env = proxy_env.to_vec();
    env.extend([
        (
            "MESH_PROXY_DESTINATION_ADDR".to_string(),
            ctl.addr.to_string(),
        ),
        (
            "MESH_PROXY_DESTINATION_NAMESPACE".to_string(),
            NAMESPACE.to_string(),
        ),
    ]);
    let proxy = client
        .mesh(MeshOptions {
            env,
            ..MeshOptions::default()
        })
        .context("meshing the client pod")?;

    let bed = Bed {
        folder: &folder,
        client: &client,
        proxy: &proxy,
        oha,
        plan,
    };
    let measurements = bed.measure()?;
    drop(ctl);
    Ok(Results {
        routes: ROUTES,
        matches,
        path: load_path(),
        matched_route: route_name(MATCHED),
        matched_position,
        cores: plan.cores,
        measurements,
    })
}

/// What the runs need.
struct Bed<'a> {
    folder: &'a Path,
    client: &'a Pod,
    proxy: &'a Proxy,
    oha: &'a Oha,
    plan: &'a Plan,
}

impl Bed<'_> {
    /// The fixed-rate runs, then the throughput runs, each in rounds that interleave the
    /// scenarios (no routes, 50 routes, no routes, …).
    fn measure(&self) -> anyhow::Result<Vec<Measurement>> {
        let mut redos_left = crate::MAX_REDOS;
        let mut measurements: Vec<Measurement> = Vec::new();
        for (series, template) in [
            (Series::Latency, &self.plan.latency),
            (Series::Throughput, &self.plan.throughput),
        ] {
            let run = Run {
                url: format!("http://{CLUSTER_IP}:80{}", load_path()),
                host: Some(SERVICE_HOST.to_string()),
                ..template.clone()
            };
            let first = measurements.len();
            for scenario in Scenario::ALL {
                measurements.push(Measurement {
                    scenario,
                    series,
                    run: run.clone(),
                    rounds: Vec::new(),
                    routed: Vec::new(),
                    redone: 0,
                });
            }
            for round in 0..self.plan.rounds {
                for m in &mut measurements[first..] {
                    let what = format!(
                        "{} {} run, round {}",
                        m.scenario.name(),
                        match series {
                            Series::Latency => "fixed-rate",
                            _ => "throughput",
                        },
                        round + 1
                    );
                    self.one(m, &mut redos_left).with_context(|| what.clone())?;
                }
            }
        }
        Ok(measurements)
    }

    /// One round of `m`: the routes of its scenario in force, a warm-up, the run, measured
    /// again while others take the CPU (within `redos_left`).
    fn one(&self, m: &mut Measurement, redos_left: &mut u32) -> anyhow::Result<()> {
        self.set_scenario(m.scenario)?;
        let warm_up = Run {
            duration: WARM_UP,
            load: Load::Rate(self.plan_rate()),
            connections: self.plan.latency.connections,
            ..m.run.clone()
        };
        self.oha.run(self.client, &warm_up).context("warming up")?;
        let watched = [Watched {
            name: "client proxy".to_string(),
            pid: self.proxy.pid(),
        }];
        let route = m.scenario.route();
        loop {
            if crate::INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let before = route_requests(self.proxy)?;
            let meter = Meter::start(self.plan.clock_ticks, &watched)?;
            let outcome = self.oha.run(self.client, &m.run)?;
            let metered = meter.finish()?;
            let after = route_requests(self.proxy)?;
            let (routed, elsewhere) = routed(&before, &after, &route);
            if outcome.ok == 0 {
                bail!(
                    "no request succeeded ({} failed); oha's output: {}",
                    outcome.failed,
                    outcome.raw
                );
            }
            if routed < outcome.ok || elsewhere > 0 {
                bail!(
                    "the load did not all take route {route}: {} requests succeeded, the proxy \
                     counted {routed} on {route} and {elsewhere} on other routes",
                    outcome.ok
                );
            }
            let r = Round {
                ok: outcome.ok,
                failed: outcome.failed,
                aborted: outcome.aborted,
                seconds: outcome.seconds,
                p50_ms: outcome.p50 * 1e3,
                p99_ms: outcome.p99 * 1e3,
                p999_ms: outcome.p999 * 1e3,
                usage: if matches!(m.run.load, Load::Rate(_)) {
                    metered.usage
                } else {
                    Vec::new()
                },
                others_cpu_seconds: metered.others_cpu_seconds,
                oha: outcome.raw,
            };
            let others = r.others_cpu_share(self.plan.cores);
            eprintln!(
                "mesh-bench: {:<10} {:>7.0} req/s  p50 {:.3}  p99 {:.3}  p99.9 {:.3} ms  errors \
                 {}  on {route}: {routed}  others' CPU {:.0} %",
                m.scenario.name(),
                r.rps(),
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.failed,
                others * 100.0
            );
            if others > report::BUSY_ELSEWHERE && *redos_left > 0 {
                *redos_left -= 1;
                m.redone += 1;
                eprintln!("mesh-bench: the machine was busy; measuring again");
                continue;
            }
            m.rounds.push(r);
            m.routed.push(routed);
            return Ok(());
        }
    }

    fn plan_rate(&self) -> u32 {
        match self.plan.latency.load {
            Load::Rate(rate) => rate,
            Load::Max => report::TARGET_RATE,
        }
    }

    /// Writes the scenario's routes file and waits until a probe request is counted on the
    /// scenario's route, and on no other.
    fn set_scenario(&self, scenario: Scenario) -> anyhow::Result<()> {
        let yaml = match scenario {
            Scenario::NoRoutes => NO_ROUTES.to_string(),
            Scenario::Routes => routes_yaml(ROUTES),
        };
        write_atomically(self.folder, "routes.yaml", &yaml)?;
        let route = scenario.route();
        let deadline = Instant::now() + IN_FORCE_TIMEOUT;
        loop {
            let before = route_requests(self.proxy)?;
            let last = match probe(self.client) {
                Ok(200) => {
                    let after = route_requests(self.proxy)?;
                    match routed(&before, &after, &route) {
                        (1, 0) => return Ok(()),
                        (on, elsewhere) => format!("{on} on {route}, {elsewhere} on other routes"),
                    }
                }
                Ok(status) => format!("status {status}"),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the {} scenario was not in force after {IN_FORCE_TIMEOUT:?}: a probe of \
                     {} got {last}",
                    scenario.name(),
                    load_path()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Results {
    fn find(&self, scenario: Scenario, series: Series) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.scenario == scenario && m.series == series)
    }

    /// The targets: (target, measured, verdict).
    pub fn verdicts(&self) -> Vec<(String, String, String)> {
        let noise = |a: &Measurement, b: &Measurement, value: &dyn Fn(&Round) -> f64| {
            if a.rounds.len() > 1 && crate::report::overlap(a.spread(value), b.spread(value)) {
                crate::report::OVERLAP
            } else {
                ""
            }
        };
        let mut verdicts = Vec::new();
        let pair = |series| {
            Some((
                self.find(Scenario::Routes, series)?,
                self.find(Scenario::NoRoutes, series)?,
            ))
        };
        if let Some((routed, none)) = pair(Series::Latency) {
            let rate = match routed.run.load {
                Load::Rate(rate) => thousands(f64::from(rate)),
                Load::Max => "–".to_string(),
            };
            let (a, b) = (routed.p99_ms(), none.p99_ms());
            verdicts.push((
                format!(
                    "p99 at {rate} req/s with {ROUTES} routes at most {:.0} % above no routes",
                    TARGET_COST * 100.0
                ),
                format!("{} vs {} ms ({})", ms(a), ms(b), ratio(a, b)),
                format!(
                    "{}{}",
                    met(b > 0.0 && a <= b * (1.0 + TARGET_COST)),
                    noise(routed, none, &|r| r.p99_ms)
                ),
            ));
        }
        if let Some((routed, none)) = pair(Series::Throughput) {
            let (a, b) = (routed.rps(), none.rps());
            verdicts.push((
                format!(
                    "maximum throughput with {ROUTES} routes at most {:.0} % below no routes",
                    TARGET_COST * 100.0
                ),
                format!(
                    "{} vs {} req/s ({})",
                    thousands(a),
                    thousands(b),
                    ratio(a, b)
                ),
                format!(
                    "{}{}",
                    met(b > 0.0 && a >= b * (1.0 - TARGET_COST)),
                    noise(routed, none, &Round::rps)
                ),
            ));
        }
        verdicts
    }

    /// The report's section (after its `##` heading and marker, which the caller writes).
    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let latency = self.find(Scenario::NoRoutes, Series::Latency);
        let throughput = self.find(Scenario::NoRoutes, Series::Throughput);
        writeln!(
            out,
            "The server pod runs the benchmark's hyper server behind the Service `{SERVICE}.\
             {NAMESPACE}` (ClusterIP {CLUSTER_IP}, port 80 → {}). `mesh-controller destination \
             --source dir:…` runs in a pod of its own; the meshed client pod's proxy discovers \
             the Service's endpoints and watches its outbound policy through it \
             (`MESH_PROXY_DESTINATION_ADDR`, `MESH_PROXY_DESTINATION_NAMESPACE={NAMESPACE}`, \
             `{SERVICE_CIDR}` routed to the pod's `eth0`). The load is `oha --host \
             {SERVICE_HOST} http://{CLUSTER_IP}:80{}` in the meshed client pod, HTTP/1.1, as \
             in the proxy part.\n",
            server::PORT,
            self.path
        )?;
        writeln!(
            out,
            "- **no routes**: the Service has no HTTPRoute: every request takes its default \
             route.\n- **{} routes**: {} HTTPRoutes (`route-00` … `route-{:02}`, parent the \
             Service's port 80, one a second older than the next), each with one rule of three \
             matches, a `RequestHeaderModifier` filter that sets `x-route` to the route's name, \
             and the Service as its one backend: `PathPrefix /svc-NN/v1` with the header \
             `x-tenant: tenant-NN`, `PathPrefix /svc-NN/v1` alone, and `PathPrefix /svc-NN` \
             with `x-canary: \"true\"`; {} matches in all. The load's path matches \
             `{}`'s second match, **number {} of {} in precedence order** (read back from the \
             policy the controller served): the proxy tries the {} longer matches with a \
             header (the load sends none) and the prefixes of the {} older routes first.\n",
            self.routes,
            self.routes,
            self.routes.saturating_sub(1),
            self.matches,
            self.matched_route,
            self.matched_position,
            self.matches,
            self.routes,
            MATCHED,
        )?;
        writeln!(
            out,
            "Both scenarios use the same pods, proxy and Service: before every run the \
             benchmark writes the scenario's routes file (the controller's folder source \
             picks it up), waits until a probe request is counted on the scenario's route in \
             the proxy's `{ROUTE_REQUESTS}` (`{}` or `default`), and warms up for one second \
             at the fixed rate; after the run it checks there that every successful request of \
             the run took that route. The runs interleave the scenarios in rounds, like the \
             proxy part's (no routes, {} routes, no routes, …), fixed-rate runs first, then \
             maximum-throughput runs; each value is the median round.\n",
            self.matched_route, self.routes
        )?;
        if let (Some(l), Some(t)) = (latency, throughput) {
            writeln!(
                out,
                "Fixed rate: {} req/s for {}, {} connections, corrected for coordinated \
                 omission. Maximum throughput: no rate limit, {} connections, {}. {} rounds. \
                 Proxy CPU is the client proxy's user + system time per 10,000 requests at the \
                 fixed rate.\n",
                match l.run.load {
                    Load::Rate(rate) => thousands(f64::from(rate)),
                    Load::Max => "–".to_string(),
                },
                humantime::format_duration(l.run.duration),
                l.run.connections,
                t.run.connections,
                humantime::format_duration(t.run.duration),
                l.rounds.len(),
            )?;
        }

        writeln!(out, "### Targets\n")?;
        writeln!(out, "| target | measured | verdict |")?;
        writeln!(out, "|---|---|---|")?;
        for (target, measured, verdict) in self.verdicts() {
            writeln!(out, "| {target} | {measured} | {verdict} |")?;
        }
        writeln!(out)?;

        writeln!(out, "### Results\n")?;
        writeln!(
            out,
            "| scenario | p50 ms | p99 ms | p99.9 ms | p99 × no routes | proxy CPU s / 10k req \
             | max req/s | max × no routes | max p99 ms | errors |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for scenario in Scenario::ALL {
            let (l, t) = (
                self.find(scenario, Series::Latency),
                self.find(scenario, Series::Throughput),
            );
            let dash = || "–".to_string();
            let errors: u64 = [l, t].iter().flatten().map(|m| m.failed()).sum();
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} |",
                scenario.name(),
                l.map_or_else(dash, |m| ms(m.p50_ms())),
                l.map_or_else(dash, |m| ms(m.p99_ms())),
                l.map_or_else(dash, |m| ms(m.p999_ms())),
                match (l, latency) {
                    (Some(m), Some(base)) => ratio(m.p99_ms(), base.p99_ms()),
                    _ => dash(),
                },
                l.and_then(Measurement::cpu_per_10k)
                    .map_or_else(dash, |c| format!("{c:.2}")),
                t.map_or_else(dash, |m| thousands(m.rps())),
                match (t, throughput) {
                    (Some(m), Some(base)) => ratio(m.rps(), base.rps()),
                    _ => dash(),
                },
                t.map_or_else(dash, |m| ms(m.p99_ms())),
            )?;
        }
        writeln!(out)?;

        writeln!(out, "### Noise\n")?;
        writeln!(
            out,
            "The range over the rounds; differences smaller than it mean nothing.\n"
        )?;
        writeln!(
            out,
            "| scenario | p99 ms | proxy CPU s / 10k req | max req/s | requests on the \
             scenario's route / succeeded |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|")?;
        for scenario in Scenario::ALL {
            let (l, t) = (
                self.find(scenario, Series::Latency),
                self.find(scenario, Series::Throughput),
            );
            let range =
                |m: Option<&Measurement>, value: &dyn Fn(&Round) -> f64, f: fn(f64) -> String| {
                    m.map_or("–".to_string(), |m| {
                        let (lo, hi) = m.spread(value);
                        format!("{}–{}", f(lo), f(hi))
                    })
                };
            let (routed, ok): (u64, u64) = [l, t]
                .iter()
                .flatten()
                .map(|m| {
                    (
                        m.routed.iter().sum::<u64>(),
                        m.rounds.iter().map(|r| r.ok).sum::<u64>(),
                    )
                })
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
            writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} |",
                scenario.name(),
                range(l, &|r| r.p99_ms, ms),
                range(l, &cpu_per_10k, |c| format!("{c:.2}")),
                range(t, &Round::rps, thousands),
                thousands(routed as f64),
                thousands(ok as f64),
            )?;
        }
        writeln!(out)?;
        let shares: Vec<f64> = self
            .measurements
            .iter()
            .flat_map(|m| &m.rounds)
            .map(|r| r.others_cpu_share(self.cores))
            .collect();
        let redone: u32 = self.measurements.iter().map(|m| m.redone).sum();
        if !shares.is_empty() {
            writeln!(
                out,
                "Other processes on the machine used {:.0} % of its CPU on average during the \
                 runs, at most {:.0} % in one run{}.\n",
                shares.iter().sum::<f64>() / shares.len() as f64 * 100.0,
                shares.iter().copied().fold(0.0, f64::max) * 100.0,
                if redone > 0 {
                    format!(
                        "; {redone} run(s) were measured again because others used more than \
                         {:.0} % meanwhile",
                        report::BUSY_ELSEWHERE * 100.0
                    )
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}

// === helpers ===

/// The routes file of the no-routes scenario: no object.
const NO_ROUTES: &str = "# No HTTPRoute: web-svc's default route.\n";

/// The name of the `i`th route.
fn route_name(i: usize) -> String {
    format!("route-{i:02}")
}

/// The path of the load's requests: under the second match of [`MATCHED`].
fn load_path() -> String {
    format!("/svc-{MATCHED:02}/v1/items")
}

/// `n` HTTPRoutes on `web-svc`, each one second older than the next; route `NN` has one rule
/// with three matches: `PathPrefix /svc-NN/v1` with `x-tenant: tenant-NN`, `PathPrefix
/// /svc-NN/v1`, and `PathPrefix /svc-NN` with `x-canary: "true"`, a filter that sets
/// `x-route: route-NN`, and `web-svc` as its backend.
///
/// In precedence order (longest prefix, then more headers, then the older route) come every
/// route's first match, then every second match, then every third: a request to
/// `/svc-24/v1/…` without headers takes `route-24`'s second match, after 74 others.
fn routes_yaml(n: usize) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        let _ = write!(
            yaml,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}, creationTimestamp: \
             \"2026-01-01T{h:02}:{m:02}:{s:02}Z\"}}\n\
             spec:\n  parentRefs: [{{group: core, kind: Service, name: {SERVICE}, port: 80}}]\n\
             \x20 rules:\n  - matches:\n\
             \x20   - {{path: {{type: PathPrefix, value: /svc-{i:02}/v1}}, headers: [{{name: \
             x-tenant, value: tenant-{i:02}}}]}}\n\
             \x20   - {{path: {{type: PathPrefix, value: /svc-{i:02}/v1}}}}\n\
             \x20   - {{path: {{type: PathPrefix, value: /svc-{i:02}}}, headers: [{{name: \
             x-canary, value: \"true\"}}]}}\n\
             \x20   filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: \
             [{{name: x-route, value: {name}}}]}}}}]\n\
             \x20   backendRefs: [{{name: {SERVICE}, port: 80}}]\n",
            name = route_name(i),
            h = i / 3600,
            m = i / 60 % 60,
            s = i % 60,
        );
    }
    yaml
}

/// The 1-based position of match `mi` of rule `rule` of the route `name` in the precedence
/// order of `policy`, and the number of matches.
fn position(policy: &OutboundPolicy, name: &str, rule: usize, mi: usize) -> Option<(usize, usize)> {
    let order = policy::select(&policy.routes);
    let at = order
        .iter()
        .position(|&(r, u, m)| policy.routes[r].name == name && u == rule && m == mi)?;
    Some((at + 1, order.len()))
}

/// The first policy of `web-svc:80` with `routes` routes that the controller at `addr`
/// serves, watched from inside `pod`.
fn served_policy(pod: &Pod, addr: SocketAddr, routes: usize) -> anyhow::Result<OutboundPolicy> {
    let authority = format!("{SERVICE_HOST}:80");
    pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime")?;
        rt.block_on(async move {
            let watch = policy::watch_outbound(
                mesh_api::destination::Connector::default(),
                addr,
                &authority,
                NAMESPACE,
            );
            let mut watch = std::pin::pin!(watch);
            let first = async {
                while let Some(line) = watch.next().await {
                    let policy = line.map_err(|e| anyhow!("the policy watch failed: {e}"))?;
                    if policy.routes.len() == routes {
                        return Ok(policy);
                    }
                }
                bail!("the policy watch ended")
            };
            tokio::time::timeout(IN_FORCE_TIMEOUT, first)
                .await
                .map_err(|_| anyhow!("no policy with {routes} routes after {IN_FORCE_TIMEOUT:?}"))?
        })
    })
    .join()
    .map_err(|_| anyhow!("the policy watch thread panicked"))?
}

/// One `GET` of the load's path to the Service from inside `pod` (through its proxy), on a
/// connection of its own; its status.
fn probe(pod: &Pod) -> anyhow::Result<u16> {
    pod.run_in(|| {
        let timeout = Duration::from_secs(2);
        let addr = SocketAddr::from((CLUSTER_IP, 80));
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {} HTTP/1.1\r\nHost: {SERVICE_HOST}\r\nConnection: close\r\n\r\n",
            load_path()
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let line = response.split(|&b| b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(line)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status line in the answer"))
    })
    .join()
    .map_err(|_| anyhow!("the probe thread panicked"))?
}

/// The proxy's `outbound_http_route_request_total` by route name.
fn route_requests(proxy: &Proxy) -> anyhow::Result<BTreeMap<String, u64>> {
    let (status, body) = proxy
        .admin_get("/metrics")
        .context("reading the proxy's metrics")?;
    if status != 200 {
        bail!("the proxy's /metrics answered {status}");
    }
    Ok(parse_route_requests(&body))
}

fn parse_route_requests(metrics: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(ROUTE_REQUESTS) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once('}') else {
            continue;
        };
        let name = labels
            .split("route_name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next());
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let (Some(name), Some(value)) = (name, value) {
            *counts.entry(name.to_string()).or_insert(0) += value as u64;
        }
    }
    counts
}

/// Between two readings of [`route_requests`]: the requests counted on `route`, and on every
/// other route together. A label set that went away counts from zero.
fn routed(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    route: &str,
) -> (u64, u64) {
    let delta = |name: &str, now: u64| {
        let then = before.get(name).copied().unwrap_or(0);
        if now >= then {
            now - then
        } else {
            now
        }
    };
    let on = after.get(route).map_or(0, |&now| delta(route, now));
    let elsewhere = after
        .iter()
        .filter(|(name, _)| name.as_str() != route)
        .map(|(name, &now)| delta(name, now))
        .sum();
    (on, elsewhere)
}

/// Writes `dir/file` through a hidden file renamed over it, so the controller never reads half
/// of it.
fn write_atomically(dir: &Path, file: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file))
        .with_context(|| format!("renaming {} into place", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_rank() {
        let yaml = routes_yaml(ROUTES);
        let (objects, errors) = mesh_controller::source::folder::parse_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), ROUTES);
        assert!(
            yaml.contains("creationTimestamp: \"2026-01-01T00:00:49Z\""),
            "{yaml}"
        );
        let (objects, errors) = mesh_controller::source::folder::parse_yaml(NO_ROUTES);
        assert!(
            errors.is_empty() && objects.is_empty(),
            "{objects:?} {errors:?}"
        );

        // The policy the controller would serve, in tie-break order (oldest first).
        let prefix = |p: String, header: Option<(&str, String)>| policy::Match {
            path: Some(policy::PathMatch::PathPrefix(p)),
            headers: header
                .map(|(name, value)| policy::ValueMatch {
                    name: name.to_string(),
                    kind: policy::ValueMatchKind::Exact,
                    value,
                })
                .into_iter()
                .collect(),
            ..policy::Match::default()
        };
        let routes = (0..ROUTES)
            .map(|i| policy::Route {
                name: route_name(i),
                namespace: NAMESPACE.to_string(),
                rules: vec![policy::Rule {
                    matches: vec![
                        prefix(
                            format!("/svc-{i:02}/v1"),
                            Some(("x-tenant", format!("tenant-{i:02}"))),
                        ),
                        prefix(format!("/svc-{i:02}/v1"), None),
                        prefix(
                            format!("/svc-{i:02}"),
                            Some(("x-canary", "true".to_string())),
                        ),
                    ],
                    ..policy::Rule::default()
                }],
                ..policy::Route::default()
            })
            .collect();
        let served = OutboundPolicy {
            routes,
            ..OutboundPolicy::default()
        };
        assert_eq!(
            position(&served, &route_name(MATCHED), 0, 1),
            Some((ROUTES + MATCHED + 1, 3 * ROUTES))
        );
        assert_eq!(load_path(), "/svc-24/v1/items");
    }

    #[test]
    fn route_counts() {
        let metrics = "# HELP outbound_http_route_request Requests by outbound route\n\
            # TYPE outbound_http_route_request counter\n\
            outbound_http_route_request_total{parent_namespace=\"demo\",parent_name=\"web-svc\",parent_port=\"80\",route_kind=\"default\",route_namespace=\"\",route_name=\"default\"} 7\n\
            outbound_http_route_request_total{parent_namespace=\"demo\",parent_name=\"web-svc\",parent_port=\"80\",route_kind=\"HTTPRoute\",route_namespace=\"demo\",route_name=\"route-24\"} 12\n\
            outbound_http_route_request_created{route_name=\"route-24\"} 1.0\n\
            outbound_http_route_response_total{route_name=\"route-24\"} 12\n";
        let before = parse_route_requests(metrics);
        assert_eq!(before.get("default"), Some(&7));
        assert_eq!(before.get("route-24"), Some(&12));
        assert_eq!(before.len(), 2);
        let mut after = before.clone();
        after.insert("route-24".to_string(), 20);
        assert_eq!(routed(&before, &after, "route-24"), (8, 0));
        after.insert("default".to_string(), 9);
        after.insert("route-01".to_string(), 1);
        assert_eq!(routed(&before, &after, "route-24"), (8, 3));
        // A label set that went away and came back counts from zero.
        after.insert("default".to_string(), 2);
        assert_eq!(routed(&before, &after, "default"), (2, 9));
    }
}
