//! Inbound authorization on pods: what 20 AuthorizationPolicies on a Server cost the server's proxy (every request walks them, and only the last one allows the client) against the same port with no Server (the default policy `all-unauthenticated`), measured interleaved in one run.
//!
//! ```text
//! client ─ oha ─▶ 10.96.0.40:80 ─▶ outbound proxy ══ mutual TLS, HTTP/2 ══▶ inbound proxy ─▶ server app :8080
//!                 Host: authz-svc.bench.svc…    ▲ endpoints and the server's     │ authorization per request:
//!                                               │ identity from the controllers  │ the port's inbound policy
//!                                               │ in pod `control`, whose folder ◀┘ from the same controller
//!                                               │ holds policy.yaml: nothing, or a Server and
//!                                               │ 20 AuthorizationPolicies (rewritten before every run)
//! ```
//!
//! The scenarios share everything but the policy file: the same pods, the same proxies, the
//! same mutual-TLS connection between them. Authorization by identity needs the identity the
//! client proved, so both pods have one (service accounts `client` and `server`) and every
//! request crosses mutual TLS, in both scenarios. Before each run the benchmark writes the
//! policy file of its scenario, waits until a probe request is counted on the authorization the
//! load must take (`authz-20` of the Server, or the default policy), and warms up; after each run
//! it checks in the server proxy's `inbound_http_authz_*_total` that every request of the run
//! was allowed by that authorization, and in its `request_total` that every one came over
//! mutual TLS from the client's identity.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt as _;
use mesh_api::inbound::{self, Authorization, IdentityMatch, InboundPolicy, Requirement};
use mesh_cli::local::{
    service_yaml, Cluster, ControlOptions, ControlPlane, Pod, Proxy, TRUST_DOMAIN,
};
use serde::Serialize;

use crate::oha::{Load, Oha, Run};
use crate::report::{self, met, Round, Series};
use crate::resources::{Meter, Watched};
use crate::server::{self, Server};
use crate::units::{ms, ratio, thousands};

/// How many AuthorizationPolicies target the Server in the policed scenario.
pub const POLICIES: usize = 20;
/// The target: 20 policies cost at most this share of p99 and of maximum throughput.
pub const TARGET_COST: f64 = 0.05;

/// The Service's ClusterIP, name and authority.
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const SERVICE: &str = "authz-svc";
const NAMESPACE: &str = "bench";
const SERVICE_HOST: &str = "authz-svc.bench.svc.cluster.local";
/// The service network the client routes to its `eth0`, so that connections to the ClusterIP
/// reach its redirect rules.
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The pods' service accounts (their identities) and their `app` labels.
const CLIENT_SA: &str = "client";
const SERVER_SA: &str = "server";
/// The Server of the policed scenario (it selects `app: server`, port [`server::PORT`]).
const SERVER_NAME: &str = "server-http";
/// The path of the load's requests.
const LOAD_PATH: &str = "/items";
/// The network every pod of the cluster is in (the `pods` NetworkAuthentication: all of it
/// but a block no pod gets).
const POD_NETWORK: &str = "10.244.0.0/16";
const NO_POD_BLOCK: &str = "10.244.255.0/24";
/// How long a change of the policy file may take to reach the server's proxy.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(15);
/// The warm-up before every run: the policy changed just before.
const WARM_UP: Duration = Duration::from_secs(1);
/// The server proxy's counters of authorization decisions, and of inbound requests.
const AUTHZ_FAMILIES: [&str; 3] = [
    "inbound_http_authz_allow_total",
    "inbound_http_authz_deny_total",
    "inbound_http_authz_audit_total",
];
const ALLOW: &str = "inbound_http_authz_allow_total";
const REQUESTS: &str = "request_total";
/// The default inbound policy of a port no Server selects (the proxies' default).
const DEFAULT_POLICY: &str = "all-unauthenticated";

/// The two states of the server's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// No Server selects the port: the default policy `all-unauthenticated` allows everyone.
    NoPolicy,
    /// A Server on the port and [`POLICIES`] AuthorizationPolicies; the last allows the client.
    Policies,
}

impl Scenario {
    pub const ALL: [Scenario; 2] = [Scenario::NoPolicy, Scenario::Policies];

    /// The scenario's name in the report.
    pub fn name(self) -> String {
        match self {
            Scenario::NoPolicy => "no policy".to_string(),
            Scenario::Policies => format!("{POLICIES} policies"),
        }
    }

