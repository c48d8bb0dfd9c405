//! The destination watch: its JSON-lines messages and a streaming HTTP/2 client.
//!
//! `GET /v1/destination/watch?authority=HOST:PORT` answers with a long body, one [`Update`] per
//! line. The first message carries the full current state (an [`Update::Add`] of every endpoint,
//! or [`Update::NoEndpoints`]); later ones are deltas. A new connection starts again with the
//! full state, so a client that reconnects replaces what it had.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mesh_api::destination::WatchError> {
//! use futures_util::StreamExt;
//! let addr = "127.0.0.1:8086".parse().unwrap();
//! let updates = mesh_api::destination::watch(addr, "web-svc.demo.svc.cluster.local:80");
//! futures_util::pin_mut!(updates);
//! while let Some(update) = updates.next().await {
//!     println!("{:?}", update?);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{future::BoxFuture, Stream};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::wire::{error_text, AbortOnDrop, LineDecoder, TooLong};

/// The path of the destination watch.
pub const WATCH_PATH: &str = "/v1/destination/watch";

/// The longest line the client accepts (1 MiB); a longer one is [`WatchError::LineTooLong`].
pub use crate::wire::MAX_LINE;

/// One message of the destination watch, one JSON object per line.
///
/// ```
/// use mesh_api::destination::{Update, NoEndpoints};
/// let line = r#"{"noEndpoints":{"exists":true}}"#;
/// let update: Update = serde_json::from_str(line).unwrap();
/// assert_eq!(update, Update::NoEndpoints(NoEndpoints { exists: true }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Update {
    /// Endpoints that are new, or whose metadata changed (an add replaces the endpoint with the
    /// same address). The first `add` of a watch is the full set.
    Add(Add),
    /// Endpoints that left the set, by address.
    Remove(Remove),
    /// The set is now empty: `exists` tells whether the name is known at all (a service with
    /// zero endpoints) or unknown. It replaces everything the client held.
    NoEndpoints(NoEndpoints),
}

/// The body of [`Update::Add`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Add {
    /// The endpoints added or replaced.
    pub endpoints: Vec<Endpoint>,
}

/// The body of [`Update::Remove`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remove {
    /// The addresses that left the set.
    pub addrs: Vec<SocketAddr>,
}

/// The body of [`Update::NoEndpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoEndpoints {
    /// Whether the authority names something that exists (with zero endpoints).
    pub exists: bool,
}

/// One endpoint of a destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The relative weight for load balancing (10000 by default).
    pub weight: u32,
    /// Metric labels: `namespace`, `service`, `pod`, and the owning workload (`deployment`,
    /// `statefulset`, `daemonset`, `replicaset`, `job`) when known.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The TLS identity the endpoint's proxy presents; present only when the endpoint is meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// How to talk to the endpoint; present only when it is meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_hint: Option<ProtocolHint>,
}

/// How to talk to an endpoint: `"h2"`, or `{"codec":"redis"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolHint {
    /// HTTP/2 between proxies (HTTP/1 is upgraded); the endpoint is meshed.
    #[serde(rename = "h2")]
    H2,
    /// The Service port's `appProtocol` names a codec (`mesh.io/redis` → `redis`): its
    /// connections carry that protocol's frames, meshed endpoint or not.
    #[serde(rename = "codec")]
    Codec(String),
}

/// The default endpoint weight.
pub const DEFAULT_WEIGHT: u32 = 10_000;

