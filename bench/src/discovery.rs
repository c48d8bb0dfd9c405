//! Discovery benchmarks: how fast an endpoint change reaches 1,000 watchers of the real destination controller, and how much memory the controller needs for 10,000 endpoints.
//!
//! Both run `mesh-controller destination --source dir:…` as a child process on this host's
//! loopback (no pods, no root), so its memory and CPU are its own; the watchers are
//! [`mesh_api::destination::watch`] streams in this process, one HTTP/2 connection each.
//!
//! ```text
//! mesh-bench ──1,000 × GET /v1/destination/watch──▶ mesh-controller ◀── inotify ── folder/
//!     └──────────── writes a changed EndpointSlice (atomic rename) ─────────────────▶ folder/
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use mesh_api::destination::{self, Update};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::controller::{self, Controller};
use crate::units::{mb, ms, thousands};

/// The service whose endpoints change in the propagation benchmark.
const SERVICE: &str = "web-svc";
/// The namespace of every benchmark service.
const NAMESPACE: &str = "demo";
/// The endpoints' port.
const ENDPOINT_PORT: u16 = 8080;
/// The EndpointSlice API's usual limit of endpoints per slice.
const SLICE_SIZE: usize = 100;
/// How long the controller may take to be ready, and the watchers to get their first state.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many watches are opened at once. A thousand at once overflow the controller's accept
/// queue (1,024) when it is busy, and some connections are reset; proxies do not all connect
/// in the same millisecond either.
const CONNECT_BATCH: usize = 100;
/// How long a change may take to reach every watcher before the benchmark gives up on it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Watchers of the one service in the propagation benchmark.
    pub watchers: usize,
    /// Endpoint changes written, one after the other.
    pub changes: usize,
    /// The time from one change to the next (longer when a change takes longer to arrive).
    pub spacing: Duration,
    /// Services of the memory benchmark.
    pub services: usize,
    /// Endpoints per service of the memory benchmark.
    pub endpoints_per_service: usize,
    /// Watchers of the memory benchmark, spread evenly over its services.
    pub memory_watchers: usize,
}

/// Everything the discovery benchmarks measured.
#[derive(Debug, Serialize)]
pub struct Results {
    pub propagation: Propagation,
    pub memory: Vec<MemoryPoint>,
    /// The time from starting the controller over the large folder to `/ready`, in seconds.
    pub large_ready_seconds: f64,
    /// The time from `/ready` to the first watch of one large service returning all of its
    /// endpoints, in seconds.
    pub large_first_watch_seconds: f64,
    /// The time to open the memory benchmark's watchers and get every first state, in seconds.
    pub large_watchers_seconds: f64,
}

/// The propagation benchmark's results.
#[derive(Debug, Serialize)]
pub struct Propagation {
    pub watchers: usize,
    pub spacing_ms: f64,
    /// The time to open every watch and receive every first state, in seconds.
    pub connect_seconds: f64,
    /// The controller's CPU time (user + system) from the first change to the last one's
    /// arrival everywhere, in seconds.
    pub controller_cpu_seconds: f64,
    pub changes: Vec<Change>,
}

