//! `mesh version`: the CLI's version and, when a mesh is reachable, its control plane's (per
//! controller: the image tag of its container) and its proxies' (per namespace and version: the
//! meshed pods' `mesh.io/proxy-version` annotation), read from the objects alone, on the local
//! mesh of `mesh demo` as in a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::api::ListParams;
use mesh_api::inject::{INIT_CONTAINER, PROXY_CONTAINER, PROXY_VERSION_ANNOTATION};
use serde::Serialize;

use crate::diagnostics::local::{LocalMesh, CONTROL_PLANE_LABEL};
use crate::install::NAMESPACE;
use crate::kube::ClusterArgs;
use crate::target::{Target, TargetArgs};

/// How long the API server may take to answer all of it.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Pods listed per request.
const PAGE: u32 = 500;

/// `mesh version`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct VersionArgs {
    /// Prints the CLI's version only, without contacting any mesh.
    #[arg(long)]
    pub client: bool,
    /// Only the proxies of this namespace. Without it, every namespace's, which in a cluster
    /// needs list access to pods in all namespaces.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// `human` or `json`.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "human",
          value_parser = ["human", "json"])]
    pub output: String,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// What `mesh version` found: the client's version always, the mesh's when it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    /// This CLI's version (`v0.1.0`).
    pub client: String,
    /// Where the mesh's versions were read: `local` or `kube`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'static str>,
    /// The controllers' versions, by controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<Found<Vec<Component>>>,
    /// The proxies' versions: meshed pods per namespace and version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxies: Option<Found<Vec<ProxyVersion>>>,
    /// The namespace the proxies were listed in (`-n`); all when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A part of the mesh that was read, or why it could not be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Found<T> {
    Versions(T),
    Error(String),
}

/// One controller of the control plane.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Component {
    /// `destination`, `identity`, `injector`: its container's name.
    pub component: String,
    /// Its image's tag (or digest).
    pub version: String,
}

/// How many meshed pods of a namespace run a proxy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyVersion {
    pub namespace: String,
    /// The pods' `mesh.io/proxy-version`; `unknown` for a proxy without it.
    pub version: String,
    pub pods: usize,
}

/// What `mesh version` prints, and the error to print after it (exit 1).
#[derive(Debug)]
pub struct Outcome {
    pub output: String,
    pub error: Option<anyhow::Error>,
}

/// `mesh version`: the client's version, then the mesh's from the target the flags name. When
/// no mesh can be reached, the client's version is still printed, with the error after it.
pub fn run(args: &VersionArgs, cluster: &ClusterArgs) -> Outcome {
    let mut versions = Versions {
        client: crate::install::version(),
        ..Versions::default()
    };
    let error = if args.client {
        None
    } else {
        read(args, cluster, &mut versions).err()
    };
    let output = match args.output.as_str() {
        "json" => versions.json(),
        _ => versions.human(),
    };
    Outcome { output, error }
}

/// Reads the mesh's versions into `versions`.
fn read(args: &VersionArgs, cluster: &ClusterArgs, versions: &mut Versions) -> anyhow::Result<()> {
    let namespace = args.namespace.as_deref();
    versions.namespace = args.namespace.clone();
    match args.target.resolve(cluster)? {
        Target::Local(local) => {
            // Only files are read: no need to enter the local mesh's namespaces.
            let mesh = LocalMesh::read(&local.objects)?;
            let controllers: Vec<&PodSpec> = mesh
                .control_plane()
                .filter_map(|p| p.spec.as_ref())
                .collect();
            versions.target = Some("local");
            versions.control_plane = Some(if controllers.is_empty() {
                Found::Error(
                    "the local mesh's objects do not record it: restart it (`mesh demo down; \
                     mesh demo`), one started by an older mesh does not"
                        .into(),
                )
            } else {
                Found::Versions(components(controllers))
            });
            versions.proxies = Some(Found::Versions(proxy_versions(mesh.pods(), namespace)));
        }
        Target::Kube => {
            let implicit = args.target.implicit(cluster);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (control_plane, proxies) = runtime.block_on(async {
                let client = crate::diagnostics::connect(cluster, implicit).await?;
                tokio::time::timeout(CLUSTER_TIMEOUT, read_cluster(&client, namespace))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("no answer from the API server within {CLUSTER_TIMEOUT:?}")
                    })?
            })?;
            versions.target = Some("kube");
            versions.control_plane = Some(control_plane);
            versions.proxies = Some(proxies);
        }
    }
    Ok(())
}

type Read = (Found<Vec<Component>>, Found<Vec<ProxyVersion>>);