impl Update {
    /// Encodes the update as one line of the watch body (JSON and a trailing `\n`).
    pub fn to_line(&self) -> Bytes {
        // Serializing these plain structs (string keys, no maps with non-string keys) cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Why a watch failed. After an error the stream ends; the caller reconnects (with its own
/// backoff) and receives the full state again.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The TCP connection failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The controller's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP/2 handshake or the request failed.
    #[error("watching {authority} at {addr}: {source}")]
    Http {
        /// The controller's address.
        addr: SocketAddr,
        /// The watched authority.
        authority: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The request could not be built (an authority that is not a valid query value).
    #[error("watching {authority}: invalid request: {source}")]
    Request {
        /// The watched authority.
        authority: String,
        /// The cause.
        source: http::Error,
    },
    /// The server answered with an error status.
    #[error("watching {authority}: server answered {status}: {message}")]
    Status {
        /// The watched authority.
        authority: String,
        /// The HTTP status.
        status: http::StatusCode,
        /// The start of the response body.
        message: String,
    },
    /// Reading the body failed.
    #[error("watching {authority}: reading the stream: {source}")]
    Body {
        /// The watched authority.
        authority: String,
        /// The cause.
        source: hyper::Error,
    },
    /// A line was longer than [`MAX_LINE`].
    #[error("watching {authority}: a line is longer than {MAX_LINE} bytes")]
    LineTooLong {
        /// The watched authority.
        authority: String,
    },
    /// A line was not a valid message of the watch.
    #[error("watching {authority}: invalid update {line:?}: {source}")]
    Decode {
        /// The watched authority.
        authority: String,
        /// The start of the offending line.
        line: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Watches `authority` (`HOST:PORT`) at the destination controller `addr` over an HTTP/2
/// prior-knowledge connection, yielding each update as it arrives.
///
/// The stream ends after the first error, or when the server ends the response. It does not
/// reconnect: that (with backoff) is the caller's job, and a new watch starts with the full state.
pub fn watch(
    addr: SocketAddr,
    authority: &str,
) -> impl Stream<Item = Result<Update, WatchError>> + Send + 'static {
    watch_with(Connector::default(), addr, authority)
}

/// [`watch`], with the TCP connection opened by `connector`.
pub fn watch_with(
    connector: Connector,
    addr: SocketAddr,
    authority: &str,
) -> impl Stream<Item = Result<Update, WatchError>> + Send + 'static {
    watch_lines(
        connector,
        addr,
        WATCH_PATH,
        ("authority", authority),
        Vec::new(),
    )
}

/// A JSON-lines watch of `path?KEY=SUBJECT` (and the `extra` query pairs): one `T` per line.
/// The destination and policy watches share it; errors name the subject (an authority, a pod).
pub(crate) fn watch_lines<T: DeserializeOwned + Send + 'static>(
    connector: Connector,
    addr: SocketAddr,
    path: &'static str,
    (key, subject): (&'static str, &str),
    extra: Vec<(&'static str, String)>,
) -> impl Stream<Item = Result<T, WatchError>> + Send + 'static {
    let state = State::Connect {
        connector,
        addr,
        path,
        key,
        authority: subject.to_owned(),
        extra,
    };
    futures_util::stream::unfold(state, step::<T>)
}

/// How a control-plane client (the destination watch, the certify client) opens its TCP
/// connection: `TcpStream::connect` by default, or a function of the caller's. The proxy passes
/// its own, which marks its sockets (`MESH_PROXY_SOCKET_MARK`) so that the pod's redirect rules
/// let them out.
///
/// ```
/// use mesh_api::destination::Connector;
/// let plain = Connector::default();
/// let custom = Connector::new(|addr| tokio::net::TcpStream::connect(addr));
/// # let _ = (plain, custom);
/// ```
#[derive(Clone, Default)]
pub struct Connector(Option<Arc<ConnectFn>>);

/// The caller's connect function of a [`Connector`].
type ConnectFn =
    dyn Fn(SocketAddr) -> BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> + Send + Sync;

impl Connector {
    /// A connector that opens connections with `connect`.
    pub fn new<F, Fut>(connect: F) -> Self
    where
        F: Fn(SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'static,
    {
        Self(Some(Arc::new(move |addr| Box::pin(connect(addr)))))
    }

    /// Opens a TCP connection to `addr`, with Nagle's algorithm off.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let tcp = match &self.0 {
            None => tokio::net::TcpStream::connect(addr).await?,
            Some(connect) => connect(addr).await?,
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            None => "Connector(TcpStream::connect)",
            Some(_) => "Connector(custom)",
        })
    }
}

// === impl the watch state machine ===

