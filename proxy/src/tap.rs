//! Tap: live events of the requests the proxy forwards, for `GET /v1/tap` on the admin server.
//!
//! [`Taps`] is the registry of active taps, shared by both stacks and the admin
//! server. Tapping costs nothing when nobody taps: [`Taps::is_active`] is one atomic load, and
//! the forwarder builds nothing unless it says yes. A request is matched once, at its start,
//! against every tap's [`Filter`]; its response events go to the taps that matched (and took)
//! its start.
//!
//! A tap never slows traffic: each has a bounded channel that is only ever `try_send`-ed, and a
//! token bucket of `max_rate` events per second (a second's worth of burst). A request is taken
//! whole: its start takes the tokens of its three events, so a tap sees complete requests, and
//! over any time `t` it gets at most `max_rate · t + burst` events. A request a tap cannot take
//! (out of tokens) or an event that does not fit its channel is dropped and counted, in
//! `tap_events_dropped_total` and in the [`Event::Dropped`] the tap gets before its next event.

use crate::{
    discover::DstLabels,
    metrics::{Direction, Metrics, TapDropLabels},
};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use mesh_api::identity::Identity;
use mesh_api::tap::{Event, Filter, Peer, ProxyDirection, StreamId, DEFAULT_MAX_RATE};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    task::{Context, Poll},
    time::{Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc;

/// Request headers streamed by default: what helps to read a request and says nothing secret.
pub const DEFAULT_HEADERS: &[&str] = &[
    "accept",
    "content-length",
    "content-type",
    "grpc-accept-encoding",
    "grpc-encoding",
    "grpc-timeout",
    "te",
    "user-agent",
    "x-request-id",
];

/// Headers never streamed, whatever `MESH_PROXY_TAP_HEADERS` says; `MESH_PROXY_TAP_SENSITIVE_HEADERS`
/// adds to them.
pub const DEFAULT_SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
];

/// How many events a request gives a tap: its start, its response's start and its end.
const EVENTS_PER_REQUEST: f64 = 3.0;

/// What taps may see and who may tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// `MESH_PROXY_TAP_IDENTITY`: the identity allowed to tap over mutual TLS (by default the
    /// viz component's, `mesh-tap.mesh-viz` in the proxy's trust domain); `None` when identity is
    /// off, and then only the pod's loopback may tap.
    pub identity: Option<String>,
    /// The request headers streamed: [`DEFAULT_HEADERS`] and `MESH_PROXY_TAP_HEADERS`, lower case.
    pub headers: Vec<String>,
    /// The headers never streamed: [`DEFAULT_SENSITIVE_HEADERS`] and
    /// `MESH_PROXY_TAP_SENSITIVE_HEADERS`, lower case.
    pub sensitive_headers: Vec<String>,
    /// What is known of the proxy's own pod (`pod`, `namespace`, and its workload, e.g.
    /// `deployment`): the labels of the source of outbound requests and of the destination of
    /// inbound ones.
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for TapConfig {
    fn default() -> Self {
        Self {
            identity: None,
            headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            sensitive_headers: DEFAULT_SENSITIVE_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            pod_labels: BTreeMap::new(),
        }
    }
}

/// The registry of active taps; cheap to clone.
#[derive(Clone)]
pub struct Taps {
    inner: Arc<Inner>,
}

struct Inner {
    /// How many taps there are: the one thing every request reads.
    active: AtomicUsize,
    /// The taps, replaced as a whole when one comes or goes so a request reads a snapshot.
    taps: RwLock<Arc<[Arc<Tap>]>>,
    next_tap: AtomicU64,
    connections: AtomicU64,
    /// The headers streamed, minus the sensitive ones.
    headers: Vec<http::HeaderName>,
    pod_labels: BTreeMap<String, String>,
    /// The proxy's own identity (DNS form), when identity is on.
    own_identity: Option<Arc<str>>,
    metrics: Metrics,
}

