//! The proxy's golden metrics, in Prometheus text format.
//!
//! Every family carries `direction` (`inbound` or `outbound`) and `target_addr`; HTTP families
//! add `authority`. Where it is known, `tls` says whether the hop is mutual TLS between proxies:
//! `tls="true"` with the peer's verified identity (`client_id` inbound, `server_id` outbound), or
//! `tls="no_identity"` with a `no_tls_reason`. Label values come only from bounded sets: no
//! paths, and at most `MESH_PROXY_MAX_AUTHORITY_LABELS` distinct authorities (further ones count
//! as `overflow`).
//!
//! Label sets do not outlive their destination: every label set carries a `target_addr`, and
//! the sets of one target are held by a [`TargetMetrics`] that the stacks and connections using
//! the target hold; once none has for `MESH_PROXY_METRICS_IDLE_TIMEOUT`, the target's label sets
//! leave every family. An application that calls ten thousand addresses does not leave ten
//! thousand series behind.

use crate::{
    discover::DstLabels,
    svc::{lock, Cache},
};
use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Which side of the pod a connection or request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Whether a hop is mutual TLS between proxies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tls {
    /// Mutual TLS; the peer's verified identity.
    Established(Arc<str>),
    /// No mesh identity on this hop, and why (a `no_tls_reason` below).
    NoIdentity(&'static str),
}

/// `no_tls_reason`: the proxy runs with `MESH_PROXY_IDENTITY_DISABLED=true`.
pub const NO_TLS_DISABLED: &str = "disabled";
/// `no_tls_reason`: the client did not open mesh TLS (plaintext, or TLS for another name).
pub const NO_TLS_FROM_REMOTE: &str = "not_provided_by_remote";
/// `no_tls_reason`: discovery gave no identity for the endpoint (or did not know it).
pub const NO_TLS_FROM_DISCOVERY: &str = "not_provided_by_service_discovery";

/// Labels of a TCP connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub direction: Direction,
    pub target_addr: SocketAddr,
    /// Absent where one client connection's requests may go over different hops (outbound HTTP).
    pub tls: Option<Tls>,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub direction: Direction,
    pub authority: Arc<str>,
    pub target_addr: SocketAddr,
    /// The endpoint's labels from discovery (`dst_namespace`, `dst_service`, `dst_deployment`,
    /// `dst_pod`), when the target was discovered.
    pub dst: Option<Arc<DstLabels>>,
    pub tls: Tls,
    /// A codec's request: the codec and the operation (`codec="redis"`, `method="GET"`).
    pub codec: Option<CodecLabels>,
}

/// The labels a codec's requests add: which codec, and the operation (bounded: see
/// `codec::meter`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CodecLabels {
    pub codec: &'static str,
    pub method: Arc<str>,
}

/// Labels of an HTTP response: the request's, plus how it was classified.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseLabels {
    pub request: RequestLabels,
    pub classification: Classification,
    pub status_code: Option<u16>,
    pub grpc_status: Option<u32>,
    /// Why the proxy failed the request itself (`connect`, `upstream`, `timeout` …).
    pub error: Option<&'static str>,
}

/// Whether a response counts as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    Success,
    Failure,
}

/// The families the proxy exports, and the registry that renders them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub request_total: Family<RequestLabels, Counter>,
    pub response_total: Family<ResponseLabels, Counter>,
    pub response_latency_ms: Family<ResponseLabels, Histogram>,
    pub tcp_open_total: Family<TcpLabels, Counter>,
    pub tcp_close_total: Family<TcpLabels, Counter>,
    pub tcp_open_connections: Family<TcpLabels, Gauge>,
    pub tcp_read_bytes_total: Family<TcpLabels, Counter>,
    pub tcp_write_bytes_total: Family<TcpLabels, Counter>,
    /// Connections refused before any forwarding, by reason (`loop`, `detect`, …).
    pub tcp_refused_total: Family<RefusedLabels, Counter>,
    /// Tap events not delivered, by reason (`rate`: over the tap's rate; `full`: its channel
    /// was full).
    pub tap_events_dropped_total: Family<TapDropLabels, Counter>,
    /// Taps streaming now.
    pub tap_active: Gauge,
    /// The certificate's expiry and refreshes (registered when identity is on).
    pub identity: IdentityMetrics,
    /// Outbound routes and their backends, retries, faults and mirrors.
    pub route: RouteMetrics,
    /// Inbound authorization decisions and rate limits.
    pub authz: AuthzMetrics,
    authorities: Arc<AuthorityBudget>,
    targets: Arc<Cache<(Direction, SocketAddr), TargetMetrics>>,
}

