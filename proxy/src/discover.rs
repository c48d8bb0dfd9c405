//! Service discovery for outbound traffic: one shared, cached watch of the destination
//! controller per logical name, kept through controller outages and dropped when idle.
//!
//! HTTP requests are resolved by their `Host` / `:authority`, normalised to the fully qualified
//! service name the way a pod's DNS search path would (`web` → `web.<ns>.svc.cluster.local`);
//! opaque connections and IP authorities by the original destination (`ClusterIP:port`). A name
//! the controller does not know falls back to the original destination, as does everything
//! while the controller has never answered.

use crate::{
    balance::{BalanceConfig, EndpointState},
    svc::Cache,
};
use futures_util::StreamExt;
use mesh_api::destination::{self, Update};
use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::watch;

/// What discovery needs to know.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// `MESH_PROXY_DESTINATION_ADDR`: the destination controller, `host:port`.
    pub controller: String,
    /// `MESH_PROXY_DESTINATION_NAMESPACE`: the pod's namespace, for short names.
    pub namespace: String,
    /// `MESH_PROXY_CLUSTER_DOMAIN`.
    pub cluster_domain: String,
    /// How long a request waits for a service's first endpoints before failing with 503.
    pub failfast_timeout: Duration,
    /// How long an unused resolution is kept.
    pub idle_timeout: Duration,
    pub balance: BalanceConfig,
    /// How the watches connect to the controller (the proxy's socket mark).
    pub connector: destination::Connector,
}

/// Resolutions shared by every connection of the proxy.
pub struct Resolver {
    config: DiscoveryConfig,
    cache: Arc<Cache<String, Destination>>,
}

/// One logical destination's live endpoints.
pub struct Destination {
    pub authority: String,
    state: watch::Receiver<Resolution>,
    task: tokio::task::JoinHandle<()>,
}

/// What the controller said about a destination.
#[derive(Clone, Debug)]
pub enum Resolution {
    /// No answer yet.
    Pending,
    /// Not a name the mesh knows: use the original destination.
    Unknown,
    /// The current endpoints (possibly none, for a service with zero endpoints).
    Endpoints(Arc<Vec<Endpoint>>),
}

/// An endpoint and what the controller said about it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub balance: Arc<EndpointState>,
    pub labels: Arc<DstLabels>,
    pub identity: Option<Arc<str>>,
}

/// The destination labels of an endpoint's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DstLabels {
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub deployment: Option<String>,
    pub pod: Option<String>,
}

impl Resolver {
    /// Creates the resolver; resolutions nobody holds for longer than `idle_timeout` are
    /// dropped, and their watches end with them.
    pub fn new(config: DiscoveryConfig) -> Arc<Self> {
        Arc::new(Self {
            cache: Cache::new(config.idle_timeout),
            config,
        })
    }

    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// How many destinations are being watched.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The shared resolution of `authority` (a logical name or an `IP:port`), started on first use.
    pub fn resolve(&self, authority: &str) -> Arc<Destination> {
        self.cache.get_or_insert_with(&authority.to_string(), || {
            let (tx, rx) = watch::channel(Resolution::Pending);
            let task = tokio::spawn(watch_destination(
                self.config.controller.clone(),
                authority.to_string(),
                tx,
                self.config.balance.clone(),
                self.config.connector.clone(),
            ));
            Destination {
                authority: authority.to_string(),
                state: rx,
                task,
            }
        })
    }

    /// The logical name to resolve for an HTTP authority (`host[:port]`), or `None` when the host
    /// is an IP address (resolve by the original destination instead). `default_port` is the
    /// original destination's port.
    pub fn logical_name(&self, authority: &str, default_port: u16) -> Option<String> {
        logical_name(
            authority,
            default_port,
            &self.config.namespace,
            &self.config.cluster_domain,
        )
    }
}

impl Destination {
    /// A receiver of the resolution's changes.
    pub fn subscribe(&self) -> watch::Receiver<Resolution> {
        self.state.clone()
    }