/// The controller Deployments of namespace `mesh` and the meshed pods (of `namespace`, or all).
/// An error only when the API server cannot be reached; what it refuses is told in the result.
async fn read_cluster(client: &kube::Client, namespace: Option<&str>) -> anyhow::Result<Read> {
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let control_plane = match deployments
        .list(&ListParams::default().labels(CONTROL_PLANE_LABEL))
        .await
    {
        Ok(list) => Found::Versions(components(
            list.items
                .iter()
                .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref())
                .collect(),
        )),
        Err(kube::Error::Api(e)) => Found::Error(format!("the API server refused: {}", e.message)),
        Err(e) => {
            return Err(e).context(format!(
                "reaching the cluster (listing the Deployments of namespace {NAMESPACE})"
            ))
        }
    };
    let pods: kube::Api<Pod> = match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let mut all = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    let proxies = loop {
        match pods.list(&params).await {
            Ok(list) => {
                let next = list.metadata.continue_.clone().filter(|c| !c.is_empty());
                all.extend(list.items);
                match next {
                    Some(token) => params = params.continue_token(&token),
                    None => break Found::Versions(proxy_versions(&all, namespace)),
                }
            }
            Err(kube::Error::Api(e)) => {
                let hint = match namespace {
                    None if e.code == 403 => "; -n NAMESPACE lists one namespace",
                    _ => "",
                };
                break Found::Error(format!("the API server refused: {}{hint}", e.message));
            }
            Err(e) => return Err(e).context("reaching the cluster (listing pods)"),
        }
    };
    Ok((control_plane, proxies))
}

/// The controllers of pod specs (a Deployment's template, the local control pod): each
/// container but the proxy's, by name, with its image's version.
fn components(specs: Vec<&PodSpec>) -> Vec<Component> {
    let mut components: Vec<Component> = specs
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .filter(|c| c.name != PROXY_CONTAINER && c.name != INIT_CONTAINER)
        .map(|c| Component {
            component: c.name.clone(),
            version: image_version(c.image.as_deref().unwrap_or("")),
        })
        .collect();
    components.sort();
    components.dedup();
    components
}

/// The version of an image reference: its tag, else its digest, else `latest` (what a
/// reference without either pulls).
///
/// ```
/// use mesh_cli::version::image_version;
/// assert_eq!(image_version("ghcr.io/mesh/controller:v0.1.0"), "v0.1.0");
/// assert_eq!(image_version("registry:5000/mesh/controller"), "latest");
/// assert_eq!(image_version("mesh/controller@sha256:abcd"), "sha256:abcd");
/// assert_eq!(image_version("mesh/controller:v0.1.0@sha256:abcd"), "v0.1.0");
/// ```
pub fn image_version(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) if !tag.is_empty() => tag.to_string(),
        (_, Some(digest)) => digest.to_string(),
        _ => "latest".to_string(),
    }
}

/// The meshed pods (of `namespace`, or all) counted per namespace and proxy version; finished
/// pods (Succeeded, Failed) run no proxy and are left out.
fn proxy_versions(pods: &[Pod], namespace: Option<&str>) -> Vec<ProxyVersion> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for pod in pods {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROXY_VERSION_ANNOTATION));
        let meshed = annotation.is_some() || crate::diagnostics::meshed(pod);
        if !meshed
            || namespace.is_some_and(|n| n != ns)
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let version = annotation.map_or("unknown", String::as_str);
        *counts
            .entry((ns.to_string(), version.to_string()))
            .or_default() += 1;
    }
    let mut versions: Vec<ProxyVersion> = counts
        .into_iter()
        .map(|((namespace, version), pods)| ProxyVersion {
            namespace,
            version,
            pods,
        })
        .collect();
    versions.sort_by(|a, b| {
        (a.namespace.as_str(), version_order(&a.version))
            .cmp(&(b.namespace.as_str(), version_order(&b.version)))
    });
    versions
}

/// Orders versions as people read them (`v0.9.0` before `v0.10.0`); what does not read as
/// a version comes after the versions, by its text.
fn version_order(v: &str) -> (bool, Vec<u64>, &str) {
    let parts: Option<Vec<u64>> = v
        .strip_prefix('v')
        .unwrap_or(v)
        .split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse().ok())
        .collect();
    match parts {
        Some(parts) => (false, parts, v),
        None => (true, Vec::new(), v),
    }
}

