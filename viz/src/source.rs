//! Where the samples of `stat`, `edges` and the dashboard come from: the proxies themselves
//! ([`Proxies`]: two scrapes through a [`Transport`], a window apart) or the viz component's
//! metrics API ([`MetricsApi`]: Prometheus, read at now and now − window). Both answer a
//! [`Window`], which the aggregations fold the same way: one code path above the source.
//!
//! The metrics API's wire format ([`SamplesResponse`], [`samples_query`], [`FAMILIES`]) is
//! `mesh_api::viz`'s, re-exported here, so the server (`mesh-controller metrics-api`) and its
//! clients cannot disagree.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::api::{Api, ApiError, Chunks, Direct, Getting, Streaming};
use crate::client::{self, Transport};
use crate::model::PodInfo;
use crate::stat::Scrapes;

/// The metrics API's wire format, shared with its server.
pub use mesh_api::viz::{
    parse_window, samples_query, PodSamples, SamplesResponse, FAMILIES, SAMPLES_PATH,
};

/// The samples of some pods at two instants.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// The samples at the window's start; `None` for a zero window (counters since start).
    pub before: Option<Scrapes>,
    /// The samples now.
    pub after: Scrapes,
    /// The seconds between `before` and `after`.
    pub seconds: f64,
    /// Why some pods have no samples (the others are there); the caller reports them.
    pub missing: Vec<String>,
}

/// What [`MetricsSource::samples`] returns.
pub type Reading<'a> = Pin<Box<dyn Future<Output = Result<Window, SourceError>> + Send + 'a>>;

/// A way to read the proxies' samples.
pub trait MetricsSource: Send + Sync + 'static {
    /// The samples of `pods` now and `window` ago (or now only, for a zero window).
    fn samples<'a>(&'a self, pods: &'a [PodInfo], window: Duration) -> Reading<'a>;
}

/// Why no samples could be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Every proxy failed; the first error.
    #[error(transparent)]
    Proxy(#[from] client::Error),
    /// The metrics API answered 503 (it cannot reach Prometheus), with its message.
    #[error("the viz metrics API is unavailable: {0}")]
    Unavailable(String),
    /// The metrics API could not be called, or answered something else.
    #[error("calling the viz metrics API: {0}")]
    Api(String),
}

// === Proxies ===

/// Reads the proxies directly: one scrape each, and another `window` later.
#[derive(Clone)]
pub struct Proxies {
    pub transport: Arc<dyn Transport>,
}

impl MetricsSource for Proxies {
    fn samples<'a>(&'a self, pods: &'a [PodInfo], window: Duration) -> Reading<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let (first, mut missing) = self.scrape(pods).await?;
            if window.is_zero() {
                return Ok(Window {
                    before: None,
                    after: first,
                    seconds: 0.0,
                    missing,
                });
            }
            tokio::time::sleep(window).await;
            let (second, later) = self.scrape(pods).await?;
            missing.extend(later);
            Ok(Window {
                before: Some(first),
                after: second,
                seconds: started.elapsed().as_secs_f64(),
                missing,
            })
        })
    }
}

impl Proxies {
    /// Scrapes `pods` at once; an error only when every one failed.
    async fn scrape(&self, pods: &[PodInfo]) -> Result<(Scrapes, Vec<String>), SourceError> {
        let mut tasks = tokio::task::JoinSet::new();
        for pod in pods.iter().cloned() {
            let transport = self.transport.clone();
            tasks.spawn(async move {
                let result = client::metrics(transport.as_ref(), &pod).await;
                (pod, result)
            });
        }
        let mut scrapes = Scrapes::new();
        let mut errors = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((pod, result)) = done else {
                continue;
            };
            match result {
                Ok(mut samples) => {
                    samples.retain(|s| FAMILIES.contains(&s.name.as_str()));
                    scrapes.insert((pod.namespace, pod.name), samples);
                }
                Err(e) => errors.push(e),
            }
        }
        if scrapes.is_empty() && !errors.is_empty() {
            return Err(errors.swap_remove(0).into());
        }
        Ok((scrapes, errors.iter().map(ToString::to_string).collect()))
    }
}

