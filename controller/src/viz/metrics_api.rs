//! The metrics API (`mesh-controller metrics-api`): `GET /api/v1/samples` answers the proxies'
//! samples of some namespaces at now and now − window, read from Prometheus, in the shape of
//! `mesh_api::viz::SamplesResponse`; the CLI folds them with the same stat and edges code
//! as its own scrapes.
//!
//! Prometheus' scrape configuration gives every sample its pod's `namespace` and `pod` labels
//! (see `manifests/viz/prometheus.yaml`); they say whose sample it is and are taken off again,
//! with what Prometheus adds (`instance`, `job`), so the samples are the proxy's own.
//!
//! ```text
//! GET /api/v1/samples?namespace=demo&window=5000ms
//! 200 {"time":1700000000.0,"window":5.0,"pods":[{"namespace":"demo","pod":"web-1",
//!      "before":[{"name":"response_total","labels":{…},"value":"12"}],"after":[…]}]}
//! 400 {"error":"…"}   a bad query
//! 503 {"error":"…"}   Prometheus cannot be reached (or fails)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_api::viz::{
    parse_value, parse_window, PodSamples, Sample, SamplesResponse, FAMILIES, SAMPLES_PATH,
};
use tokio::net::TcpListener;

use super::prometheus::{Prometheus, QueryError, Series};
use super::{error, health, json, Body, ServeError};

/// The labels Prometheus adds to a proxy's samples; a proxy label of the same name comes back
/// as `exported_<name>`.
const TARGET_LABELS: &[&str] = &["namespace", "pod", "instance", "job"];

/// How to run the metrics API.
#[derive(Clone, Debug)]
pub struct MetricsApiConfig {
    pub listen: SocketAddr,
    /// Prometheus' base URL.
    pub prometheus_url: String,
    /// How long one Prometheus query may take.
    pub query_timeout: Duration,
}

/// Why the metrics API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MetricsApiError {
    #[error(transparent)]
    Url(#[from] super::prometheus::UrlError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Binds and serves the metrics API until the future is dropped.
pub async fn run(config: MetricsApiConfig) -> Result<(), MetricsApiError> {
    let prometheus = Prometheus::new(&config.prometheus_url, config.query_timeout)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| MetricsApiError::Bind {
                addr: config.listen,
                source,
            })?;
    tracing::info!(addr = %config.listen, prometheus = %prometheus.url(), "serving the metrics API");
    serve(listener, prometheus).await?;
    Ok(())
}

/// Serves the metrics API on `listener`, reading `prometheus`.
pub async fn serve(listener: TcpListener, prometheus: Prometheus) -> Result<(), ServeError> {
    let prometheus = Arc::new(prometheus);
    super::serve(listener, move |req| {
        let prometheus = prometheus.clone();
        async move { route(&prometheus, req).await }
    })
    .await
}

async fn route(prometheus: &Prometheus, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served".into());
    }
    let path = req.uri().path();
    if let Some(rsp) = health(path) {
        return rsp;
    }
    if path != SAMPLES_PATH {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such path: {path} (the metrics API serves {SAMPLES_PATH})"),
        );
    }
    let query = match Query::parse(req.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match samples(prometheus, &query).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => {
            tracing::warn!(error = %e, "reading Prometheus");
            let hint = match e {
                QueryError::Unreachable { .. } => {
                    "; is Prometheus running? In a cluster: `kubectl -n mesh-viz get pods`; \
                     `mesh viz install | kubectl apply -f -` installs it"
                }
                _ => "",
            };
            error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}{hint}"))
        }
    }
}

/// The query of [`SAMPLES_PATH`].
#[derive(Debug, PartialEq)]
struct Query {
    /// Empty: every namespace.
    namespaces: Vec<String>,
    window: Duration,
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut namespaces = Vec::new();
        let mut window = Duration::ZERO;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "namespace" => {
                    let valid = !v.is_empty()
                        && v.len() <= 63
                        && v.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                    if !valid {
                        return Err(format!("invalid namespace {v:?}: expected a DNS label"));
                    }
                    namespaces.push(v.into_owned());
                }
                "window" => {
                    window = parse_window(&v).ok_or_else(|| {
                        format!("invalid window {v:?}: expected e.g. 500ms, 5s or 2m")
                    })?;
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}: expected namespace or window"
                    ))
                }
            }
        }
        Ok(Query { namespaces, window })
    }

    /// The PromQL selector of the families the aggregations read, in these namespaces.
    fn selector(&self) -> String {
        let mut selector = format!("{{__name__=~\"{}\"", FAMILIES.join("|"));
        if !self.namespaces.is_empty() {
            selector.push_str(&format!(",namespace=~\"{}\"", self.namespaces.join("|")));
        }
        selector.push('}');
        selector
    }
}

