//! The destination service: the shared index, the per-target fan-out to watchers, and the
//! HTTP server (`server.rs`) that streams it.
//!
//! Every distinct [`Target`] being watched has one `tokio::sync::watch` channel holding its
//! current [`Resolution`]. A source change updates the index, then recomputes each affected
//! target once and publishes it if it changed; every watcher of that target reads the latest
//! value and diffs it against what it last sent. A slow watcher only ever skips to the latest
//! state: there is no queue to grow.
//!
//! Outbound policies fan out the same way, one channel per watched (target, client namespace).
//! A route and its backends can live in other namespaces than the Service, so every watched
//! policy is recomputed after a change that can touch policies (a Service, a route, an
//! HTTPFault, an inbound policy resource: [`Index::policy_version`]), and sent only when it
//! differs.
//!
//! Inbound policies too, one channel per watched (pod, port): recomputed when the policy
//! version moves, or when their pod's stamp does ([`Index::pod_stamp`]: the pod was applied or
//! deleted; another pod's events recompute nothing). What the index finds worth a warning
//! (several Servers on one port, an AuthorizationPolicy that requires a missing
//! authentication) is logged once, when it first appears.

mod server;

pub use server::{serve, ServeError};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use mesh_api::destination::{Add, Endpoint, NoEndpoints, Remove, Update};
use mesh_api::inbound::InboundPolicy;
use mesh_api::policy::OutboundPolicy;
use tokio::sync::watch;

use crate::index::{Index, IndexConfig, Resolution, RouteReport, Target};
use crate::metrics::Metrics;

/// The shared state of the destination service; cheap to clone.
#[derive(Clone)]
pub struct Destination {
    inner: Arc<Inner>,
}

/// A policy watch's key: the target and the client's namespace.
type PolicyKey = (Target, Option<String>);

type Policies = HashMap<PolicyKey, watch::Sender<Arc<OutboundPolicy>>>;

/// An inbound policy watch's key: the pod's namespace and name, and the port.
type InboundKey = (String, String, u16);

/// One watched inbound policy.
struct InboundWatch {
    tx: watch::Sender<Arc<InboundPolicy>>,
    /// The pod's stamp when the policy was last computed.
    pod_stamp: Option<u64>,
    /// What was worth a warning then (a new warning is logged).
    warnings: Vec<String>,
}

struct Inner {
    index: RwLock<Index>,
    targets: Mutex<HashMap<Target, watch::Sender<Arc<Resolution>>>>,
    policies: Mutex<Policies>,
    inbound: Mutex<HashMap<InboundKey, InboundWatch>>,
    /// The index's inbound warnings after the last policy change (a new one is logged).
    inbound_warnings: Mutex<Vec<String>>,
    /// The index's policy version after the last update (see [`Destination::policy_changes`]).
    policy_version: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    metrics: Metrics,
}