/// One endpoint added to the watched service.
#[derive(Debug, Serialize)]
pub struct Change {
    /// The endpoint added.
    pub addr: SocketAddr,
    /// How many watchers saw it (within [`CHANGE_TIMEOUT`]).
    pub seen_by: usize,
    /// For each watcher that saw it, the time from the file's rename to that watcher's
    /// receipt, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

/// The controller's memory in one state.
#[derive(Debug, Serialize)]
pub struct MemoryPoint {
    /// What the controller held and served.
    pub state: String,
    pub services: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub watchers: usize,
    /// `VmRSS`, in bytes.
    pub rss_bytes: u64,
    /// `VmHWM` (the peak RSS since the start), in bytes.
    pub hwm_bytes: u64,
    /// The controller's CPU time over [`IDLE`] right after, with nothing changing, as a share
    /// of one core.
    pub idle_cpu: f64,
}

/// How long the controller is watched doing nothing, for its idle CPU.
const IDLE: Duration = Duration::from_secs(1);

/// The controller's CPU over [`IDLE`], as a share of one core.
async fn idle_cpu(ctl: &Controller) -> anyhow::Result<f64> {
    let clock_ticks = crate::resources::clock_ticks()?;
    let before = ctl.cpu_ticks()?;
    let started = Instant::now();
    tokio::time::sleep(IDLE).await;
    let ticks = ctl.cpu_ticks()?.saturating_sub(before);
    Ok(ticks as f64 / clock_ticks as f64 / started.elapsed().as_secs_f64())
}

/// Runs both discovery benchmarks; `work` is an empty folder for the YAML and the logs.
pub fn run(plan: &Plan, work: &Path) -> anyhow::Result<Results> {
    let program = controller::binary()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the watchers' runtime")?;
    let mut memory = Vec::new();
    let propagation =
        propagation(&rt, &program, plan, work, &mut memory).context("update propagation")?;
    let large = large(&rt, &program, plan, work, &mut memory).context("10,000 endpoints")?;
    Ok(Results {
        propagation,
        memory,
        large_ready_seconds: large.0,
        large_first_watch_seconds: large.1,
        large_watchers_seconds: large.2,
    })
}

impl Results {
    /// The report's section (after its `##` heading and marker, which the caller writes).
    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let p = &self.propagation;
        let all: Vec<u64> = {
            let mut all: Vec<u64> = p
                .changes
                .iter()
                .flat_map(|c| c.latencies_us.iter().copied())
                .collect();
            all.sort_unstable();
            all
        };
        let everyone = p.changes.iter().all(|c| c.seen_by == p.watchers);
        let seen: Vec<usize> = p.changes.iter().map(|c| c.seen_by).collect();
        writeln!(out, "### Update propagation\n")?;
        writeln!(
            out,
            "`mesh-controller destination --source dir:…` runs as a child process on this host's \
             loopback, with one Service (`{SERVICE}.{NAMESPACE}`) of 3 endpoints in its folder. \
             {} watchers (`mesh_api::destination::watch`, one HTTP/2 connection each, in the \
             benchmark's process) watch `{SERVICE}.{NAMESPACE}.svc.cluster.local:80` and get \
             their first state (opened 100 at a time). Then, {} times, {} ms apart at least, the benchmark writes the \
             EndpointSlice file again with one more endpoint (write to a hidden file, then \
             rename over the old one) and measures, for every watcher, the time from the rename \
             to the moment that watcher receives the new address. **The number includes the \
             folder source's change detection**: inotify, the source's 50 ms debounce and the \
             rescan of the folder, then the index update, the fan-out and the HTTP/2 frames, \
             and the watcher task being scheduled in the benchmark's process (1,000 streams \
             decoded on 2 cores shared with the controller). With the Kubernetes source the \
             folder's part does not apply, but the API server's watch latency does.\n",
            thousands(p.watchers as f64),
            p.changes.len(),
            p.spacing_ms,
        )?;
        writeln!(
            out,
            "| watchers | changes | (watcher, change) pairs | seen by every watcher | p50 ms | \
             p99 ms | max ms | controller CPU ms / change |"
        )?;
        writeln!(out, "|---:|---:|---:|---|---:|---:|---:|---:|")?;
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            thousands(p.watchers as f64),
            p.changes.len(),
            thousands(all.len() as f64),
            if everyone {
                "yes, every change".to_string()
            } else {
                format!("**no**: seen by {seen:?}")
            },
            ms(quantile_us(&all, 0.5) / 1e3),
            ms(quantile_us(&all, 0.99) / 1e3),
            ms(all.last().copied().unwrap_or(0) as f64 / 1e3),
            if p.changes.is_empty() {
                0.0
            } else {
                p.controller_cpu_seconds * 1e3 / p.changes.len() as f64
            },
        )?;
        let firsts: Vec<String> = p
            .changes
            .iter()
            .map(|c| ms(c.latencies_us.first().copied().unwrap_or(0) as f64 / 1e3))
            .collect();
        let lasts: Vec<String> = p
            .changes
            .iter()
            .map(|c| ms(c.latencies_us.last().copied().unwrap_or(0) as f64 / 1e3))
            .collect();
        writeln!(
            out,
            "Per change, the first watcher to see it (ms): {}.\n\nPer change, the last watcher \
             to see it (ms): {}.\n\nOpening the {} watches and receiving every first state took \
             {:.2} s.\n",
            firsts.join(", "),
            lasts.join(", "),
            thousands(p.watchers as f64),
            p.connect_seconds,
        )?;

