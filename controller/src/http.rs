//! Plaintext HTTP serving shared by the destination API and the viz servers: HTTP/1.1 and
//! HTTP/2 (prior knowledge) on one port, with hyper-util's auto builder.

use std::convert::Infallible;
use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Why a server stopped.
#[derive(Debug, thiserror::Error)]
#[error("accepting connections: {0}")]
pub struct ServeError(#[from] std::io::Error);

/// Serves `handle` on `listener` until the task is dropped. The connections belong to the
/// server: when it stops (or is aborted), so do they, and every stream they carry ends.
pub async fn serve<F, Fut, B>(listener: TcpListener, handle: F) -> Result<(), ServeError>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Per-connection failures (e.g. the peer reset before accept) are not fatal.
            Err(error) if is_transient(&error) => {
                tracing::debug!(%error, "accept failed");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// An accept error that concerns one connection, not the listener.
pub fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}
