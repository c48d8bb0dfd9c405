//! `mesh inject` and `mesh uninject`: add the mesh to workload manifests, or take it away.
//!
//! Input is files, folders (their `.yaml`, `.yml` and `.json` files, recursively, in name
//! order) or `-` for stdin; YAML streams or JSON, `List`s included. Everything that is not a
//! workload passes through unchanged. The proxy itself is added by [`mesh_api::inject`], the
//! same function the injector webhook uses, with the same inheritance: a pod's own
//! `config.mesh.io/*` annotations, else its namespace's (read from the cluster, or from a
//! Namespace object among the inputs), else the flags' values.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use mesh_api::inbound::{DefaultPolicy, DEFAULT_CLUSTER_NETWORKS};
use mesh_api::inject::{self as core, Outcome, ProxyConfig, SidecarMode};
use serde_json::Value;

use crate::manifest::{self, Format};

/// `mesh inject`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct InjectArgs {
    /// Files, folders, or `-` for stdin.
    #[arg(required = true, value_name = "FILE")]
    pub inputs: Vec<String>,
    /// Writes the whole proxy into the manifests (the mesh-init and mesh-proxy containers)
    /// instead of the mesh.io/inject annotation the injector webhook acts on.
    #[arg(long)]
    pub manual: bool,
    /// With --manual: run the proxy as a native sidecar (an init container that keeps running,
    /// Kubernetes 1.29 and later), or with `=false` as a classic one (a regular container placed
    /// first). By default from the cluster's version, or classic without a cluster. A pod's
    /// config.mesh.io/native-sidecar wins.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub native_sidecar: Option<bool>,
    /// With --manual: do not contact a cluster (the sidecar mode is then classic unless
    /// --native-sidecar says otherwise; the trust anchors must come from a file).
    #[arg(long)]
    pub ignore_cluster: bool,
    /// With --manual: the proxy image, without its tag.
    #[arg(long, value_name = "IMAGE", default_value = "ghcr.io/mesh/proxy")]
    pub proxy_image: String,
    /// With --manual: the proxy image's tag; by default this CLI's version.
    #[arg(long, value_name = "TAG")]
    pub image_tag: Option<String>,
    /// With --manual: the trust anchors (PEM); by default read from the cluster's
    /// mesh-trust-anchors ConfigMap.
    #[arg(long, value_name = "PATH")]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// With --manual: the trust domain of workload identities.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// With --manual: the cluster's DNS domain.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// With --manual: the proxy's log filter.
    #[arg(long, value_name = "FILTER", default_value = "warn,mesh_proxy=info")]
    pub proxy_log_level: String,
    /// With --manual: who may call the ports no Server selects, unless the pod or its namespace
    /// is annotated config.mesh.io/default-inbound-policy: all-unauthenticated,
    /// all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit (the
    /// install's proxy.defaultInboundPolicy).
    #[arg(long, value_name = "POLICY", default_value = "all-unauthenticated")]
    pub default_inbound_policy: DefaultPolicy,
    /// With --manual: the cluster's networks, which the cluster-* default inbound policies
    /// allow (the install's proxy.clusterNetworks).
    #[arg(long, value_name = "CIDRS", default_value = DEFAULT_CLUSTER_NETWORKS, value_parser = core::cluster_networks)]
    pub cluster_networks: String,
}

/// What happens to the documents.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Annotate workloads and namespaces with `mesh.io/inject: enabled`.
    Annotate,
    /// Add the proxy (`--manual`).
    Manual(Box<Manual>),
    /// Take the mesh away.
    Uninject,
}

/// What `--manual` adds: the proxy's configuration, and what pods inherit from their namespace.
#[derive(Clone, Debug)]
pub struct Manual {
    /// The proxy, as the flags configure it.
    pub config: ProxyConfig,
    /// The annotations of the workloads' namespaces, as the cluster has them (a Namespace
    /// object among the inputs replaces its namespace's: it is what will be applied).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The namespace of an object that names none: the kubeconfig context's, else `default`.
    pub default_namespace: String,
    /// What the summary says about the configuration (a namespace that could not be read).
    pub notes: Vec<String>,
}

impl Manual {
    /// `--manual` with `config` and no namespace annotations.
    pub fn new(config: ProxyConfig) -> Self {
        Self {
            config,
            namespaces: BTreeMap::new(),
            default_namespace: "default".into(),
            notes: Vec::new(),
        }
    }

    /// The annotations a workload inherits from its namespace.
    fn inherited(&self, workload: &Value) -> BTreeMap<String, String> {
        let namespace = workload
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(&self.default_namespace);
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }
}

/// The result of a run: the output (all of it or nothing) and one summary line per object.
#[derive(Debug, Default)]
pub struct Report {
    /// What goes to stdout.
    pub output: String,
    /// What goes to stderr, one line per object.
    pub summary: Vec<String>,
}

