//! Which mesh a command looks at: the local mesh of `mesh demo` or a Kubernetes cluster.
//!
//! `--target local|kube` decides when given. Without it, the commands look at the local mesh
//! when one is running and no Kubernetes context or kubeconfig is asked for, and at the
//! cluster otherwise.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::kube::ClusterArgs;
use crate::local::running::{self, Found, Running};

/// `--target`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// The local mesh of `mesh demo` (or the folder --state names).
    Local,
    /// The cluster of the current kubeconfig context.
    Kube,
}

/// `--target` and `--state`: one definition for the commands that look at either mesh (global,
/// so a command's subcommands take them too).
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// Where the mesh runs: `local` (the local mesh of `mesh demo`) or `kube` (the cluster of
    /// the kubeconfig). By default the local mesh when one is running and no --context or
    /// --kubeconfig is given, else the cluster.
    #[arg(long, global = true, value_enum)]
    pub target: Option<TargetKind>,
    /// The local mesh's folder (default: where `mesh demo` keeps it), or a folder of objects.
    #[arg(long, global = true, env = "MESH_LOCAL_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
}

impl TargetArgs {
    /// Picks the target: see [`resolve`].
    pub fn resolve(&self, cluster: &ClusterArgs) -> anyhow::Result<Target> {
        resolve(self.target, self.state.as_deref(), cluster)
    }

    /// Whether no flag names where the mesh runs (no --target, --context or --kubeconfig): the
    /// cluster was picked only because no local mesh runs, which an error about it should say.
    pub fn implicit(&self, cluster: &ClusterArgs) -> bool {
        self.target.is_none() && cluster.context.is_none() && cluster.kubeconfig.is_none()
    }
}

/// What a command looks at.
#[derive(Debug)]
pub enum Target {
    Local(Local),
    Kube,
}

/// A local mesh: the folder of its objects, and its supervisor when it runs in namespaces of
/// its own (a folder of objects alone, as the tests write, lives in the host's namespaces).
#[derive(Debug)]
pub struct Local {
    pub objects: PathBuf,
    pub running: Option<Running>,
}

impl Local {
    /// Enters the running mesh's namespaces, if it has its own (see [`Running::enter`]): call
    /// it before any thread starts.
    pub fn enter(&self) -> anyhow::Result<()> {
        match &self.running {
            Some(running) => running.enter(),
            None => Ok(()),
        }
    }
}

/// Picks the target from `--target`, `--state` (or `MESH_LOCAL_STATE`) and the cluster flags.
pub fn resolve(
    kind: Option<TargetKind>,
    state: Option<&Path>,
    cluster: &ClusterArgs,
) -> anyhow::Result<Target> {
    let asked_for_cluster = cluster.context.is_some() || cluster.kubeconfig.is_some();
    if kind == Some(TargetKind::Kube) || (kind.is_none() && asked_for_cluster && state.is_none()) {
        return Ok(Target::Kube);
    }
    let dir = match state {
        Some(dir) => std::path::absolute(dir)?,
        None => running::home()?,
    };
    let explicit = kind == Some(TargetKind::Local) || state.is_some();
    match running::find(&dir)? {
        Found::Running(r) => Ok(Target::Local(Local {
            objects: objects(&dir),
            running: Some(r),
        })),
        Found::Stale(r) => {
            if explicit {
                bail!(
                    "the local mesh in {} is not running (pid {} ended without cleaning up): \
                     `mesh demo down` removes what it left, `mesh demo` starts a new one",
                    dir.display(),
                    r.pid
                );
            }
            Ok(Target::Kube)
        }
        Found::Nothing if state.is_some() => Ok(Target::Local(Local {
            objects: objects(&dir),
            running: None,
        })),
        Found::Nothing if explicit => bail!(
            "no local mesh is running (folder {}): start one with `mesh demo`",
            dir.display()
        ),
        Found::Nothing => Ok(Target::Kube),
    }
}

/// The objects of a local mesh's folder (`state/`), or the folder itself when it is one.
fn objects(dir: &Path) -> PathBuf {
    let inner = dir.join(running::OBJECTS);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}
