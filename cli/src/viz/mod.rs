//! `mesh viz`: the observability commands (`tap`, `top`, `stat`, `routes`, `authz`, `edges`,
//! `dashboard`)
//! over a [`Target`]: the local mesh (its state folder, and its pods' proxies reached in their
//! network namespaces) or a cluster (its objects from the Kubernetes API, the viz component's
//! metrics API and tap aggregator through the API server's service proxy), behind the same
//! [`MetricsSource`] and [`TapSource`]: one code path above them.

pub mod install;
pub mod kube;
pub mod local;
pub mod resource;

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mesh_api::duration::parse_duration;
use mesh_api::tap::Filter;
use mesh_viz::client::{self, ProxyTaps, TapSource, Transport};
use mesh_viz::model::{Kind, PodInfo, Workload};
use mesh_viz::source::{MetricsSource, Proxies, Window};
use mesh_viz::stat::{Measure, Scrapes};
use mesh_viz::tap::{Formatter, PodEvent};
use mesh_viz::top::Top;
use mesh_viz::views;
use tokio::sync::mpsc;

use self::local::State;
use self::resource::Resource;
use crate::target::TargetArgs;

/// `mesh viz` and its shared flags.
#[derive(clap::Args, Debug)]
pub struct VizArgs {
    #[command(subcommand)]
    pub command: VizCommand,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The namespace of the resources: by default `demo` on the local mesh, `default` in a
    /// cluster. In a cluster, only its objects (and those of namespaces named as resources,
    /// e.g. ns/demo) are listed, so a user allowed one namespace can look at it.
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// In a cluster, lists the objects of every namespace (which needs the permission to):
    /// `stat ns` then shows every namespace, and edges name callers from any namespace.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
}

pub use crate::target::TargetKind;

#[derive(clap::Subcommand, Debug)]
pub enum VizCommand {
    /// Streams the requests of a resource's pods as they happen, one line per event.
    Tap(TapArgs),
    /// Shows a live table of a resource's routes: counts, latencies and success rates.
    Top(TopArgs),
    /// Shows golden metrics per workload: meshed pods, success rate, RPS, latency, TCP.
    Stat(StatArgs),
    /// Shows the traffic a resource's pods sent per route (HTTPRoute, GRPCRoute, or a Service's
    /// default route) and per backend: success rate, RPS, latency, retries, faults.
    Routes(RoutesArgs),
    /// Shows what a resource's pods' inbound policy decided, per Server (or default policy),
    /// route and authorization: the requests and TCP connections allowed, denied and audited,
    /// and the requests a rate limit refused.
    Authz(AuthzArgs),
    /// Shows who talks to whom, with identities and whether the hop is mutual TLS.
    Edges(EdgesArgs),
    /// Opens a full-screen dashboard: workloads, their edges and their live traffic.
    Dashboard(DashboardArgs),
    /// Prints the viz component (Prometheus, metrics API, tap aggregator) as YAML:
    /// `mesh viz install | kubectl apply -f -`.
    Install(install::VizInstallArgs),
    /// Prints what to delete to remove the viz component:
    /// `mesh viz uninstall | kubectl delete -f -`.
    Uninstall,
}