/// Labels of a connection the proxy refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RefusedLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

/// Labels of a dropped tap event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TapDropLabels {
    pub reason: &'static str,
}

/// Latency buckets in milliseconds, from 1 ms to a minute.
const LATENCY_BUCKETS_MS: [f64; 22] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1_000.0, 2_000.0, 3_000.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0,
];

impl Metrics {
    /// The families; the identity ones only when `identity` is on. Label sets of targets
    /// nobody uses are kept for ten minutes (see [`Metrics::with_idle_timeout`]).
    pub fn new(max_authority_labels: usize, identity: bool) -> Self {
        Self::with_idle_timeout(max_authority_labels, identity, Duration::from_secs(600))
    }

    /// The families, with the label sets of a target nobody uses dropped after `idle`.
    pub fn with_idle_timeout(max_authority_labels: usize, identity: bool, idle: Duration) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            request_total: Family::default(),
            response_total: Family::default(),
            response_latency_ms: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS_MS.into_iter())
            }),
            tcp_open_total: Family::default(),
            tcp_close_total: Family::default(),
            tcp_open_connections: Family::default(),
            tcp_read_bytes_total: Family::default(),
            tcp_write_bytes_total: Family::default(),
            tcp_refused_total: Family::default(),
            tap_events_dropped_total: Family::default(),
            tap_active: Gauge::default(),
            identity: IdentityMetrics::default(),
            route: RouteMetrics::default(),
            authz: AuthzMetrics::default(),
            authorities: Arc::new(AuthorityBudget::new(max_authority_labels)),
            targets: Cache::new(idle),
        };
        registry.register("request", "HTTP requests received", m.request_total.clone());
        registry.register(
            "response",
            "HTTP responses completed, by classification",
            m.response_total.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Time from a request's headers to the end of its response, in milliseconds",
            m.response_latency_ms.clone(),
        );
        registry.register(
            "tcp_open",
            "TCP connections accepted",
            m.tcp_open_total.clone(),
        );
        registry.register(
            "tcp_close",
            "TCP connections closed",
            m.tcp_close_total.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "TCP connections open now",
            m.tcp_open_connections.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from clients",
            m.tcp_read_bytes_total.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to clients",
            m.tcp_write_bytes_total.clone(),
        );
        registry.register(
            "tcp_refused",
            "TCP connections refused by the proxy, by reason",
            m.tcp_refused_total.clone(),
        );
        registry.register(
            "tap_events_dropped",
            "Tap events not delivered, by reason (rate: over the tap's rate; full: its buffer was full)",
            m.tap_events_dropped_total.clone(),
        );
        registry.register("tap_active", "Taps streaming now", m.tap_active.clone());
        m.route.register(&mut registry);
        m.authz.register(&mut registry);
        if identity {
            m.identity.register(&mut registry);
        }
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The `authority` label value for a request's authority, within the label budget.
    pub fn authority_label(&self, authority: &str) -> Arc<str> {
        self.authorities.label(authority)
    }

    /// The label sets of one target of one direction: hold it while the target is in use.
    pub fn target(&self, direction: Direction, addr: SocketAddr) -> Arc<TargetMetrics> {
        self.targets
            .get_or_insert_with(&(direction, addr), || TargetMetrics {
                request_total: self.request_total.clone(),
                response_total: self.response_total.clone(),
                response_latency_ms: self.response_latency_ms.clone(),
                tcp_open_total: self.tcp_open_total.clone(),
                tcp_close_total: self.tcp_close_total.clone(),
                tcp_open_connections: self.tcp_open_connections.clone(),
                tcp_read_bytes_total: self.tcp_read_bytes_total.clone(),
                tcp_write_bytes_total: self.tcp_write_bytes_total.clone(),
                sets: Mutex::default(),
            })
    }

    /// How many targets have label sets now.
    pub fn targets(&self) -> usize {
        self.targets.len()
    }
}

