//! The cluster target: the pods and workloads listed from the Kubernetes API (into the same
//! [`State`] the local target reads from its folder), the metrics from the viz metrics API and
//! the taps through the viz tap aggregator, both reached through the API server's service proxy
//! (`/api/v1/namespaces/mesh-viz/services/http:<service>:<port>/proxy/…`), so `mesh viz` needs
//! nothing but the operator's kubeconfig.
//!
//! Only the namespaces a command needs are listed ([`Scope`]): a user allowed one namespace can
//! look at it; lists of the whole cluster only with `-A`.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http_body_util::BodyExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api as KubeApi, ListParams};
use mesh_viz::client::AggregatorTaps;
use mesh_viz::model::Kind;
use mesh_viz::source::{Api, Chunks, Getting, MetricsApi, Streaming};

use super::local::{Objects, State};
use super::resource::Resource;
use super::{Hints, Target, VizArgs, VizCommand};

/// The viz component's namespace (`mesh viz install`).
pub const VIZ_NAMESPACE: &str = "mesh-viz";
/// The metrics API's Service, as the service proxy names it (`scheme:name:port`).
pub const METRICS_API_SERVICE: &str = "http:metrics-api:8085";
/// The tap aggregator's Service.
pub const TAP_SERVICE: &str = "http:tap:8089";
/// `-n`'s default in a cluster, as kubectl's.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What to do when the viz component is missing.
pub const NOT_INSTALLED: &str = "viz is not installed: run `mesh viz install | kubectl apply -f -`";

/// How long one metrics API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error answer read.
const MAX_ERROR: usize = 64 * 1024;

/// Which namespaces' objects a command reads from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (`-A`): lists of the whole cluster.
    All,
    /// These namespaces only: one list per kind and namespace.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// What `mesh viz ARGS` reads: with `-A` every namespace; otherwise `-n`'s (by default
    /// `default`) and those the command names as resources (`stat ns/demo`, `--to ns/demo`).
    pub fn of(args: &VizArgs) -> Scope {
        if args.all_namespaces {
            return Scope::All;
        }
        let mut namespaces = BTreeSet::from([args
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())]);
        let named: Vec<&Resource> = match &args.command {
            VizCommand::Stat(a) => [Some(&a.resource), a.to.as_ref(), a.from.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            VizCommand::Routes(a) => vec![&a.resource],
            VizCommand::Authz(a) => vec![&a.resource],
            VizCommand::Edges(a) => vec![&a.resource],
            VizCommand::Tap(a) => vec![&a.filter.resource],
            VizCommand::Top(a) => vec![&a.filter.resource],
            VizCommand::Dashboard(_) | VizCommand::Install(_) | VizCommand::Uninstall => vec![],
        };
        namespaces.extend(
            named
                .into_iter()
                .filter(|r| r.kind == Kind::Namespace)
                .filter_map(|r| r.name.clone()),
        );
        Scope::Namespaces(namespaces)
    }
}

/// The cluster of `client` as a target: checks that the viz component is installed, then reads
/// the pods and workloads of the namespaces of `scope`.
pub async fn target(client: kube::Client, scope: &Scope) -> anyhow::Result<Target> {
    check_installed(&client).await?;
    let state = read_state(&client, scope).await?;
    Ok(Target {
        state: Arc::new(state),
        metrics: Arc::new(MetricsApi {
            api: Arc::new(ServiceProxy::new(client.clone(), METRICS_API_SERVICE)),
        }),
        taps: Arc::new(AggregatorTaps {
            api: Arc::new(ServiceProxy::new(client, TAP_SERVICE)),
        }),
        default_namespace: DEFAULT_NAMESPACE,
        hints: Hints {
            unreachable: "; is the viz component running? `kubectl -n mesh-viz get pods`",
            forbidden: "; the tap aggregator taps as mesh-tap.mesh-viz: a proxy with another \
                        MESH_PROXY_TAP_IDENTITY (config.mesh.io annotations) refuses it",
        },
    })
}

/// Fails with what to do unless the viz Services exist.
async fn check_installed(client: &kube::Client) -> anyhow::Result<()> {
    let services: KubeApi<Service> = KubeApi::namespaced(client.clone(), VIZ_NAMESPACE);
    let list = match services.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.is_not_found() => bail!("{NOT_INSTALLED}"),
        // A user may reach the viz APIs (services/proxy) without listing the Services: the
        // service proxy says so itself when the viz component is missing.
        Err(kube::Error::Api(status)) if status.code == 403 => return Ok(()),
        Err(e) => {
            return Err(e).context(format!(
                "listing the Services of namespace {VIZ_NAMESPACE} (the viz component)"
            ))
        }
    };
    let names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    let missing: Vec<&str> = [METRICS_API_SERVICE, TAP_SERVICE]
        .iter()
        .filter_map(|s| s.split(':').nth(1))
        .filter(|s| !names.iter().any(|n| n == s))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{NOT_INSTALLED} (namespace {VIZ_NAMESPACE} has no Service {})",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Lists the objects the viz commands read, of the namespaces of `scope`.
