//! Load balancing on pods: how the mesh proxy (power of two choices over latency estimates, fed by the real destination controller) splits requests between two equal endpoints at a trickle, a steady rate and under load, and between a fast and a slow endpoint against the split a round-robin balancer gives.
//!
//! ```text
//! client-meshed ─ oha ─▶ 10.96.0.11-13:80 ─▶ outbound proxy ─┬─▶ fast   app :8080 (answers at once)
//!                        Host: equal-<rate>.demo.svc…        └─▶ fast-2 app :8080 (answers at once)
//! client-meshed ─ oha ─▶ 10.96.0.10:80    ─▶ outbound proxy ─┬─▶ fast   app :8080
//!                        Host: web-svc.demo.svc…             └─▶ slow   app :8080 (answers after 10 ms)
//!                              ▲ endpoints from mesh-controller in pod `controller` (:8086)
//! client        ─ oha, half the rate ─▶ fast :8080   (round-robin by construction:
//!               ─ oha, half the rate ─▶ slow :8080    each endpoint gets exactly half)
//! ```

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::{Cluster, MeshOptions};
use serde::Serialize;

use crate::controller::{self, Controller};
use crate::oha::{Load, Oha, Outcome, Protocol, Run};
use crate::server::{self, Server};
use crate::units::{ms, thousands};

/// The fast/slow service's ClusterIP and its fully qualified name.
const CLUSTER_IP: &str = "10.96.0.10";
const SERVICE_HOST: &str = "web-svc.demo.svc.cluster.local";
/// The request rates at which two equal endpoints are measured: a trickle (the rate at which,
/// on a real cluster, one of two equal replicas got 81 requests of 83), a steady rate, and a
/// load at which requests overlap. Each rate has a Service of its own, `equal-<rate>`, with the
/// ClusterIP `10.96.0.<11 + i>`.
pub const EQUAL_RATES: [u32; 3] = [2, 50, 2_000];
/// How long the trickle runs when not told otherwise: the 40 s of the report from the cluster,
/// 80 requests at 2 req/s.
pub const TRICKLE_DURATION: Duration = Duration::from_secs(40);
/// The trickle's connections: one, so that its requests come one after the other, as in the
/// report from the cluster.
pub const TRICKLE_CONNECTIONS: u32 = 1;
/// The target for two equal endpoints: each gets its half within this (45–55 %).
pub const EQUAL_TOLERANCE: f64 = 0.05;
/// The target for the slow endpoint: its share through the proxy stays under this.
pub const SLOW_SHARE_TARGET: f64 = 0.05;
/// The service network the meshed client routes to its `eth0`, so that connections to the
/// ClusterIP reach its redirect rules.
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// How long the controller in its pod may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The warm-up through the proxy: discovery resolves, connections open, EWMAs settle.
const WARM_UP: Duration = Duration::from_secs(1);

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests per second of the fast/slow runs, for each balancer.
    pub rate: u32,
    /// The length of each run, except the trickle.
    pub duration: Duration,
    /// The length of the equal endpoints' run at the lowest of [`EQUAL_RATES`]: at 2 req/s
    /// a few seconds are a handful of requests.
    pub trickle_duration: Duration,
    /// How long the slow endpoint waits before answering.
    pub delay: Duration,
    /// HTTP/1.1 connections of the load generator (split in two for round-robin).
    pub connections: u32,
}

/// The equal endpoints' runs and both balancers' fast/slow runs.
#[derive(Debug, Serialize)]
pub struct Results {
    /// Two equal endpoints through the proxy, one run per rate of [`EQUAL_RATES`].
    pub equal: Vec<EqualRow>,
    pub rate: u32,
    pub duration_seconds: f64,
    pub delay_ms: f64,
    pub connections: u32,
    pub rows: Vec<Row>,
}

/// Two equal endpoints through the proxy at one rate.
#[derive(Debug, Serialize)]
pub struct EqualRow {
    pub rate: u32,
    pub duration_seconds: f64,
    pub connections: u32,
    /// Requests each server counted during the run.
    pub fast_requests: u64,
    pub fast2_requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// oha's whole JSON output.
    pub oha: serde_json::Value,
}