/// The label sets of one target (a direction and a `target_addr`): they leave the families when
/// this is dropped, which the metrics' cache does once nobody has held it for the idle timeout.
pub struct TargetMetrics {
    request_total: Family<RequestLabels, Counter>,
    response_total: Family<ResponseLabels, Counter>,
    response_latency_ms: Family<ResponseLabels, Histogram>,
    tcp_open_total: Family<TcpLabels, Counter>,
    tcp_close_total: Family<TcpLabels, Counter>,
    tcp_open_connections: Family<TcpLabels, Gauge>,
    tcp_read_bytes_total: Family<TcpLabels, Counter>,
    tcp_write_bytes_total: Family<TcpLabels, Counter>,
    sets: Mutex<TargetSets>,
}

#[derive(Default)]
struct TargetSets {
    requests: HashSet<RequestLabels>,
    responses: HashSet<ResponseLabels>,
    tcp: HashSet<TcpLabels>,
}

/// A TCP label set's metrics.
#[derive(Clone)]
pub struct TcpHandles {
    pub open_total: Counter,
    pub close_total: Counter,
    pub open_connections: Gauge,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
}

impl TargetMetrics {
    /// `request_total` of `labels` (whose `target_addr` is this target's).
    pub fn request_total(&self, labels: &RequestLabels) -> Counter {
        let mut sets = lock(&self.sets);
        if !sets.requests.contains(labels) {
            sets.requests.insert(labels.clone());
        }
        self.request_total.get_or_create(labels).clone()
    }

    /// `response_total` and `response_latency_ms` of `labels`.
    pub fn response(&self, labels: &ResponseLabels) -> (Counter, Histogram) {
        let mut sets = lock(&self.sets);
        if !sets.responses.contains(labels) {
            sets.responses.insert(labels.clone());
        }
        (
            self.response_total.get_or_create(labels).clone(),
            self.response_latency_ms.get_or_create(labels).clone(),
        )
    }

    /// The `tcp_*` metrics of `labels`.
    pub fn tcp(&self, labels: &TcpLabels) -> TcpHandles {
        let mut sets = lock(&self.sets);
        if !sets.tcp.contains(labels) {
            sets.tcp.insert(labels.clone());
        }
        TcpHandles {
            open_total: self.tcp_open_total.get_or_create(labels).clone(),
            close_total: self.tcp_close_total.get_or_create(labels).clone(),
            open_connections: self.tcp_open_connections.get_or_create(labels).clone(),
            read_bytes: self.tcp_read_bytes_total.get_or_create(labels).clone(),
            write_bytes: self.tcp_write_bytes_total.get_or_create(labels).clone(),
        }
    }
}

impl Drop for TargetMetrics {
    fn drop(&mut self) {
        let sets = std::mem::take(&mut *lock(&self.sets));
        for labels in &sets.requests {
            self.request_total.remove(labels);
        }
        for labels in &sets.responses {
            self.response_total.remove(labels);
            self.response_latency_ms.remove(labels);
        }
        for labels in &sets.tcp {
            self.tcp_open_total.remove(labels);
            self.tcp_close_total.remove(labels);
            self.tcp_open_connections.remove(labels);
            self.tcp_read_bytes_total.remove(labels);
            self.tcp_write_bytes_total.remove(labels);
        }
    }
}

/// Interns authority label values, up to a fixed number of distinct ones.
struct AuthorityBudget {
    max: usize,
    seen: Mutex<HashSet<Arc<str>>>,
    overflow: Arc<str>,
}

impl AuthorityBudget {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
            overflow: Arc::from("overflow"),
        }
    }

    fn label(&self, authority: &str) -> Arc<str> {
        // Called on every request: copy only an authority that is not lower case already.
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(authority.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(authority)
        };
        // A poisoned lock only means another thread panicked mid-insert; the set is still valid.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(label) = seen.get(authority.as_ref()) {
            return label.clone();
        }
        if seen.len() >= self.max {
            return self.overflow.clone();
        }
        let label: Arc<str> = Arc::from(authority.as_ref());
        seen.insert(label.clone());
        label
    }
}

// === label encoding ===

