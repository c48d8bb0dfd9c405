//! Golden metrics per workload from the proxies' scrapes: success rate, requests per second,
//! latency percentiles (from the histogram's buckets), TCP connections, meshed pods.
//!
//! Counters are cumulative since a proxy started: a rate over a window is the difference of two
//! scrapes (`before`, `after`); without `before`, the figures cover the proxies' whole life and
//! there is no rate. The folds of `routes` and `authz` count their families the same way,
//! through `counted` and `window` here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{PodInfo, Workload};
use crate::prom::Sample;

/// The samples of each pod's scrape, by (namespace, pod name).
pub type Scrapes = HashMap<(String, String), Vec<Sample>>;

/// HTTP responses counted over some samples: by classification, and the latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Http {
    pub success: f64,
    pub failure: f64,
    /// Cumulative bucket counts by upper bound (ms), ascending; the last is `+Inf`.
    pub buckets: Vec<(f64, f64)>,
}

impl Http {
    /// Sums `response_total` and `response_latency_ms_bucket` over the samples `keep` accepts.
    pub fn sum<'a>(
        samples: impl IntoIterator<Item = &'a Sample>,
        keep: impl Fn(&Sample) -> bool,
    ) -> Http {
        let mut http = Http::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in samples.into_iter().filter(|s| keep(s)) {
            match s.name.as_str() {
                "response_total" => match s.label("classification") {
                    Some("success") => http.success += s.value,
                    _ => http.failure += s.value,
                },
                "response_latency_ms_bucket" => {
                    let le = match s.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => match v.parse::<f64>() {
                            Ok(le) => le,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    // Bounds are non-negative, so their bit patterns sort like the numbers.
                    buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
                }
                _ => {}
            }
        }
        http.buckets = buckets.into_values().collect();
        http
    }

    /// What was counted since `before` (a later scrape minus an earlier one). A counter that
    /// went down was reset (the proxy restarted): its whole value is new.
    pub fn since(&self, before: &Http) -> Http {
        let delta = |now: f64, then: f64| if now >= then { now - then } else { now };
        Http {
            success: delta(self.success, before.success),
            failure: delta(self.failure, before.failure),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| {
                    let then = before
                        .buckets
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, n)| *n);
                    (le, delta(n, then))
                })
                .collect(),
        }
    }

    /// Responses counted.
    pub fn total(&self) -> f64 {
        self.success + self.failure
    }

    /// The share of successes, or `None` without responses.
    pub fn success_rate(&self) -> Option<f64> {
        (self.total() > 0.0).then(|| self.success / self.total())
    }

    /// The `q` quantile (0..=1) of the latency in ms, see [`quantile`].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(q, &self.buckets)
    }
}

/// The `q` quantile of a cumulative histogram, the way Prometheus' `histogram_quantile` does it:
/// find the bucket the rank falls in and interpolate linearly inside it (from 0 for the first
/// bucket). A rank in the `+Inf` bucket answers the highest finite bound. `None` when empty.
///
/// ```
/// // 10 observations at most 5 ms, 10 more at most 10 ms.
/// let buckets = [(5.0, 10.0), (10.0, 20.0), (f64::INFINITY, 20.0)];
/// assert_eq!(mesh_viz::stat::quantile(0.5, &buckets), Some(5.0));
/// assert_eq!(mesh_viz::stat::quantile(0.75, &buckets), Some(7.5));
/// ```
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank && count > prev.1 {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let (lo, below) = prev;
            return Some(lo + (le - lo) * (rank - below) / (count - below));
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// Which traffic a row measures.
#[derive(Clone, Debug)]
pub enum Measure {
    /// What the row's pods received (their inbound proxies): the default.
    Inbound,
    /// What the row's pods sent to these pods (their outbound proxies): `--to`.
    To(Vec<PodInfo>),
    /// What these pods sent to the row's pods (the senders' outbound proxies): `--from`.
    From(Vec<PodInfo>),
}

/// One row of `mesh viz stat`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatRow {
    #[serde(flatten)]
    pub workload: Workload,
    pub meshed_pods: usize,
    pub pods: usize,
    /// Responses counted in the window (or since the proxies started).
    pub responses: u64,
    pub success_rate: Option<f64>,
    /// Requests per second over the window; `None` without one.
    pub rps: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// TCP connections open now.
    pub tcp_connections: u64,
}