        writeln!(out, "### Controller memory\n")?;
        writeln!(
            out,
            "The controller's `VmRSS` and `VmHWM` (peak RSS) from `/proc/<pid>/status`, 1 MB = \
             10⁶ bytes. The first rows are the propagation benchmark's controller; the large \
             folder is a second controller started over services of {} endpoints each (one \
             EndpointSlice per {SLICE_SIZE} endpoints), with a Pod per \
             endpoint (an app container and a `mesh-proxy` container, an owning ReplicaSet that \
             is not in the folder), measured once `/ready` answers 200 and a watch of one \
             service returned all of its endpoints (that watch stays open), then again with \
             the watchers spread evenly over the services. The large folder took {:.2} s from \
             the start to `/ready`, the first watch {:.3} s more, and the watchers {:.2} s to \
             get every first state.\n",
            self.memory
                .iter()
                .find(|m| m.services > 1)
                .map_or(0, |m| m.endpoints / m.services.max(1)),
            self.large_ready_seconds,
            self.large_first_watch_seconds,
            self.large_watchers_seconds,
        )?;
        writeln!(
            out,
            "| state | services | endpoints | pods | watchers | VmRSS MB | VmHWM MB | idle CPU \
             (% of a core) |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for m in &self.memory {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                m.state,
                thousands(m.services as f64),
                thousands(m.endpoints as f64),
                thousands(m.pods as f64),
                thousands(m.watchers as f64),
                mb(m.rss_bytes),
                mb(m.hwm_bytes),
                m.idle_cpu * 100.0,
            )?;
        }
        writeln!(out)?;
        let small = self.memory.iter().find(|m| m.watchers == 0);
        let small_watched = self
            .memory
            .iter()
            .find(|m| m.services == 1 && m.watchers > 0);
        let large = self
            .memory
            .iter()
            .find(|m| m.services > 1 && m.watchers <= 1);
        let large_watched = self.memory.iter().rfind(|m| m.services > 1);
        if let (Some(small), Some(large)) = (small, large) {
            let per_endpoint = (large.rss_bytes as f64 - small.rss_bytes as f64)
                / (large.endpoints - small.endpoints).max(1) as f64;
            write!(
                out,
                "From the small folder to the large one, RSS grows by about {:.1} kB per \
                 endpoint (its Pod included)",
                per_endpoint / 1e3
            )?;
            if let (Some(sw), Some(lw)) = (small_watched, large_watched) {
                let per_watcher_small =
                    (sw.rss_bytes as f64 - small.rss_bytes as f64) / sw.watchers.max(1) as f64;
                let per_watcher_large = (lw.rss_bytes as f64 - large.rss_bytes as f64)
                    / (lw.watchers.saturating_sub(large.watchers)).max(1) as f64;
                write!(
                    out,
                    "; a watcher costs about {:.1} kB (of one service of 3 endpoints) to {:.1} \
                     kB (of a service of {} endpoints: its first state is one {}-endpoint \
                     message)",
                    per_watcher_small / 1e3,
                    per_watcher_large / 1e3,
                    lw.endpoints / lw.services.max(1),
                    lw.endpoints / lw.services.max(1),
                )?;
            }
            writeln!(out, ".\n")?;
        }
        if let Some(busy) = self
            .memory
            .iter()
            .filter(|m| m.idle_cpu > 0.1)
            .max_by(|a, b| a.idle_cpu.total_cmp(&b.idle_cpu))
        {
            writeln!(
                out,
                "**With nothing changing, the controller used {:.0} % of a core** ({}): it keeps \
                 working without changes, which also spreads the propagation times and may \
                 inflate the RSS (allocations churn).\n",
                busy.idle_cpu * 100.0,
                busy.state
            )?;
        }
        Ok(())
    }
}

// === helpers ===

