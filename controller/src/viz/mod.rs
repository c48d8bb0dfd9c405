//! The viz component's servers: the metrics API (`mesh-controller metrics-api`, [`metrics_api`]),
//! which answers `mesh viz stat|edges|dashboard` from Prometheus ([`prometheus`]), and the tap
//! aggregator ([`tap`], `mesh-controller tap`), which reaches a pod's proxy over mutual TLS as the
//! viz tap identity.
//!
//! **Architecture Invariant:** both answer in the shapes of `mesh_viz::source` and
//! `mesh_api::tap`, so the CLI folds their answers with the same code as the proxies' own.

pub mod metrics_api;
pub mod prometheus;
pub mod tap;

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The body of the viz servers' answers (whole, or streamed).
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why a viz server stopped.
#[derive(Debug, thiserror::Error)]
#[error("accepting connections: {0}")]
pub struct ServeError(#[from] std::io::Error);

/// Serves `handle` on `listener` (HTTP/1.1 and HTTP/2) until the task is dropped; the
/// connections end with it.
pub async fn serve<F, Fut>(listener: TcpListener, handle: F) -> Result<(), ServeError>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
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

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// A whole body of `content_type`.
pub fn whole(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => whole(status, "application/json", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        ),
    }
}

/// An error in the shape the CLI reads (`mesh_viz::source::ApiError`).
pub fn error(status: StatusCode, message: String) -> Response<Body> {
    json(status, &mesh_viz::source::ApiError { error: message })
}

/// `/live` and `/ready`: the process answers.
pub fn health(path: &str) -> Option<Response<Body>> {
    match path {
        "/live" => Some(whole(StatusCode::OK, "text/plain; charset=utf-8", "live\n")),
        "/ready" => Some(whole(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ready\n",
        )),
        _ => None,
    }
}