    /// The labels of the server proxy's `inbound_http_authz_allow_total` every request of the
    /// load must be counted under.
    fn allowed_by(self) -> [(&'static str, String); 2] {
        match self {
            Scenario::NoPolicy => [
                ("srv_kind", "default".to_string()),
                ("authz_name", DEFAULT_POLICY.to_string()),
            ],
            Scenario::Policies => [
                ("srv_name", SERVER_NAME.to_string()),
                ("authz_name", authz_name(POLICIES)),
            ],
        }
    }

    /// How the report names that authorization.
    fn allowed_by_text(self) -> String {
        self.allowed_by()
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",")
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

/// Everything the authz part measured.
#[derive(Debug, Serialize)]
pub struct Results {
    /// AuthorizationPolicies on the Server in the policed scenario.
    pub policies: usize,
    /// The client's identity and address, as the server's proxy sees them.
    pub client_identity: String,
    pub client_ip: IpAddr,
    /// The authorization that allows the client, and its 1-based position in the order the
    /// proxy checks them (the order of the policy the controller served).
    pub allowing: String,
    pub allowing_position: usize,
    /// What the policies that do not allow the client require, read back from the served
    /// policy.
    pub others: Mix,
    /// The machine's cores (the share of the CPU others used is of all of them).
    pub cores: usize,
    /// Both scenarios, per series, in the order they ran.
    pub measurements: Vec<Measurement>,
}

/// The requirements of the authorizations that do not allow the client.
#[derive(Debug, Default, Serialize)]
pub struct Mix {
    /// Authorizations that require an identity only, a network only, and both.
    pub identity_only: usize,
    pub network_only: usize,
    pub both: usize,
    /// Identity patterns, networks and exceptions in all of them.
    pub identities: usize,
    pub networks: usize,
    pub excepts: usize,
}

/// One scenario under one load, in rounds interleaved with the other scenario.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    pub series: Series,
    pub run: Run,
    pub rounds: Vec<Round>,
    /// Per round: the requests the server's proxy counted on the scenario's authorization.
    pub allowed: Vec<u64>,
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

    /// A proxy's CPU seconds per 10,000 requests (the median round); `None` without usage.
    pub fn cpu_per_10k(&self, proxy: &str) -> Option<f64> {
        self.rounds
            .first()?
            .usage
            .iter()
            .find(|u| u.name == proxy)?;
        Some(self.median(|r| cpu_per_10k(r, proxy)))
    }
}

/// The names of the watched proxies in the rounds' usage.
const SERVER_PROXY: &str = "server proxy";
const CLIENT_PROXY: &str = "client proxy";

/// `proxy`'s CPU seconds per 10,000 requests of one round.
fn cpu_per_10k(r: &Round, proxy: &str) -> f64 {
    match r.usage.iter().find(|u| u.name == proxy) {
        Some(u) if r.ok > 0 => u.cpu_seconds / r.ok as f64 * 10_000.0,
        _ => 0.0,
    }
}

/// Builds the pods, measures both scenarios in interleaved rounds, removes the pods.
pub fn run(plan: &Plan, oha: &Oha, proxy_env: &[(String, String)]) -> anyhow::Result<Results> {
    let mut cluster = Cluster::new("bench-az").context("creating the authz cluster")?;
    let control_pod = cluster.add_pod("control")?;
    let server_pod = cluster.add_pod("server")?;
    let client = cluster.add_pod("client")?;

    let _server = Server::start(&server_pod)?;
    let control = ControlPlane::start(
        &control_pod,
        &cluster.log_dir().join("control"),
        &ControlOptions::default(),
    )
    .context("starting the control plane")?;
    control.write(
        "service.yaml",
        &service_yaml(
            NAMESPACE,
            SERVICE,
            CLUSTER_IP,
            (80, server::PORT),
            &[("app", SERVER_SA)],
            std::slice::from_ref(&server_pod),
        ),
    )?;
    let mesh_options = |pod: &Pod, sa: &str| {
        let mut options = control.enroll(pod, NAMESPACE, sa, &[("app", sa)])?;
        options.env.extend(proxy_env.iter().cloned());
        anyhow::Ok(options)
    };
    let server_options = mesh_options(&server_pod, SERVER_SA)?;
    let client_options = mesh_options(&client, CLIENT_SA)?;

    // The policies first, to read back the policy the controller serves with them.
    let client_identity = identity(CLIENT_SA);
    let client_ip = IpAddr::V4(client.ip);
    control.write("policy.yaml", &policies_yaml(POLICIES, client.ip))?;
    let served = served_policy(&control_pod, control.destination_addr(), &server_pod.name)
        .context("reading the inbound policy the controller serves")?;
    let (allowing_position, others) = check_served(&served, client_ip, &client_identity)?;
    eprintln!(
        "mesh-bench: the controller serves {} authorizations on {SERVER_NAME}; the first that \
         allows {client_identity} from {client_ip} is number {allowing_position}",
        served.authorizations.len()
    );

    let server_proxy = server_pod
        .mesh(server_options)
        .context("meshing the server pod")?;
    client
        .route(SERVICE_CIDR)
        .context("routing the service network in the client pod")?;
    let client_proxy = client
        .mesh(client_options)
        .context("meshing the client pod")?;

    let bed = Bed {
        control: &control,
        client: &client,
        client_proxy: &client_proxy,
        server_proxy: &server_proxy,
        client_identity: &client_identity,
        oha,
        plan,
    };
    let measurements = bed.measure()?;
    Ok(Results {
        policies: POLICIES,
        client_identity,
        client_ip,
        allowing: authz_name(POLICIES),
        allowing_position,
        others,
        cores: plan.cores,
        measurements,
    })
}

/// The served policy's authorizations: the first that allows the client must be the last, and
/// the only one; returns its position and what the others require.
fn check_served(
    served: &InboundPolicy,
    client: IpAddr,
    identity: &str,
) -> anyhow::Result<(usize, Mix)> {
    let names: Vec<&str> = served
        .authorizations
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    if served.authorizations.len() != POLICIES || !served.routes.is_empty() {
        bail!(
            "the served policy has {} authorizations and {} routes, expected {POLICIES} and \
             none: {names:?}",
            served.authorizations.len(),
            served.routes.len()
        );
    }
    let allowing: Vec<usize> = served
        .authorizations
        .iter()
        .enumerate()
        .filter(|(_, a)| allows(a, client, identity))
        .map(|(i, _)| i + 1)
        .collect();
    let last = served.authorizations.last().map(|a| a.name.as_str());
    if allowing != [POLICIES] || last != Some(authz_name(POLICIES).as_str()) {
        bail!(
            "{identity} from {client} must be allowed by the last authorization only, {}; \
             allowed by positions {allowing:?} of {names:?}",
            authz_name(POLICIES)
        );
    }
    let mut mix = Mix::default();
    for a in &served.authorizations[..POLICIES - 1] {
        let (mut ids, mut nets) = (false, false);
        for r in &a.requires {
            match r {
                Requirement::MeshTls { identities } => {
                    ids = true;
                    mix.identities += identities.len();
                }
                Requirement::Network { networks } => {
                    nets = true;
                    mix.networks += networks.len();
                    mix.excepts += networks.iter().map(|n| n.except.len()).sum::<usize>();
                }
            }
        }
        match (ids, nets) {
            (true, false) => mix.identity_only += 1,
            (false, true) => mix.network_only += 1,
            _ => mix.both += 1,
        }
    }
    Ok((POLICIES, mix))
}

/// Whether `a` allows `identity` from `client`, as the proxy decides: every requirement holds.
fn allows(a: &Authorization, client: IpAddr, identity: &str) -> bool {
    a.requires.iter().all(|r| match r {
        Requirement::MeshTls { identities } => identities
            .iter()
            .any(|p| IdentityMatch::parse(p).is_ok_and(|m| m.matches(identity))),
        Requirement::Network { networks } => networks.iter().any(|n| n.contains(client)),
    })
}

/// What the runs need.
struct Bed<'a> {
    control: &'a ControlPlane,
    client: &'a Pod,
    client_proxy: &'a Proxy,
    server_proxy: &'a Proxy,
    client_identity: &'a str,
    oha: &'a Oha,
    plan: &'a Plan,
}