impl Versions {
    /// The versions for a person, one line per part.
    pub fn human(&self) -> String {
        let mut out = format!("Client version: {}\n", self.client);
        let local = self.target == Some("local");
        if let Some(control_plane) = &self.control_plane {
            let label = match local {
                true => "Control plane version (local mesh)",
                false => "Control plane version",
            };
            let text = match control_plane {
                Found::Error(why) => format!("unknown ({why})"),
                Found::Versions(c) if c.is_empty() => format!(
                    "not installed (no controller Deployment in namespace {NAMESPACE}): \
                     `mesh install | kubectl apply -f -`"
                ),
                Found::Versions(components) => control_plane_text(components),
            };
            let _ = writeln!(out, "{label}: {text}");
        }
        let scope = match &self.namespace {
            Some(ns) => format!(" in namespace {ns}"),
            None => String::new(),
        };
        match &self.proxies {
            None => {}
            Some(Found::Error(why)) => {
                let _ = writeln!(out, "Proxy versions: unknown ({why})");
            }
            Some(Found::Versions(v)) if v.is_empty() => {
                let _ = writeln!(out, "Proxy versions: none (no meshed pod{scope})");
            }
            Some(Found::Versions(versions)) => {
                out.push_str("Proxy versions:\n");
                let mut by_namespace: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for v in versions {
                    let pods = if v.pods == 1 { "pod" } else { "pods" };
                    by_namespace
                        .entry(&v.namespace)
                        .or_default()
                        .push(format!("{} ({} {pods})", v.version, v.pods));
                }
                for (ns, versions) in by_namespace {
                    let _ = writeln!(out, "  {ns}: {}", versions.join(", "));
                }
            }
        }
        out
    }

    /// The versions as one JSON document.
    pub fn json(&self) -> String {
        // Strings, numbers and lists of them: serializing cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// `v0.1.0` when every controller runs one version, else each version with its controllers:
/// `v0.1.0 (destination, identity), v0.0.9 (injector)`.
fn control_plane_text(components: &[Component]) -> String {
    let mut by_version: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in components {
        by_version.entry(&c.version).or_default().push(&c.component);
    }
    if by_version.len() == 1 {
        return by_version
            .into_keys()
            .next()
            .unwrap_or_default()
            .to_string();
    }
    let mut by_version: Vec<(&str, Vec<&str>)> = by_version.into_iter().collect();
    by_version.sort_by(|a, b| version_order(a.0).cmp(&version_order(b.0)));
    by_version
        .into_iter()
        .map(|(version, names)| format!("{version} ({})", names.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_sort_as_people_read_them() {
        let mut v = vec![
            "v0.10.0",
            "latest",
            "v0.9.1",
            "v0.9.0-rc.1",
            "v1.0.0",
            "sha256:ab",
        ];
        v.sort_by(|a, b| version_order(a).cmp(&version_order(b)));
        assert_eq!(
            v,
            [
                "v0.9.0-rc.1",
                "v0.9.1",
                "v0.10.0",
                "v1.0.0",
                "latest",
                "sha256:ab"
            ]
        );
    }

    fn pod(ns: &str, version: Option<&str>, phase: &str) -> Pod {
        let mut pod = json!({
            "metadata": {"name": "p", "namespace": ns, "annotations": {}},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": phase},
        });
        if let Some(v) = version {
            pod["metadata"]["annotations"][PROXY_VERSION_ANNOTATION] = v.into();
        }
        serde_json::from_value(pod).unwrap()
    }

    #[test]
    fn proxies_are_counted_per_namespace_and_version() {
        let mut unannotated = pod("shop", None, "Running");
        unannotated.spec.as_mut().unwrap().containers[0].name = PROXY_CONTAINER.into();
        let pods = vec![
            pod("demo", Some("v0.1.0"), "Running"),
            pod("demo", Some("v0.1.0"), "Pending"),
            pod("demo", Some("v0.1.0"), "Succeeded"),
            pod("shop", Some("v0.0.9"), "Running"),
            pod("shop", Some("v0.1.0"), "Running"),
            pod("shop", None, "Running"),
            unannotated,
        ];
        let all = proxy_versions(&pods, None);
        let text: Vec<String> = all
            .iter()
            .map(|v| format!("{} {} {}", v.namespace, v.version, v.pods))
            .collect();
        assert_eq!(
            text,
            [
                "demo v0.1.0 2",
                "shop v0.0.9 1",
                "shop v0.1.0 1",
                "shop unknown 1"
            ]
        );
        assert_eq!(proxy_versions(&pods, Some("demo")).len(), 1);
        assert!(proxy_versions(&pods, Some("other")).is_empty());
    }

    #[test]
    fn the_control_plane_is_one_version_or_each_with_its_controllers() {
        let c = |component: &str, version: &str| Component {
            component: component.into(),
            version: version.into(),
        };
        assert_eq!(
            control_plane_text(&[c("destination", "v0.1.0"), c("identity", "v0.1.0")]),
            "v0.1.0"
        );
        assert_eq!(
            control_plane_text(&[
                c("destination", "v0.1.0"),
                c("identity", "v0.1.0"),
                c("injector", "v0.0.9")
            ]),
            "v0.0.9 (injector), v0.1.0 (destination, identity)"
        );
    }

    #[test]
    fn the_proxy_is_not_a_controller() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [
            {"name": "mesh-proxy", "image": "ghcr.io/mesh/proxy:v0.1.0"},
            {"name": "destination", "image": "ghcr.io/mesh/controller:v0.1.0"},
        ]}))
        .unwrap();
        assert_eq!(
            components(vec![&spec]),
            [Component {
                component: "destination".into(),
                version: "v0.1.0".into()
            }]
        );
    }
}
