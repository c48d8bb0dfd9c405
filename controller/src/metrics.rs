//! The controller's Prometheus metrics: watchers, index sizes, update latency.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::index::Sizes;

/// The metric families, registered once.
#[derive(Clone)]
pub struct Metrics {
    /// Open destination watches.
    pub watchers: Gauge,
    services: Gauge,
    endpoint_slices: Gauge,
    pods: Gauge,
    /// Seconds from a source event to the push to the watchers.
    pub update_latency: Histogram,
    registry: std::sync::Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mesh_destination");
        let watchers = Gauge::default();
        registry.register("watchers", "Open destination watches", watchers.clone());
        let services = Gauge::default();
        registry.register("index_services", "Services in the index", services.clone());
        let endpoint_slices = Gauge::default();
        registry.register(
            "index_endpoint_slices",
            "EndpointSlices in the index",
            endpoint_slices.clone(),
        );
        let pods = Gauge::default();
        registry.register("index_pods", "Pods in the index", pods.clone());
        let update_latency = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register(
            "update_latency_seconds",
            "Time from a source event to the push to watchers",
            update_latency.clone(),
        );
        Self {
            watchers,
            services,
            endpoint_slices,
            pods,
            update_latency,
            registry: std::sync::Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Records the index's sizes.
    pub fn set_sizes(&self, sizes: Sizes) {
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.services.set(g(sizes.services));
        self.endpoint_slices.set(g(sizes.endpoint_slices));
        self.pods.set(g(sizes.pods));
    }

    /// The OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