/// The propagation benchmark; pushes the memory of its controller (idle, then watched).
fn propagation(
    rt: &tokio::runtime::Runtime,
    program: &Path,
    plan: &Plan,
    work: &Path,
    memory: &mut Vec<MemoryPoint>,
) -> anyhow::Result<Propagation> {
    let folder = work.join("propagation");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let base: Vec<SocketAddr> = (1..=3)
        .map(|i| SocketAddr::from((Ipv4Addr::new(10, 244, 1, i), ENDPOINT_PORT)))
        .collect();
    write_atomically(&folder.join("service.yaml"), &service_yaml(SERVICE, 0))?;
    write_atomically(&folder.join("slice.yaml"), &slice_yaml(SERVICE, 0, &base))?;

    let mut ctl = Controller::start(program, &folder, &work.join("propagation-controller.log"))?;
    ctl.wait_ready(READY_TIMEOUT, |addr| {
        controller::http_status(addr, "/ready")
    })?;
    let (hwm, rss) = ctl.memory()?;
    memory.push(MemoryPoint {
        state: "1 service, no watchers".to_string(),
        services: 1,
        endpoints: base.len(),
        pods: 0,
        watchers: 0,
        rss_bytes: rss,
        hwm_bytes: hwm,
        idle_cpu: rt.block_on(idle_cpu(&ctl))?,
    });

    let authority = format!("{SERVICE}.{NAMESPACE}.svc.cluster.local:80");
    let authorities = vec![authority; plan.watchers];
    rt.block_on(async {
        eprintln!("mesh-bench: opening {} watches", plan.watchers);
        let started = Instant::now();
        let mut watchers = Watchers::open(ctl.addr, &authorities, base.len()).await?;
        let connect_seconds = started.elapsed().as_secs_f64();
        let (hwm, rss) = ctl.memory()?;
        memory.push(MemoryPoint {
            state: format!("1 service, {} watchers", thousands(plan.watchers as f64)),
            services: 1,
            endpoints: base.len(),
            pods: 0,
            watchers: plan.watchers,
            rss_bytes: rss,
            hwm_bytes: hwm,
            idle_cpu: idle_cpu(&ctl).await?,
        });

        let cpu_before = ctl.cpu_ticks()?;
        let mut endpoints = base.clone();
        let mut changes = Vec::with_capacity(plan.changes);
        for i in 0..plan.changes {
            if crate::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                bail!("interrupted");
            }
            let last = u8::try_from(i % 250 + 1).unwrap_or(1);
            let third = u8::try_from(2 + i / 250).unwrap_or(255);
            let addr = SocketAddr::from((Ipv4Addr::new(10, 244, third, last), ENDPOINT_PORT));
            endpoints.push(addr);
            let path = folder.join("slice.yaml");
            let tmp = folder.join(".slice.yaml.tmp");
            std::fs::write(&tmp, slice_yaml(SERVICE, 0, &endpoints))
                .with_context(|| format!("writing {}", tmp.display()))?;
            let written = Instant::now();
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            let mut latencies_us = watchers
                .wait_for(addr, plan.watchers, written + CHANGE_TIMEOUT)
                .await?
                .into_iter()
                .map(|at| at.saturating_duration_since(written).as_micros() as u64)
                .collect::<Vec<_>>();
            latencies_us.sort_unstable();
            let change = Change {
                addr,
                seen_by: latencies_us.len(),
                latencies_us,
            };
            eprintln!(
                "mesh-bench: change {:>2}: seen by {} watchers, first {} ms, last {} ms",
                i + 1,
                change.seen_by,
                ms(change.latencies_us.first().copied().unwrap_or(0) as f64 / 1e3),
                ms(change.latencies_us.last().copied().unwrap_or(0) as f64 / 1e3),
            );
            changes.push(change);
            tokio::time::sleep_until((written + plan.spacing).into()).await;
        }
        let ticks = ctl.cpu_ticks()?.saturating_sub(cpu_before);
        let clock_ticks = crate::resources::clock_ticks()?;
        watchers.check_alive()?;
        Ok(Propagation {
            watchers: plan.watchers,
            spacing_ms: plan.spacing.as_secs_f64() * 1e3,
            connect_seconds,
            controller_cpu_seconds: ticks as f64 / clock_ticks as f64,
            changes,
        })
    })
}

