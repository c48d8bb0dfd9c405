//! The viz component's servers: the metrics API (`mesh-controller metrics-api`, [`metrics_api`]),
//! which answers `mesh viz stat|edges|dashboard` from Prometheus ([`prometheus`]), and the tap
//! aggregator ([`tap`], `mesh-controller tap`), which reaches a pod's proxy over mutual TLS as the
//! viz tap identity.
//!
//! **Architecture Invariant:** both answer in the shapes of `mesh_api::viz` and
//! `mesh_api::tap`, so the CLI folds their answers with the same code as the proxies' own.

pub mod metrics_api;
pub mod prometheus;
pub mod tap;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, Full};

/// The body of the viz servers' answers (whole, or streamed).
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub use crate::http::{serve, ServeError};

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

/// An error in the shape the CLI reads (`mesh_api::viz::ApiError`).
pub fn error(status: StatusCode, message: String) -> Response<Body> {
    json(status, &mesh_api::viz::ApiError { error: message })
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