    /// The resolution now, read in place: its read lock is held while the `Ref` lives (a
    /// request's balancer is picked under it; never held across an await).
    pub fn now(&self) -> watch::Ref<'_, Resolution> {
        self.state.borrow()
    }

    /// The resolution once it is usable: waits while there is no answer yet, or while the
    /// service has no endpoints, for at most `timeout`; then returns what there is.
    pub async fn ready(&self, timeout: Duration) -> Resolution {
        let usable = |r: &Resolution| match r {
            Resolution::Pending => false,
            Resolution::Unknown => true,
            Resolution::Endpoints(eps) => !eps.is_empty(),
        };
        {
            // The usual case, without a receiver of its own.
            let now = self.state.borrow();
            if usable(&now) {
                return now.clone();
            }
        }
        let mut state = self.state.clone();
        let waited = tokio::time::timeout(timeout, async {
            state.wait_for(usable).await.map(|r| r.clone())
        })
        .await;
        match waited {
            Ok(Ok(r)) => r,
            _ => self.state.borrow().clone(),
        }
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Normalises an authority to the fully qualified name a pod's resolver would find:
/// `web` → `web.<ns>.svc.<domain>`, `web.demo` and `pod.web.demo` → `….svc.<domain>`,
/// `web.demo.svc` → `web.demo.svc.<domain>`; a missing port is `default_port`. IP hosts give
/// `None`.
pub fn logical_name(
    authority: &str,
    default_port: u16,
    namespace: &str,
    domain: &str,
) -> Option<String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && !h.contains(':') => (h, p.parse().ok()?),
        _ if authority.starts_with('[') || authority.parse::<std::net::IpAddr>().is_ok() => {
            return None
        }
        _ => (authority, default_port),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let suffix = format!(".svc.{domain}");
    let fqdn = if host.ends_with(&suffix) {
        host
    } else if host.ends_with(".svc") {
        format!("{host}.{domain}")
    } else {
        match host.split('.').count() {
            1 => format!("{host}.{namespace}{suffix}"),
            _ => format!("{host}{suffix}"),
        }
    };
    Some(format!("{fqdn}:{port}"))
}

/// Follows one destination's watch forever: reconnects with backoff and keeps the last
/// endpoints meanwhile, so traffic goes on while the controller is away.
async fn watch_destination(
    controller: String,
    authority: String,
    tx: watch::Sender<Resolution>,
    config: BalanceConfig,
    connector: destination::Connector,
) {
    let mut endpoints: HashMap<SocketAddr, Endpoint> = HashMap::new();
    follow_controller(
        &controller,
        &authority,
        |addr| destination::watch_with(connector.clone(), addr, &authority),
        |update, first| {
            // A new watch starts with the full state: it replaces what we had.
            tx.send_replace(apply(&mut endpoints, update, first, &config));
        },
        || !tx.is_closed(),
    )
    .await
}