fn label(encoder: &mut LabelSetEncoder, key: &str, value: &str) -> Result<(), std::fmt::Error> {
    (key, value).encode(encoder.encode_label())
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "direction", self.direction.as_str())?;
        label(&mut e, "target_addr", &self.target_addr.to_string())?;
        match &self.tls {
            Some(tls) => encode_tls(tls, self.direction, &mut e),
            None => Ok(()),
        }
    }
}

fn encode_tls(
    tls: &Tls,
    direction: Direction,
    e: &mut LabelSetEncoder,
) -> Result<(), std::fmt::Error> {
    match tls {
        Tls::Established(peer) => {
            label(e, "tls", "true")?;
            let key = match direction {
                Direction::Inbound => "client_id",
                Direction::Outbound => "server_id",
            };
            label(e, key, peer)
        }
        Tls::NoIdentity(reason) => {
            label(e, "tls", "no_identity")?;
            label(e, "no_tls_reason", reason)
        }
    }
}

impl EncodeLabelSet for RefusedLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "direction", self.direction.as_str())?;
        label(&mut e, "reason", self.reason)
    }
}

impl EncodeLabelSet for TapDropLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "reason", self.reason)
    }
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_request(self, &mut e)
    }
}

fn encode_request(r: &RequestLabels, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
    label(e, "direction", r.direction.as_str())?;
    label(e, "authority", &r.authority)?;
    label(e, "target_addr", &r.target_addr.to_string())?;
    if let Some(dst) = &r.dst {
        for (key, value) in [
            ("dst_namespace", &dst.namespace),
            ("dst_service", &dst.service),
            ("dst_deployment", &dst.deployment),
            ("dst_pod", &dst.pod),
        ] {
            if let Some(value) = value {
                label(e, key, value)?;
            }
        }
    }
    encode_tls(&r.tls, r.direction, e)?;
    if let Some(c) = &r.codec {
        label(e, "codec", c.codec)?;
        label(e, "method", &c.method)?;
    }
    Ok(())
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_request(&self.request, &mut e)?;
        let classification = match self.classification {
            Classification::Success => "success",
            Classification::Failure => "failure",
        };
        label(&mut e, "classification", classification)?;
        if let Some(status) = self.status_code {
            label(&mut e, "status_code", &status.to_string())?;
        }
        if let Some(grpc) = self.grpc_status {
            label(&mut e, "grpc_status", &grpc.to_string())?;
        }
        if let Some(error) = self.error {
            label(&mut e, "error", error)?;
        }
        Ok(())
    }
}

/// The identity metric families.
#[derive(Clone, Default)]
pub struct IdentityMetrics {
    /// `identity_cert_expiration_timestamp_seconds`: when the current certificate expires.
    pub expiration: Gauge,
    /// `identity_cert_refresh_total{result}`: certify calls, by outcome.
    pub refresh_total: Family<RefreshLabels, Counter>,
}

/// The outcome of a certify call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub result: &'static str,
}

impl IdentityMetrics {
    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current certificate expires, in seconds since the Unix epoch",
            self.expiration.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "Certificate requests to the identity controller, by result",
            self.refresh_total.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_targets_label_sets_leave_once_nobody_uses_it() {
        let m = Metrics::with_idle_timeout(10, false, Duration::from_millis(1));
        let addr: SocketAddr = "10.0.0.9:80".parse().unwrap();
        let target = m.target(Direction::Outbound, addr);
        let labels = RequestLabels {
            direction: Direction::Outbound,
            authority: m.authority_label("web:80"),
            target_addr: addr,
            dst: None,
            tls: Tls::NoIdentity(NO_TLS_DISABLED),
            codec: None,
        };
        target.request_total(&labels).inc();
        let tcp = TcpLabels {
            direction: Direction::Outbound,
            target_addr: addr,
            tls: None,
        };
        target.tcp(&tcp).open_total.inc();
        assert!(m.encode().contains("10.0.0.9:80"));
        let now = std::time::Instant::now();
        m.targets.sweep(now);
        m.targets.sweep(now + Duration::from_secs(1));
        assert!(m.encode().contains("10.0.0.9:80"), "held targets stay");
        drop(target);
        m.targets.sweep(now + Duration::from_secs(2));
        m.targets.sweep(now + Duration::from_secs(3));
        assert!(!m.encode().contains("10.0.0.9:80"), "{}", m.encode());
        assert_eq!(m.targets(), 0);
    }