async fn read_state(client: &kube::Client, scope: &Scope) -> anyhow::Result<State> {
    async fn list<K>(client: &kube::Client, scope: &Scope, what: &str) -> anyhow::Result<Vec<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let params = ListParams::default();
        match scope {
            Scope::All => Ok(KubeApi::<K>::all(client.clone())
                .list(&params)
                .await
                .with_context(|| {
                    format!(
                        "listing the {what} of every namespace (-A; without it, mesh viz lists \
                         only the namespaces it needs)"
                    )
                })?
                .items),
            Scope::Namespaces(namespaces) => {
                let mut all = Vec::new();
                for ns in namespaces {
                    let api: KubeApi<K> = KubeApi::namespaced(client.clone(), ns);
                    let list = api
                        .list(&params)
                        .await
                        .with_context(|| format!("listing the {what} of namespace {ns}"))?;
                    all.extend(list.items);
                }
                Ok(all)
            }
        }
    }
    let (pods, replicasets, services, slices, deployments, statefulsets, daemonsets) = tokio::try_join!(
        list::<Pod>(client, scope, "pods"),
        list::<ReplicaSet>(client, scope, "ReplicaSets"),
        list::<Service>(client, scope, "Services"),
        list::<EndpointSlice>(client, scope, "EndpointSlices"),
        list::<Deployment>(client, scope, "Deployments"),
        list::<StatefulSet>(client, scope, "StatefulSets"),
        list::<DaemonSet>(client, scope, "DaemonSets"),
    )?;
    let mut objects = Objects::default();
    pods.into_iter().for_each(|p| objects.pod(p));
    replicasets.into_iter().for_each(|r| objects.replicaset(r));
    services.into_iter().for_each(|s| objects.service(s));
    slices.into_iter().for_each(|s| objects.slice(s));
    for d in deployments {
        objects.workload(&d.metadata, Kind::Deployment);
    }
    for s in statefulsets {
        objects.workload(&s.metadata, Kind::StatefulSet);
    }
    for d in daemonsets {
        objects.workload(&d.metadata, Kind::DaemonSet);
    }
    Ok(objects.state())
}

/// A viz Service's HTTP API through the API server's service proxy.
pub struct ServiceProxy {
    client: kube::Client,
    /// `http:metrics-api:8085`.
    service: &'static str,
}

impl ServiceProxy {
    pub fn new(client: kube::Client, service: &'static str) -> ServiceProxy {
        ServiceProxy { client, service }
    }

    /// The service proxy's URL path of `path_and_query`.
    pub fn path(&self, path_and_query: &str) -> String {
        format!(
            "/api/v1/namespaces/{VIZ_NAMESPACE}/services/{}/proxy{path_and_query}",
            self.service
        )
    }

    async fn open(&self, path_and_query: &str) -> io::Result<(u16, Chunks)> {
        let req = http::Request::get(self.path(path_and_query))
            .body(kube::client::Body::from(Vec::new()))
            .map_err(io::Error::other)?;
        let rsp = self.client.send(req).await.map_err(io::Error::other)?;
        let status = rsp.status().as_u16();
        let chunks = rsp.into_body().into_data_stream().map_err(io::Error::other);
        let mut chunks: Chunks = Box::pin(chunks);
        if status == 200 {
            return Ok((status, chunks));
        }
        // An error: the viz API's own (`{"error": …}`, passed on), or the API server's (a
        // Status: the Service, its namespace or its endpoints are missing, or RBAC said no).
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk?);
            if body.len() > MAX_ERROR {
                break;
            }
        }
        if let Some(message) = api_server_status(&body) {
            let name = self.service.split(':').nth(1).unwrap_or(self.service);
            return Err(io::Error::other(match status {
                404 => format!("{NOT_INSTALLED} (the API server: {message})"),
                503 => format!(
                    "the viz Service {name} has no running pod ({message}): \
                     `kubectl -n {VIZ_NAMESPACE} get pods` shows why"
                ),
                403 => format!(
                    "the API server refused ({message}): mesh viz needs get on \
                     services/proxy in namespace {VIZ_NAMESPACE}"
                ),
                _ => format!("the API server answered {status}: {message}"),
            }));
        }
        let whole: Chunks = Box::pin(futures_util::stream::once(
            async move { Ok(Bytes::from(body)) },
        ));
        Ok((status, whole))
    }
}

/// The message of a Kubernetes `Status` body, if it is one.
fn api_server_status(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    (value.get("kind")?.as_str()? == "Status").then(|| {
        value
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string()
    })
}

impl Api for ServiceProxy {
    fn get<'a>(&'a self, path_and_query: &'a str) -> Getting<'a> {
        Box::pin(async move {
            let call = async {
                let (status, mut chunks) = self.open(path_and_query).await?;
                let mut body = Vec::new();
                while let Some(chunk) = chunks.next().await {
                    body.extend_from_slice(&chunk?);
                }
                Ok((status, Bytes::from(body)))
            };
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer through the API server within {CALL_TIMEOUT:?}"),
                    )
                })?
        })
    }

    fn stream<'a>(&'a self, path_and_query: &'a str) -> Streaming<'a> {
        Box::pin(self.open(path_and_query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_the_api_server_are_told_from_the_viz_apis_errors() {
        assert_eq!(
            api_server_status(
                br#"{"kind":"Status","code":404,"message":"services \"tap\" not found"}"#
            ),
            Some("services \"tap\" not found".into())
        );
        assert_eq!(
            api_server_status(br#"{"error":"pod demo/x not found"}"#),
            None
        );
        assert_eq!(api_server_status(b"not json"), None);
    }
}