// === the metrics API ===

/// Reads the samples from the viz metrics API (which reads Prometheus).
#[derive(Clone)]
pub struct MetricsApi {
    pub api: Arc<dyn Api>,
}

impl MetricsSource for MetricsApi {
    fn samples<'a>(&'a self, pods: &'a [PodInfo], window: Duration) -> Reading<'a> {
        Box::pin(async move {
            let namespaces: BTreeSet<&str> = pods.iter().map(|p| p.namespace.as_str()).collect();
            let namespaces: Vec<&str> = namespaces.into_iter().collect();
            let path = format!("{SAMPLES_PATH}?{}", samples_query(&namespaces, window));
            let (status, body) = self
                .api
                .get(&path)
                .await
                .map_err(|e| SourceError::Api(format!("GET {path}: {e}")))?;
            let message = || match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => e.error,
                Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
            };
            match status {
                200 => {}
                503 => return Err(SourceError::Unavailable(message())),
                status => {
                    return Err(SourceError::Api(format!(
                        "GET {path} answered {status}: {}",
                        message()
                    )))
                }
            }
            let rsp: SamplesResponse = serde_json::from_slice(&body)
                .map_err(|e| SourceError::Api(format!("GET {path}: invalid answer: {e}")))?;
            Ok(window_of(pods, rsp))
        })
    }
}

/// The [`Window`] of `pods` in a metrics API answer.
pub fn window_of(pods: &[PodInfo], rsp: SamplesResponse) -> Window {
    let mut by_pod: HashMap<(String, String), PodSamples> = rsp
        .pods
        .into_iter()
        .map(|p| ((p.namespace.clone(), p.pod.clone()), p))
        .collect();
    let mut window = Window {
        before: (rsp.window > 0.0).then(Scrapes::new),
        seconds: rsp.window,
        ..Window::default()
    };
    for pod in pods {
        let key = (pod.namespace.clone(), pod.name.clone());
        let Some(samples) = by_pod.remove(&key) else {
            window.missing.push(format!(
                "no samples of pod {}/{} in Prometheus (yet): it scrapes meshed pods every few \
                 seconds; is the pod meshed and running?",
                pod.namespace, pod.name
            ));
            continue;
        };
        if let (Some(before), Some(samples)) = (window.before.as_mut(), samples.before) {
            before.insert(key.clone(), samples);
        }
        window.after.insert(key, samples.after);
    }
    window
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::Sample;
    use crate::testing;

    fn pod(name: &str) -> PodInfo {
        testing::pod(name, "web")
    }

    fn sample(value: f64) -> Sample {
        Sample {
            name: "response_total".into(),
            labels: [("direction".to_string(), "inbound".to_string())].into(),
            value,
        }
    }

    #[test]
    fn an_answer_becomes_the_window_of_the_pods_asked_for() {
        let rsp = SamplesResponse {
            time: 100.0,
            window: 5.0,
            pods: vec![
                PodSamples {
                    namespace: "demo".into(),
                    pod: "web-1".into(),
                    before: Some(vec![sample(1.0)]),
                    after: vec![sample(3.0)],
                },
                PodSamples {
                    namespace: "demo".into(),
                    pod: "other".into(),
                    before: None,
                    after: vec![sample(9.0)],
                },
            ],
        };
        let json = serde_json::to_string(&rsp).unwrap();
        let rsp: SamplesResponse = serde_json::from_str(&json).unwrap();
        let w = window_of(&[pod("web-1"), pod("web-2")], rsp);
        let key = ("demo".to_string(), "web-1".to_string());
        assert_eq!(w.seconds, 5.0);
        assert_eq!(w.after[&key], vec![sample(3.0)]);
        assert_eq!(w.before.as_ref().unwrap()[&key], vec![sample(1.0)]);
        assert_eq!(w.after.len(), 1, "only the pods asked for");
        assert_eq!(w.missing.len(), 1);
        assert!(w.missing[0].contains("demo/web-2"), "{:?}", w.missing);
    }
}