    #[test]
    fn families_render_with_the_contract_names() {
        let m = Metrics::new(10, false);
        let request = RequestLabels {
            direction: Direction::Outbound,
            authority: m.authority_label("Web.Demo:80"),
            target_addr: "10.244.0.7:80".parse().unwrap(),
            dst: None,
            tls: Tls::Established(Arc::from(
                "web.demo.serviceaccount.identity.mesh.cluster.local",
            )),
            codec: None,
        };
        m.request_total.get_or_create(&request).inc();
        let rsp = ResponseLabels {
            request,
            classification: Classification::Failure,
            status_code: Some(200),
            grpc_status: Some(2),
            error: None,
        };
        m.response_total.get_or_create(&rsp).inc();
        m.response_latency_ms.get_or_create(&rsp).observe(3.0);
        let tcp = TcpLabels {
            direction: Direction::Inbound,
            target_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: Some(Tls::NoIdentity(NO_TLS_FROM_REMOTE)),
        };
        m.tcp_open_total.get_or_create(&tcp).inc();
        m.tcp_close_total.get_or_create(&tcp).inc();
        m.tcp_read_bytes_total.get_or_create(&tcp).inc_by(10);
        m.tcp_write_bytes_total.get_or_create(&tcp).inc_by(20);
        let text = m.encode();
        for line in [
            r#"request_total{direction="outbound",authority="web.demo:80",target_addr="10.244.0.7:80",tls="true",server_id="web.demo.serviceaccount.identity.mesh.cluster.local"} 1"#,
            r#"response_total{direction="outbound",authority="web.demo:80",target_addr="10.244.0.7:80",tls="true",server_id="web.demo.serviceaccount.identity.mesh.cluster.local",classification="failure",status_code="200",grpc_status="2"} 1"#,
            r#"response_latency_ms_bucket{le="5.0",direction="outbound",authority="web.demo:80",target_addr="10.244.0.7:80",tls="true",server_id="web.demo.serviceaccount.identity.mesh.cluster.local",classification="failure",status_code="200",grpc_status="2"} 1"#,
            r#"tcp_open_total{direction="inbound",target_addr="127.0.0.1:8080",tls="no_identity",no_tls_reason="not_provided_by_remote"} 1"#,
            r#"tcp_close_total{direction="inbound",target_addr="127.0.0.1:8080",tls="no_identity",no_tls_reason="not_provided_by_remote"} 1"#,
            r#"tcp_read_bytes_total{direction="inbound",target_addr="127.0.0.1:8080",tls="no_identity",no_tls_reason="not_provided_by_remote"} 10"#,
            r#"tcp_write_bytes_total{direction="inbound",target_addr="127.0.0.1:8080",tls="no_identity",no_tls_reason="not_provided_by_remote"} 20"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn destination_labels_follow_the_target() {
        let m = Metrics::new(10, false);
        let dst = DstLabels {
            namespace: Some("demo".into()),
            service: Some("web-svc".into()),
            deployment: Some("web".into()),
            pod: Some("web-1".into()),
        };
        let labels = RequestLabels {
            direction: Direction::Outbound,
            authority: m.authority_label("web-svc.demo.svc.cluster.local:80"),
            target_addr: "10.244.0.5:8080".parse().unwrap(),
            dst: Some(Arc::new(dst)),
            tls: Tls::NoIdentity(NO_TLS_FROM_DISCOVERY),
            codec: None,
        };
        m.request_total.get_or_create(&labels).inc();
        let line = r#"request_total{direction="outbound",authority="web-svc.demo.svc.cluster.local:80",target_addr="10.244.0.5:8080",dst_namespace="demo",dst_service="web-svc",dst_deployment="web",dst_pod="web-1",tls="no_identity",no_tls_reason="not_provided_by_service_discovery"} 1"#;
        assert!(m.encode().contains(line), "{}", m.encode());
    }

    #[test]
    fn authority_labels_are_bounded() {
        let m = Metrics::new(2, false);
        assert_eq!(&*m.authority_label("a:80"), "a:80");
        assert_eq!(&*m.authority_label("B:80"), "b:80");
        assert_eq!(&*m.authority_label("c:80"), "overflow");
        assert_eq!(&*m.authority_label("A:80"), "a:80", "known values stay");
    }
}

// === routes ===

/// The labels of an outbound route: the Service it belongs to and the route (Gateway API's
/// kind, namespace and name; `default` for a Service without routes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub parent_namespace: Arc<str>,
    pub parent_name: Arc<str>,
    pub parent_port: u16,
    pub route_kind: &'static str,
    pub route_namespace: Arc<str>,
    pub route_name: Arc<str>,
}

