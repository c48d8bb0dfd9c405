//! The Kubernetes source: kube-rs watchers of Services, EndpointSlices, Pods and ReplicaSets.
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

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::destination::Destination;
use crate::index::{Kind, Object, ObjectKey};

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

/// Runs the four watchers until the destination is dropped.
pub async fn run(client: Client, dest: Destination) {
    const KINDS: usize = 4;
    let synced = Arc::new(AtomicUsize::new(0));
    tokio::join!(
        follow::<Service>(
            Api::all(client.clone()),
            Kind::Service,
            &dest,
            &synced,
            KINDS,
            false
        ),
        follow::<EndpointSlice>(
            Api::all(client.clone()),
            Kind::EndpointSlice,
            &dest,
            &synced,
            KINDS,
            false
        ),
        follow::<Pod>(
            Api::all(client.clone()),
            Kind::Pod,
            &dest,
            &synced,
            KINDS,
            false
        ),
        follow::<ReplicaSet>(
            Api::all(client),
            Kind::ReplicaSet,
            &dest,
            &synced,
            KINDS,
            true
        ),
    );
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
/// `optional` kind that the API forbids counts as synced (the destination serves without it).
async fn follow<K>(
    api: Api<K>,
    kind: Kind,
    dest: &Destination,
    synced: &AtomicUsize,
    kinds: usize,
    optional: bool,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + IntoObject + 'static,
{
    let mut listing: Option<Vec<Object>> = None;
    let mut listed_once = false;
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
            Err(error) if optional && forbidden(&error) => {
                if !listed_once {
                    listed_once = true;
                    tracing::warn!(
                        ?kind, %error,
                        "not allowed to list {kind:?}s: serving without them (a pod's deployment \
                         label is inferred from its pod-template-hash); grant list and watch on \
                         them to the destination's ClusterRole. Retrying in the background"
                    );
                    count_synced();
                } else {
                    tracing::debug!(?kind, %error, "still forbidden; retrying");
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
                if let Some(list) = listing.as_mut() {
                    list.push(object.into_object());
                }
            }
            Event::InitDone => {
                let objects = listing.take().unwrap_or_default();
                tracing::info!(?kind, objects = objects.len(), "listed");
                dest.update(started, None, |index| index.replace(kind, objects));
                if !listed_once {
                    listed_once = true;
                    count_synced();
                }
            }
            Event::Apply(object) => {
                let object = object.into_object();
                let namespaces = BTreeSet::from([object.key().namespace]);
                tracing::debug!(key = ?object.key(), "applied");
                dest.update(started, Some(&namespaces), |index| index.apply(object));
            }
            Event::Delete(object) => {
                let key: ObjectKey = object.into_object().key();
                let namespaces = BTreeSet::from([key.namespace.clone()]);
                tracing::debug!(?key, "deleted");
                dest.update(started, Some(&namespaces), |index| index.delete(&key));
            }
        }
    }
}

/// Whether a watcher error is the API's refusal (403): RBAC, not a passing failure.
fn forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 403,
        watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}