impl Bed<'_> {
    /// The fixed-rate runs, then the throughput runs, each in rounds that interleave the
    /// scenarios (no policy, 20 policies, no policy, …).
    fn measure(&self) -> anyhow::Result<Vec<Measurement>> {
        let mut redos_left = crate::MAX_REDOS;
        let mut measurements: Vec<Measurement> = Vec::new();
        for (series, template) in [
            (Series::Latency, &self.plan.latency),
            (Series::Throughput, &self.plan.throughput),
        ] {
            let run = Run {
                url: format!("http://{CLUSTER_IP}:80{LOAD_PATH}"),
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
                    allowed: Vec::new(),
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

    /// One round of `m`: the policy of its scenario in force, a warm-up, the run, measured
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
        let watched = [
            Watched {
                name: SERVER_PROXY.to_string(),
                pid: self.server_proxy.pid(),
            },
            Watched {
                name: CLIENT_PROXY.to_string(),
                pid: self.client_proxy.pid(),
            },
        ];
        let allowed_by = m.scenario.allowed_by();
        loop {
            if crate::INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let before = self.counters()?;
            let meter = Meter::start(self.plan.clock_ticks, &watched)?;
            let outcome = self.oha.run(self.client, &m.run)?;
            let metered = meter.finish()?;
            let after = self.counters()?;
            let seen = Seen::between(&before, &after, &allowed_by, self.client_identity);
            if outcome.ok == 0 {
                bail!(
                    "no request succeeded ({} failed); oha's output: {}",
                    outcome.failed,
                    outcome.raw
                );
            }
            if seen.allowed < outcome.ok || seen.elsewhere > 0 || seen.mutual_tls < outcome.ok {
                bail!(
                    "the load did not all take the intended path: {} requests succeeded; the \
                     server's proxy counted {} allowed by {}, {} other decisions, and {} \
                     inbound requests over mutual TLS from {}",
                    outcome.ok,
                    seen.allowed,
                    m.scenario.allowed_by_text(),
                    seen.elsewhere,
                    seen.mutual_tls,
                    self.client_identity
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
                "mesh-bench: {:<11} {:>7.0} req/s  p50 {:.3}  p99 {:.3}  p99.9 {:.3} ms  errors \
                 {}  allowed: {}  others' CPU {:.0} %",
                m.scenario.name(),
                r.rps(),
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.failed,
                seen.allowed,
                others * 100.0
            );
            if others > report::BUSY_ELSEWHERE && *redos_left > 0 {
                *redos_left -= 1;
                m.redone += 1;
                eprintln!("mesh-bench: the machine was busy; measuring again");
                continue;
            }
            m.rounds.push(r);
            m.allowed.push(seen.allowed);
            return Ok(());
        }
    }

    fn plan_rate(&self) -> u32 {
        match self.plan.latency.load {
            Load::Rate(rate) => rate,
            Load::Max => report::TARGET_RATE,
        }
    }

    /// The server proxy's counters.
    fn counters(&self) -> anyhow::Result<Counters> {
        let (status, body) = self
            .server_proxy
            .admin_get("/metrics")
            .context("reading the server proxy's metrics")?;
        if status != 200 {
            bail!("the server proxy's /metrics answered {status}");
        }
        Ok(Counters::parse(&body))
    }

    /// Writes the scenario's policy file and waits until a probe request is counted on the
    /// scenario's authorization, and on no other decision.
    fn set_scenario(&self, scenario: Scenario) -> anyhow::Result<()> {
        let yaml = match scenario {
            Scenario::NoPolicy => NO_POLICY.to_string(),
            Scenario::Policies => policies_yaml(POLICIES, self.client.ip),
        };
        self.control.write("policy.yaml", &yaml)?;
        let allowed_by = scenario.allowed_by();
        let deadline = Instant::now() + IN_FORCE_TIMEOUT;
        loop {
            let before = self.counters()?;
            let last = match probe(self.client) {
                Ok(200) => {
                    let after = self.counters()?;
                    let seen = Seen::between(&before, &after, &allowed_by, self.client_identity);
                    match seen {
                        Seen {
                            allowed: 1,
                            elsewhere: 0,
                            mutual_tls: 1,
                        } => return Ok(()),
                        s => format!(
                            "{} allowed by {}, {} other decisions, {} over mutual TLS",
                            s.allowed,
                            scenario.allowed_by_text(),
                            s.elsewhere,
                            s.mutual_tls
                        ),
                    }
                }
                Ok(status) => format!("status {status}"),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the {} scenario was not in force after {IN_FORCE_TIMEOUT:?}: a probe of \
                     {LOAD_PATH} got {last}",
                    scenario.name(),
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
                self.find(Scenario::Policies, series)?,
                self.find(Scenario::NoPolicy, series)?,
            ))
        };
        let policies = Scenario::Policies.name();
        if let Some((policed, none)) = pair(Series::Latency) {
            let rate = match policed.run.load {
                Load::Rate(rate) => thousands(f64::from(rate)),
                Load::Max => "–".to_string(),
            };
            let (a, b) = (policed.p99_ms(), none.p99_ms());
            verdicts.push((
                format!(
                    "p99 at {rate} req/s with {policies} at most {:.0} % above no policy",
                    TARGET_COST * 100.0
                ),
                format!("{} vs {} ms ({})", ms(a), ms(b), ratio(a, b)),
                format!(
                    "{}{}",
                    met(b > 0.0 && a <= b * (1.0 + TARGET_COST)),
                    noise(policed, none, &|r| r.p99_ms)
                ),
            ));
        }
        if let Some((policed, none)) = pair(Series::Throughput) {
            let (a, b) = (policed.rps(), none.rps());
            verdicts.push((
                format!(
                    "maximum throughput with {policies} at most {:.0} % below no policy",
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
                    noise(policed, none, &Round::rps)
                ),
            ));
        }
        verdicts
    }

    /// The report's section (after its `##` heading and marker, which the caller writes).
    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let latency = self.find(Scenario::NoPolicy, Series::Latency);
        let throughput = self.find(Scenario::NoPolicy, Series::Throughput);
        writeln!(
            out,
            "The server pod runs the benchmark's hyper server on port {port} behind the Service \
             `{SERVICE}.{NAMESPACE}` (ClusterIP {CLUSTER_IP}, port 80 → {port}). The destination \
             and identity controllers run in a pod of their own on one state folder; both other \
             pods are meshed with identity (service accounts `{CLIENT_SA}` and `{SERVER_SA}`), so \
             the client's proxy discovers the Service, opens mutual TLS to the server's proxy \
             and carries the requests as HTTP/2, and the server's proxy authorizes each request \
             with the identity the client proved ({}) and its address ({}), by the port's \
             inbound policy, which it watches from the destination controller. The load is `oha \
             --host {SERVICE_HOST} http://{CLUSTER_IP}:80{LOAD_PATH}` in the client pod, \
             HTTP/1.1, as in the proxy part.\n",
            self.client_identity,
            self.client_ip,
            port = server::PORT,
        )?;
        let m = &self.others;
        writeln!(
            out,
            "- **no policy**: no Server selects the port: the proxy's default inbound policy, \
             `{DEFAULT_POLICY}`, allows every request (one authorization without requirements).\n\
             - **{p} policies**: the Server `{SERVER_NAME}` (`podSelector: {{matchLabels: \
             {{app: {SERVER_SA}}}}}`, port {port}, `accessPolicy: deny`) and {p} \
             AuthorizationPolicies targeting it, `authz-01` … `{last}`, checked in that order \
             (read back from the policy the controller served). The first {n} require what the \
             client does not have: {} an identity only (MeshTLSAuthentications of `identities` \
             and of `identityRefs` to ServiceAccounts: exact names and a `*.` suffix), {} a \
             network only (NetworkAuthentications of several CIDRs, one of them the pods' \
             network with the client's address excepted), and {} a network the client is in \
             and then an identity it does not have, so both are tested; {} identity patterns, \
             {} networks and {} exceptions in all. The client is allowed only by `{last}`, \
             **number {} of {p}**: the pods' network (less a block no pod is in) and the \
             `{CLIENT_SA}` ServiceAccount by `identityRefs`. Every request walks all {p}.\n",
            m.identity_only,
            m.network_only,
            m.both,
            m.identities,
            m.networks,
            m.excepts,
            self.allowing_position,
            p = self.policies,
            n = self.policies.saturating_sub(1),
            last = self.allowing,
            port = server::PORT,
        )?;
        writeln!(
            out,
            "Both scenarios use the same pods, proxies and connections: before every run the \
             benchmark writes the scenario's policy file (the controller's folder source picks \
             it up), waits until a probe request is counted in the server proxy's \
             `{ALLOW}` under the scenario's authorization (`{}` or `{}`) and under no other \
             decision, and warms up for one second at the fixed rate; after the run it checks \
             there that every successful request of the run was allowed by that authorization, \
             that none was denied or allowed by another, and that the server proxy's inbound \
             `{REQUESTS}` counted every one from `client_id=\"{}\"` over mutual TLS. The runs \
             interleave the scenarios in rounds, like the proxy part's (no policy, {} policies, \
             no policy, …), fixed-rate runs first, then maximum-throughput runs; each value is \
             the median round.\n",
            Scenario::NoPolicy.allowed_by_text(),
            Scenario::Policies.allowed_by_text(),
            self.client_identity,
            self.policies,
        )?;
        if let (Some(l), Some(t)) = (latency, throughput) {
            writeln!(
                out,
                "Fixed rate: {} req/s for {}, {} connections, corrected for coordinated \
                 omission. Maximum throughput: no rate limit, {} connections, {}. {} rounds. \
                 Proxy CPU is user + system time per 10,000 requests at the fixed rate, of the \
                 server's proxy (where authorization runs) and of the client's.\n",
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
            "| scenario | p50 ms | p99 ms | p99.9 ms | p99 × no policy | server proxy CPU s / \
             10k req | client proxy CPU s / 10k req | max req/s | max × no policy | max p99 ms \
             | errors |"
        )?;
        writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        let dash = || "–".to_string();
        let cpu = |m: Option<&Measurement>, proxy: &str| {
            m.and_then(|m| m.cpu_per_10k(proxy))
                .map_or_else(dash, |c| format!("{c:.2}"))
        };
        for scenario in Scenario::ALL {
            let (l, t) = (
                self.find(scenario, Series::Latency),
                self.find(scenario, Series::Throughput),
            );
            let errors: u64 = [l, t].iter().flatten().map(|m| m.failed()).sum();
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} |",
                scenario.name(),
                l.map_or_else(dash, |m| ms(m.p50_ms())),
                l.map_or_else(dash, |m| ms(m.p99_ms())),
                l.map_or_else(dash, |m| ms(m.p999_ms())),
                match (l, latency) {
                    (Some(m), Some(base)) => ratio(m.p99_ms(), base.p99_ms()),
                    _ => dash(),
                },
                cpu(l, SERVER_PROXY),
                cpu(l, CLIENT_PROXY),
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
            "| scenario | p99 ms | server proxy CPU s / 10k req | max req/s | requests allowed \
             by the scenario's authorization / succeeded |"
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
            let (allowed, ok): (u64, u64) = [l, t]
                .iter()
                .flatten()
                .map(|m| {
                    (
                        m.allowed.iter().sum::<u64>(),
                        m.rounds.iter().map(|r| r.ok).sum::<u64>(),
                    )
                })
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
            writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} |",
                scenario.name(),
                range(l, &|r| r.p99_ms, ms),
                range(l, &|r| cpu_per_10k(r, SERVER_PROXY), |c| format!("{c:.2}")),
                range(t, &Round::rps, thousands),
                thousands(allowed as f64),
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

/// The policy file of the no-policy scenario: no object.
const NO_POLICY: &str = "# No Server: the port's default inbound policy.\n";

/// The name of the `i`th AuthorizationPolicy (1-based; the proxy checks them by name).
fn authz_name(i: usize) -> String {
    format!("authz-{i:02}")
}

/// The identity of a service account of the benchmark's namespace.
fn identity(sa: &str) -> String {
    format!("{sa}.{NAMESPACE}.serviceaccount.identity.mesh.{TRUST_DOMAIN}")
}

/// The Server `server-http` and `n` AuthorizationPolicies targeting it, `authz-01` … ; only the
/// last allows the client (`client` from `client_ip`). Of the others, by `i % 3`:
///
/// - 1: an identity only: `ids-NN`, five identities the client is not (`identities`, or
///   `identityRefs` to ServiceAccounts for even `i`) and a `*.team-NN…` suffix;
/// - 2: a network only: `nets-NN`, four networks: `192.168.NN.0/24`, `172.16.0.0/12` less
///   `172.16.NN.0/24`, the pods' network less the client's address and `10.244.NN.0/24`, and
///   `fd00::/8`;
/// - 0: the network `pods` (which the client is in), then the identities of `ids-NN`.
///
/// The last requires `pods` and `client-id`, the `client` ServiceAccount by `identityRefs`.
fn policies_yaml(n: usize, client_ip: Ipv4Addr) -> String {
    let header = |kind: &str, name: &str| {
        format!(
            "---\napiVersion: policy.mesh.io/v1alpha1\nkind: {kind}\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n"
        )
    };
    let meshtls = |name: &str| {
        format!("{{group: policy.mesh.io, kind: MeshTLSAuthentication, name: {name}}}")
    };
    let network = |name: &str| {
        format!("{{group: policy.mesh.io, kind: NetworkAuthentication, name: {name}}}")
    };
    let mut yaml = header("Server", SERVER_NAME);
    let _ = writeln!(
        yaml,
        "spec: {{podSelector: {{matchLabels: {{app: {SERVER_SA}}}}}, port: {}, accessPolicy: \
         deny}}",
        server::PORT
    );
    yaml += &header("NetworkAuthentication", "pods");
    let _ = writeln!(
        yaml,
        "spec: {{networks: [{{cidr: {POD_NETWORK}, except: [{NO_POD_BLOCK}]}}]}}"
    );
    yaml += &header("MeshTLSAuthentication", "client-id");
    let _ = writeln!(
        yaml,
        "spec: {{identityRefs: [{{kind: ServiceAccount, name: {CLIENT_SA}}}]}}"
    );
    for i in 1..n {
        let ids = format!("ids-{i:02}");
        let nets = format!("nets-{i:02}");
        let accounts: Vec<String> = ["api", "batch", "web", "worker", "admin"]
            .iter()
            .map(|s| format!("{s}-{i:02}"))
            .collect();
        let requires = match i % 3 {
            1 | 0 => {
                yaml += &header("MeshTLSAuthentication", &ids);
                let suffix = format!("'*.team-{i:02}.serviceaccount.identity.mesh.{TRUST_DOMAIN}'");
                if i % 2 == 0 {
                    let refs: Vec<String> = accounts
                        .iter()
                        .map(|a| format!("{{kind: ServiceAccount, name: {a}}}"))
                        .collect();
                    let _ = writeln!(
                        yaml,
                        "spec: {{identities: [{suffix}], identityRefs: [{}]}}",
                        refs.join(", ")
                    );
                } else {
                    let mut list: Vec<String> = accounts.iter().map(|a| identity(a)).collect();
                    list.push(suffix);
                    let _ = writeln!(yaml, "spec: {{identities: [{}]}}", list.join(", "));
                }
                if i % 3 == 1 {
                    vec![meshtls(&ids)]
                } else {
                    vec![network("pods"), meshtls(&ids)]
                }
            }
            _ => {
                yaml += &header("NetworkAuthentication", &nets);
                let _ = writeln!(
                    yaml,
                    "spec: {{networks: [{{cidr: 192.168.{i}.0/24}}, {{cidr: 172.16.0.0/12, \
                     except: [172.16.{i}.0/24]}}, {{cidr: {POD_NETWORK}, except: \
                     ['{client_ip}/32', 10.244.{i}.0/24]}}, {{cidr: 'fd00::/8'}}]}}"
                );
                vec![network(&nets)]
            }
        };
        yaml += &header("AuthorizationPolicy", &authz_name(i));
        let _ = writeln!(
            yaml,
            "spec: {{targetRef: {{group: policy.mesh.io, kind: Server, name: {SERVER_NAME}}}, \
             requiredAuthenticationRefs: [{}]}}",
            requires.join(", ")
        );
    }
    yaml += &header("AuthorizationPolicy", &authz_name(n));
    let _ = writeln!(
        yaml,
        "spec: {{targetRef: {{group: policy.mesh.io, kind: Server, name: {SERVER_NAME}}}, \
         requiredAuthenticationRefs: [{}, {}]}}",
        network("pods"),
        meshtls("client-id")
    );
    yaml
}

/// The first policy of the server pod's port with [`POLICIES`] authorizations that the
/// controller at `addr` serves, watched from inside `pod`.
fn served_policy(pod: &Pod, addr: SocketAddr, server_pod: &str) -> anyhow::Result<InboundPolicy> {
    let subject = format!("{NAMESPACE}/{server_pod}");
    pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime")?;
        rt.block_on(async move {
            let watch = inbound::watch_inbound(
                mesh_api::destination::Connector::default(),
                addr,
                &subject,
                server::PORT,
            );
            let mut watch = std::pin::pin!(watch);
            let first = async {
                while let Some(line) = watch.next().await {
                    let policy = line.map_err(|e| anyhow!("the policy watch failed: {e}"))?;
                    if policy.authorizations.len() == POLICIES {
                        return Ok(policy);
                    }
                }
                bail!("the policy watch ended")
            };
            tokio::time::timeout(IN_FORCE_TIMEOUT, first)
                .await
                .map_err(|_| {
                    anyhow!("no policy with {POLICIES} authorizations after {IN_FORCE_TIMEOUT:?}")
                })?
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
            "GET {LOAD_PATH} HTTP/1.1\r\nHost: {SERVICE_HOST}\r\nConnection: close\r\n\r\n"
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

/// The server proxy's authorization decisions and inbound requests, by family and label set.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counters(BTreeMap<(String, BTreeMap<String, String>), u64>);

impl Counters {
    /// The samples of [`AUTHZ_FAMILIES`] and [`REQUESTS`] in the text format.
    fn parse(metrics: &str) -> Counters {
        let mut counts = BTreeMap::new();
        for line in metrics.lines() {
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            if !AUTHZ_FAMILIES.contains(&name) && name != REQUESTS {
                continue;
            }
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
            *counts
                .entry((name.to_string(), parse_labels(labels)))
                .or_insert(0) += value as u64;
        }
        Counters(counts)
    }

    /// The increase of each sample since `before` (a label set that went away and came back
    /// counts from zero).
    fn since<'a>(
        &'a self,
        before: &'a Counters,
    ) -> impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>, u64)> + 'a {
        self.0.iter().map(move |((name, labels), &now)| {
            let then = before
                .0
                .get(&(name.clone(), labels.clone()))
                .copied()
                .unwrap_or(0);
            let delta = if now >= then { now - then } else { now };
            (name.as_str(), labels, delta)
        })
    }
}

/// `a="1",b="x\"y"` → {a: 1, b: x"y}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let key = key.trim_start_matches(',').trim();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(match next {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
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

/// What the server's proxy counted between two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Requests allowed by the scenario's authorization.
    allowed: u64,
    /// Every other authorization decision: allowed by another, denied, audited.
    elsewhere: u64,
    /// Inbound requests over mutual TLS from the client's identity.
    mutual_tls: u64,
}

impl Seen {
    fn between(
        before: &Counters,
        after: &Counters,
        allowed_by: &[(&str, String)],
        client_identity: &str,
    ) -> Seen {
        let has = |labels: &BTreeMap<String, String>, key: &str, value: &str| {
            labels.get(key).is_some_and(|v| v == value)
        };
        let mut seen = Seen::default();
        for (name, labels, delta) in after.since(before) {
            if name == REQUESTS {
                if has(labels, "direction", "inbound")
                    && has(labels, "tls", "true")
                    && has(labels, "client_id", client_identity)
                {
                    seen.mutual_tls += delta;
                }
            } else if name == ALLOW && allowed_by.iter().all(|(k, v)| has(labels, k, v)) {
                seen.allowed += delta;
            } else {
                seen.elsewhere += delta;
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_controller::index::{Index, IndexConfig};
    use mesh_controller::source::folder::parse_yaml;

    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 4);

    /// The policy the controller computes for the server pod from the benchmark's objects.
    fn served(policy: &str) -> InboundPolicy {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: {NAMESPACE}, \
             labels: {{app: {SERVER_SA}}}}}\n\
             spec: {{serviceAccountName: {SERVER_SA}, containers: [{{name: app, image: app}}]}}\n\
             status: {{phase: Running, podIP: 10.244.0.3}}\n---\n{policy}"
        );
        let (objects, errors) = parse_yaml(&pod);
        assert!(errors.is_empty(), "{errors:?}");
        let mut index = Index::new(IndexConfig::default());
        objects.into_iter().for_each(|o| index.apply(o));
        assert!(
            index.inbound_warnings().is_empty(),
            "{:?}",
            index.inbound_warnings()
        );
        index.inbound_policy(NAMESPACE, "server", server::PORT)
    }

    #[test]
    fn only_the_last_policy_allows_the_client() {
        let yaml = policies_yaml(POLICIES, CLIENT_IP);
        let policy = served(&yaml);
        assert_eq!(
            policy.server.as_ref().map(|s| s.name.as_str()),
            Some(SERVER_NAME)
        );
        let names: Vec<&str> = policy
            .authorizations
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let expected: Vec<String> = (1..=POLICIES).map(authz_name).collect();
        assert_eq!(names, expected);
        let client = IpAddr::V4(CLIENT_IP);
        let (position, mix) =
            check_served(&policy, client, &identity(CLIENT_SA)).expect("the scenario holds");
        assert_eq!(position, POLICIES);
        assert_eq!(
            (mix.identity_only, mix.network_only, mix.both),
            (7, 6, 6),
            "{mix:?}"
        );
        assert_eq!((mix.identities, mix.networks, mix.excepts), (78, 30, 24));
        // Another pod of the network with the client's identity would be allowed by the
        // network-only ones: the client's own address is what they except.
        let elsewhere = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9));
        assert!(policy
            .authorizations
            .iter()
            .any(|a| a.name == authz_name(2) && allows(a, elsewhere, &identity(CLIENT_SA))));
        // Someone else's identity is allowed by an identity list, never by the last.
        let web = identity("web-01");
        assert!(allows(&policy.authorizations[0], client, &web));
        assert!(!allows(&policy.authorizations[POLICIES - 1], client, &web));

        let (objects, errors) = parse_yaml(NO_POLICY);
        assert!(
            errors.is_empty() && objects.is_empty(),
            "{objects:?} {errors:?}"
        );
        assert_eq!(served(NO_POLICY).server, None);
    }

    #[test]
    fn counts_between_readings() {
        let id = identity(CLIENT_SA);
        let metrics = |allow_default: u64, allow_20: u64, deny: u64, requests: u64| {
            format!(
                "# TYPE inbound_http_authz_allow counter\n\
                 inbound_http_authz_allow_total{{srv_kind=\"default\",srv_name=\"all-unauthenticated\",route_name=\"default\",authz_kind=\"default\",authz_name=\"all-unauthenticated\"}} {allow_default}\n\
                 inbound_http_authz_allow_total{{srv_kind=\"Server\",srv_name=\"server-http\",route_name=\"default\",authz_kind=\"AuthorizationPolicy\",authz_name=\"authz-20\"}} {allow_20}\n\
                 inbound_http_authz_allow_created{{srv_kind=\"Server\",srv_name=\"server-http\",authz_name=\"authz-20\"}} 1.0\n\
                 inbound_http_authz_deny_total{{srv_kind=\"Server\",srv_name=\"server-http\",route_name=\"default\",authz_kind=\"\",authz_name=\"\"}} {deny}\n\
                 request_total{{direction=\"inbound\",authority=\"authz-svc.bench.svc.cluster.local\",target_addr=\"127.0.0.1:8080\",tls=\"true\",client_id=\"{id}\"}} {requests}\n\
                 request_total{{direction=\"outbound\",authority=\"x:80\",tls=\"true\",server_id=\"{id}\"}} 1000\n"
            )
        };
        let before = Counters::parse(&metrics(5, 0, 0, 5));
        assert_eq!(before.0.len(), 5);
        let after = Counters::parse(&metrics(5, 100, 0, 105));
        let policed = Scenario::Policies.allowed_by();
        let none = Scenario::NoPolicy.allowed_by();
        let check = |after: &Counters, by: &[(&str, String)], expected: (u64, u64, u64)| {
            let s = Seen::between(&before, after, by, &id);
            assert_eq!((s.allowed, s.elsewhere, s.mutual_tls), expected);
        };
        check(&after, &policed, (100, 0, 100));
        check(&after, &none, (0, 100, 100));
        let after = Counters::parse(&metrics(7, 100, 3, 110));
        check(&after, &policed, (100, 5, 105));
        // A label set that went away and came back counts from zero.
        let after = Counters::parse(&metrics(2, 0, 0, 6));
        check(&after, &none, (2, 0, 1));
        assert_eq!(
            parse_labels(r#"a="1",b="x\"y",c="""#),
            BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x\"y".to_string()),
                ("c".to_string(), String::new()),
            ])
        );
    }
}