/// Reads the inputs: each as (name, text). `-` is stdin; a folder gives its manifest files.
pub fn read_inputs(inputs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            out.push(("<stdin>".to_string(), text));
            continue;
        }
        let path = Path::new(input);
        let meta = std::fs::metadata(path).with_context(|| format!("reading {input}"))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            collect(path, &mut files)?;
            files
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            out.push((file.display().to_string(), text));
        }
    }
    Ok(out)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, files)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// Transforms every input; on any error nothing is returned but the error.
pub fn run(inputs: &[(String, String)], mode: &Mode) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut parsed = Vec::new();
    for (name, text) in inputs {
        let (format, docs) = manifest::parse(text, name)?;
        parsed.push((name, format, docs));
    }
    let mode = match mode {
        // The inputs' own Namespaces are what their workloads will inherit.
        Mode::Manual(manual) => {
            let mut manual = manual.clone();
            for (_, _, docs) in &parsed {
                for namespace in docs.iter().flat_map(|d| objects(d, "Namespace")) {
                    let Some(name) = namespace.pointer("/metadata/name").and_then(Value::as_str)
                    else {
                        continue;
                    };
                    let annotations = core::annotations(namespace)
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
                        .collect();
                    manual.namespaces.insert(name.to_string(), annotations);
                }
            }
            &Mode::Manual(manual)
        }
        other => other,
    };
    for (name, format, mut docs) in parsed {
        for (i, doc) in docs.iter_mut().enumerate() {
            transform(doc, mode, &mut report.summary).with_context(|| {
                format!("{name}: document {} ({})", i + 1, manifest::describe(doc))
            })?;
        }
        if format == Format::Yaml || !docs.is_empty() {
            report.output.push_str(&manifest::write(format, &docs));
        }
    }
    Ok(report)
}

/// The objects of `kind` in a document: itself, or the items of a `List`.
fn objects<'a>(doc: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    let items = match doc["kind"].as_str() {
        Some(k) if k.ends_with("List") => doc["items"].as_array().map(|a| a.iter()),
        _ => None,
    };
    std::iter::once(doc)
        .chain(items.into_iter().flatten())
        .filter(move |o| o["kind"] == kind)
}

/// The namespaces of the workloads among `inputs` (`default` for those that name none), which
/// `--manual` reads the annotations of.
pub fn workload_namespaces(
    inputs: &[(String, String)],
    default: &str,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut namespaces = std::collections::BTreeSet::new();
    for (name, text) in inputs {
        let (_, docs) = manifest::parse(text, name)?;
        for doc in &docs {
            let items = match doc["kind"].as_str() {
                Some(k) if k.ends_with("List") => doc["items"].as_array().cloned(),
                _ => None,
            };
            for object in std::iter::once(doc).chain(items.iter().flatten()) {
                if template_pointer(object["kind"].as_str().unwrap_or_default()).is_none() {
                    continue;
                }
                let namespace = object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str);
                namespaces.insert(namespace.unwrap_or(default).to_string());
            }
        }
    }
    Ok(namespaces)
}

/// Where a workload keeps its pod template, or `None` for other kinds.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn transform(doc: &mut Value, mode: &Mode, summary: &mut Vec<String>) -> anyhow::Result<()> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    if kind.ends_with("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                transform(item, mode, summary)
                    .with_context(|| format!("item {} ({})", i + 1, manifest::describe(item)))?;
            }
            return Ok(());
        }
    }
    let what = manifest::describe(doc);
    if kind == "Namespace" {
        let line = match mode {
            Mode::Uninject if core::remove_annotations(doc, &[core::INJECT_ANNOTATION]) => {
                "uninjected"
            }
            Mode::Uninject => "unchanged: not annotated",
            _ if core::annotate_enabled(doc)? => "annotated mesh.io/inject: enabled",
            _ => "unchanged: already annotated",
        };
        summary.push(format!("{what} {line}"));
        return Ok(());
    }
    let Some(pointer) = template_pointer(&kind) else {
        summary.push(format!("{what} unchanged: not a workload"));
        return Ok(());
    };
    let inherited = match mode {
        Mode::Manual(manual) => manual.inherited(doc),
        _ => BTreeMap::new(),
    };
    let template = doc
        .pointer_mut(pointer)
        .filter(|t| t.is_object())
        .with_context(|| format!("a {kind} without a pod template"))?;
    let line = match mode {
        Mode::Uninject if core::uninject(template) => "uninjected".to_string(),
        Mode::Uninject => "unchanged: not injected".to_string(),
        Mode::Manual(manual) => match core::inject(template, &inherited, &manual.config)? {
            Outcome::Injected => "injected".to_string(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        },
        Mode::Annotate => annotate(template)?,
    };
    summary.push(format!("{what} {line}"));
    Ok(())
}

