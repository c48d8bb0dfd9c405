//! The local mesh's side of `mesh diagnostics` and `mesh version`: the Pod objects of its folder
//! (the control pod's in namespace `mesh` names the controllers, their version and the
//! destination port), the destination controller called from inside the control pod's network
//! namespace, and a proxy's admin port from inside its pod's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use mesh_api::destination::{Connector, Update};

use crate::local::NETNS_ANNOTATION;
use crate::viz::local::connect_in;

/// `-n`'s default on the local mesh: the demo's namespace.
pub(crate) const DEFAULT_NAMESPACE: &str = "demo";

/// The label of the control plane's objects (on the local control pod as in a cluster).
pub(crate) const CONTROL_PLANE_LABEL: &str = "mesh.io/control-plane-ns";

/// What to do when the folder has no control pod (a local mesh started by an older `mesh`).
const NO_CONTROL_POD: &str = "restart the local mesh (`mesh demo down; mesh demo`): one started \
                              by an older mesh does not record its control pod";

/// A local mesh's Pod objects, read from its folder.
#[derive(Debug)]
pub(crate) struct LocalMesh {
    dir: PathBuf,
    pods: Vec<Pod>,
}

impl LocalMesh {
    /// Reads the Pods of every YAML (or JSON) file of `dir`.
    pub(crate) fn read(dir: &Path) -> anyhow::Result<LocalMesh> {
        if !dir.is_dir() {
            bail!(
                "no local mesh at {}: the folder does not exist; start one with `mesh demo`, \
                 or point --state (or MESH_LOCAL_STATE) at the folder of a local mesh",
                dir.display()
            );
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                !name.starts_with('.')
                    && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
            })
            .collect();
        files.sort();
        let mut pods = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value: serde_json::Value = serde::Deserialize::deserialize(document)
                    .with_context(|| format!("reading {}", path.display()))?;
                if value.get("kind").and_then(|k| k.as_str()) == Some("Pod") {
                    pods.push(
                        serde_json::from_value(value)
                            .with_context(|| format!("reading a Pod of {}", path.display()))?,
                    );
                }
            }
        }
        Ok(LocalMesh {
            dir: dir.to_path_buf(),
            pods,
        })
    }

    /// Every Pod object.
    pub(crate) fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The control plane's pods: the control pod (`mesh.io/control-plane-ns`).
    pub(crate) fn control_plane(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL))
        })
    }

    /// The destination controller's address and the network namespace to call it from (none:
    /// this one, for a folder whose controller runs on the host, as in-process tests have it).
    fn destination(&self) -> anyhow::Result<(SocketAddr, Option<String>)> {
        let found = self.control_plane().find_map(|pod| {
            let container = pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .find(|c| c.name == "destination")?;
            let port = container
                .ports
                .iter()
                .flatten()
                .next()
                .map(|p| p.container_port)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(crate::local::DESTINATION_PORT);
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let netns = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NETNS_ANNOTATION))
                .cloned();
            Some((SocketAddr::new(ip, port), netns))
        });
        found.ok_or_else(|| {
            anyhow::anyhow!(
                "the local mesh in {} has no Pod object for its destination controller: \
                 {NO_CONTROL_POD}",
                self.dir.display()
            )
        })
    }

    /// The first message of the destination controller's watch of `authority`.
    pub(crate) async fn first_update(&self, authority: &str) -> anyhow::Result<Update> {
        let (addr, netns) = self.destination()?;
        let connector = match netns {
            Some(netns) => {
                require_root()?;
                Connector::new(move |addr| {
                    let netns = netns.clone();
                    async move { connect_in(&netns, addr).await }
                })
            }
            None => Connector::default(),
        };
        let updates = mesh_api::destination::watch_with(connector, addr, authority);
        futures_util::pin_mut!(updates);
        match updates.next().await {
            Some(update) => Ok(update?),
            None => bail!("the destination controller at {addr} ended the watch without an answer"),
        }
    }

    /// The raw `/metrics` of the proxy of pod `namespace/name`.
    pub(crate) async fn proxy_metrics(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        let pod = self
            .pods
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .ok_or_else(|| {
                let mut names: Vec<&str> = self
                    .pods
                    .iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
                    .filter_map(|p| p.metadata.name.as_deref())
                    .collect();
                names.sort();
                match names.is_empty() {
                    true => anyhow::anyhow!(
                        "no pod {name} in namespace {namespace} of the local mesh, which has no \
                         pod there (use -n NAMESPACE)"
                    ),
                    false => anyhow::anyhow!(
                        "no pod {name} in namespace {namespace} of the local mesh; there are: {}",
                        names.join(", ")
                    ),
                }
            })?;
        if !super::meshed(pod) {
            bail!("pod {namespace}/{name} is not meshed: it has no proxy, so no proxy metrics");
        }
        let Some(netns) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETNS_ANNOTATION))
        else {
            bail!(
                "pod {namespace}/{name} has no {NETNS_ANNOTATION} annotation: it is not a pod of \
                 a local mesh"
            );
        };
        require_root()?;
        let stream = connect_in(netns, mesh_api::defaults::LOCAL_ADMIN_ADDR)
            .await
            .with_context(|| format!("connecting to the proxy of pod {namespace}/{name}"))?;
        get_text(stream, "/metrics")
            .await
            .with_context(|| format!("reading the metrics of pod {namespace}/{name}'s proxy"))
    }
}

/// Entering a network namespace needs root (in the local mesh's user namespace, its root).
fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "local mode needs root: mesh diagnostics enters the pods' network namespaces (run it \
             with sudo -E)"
        );
    }
    Ok(())
}

/// `GET path` over HTTP/1.1 on `stream`: the body of a 200, else an error with the body.
async fn get_text(stream: tokio::net::TcpStream, path: &str) -> anyhow::Result<String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("the proxy answered {status}: {}", text.trim());
    }
    Ok(text)
}
