//! `mesh inject` and `mesh uninject`: add the mesh to workload manifests, or take it away.
//!
//! Input is files, folders (their `.yaml`, `.yml` and `.json` files, recursively, in name
//! order) or `-` for stdin; YAML streams or JSON, `List`s included. Everything that is not a
//! workload passes through unchanged. The proxy itself is added by [`mesh_api::inject`], the
//! same function the injector webhook uses.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
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
}

/// What happens to the documents.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Annotate workloads and namespaces with `mesh.io/inject: enabled`.
    Annotate,
    /// Add the proxy (`--manual`).
    Manual(ProxyConfig),
    /// Take the mesh away.
    Uninject,
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
    for (name, text) in inputs {
        let (format, mut docs) = manifest::parse(text, name)?;
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
    let template = doc
        .pointer_mut(pointer)
        .filter(|t| t.is_object())
        .with_context(|| format!("a {kind} without a pod template"))?;
    let line = match mode {
        Mode::Uninject if core::uninject(template) => "uninjected".to_string(),
        Mode::Uninject => "unchanged: not injected".to_string(),
        Mode::Manual(config) => match core::inject(template, &BTreeMap::new(), config)? {
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
/// sidecar mode as asked, else from the cluster's version, else (no cluster) classic.
pub async fn manual_config(
    args: &InjectArgs,
    cluster: &crate::kube::ClusterArgs,
) -> anyhow::Result<(ProxyConfig, SidecarMode)> {
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
    Ok((config, mode))
}
