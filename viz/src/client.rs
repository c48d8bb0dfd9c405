//! The clients of a proxy's admin port (`/metrics`, `/v1/tap`) over a [`Transport`]: how a pod's
//! proxy is reached (local: from inside the pod's network namespace; in a cluster: through the
//! viz component) is the transport's business, everything above it is shared.

use std::future::Future;
use std::io;
use std::pin::Pin;

use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_api::tap::{Filter, TapError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::model::PodInfo;
use crate::prom::{self, Sample};
use crate::tap::PodEvent;

/// The proxy's admin port.
pub const ADMIN_PORT: u16 = 4191;

/// Where the viz tap aggregator (`mesh-controller tap`) serves a pod's proxy:
/// `GET /api/v1/pods/<namespace>/<pod>/tap?<filter>` and `…/metrics`, answered with the
/// proxy's own body (errors: `{"error": …}`, [`crate::source::ApiError`]).
pub const PODS_PATH: &str = "/api/v1/pods";

/// The aggregator's path of `pod`'s `what` (`tap` or `metrics`).
///
/// ```
/// assert_eq!(mesh_viz::client::pod_path("demo", "web-1", "tap"), "/api/v1/pods/demo/web-1/tap");
/// ```
pub fn pod_path(namespace: &str, pod: &str, what: &str) -> String {
    format!("{PODS_PATH}/{namespace}/{pod}/{what}")
}

/// A connection to a proxy's admin port.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What [`Transport::connect`] returns.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send + 'a>>;

/// A way to reach pods' proxies.
pub trait Transport: Send + Sync + 'static {
    /// Opens a connection to the admin port of `pod`'s proxy.
    fn connect<'a>(&'a self, pod: &'a PodInfo) -> Connecting<'a>;
}

/// A failed call to a proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the proxy of pod {pod}: {source}")]
    Connect { pod: String, source: io::Error },
    #[error("calling the proxy of pod {pod}: {source}")]
    Http { pod: String, source: hyper::Error },
    #[error("the proxy of pod {pod} refused the tap (403: {message}): only the pod's own loopback or the viz tap identity may tap")]
    Forbidden { pod: String, message: String },
    #[error("tapping pod {pod}: {source}")]
    Tap { pod: String, source: TapError },
    #[error("the proxy of pod {pod} answered {status} to {path}: {body}")]
    Status {
        pod: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("the metrics of pod {pod}: {source}")]
    Metrics {
        pod: String,
        source: prom::ParseError,
    },
    #[error("calling the proxy of pod {pod}: {reason}")]
    Request { pod: String, reason: String },
}

/// Scrapes `pod`'s proxy.
pub async fn metrics(transport: &dyn Transport, pod: &PodInfo) -> Result<Vec<Sample>, Error> {
    let rsp = get(transport, pod, "/metrics").await?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|source| Error::Http {
            pod: pod.name.clone(),
            source,
        })?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(Error::Status {
            pod: pod.name.clone(),
            path: "/metrics".into(),
            status: status.as_u16(),
            body: text.trim().to_string(),
        });
    }
    prom::parse(&text).map_err(|source| Error::Metrics {
        pod: pod.name.clone(),
        source,
    })
}

/// Taps `pod`'s proxy with `filter` (through [`mesh_api::tap::stream`]) and sends its events to
/// `events` until the proxy ends the stream or the receiver goes away.
pub async fn tap(
    transport: &dyn Transport,
    pod: &PodInfo,
    filter: &Filter,
    events: mpsc::Sender<PodEvent>,
) -> Result<(), Error> {
    let io = transport
        .connect(pod)
        .await
        .map_err(|source| Error::Connect {
            pod: pod.name.clone(),
            source,
        })?;
    let authority = format!("localhost:{ADMIN_PORT}");
    let tap_error = |e: TapError| match e {
        TapError::Forbidden { message, .. } => Error::Forbidden {
            pod: pod.name.clone(),
            message,
        },
        e => Error::Tap {
            pod: pod.name.clone(),
            source: e,
        },
    };
    let stream = mesh_api::tap::stream(io, &authority, filter)
        .await
        .map_err(tap_error)?;
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = PodEvent {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            event: event.map_err(tap_error)?,
        };
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// `GET path` on a fresh HTTP/1.1 connection to `pod`'s proxy.
async fn get(
    transport: &dyn Transport,
    pod: &PodInfo,
    path: &str,
) -> Result<hyper::Response<Incoming>, Error> {
    let io = transport
        .connect(pod)
        .await
        .map_err(|source| Error::Connect {
            pod: pod.name.clone(),
            source,
        })?;
    let http = |source| Error::Http {
        pod: pod.name.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(http::header::HOST, format!("localhost:{ADMIN_PORT}"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| Error::Request {
            pod: pod.name.clone(),
            reason: format!("building the request for {path}: {e}"),
        })?;
    sender.send_request(req).await.map_err(http)
}