/// The labels of a route's backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendLabels {
    pub route: Arc<RouteLabels>,
    /// `Service`, or `default` (the route's own destination).
    pub kind: &'static str,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: u16,
}

/// A route's or backend's response, classified.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Classified<L> {
    pub labels: L,
    pub classification: Classification,
}

/// A retry attempt and how it ended (`success`, `failure`), or a retry not made because the
/// request's body was too large to replay (`not_replayable`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RetryLabels {
    pub route: Arc<RouteLabels>,
    pub result: &'static str,
}

/// A Service whose retry budget refused a retry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParentLabels(pub Arc<RouteLabels>);

/// An injected fault.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaultLabels {
    pub route: Arc<RouteLabels>,
    pub fault: Arc<str>,
    /// `abort` or `delay`.
    pub kind: &'static str,
}

/// The families of outbound routes. Their label sets come from the routes the controller
/// serves, a bounded set.
#[derive(Clone)]
pub struct RouteMetrics {
    pub request_total: Family<RouteKey, Counter>,
    pub response_total: Family<Classified<RouteKey>, Counter>,
    pub response_latency_ms: Family<RouteKey, Histogram>,
    pub backend_request_total: Family<BackendKey, Counter>,
    pub backend_response_total: Family<Classified<BackendKey>, Counter>,
    pub backend_response_latency_ms: Family<BackendKey, Histogram>,
    pub retry_total: Family<RetryLabels, Counter>,
    pub retry_budget_exhausted_total: Family<ParentLabels, Counter>,
    pub fault_injected_total: Family<FaultLabels, Counter>,
    pub mirror_total: Family<BackendKey, Counter>,
    pub mirror_dropped_total: Family<BackendKey, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS.into_iter())
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            request_total: Family::default(),
            response_total: Family::default(),
            response_latency_ms: Family::new_with_constructor(latency_histogram),
            backend_request_total: Family::default(),
            backend_response_total: Family::default(),
            backend_response_latency_ms: Family::new_with_constructor(latency_histogram),
            retry_total: Family::default(),
            retry_budget_exhausted_total: Family::default(),
            fault_injected_total: Family::default(),
            mirror_total: Family::default(),
            mirror_dropped_total: Family::default(),
        }
    }
}

impl RouteMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "outbound_http_route_request",
            "Requests by outbound route",
            self.request_total.clone(),
        );
        registry.register(
            "outbound_http_route_response",
            "Responses by outbound route, by classification (retries included in one response)",
            self.response_total.clone(),
        );
        registry.register(
            "outbound_http_route_response_latency_ms",
            "Time from a routed request's headers to its response's headers, retries included, in milliseconds",
            self.response_latency_ms.clone(),
        );
        registry.register(
            "outbound_http_route_backend_request",
            "Attempts sent to each backend of a route",
            self.backend_request_total.clone(),
        );
        registry.register(
            "outbound_http_route_backend_response",
            "Responses of each backend of a route, by classification",
            self.backend_response_total.clone(),
        );
        registry.register(
            "outbound_http_route_backend_response_latency_ms",
            "Time from an attempt's headers to its response's headers, in milliseconds",
            self.backend_response_latency_ms.clone(),
        );
        registry.register(
            "outbound_http_retry",
            "Retries by outcome (success, failure), and retries not made because the body was too large to replay (not_replayable)",
            self.retry_total.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused by a Service's retry budget",
            self.retry_budget_exhausted_total.clone(),
        );
        registry.register(
            "fault_injected",
            "Requests delayed or aborted by an HTTPFault",
            self.fault_injected_total.clone(),
        );
        registry.register(
            "mirror",
            "Requests copied to a mirror backend",
            self.mirror_total.clone(),
        );
        registry.register(
            "mirror_dropped",
            "Mirror copies dropped because too many were in flight or the mirror was too slow",
            self.mirror_dropped_total.clone(),
        );
    }
}

