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
use mesh_api::defaults::ADMIN_PORT;
use mesh_api::tap::{Filter, TapError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::model::PodInfo;
use crate::prom::{self, Sample};
use crate::tap::PodEvent;

/// Where the viz tap aggregator (`mesh-controller tap`) serves a pod's proxy, shared with it.
pub use mesh_api::viz::{pod_path, PODS_PATH};

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
    #[error("tapping pod {pod} through the viz tap aggregator: {message}")]
    Aggregator { pod: String, message: String },
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
    let io = connect(transport, pod).await?;
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

/// A connection to `pod`'s proxy, or the error naming the pod.
async fn connect(transport: &dyn Transport, pod: &PodInfo) -> Result<Box<dyn Io>, Error> {
    transport
        .connect(pod)
        .await
        .map_err(|source| Error::Connect {
            pod: pod.name.clone(),
            source,
        })
}

/// `GET path` on a fresh HTTP/1.1 connection to `pod`'s proxy.
async fn get(
    transport: &dyn Transport,
    pod: &PodInfo,
    path: &str,
) -> Result<hyper::Response<Incoming>, Error> {
    let io = connect(transport, pod).await?;
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

// === tap sources ===

/// What [`TapSource::tap`] returns.
pub type Tapping<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// A way to tap pods' proxies: directly over a [`Transport`] ([`ProxyTaps`]) or through the
/// viz tap aggregator ([`AggregatorTaps`]). Both send the same [`PodEvent`]s.
pub trait TapSource: Send + Sync + 'static {
    /// Taps `pod` with `filter`, sending its events to `events` until the stream ends or the
    /// receiver goes away.
    fn tap<'a>(
        &'a self,
        pod: &'a PodInfo,
        filter: &'a Filter,
        events: mpsc::Sender<PodEvent>,
    ) -> Tapping<'a>;
}

/// Taps each proxy directly ([`tap`]).
#[derive(Clone)]
pub struct ProxyTaps {
    pub transport: std::sync::Arc<dyn Transport>,
}

impl TapSource for ProxyTaps {
    fn tap<'a>(
        &'a self,
        pod: &'a PodInfo,
        filter: &'a Filter,
        events: mpsc::Sender<PodEvent>,
    ) -> Tapping<'a> {
        Box::pin(tap(self.transport.as_ref(), pod, filter, events))
    }
}

/// Taps through the viz tap aggregator: `GET /api/v1/pods/<ns>/<pod>/tap?<filter>` on an
/// [`Api`](crate::api::Api), whose body is the proxy's own stream of JSON lines.
#[derive(Clone)]
pub struct AggregatorTaps {
    pub api: std::sync::Arc<dyn crate::api::Api>,
}

impl TapSource for AggregatorTaps {
    fn tap<'a>(
        &'a self,
        pod: &'a PodInfo,
        filter: &'a Filter,
        events: mpsc::Sender<PodEvent>,
    ) -> Tapping<'a> {
        Box::pin(async move {
            let failed = |message: String| Error::Aggregator {
                pod: pod.name.clone(),
                message,
            };
            let query = filter.to_query();
            let mut path = pod_path(&pod.namespace, &pod.name, "tap");
            if !query.is_empty() {
                path = format!("{path}?{query}");
            }
            let (status, mut chunks) = self
                .api
                .stream(&path)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if status != 200 {
                let mut body = Vec::new();
                while let Some(Ok(chunk)) = chunks.next().await {
                    body.extend_from_slice(&chunk);
                    if body.len() > 64 * 1024 {
                        break;
                    }
                }
                let message = match serde_json::from_slice::<crate::api::ApiError>(&body) {
                    Ok(e) => e.error,
                    Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
                };
                return Err(if status == 403 {
                    Error::Forbidden {
                        pod: pod.name.clone(),
                        message,
                    }
                } else {
                    failed(format!("{status}: {message}"))
                });
            }
            let mut lines = Lines::default();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| failed(format!("reading the stream: {e}")))?;
                lines.push(&chunk);
                while let Some(line) = lines.next_line().map_err(failed)? {
                    let event = serde_json::from_slice(&line).map_err(|e| {
                        failed(format!(
                            "invalid event {:?}: {e}",
                            String::from_utf8_lossy(&line[..line.len().min(200)])
                        ))
                    })?;
                    let event = PodEvent {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        event,
                    };
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }
}

/// Splits a body into its non-blank lines, whatever the chunks; a line longer than
/// [`mesh_api::destination::MAX_LINE`] is an error.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        let max = mesh_api::destination::MAX_LINE;
        loop {
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > max {
                    return Err(format!("a line is longer than {max} bytes"));
                }
                return Ok(None);
            };
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.len() > max {
                return Err(format!("a line is longer than {max} bytes"));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_chunks() {
        let mut lines = Lines::default();
        let mut got = Vec::new();
        for chunk in [&b"{\"a\""[..], b":1}\n\r\n", b"\n{}", b"\n"] {
            lines.push(chunk);
            while let Some(line) = lines.next_line().unwrap() {
                got.push(String::from_utf8(line).unwrap());
            }
        }
        assert_eq!(got, ["{\"a\":1}", "{}"]);
    }
}