/// Follows a watch of the destination controller (`controller`, `host:port`) forever: resolves
/// its address, opens the watch with `open`, hands each message to `message` (with whether it
/// is the first of its connection: the full state), and after an error or the end of the watch
/// reconnects with backoff (from 100 ms to 5 s), while `go_on` says so. What the watch published
/// stays meanwhile. The destination and the policy watches share it.
pub(crate) async fn follow_controller<T, E, S>(
    controller: &str,
    authority: &str,
    mut open: impl FnMut(SocketAddr) -> S,
    mut message: impl FnMut(T, bool),
    mut go_on: impl FnMut() -> bool,
) where
    E: std::fmt::Display,
    S: futures_util::Stream<Item = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match tokio::net::lookup_host(controller)
            .await
            .map(|mut a| a.next())
        {
            Ok(Some(addr)) => {
                let updates = open(addr);
                futures_util::pin_mut!(updates);
                let mut first = true;
                while let Some(update) = updates.next().await {
                    match update {
                        Ok(update) => {
                            backoff.reset();
                            message(update, first);
                            first = false;
                        }
                        Err(error) => {
                            tracing::info!(%authority, %error, "watch failed; keeping the last state");
                            break;
                        }
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(%controller, "the destination controller's name has no address")
            }
            Err(error) => {
                tracing::warn!(%controller, %error, "resolving the destination controller failed")
            }
        }
        if !go_on() {
            return;
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Applies one update to the endpoint set and returns the resolution to publish. Endpoints that
/// stay keep their balancing state (their latency estimate and health).
fn apply(
    endpoints: &mut HashMap<SocketAddr, Endpoint>,
    update: Update,
    full: bool,
    config: &BalanceConfig,
) -> Resolution {
    let now = std::time::Instant::now();
    match update {
        Update::NoEndpoints(none) => {
            endpoints.clear();
            if !none.exists {
                return Resolution::Unknown;
            }
        }
        Update::Add(add) => {
            let mut next = if full {
                HashMap::new()
            } else {
                std::mem::take(endpoints)
            };
            for ep in add.endpoints {
                let balance = match endpoints.get(&ep.addr).or(next.get(&ep.addr)) {
                    Some(old) if old.balance.weight == ep.weight.max(1) => old.balance.clone(),
                    _ => EndpointState::new(ep.addr, ep.weight, config, now),
                };
                let label = |k: &str| ep.labels.get(k).cloned();
                let labels = Arc::new(DstLabels {
                    namespace: label("namespace"),
                    service: label("service"),
                    deployment: label("deployment"),
                    pod: label("pod"),
                });
                next.insert(
                    ep.addr,
                    Endpoint {
                        balance,
                        labels,
                        identity: ep.identity.map(Arc::from),
                    },
                );
            }
            *endpoints = next;
        }
        Update::Remove(remove) => {
            if full {
                endpoints.clear();
            }
            for addr in remove.addrs {
                endpoints.remove(&addr);
            }
        }
    }
    let mut list: Vec<Endpoint> = endpoints.values().cloned().collect();
    list.sort_by_key(|e| e.balance.addr);
    Resolution::Endpoints(Arc::new(list))
}

/// Exponential backoff with jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to half again, so that many proxies do not reconnect in lockstep.
        base + base.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::destination::{Add, NoEndpoints, Remove};

    #[test]
    fn logical_names() {
        fn check(authority: &str, expected: Option<&str>) {
            assert_eq!(
                logical_name(authority, 80, "demo", "cluster.local").as_deref(),
                expected,
                "{authority}"
            );
        }
        check("web", Some("web.demo.svc.cluster.local:80"));
        check("web:8080", Some("web.demo.svc.cluster.local:8080"));
        check("Web-Svc.Other", Some("web-svc.other.svc.cluster.local:80"));
        check(
            "web.other.svc:9090",
            Some("web.other.svc.cluster.local:9090"),
        );
        check(
            "web.other.svc.cluster.local.:80",
            Some("web.other.svc.cluster.local:80"),
        );
        check(
            "web-0.web.demo",
            Some("web-0.web.demo.svc.cluster.local:80"),
        );
        check("10.96.0.10:80", None);
        check("10.96.0.10", None);
        check("[::1]:80", None);
        check("::1", None);
        check("web:notaport", None);
        check("", None);
    }

    fn endpoint(port: u16, pod: &str) -> destination::Endpoint {
        destination::Endpoint {
            addr: SocketAddr::from(([10, 244, 0, 9], port)),
            weight: destination::DEFAULT_WEIGHT,
            labels: [("pod".to_string(), pod.to_string())].into(),
            identity: None,
            protocol_hint: None,
        }
    }

    fn addrs(r: &Resolution) -> Vec<u16> {
        match r {
            Resolution::Endpoints(eps) => eps.iter().map(|e| e.balance.addr.port()).collect(),
            other => panic!("expected endpoints, got {other:?}"),
        }
    }

    #[test]
    fn updates_follow_the_watch_and_keep_balancing_state() {
        let config = BalanceConfig::default();
        let mut eps = HashMap::new();
        let r = apply(
            &mut eps,
            Update::Add(Add {
                endpoints: vec![endpoint(1, "a"), endpoint(2, "b")],
            }),
            true,
            &config,
        );
        assert_eq!(addrs(&r), [1, 2]);
        let state_of_1 = eps[&SocketAddr::from(([10, 244, 0, 9], 1))].balance.clone();

        let r = apply(
            &mut eps,
            Update::Add(Add {
                endpoints: vec![endpoint(3, "c")],
            }),
            false,
            &config,
        );
        assert_eq!(addrs(&r), [1, 2, 3], "a later add is a delta");
        let r = apply(
            &mut eps,
            Update::Remove(Remove {
                addrs: vec![SocketAddr::from(([10, 244, 0, 9], 2))],
            }),
            false,
            &config,
        );
        assert_eq!(addrs(&r), [1, 3]);

        // A reconnect's first message is the full state.
        let r = apply(
            &mut eps,
            Update::Add(Add {
                endpoints: vec![endpoint(1, "a2")],
            }),
            true,
            &config,
        );
        assert_eq!(addrs(&r), [1]);
        let Resolution::Endpoints(list) = r else {
            unreachable!()
        };
        assert!(
            Arc::ptr_eq(&list[0].balance, &state_of_1),
            "a kept endpoint keeps its latency estimate"
        );
        assert_eq!(
            list[0].labels.pod.as_deref(),
            Some("a2"),
            "its metadata is replaced"
        );

        let r = apply(
            &mut eps,
            Update::NoEndpoints(NoEndpoints { exists: true }),
            false,
            &config,
        );
        assert_eq!(addrs(&r), Vec::<u16>::new());
        let r = apply(
            &mut eps,
            Update::NoEndpoints(NoEndpoints { exists: false }),
            true,
            &config,
        );
        assert!(matches!(r, Resolution::Unknown));
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(150));
        for _ in 0..10 {
            b.next();
        }
        let capped = b.next();
        assert!(capped >= Duration::from_secs(1) && capped <= Duration::from_millis(1_500));
        b.reset();
        assert!(b.next() <= Duration::from_millis(150));
    }
}