impl RouteMetrics {
    /// Removes a route's label sets (its destination is forgotten).
    pub fn forget_route(&self, route: &Arc<RouteLabels>) {
        let key = RouteKey(route.clone());
        self.request_total.remove(&key);
        self.response_latency_ms.remove(&key);
        for classification in [Classification::Success, Classification::Failure] {
            self.response_total.remove(&Classified {
                labels: key.clone(),
                classification,
            });
        }
        for result in ["success", "failure", "not_replayable"] {
            self.retry_total.remove(&RetryLabels {
                route: route.clone(),
                result,
            });
        }
        self.retry_budget_exhausted_total
            .remove(&ParentLabels(route.clone()));
    }

    /// Removes a route backend's label sets.
    pub fn forget_backend(&self, backend: &Arc<BackendLabels>) {
        let key = BackendKey(backend.clone());
        self.backend_request_total.remove(&key);
        self.backend_response_latency_ms.remove(&key);
        self.mirror_total.remove(&key);
        self.mirror_dropped_total.remove(&key);
        for classification in [Classification::Success, Classification::Failure] {
            self.backend_response_total.remove(&Classified {
                labels: key.clone(),
                classification,
            });
        }
    }

    /// Removes a fault's label sets.
    pub fn forget_fault(&self, route: &Arc<RouteLabels>, fault: &Arc<str>) {
        for kind in ["abort", "delay"] {
            self.fault_injected_total.remove(&FaultLabels {
                route: route.clone(),
                fault: fault.clone(),
                kind,
            });
        }
    }
}

fn encode_route(r: &RouteLabels, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
    label(e, "parent_namespace", &r.parent_namespace)?;
    label(e, "parent_name", &r.parent_name)?;
    label(e, "parent_port", &r.parent_port.to_string())?;
    label(e, "route_kind", r.route_kind)?;
    label(e, "route_namespace", &r.route_namespace)?;
    label(e, "route_name", &r.route_name)
}

fn encode_backend(b: &BackendLabels, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
    encode_route(&b.route, e)?;
    label(e, "backend_kind", b.kind)?;
    label(e, "backend_namespace", &b.namespace)?;
    label(e, "backend_name", &b.name)?;
    label(e, "backend_port", &b.port.to_string())
}

fn classification(c: Classification) -> &'static str {
    match c {
        Classification::Success => "success",
        Classification::Failure => "failure",
    }
}

/// A route's label set, shared by its handles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey(pub Arc<RouteLabels>);

/// A backend's label set, shared by its handles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey(pub Arc<BackendLabels>);

impl EncodeLabelSet for RouteKey {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_route(&self.0, &mut e)
    }
}

impl EncodeLabelSet for BackendKey {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_backend(&self.0, &mut e)
    }
}

impl EncodeLabelSet for Classified<RouteKey> {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_route(&self.labels.0, &mut e)?;
        label(
            &mut e,
            "classification",
            classification(self.classification),
        )
    }
}

impl EncodeLabelSet for Classified<BackendKey> {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_backend(&self.labels.0, &mut e)?;
        label(
            &mut e,
            "classification",
            classification(self.classification),
        )
    }
}

impl EncodeLabelSet for RetryLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_route(&self.route, &mut e)?;
        label(&mut e, "result", self.result)
    }
}

impl EncodeLabelSet for ParentLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "parent_namespace", &self.0.parent_namespace)?;
        label(&mut e, "parent_name", &self.0.parent_name)?;
        label(&mut e, "parent_port", &self.0.parent_port.to_string())
    }
}

impl EncodeLabelSet for FaultLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_route(&self.route, &mut e)?;
        label(&mut e, "fault", &self.fault)?;
        label(&mut e, "kind", self.kind)
    }
}

// === inbound authorization ===