impl EqualRow {
    /// The larger of the two endpoints' shares (0.5 is an even split).
    pub fn larger_share(&self) -> f64 {
        let total = self.fast_requests + self.fast2_requests;
        if total == 0 {
            0.0
        } else {
            self.fast_requests.max(self.fast2_requests) as f64 / total as f64
        }
    }

    /// Whether both endpoints got their half within [`EQUAL_TOLERANCE`].
    pub fn even(&self) -> bool {
        self.fast_requests + self.fast2_requests > 0
            && self.larger_share() <= 0.5 + EQUAL_TOLERANCE + 1e-9
    }
}

/// One balancer under the load.
#[derive(Debug, Serialize)]
pub struct Row {
    pub balancer: String,
    /// Requests each server counted during the run.
    pub fast_requests: u64,
    pub slow_requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// oha's whole JSON output of each run (two for round-robin: fast, then slow).
    pub oha: Vec<serde_json::Value>,
}

impl Row {
    /// The slow endpoint's share of the requests.
    pub fn slow_share(&self) -> f64 {
        let total = self.fast_requests + self.slow_requests;
        if total == 0 {
            0.0
        } else {
            self.slow_requests as f64 / total as f64
        }
    }
}

/// Builds the pods, runs the equal endpoints' rates and both balancers, removes the pods.
pub fn run(
    plan: &Plan,
    oha: &Oha,
    proxy_env: &[(String, String)],
    work: &Path,
) -> anyhow::Result<Results> {
    let program = controller::binary()?;
    let mut cluster = Cluster::new("bench-lb").context("creating the balancing cluster")?;
    let controller_pod = cluster.add_pod("controller")?;
    let fast_pod = cluster.add_pod("fast")?;
    let fast2_pod = cluster.add_pod("fast-2")?;
    let slow_pod = cluster.add_pod("slow")?;
    let client = cluster.add_pod("client")?;
    let client_meshed = cluster.add_pod("client-meshed")?;

    let fast = Server::start(&fast_pod)?;
    let fast2 = Server::start(&fast2_pod)?;
    let slow = Server::start_with_delay(&slow_pod, plan.delay)?;
    let folder = work.join("balance");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let objects = folder.join("services.yaml");
    let mut services = vec![Service {
        name: "web-svc".to_string(),
        cluster_ip: CLUSTER_IP.to_string(),
        endpoints: vec![(fast_pod.ip, "fast"), (slow_pod.ip, "slow")],
    }];
    services.extend(EQUAL_RATES.iter().enumerate().map(|(i, &rate)| Service {
        name: equal_service(rate),
        cluster_ip: equal_cluster_ip(i),
        endpoints: vec![(fast_pod.ip, "fast"), (fast2_pod.ip, "fast-2")],
    }));
    std::fs::write(&objects, objects_yaml(&services))
        .with_context(|| format!("writing {}", objects.display()))?;
    let mut ctl = Controller::start_in(
        &controller_pod,
        &program,
        &folder,
        &cluster.log_dir().join("controller.log"),
    )?;
    ctl.wait_ready(READY_TIMEOUT, |addr| {
        client
            .run_in(move || controller::http_status(addr, "/ready"))
            .join()
            .map_err(|_| anyhow!("the readiness probe thread panicked"))?
    })?;

    client_meshed
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
            "demo".to_string(),
        ),
    ]);
    let _proxy = client_meshed
        .mesh(MeshOptions {
            env,
            ..MeshOptions::default()
        })
        .context("meshing the client pod")?;

    // Two equal endpoints, the trickle first. Each rate calls a Service of its own, so that
    // each run starts from a balancer that has not seen the endpoints yet, as a new client
    // would.
    let mut equal = Vec::new();
    for (i, &rate) in EQUAL_RATES.iter().enumerate() {
        let (duration, connections) = if i == 0 {
            (plan.trickle_duration, TRICKLE_CONNECTIONS)
        } else {
            (plan.duration, plan.connections)
        };
        let run = Run {
            url: format!("http://{}:80/", equal_cluster_ip(i)),
            protocol: Protocol::Http1,
            load: Load::Rate(rate),
            connections,
            streams: 1,
            duration,
            host: Some(service_host(&equal_service(rate))),
        };
        eprintln!(
            "mesh-bench: two equal endpoints at {rate} req/s for {}",
            humantime::format_duration(duration)
        );
        let warm_up = Run {
            duration: WARM_UP,
            ..run.clone()
        };
        oha.run(&client_meshed, &warm_up)
            .with_context(|| format!("warming up two equal endpoints at {rate} req/s"))?;
        let before = (fast.requests(), fast2.requests());
        let outcome = oha
            .run(&client_meshed, &run)
            .with_context(|| format!("two equal endpoints at {rate} req/s"))?;
        let after = (fast.requests(), fast2.requests());
        let row = EqualRow {
            rate,
            duration_seconds: duration.as_secs_f64(),
            connections,
            fast_requests: after.0 - before.0,
            fast2_requests: after.1 - before.1,
            ok: outcome.ok,
            failed: outcome.failed,
            p50_ms: outcome.p50 * 1e3,
            p99_ms: outcome.p99 * 1e3,
            oha: outcome.raw,
        };
        eprintln!(
            "mesh-bench: {} / {} requests (larger share {:.1} %), {} failed",
            row.fast_requests,
            row.fast2_requests,
            row.larger_share() * 100.0,
            row.failed
        );
        if row.ok == 0 {
            bail!(
                "two equal endpoints at {rate} req/s: no request succeeded ({} failed)",
                row.failed
            );
        }
        equal.push(row);
    }

    let through_proxy = Run {
        url: format!("http://{CLUSTER_IP}:80/"),
        protocol: Protocol::Http1,
        load: Load::Rate(plan.rate),
        connections: plan.connections,
        streams: 1,
        duration: plan.duration,
        host: Some(SERVICE_HOST.to_string()),
    };
    let warm_up = Run {
        duration: WARM_UP,
        ..through_proxy.clone()
    };
    oha.run(&client_meshed, &warm_up)
        .context("warming up through the proxy")?;
    let counts = || (fast.requests(), slow.requests());

    eprintln!("mesh-bench: balancing a fast and a slow endpoint through the proxy");
    let before = counts();
    let outcome = oha
        .run(&client_meshed, &through_proxy)
        .context("load through the proxy")?;
    let after = counts();
    let proxy_row = Row {
        balancer: "mesh proxy (power of two choices)".to_string(),
        fast_requests: after.0 - before.0,
        slow_requests: after.1 - before.1,
        ok: outcome.ok,
        failed: outcome.failed,
        p50_ms: outcome.p50 * 1e3,
        p99_ms: outcome.p99 * 1e3,
        oha: vec![outcome.raw],
    };
    check_row(&proxy_row)?;
    eprintln!(
        "mesh-bench: {} / {} requests (slow share {:.1} %)",
        proxy_row.fast_requests,
        proxy_row.slow_requests,
        proxy_row.slow_share() * 100.0
    );

    eprintln!("mesh-bench: round-robin by construction");
    let half = |ip| Run {
        url: format!("http://{ip}:{}/", server::PORT),
        load: Load::Rate(plan.rate.div_ceil(2)),
        connections: plan.connections.div_ceil(2),
        host: None,
        ..through_proxy.clone()
    };
    let before = counts();
    let (fast_run, slow_run) = (half(fast_pod.ip), half(slow_pod.ip));
    let (to_fast, to_slow) = std::thread::scope(|s| {
        let fast = s.spawn(|| oha.run(&client, &fast_run));
        let slow = s.spawn(|| oha.run(&client, &slow_run));
        let join = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<Outcome>>| {
            h.join()
                .map_err(|_| anyhow!("a load-generator thread panicked"))?
        };
        (join(fast), join(slow))
    });
    let after = counts();
    let (to_fast, to_slow) = (
        to_fast.context("round-robin load, fast half")?,
        to_slow.context("round-robin load, slow half")?,
    );
    let mixed = |q: f64| {
        mixture_quantile(
            &[
                (to_fast.ok as f64, &to_fast.percentiles[..]),
                (to_slow.ok as f64, &to_slow.percentiles[..]),
            ],
            q,
        ) * 1e3
    };
    let rr_row = Row {
        balancer: "round-robin (by construction: oha at half the rate to each endpoint, no proxy)"
            .to_string(),
        fast_requests: after.0 - before.0,
        slow_requests: after.1 - before.1,
        ok: to_fast.ok + to_slow.ok,
        failed: to_fast.failed + to_slow.failed,
        p50_ms: mixed(0.5),
        p99_ms: mixed(0.99),
        oha: vec![to_fast.raw, to_slow.raw],
    };
    check_row(&rr_row)?;
    drop(ctl);
    Ok(Results {
        equal,
        rate: plan.rate,
        duration_seconds: plan.duration.as_secs_f64(),
        delay_ms: plan.delay.as_secs_f64() * 1e3,
        connections: plan.connections,
        rows: vec![proxy_row, rr_row],
    })
}