/// One tap: its filter, its channel and its budget.
struct Tap {
    id: u64,
    filter: Filter,
    tx: mpsc::Sender<Event>,
    bucket: Mutex<Bucket>,
    /// Events dropped since the last one delivered, reported before the next.
    dropped: AtomicU64,
}

/// One client connection's numbering of its tapped requests.
#[derive(Debug)]
pub struct ConnTap {
    connection: u64,
    streams: AtomicU64,
}

/// What the forwarder knows of a request when it starts; borrowed, built only while tapping.
pub struct RequestMeta<'a> {
    pub direction: Direction,
    /// The operation: an HTTP method, or a codec's command name.
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub client: SocketAddr,
    /// Inbound: the identity the client proved over mutual TLS.
    pub client_id: Option<&'a Arc<str>>,
    /// Where the request goes: the endpoint outbound, the address the client dialed inbound.
    pub target: SocketAddr,
    /// Outbound: the endpoint's labels from discovery.
    pub dst: Option<&'a DstLabels>,
    /// Outbound: the endpoint's identity, when the hop is mutual TLS.
    pub server_id: Option<&'a Arc<str>>,
    /// Whether the hop is mutual TLS (as the `tls` metric label says).
    pub tls: bool,
    /// Outbound: the route that took the request.
    pub route: Option<&'a crate::metrics::RouteLabels>,
}

/// A request some taps took: where its response events go.
pub struct Tapped {
    taps: Vec<Arc<Tap>>,
    id: StreamId,
    start: Instant,
    inner: Arc<Inner>,
}

/// A tap's events as the admin server streams them, until the client goes away (the tap is
/// removed when this is dropped) or the proxy shuts down.
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    _guard: TapGuard,
}

struct TapGuard {
    id: u64,
    inner: Arc<Inner>,
}