/// Who decided on an inbound connection or request: the Server (or default policy), the
/// inbound route (HTTP), and the authorization that allowed it (none on deny, or on an audit
/// that no authorization allowed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthzLabels {
    /// `Server`, or `default` for a default inbound policy.
    pub srv_kind: &'static str,
    /// The Server's name, or the default policy's (`all-unauthenticated`).
    pub srv_name: Arc<str>,
    /// HTTP only: the inbound HTTPRoute, or `default` when the Server has none.
    pub route_name: Option<Arc<str>>,
    /// `AuthorizationPolicy`, `default`, or empty.
    pub authz_kind: Arc<str>,
    /// The authorization's name, or empty.
    pub authz_name: Arc<str>,
}

/// A request a local rate limit refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitLabels {
    pub srv_kind: &'static str,
    pub srv_name: Arc<str>,
    /// The `HTTPLocalRateLimitPolicy`.
    pub ratelimit_name: Arc<str>,
    /// Which limit refused it: `total`, `identity` or `override`.
    pub scope: &'static str,
}

/// The families of inbound policy. Their label sets come from the policies the controller
/// serves, a bounded set.
#[derive(Clone, Default)]
pub struct AuthzMetrics {
    pub http_allow_total: Family<AuthzLabels, Counter>,
    pub http_deny_total: Family<AuthzLabels, Counter>,
    pub http_audit_total: Family<AuthzLabels, Counter>,
    pub tcp_allow_total: Family<AuthzLabels, Counter>,
    pub tcp_deny_total: Family<AuthzLabels, Counter>,
    pub tcp_audit_total: Family<AuthzLabels, Counter>,
    pub ratelimit_total: Family<RateLimitLabels, Counter>,
    /// `inbound_http_client_id_removed_total{tls}`: requests that arrived with a
    /// `mesh-client-id` of their own (removed, or replaced by the proven identity).
    pub client_id_removed_total: Family<ClientIdLabels, Counter>,
}

/// Labels of a request whose own `mesh-client-id` the proxy removed: whether its connection
/// was mutual TLS (`tls="true"`: replaced by the proven identity) or not (`tls="false"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientIdLabels {
    pub tls: bool,
}

impl EncodeLabelSet for ClientIdLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "tls", if self.tls { "true" } else { "false" })
    }
}

impl std::fmt::Debug for AuthzMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthzMetrics")
    }
}

impl AuthzMetrics {
    fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            ("inbound_http_authz_allow", "Inbound requests an authorization allowed", &self.http_allow_total),
            ("inbound_http_authz_deny", "Inbound requests refused: no authorization allowed them (403, gRPC PERMISSION_DENIED)", &self.http_deny_total),
            ("inbound_http_authz_audit", "Inbound requests no authorization allowed, let through by an audit policy", &self.http_audit_total),
            ("inbound_tcp_authz_allow", "Inbound opaque connections an authorization allowed", &self.tcp_allow_total),
            ("inbound_tcp_authz_deny", "Inbound opaque connections refused: no authorization allowed them", &self.tcp_deny_total),
            ("inbound_tcp_authz_audit", "Inbound opaque connections no authorization allowed, let through by an audit policy", &self.tcp_audit_total),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "inbound_http_local_ratelimit",
            "Inbound requests refused by a local rate limit (429, gRPC RESOURCE_EXHAUSTED)",
            self.ratelimit_total.clone(),
        );
        registry.register(
            "inbound_http_client_id_removed",
            "Inbound requests that arrived with a mesh-client-id header of their own, removed (or replaced by the identity the client proved): only the pod's own proxy sets it",
            self.client_id_removed_total.clone(),
        );
    }
}

impl EncodeLabelSet for AuthzLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "srv_kind", self.srv_kind)?;
        label(&mut e, "srv_name", &self.srv_name)?;
        if let Some(route) = &self.route_name {
            label(&mut e, "route_name", route)?;
        }
        label(&mut e, "authz_kind", &self.authz_kind)?;
        label(&mut e, "authz_name", &self.authz_name)
    }
}

impl EncodeLabelSet for RateLimitLabels {
    fn encode(&self, mut e: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(&mut e, "srv_kind", self.srv_kind)?;
        label(&mut e, "srv_name", &self.srv_name)?;
        label(&mut e, "ratelimit_name", &self.ratelimit_name)?;
        label(&mut e, "scope", self.scope)
    }
}