async fn samples(prometheus: &Prometheus, query: &Query) -> Result<SamplesResponse, QueryError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let selector = query.selector();
    let window = query.window.as_secs_f64();
    let after = prometheus.instant(&selector, now).await?;
    let before = if window > 0.0 {
        Some(prometheus.instant(&selector, now - window).await?)
    } else {
        None
    };
    Ok(response(now, window, before, after))
}

/// Groups the series by pod and turns them back into the proxies' samples.
fn response(
    time: f64,
    window: f64,
    before: Option<Vec<Series>>,
    after: Vec<Series>,
) -> SamplesResponse {
    let mut pods: BTreeMap<(String, String), PodSamples> = BTreeMap::new();
    let has_before = before.is_some();
    let all = before
        .into_iter()
        .flatten()
        .map(|s| (true, s))
        .chain(after.into_iter().map(|s| (false, s)));
    for (is_before, series) in all {
        let Some((namespace, pod, sample)) = sample(series) else {
            continue;
        };
        let entry = pods
            .entry((namespace.clone(), pod.clone()))
            .or_insert_with(|| PodSamples {
                namespace,
                pod,
                before: has_before.then(Vec::new),
                after: Vec::new(),
            });
        match (is_before, entry.before.as_mut()) {
            (true, Some(before)) => before.push(sample),
            _ => entry.after.push(sample),
        }
    }
    SamplesResponse {
        time,
        window,
        pods: pods.into_values().collect(),
    }
}

/// A Prometheus series as the proxy's sample, with its pod; `None` without a pod.
fn sample(series: Series) -> Option<(String, String, Sample)> {
    let mut labels = series.metric;
    let name = labels.remove("__name__")?;
    let namespace = labels.remove("namespace")?;
    let pod = labels.remove("pod")?;
    for label in TARGET_LABELS {
        labels.remove(*label);
        if let Some(v) = labels.remove(&format!("exported_{label}")) {
            labels.insert(label.to_string(), v);
        }
    }
    let value = parse_value(&series.value.1)?;
    Some((
        namespace,
        pod,
        Sample {
            name,
            labels,
            value,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], value: &str) -> Series {
        Series {
            metric: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: (1.0, value.to_string()),
        }
    }

    #[test]
    fn queries() {
        let q = Query::parse("namespace=demo&namespace=emojivoto&window=5000ms").unwrap();
        assert_eq!(q.window, Duration::from_secs(5));
        assert_eq!(
            q.selector(),
            format!(
                "{{__name__=~\"{}\",namespace=~\"demo|emojivoto\"}}",
                mesh_api::viz::FAMILIES.join("|")
            )
        );
        assert!(q
            .selector()
            .starts_with("{__name__=~\"response_total|response_latency_ms_bucket|request_total|"));
        assert_eq!(Query::parse("").unwrap().namespaces, Vec::<String>::new());
        for bad in ["namespace=a%22b", "namespace=", "window=soon", "pod=x"] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn series_become_the_proxies_samples_by_pod() {
        let web = |name: &str, value: &str| {
            series(
                &[
                    ("__name__", name),
                    ("namespace", "demo"),
                    ("pod", "web-1"),
                    ("instance", "10.244.0.3:4191"),
                    ("job", "mesh-proxy"),
                    ("direction", "inbound"),
                    ("exported_job", "proxy's own"),
                ],
                value,
            )
        };
        let rsp = response(
            100.0,
            5.0,
            Some(vec![web("response_total", "1")]),
            vec![
                web("response_total", "3"),
                web("response_latency_ms_bucket", "+Inf"),
                series(&[("__name__", "response_total")], "7"),
            ],
        );
        assert_eq!(rsp.pods.len(), 1, "a series without a pod is left out");
        let pod = &rsp.pods[0];
        assert_eq!(
            (pod.namespace.as_str(), pod.pod.as_str()),
            ("demo", "web-1")
        );
        let before = pod.before.as_ref().unwrap();
        assert_eq!(before[0].value, 1.0);
        assert_eq!(pod.after[0].value, 3.0);
        assert_eq!(pod.after[1].value, f64::INFINITY);
        let labels: Vec<(&str, &str)> = pod.after[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("direction", "inbound"), ("job", "proxy's own")]);

        let now_only = response(100.0, 0.0, None, vec![web("response_total", "3")]);
        assert_eq!(now_only.pods[0].before, None);
    }
}
