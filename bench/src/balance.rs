//! Load balancing between a fast and a slow endpoint on pods: the mesh proxy (power of two choices over peak EWMA, fed by the real destination controller) against the split a round-robin balancer gives.
//!
//! ```text
//! client-meshed ─ oha ─▶ 10.96.0.10:80 ─▶ outbound proxy ─┬─▶ fast  app :8080 (answers at once)
//!                        Host: web-svc.demo.svc…          └─▶ slow  app :8080 (answers after 10 ms)
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

/// The service's ClusterIP and its fully qualified name.
const CLUSTER_IP: &str = "10.96.0.10";
const SERVICE_HOST: &str = "web-svc.demo.svc.cluster.local";
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
    /// Requests per second, for each balancer.
    pub rate: u32,
    /// The length of each run.
    pub duration: Duration,
    /// How long the slow endpoint waits before answering.
    pub delay: Duration,
    /// HTTP/1.1 connections of the load generator (split in two for round-robin).
    pub connections: u32,
}

/// Both balancers' results.
#[derive(Debug, Serialize)]
pub struct Results {
    pub rate: u32,
    pub duration_seconds: f64,
    pub delay_ms: f64,
    pub connections: u32,
    pub rows: Vec<Row>,
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

/// Builds the pods, runs both balancers, removes the pods.
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
    let slow_pod = cluster.add_pod("slow")?;
    let client = cluster.add_pod("client")?;
    let client_meshed = cluster.add_pod("client-meshed")?;

    let fast = Server::start(&fast_pod)?;
    let slow = Server::start_with_delay(&slow_pod, plan.delay)?;
    let folder = work.join("balance");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let objects = folder.join("web-svc.yaml");
    std::fs::write(
        &objects,
        objects_yaml(&[(fast_pod.ip, "fast"), (slow_pod.ip, "slow")]),
    )
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

    eprintln!("mesh-bench: balancing through the proxy");
    let before = counts();
    let outcome = oha
        .run(&client_meshed, &through_proxy)
        .context("load through the proxy")?;
    let after = counts();
    let proxy_row = Row {
        balancer: "mesh proxy (P2C over peak EWMA)".to_string(),
        fast_requests: after.0 - before.0,
        slow_requests: after.1 - before.1,
        ok: outcome.ok,
        failed: outcome.failed,
        p50_ms: outcome.p50 * 1e3,
        p99_ms: outcome.p99 * 1e3,
        oha: vec![outcome.raw],
    };
    check_row(&proxy_row)?;

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
            "Two server pods run the benchmark's hyper server: `fast` answers at once, `slow` \
             after {:.0} ms (a timer, no busy thread). `mesh-controller destination --source \
             dir:…` runs in a third pod (`0.0.0.0:8086`) with a Service `web-svc.demo` \
             (ClusterIP {CLUSTER_IP}, port 80 → 8080) whose EndpointSlice lists both. The \
             meshed client pod's proxy discovers through it (`MESH_PROXY_DESTINATION_ADDR`, \
             `MESH_PROXY_DESTINATION_NAMESPACE=demo`) and routes `{SERVICE_CIDR}` to its \
             `eth0` so that a connection to the ClusterIP reaches the redirect. Each server \
             counts the requests it answers.\n",
            self.delay_ms
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
        writeln!(out)
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

/// The Service, its EndpointSlice listing `endpoints` (pod IP and name), and nothing else.
fn objects_yaml(endpoints: &[(std::net::Ipv4Addr, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web-svc, namespace: demo}}\n\
         spec: {{clusterIP: {CLUSTER_IP}, ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-svc-0, namespace: demo, labels: {{kubernetes.io/service-name: \
         web-svc}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n",
        port = server::PORT
    );
    for (ip, pod) in endpoints {
        let _ = writeln!(
            yaml,
            "- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, \
             name: {pod}, namespace: demo}}}}"
        );
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
        let yaml = objects_yaml(&[
            ("10.244.0.2".parse().expect("an address"), "fast"),
            ("10.244.0.3".parse().expect("an address"), "slow"),
        ]);
        let (objects, errors) = mesh_controller::source::folder::parse_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 2);
    }
}