/// A token bucket: `rate` tokens a second, at most `burst` held.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Taps {
    /// An empty registry; `own_identity` is the proxy's identity (DNS form) when identity is on.
    pub fn new(config: &TapConfig, own_identity: Option<Arc<str>>, metrics: Metrics) -> Self {
        let headers = config
            .headers
            .iter()
            .filter(|h| {
                !config
                    .sensitive_headers
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(h))
            })
            .filter_map(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        Self {
            inner: Arc::new(Inner {
                active: AtomicUsize::new(0),
                taps: RwLock::new(Arc::from(Vec::new())),
                next_tap: AtomicU64::new(1),
                connections: AtomicU64::new(1),
                headers,
                pod_labels: config.pod_labels.clone(),
                own_identity,
                metrics,
            }),
        }
    }

    /// Whether anyone taps: one atomic load, the whole cost of tapping when nobody does.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Relaxed) != 0
    }

    /// How many taps there are.
    pub fn len(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Numbers a new client connection (from 1).
    pub fn connection(&self) -> ConnTap {
        ConnTap {
            connection: self.inner.connections.fetch_add(1, Ordering::Relaxed),
            streams: AtomicU64::new(1),
        }
    }

    /// Starts a tap with `filter`: its events arrive on the subscription until it is dropped.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        let rate = f64::from(filter.max_rate.unwrap_or(DEFAULT_MAX_RATE).max(1));
        // A second's worth of burst, and always room for one whole request.
        let burst = rate.max(EVENTS_PER_REQUEST);
        let capacity = (burst as usize).clamp(16, 4096);
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.inner.next_tap.fetch_add(1, Ordering::Relaxed);
        let tap = Arc::new(Tap {
            id,
            filter,
            tx,
            bucket: Mutex::new(Bucket::new(rate, burst, Instant::now())),
            dropped: AtomicU64::new(0),
        });
        {
            let mut taps = write(&self.inner.taps);
            let mut next: Vec<Arc<Tap>> = taps.iter().cloned().collect();
            next.push(tap);
            self.inner.active.store(next.len(), Ordering::Relaxed);
            *taps = Arc::from(next);
        }
        self.inner.metrics.tap_active.inc();
        Subscription {
            rx,
            _guard: TapGuard {
                id,
                inner: self.inner.clone(),
            },
        }
    }

    /// Matches a starting request against the taps; the ones that match and have room for it
    /// get its [`Event::RequestStart`], and the returned [`Tapped`] sends them its response's
    /// events. `None` when no tap takes it.
    pub fn start(&self, conn: &ConnTap, start: Instant, meta: &RequestMeta<'_>) -> Option<Tapped> {
        self.start_at(conn, start, meta, Instant::now())
    }

    /// [`Taps::start`], with the buckets read at `now`.
    fn start_at(
        &self,
        conn: &ConnTap,
        start: Instant,
        meta: &RequestMeta<'_>,
        now: Instant,
    ) -> Option<Tapped> {
        let snapshot = read(&self.inner.taps).clone();
        let mut peers: Option<(Peer, Peer)> = None;
        let mut matched = Vec::new();
        for tap in snapshot.iter() {
            if !request_matches(&tap.filter, meta) {
                continue;
            }
            let (source, destination) = peers.get_or_insert_with(|| self.inner.peers(meta));
            if labels_match(&tap.filter.source_labels, &source.labels)
                && labels_match(&tap.filter.destination_labels, &destination.labels)
            {
                matched.push(tap.clone());
            }
        }
        if matched.is_empty() {
            return None;
        }
        let (source, destination) = peers?;
        let id = StreamId {
            connection: conn.connection,
            stream: conn.streams.fetch_add(1, Ordering::Relaxed),
        };
        let event = Event::RequestStart {
            id,
            direction: match meta.direction {
                Direction::Inbound => ProxyDirection::Inbound,
                Direction::Outbound => ProxyDirection::Outbound,
            },
            source,
            destination,
            tls: meta.tls,
            method: meta.method.to_string(),
            authority: meta.authority.to_string(),
            path: meta.path.to_string(),
            headers: self.inner.headers(meta.headers),
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            route: meta.route.filter(|r| r.route_kind != "default").map(|r| {
                mesh_api::tap::RouteRef {
                    kind: r.route_kind.to_owned(),
                    namespace: r.route_namespace.to_string(),
                    name: r.route_name.to_string(),
                }
            }),
        };
        matched.retain(|tap| tap.admit(&event, now, &self.inner.metrics));
        if matched.is_empty() {
            return None;
        }
        Some(Tapped {
            taps: matched,
            id,
            start,
            inner: self.inner.clone(),
        })
    }
}

impl Inner {
    /// The request's source and destination as a tap shows them.
    fn peers(&self, meta: &RequestMeta<'_>) -> (Peer, Peer) {
        match meta.direction {
            Direction::Outbound => {
                let source = Peer {
                    addr: meta.client,
                    identity: self.own_identity.as_deref().map(str::to_string),
                    labels: self.pod_labels.clone(),
                };
                let mut labels = BTreeMap::new();
                if let Some(dst) = meta.dst {
                    for (key, value) in [
                        ("namespace", &dst.namespace),
                        ("service", &dst.service),
                        ("deployment", &dst.deployment),
                        ("pod", &dst.pod),
                    ] {
                        if let Some(value) = value {
                            labels.insert(key.to_string(), value.clone());
                        }
                    }
                }
                let destination = Peer {
                    addr: meta.target,
                    identity: meta.server_id.map(|id| id.to_string()),
                    labels,
                };
                (source, destination)
            }
            Direction::Inbound => {
                // A client's verified identity says its namespace and service account.
                let mut labels = BTreeMap::new();
                if let Some(id) = meta.client_id.and_then(|id| Identity::parse(id).ok()) {
                    labels.insert("namespace".to_string(), id.namespace().to_string());
                    labels.insert(
                        "serviceaccount".to_string(),
                        id.service_account().to_string(),
                    );
                }
                let source = Peer {
                    addr: meta.client,
                    identity: meta.client_id.map(|id| id.to_string()),
                    labels,
                };
                let destination = Peer {
                    addr: meta.target,
                    identity: meta
                        .client_id
                        .and(self.own_identity.as_deref())
                        .map(str::to_string),
                    labels: self.pod_labels.clone(),
                };
                (source, destination)
            }
        }
    }

