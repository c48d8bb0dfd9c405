//! The operator's Kubernetes client: the kubeconfig and context the user chose.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Which cluster to talk to: flags shared by the commands that contact one.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig file; by default KUBECONFIG, ~/.kube/config or the in-cluster configuration.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// A client for the chosen cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client(self.kubeconfig.as_deref(), self.context.as_deref()).await
    }
}

/// A client from `kubeconfig` (or the usual places) and `context` (or the current one).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("reading the kubeconfig")?,
        None => kube::Config::infer()
            .await
            .context("finding a cluster (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    };
    kube::Client::try_from(config).context("configuring the Kubernetes client")
}

/// A kube error in one line: the API server's own message when there is one
/// (`namespaces "shop" is forbidden: …`).
pub fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// How long asking the API server for its version may take.
pub const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sidecar mode of the cluster `client` talks to, from its API server's version (native
/// from Kubernetes 1.29): what `mesh install` and `mesh inject --manual` render when no mode
/// was asked for.
pub async fn sidecar_mode(client: &kube::Client) -> anyhow::Result<mesh_api::inject::SidecarMode> {
    let hint = "pass --ignore-cluster to render without contacting a cluster, or choose the \
                sidecar mode yourself";
    let info = tokio::time::timeout(VERSION_TIMEOUT, client.apiserver_version())
        .await
        .map_err(|_| {
            anyhow::anyhow!("no answer from the API server within {VERSION_TIMEOUT:?} ({hint})")
        })?
        .with_context(|| format!("asking the API server for its version ({hint})"))?;
    Ok(mesh_api::inject::SidecarMode::for_version(
        &info.major,
        &info.minor,
    ))
}