impl Results {
    /// The report's section (after its `##` heading and marker, which the caller writes).
    pub fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "Server pods run the benchmark's hyper server: `fast` and `fast-2` answer at once, \
             `slow` after {:.0} ms (a timer, no busy thread). `mesh-controller destination \
             --source dir:…` runs in a pod of its own (`0.0.0.0:8086`) with Services whose \
             EndpointSlices list them (below). The meshed client pod's proxy discovers through \
             it (`MESH_PROXY_DESTINATION_ADDR`, `MESH_PROXY_DESTINATION_NAMESPACE=demo`) and \
             routes `{SERVICE_CIDR}` to its `eth0` so that a connection to a ClusterIP reaches \
             the redirect. Each server counts the requests it answers; the counts of each run \
             leave out its one-second warm-up at the same rate.\n",
            self.delay_ms
        )?;
        self.write_equal(out)?;
        self.write_fast_slow(out)
    }

    /// Two equal endpoints at each rate.
    fn write_equal(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "### Two equal endpoints\n")?;
        let rates: Vec<String> = self.equal.iter().map(|r| r.rate.to_string()).collect();
        writeln!(
            out,
            "`fast` and `fast-2` behind one Service per rate (`equal-{}`, ClusterIPs \
             {}–{}), so that each run starts from a balancer that has not seen them yet, as a \
             new client would: `oha -q RATE -z DURATION -c CONNECTIONS --latency-correction \
             --host equal-RATE.demo.svc.cluster.local http://CLUSTER_IP:80/` in the meshed \
             client pod. At 2 req/s, on one connection, the requests come one after the other, \
             as in the report from a cluster where one of two equal replicas got 81 requests \
             of 83 in 40 s; at 2,000 req/s they overlap. Target: each endpoint gets {:.0}–{:.0} \
             % of the requests at every rate.\n",
            rates.join("`, `equal-"),
            equal_cluster_ip(0),
            equal_cluster_ip(self.equal.len().saturating_sub(1)),
            (0.5 - EQUAL_TOLERANCE) * 100.0,
            (0.5 + EQUAL_TOLERANCE) * 100.0,
        )?;
        writeln!(
            out,
            "| rate req/s | run | connections | requests fast / fast-2 | larger share | target \
             | p50 ms | p99 ms | errors |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---|---:|---:|---:|")?;
        for row in &self.equal {
            writeln!(
                out,
                "| {} | {:.0} s | {} | {} / {} | {:.1} % | {} | {} | {} | {} |",
                thousands(f64::from(row.rate)),
                row.duration_seconds,
                row.connections,
                thousands(row.fast_requests as f64),
                thousands(row.fast2_requests as f64),
                row.larger_share() * 100.0,
                if row.even() { "met" } else { "**not met**" },
                ms(row.p50_ms),
                ms(row.p99_ms),
                row.failed,
            )?;
        }
        writeln!(out)
    }

    /// A fast and a slow endpoint, through the proxy and round-robin.
    fn write_fast_slow(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "### A fast and a slow endpoint\n")?;
        writeln!(
            out,
            "`fast` and `slow` behind the Service `web-svc.demo` (ClusterIP {CLUSTER_IP}, port \
             80 → 8080). Target: the slow endpoint gets under {:.0} % of the requests through \
             the proxy.\n",
            SLOW_SHARE_TARGET * 100.0
        )?;
        writeln!(
            out,
            "- **mesh proxy**: `oha -q {} -z {:.0}s -c {} --latency-correction --host \
             {SERVICE_HOST} http://{CLUSTER_IP}:80/` in the meshed client pod, after a \
             one-second warm-up; the proxy picks the endpoint per request.",
            self.rate, self.duration_seconds, self.connections
        )?;
        writeln!(
            out,
            "- **round-robin**: no balancer runs. Two `oha` at half the rate each ({} req/s, \
             {} connections), one per endpoint, from an unmeshed client pod, at the same time: \
             exactly the split a round-robin balancer gives (50/50 by construction), without \
             its hop (which adds about 0.1–0.2 ms, see the proxy sections). Its p50 and p99 are \
             those of all its requests together, computed from each half's percentiles \
             (interpolated; oha does not output every latency), weighted by their counts; \
             with exactly half the requests slow, its p50 is the slowest of the fast half.\n",
            self.rate.div_ceil(2),
            self.connections.div_ceil(2)
        )?;
        writeln!(
            out,
            "| balancer | requests fast / slow | slow endpoint's share | p50 ms | p99 ms | \
             errors |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
        for row in &self.rows {
            writeln!(
                out,
                "| {} | {} / {} | {:.1} % | {} | {} | {} |",
                row.balancer,
                thousands(row.fast_requests as f64),
                thousands(row.slow_requests as f64),
                row.slow_share() * 100.0,
                ms(row.p50_ms),
                ms(row.p99_ms),
                row.failed,
            )?;
        }
        writeln!(out)?;
        if let Some(proxy) = self.rows.first() {
            writeln!(
                out,
                "Target: {:.1} % through the proxy, {}.\n",
                proxy.slow_share() * 100.0,
                if proxy.slow_share() < SLOW_SHARE_TARGET {
                    "met"
                } else {
                    "**not met**"
                }
            )?;
        }
        Ok(())
    }
}

