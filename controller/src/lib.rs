//! The mesh control plane: the destination controller over one index of Kubernetes objects,
//! and the identity controller.
//!
//! `mesh-controller` owns the servers that share one index of Kubernetes objects. Today that is
//! *destination* (service discovery: resolves a logical name or a ClusterIP to endpoints with
//! their labels, expected TLS identity and protocol hint, and streams changes to proxies); the
//! injector comes later. The index is fed by kube-rs watchers in a cluster
//! and by a folder of the same objects as YAML on one machine; everything above it is shared.
//!
//! Map: [`index`] (objects and resolution), [`source`] (Kubernetes and folder feeds),
//! [`destination`] (fan-out to watchers and the HTTP server), [`metrics`].
//! [`identity`] is the identity controller (`mesh-controller identity`): the mesh CA's issuer,
//! certifying workloads whose token proves their service account; it shares the sources but
//! not the index.
#![forbid(unsafe_code)]

pub mod cli;
pub mod destination;
pub mod http;
pub mod identity;
pub mod index;
pub mod injector;
pub mod metrics;
pub mod source;
pub mod tls;
pub mod viz;

use std::net::SocketAddr;

use destination::Destination;
use index::IndexConfig;
use metrics::Metrics;
use source::Source;

/// How to run the destination controller.
#[derive(Clone, Debug)]
pub struct DestinationConfig {
    /// Where to listen (`0.0.0.0:8086`).
    pub listen: SocketAddr,
    /// Where the objects come from.
    pub source: Source,
    /// Trust domain and cluster domain.
    pub index: IndexConfig,
}

/// Why the destination controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listener could not bind.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Kubernetes client could not be configured.
    #[error(transparent)]
    Kube(#[from] source::kube::KubeError),
    /// The folder source failed.
    #[error(transparent)]
    Folder(#[from] source::folder::FolderError),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] destination::ServeError),
}

/// A started destination controller.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The shared state (for tests and embedding).
    pub destination: Destination,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Running {
    /// Waits until the source or the server stops (normally never).
    pub async fn wait(&mut self) -> Result<(), RunError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the listener, starts the source and the server, and returns at once.
pub async fn start(config: DestinationConfig) -> Result<Running, RunError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    let destination = Destination::new(config.index, Metrics::default());
    let feed = match config.source {
        Source::Dir(dir) => {
            let dest = destination.clone();
            tokio::spawn(
                async move { source::folder::run(dir, dest).await.map_err(RunError::from) },
            )
        }
        Source::Kube { kubeconfig } => {
            let client = source::kube::client(kubeconfig.as_deref()).await?;
            let dest = destination.clone();
            tokio::spawn(async move {
                source::kube::run(client, dest).await;
                Ok(())
            })
        }
    };
    let server = tokio::spawn(destination::serve(listener, destination.clone()));
    tracing::info!(%addr, "destination controller listening");
    let task = tokio::spawn(async move {
        let mut feed = AbortOnDrop(feed);
        let mut server = AbortOnDrop(server);
        tokio::select! {
            r = &mut feed.0 => joined(r),
            r = &mut server.0 => joined(r.map(|r| r.map_err(RunError::from))),
        }
    });
    Ok(Running {
        addr,
        destination,
        task,
    })
}

/// The result of a finished task, re-raising its panic.
fn joined(r: Result<Result<(), RunError>, tokio::task::JoinError>) -> Result<(), RunError> {
    match r {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Ok(()),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