    /// The request headers a tap may see, in the request's order.
    fn headers(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for name in &self.headers {
            for value in headers.get_all(name) {
                if let Ok(value) = value.to_str() {
                    out.push((name.as_str().to_string(), value.to_string()));
                }
            }
        }
        out
    }
}

impl Tapped {
    /// The request's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The response's headers went back with `status`.
    pub fn response_start(&self, status: u16) {
        let event = Event::ResponseStart {
            id: self.id,
            status,
            since_request_ms: ms_since(self.start),
        };
        self.send(event);
    }

    /// The response ended: `failure` says why the proxy failed it, or how its stream broke.
    pub fn response_end(
        self,
        grpc_status: Option<u32>,
        bytes: u64,
        success: bool,
        failure: Option<&str>,
    ) {
        let event = Event::ResponseEnd {
            id: self.id,
            grpc_status,
            bytes,
            duration_ms: ms_since(self.start),
            success,
            failure: failure.map(str::to_string),
        };
        self.send(event);
    }

    fn send(&self, event: Event) {
        if let Some((last, rest)) = self.taps.split_last() {
            for tap in rest {
                tap.send(event.clone(), &self.inner.metrics);
            }
            last.send(event, &self.inner.metrics);
        }
    }
}

impl Tap {
    /// Takes a request whose start is `event`, if the bucket holds its events and the channel
    /// has room; otherwise counts it as dropped.
    fn admit(&self, event: &Event, now: Instant, metrics: &Metrics) -> bool {
        let taken = lock(&self.bucket).take(EVENTS_PER_REQUEST, now);
        if !taken {
            self.count_drop(metrics, "rate");
            return false;
        }
        self.send(event.clone(), metrics)
    }