// === helpers ===

/// Fails when no request got through, with what oha said.
fn check_row(row: &Row) -> anyhow::Result<()> {
    if row.ok == 0 {
        bail!(
            "{}: no request succeeded ({} failed)",
            row.balancer,
            row.failed
        );
    }
    Ok(())
}

/// A Service of the benchmark: its name in namespace `demo`, its ClusterIP, and the pods its
/// EndpointSlice lists (IP and name).
struct Service {
    name: String,
    cluster_ip: String,
    endpoints: Vec<(std::net::Ipv4Addr, &'static str)>,
}

/// The Service of two equal endpoints at `rate`.
fn equal_service(rate: u32) -> String {
    format!("equal-{rate}")
}

/// The ClusterIP of the `i`th equal endpoints' Service.
fn equal_cluster_ip(i: usize) -> String {
    format!("10.96.0.{}", 11 + i)
}

/// A Service's fully qualified name in namespace `demo`.
fn service_host(name: &str) -> String {
    format!("{name}.demo.svc.cluster.local")
}

/// Each Service (port 80 → the server's port) and its EndpointSlice, and nothing else.
fn objects_yaml(services: &[Service]) -> String {
    let mut yaml = String::new();
    for service in services {
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-0, namespace: demo, labels: {{kubernetes.io/service-name: \
             {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n",
            name = service.name,
            ip = service.cluster_ip,
            port = server::PORT
        );
        for (ip, pod) in &service.endpoints {
            let _ = writeln!(
                yaml,
                "- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, \
                 name: {pod}, namespace: demo}}}}"
            );
        }
    }
    yaml
}

/// The quantile `q` of a mixture of latency distributions, each given by its weight and its
/// percentile points (quantile, value), sorted: the value `v` where the weighted share of
/// requests at or below `v` is `q`, each distribution's share interpolated linearly between
/// its points.
fn mixture_quantile(parts: &[(f64, &[(f64, f64)])], q: f64) -> f64 {
    let total: f64 = parts.iter().map(|(w, _)| w).sum();
    let values = parts
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1));
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if total <= 0.0 || !lo.is_finite() {
        return 0.0;
    }
    let share = |v: f64| {
        parts
            .iter()
            .map(|(w, points)| w * cdf(points, v))
            .sum::<f64>()
            / total
    };
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if share(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The share of requests at or below `v`, interpolated between percentile points.
fn cdf(points: &[(f64, f64)], v: f64) -> f64 {
    let Some(&(first_q, first_v)) = points.first() else {
        return 0.0;
    };
    if v < first_v {
        return 0.0;
    }
    let mut prev = (first_q, first_v);
    for &(pq, pv) in &points[1..] {
        if v < pv {
            let span = pv - prev.1;
            return if span > 0.0 {
                prev.0 + (pq - prev.0) * (v - prev.1) / span
            } else {
                pq
            };
        }
        prev = (pq, pv);
    }
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtures() {
        let fast: &[(f64, f64)] = &[(0.0, 1.0), (0.5, 2.0), (1.0, 3.0)];
        let slow: &[(f64, f64)] = &[(0.0, 10.0), (0.5, 11.0), (1.0, 12.0)];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        // One distribution alone is itself.
        assert!(close(mixture_quantile(&[(1.0, fast)], 0.5), 2.0));
        assert!(close(mixture_quantile(&[(1.0, fast)], 0.75), 2.5));
        // Half and half: the p99 is the slow half's p98, the p25 the fast half's p50.
        assert!(close(
            mixture_quantile(&[(1.0, fast), (1.0, slow)], 0.99),
            11.96
        ));
        assert!(close(
            mixture_quantile(&[(1.0, fast), (1.0, slow)], 0.25),
            2.0
        ));
        // Weights count: with three fast to one slow, p75 is the top of the fast ones.
        assert!(close(
            mixture_quantile(&[(3.0, fast), (1.0, slow)], 0.75),
            3.0
        ));
        assert_eq!(mixture_quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn objects_parse() {
        let ip = |s: &str| s.parse().expect("an address");
        let yaml = objects_yaml(&[
            Service {
                name: "web-svc".to_string(),
                cluster_ip: CLUSTER_IP.to_string(),
                endpoints: vec![(ip("10.244.0.2"), "fast"), (ip("10.244.0.3"), "slow")],
            },
            Service {
                name: equal_service(2),
                cluster_ip: equal_cluster_ip(0),
                endpoints: vec![(ip("10.244.0.2"), "fast"), (ip("10.244.0.4"), "fast-2")],
            },
        ]);
        let (objects, errors) = mesh_controller::source::folder::parse_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 4);
        assert!(yaml.contains("name: equal-2, namespace: demo"), "{yaml}");
        assert!(yaml.contains("clusterIP: 10.96.0.11"), "{yaml}");
    }

    #[test]
    fn equal_splits() {
        let row = |fast, fast2| EqualRow {
            rate: 2,
            duration_seconds: 40.0,
            connections: 1,
            fast_requests: fast,
            fast2_requests: fast2,
            ok: fast + fast2,
            failed: 0,
            p50_ms: 0.1,
            p99_ms: 0.2,
            oha: serde_json::Value::Null,
        };
        let check = |fast, fast2, share: f64, even| {
            let r = row(fast, fast2);
            assert!((r.larger_share() - share).abs() < 1e-9, "{fast}/{fast2}");
            assert_eq!(r.even(), even, "{fast}/{fast2}");
        };
        check(40, 40, 0.5, true);
        check(36, 44, 0.55, true);
        check(81, 2, 81.0 / 83.0, false);
        check(45, 35, 0.5625, false);
        check(0, 0, 0.0, false);
    }
}