/// The memory benchmark over the large folder; returns the seconds to `/ready`, to the first
/// watch's endpoints, and to every watcher's first state.
fn large(
    rt: &tokio::runtime::Runtime,
    program: &Path,
    plan: &Plan,
    work: &Path,
    memory: &mut Vec<MemoryPoint>,
) -> anyhow::Result<(f64, f64, f64)> {
    let folder = work.join("large");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let services = plan.services;
    let per = plan.endpoints_per_service;
    eprintln!(
        "mesh-bench: writing {services} services of {per} endpoints and their pods to {}",
        folder.display()
    );
    for s in 0..services {
        let name = large_service(s);
        let path = folder.join(format!("{name}.yaml"));
        write_atomically(&path, &large_yaml(s, per)?)?;
    }
    let mut ctl = Controller::start(program, &folder, &work.join("large-controller.log"))?;
    ctl.wait_ready(READY_TIMEOUT, |addr| {
        controller::http_status(addr, "/ready")
    })?;
    let ready = ctl.started.elapsed().as_secs_f64();
    let endpoints = services * per;
    rt.block_on(async {
        let started = Instant::now();
        let first = vec![format!(
            "{}.{NAMESPACE}.svc.cluster.local:80",
            large_service(0)
        )];
        let one = Watchers::open(ctl.addr, &first, per).await?;
        let first_watch = started.elapsed().as_secs_f64();
        let (hwm, rss) = ctl.memory()?;
        memory.push(MemoryPoint {
            state: format!("{} endpoints, 1 watcher", thousands(endpoints as f64)),
            services,
            endpoints,
            pods: endpoints,
            watchers: 1,
            rss_bytes: rss,
            hwm_bytes: hwm,
            idle_cpu: idle_cpu(&ctl).await?,
        });
        let authorities: Vec<String> = (0..plan.memory_watchers)
            .map(|i| {
                format!(
                    "{}.{NAMESPACE}.svc.cluster.local:80",
                    large_service(i % services.max(1))
                )
            })
            .collect();
        eprintln!(
            "mesh-bench: opening {} watches over {services} services",
            plan.memory_watchers
        );
        let started = Instant::now();
        let many = Watchers::open(ctl.addr, &authorities, per).await?;
        let watchers = started.elapsed().as_secs_f64();
        let (hwm, rss) = ctl.memory()?;
        memory.push(MemoryPoint {
            state: format!(
                "{} endpoints, {} watchers",
                thousands(endpoints as f64),
                thousands((plan.memory_watchers + 1) as f64)
            ),
            services,
            endpoints,
            pods: endpoints,
            watchers: plan.memory_watchers + 1,
            rss_bytes: rss,
            hwm_bytes: hwm,
            idle_cpu: idle_cpu(&ctl).await?,
        });
        drop((one, many));
        Ok((ready, first_watch, watchers))
    })
}

/// What a watcher task reports.
enum Event {
    /// Its first state arrived, with this many endpoints.
    First { endpoints: usize },
    /// It received `addr` for the first time.
    Seen {
        watcher: usize,
        addr: SocketAddr,
        at: Instant,
    },
    /// Its stream failed or ended.
    Failed { watcher: usize, error: String },
}

/// Watch streams, one task each; dropping them aborts the tasks (and closes the connections).
struct Watchers {
    tasks: Vec<JoinHandle<()>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Events that arrived while waiting for another address.
    early: HashMap<SocketAddr, Vec<(usize, Instant)>>,
}