/// The stat rows of `groups` (each workload with its pods). `window` is the seconds between
/// `before` and `after`; without `before`, counters are taken whole and there is no rate.
pub fn stat(
    groups: &[(Workload, Vec<PodInfo>)],
    before: Option<&Scrapes>,
    after: &Scrapes,
    window: f64,
    measure: &Measure,
) -> Vec<StatRow> {
    groups
        .iter()
        .map(|(workload, pods)| {
            let (sources, peers): (&[PodInfo], &[PodInfo]) = match measure {
                Measure::Inbound => (pods, &[]),
                Measure::To(dst) => (pods, dst),
                Measure::From(src) => (src, pods),
            };
            let peer_set: BTreeSet<(&str, &str)> = peers
                .iter()
                .map(|p| (p.namespace.as_str(), p.name.as_str()))
                .collect();
            let keep = |s: &Sample| match measure {
                Measure::Inbound => s.label("direction") == Some("inbound"),
                _ => {
                    s.label("direction") == Some("outbound")
                        && match (s.label("dst_namespace"), s.label("dst_pod")) {
                            (Some(ns), Some(pod)) => peer_set.contains(&(ns, pod)),
                            _ => false,
                        }
                }
            };
            let sum = |scrapes: &Scrapes| {
                let mut http = Http::default();
                let mut tcp = 0.0;
                for pod in sources {
                    let key = (pod.namespace.clone(), pod.name.clone());
                    let Some(samples) = scrapes.get(&key) else {
                        continue;
                    };
                    http = merge(http, Http::sum(samples, keep));
                    tcp += samples
                        .iter()
                        .filter(|s| s.name == "tcp_open_connections" && keep(s))
                        .map(|s| s.value)
                        .sum::<f64>();
                }
                (http, tcp)
            };
            let (now, tcp) = sum(after);
            let (http, rps) = match before {
                Some(before) if window > 0.0 => {
                    let delta = now.since(&sum(before).0);
                    let rps = delta.total() / window;
                    (delta, Some(rps))
                }
                _ => (now, None),
            };
            StatRow {
                workload: workload.clone(),
                meshed_pods: pods.iter().filter(|p| p.meshed).count(),
                pods: pods.len(),
                responses: http.total().round() as u64,
                success_rate: http.success_rate(),
                rps,
                latency_ms_p50: http.quantile(0.5),
                latency_ms_p95: http.quantile(0.95),
                latency_ms_p99: http.quantile(0.99),
                tcp_connections: tcp.max(0.0).round() as u64,
            }
        })
        .collect()
}

/// Adds two sums of different pods.
fn merge(mut a: Http, b: Http) -> Http {
    a.success += b.success;
    a.failure += b.failure;
    for (le, n) in b.buckets {
        match a.buckets.iter_mut().find(|(l, _)| *l == le) {
            Some(bucket) => bucket.1 += n,
            None => a.buckets.push((le, n)),
        }
    }
    a.buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    a
}

// === counting, shared with the folds of `routes` and `authz` ===

/// What `pods`' proxies counted in the samples of `families` between two scrapes: each such
/// sample of `after`, with its pod and its difference from the same series in `before`. A
/// series that went down was reset (the proxy restarted) and counts whole, as does one that is
/// new since `before`; without `before`, every series counts whole (since the proxies started).
pub(crate) fn counted<'a>(
    pods: &'a [PodInfo],
    before: Option<&'a Scrapes>,
    after: &'a Scrapes,
    families: &'a [&'a str],
) -> impl Iterator<Item = (&'a PodInfo, &'a Sample, f64)> + 'a {
    pods.iter().flat_map(move |pod| {
        let key = (pod.namespace.clone(), pod.name.clone());
        let now = after.get(&key).map(Vec::as_slice).unwrap_or_default();
        let then = before.and_then(|b| b.get(&key)).map(Vec::as_slice);
        deltas(now, then, families).map(move |(sample, value)| (pod, sample, value))
    })
}

/// The seconds [`counted`] covers: `seconds`, the time between the two scrapes; 0 without a
/// first scrape or without time between them (since the proxies started: no rates).
pub(crate) fn window(before: Option<&Scrapes>, seconds: f64) -> f64 {
    match before {
        Some(_) if seconds > 0.0 => seconds,
        _ => 0.0,
    }
}

/// `n` per second over `window`; `None` without a window.
pub(crate) fn rate(n: f64, window: f64) -> Option<f64> {
    (window > 0.0).then(|| n / window)
}

/// A counted value as a whole number.
pub(crate) fn count(n: f64) -> u64 {
    n.max(0.0).round() as u64
}

