//! The Kubernetes source: kube-rs watchers of Services, EndpointSlices, Pods, ReplicaSets,
//! HTTPRoutes, GRPCRoutes, HTTPFaults, MetaRoutes and the inbound policy resources (Servers,
//! AuthorizationPolicies, MeshTLSAuthentications, NetworkAuthentications,
//! HTTPLocalRateLimitPolicies), and the writer of the routes' status (not MetaRoutes': the
//! controller writes none on them).
//!
//! Each kind has its own `kube::runtime::watcher`: it lists, then watches from the list's
//! resourceVersion; on a desync (410 Expired) it re-lists, and API errors are retried with the
//! watcher's default exponential backoff. A (re-)list arrives as `Init`, `InitApply`…,
//! `InitDone`, and replaces that kind in the index at once, so objects deleted while the watch
//! was down disappear. The destination is ready when every kind has listed once.
//!
//! ReplicaSets only name a pod's Deployment (the `deployment` label). Where RBAC forbids listing
//! them cluster-wide, the destination serves without them (a warning, once; the Deployment is
//! then inferred from the pod's `pod-template-hash`, and a ReplicaSet of another owner is not
//! followed) and keeps trying, so a fixed ClusterRole takes effect without a restart.
//!
//! The Gateway API routes and the mesh's `policy.mesh.io` kinds are optional the same way:
//! where their CRD is not installed (404) or RBAC forbids them (403), the destination serves
//! without them and keeps trying, so installing the CRDs later takes effect without a restart.
//! They are watched as `DynamicObject`s (HTTPRoute and GRPCRoute at `v1`, the mesh's kinds at
//! `v1alpha1`) and decoded by [`super::decode`], like the folder's documents. Each kind is
//! followed on its own: a cluster without the AuthorizationPolicy CRD still serves its
//! Servers, whose `deny` then refuses every client (a warning says so).
//!
//! Route status: once the source has synced, after every change that can change a route's
//! conditions, each route with a Service parentRef gets one `status.parents[]` entry per Service
//! parent, written by `mesh.io/destination-controller` (`Accepted`, `ResolvedRefs`), with a JSON
//! merge patch on the `status` subresource that carries the `resourceVersion` it was computed
//! from, and only when the entries differ; other controllers' entries are kept. A failed write
//! (a conflict, a refusal) is retried after [`STATUS_RETRY`].

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::destination::Destination;
use crate::index::routes::{self, GATEWAY_GROUP, POLICY_GROUP};
use crate::index::{Kind, Object, ObjectKey, RouteReport};

/// How long a failed status write waits before it is tried again.
pub const STATUS_RETRY: Duration = Duration::from_secs(5);

/// Why a Kubernetes client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file is unreadable or invalid.
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// The cause.
        source: kube::config::KubeconfigError,
    },
    /// No configuration could be inferred (no kubeconfig, not in a cluster).
    #[error("finding a Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from a kubeconfig file, or inferred (`KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Runs the watchers and the route status writer until the destination is dropped.
pub async fn run(client: Client, dest: Destination) {
    const KINDS: usize = 13;
    let synced = Arc::new(AtomicUsize::new(0));
    tokio::join!(
        follow::<Service>(
            Api::all(client.clone()),
            Kind::Service,
            &dest,
            &synced,
            KINDS,
            None,
            |o| Some(o.into_object()),
        ),
        follow::<EndpointSlice>(
            Api::all(client.clone()),
            Kind::EndpointSlice,
            &dest,
            &synced,
            KINDS,
            None,
            |o| Some(o.into_object()),
        ),
        follow::<Pod>(
            Api::all(client.clone()),
            Kind::Pod,
            &dest,
            &synced,
            KINDS,
            None,
            |o| Some(o.into_object()),
        ),
        follow::<ReplicaSet>(
            Api::all(client.clone()),
            Kind::ReplicaSet,
            &dest,
            &synced,
            KINDS,
            Some(
                "serving without them (a pod's deployment label is inferred from its \
                 pod-template-hash); grant list and watch on them to the destination's ClusterRole",
            ),
            |o| Some(o.into_object()),
        ),
        follow_dynamic(&client, Kind::HttpRoute, &dest, &synced, KINDS),
        follow_dynamic(&client, Kind::GrpcRoute, &dest, &synced, KINDS),
        follow_dynamic(&client, Kind::HttpFault, &dest, &synced, KINDS),
        follow_dynamic(&client, Kind::Server, &dest, &synced, KINDS),
        follow_dynamic(&client, Kind::AuthorizationPolicy, &dest, &synced, KINDS),
        follow_dynamic(&client, Kind::MeshTlsAuthentication, &dest, &synced, KINDS),
        follow_dynamic(&client, Kind::NetworkAuthentication, &dest, &synced, KINDS),
        follow_dynamic(
            &client,
            Kind::HttpLocalRateLimitPolicy,
            &dest,
            &synced,
            KINDS
        ),
        follow_dynamic(&client, Kind::MetaRoute, &dest, &synced, KINDS),
        write_statuses(client.clone(), &dest),
    );
}