impl Watchers {
    /// Opens one watch per authority, [`CONNECT_BATCH`] at a time, and waits until every one
    /// has received a first state of at least `expected` endpoints.
    async fn open(
        addr: SocketAddr,
        authorities: &[String],
        expected: usize,
    ) -> anyhow::Result<Watchers> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watchers = Watchers {
            tasks: Vec::with_capacity(authorities.len()),
            events,
            early: HashMap::new(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        for batch in authorities.chunks(CONNECT_BATCH) {
            for authority in batch {
                let watcher = watchers.tasks.len();
                let task = tokio::spawn(watch(watcher, addr, authority.clone(), tx.clone()));
                watchers.tasks.push(task);
            }
            let mut ready = 0;
            while ready < batch.len() {
                match watchers.next(deadline).await? {
                    Some(Event::First { endpoints }) if endpoints >= expected => ready += 1,
                    Some(Event::First { endpoints }) => {
                        bail!(
                            "a watcher's first state has {endpoints} endpoints, expected \
                             {expected}"
                        )
                    }
                    Some(Event::Seen { .. }) => {}
                    Some(Event::Failed { watcher, error }) => bail!("watcher {watcher}: {error}"),
                    None => bail!(
                        "only {} of {} watchers got their first state within {READY_TIMEOUT:?}",
                        watchers.tasks.len() - batch.len() + ready,
                        authorities.len()
                    ),
                }
            }
        }
        Ok(watchers)
    }

    /// Waits until `count` watchers have seen `addr`, or `deadline`; returns when each saw it.
    async fn wait_for(
        &mut self,
        addr: SocketAddr,
        count: usize,
        deadline: Instant,
    ) -> anyhow::Result<Vec<Instant>> {
        let mut seen: HashMap<usize, Instant> = self
            .early
            .remove(&addr)
            .unwrap_or_default()
            .into_iter()
            .collect();
        while seen.len() < count {
            match self.next(deadline).await? {
                Some(Event::Seen {
                    watcher,
                    addr: a,
                    at,
                }) if a == addr => {
                    seen.entry(watcher).or_insert(at);
                }
                Some(Event::Seen {
                    watcher,
                    addr: a,
                    at,
                }) => self.early.entry(a).or_default().push((watcher, at)),
                Some(Event::First { .. }) => {}
                Some(Event::Failed { watcher, error }) => bail!("watcher {watcher}: {error}"),
                None => break,
            }
        }
        Ok(seen.into_values().collect())
    }

    /// Fails if a watcher failed meanwhile.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        while let Ok(event) = self.events.try_recv() {
            if let Event::Failed { watcher, error } = event {
                bail!("watcher {watcher}: {error}");
            }
        }
        Ok(())
    }

    /// The next event, or `None` at the deadline.
    async fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<Event>> {
        match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
            Ok(Some(event)) => Ok(Some(event)),
            // Invariant: `self.tasks` hold senders until they end, and they end only by
            // reporting `Failed` first; an empty channel here means every task is gone.
            Ok(None) => bail!("every watcher stopped"),
            Err(_elapsed) => Ok(None),
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One watcher: follows the stream, reports its first state and every address it sees for
/// the first time.
async fn watch(
    watcher: usize,
    addr: SocketAddr,
    authority: String,
    events: mpsc::UnboundedSender<Event>,
) {
    let updates = destination::watch(addr, &authority);
    futures_util::pin_mut!(updates);
    let mut known: HashSet<SocketAddr> = HashSet::new();
    let mut first = true;
    // A send fails only when the benchmark stopped listening: then this task stops too.
    while let Some(update) = updates.next().await {
        let at = Instant::now();
        match update {
            Ok(Update::Add(add)) => {
                for endpoint in &add.endpoints {
                    if known.insert(endpoint.addr)
                        && !first
                        && events
                            .send(Event::Seen {
                                watcher,
                                addr: endpoint.addr,
                                at,
                            })
                            .is_err()
                    {
                        return;
                    }
                }
            }
            Ok(Update::Remove(remove)) => {
                for a in &remove.addrs {
                    known.remove(a);
                }
            }
            Ok(Update::NoEndpoints(_)) => known.clear(),
            Err(err) => {
                let _ = events.send(Event::Failed {
                    watcher,
                    error: format!("{:#}", anyhow::Error::new(err)),
                });
                return;
            }
        }
        if first {
            first = false;
            if events
                .send(Event::First {
                    endpoints: known.len(),
                })
                .is_err()
            {
                return;
            }
        }
    }
    let _ = events.send(Event::Failed {
        watcher,
        error: "the controller ended the watch".to_string(),
    });
}

/// Writes `text` to a hidden file next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// A ClusterIP Service `name` in [`NAMESPACE`], port 80 to [`ENDPOINT_PORT`].
fn service_yaml(name: &str, index: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec: {{clusterIP: 10.96.{}.{}, ports: [{{name: http, port: 80, targetPort: \
         {ENDPOINT_PORT}}}]}}\n",
        1 + index / 250,
        1 + index % 250,
    )
}