/// Each sample of `families` in `now`, with what it counted since `then` (see [`counted`]).
fn deltas<'a>(
    now: &'a [Sample],
    then: Option<&'a [Sample]>,
    families: &'a [&'a str],
) -> impl Iterator<Item = (&'a Sample, f64)> + 'a {
    let earlier: HashMap<(&str, &BTreeMap<String, String>), f64> = then
        .unwrap_or_default()
        .iter()
        .map(|s| ((s.name.as_str(), &s.labels), s.value))
        .collect();
    now.iter()
        .filter(move |s| families.contains(&s.name.as_str()))
        .map(move |s| {
            let value = match earlier.get(&(s.name.as_str(), &s.labels)) {
                Some(&then) if s.value >= then => s.value - then,
                // Reset (the proxy restarted), or new since `then`: all of it is new.
                _ => s.value,
            };
            (s, value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::testing::{self, pod};

    #[test]
    fn quantiles() {
        let check = |q: f64, buckets: &[(f64, f64)], expected: Option<f64>| {
            assert_eq!(quantile(q, buckets), expected, "q={q} {buckets:?}");
        };
        let inf = f64::INFINITY;
        check(0.5, &[], None);
        check(0.5, &[(1.0, 0.0), (inf, 0.0)], None);
        // All in the first bucket: interpolate from 0.
        check(0.5, &[(10.0, 4.0), (inf, 4.0)], Some(5.0));
        check(1.0, &[(10.0, 4.0), (inf, 4.0)], Some(10.0));
        // Rank in a later bucket.
        check(
            0.9,
            &[(1.0, 5.0), (5.0, 5.0), (10.0, 10.0), (inf, 10.0)],
            Some(9.0),
        );
        // Empty buckets on the way are skipped, not interpolated into.
        check(
            0.5,
            &[(1.0, 0.0), (5.0, 0.0), (10.0, 2.0), (inf, 2.0)],
            Some(7.5),
        );
        // Past the last finite bound: the highest finite bound.
        check(0.99, &[(1.0, 1.0), (5.0, 1.0), (inf, 3.0)], Some(5.0));
    }

    #[test]
    fn deltas_and_resets() {
        let before = Http {
            success: 10.0,
            failure: 2.0,
            buckets: vec![(5.0, 12.0), (f64::INFINITY, 12.0)],
        };
        let after = Http {
            success: 16.0,
            failure: 4.0,
            buckets: vec![(5.0, 18.0), (f64::INFINITY, 20.0)],
        };
        let d = after.since(&before);
        assert_eq!((d.success, d.failure), (6.0, 2.0));
        assert_eq!(d.buckets, vec![(5.0, 6.0), (f64::INFINITY, 8.0)]);
        assert_eq!(d.success_rate(), Some(0.75));
        // The proxy restarted: counters went down, the new values count whole.
        let reset = Http {
            success: 1.0,
            ..Http::default()
        };
        assert_eq!(reset.since(&before).success, 1.0);
        assert_eq!(Http::default().success_rate(), None);
    }

    fn scrapes(entries: &[(&str, &str)]) -> Scrapes {
        testing::scrapes(entries, str::to_string)
    }

    #[test]
    fn counted_between_two_scrapes() {
        let before = scrapes(&[("a", "x_total 10\ny_total 5\nz_total 3\n")]);
        let after = scrapes(&[
            ("a", "x_total 16\ny_total 2\nw_total 4\nz_total 9\n"),
            ("b", "x_total 1\n"),
            ("other", "x_total 99\n"),
        ]);
        let pods = [pod("a", "d"), pod("b", "d"), pod("missing", "d")];
        let families = ["x_total", "y_total", "w_total"];
        let deltas: Vec<(&str, &str, f64)> = counted(&pods, Some(&before), &after, &families)
            .map(|(pod, s, n)| (pod.name.as_str(), s.name.as_str(), n))
            .collect();
        // x: the difference; y: reset, whole; w: new, whole; z: not a family asked for; b: no
        // first scrape, whole; other: not a pod asked for; missing: no scrape.
        assert_eq!(
            deltas,
            [
                ("a", "x_total", 6.0),
                ("a", "y_total", 2.0),
                ("a", "w_total", 4.0),
                ("b", "x_total", 1.0)
            ]
        );
        let whole: Vec<f64> = counted(&pods, None, &after, &families)
            .map(|(_, _, n)| n)
            .collect();
        assert_eq!(whole, [16.0, 2.0, 4.0, 1.0]);
        assert_eq!(window(Some(&before), 5.0), 5.0);
        assert_eq!(window(Some(&before), 0.0), 0.0, "no time between them");
        assert_eq!(window(None, 5.0), 0.0, "no first scrape");
        assert_eq!((rate(10.0, 4.0), rate(10.0, 0.0)), (Some(2.5), None));
        assert_eq!((count(2.5), count(-1.0)), (3, 0));
    }

    const BEFORE_WEB: &str = r#"
response_total{direction="inbound",authority="web",target_addr="127.0.0.1:8080",tls="true",client_id="c",classification="success",status_code="200"} 10
response_total{direction="inbound",authority="web",target_addr="127.0.0.1:8080",tls="true",client_id="c",classification="failure",status_code="200",grpc_status="2"} 0
response_latency_ms_bucket{le="1.0",direction="inbound",classification="success"} 10
response_latency_ms_bucket{le="+Inf",direction="inbound",classification="success"} 10
"#;
    const AFTER_WEB: &str = r#"
response_total{direction="inbound",authority="web",target_addr="127.0.0.1:8080",tls="true",client_id="c",classification="success",status_code="200"} 16
response_total{direction="inbound",authority="web",target_addr="127.0.0.1:8080",tls="true",client_id="c",classification="failure",status_code="200",grpc_status="2"} 2
response_latency_ms_bucket{le="1.0",direction="inbound",classification="success"} 16
response_latency_ms_bucket{le="+Inf",direction="inbound",classification="success"} 16
response_latency_ms_bucket{le="1.0",direction="inbound",classification="failure"} 0
response_latency_ms_bucket{le="+Inf",direction="inbound",classification="failure"} 2
tcp_open_connections{direction="inbound",target_addr="127.0.0.1:8080",tls="true",client_id="c"} 1
"#;
    const AFTER_CLIENT: &str = r#"
response_total{direction="outbound",authority="web",target_addr="10.244.0.3:8080",dst_namespace="demo",dst_pod="web-1",tls="true",server_id="w",classification="success",status_code="200"} 30
response_total{direction="outbound",authority="web",target_addr="10.244.0.3:8080",dst_namespace="demo",dst_pod="web-1",tls="true",server_id="w",classification="failure",status_code="503"} 10
response_total{direction="outbound",authority="x",target_addr="10.244.0.9:80",dst_namespace="demo",dst_pod="other",tls="true",server_id="o",classification="failure",status_code="500"} 7
response_total{direction="inbound",authority="client",target_addr="127.0.0.1:80",classification="failure",status_code="500"} 99
"#;

    #[test]
    fn inbound_rates_over_a_window() {
        let groups = vec![(
            Workload::new(Kind::Deployment, "demo", "web"),
            vec![pod("web-1", "web")],
        )];
        let before = scrapes(&[("web-1", BEFORE_WEB)]);
        let after = scrapes(&[("web-1", AFTER_WEB)]);
        let rows = stat(&groups, Some(&before), &after, 2.0, &Measure::Inbound);
        let row = &rows[0];
        assert_eq!(row.responses, 8);
        assert_eq!(row.success_rate, Some(0.75));
        assert_eq!(row.rps, Some(4.0));
        assert_eq!(row.tcp_connections, 1);
        assert_eq!((row.meshed_pods, row.pods), (1, 1));
        // 6 at most 1 ms, 2 above: p50 inside the first bucket, p99 past it.
        assert_eq!(row.latency_ms_p50, Some(4.0 / 6.0));
        assert_eq!(row.latency_ms_p99, Some(1.0));

        // Without a window: since the proxy started, no rate.
        let whole = stat(&groups, None, &after, 0.0, &Measure::Inbound);
        assert_eq!(whole[0].responses, 18);
        assert_eq!(whole[0].rps, None);
    }

    #[test]
    fn to_and_from_read_the_senders_outbound_side() {
        let client = pod("client", "client");
        let web = pod("web-1", "web");
        let after = scrapes(&[("client", AFTER_CLIENT), ("web-1", AFTER_WEB)]);
        let to = stat(
            &[(client.owner.clone(), vec![client.clone()])],
            None,
            &after,
            0.0,
            &Measure::To(vec![web.clone()]),
        );
        assert_eq!((to[0].responses, to[0].success_rate), (40, Some(0.75)));
        let from = stat(
            &[(web.owner.clone(), vec![web.clone()])],
            None,
            &after,
            0.0,
            &Measure::From(vec![client]),
        );
        assert_eq!(from[0].responses, 40);
        assert_eq!(from[0].workload.name, "web");
    }
}