    /// Sends `event`, after the report of what was dropped before it; never waits.
    fn send(&self, event: Event, metrics: &Metrics) -> bool {
        let pending = self.dropped.swap(0, Ordering::AcqRel);
        if pending > 0 {
            if let Err(error) = self.tx.try_send(Event::Dropped { count: pending }) {
                self.dropped.fetch_add(pending, Ordering::AcqRel);
                if matches!(error, mpsc::error::TrySendError::Full(_)) {
                    self.count_drop(metrics, "full");
                }
                return false;
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.count_drop(metrics, "full");
                false
            }
            // The tap is going away.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn count_drop(&self, metrics: &Metrics, reason: &'static str) {
        self.dropped.fetch_add(1, Ordering::AcqRel);
        metrics
            .tap_events_dropped_total
            .get_or_create(&TapDropLabels { reason })
            .inc();
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let mut taps = write(&self.inner.taps);
        let next: Vec<Arc<Tap>> = taps.iter().filter(|t| t.id != self.id).cloned().collect();
        if next.len() != taps.len() {
            self.inner.metrics.tap_active.dec();
        }
        self.inner.active.store(next.len(), Ordering::Relaxed);
        *taps = Arc::from(next);
    }
}

impl Subscription {
    /// The next event; `None` once the tap is closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The subscription as a response body of JSON lines that ends when `until` completes
    /// (shutdown). Dropping the body removes the tap.
    pub fn into_body<F>(self, until: F) -> TapBody
    where
        F: Future<Output = ()> + Send + 'static,
    {
        TapBody {
            sub: self,
            until: Box::pin(until),
            done: false,
        }
    }
}

/// A tap's response body: one JSON line per event.
pub struct TapBody {
    sub: Subscription,
    until: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.until.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        match self.sub.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(Frame::data(event.to_line())))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens if it holds them.
    fn take(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Whether the request-level fields of `filter` (method, authority, path prefix) match.
fn request_matches(filter: &Filter, meta: &RequestMeta<'_>) -> bool {
    filter
        .method
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(meta.method))
        && filter
            .authority
            .as_deref()
            .is_none_or(|a| a.eq_ignore_ascii_case(meta.authority))
        && filter
            .path_prefix
            .as_deref()
            .is_none_or(|p| meta.path.starts_with(p))
}

/// Whether `have` carries every label of `want`.
fn labels_match(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1_000.0
}

// A poisoned lock only means a thread panicked while holding it; the data is still whole.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn taps(config: TapConfig) -> (Taps, Metrics) {
        let metrics = Metrics::new(10, false);
        let own = Some(Arc::from(
            "client.demo.serviceaccount.identity.mesh.cluster.local",
        ));
        (Taps::new(&config, own, metrics.clone()), metrics)
    }

    fn filter(query: &str) -> Filter {
        Filter::from_query(query).unwrap()
    }

    struct Req {
        direction: Direction,
        method: http::Method,
        authority: &'static str,
        path: &'static str,
        headers: HeaderMap,
        dst: Option<DstLabels>,
        client_id: Option<Arc<str>>,
    }

    fn outbound(method: &str, authority: &'static str, path: &'static str) -> Req {
        Req {
            direction: Direction::Outbound,
            method: method.parse().unwrap(),
            authority,
            path,
            headers: HeaderMap::new(),
            dst: Some(DstLabels {
                namespace: Some("demo".into()),
                service: Some("web-svc".into()),
                deployment: Some("web".into()),
                pod: Some("web-1".into()),
            }),
            client_id: None,
        }
    }

    impl Req {
        fn meta(&self) -> RequestMeta<'_> {
            RequestMeta {
                direction: self.direction,
                method: self.method.as_str(),
                authority: self.authority,
                path: self.path,
                headers: &self.headers,
                client: "10.244.0.5:40000".parse().unwrap(),
                client_id: self.client_id.as_ref(),
                target: "10.244.0.7:8080".parse().unwrap(),
                dst: self.dst.as_ref(),
                server_id: None,
                tls: false,
                route: None,
            }
        }
    }

    fn pod_labels() -> TapConfig {
        TapConfig {
            pod_labels: BTreeMap::from([
                ("deployment".to_string(), "client".to_string()),
                ("namespace".to_string(), "demo".to_string()),
            ]),
            ..TapConfig::default()
        }
    }

    #[test]
    fn filters_match_at_the_request_start() {
        fn check(query: &str, req: &Req, expected: bool) {
            let (taps, _) = taps(pod_labels());
            let _sub = taps.subscribe(filter(query));
            let got = taps
                .start(&taps.connection(), Instant::now(), &req.meta())
                .is_some();
            assert_eq!(
                got, expected,
                "{query} against {} {}{}",
                req.method, req.authority, req.path
            );
        }
        let get = outbound("GET", "web-svc.demo:80", "/books/1");
        check("", &get, true);
        check("method=GET", &get, true);
        check("method=get", &get, true);
        check("method=POST", &get, false);
        check("authority=WEB-SVC.demo:80", &get, true);
        check("authority=web-svc.demo", &get, false);
        check("path=/books", &get, true);
        check("path=/books/1", &get, true);
        check("path=/authors", &get, false);
        check("dst.deployment=web", &get, true);
        check("dst.deployment=web&dst.namespace=demo", &get, true);
        check("dst.deployment=api", &get, false);
        check("dst.team=a", &get, false);
        check("src.deployment=client", &get, true);
        check("src.deployment=web", &get, false);
        check(
            "method=GET&path=/books&dst.pod=web-1&src.namespace=demo",
            &get,
            true,
        );

        // Inbound, the source is known by its identity, the destination is this pod.
        let mut inbound = outbound("POST", "web-svc.demo:80", "/v");
        inbound.direction = Direction::Inbound;
        inbound.dst = None;
        check("dst.deployment=client", &inbound, true);
        check("src.namespace=other", &inbound, false);
        inbound.client_id = Some(Arc::from(
            "vote-bot.other.serviceaccount.identity.mesh.cluster.local",
        ));
        check(
            "src.namespace=other&src.serviceaccount=vote-bot",
            &inbound,
            true,
        );
    }

    #[test]
    fn token_bucket() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut b = Bucket::new(10.0, 10.0, t0);
        assert!(b.take(3.0, t0));
        assert!(b.take(3.0, t0));
        assert!(b.take(3.0, t0));
        assert!(!b.take(3.0, t0), "9 of 10 taken; 1 left");
        assert!(!b.take(3.0, at(100)), "2 tokens after 100 ms");
        assert!(b.take(3.0, at(200)), "3 tokens after 200 ms");
        assert!(b.take(3.0, at(10_000)));
        assert!(b.take(3.0, at(10_000)));
        assert!(b.take(3.0, at(10_000)));
        assert!(
            !b.take(3.0, at(10_000)),
            "the burst caps what a pause saves up"
        );
        assert!(!b.take(3.0, at(5_000)), "time going backwards adds nothing");
    }

    fn expect(event: Option<Event>, what: &str) -> Event {
        event.unwrap_or_else(|| panic!("expected {what}"))
    }

    #[tokio::test]
    async fn requests_over_the_rate_are_dropped_counted_and_reported() {
        let (taps, metrics) = taps(TapConfig::default());
        // 3 events a second: one request a second.
        let mut sub = taps.subscribe(filter("rate=3"));
        let conn = taps.connection();
        let req = outbound("GET", "web:80", "/");
        let t0 = Instant::now();
        let first = taps
            .start_at(&conn, t0, &req.meta(), t0)
            .expect("the first fits");
        assert!(taps.start_at(&conn, t0, &req.meta(), t0).is_none());
        assert!(taps
            .start_at(&conn, t0, &req.meta(), t0 + Duration::from_millis(500))
            .is_none());
        first.response_start(200);
        first.response_end(None, 5, true, None);
        let later = t0 + Duration::from_secs(2);
        let third = taps
            .start_at(&conn, t0, &req.meta(), later)
            .expect("refilled");
        drop(third);

        let Event::RequestStart { id, .. } = expect(sub.rx.try_recv().ok(), "a start") else {
            panic!("not a request start")
        };
        assert_eq!(id.to_string(), format!("{}:1", id.connection));
        // The two requests dropped meanwhile are reported before the next event.
        assert_eq!(sub.rx.try_recv().ok(), Some(Event::Dropped { count: 2 }));
        assert!(matches!(
            sub.rx.try_recv(),
            Ok(Event::ResponseStart { status: 200, .. })
        ));
        assert!(matches!(
            sub.rx.try_recv(),
            Ok(Event::ResponseEnd {
                bytes: 5,
                success: true,
                ..
            })
        ));
        let Ok(Event::RequestStart { id, .. }) = sub.rx.try_recv() else {
            panic!("the third request starts")
        };
        assert_eq!(id.stream, 4, "dropped requests leave a gap in the numbers");
        assert!(sub.rx.try_recv().is_err());
        assert!(metrics
            .encode()
            .contains(r#"tap_events_dropped_total{reason="rate"} 2"#));
    }

    #[tokio::test]
    async fn a_full_channel_drops_and_counts_without_waiting() {
        let (taps, metrics) = taps(TapConfig::default());
        // 16 events a second, a channel of 16, and a client that does not read.
        let mut sub = taps.subscribe(filter("rate=16"));
        let conn = taps.connection();
        let req = outbound("GET", "web:80", "/");
        let t0 = Instant::now();
        let mut taken = 0;
        for second in 0..4 {
            let now = t0 + Duration::from_secs(second);
            while let Some(t) = taps.start_at(&conn, t0, &req.meta(), now) {
                taken += 1;
                t.response_start(200);
                t.response_end(None, 0, true, None);
            }
        }
        assert!(taken >= 5, "{taken}");
        let text = metrics.encode();
        assert!(
            text.contains(r#"tap_events_dropped_total{reason="full"}"#),
            "{text}"
        );
        let mut delivered = 0;
        while sub.rx.try_recv().is_ok() {
            delivered += 1;
        }
        assert_eq!(delivered, 16, "the channel's capacity, no more");
        // Once the client reads again, the next event comes after the report of the losses.
        let t = taps
            .start_at(&conn, t0, &req.meta(), t0 + Duration::from_secs(10))
            .expect("room again");
        drop(t);
        let Ok(Event::Dropped { count }) = sub.rx.try_recv() else {
            panic!("a report first")
        };
        assert!(count > 0);
        assert!(matches!(sub.rx.try_recv(), Ok(Event::RequestStart { .. })));
    }

    #[test]
    fn nothing_is_done_when_nobody_taps() {
        let (taps, metrics) = taps(TapConfig::default());
        assert!(!taps.is_active());
        let req = outbound("GET", "web:80", "/");
        let conn = taps.connection();
        assert!(taps.start(&conn, Instant::now(), &req.meta()).is_none());
        let sub = taps.subscribe(filter(""));
        let other = taps.subscribe(filter("method=POST"));
        assert!(taps.is_active());
        assert_eq!(taps.len(), 2);
        assert!(metrics.encode().contains("tap_active 2"));
        drop(sub);
        drop(other);
        assert!(!taps.is_active(), "a dropped subscription removes its tap");
        assert!(metrics.encode().contains("tap_active 0"));
        assert!(taps.start(&conn, Instant::now(), &req.meta()).is_none());
    }

    #[tokio::test]
    async fn several_taps_get_what_each_asked_for() {
        let (taps, _) = taps(TapConfig::default());
        let mut gets = taps.subscribe(filter("method=GET"));
        let mut all = taps.subscribe(filter(""));
        let conn = taps.connection();
        for method in ["GET", "POST"] {
            let req = outbound(method, "web:80", "/");
            taps.start(&conn, Instant::now(), &req.meta())
                .unwrap()
                .response_start(200);
        }
        let methods = |sub: &mut Subscription| {
            let mut v = Vec::new();
            while let Ok(e) = sub.rx.try_recv() {
                if let Event::RequestStart { method, .. } = e {
                    v.push(method);
                }
            }
            v
        };
        assert_eq!(methods(&mut gets), ["GET"]);
        assert_eq!(methods(&mut all), ["GET", "POST"]);
    }

    #[tokio::test]
    async fn only_allowed_headers_that_are_not_sensitive_are_streamed() {
        let mut config = TapConfig::default();
        config
            .headers
            .extend(["authorization".into(), "x-team".into(), "x-secret".into()]);
        config.sensitive_headers.push("x-secret".into());
        let (taps, _) = taps(config);
        let mut sub = taps.subscribe(filter(""));
        let mut req = outbound("GET", "web:80", "/");
        for (k, v) in [
            ("authorization", "Bearer s3cret"),
            ("cookie", "session=s3cret"),
            ("x-secret", "s3cret"),
            ("x-team", "books"),
            ("x-other", "not listed"),
            ("user-agent", "curl/8"),
            ("content-type", "application/grpc"),
        ] {
            req.headers
                .insert(http::HeaderName::from_static(k), v.parse().unwrap());
        }
        taps.start(&taps.connection(), Instant::now(), &req.meta())
            .unwrap();
        let Ok(Event::RequestStart { headers, .. }) = sub.rx.try_recv() else {
            panic!("a request start")
        };
        let mut names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "user-agent", "x-team"]);
        assert!(!format!("{headers:?}").contains("s3cret"));
    }
}