/// `mesh.io/inject: enabled` on a pod template, with the same skips as the injection itself.
fn annotate(template: &mut Value) -> anyhow::Result<String> {
    if template
        .pointer("/spec/hostNetwork")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Ok(format!("skipped: {}", core::Skip::HostNetwork));
    }
    if core::is_injected(template) {
        return Ok(format!("skipped: {}", core::Skip::AlreadyInjected));
    }
    let annotations = core::annotations(template);
    if annotations
        .get(core::INJECT_ANNOTATION)
        .and_then(Value::as_str)
        == Some("disabled")
    {
        return Ok(format!("skipped: {}", core::Skip::Disabled));
    }
    Ok(if core::annotate_enabled(template)? {
        "injected (annotated mesh.io/inject: enabled)".to_string()
    } else {
        "unchanged: already annotated mesh.io/inject: enabled".to_string()
    })
}

/// The proxy configuration of `--manual`: the trust anchors from the file or the cluster; the
/// sidecar mode as asked, else from the cluster's version, else (no cluster) classic; and, with
/// a cluster, the annotations of the namespaces of the workloads among `inputs`, which their
/// pods inherit as the webhook's would (a namespace that cannot be read is said in
/// [`Manual::notes`], and inherits nothing).
pub async fn manual_config(
    args: &InjectArgs,
    cluster: &crate::kube::ClusterArgs,
    inputs: &[(String, String)],
) -> anyhow::Result<(Manual, SidecarMode)> {
    let client = if args.ignore_cluster {
        None
    } else {
        match cluster.client().await {
            Ok(client) => Some(client),
            // No kubeconfig at all: rendering for later, as with --ignore-cluster.
            Err(_) if cluster.kubeconfig.is_none() && cluster.context.is_none() => None,
            Err(e) => {
                let hint = if args.identity_trust_anchors_file.is_some() {
                    "pass --ignore-cluster to inject without a cluster"
                } else {
                    "--manual needs the trust anchors and the cluster's version: point \
                     --kubeconfig at a cluster where mesh is installed, or pass \
                     --identity-trust-anchors-file and --ignore-cluster"
                };
                return Err(e.context(hint));
            }
        }
    };
    let mode = match (args.native_sidecar, &client) {
        (Some(native), _) => SidecarMode::asked(native),
        (None, Some(client)) => crate::kube::sidecar_mode(client).await?,
        (None, None) => SidecarMode::without_cluster(None),
    };
    let mut manual = Manual::new(ProxyConfig::new("", "", ""));
    if let Some(client) = &client {
        manual.default_namespace = client.default_namespace().to_string();
        let wanted = workload_namespaces(inputs, &manual.default_namespace)?;
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        let timeout = crate::kube::VERSION_TIMEOUT;
        for name in wanted {
            let why = match tokio::time::timeout(timeout, api.get_opt(&name)).await {
                Ok(Ok(Some(ns))) => {
                    let annotations = ns.metadata.annotations.unwrap_or_default();
                    manual.namespaces.insert(name, annotations);
                    continue;
                }
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => crate::kube::error_message(&e),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            manual.notes.push(format!(
                "namespace {name} could not be read ({why}): its pods inherit none of its \
                 config.mesh.io annotations"
            ));
        }
    }
    let anchors = match &args.identity_trust_anchors_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the trust anchors {}", path.display()))?,
        None => {
            use k8s_openapi::api::core::v1::ConfigMap;
            let hint = "--manual needs the trust anchors: pass --identity-trust-anchors-file, \
                        or point --kubeconfig at a cluster where mesh is installed";
            let client = client.context(hint)?;
            let api: kube::Api<ConfigMap> =
                kube::Api::namespaced(client, crate::install::NAMESPACE);
            let cm = api.get("mesh-trust-anchors").await.context(hint)?;
            cm.data
                .and_then(|d| d.get("ca-bundle.crt").cloned())
                .context("the mesh-trust-anchors ConfigMap has no ca-bundle.crt")?
        }
    };
    mesh_api::identity::ca::certs_from_pem(&anchors, "the trust anchors")?;
    let mut config = ProxyConfig::new(
        &args.proxy_image,
        &args
            .image_tag
            .clone()
            .unwrap_or_else(crate::install::version),
        &anchors,
    );
    config.native_sidecar = mode.native;
    config.trust_domain = args.trust_domain.clone();
    config.cluster_domain = args.cluster_domain.clone();
    config.log_level = args.proxy_log_level.clone();
    config.default_inbound_policy = args.default_inbound_policy;
    config.cluster_networks = args.cluster_networks.clone();
    manual.config = config;
    Ok((manual, mode))
}