/// Which requests to tap.
#[derive(clap::Args, Debug, Clone)]
pub struct TapFilterArgs {
    /// The resource whose pods to tap, e.g. deploy/web, po/web-1, ns/demo.
    pub resource: Resource,
    /// Only requests to this resource, e.g. deploy/web.
    #[arg(long, value_name = "RESOURCE")]
    pub to: Option<Resource>,
    /// Only requests with this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only requests for this authority.
    #[arg(long)]
    pub authority: Option<String>,
    /// The most events per second each proxy sends (more are dropped and counted).
    #[arg(long, value_name = "N")]
    pub max_rps: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct TapArgs {
    #[command(flatten)]
    pub filter: TapFilterArgs,
    /// `wide` adds ports, identities and labels; `json` prints the events as JSON lines.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<TapOutput>,
    /// Stops after this long (e.g. 10s); by default runs until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapOutput {
    Wide,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: TapFilterArgs,
    /// When stdout is not a terminal: how long to watch before printing the table once.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
}

#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// The resources to show, e.g. deploy (all Deployments), deploy/web, po, ns/demo, svc/web-svc.
    pub resource: Resource,
    /// Only traffic the resources sent to this resource (read at the senders).
    #[arg(long, value_name = "RESOURCE", conflicts_with = "from")]
    pub to: Option<Resource>,
    /// Only traffic this resource sent to the resources (read at the senders).
    #[arg(long, value_name = "RESOURCE")]
    pub from: Option<Resource>,
    /// The window of rates: two scrapes this far apart; 0s reports everything since the proxies
    /// started, without rates.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// `json` for machines.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<JsonOutput>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonOutput {
    Json,
}

#[derive(clap::Args, Debug)]
pub struct RoutesArgs {
    /// The resource whose pods' outbound requests to show (the callers), e.g. deploy/web,
    /// po/web-1, ns/demo.
    pub resource: Resource,
    /// The window of rates: two scrapes this far apart; 0s reports everything since the proxies
    /// started, without rates.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// `table` (the default) for people, `json` for machines.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: RoutesOutput,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutesOutput {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct AuthzArgs {
    /// The resource whose pods' inbound decisions to show (the servers), e.g. deploy/voting,
    /// po/voting-1, ns/demo.
    pub resource: Resource,
    /// The window of rates: two scrapes this far apart; 0s reports everything since the proxies
    /// started, without rates.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// `table` (the default) for people, `json` for machines.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: RoutesOutput,
}

#[derive(clap::Args, Debug)]
pub struct EdgesArgs {
    /// The resources whose edges to show, e.g. deploy, deploy/web, po.
    pub resource: Resource,
    /// `json` for machines.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<JsonOutput>,
}

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// The workload to select first, e.g. deploy/web (its namespace: -n).
    pub select: Option<Resource>,
    /// How often the metrics are read.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub refresh: Duration,
    /// When stdout is not a terminal: how long to watch before printing one screen.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
}

/// What the commands work on: the pods and workloads of a target, where their samples come
/// from and how they are tapped.
#[derive(Clone)]
pub struct Target {
    pub state: Arc<State>,
    pub metrics: Arc<dyn MetricsSource>,
    pub taps: Arc<dyn TapSource>,
    /// `-n`'s default.
    pub default_namespace: &'static str,
    pub hints: Hints,
}

/// What a target adds to errors, to say what to do next.
#[derive(Clone, Copy, Debug)]
pub struct Hints {
    /// When no proxy (or API) could be read.
    pub unreachable: &'static str,
    /// When a proxy refused a tap.
    pub forbidden: &'static str,
}

impl Target {
    /// The local mesh: `state`, and its proxies reached over `transport`.
    pub fn local(state: State, transport: Arc<dyn Transport>) -> Target {
        Target {
            state: Arc::new(state),
            metrics: Arc::new(Proxies {
                transport: transport.clone(),
            }),
            taps: Arc::new(ProxyTaps { transport }),
            default_namespace: "demo",
            hints: Hints {
                unreachable: "; is the local mesh still running?",
                forbidden: "; local mode taps from the pod's own loopback: is mesh viz running \
                            as root inside the pod's network namespace?",
            },
        }
    }

    /// The namespace `-n` names, or the target's default.
    pub fn namespace<'a>(&self, flag: Option<&'a str>) -> &'a str {
        flag.unwrap_or(self.default_namespace)
    }
}