impl Destination {
    /// A destination service over an empty index.
    pub fn new(config: IndexConfig, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                index: RwLock::new(Index::new(config)),
                targets: Mutex::new(HashMap::new()),
                policies: Mutex::new(HashMap::new()),
                inbound: Mutex::new(HashMap::new()),
                inbound_warnings: Mutex::new(Vec::new()),
                policy_version: watch::Sender::new(0),
                ready: watch::Sender::new(false),
                metrics,
            }),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The cluster DNS domain.
    pub fn cluster_domain(&self) -> String {
        self.read_index().config().cluster_domain.clone()
    }

    /// Marks the source as synced (its first full state is in the index).
    pub fn set_ready(&self) {
        self.inner.ready.send_replace(true);
    }

    /// Follows whether the source has synced.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// Whether the source has synced.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Changes the index with `change`, then pushes the new state of every affected target.
    /// `namespaces` limits the targets recomputed (`None`: all). `started` is when the source
    /// saw the event, for the latency histogram.
    pub fn update(
        &self,
        started: Instant,
        namespaces: Option<&BTreeSet<String>>,
        change: impl FnOnce(&mut Index),
    ) {
        let mut index = self
            .inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut index);
        self.inner.metrics.set_sizes(index.sizes());
        let mut targets = self.lock_targets();
        // Forget targets nobody watches any more.
        targets.retain(|_, tx| tx.receiver_count() > 0);
        let mut pushed = 0usize;
        for (target, tx) in targets.iter() {
            let affected =
                namespaces.is_none_or(|set| set.iter().any(|ns| Index::affects(target, ns)));
            if !affected {
                continue;
            }
            let resolution = index.resolve(target);
            tx.send_if_modified(|current| {
                if **current == resolution {
                    return false;
                }
                *current = Arc::new(resolution);
                pushed += 1;
                true
            });
        }
        drop(targets);
        let version = index.policy_version();
        let policies_moved = *self.inner.policy_version.borrow() != version;
        let mut inbound = self.lock_inbound();
        inbound.retain(|_, w| w.tx.receiver_count() > 0);
        for ((ns, pod, port), w) in inbound.iter_mut() {
            let stamp = index.pod_stamp(ns, pod);
            if !policies_moved && stamp == w.pod_stamp {
                continue;
            }
            w.pod_stamp = stamp;
            let (policy, warnings) = index.inbound(ns, pod, *port);
            log_new(&w.warnings, &warnings);
            w.warnings = warnings;
            w.tx.send_if_modified(|current| {
                if **current == policy {
                    return false;
                }
                *current = Arc::new(policy);
                pushed += 1;
                true
            });
        }
        drop(inbound);
        if policies_moved {
            let warnings = index.inbound_warnings();
            let mut last = self
                .inner
                .inbound_warnings
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            log_new(&last, &warnings);
            *last = warnings;
            drop(last);
            let mut policies = self.lock_policies();
            policies.retain(|_, tx| tx.receiver_count() > 0);
            for ((target, client_ns), tx) in policies.iter() {
                let policy = index.outbound_policy(target, client_ns.as_deref());
                tx.send_if_modified(|current| {
                    if **current == policy {
                        return false;
                    }
                    *current = Arc::new(policy);
                    pushed += 1;
                    true
                });
            }
            drop(policies);
            self.inner.policy_version.send_replace(version);
        }
        drop(index);
        self.inner
            .metrics
            .update_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(pushed, "index updated");
    }

    /// Subscribes to a target's resolution; the receiver's current value is the current state.
    pub fn subscribe(&self, target: Target) -> watch::Receiver<Arc<Resolution>> {
        let index = self.read_index();
        let mut targets = self.lock_targets();
        if let Some(tx) = targets.get(&target) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(index.resolve(&target)));
        targets.insert(target, tx);
        rx
    }

    /// Subscribes to the outbound policy of `target` for clients in `client_ns`; the
    /// receiver's current value is the current policy.
    pub fn subscribe_policy(
        &self,
        target: Target,
        client_ns: Option<String>,
    ) -> watch::Receiver<Arc<OutboundPolicy>> {
        let index = self.read_index();
        let mut policies = self.lock_policies();
        let key = (target, client_ns);
        if let Some(tx) = policies.get(&key) {
            return tx.subscribe();
        }
        let policy = index.outbound_policy(&key.0, key.1.as_deref());
        let (tx, rx) = watch::channel(Arc::new(policy));
        policies.insert(key, tx);
        rx
    }

    /// Subscribes to the inbound policy of `port` of the pod `namespace/pod`; the receiver's
    /// current value is the current policy (the default one while the pod is unknown).
    pub fn subscribe_inbound(
        &self,
        namespace: String,
        pod: String,
        port: u16,
    ) -> watch::Receiver<Arc<InboundPolicy>> {
        let index = self.read_index();
        let mut inbound = self.lock_inbound();
        let key = (namespace, pod, port);
        if let Some(w) = inbound.get(&key) {
            return w.tx.subscribe();
        }
        let (policy, warnings) = index.inbound(&key.0, &key.1, port);
        log_new(&[], &warnings);
        let (tx, rx) = watch::channel(Arc::new(policy));
        inbound.insert(
            key.clone(),
            InboundWatch {
                tx,
                pod_stamp: index.pod_stamp(&key.0, &key.1),
                warnings,
            },
        );
        rx
    }

    /// How many distinct (pod, port) inbound policies are watched.
    pub fn watched_inbound(&self) -> usize {
        self.lock_inbound()
            .values()
            .filter(|w| w.tx.receiver_count() > 0)
            .count()
    }

    /// How many distinct (target, client namespace) policies are watched.
    pub fn watched_policies(&self) -> usize {
        self.lock_policies()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    /// Changes whenever an update may have changed a policy or a route's status: what the
    /// Kubernetes source's status writer waits on.
    pub fn policy_changes(&self) -> watch::Receiver<u64> {
        self.inner.policy_version.subscribe()
    }

    /// What the controller reports on every route with a Service parent (see
    /// [`Index::route_reports`]).
    pub fn route_reports(&self) -> Vec<RouteReport> {
        self.read_index().route_reports()
    }

    /// How many distinct targets are watched.
    pub fn watched_targets(&self) -> usize {
        self.lock_targets()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters more than stopping service: keep serving.
        self.inner
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_inbound(&self) -> std::sync::MutexGuard<'_, HashMap<InboundKey, InboundWatch>> {
        self.inner
            .inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_policies(&self) -> std::sync::MutexGuard<'_, Policies> {
        self.inner
            .policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_targets(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Target, watch::Sender<Arc<Resolution>>>> {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Logs each of `current` that `last` did not have.
fn log_new(last: &[String], current: &[String]) {
    for reason in current.iter().filter(|w| !last.contains(w)) {
        tracing::warn!(%reason, "inbound policy problem");
    }
}

/// The updates that take a watcher from `last` (what it was sent; `None` before the first
/// message) to `current`. The first message is always the full state.
pub fn diff(last: Option<&Resolution>, current: &Resolution) -> Vec<Update> {
    let empty = BTreeMap::new();
    let (last_eps, current_eps) = match (last, current) {
        (Some(l), c) if l == c => return Vec::new(),
        (_, Resolution::Unknown) => return vec![no_endpoints(false)],
        (_, Resolution::Endpoints(c)) if c.is_empty() => return vec![no_endpoints(true)],
        (Some(Resolution::Endpoints(l)), Resolution::Endpoints(c)) => (l, c),
        (_, Resolution::Endpoints(c)) => (&empty, c),
    };
    let mut updates = Vec::new();
    let removed: Vec<SocketAddr> = last_eps
        .keys()
        .filter(|a| !current_eps.contains_key(a))
        .copied()
        .collect();
    if !removed.is_empty() {
        updates.push(Update::Remove(Remove { addrs: removed }));
    }
    let added: Vec<Endpoint> = current_eps
        .iter()
        .filter(|(a, e)| last_eps.get(a) != Some(e))
        .map(|(_, e)| e.clone())
        .collect();
    if !added.is_empty() {
        updates.push(Update::Add(Add { endpoints: added }));
    }
    updates
}

fn no_endpoints(exists: bool) -> Update {
    Update::NoEndpoints(NoEndpoints { exists })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(addrs: &[(&str, &str)]) -> Resolution {
        Resolution::Endpoints(
            addrs
                .iter()
                .map(|(a, pod)| {
                    let addr: SocketAddr = a.parse().expect("addr");
                    let labels = BTreeMap::from([("pod".to_owned(), (*pod).to_owned())]);
                    let e = Endpoint {
                        addr,
                        weight: mesh_api::destination::DEFAULT_WEIGHT,
                        labels,
                        identity: None,
                        protocol_hint: None,
                    };
                    (addr, e)
                })
                .collect(),
        )
    }

    /// Renders the updates as compact JSON lines.
    fn check(last: Option<&Resolution>, current: &Resolution, expected: &[&str]) {
        let got: Vec<String> = diff(last, current)
            .iter()
            .map(|u| {
                let v = serde_json::to_value(u).expect("json");
                match u {
                    Update::Add(a) => format!(
                        "add {}",
                        a.endpoints
                            .iter()
                            .map(|e| format!("{}={}", e.addr, e.labels["pod"]))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    _ => v.to_string(),
                }
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn diffs() {
        let a = eps(&[("10.0.0.1:80", "a"), ("10.0.0.2:80", "b")]);
        let b = eps(&[("10.0.0.2:80", "b2"), ("10.0.0.3:80", "c")]);
        let empty = eps(&[]);
        check(
            None,
            &Resolution::Unknown,
            &[r#"{"noEndpoints":{"exists":false}}"#],
        );
        check(None, &empty, &[r#"{"noEndpoints":{"exists":true}}"#]);
        check(None, &a, &["add 10.0.0.1:80=a 10.0.0.2:80=b"]);
        check(Some(&a), &a, &[]);
        check(
            Some(&a),
            &b,
            &[
                r#"{"remove":{"addrs":["10.0.0.1:80"]}}"#,
                "add 10.0.0.2:80=b2 10.0.0.3:80=c",
            ],
        );
        check(Some(&a), &empty, &[r#"{"noEndpoints":{"exists":true}}"#]);
        check(
            Some(&a),
            &Resolution::Unknown,
            &[r#"{"noEndpoints":{"exists":false}}"#],
        );
        check(Some(&empty), &a, &["add 10.0.0.1:80=a 10.0.0.2:80=b"]);
        check(
            Some(&Resolution::Unknown),
            &empty,
            &[r#"{"noEndpoints":{"exists":true}}"#],
        );
    }

    /// A Pod event moves no policy version (the Kubernetes source applies one object at a
    /// time), yet it changes that pod's inbound policy.
    #[tokio::test]
    async fn inbound_watches_follow_their_pod() {
        let dest = Destination::new(IndexConfig::default(), Metrics::default());
        let apply = |yaml: &str| {
            let (objects, errors) = crate::source::folder::parse_yaml(yaml);
            assert!(errors.is_empty(), "{errors:?}");
            for object in objects {
                dest.update(Instant::now(), None, |index| index.apply(object));
            }
        };
        let pod = |name: &str, app: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, \
                 labels: {{app: {app}}}}}\nspec: {{containers: [{{name: a}}]}}\n"
            )
        };
        apply(
            "apiVersion: policy.mesh.io/v1alpha1\nkind: Server\n\
             metadata: {name: s, namespace: demo}\n\
             spec: {podSelector: {matchLabels: {app: web}}, port: 80}\n",
        );
        let mut rx = dest.subscribe_inbound("demo".into(), "web-0".into(), 80);
        assert_eq!(dest.watched_inbound(), 1);
        assert_eq!(rx.borrow_and_update().server, None, "no pod yet");
        let version = dest.policy_changes();
        apply(&pod("web-0", "web"));
        assert!(rx.has_changed().expect("open"));
        assert_eq!(
            rx.borrow_and_update()
                .server
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("s")
        );
        apply(&pod("web-1", "web"));
        assert!(!rx.has_changed().expect("open"), "another pod's event");
        apply(&pod("web-0", "other"));
        assert_eq!(rx.borrow_and_update().server, None, "relabelled");
        assert!(!version.has_changed().expect("open"), "no policy moved");
        drop(rx);
        dest.update(Instant::now(), None, |_| {});
        assert_eq!(dest.watched_inbound(), 0, "unwatched policies are dropped");
    }

    #[tokio::test]
    async fn one_channel_per_target_and_latest_state_only() {
        let dest = Destination::new(IndexConfig::default(), Metrics::default());
        let target = Target::Addr("10.0.0.9:80".parse().expect("addr"));
        let mut rx1 = dest.subscribe(target.clone());
        let rx2 = dest.subscribe(target.clone());
        assert_eq!(dest.watched_targets(), 1);
        assert_eq!(**rx1.borrow_and_update(), Resolution::Unknown);
        // Many changes while the watcher does not read: it sees only the latest.
        for _ in 0..100 {
            dest.update(Instant::now(), None, |_| {});
        }
        assert!(
            !rx1.has_changed().expect("open"),
            "unchanged state is not pushed"
        );
        drop((rx1, rx2));
        dest.update(Instant::now(), None, |_| {});
        assert_eq!(dest.watched_targets(), 0, "unwatched targets are dropped");
    }
}