/// Where a watch is: about to connect, streaming, or done.
enum State {
    Connect {
        connector: Connector,
        addr: SocketAddr,
        path: &'static str,
        /// The query key of the subject (`authority`, `pod`).
        key: &'static str,
        authority: String,
        extra: Vec<(&'static str, String)>,
    },
    Streaming {
        authority: String,
        body: Incoming,
        lines: LineDecoder,
        /// Aborts the connection task when the stream is dropped.
        _conn: AbortOnDrop<()>,
    },
    Done,
}

async fn step<T: DeserializeOwned>(state: State) -> Option<(Result<T, WatchError>, State)> {
    let mut state = state;
    loop {
        state = match state {
            State::Done => return None,
            State::Connect {
                connector,
                addr,
                path,
                key,
                authority,
                extra,
            } => match connect(&connector, addr, path, (key, &authority), &extra).await {
                Ok((body, conn)) => State::Streaming {
                    authority,
                    body,
                    lines: LineDecoder::default(),
                    _conn: conn,
                },
                Err(e) => return Some((Err(e), State::Done)),
            },
            State::Streaming {
                authority,
                mut body,
                mut lines,
                _conn,
            } => {
                match lines.next_line() {
                    Ok(Some(line)) => {
                        let update = decode(&authority, &line);
                        let next = State::Streaming {
                            authority,
                            body,
                            lines,
                            _conn,
                        };
                        return Some((update, next));
                    }
                    Ok(None) => {}
                    Err(TooLong) => {
                        return Some((Err(WatchError::LineTooLong { authority }), State::Done))
                    }
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            lines.push(&data);
                        }
                        State::Streaming {
                            authority,
                            body,
                            lines,
                            _conn,
                        }
                    }
                    Some(Err(source)) => {
                        return Some((Err(WatchError::Body { authority, source }), State::Done))
                    }
                    // The server ended the watch; a partial last line is dropped.
                    None => return None,
                }
            }
        }
    }
}

async fn connect(
    connector: &Connector,
    addr: SocketAddr,
    path: &str,
    (key, authority): (&str, &str),
    extra: &[(&'static str, String)],
) -> Result<(Incoming, AbortOnDrop<()>), WatchError> {
    let http_err = |source| WatchError::Http {
        addr,
        authority: authority.to_owned(),
        source,
    };
    let tcp = connector
        .connect(addr)
        .await
        .map_err(|source| WatchError::Connect { addr, source })?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(http_err)?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair(key, authority);
        for (k, v) in extra {
            query.append_pair(k, v);
        }
        query.finish()
    };
    let request = http::Request::get(format!("http://{addr}{path}?{query}"))
        .body(Empty::<Bytes>::new())
        .map_err(|source| WatchError::Request {
            authority: authority.to_owned(),
            source,
        })?;
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status();
    if !status.is_success() {
        let message = error_text(response.into_body(), 512).await;
        return Err(WatchError::Status {
            authority: authority.to_owned(),
            status,
            message,
        });
    }
    Ok((response.into_body(), conn))
}

fn decode<T: DeserializeOwned>(authority: &str, line: &[u8]) -> Result<T, WatchError> {
    serde_json::from_slice(line).map_err(|source| WatchError::Decode {
        authority: authority.to_owned(),
        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_wire(json: &str, update: Update) {
        let parsed: Update = serde_json::from_str(json).expect("valid update");
        assert_eq!(parsed, update);
        let line = update.to_line();
        let reparsed: serde_json::Value = serde_json::from_slice(&line).expect("json");
        let expected: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(reparsed, expected);
    }

    #[test]
    fn wire_format() {
        check_wire(
            r#"{"noEndpoints":{"exists":false}}"#,
            Update::NoEndpoints(NoEndpoints { exists: false }),
        );
        check_wire(
            r#"{"remove":{"addrs":["10.244.0.5:8080"]}}"#,
            Update::Remove(Remove {
                addrs: vec!["10.244.0.5:8080".parse().unwrap()],
            }),
        );
        let labels = [("namespace", "demo"), ("pod", "web-7d9c-abc")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        check_wire(
            r#"{"add":{"endpoints":[{"addr":"10.244.0.5:8080","weight":10000,
                "labels":{"namespace":"demo","pod":"web-7d9c-abc"},
                "identity":"web.demo.serviceaccount.identity.mesh.cluster.local",
                "protocolHint":"h2"}]}}"#,
            Update::Add(Add {
                endpoints: vec![Endpoint {
                    addr: "10.244.0.5:8080".parse().unwrap(),
                    weight: DEFAULT_WEIGHT,
                    labels,
                    identity: Some("web.demo.serviceaccount.identity.mesh.cluster.local".into()),
                    protocol_hint: Some(ProtocolHint::H2),
                }],
            }),
        );
        check_wire(
            r#"{"add":{"endpoints":[{"addr":"10.244.0.6:80","weight":1,"labels":{}}]}}"#,
            Update::Add(Add {
                endpoints: vec![Endpoint {
                    addr: "10.244.0.6:80".parse().unwrap(),
                    weight: 1,
                    labels: BTreeMap::new(),
                    identity: None,
                    protocol_hint: None,
                }],
            }),
        );
    }
}