/// Runs `mesh viz …` against the target the flags name.
pub fn run(args: VizArgs, cluster: &crate::kube::ClusterArgs) -> anyhow::Result<()> {
    // The viz component's manifests need no target.
    let manifests = match &args.command {
        VizCommand::Install(a) => Some(install::install(a)?),
        VizCommand::Uninstall => Some(install::uninstall()?),
        _ => None,
    };
    if let Some(text) = manifests {
        return match std::io::stdout().lock().write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        };
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let (target, runtime) = match args.target.resolve(cluster)? {
        crate::target::Target::Local(local) => {
            // Into the local mesh's namespaces first: the kernel allows it only while no
            // thread runs.
            local.enter()?;
            let state = State::read(&local.objects)?;
            if !nix::unistd::geteuid().is_root() {
                bail!(
                    "local mode needs root: mesh viz enters the pods' network namespaces to \
                     reach their proxies (run it with sudo -E)"
                );
            }
            let target = Target::local(state, Arc::new(local::NetnsTransport));
            (target, runtime()?)
        }
        crate::target::Target::Kube => {
            let runtime = runtime()?;
            let implicit = args.target.implicit(cluster);
            let target = runtime.block_on(async {
                let client = match cluster.client().await {
                    Ok(client) => client,
                    Err(e) if implicit => {
                        return Err(e.context(
                            "no local mesh is running, and no cluster is configured: start \
                             the local mesh with `mesh demo`, or name a cluster with \
                             --kubeconfig or --context",
                        ))
                    }
                    Err(e) => return Err(e),
                };
                kube::target(client, &kube::Scope::of(&args)).await
            })?;
            (target, runtime)
        }
    };
    let namespace = target.namespace(args.namespace.as_deref()).to_string();
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = stdout.lock();
    let result = match args.command {
        VizCommand::Dashboard(d) if terminal => dashboard_live(&runtime, &target, &namespace, &d),
        VizCommand::Top(t) if terminal => top_live(&runtime, &target, &namespace, &t),
        command => runtime.block_on(run_command(&target, Some(&namespace), command, &mut out)),
    };
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Runs one command with its output to `out` (stdout not a terminal; the tests' entry point);
/// `namespace` is `-n` (`None`: the target's default).
pub async fn run_command(
    target: &Target,
    namespace: Option<&str>,
    command: VizCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let namespace = target.namespace(namespace);
    match command {
        VizCommand::Stat(a) => stat(target, namespace, &a, out).await,
        VizCommand::Routes(a) => routes(target, namespace, &a, out).await,
        VizCommand::Authz(a) => authz(target, namespace, &a, out).await,
        VizCommand::Edges(a) => edges(target, namespace, &a, out).await,
        VizCommand::Tap(a) => tap(target, namespace, &a, out).await,
        VizCommand::Top(a) => top_once(target, namespace, &a, out).await,
        VizCommand::Dashboard(a) => dashboard_once(target, namespace, &a, out).await,
        VizCommand::Install(_) | VizCommand::Uninstall => {
            bail!("mesh viz install and uninstall print manifests: they need no target")
        }
    }
}

// === stat, edges ===

async fn stat(
    target: &Target,
    namespace: &str,
    args: &StatArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let groups = args.resource.resolve(&target.state, namespace)?;
    let peers = |r: &Resource| -> anyhow::Result<Vec<PodInfo>> {
        Ok(r.resolve(&target.state, namespace)?
            .into_iter()
            .flat_map(|(_, pods)| pods)
            .collect())
    };
    let (measure, mut scraped): (Measure, Vec<PodInfo>) = match (&args.to, &args.from) {
        (Some(to), _) => (
            Measure::To(peers(to)?),
            groups.iter().flat_map(|g| g.1.clone()).collect(),
        ),
        (_, Some(from)) => {
            let from = peers(from)?;
            (Measure::From(from.clone()), from)
        }
        _ => (
            Measure::Inbound,
            groups.iter().flat_map(|g| g.1.clone()).collect(),
        ),
    };
    scraped.retain(|p| p.meshed);
    scraped.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    let window = samples(target, &scraped, args.window).await?;
    let rows = mesh_viz::stat::stat(
        &groups,
        window.before.as_ref(),
        &window.after,
        window.seconds,
        &measure,
    );
    let text = match args.output {
        Some(JsonOutput::Json) => format!("{}\n", serde_json::to_string_pretty(&rows)?),
        None => views::stat_text(&rows),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The meshed pods of `resource`, each once; an error naming the pods when none is meshed
/// (`what` says which metrics the command needed from their proxies).
fn meshed_pods(
    target: &Target,
    namespace: &str,
    resource: &Resource,
    what: &str,
) -> anyhow::Result<Vec<PodInfo>> {
    let groups = resource.resolve(&target.state, namespace)?;
    let mut pods: Vec<PodInfo> = groups.into_iter().flat_map(|(_, pods)| pods).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pods.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    let (meshed, unmeshed): (Vec<PodInfo>, Vec<PodInfo>) = pods.into_iter().partition(|p| p.meshed);
    if meshed.is_empty() {
        let names: Vec<&str> = unmeshed.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "{resource} has no meshed pod ({}): {what} come from the pods' proxies; mesh them \
             first (`mesh inject`, or enroll them in the local mesh)",
            if names.is_empty() {
                "no pods".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(meshed)
}

/// `in the last 5s`, or `since its proxies started` for a zero window.
fn when(window: f64, asked: Duration) -> String {
    if window > 0.0 {
        format!("in the last {}", humantime(asked))
    } else {
        "since its proxies started".to_string()
    }
}

/// The routes of the resource's meshed pods over the window; without route samples, a line
/// that says the workload sent no routed traffic (JSON: no routes).
async fn routes(
    target: &Target,
    namespace: &str,
    args: &RoutesArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let meshed = meshed_pods(target, namespace, &args.resource, "route metrics")?;
    let window = samples(target, &meshed, args.window).await?;
    let routes = mesh_viz::routes::routes(
        &meshed,
        window.before.as_ref(),
        &window.after,
        window.seconds,
    );
    let text = match args.output {
        RoutesOutput::Json => format!("{}\n", serde_json::to_string_pretty(&routes)?),
        RoutesOutput::Table if routes.routes.is_empty() => format!(
            "{} sent no routed traffic {}: its proxies counted no request on a route \
             (outbound_http_route_*); routes count the HTTP requests a workload sends to a \
             Service\n",
            args.resource,
            when(routes.window, args.window)
        ),
        RoutesOutput::Table => views::routes_text(&routes),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The inbound authorization decisions of the resource's meshed pods over the window; without
/// any, a line that says so (JSON: no servers).
async fn authz(
    target: &Target,
    namespace: &str,
    args: &AuthzArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let meshed = meshed_pods(target, namespace, &args.resource, "authorization metrics")?;
    let window = samples(target, &meshed, args.window).await?;
    let authz = mesh_viz::authz::authz(
        &meshed,
        window.before.as_ref(),
        &window.after,
        window.seconds,
    );
    let text = match args.output {
        RoutesOutput::Json => format!("{}\n", serde_json::to_string_pretty(&authz)?),
        RoutesOutput::Table if authz.servers.is_empty() => format!(
            "{} received no request or connection its inbound policy decided on {}: its \
             proxies counted no authorization (inbound_http_authz_*, inbound_tcp_authz_*)\n",
            args.resource,
            when(authz.window, args.window)
        ),
        RoutesOutput::Table => views::authz_text(&authz),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

async fn edges(
    target: &Target,
    namespace: &str,
    args: &EdgesArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let groups = args.resource.resolve(&target.state, namespace)?;
    let selected: Vec<Workload> = groups.iter().map(|g| g.0.clone()).collect();
    // Both ends of an edge matter: read every meshed pod of the target.
    let pods: Vec<PodInfo> = target
        .state
        .pods
        .iter()
        .filter(|p| p.meshed)
        .cloned()
        .collect();
    let scrapes = samples(target, &pods, Duration::ZERO).await?.after;
    let mut all = mesh_viz::edges::edges(&target.state.pods, &scrapes, args.resource.kind);
    all.retain(|e| selected.contains(&e.src) || selected.contains(&e.dst));
    let text = match args.output {
        Some(JsonOutput::Json) => format!("{}\n", serde_json::to_string_pretty(&all)?),
        None => views::edges_text(&all),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The samples of `pods` now and `window` ago from the target's source; pods without samples
/// are reported on stderr and left out, unless all are.
async fn samples(target: &Target, pods: &[PodInfo], window: Duration) -> anyhow::Result<Window> {
    let window = target
        .metrics
        .samples(pods, window)
        .await
        .map_err(|e| anyhow::anyhow!("{e}{}", target.hints.unreachable))?;
    for missing in &window.missing {
        eprintln!("mesh: {missing}");
    }
    Ok(window)
}

// === tap, top ===

/// Starts a tap of every meshed pod of the filter's resource; events arrive on the receiver,
/// a tap's failure on stderr (all failing: the first error).
async fn start_taps(
    target: &Target,
    namespace: &str,
    args: &TapFilterArgs,
) -> anyhow::Result<(
    mpsc::Receiver<PodEvent>,
    tokio::task::JoinSet<Result<(), client::Error>>,
)> {
    let groups = args.resource.resolve(&target.state, namespace)?;
    let pods: Vec<PodInfo> = groups.iter().flat_map(|g| g.1.clone()).collect();
    let meshed: Vec<PodInfo> = pods.iter().filter(|p| p.meshed).cloned().collect();
    if meshed.is_empty() {
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "{} has no meshed pod ({}): only meshed pods can be tapped; mesh them first \
             (`mesh inject`, or enroll them in the local mesh)",
            args.resource,
            if names.is_empty() {
                "no pods".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    let filter = filter(args, namespace)?;
    let (tx, rx) = mpsc::channel(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for pod in meshed {
        let (taps, filter, tx) = (target.taps.clone(), filter.clone(), tx.clone());
        tasks.spawn(async move { taps.tap(&pod, &filter, tx).await });
    }
    Ok((rx, tasks))
}

fn filter(args: &TapFilterArgs, namespace: &str) -> anyhow::Result<Filter> {
    let mut filter = Filter {
        method: args.method.clone(),
        authority: args.authority.clone(),
        path_prefix: args.path.clone(),
        max_rate: args.max_rps,
        ..Filter::default()
    };
    if let Some(to) = &args.to {
        let Some(name) = &to.name else {
            bail!("--to needs a named resource, e.g. --to deploy/web");
        };
        match to.kind {
            Kind::Namespace => {
                filter
                    .destination_labels
                    .insert("namespace".into(), name.clone());
            }
            kind => {
                filter
                    .destination_labels
                    .insert("namespace".into(), namespace.into());
                filter
                    .destination_labels
                    .insert(kind.label().into(), name.clone());
            }
        }
    }
    Ok(filter)
}

/// Ends when every tap ended, or at the deadline; the first tap error when all failed.
async fn tap(
    target: &Target,
    namespace: &str,
    args: &TapArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (rx, tasks) = start_taps(target, namespace, &args.filter).await?;
    let mut formatter = Formatter::new(args.output == Some(TapOutput::Wide));
    let (failures, seen) = follow(rx, tasks, args.duration, |e| {
        let line = match args.output {
            Some(TapOutput::Json) => serde_json::to_string(&e)?,
            _ => formatter.line(&e.pod, &e.event),
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    })
    .await?;
    tap_failures(target, failures, seen)
}

/// Hands every event of the taps to `on_event` until they all ended (then what they sent
/// before is drained too) or `duration` is over (never, without one); returns the taps'
/// errors and how many events came.
async fn follow(
    mut rx: mpsc::Receiver<PodEvent>,
    mut tasks: tokio::task::JoinSet<Result<(), client::Error>>,
    duration: Option<Duration>,
    mut on_event: impl FnMut(PodEvent) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<client::Error>, usize)> {
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut failures = Vec::new();
    let mut seen = 0usize;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(e) = event else {
                    // Every tap ended (their senders are gone): collect how.
                    finished(&mut tasks, &mut failures).await;
                    break;
                };
                seen += 1;
                on_event(e)?;
            }
            Some(done) = tasks.join_next() => {
                if let Ok(Err(e)) = done {
                    failures.push(e);
                }
                if tasks.is_empty() {
                    // Drain what the taps sent before they ended.
                    while let Ok(e) = rx.try_recv() {
                        on_event(e)?;
                    }
                    break;
                }
            }
            _ = &mut sleep => break,
        }
    }
    Ok((failures, seen))
}

/// The errors of taps that ended.
async fn finished(
    tasks: &mut tokio::task::JoinSet<Result<(), client::Error>>,
    failures: &mut Vec<client::Error>,
) {
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            failures.push(e);
        }
    }
}

fn tap_failures(target: &Target, failures: Vec<client::Error>, seen: usize) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let forbidden = failures
        .iter()
        .any(|e| matches!(e, client::Error::Forbidden { .. }));
    let hint = if forbidden {
        target.hints.forbidden
    } else {
        ""
    };
    if seen == 0 {
        bail!("{}{hint}", failures[0]);
    }
    for e in failures {
        eprintln!("mesh: {e}{hint}");
    }
    Ok(())
}

fn names(state: &State) -> HashMap<std::net::IpAddr, String> {
    state
        .pods
        .iter()
        .filter_map(|p| p.ip.map(|ip| (ip, p.name.clone())))
        .collect()
}

async fn top_once(
    target: &Target,
    namespace: &str,
    args: &TopArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (rx, tasks) = start_taps(target, namespace, &args.filter).await?;
    let mut top = Top::new(names(&target.state));
    let (failures, seen) = follow(rx, tasks, Some(args.duration), |e| {
        top.record(&e.pod, &e.event);
        Ok(())
    })
    .await?;
    tap_failures(target, failures, seen)?;
    out.write_all(views::top_text(&top.rows()).as_bytes())?;
    Ok(())
}

fn top_live(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    namespace: &str,
    args: &TopArgs,
) -> anyhow::Result<()> {
    let (mut rx, tasks) = runtime.block_on(start_taps(target, namespace, &args.filter))?;
    let title = format!(" mesh viz top {} -n {namespace} ", args.filter.resource);
    let mut top = Top::new(names(&target.state));
    mesh_viz::live::run(
        &mut top,
        |top| {
            while let Ok(e) = rx.try_recv() {
                top.record(&e.pod, &e.event);
            }
        },
        |frame, top| {
            views::render_top(
                frame,
                frame.area(),
                &title,
                &top.rows(),
                top.sort,
                top.reversed,
            )
        },
        |top, key| {
            use ratatui::crossterm::event::KeyCode;
            match key {
                KeyCode::Left => top.sort_prev(),
                KeyCode::Right => top.sort_next(),
                KeyCode::Char('r') => top.reversed = !top.reversed,
                _ => {}
            }
            mesh_viz::live::Flow::Continue
        },
    )?;
    drop(tasks);
    Ok(())
}

// === dashboard ===

/// The dashboard's data: the workloads of the namespace, their stat history, edges and top.
struct DashboardState {
    groups: Vec<(Workload, Vec<PodInfo>)>,
    pods: Vec<PodInfo>,
    last: Option<(Instant, Scrapes)>,
    model: views::Dashboard,
    edges: Vec<mesh_viz::edges::Edge>,
    tops: HashMap<Workload, Top>,
    names: HashMap<std::net::IpAddr, String>,
}

impl DashboardState {
    fn new(
        target: &Target,
        namespace: &str,
        args: &DashboardArgs,
    ) -> anyhow::Result<DashboardState> {
        let groups = Resource {
            kind: Kind::Deployment,
            name: None,
        }
        .resolve(&target.state, namespace)
        .or_else(|_| {
            Resource {
                kind: Kind::Pod,
                name: None,
            }
            .resolve(&target.state, namespace)
        })?;
        let selected = match &args.select {
            Some(r) => {
                let wanted = r.resolve(&target.state, namespace)?;
                groups.iter().position(|g| wanted.iter().any(|w| w.0 == g.0)).with_context(|| {
                    format!("{r} is not a Deployment of namespace {namespace}: the dashboard lists Deployments")
                })?
            }
            None => 0,
        };
        Ok(DashboardState {
            pods: target
                .state
                .pods
                .iter()
                .filter(|p| p.meshed)
                .cloned()
                .collect(),
            model: views::Dashboard {
                title: format!("mesh viz · ns/{namespace}"),
                selected,
                ..Default::default()
            },
            groups,
            last: None,
            edges: Vec::new(),
            tops: HashMap::new(),
            names: names(&target.state),
        })
    }

    /// Folds in a new round of scrapes.
    fn scraped(&mut self, at: Instant, scrapes: Scrapes, status: String) {
        let (before, window) = match &self.last {
            Some((then, s)) => (Some(s), at.duration_since(*then).as_secs_f64()),
            None => (None, 0.0),
        };
        let rows = mesh_viz::stat::stat(&self.groups, before, &scrapes, window, &Measure::Inbound);
        let mut views: Vec<views::WorkloadView> = Vec::new();
        for row in rows {
            let mut view = self
                .model
                .workloads
                .iter()
                .find(|w| w.stat.workload == row.workload)
                .cloned()
                .unwrap_or(views::WorkloadView {
                    stat: row.clone(),
                    rps: vec![],
                    p95: vec![],
                });
            if before.is_some() {
                view.rps.push(row.rps.unwrap_or(0.0).round() as u64);
                view.p95
                    .push(row.latency_ms_p95.unwrap_or(0.0).round() as u64);
                let keep = view.rps.len().saturating_sub(120);
                view.rps.drain(..keep);
                let keep = view.p95.len().saturating_sub(120);
                view.p95.drain(..keep);
            }
            view.stat = row;
            views.push(view);
        }
        self.model.workloads = views;
        self.edges = mesh_viz::edges::edges(&self.pods, &scrapes, Kind::Deployment);
        self.last = Some((at, scrapes));
        self.model.status = status;
        self.select(self.model.selected);
    }

    fn event(&mut self, e: &PodEvent) {
        let Some(pod) = self
            .pods
            .iter()
            .find(|p| p.name == e.pod && p.namespace == e.namespace)
        else {
            return;
        };
        for (w, members) in &self.groups {
            if members.iter().any(|m| m.name == pod.name) {
                let names = self.names.clone();
                self.tops
                    .entry(w.clone())
                    .or_insert_with(|| Top::new(names))
                    .record(&e.pod, &e.event);
            }
        }
    }

    fn select(&mut self, i: usize) {
        let n = self.model.workloads.len();
        self.model.selected = if n == 0 { 0 } else { i.min(n - 1) };
        let Some(w) = self
            .model
            .workloads
            .get(self.model.selected)
            .map(|v| v.stat.workload.clone())
        else {
            return;
        };
        self.model.edges = self
            .edges
            .iter()
            .filter(|e| e.src == w || e.dst == w)
            .cloned()
            .collect();
        self.model.top = self.tops.get(&w).map(Top::rows).unwrap_or_default();
    }
}

/// Scrapes the namespace's meshed pods every `refresh`, and taps them all; both go to channels.
fn dashboard_feeds(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    pods: Vec<PodInfo>,
    refresh: Duration,
) -> (
    mpsc::Receiver<(Instant, Scrapes, String)>,
    mpsc::Receiver<PodEvent>,
) {
    let (scrape_tx, scrape_rx) = mpsc::channel(4);
    let (event_tx, event_rx) = mpsc::channel(4096);
    let t = target.clone();
    let scrape_pods = pods.clone();
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(refresh);
        loop {
            ticks.tick().await;
            let (scrapes, status) = match samples(&t, &scrape_pods, Duration::ZERO).await {
                Ok(w) => {
                    let s = w.after;
                    let n = s.len();
                    (s, format!(" {n} proxies read every {refresh:?} "))
                }
                Err(e) => (Scrapes::new(), format!(" {e:#} ")),
            };
            if scrape_tx
                .send((Instant::now(), scrapes, status))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    for pod in pods {
        let (taps, tx) = (target.taps.clone(), event_tx.clone());
        runtime.spawn(async move {
            let _ = taps.tap(&pod, &Filter::default(), tx).await;
        });
    }
    (scrape_rx, event_rx)
}

fn dashboard_live(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    namespace: &str,
    args: &DashboardArgs,
) -> anyhow::Result<()> {
    let mut state = DashboardState::new(target, namespace, args)?;
    let (mut scrapes, mut events) =
        dashboard_feeds(runtime, target, state.pods.clone(), args.refresh);
    mesh_viz::live::run(
        &mut state,
        |s| {
            while let Ok((at, scraped, status)) = scrapes.try_recv() {
                s.scraped(at, scraped, status);
            }
            let mut any = false;
            while let Ok(e) = events.try_recv() {
                s.event(&e);
                any = true;
            }
            if any {
                s.select(s.model.selected);
            }
        },
        |frame, s| views::render_dashboard(frame, &s.model),
        |s, key| {
            use ratatui::crossterm::event::KeyCode;
            match key {
                KeyCode::Up => s.select(s.model.selected.saturating_sub(1)),
                KeyCode::Down => s.select(s.model.selected + 1),
                _ => {}
            }
            mesh_viz::live::Flow::Continue
        },
    )?;
    Ok(())
}

/// The dashboard without a terminal: watch for `duration`, then print one 120×30 screen.
async fn dashboard_once(
    target: &Target,
    namespace: &str,
    args: &DashboardArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut state = DashboardState::new(target, namespace, args)?;
    let pods = state.pods.clone();
    let first = samples(target, &pods, Duration::ZERO).await?.after;
    state.scraped(Instant::now(), first, String::new());
    let (tx, mut rx) = mpsc::channel(4096);
    let mut tasks = tokio::task::JoinSet::new();
    for pod in pods.clone() {
        let (taps, tx) = (target.taps.clone(), tx.clone());
        tasks.spawn(async move { taps.tap(&pod, &Filter::default(), tx).await });
    }
    drop(tx);
    let _ = tokio::time::timeout(args.duration, async {
        while let Some(e) = rx.recv().await {
            state.event(&e);
        }
    })
    .await;
    tasks.abort_all();
    let second = samples(target, &pods, Duration::ZERO).await?.after;
    state.scraped(
        Instant::now(),
        second,
        format!(" {} proxies, watched {:?} ", pods.len(), args.duration),
    );
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 30))?;
    let frame = terminal.draw(|f| views::render_dashboard(f, &state.model))?;
    out.write_all(views::buffer_text(frame.buffer).as_bytes())?;
    Ok(())
}

// === helpers ===

/// A flag's duration as it was likely written: `5s`, `500ms`, `2m`.
fn humantime(d: Duration) -> String {
    match (d.as_millis(), d.subsec_millis()) {
        (ms, 0) if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        (ms, 0) => format!("{}s", ms / 1000),
        (ms, _) => format!("{ms}ms"),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn to_filters_by_destination_labels() {
        let args = TapFilterArgs {
            resource: "deploy/client".parse().unwrap(),
            to: Some("deploy/web".parse().unwrap()),
            method: Some("GET".into()),
            path: None,
            authority: None,
            max_rps: None,
        };
        assert_eq!(
            filter(&args, "demo").unwrap().to_query(),
            "method=GET&dst.deployment=web&dst.namespace=demo"
        );
    }
}
