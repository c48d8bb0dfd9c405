//! The admin server: `GET /metrics`, `GET /ready`, `GET /live`, and `POST /shutdown` (accepted
//! only from the pod's own loopback).

use crate::{drain::Drain, metrics::Metrics};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::net::TcpListener;

/// What the admin server reports and controls.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    /// Set once the proxy can serve traffic.
    pub ready: Arc<AtomicBool>,
    pub drain: Drain,
}

impl Admin {
    /// Serves admin requests until the process exits. During shutdown it keeps answering (`/ready`
    /// then says 503), closing each connection after its current request.
    pub async fn run(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            let drain = self.drain.clone();
            self.drain.spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&req, peer)) }
                });
                // Once shutdown has begun, a new connection still gets its answer (`/ready` says
                // 503, `/metrics` a last scrape), then closes: no keep-alive. Connections from
                // before close after their current request.
                let draining = drain.is_draining();
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .keep_alive(!draining)
                    .serve_connection(TokioIo::new(stream), service);
                let result = if draining {
                    conn.await
                } else {
                    drain.serve(conn, |c| c.graceful_shutdown()).await
                };
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "admin connection failed");
                }
            });
        }
    }

    /// Answers one admin request.
    pub fn handle(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        self.route(req.method(), req.uri().path(), peer)
    }

    fn route(&self, method: &Method, path: &str, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (path, method) {
            ("/metrics", &Method::GET) => {
                let mut rsp = text(StatusCode::OK, self.metrics.encode());
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                rsp
            }
            ("/ready", &Method::GET) if self.drain.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            ("/ready", &Method::GET) if self.ready.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ready\n")
            }
            ("/ready", &Method::GET) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            ("/live", &Method::GET) => text(StatusCode::OK, "live\n"),
            ("/shutdown", &Method::POST) if peer.ip().to_canonical().is_loopback() => {
                tracing::info!(%peer, "shutdown requested through the admin server");
                self.drain.start();
                text(StatusCode::ACCEPTED, "shutting down\n")
            }
            ("/shutdown", &Method::POST) => {
                tracing::warn!(%peer, "refused a shutdown request from outside the pod");
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is accepted only from the pod's loopback\n",
                )
            }
            ("/metrics" | "/ready" | "/live", _) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            ("/shutdown", _) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live or POST /shutdown\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        Admin {
            metrics: Metrics::new(10, false),
            ready: Arc::default(),
            drain: Drain::new(),
        }
    }

    #[test]
    fn routes() {
        let a = admin();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.244.0.9:5000".parse().unwrap();
        let check = |method: Method, path: &str, peer: SocketAddr, status: u16| {
            assert_eq!(
                a.route(&method, path, peer).status(),
                status,
                "{method} {path} from {peer}"
            );
        };
        check(Method::GET, "/live", remote, 200);
        check(Method::GET, "/ready", local, 503);
        a.ready.store(true, Ordering::Release);
        check(Method::GET, "/ready", local, 200);
        check(Method::GET, "/metrics", remote, 200);
        check(Method::POST, "/metrics", local, 405);
        check(Method::GET, "/shutdown", local, 405);
        check(Method::GET, "/nope", local, 404);
        check(Method::POST, "/shutdown", remote, 403);
        assert!(
            !a.drain.is_draining(),
            "a remote caller cannot shut the proxy down"
        );
        check(Method::POST, "/shutdown", "[::1]:1".parse().unwrap(), 202);
        assert!(a.drain.is_draining());
        check(Method::GET, "/ready", local, 503);
    }
}