/// EndpointSlice number `slice` of service `name` with these ready endpoints.
fn slice_yaml(service: &str, slice: usize, endpoints: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-{slice}, namespace: {NAMESPACE}, labels: \
         {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {ENDPOINT_PORT}}}]\nendpoints:\n"
    );
    for addr in endpoints {
        let _ = writeln!(
            yaml,
            "- {{addresses: [\"{}\"], conditions: {{ready: true}}}}",
            addr.ip()
        );
    }
    yaml
}

fn large_service(index: usize) -> String {
    format!("svc-{index:03}")
}

/// Service `index` of the large folder with `per` endpoints, their slices, and a meshed Pod
/// per endpoint owned by the service's ReplicaSet.
fn large_yaml(index: usize, per: usize) -> anyhow::Result<String> {
    let name = large_service(index);
    let replicaset = format!("{name}-6d4b9c8f7");
    let mut yaml = service_yaml(&name, index);
    let mut ips = Vec::with_capacity(per);
    for e in 0..per {
        // 10.100.0.0/14 holds 262,144 addresses: plenty for a benchmark.
        let n = index * per + e;
        let [_, b, c, d] = u32::try_from(n)
            .ok()
            .filter(|n| *n < 1 << 18)
            .map(|n| n.to_be_bytes())
            .context("too many endpoints for 10.100.0.0/14")?;
        ips.push(Ipv4Addr::new(10, 100 + b, c, d));
    }
    for (slice, chunk) in ips.chunks(SLICE_SIZE).enumerate() {
        let _ = write!(
            yaml,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-{slice}, namespace: {NAMESPACE}, labels: \
             {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {ENDPOINT_PORT}}}]\nendpoints:\n"
        );
        for (i, ip) in chunk.iter().enumerate() {
            let _ = writeln!(
                yaml,
                "- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, \
                 name: {replicaset}-{:05}, namespace: {NAMESPACE}}}}}",
                slice * SLICE_SIZE + i
            );
        }
    }
    for (e, ip) in ips.iter().enumerate() {
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {replicaset}-{e:05}\n  \
             namespace: {NAMESPACE}\n  labels: {{app: {name}, pod-template-hash: 6d4b9c8f7}}\n  \
             ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {replicaset}, \
             uid: 00000000-0000-0000-0000-{index:012}, controller: true}}]\n\
             spec:\n  serviceAccountName: {name}\n  containers:\n  - {{name: app, image: \
             example/app:1.0, ports: [{{name: http, containerPort: {ENDPOINT_PORT}}}]}}\n  - \
             {{name: mesh-proxy, image: mesh/proxy:0.1}}\n\
             status: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}]}}\n"
        );
    }
    Ok(yaml)
}

/// The value at quantile `q` (0..=1) of sorted microseconds (nearest rank), as f64.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let check = |values: &[u64], q: f64, expected: f64| {
            assert_eq!(quantile_us(values, q), expected, "{values:?} at {q}");
        };
        check(&[], 0.5, 0.0);
        check(&[7], 0.99, 7.0);
        check(&[1, 2, 3, 4], 0.5, 2.0);
        let hundred: Vec<u64> = (1..=100).collect();
        check(&hundred, 0.99, 99.0);
        check(&hundred, 1.0, 100.0);
    }

    #[test]
    fn the_folders_yaml_is_what_the_controller_reads() {
        let (objects, errors) =
            mesh_controller::source::folder::parse_yaml(&large_yaml(3, 150).expect("fits"));
        assert!(errors.is_empty(), "{errors:?}");
        // A Service, two slices (100 + 50), 150 pods.
        assert_eq!(objects.len(), 1 + 2 + 150);
        let addrs = [SocketAddr::from(([10, 244, 1, 1], ENDPOINT_PORT))];
        let text = format!(
            "{}---\n{}",
            service_yaml(SERVICE, 0),
            slice_yaml(SERVICE, 0, &addrs)
        );
        let (objects, errors) = mesh_controller::source::folder::parse_yaml(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 2);
    }
}