/// The API resource of a kind watched as `DynamicObject`s.
pub fn api_resource(kind: Kind) -> Option<ApiResource> {
    let (group, version, plural) = match kind {
        Kind::HttpRoute => (GATEWAY_GROUP, "v1", "httproutes"),
        Kind::GrpcRoute => (GATEWAY_GROUP, "v1", "grpcroutes"),
        Kind::HttpFault => (POLICY_GROUP, "v1alpha1", "httpfaults"),
        Kind::Server => (POLICY_GROUP, "v1alpha1", "servers"),
        Kind::AuthorizationPolicy => (POLICY_GROUP, "v1alpha1", "authorizationpolicies"),
        Kind::MeshTlsAuthentication => (POLICY_GROUP, "v1alpha1", "meshtlsauthentications"),
        Kind::NetworkAuthentication => (POLICY_GROUP, "v1alpha1", "networkauthentications"),
        Kind::HttpLocalRateLimitPolicy => (POLICY_GROUP, "v1alpha1", "httplocalratelimitpolicies"),
        Kind::MetaRoute => (POLICY_GROUP, "v1alpha1", "metaroutes"),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk(group, version, kind.as_str());
    Some(ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// Follows an optional kind of a CRD through `DynamicObject`s decoded like the folder's.
async fn follow_dynamic(
    client: &Client,
    kind: Kind,
    dest: &Destination,
    synced: &AtomicUsize,
    kinds: usize,
) {
    let Some(ar) = api_resource(kind) else {
        return;
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let api_version = ar.api_version.clone();
    let decode = move |object: DynamicObject| -> Option<Object> {
        let mut value = serde_json::to_value(&object).ok()?;
        if let Some(map) = value.as_object_mut() {
            map.insert("kind".into(), kind.as_str().into());
            map.insert("apiVersion".into(), api_version.clone().into());
        }
        let mut decoded = super::decode(0, value);
        match decoded.pop() {
            Some(Ok(object)) => Some(object),
            Some(Err(error)) => {
                tracing::warn!(kind = kind.as_str(), %error, "skipping an object that does not decode");
                None
            }
            None => None,
        }
    };
    let why = match kind {
        Kind::HttpFault => {
            "serving without them (an ExtensionRef to an HTTPFault answers 500); install the \
             mesh's CRDs and grant list and watch on them to the destination's ClusterRole"
        }
        Kind::Server => {
            "serving without them (every port gets the proxy's default inbound policy); \
             install the mesh's CRDs and grant list and watch on them to the destination's \
             ClusterRole"
        }
        Kind::AuthorizationPolicy | Kind::MeshTlsAuthentication | Kind::NetworkAuthentication => {
            "serving without them (a Server's port then authorizes no client, or only what its \
             other policies allow); install the mesh's CRDs and grant list and watch on them \
             to the destination's ClusterRole"
        }
        Kind::HttpLocalRateLimitPolicy => {
            "serving without them (no Server is rate limited); install the mesh's CRDs and \
             grant list and watch on them to the destination's ClusterRole"
        }
        Kind::MetaRoute => {
            "serving without them (a codec port's requests all go to its Service); install the \
             mesh's CRDs and grant list and watch on them to the destination's ClusterRole"
        }
        _ => {
            "serving Services without routes; install the Gateway API CRDs and grant list, \
             watch and status patch on them to the destination's ClusterRole"
        }
    };
    follow(api, kind, dest, synced, kinds, Some(why), decode).await;
}

/// Converts a typed object into an index object.
trait IntoObject {
    fn into_object(self) -> Object;
}

impl IntoObject for Service {
    fn into_object(self) -> Object {
        Object::Service(Box::new(self))
    }
}

impl IntoObject for EndpointSlice {
    fn into_object(self) -> Object {
        Object::EndpointSlice(Box::new(self))
    }
}

impl IntoObject for Pod {
    fn into_object(self) -> Object {
        Object::Pod(Box::new(self))
    }
}

impl IntoObject for ReplicaSet {
    fn into_object(self) -> Object {
        Object::ReplicaSet(Box::new(self))
    }
}

/// Follows one kind: applies its events to the index, replacing the kind on each (re-)list. An
/// optional kind (`optional` says what serving without it means) that the API forbids (403) or
/// does not have (404: its CRD is not installed) counts as synced: the destination serves
/// without it, and the watcher keeps trying in the background.
async fn follow<K>(
    api: Api<K>,
    kind: Kind,
    dest: &Destination,
    synced: &AtomicUsize,
    kinds: usize,
    optional: Option<&str>,
    into: impl Fn(K) -> Option<Object>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut listing: Option<Vec<Object>> = None;
    let mut listed_once = false;
    let mut warned = Warned::default();
    let count_synced = || {
        if synced.fetch_add(1, Ordering::SeqCst) + 1 == kinds {
            tracing::info!("all kinds listed: ready");
            dest.set_ready();
        }
    };
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        let started = Instant::now();
        let event = match event {
            Ok(event) => event,
            Err(error) if optional.is_some() && unavailable(&error).is_some() => {
                if !listed_once {
                    listed_once = true;
                    let what = unavailable(&error).unwrap_or_default();
                    tracing::warn!(
                        kind = kind.as_str(), %error,
                        "{what} {}s: {}. Retrying in the background",
                        kind.as_str(),
                        optional.unwrap_or_default()
                    );
                    count_synced();
                } else {
                    tracing::debug!(kind = kind.as_str(), %error, "still unavailable; retrying");
                }
                continue;
            }
            Err(error) => {
                // 410 Expired makes the watcher re-list; other errors are retried with backoff.
                tracing::warn!(?kind, %error, "watch error; retrying");
                continue;
            }
        };
        match event {
            Event::Init => listing = Some(Vec::new()),
            Event::InitApply(object) => {
                if let (Some(list), Some(object)) = (listing.as_mut(), into(object)) {
                    warned.warn_about(&object);
                    list.push(object);
                }
            }
            Event::InitDone => {
                let objects = listing.take().unwrap_or_default();
                tracing::info!(kind = kind.as_str(), objects = objects.len(), "listed");
                dest.update(started, None, |index| index.replace(kind, objects));
                if !listed_once {
                    listed_once = true;
                    count_synced();
                }
            }
            Event::Apply(object) => {
                let Some(object) = into(object) else {
                    continue;
                };
                warned.warn_about(&object);
                let namespaces = BTreeSet::from([object.key().namespace]);
                tracing::debug!(key = ?object.key(), "applied");
                dest.update(started, Some(&namespaces), |index| index.apply(object));
            }
            Event::Delete(object) => {
                let meta = object.meta();
                let key = ObjectKey {
                    kind,
                    namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                    name: meta.name.clone().unwrap_or_default(),
                };
                let namespaces = BTreeSet::from([key.namespace.clone()]);
                tracing::debug!(?key, "deleted");
                warned.0.remove(&key);
                dest.update(started, Some(&namespaces), |index| index.delete(&key));
            }
        }
    }
}

/// The warnings last logged per object, so that an object is warned about once per problem,
/// not again at every update (a route's own status write comes back as one).
#[derive(Default)]
struct Warned(std::collections::HashMap<ObjectKey, Vec<String>>);

impl Warned {
    /// Logs what is worth a warning about an object read from the API, unless it was already.
    fn warn_about(&mut self, object: &Object) {
        let key = object.key();
        let warnings = object.warnings();
        if self
            .0
            .get(&key)
            .map_or(warnings.is_empty(), |w| *w == warnings)
        {
            return;
        }
        for reason in &warnings {
            tracing::warn!(
                kind = key.kind.as_str(),
                namespace = %key.namespace,
                name = %key.name,
                %reason,
                "object read with a problem"
            );
        }
        if warnings.is_empty() {
            self.0.remove(&key);
        } else {
            self.0.insert(key, warnings);
        }
    }
}

/// Whether a watcher error is the API's refusal (403: RBAC) or an unknown resource (404: a CRD
/// that is not installed), not a passing failure; what to call it in a log.
fn unavailable(error: &watcher::Error) -> Option<&'static str> {
    let code = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code,
        watcher::Error::WatchError(status) => status.code,
        _ => return None,
    };
    match code {
        403 => Some("not allowed to list"),
        404 => Some("the API server has no"),
        _ => None,
    }
}

// === route status ===

/// Writes the routes' status after every change that can change it, once the source synced.
async fn write_statuses(client: Client, dest: &Destination) {
    let mut changes = dest.policy_changes();
    let mut ready = dest.ready();
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    loop {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut retry = false;
        for report in dest.route_reports() {
            retry |= !write_status(&client, &report, &now).await;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(STATUS_RETRY), if retry => {}
        }
        // Let a burst of changes (a re-list) settle into one round of writes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        changes.borrow_and_update();
    }
}

/// Writes one route's status if it changes; `false` when the write failed.
async fn write_status(client: &Client, report: &RouteReport, now: &Time) -> bool {
    let Some(status) = routes::merge_status(
        report.current.as_ref(),
        &report.parents,
        report.generation,
        now,
    ) else {
        return true;
    };
    let Some(ar) = api_resource(report.kind) else {
        return true;
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &report.namespace, &ar);
    let patch = serde_json::json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"resourceVersion": report.resource_version},
        "status": status,
    });
    match api
        .patch_status(&report.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(
                kind = report.kind.as_str(),
                namespace = %report.namespace,
                name = %report.name,
                "route status written"
            );
            true
        }
        Err(error) => {
            tracing::warn!(
                kind = report.kind.as_str(),
                namespace = %report.namespace,
                name = %report.name,
                %error,
                "cannot write the route's status; retrying"
            );
            false
        }
    }
}
