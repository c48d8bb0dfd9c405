//! The tap API's wire types: `GET /v1/tap?<filter>` on a proxy's admin port answers a long
//! response of JSON lines, one [`Event`] per line, until the caller goes away.
//!
//! A request of the tapped proxy produces up to three events with one [`StreamId`]:
//! [`Event::RequestStart`], [`Event::ResponseStart`] (headers back: status and time to first
//! byte) and [`Event::ResponseEnd`] (grpc-status, bytes, duration, failure reason). Events over
//! the filter's rate are dropped, never queued, and reported by [`Event::Dropped`].
//!
//! [`stream`] is the client: one `GET` over a connection the caller opened (plain TCP to a
//! proxy's admin port from inside its pod, or mutual TLS as the tap identity from elsewhere):
//!
//! ```no_run
//! # async fn demo() -> Result<(), mesh_api::tap::TapError> {
//! use futures_util::StreamExt;
//! use mesh_api::tap::{self, Filter};
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:4191").await?;
//! let filter = Filter { method: Some("POST".into()), ..Filter::default() };
//! let events = tap::stream(tcp, "127.0.0.1:4191", &filter).await?;
//! futures_util::pin_mut!(events);
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?);
//! }
//! # Ok(())
//! # }
//! ```

use crate::destination::MAX_LINE;
use crate::wire::{error_text, AbortOnDrop, LineDecoder, TooLong};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where a proxy serves taps (admin port).
pub const TAP_PATH: &str = "/v1/tap";

/// The most events per second a tap gets unless its filter asks for fewer.
pub const DEFAULT_MAX_RATE: u32 = 100;

/// Which requests a tap wants. Every field that is set must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// The request method, e.g. `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request's authority (`Host` / `:authority`), exactly, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// A prefix of the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Labels the source must carry (e.g. `deployment=vote-bot`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Labels the destination must carry (e.g. `deployment=web`, `namespace=demo`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub destination_labels: BTreeMap<String, String>,
    /// The most events per second this tap gets ([`DEFAULT_MAX_RATE`] when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
}

/// A request's id within one proxy: its connection and its stream on it, written `3:1`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The client connection, numbered by the proxy from 1.
    pub connection: u64,
    /// The request on that connection, from 1.
    pub stream: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.connection, self.stream)
    }
}

/// Which side of its pod the tapped proxy saw the request on.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProxyDirection {
    /// The pod's application called out.
    Outbound,
    /// Someone called the pod's application.
    Inbound,
}

/// One end of a request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The verified mesh identity, when the hop is mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// What is known of it: `namespace`, `deployment`, `pod`, `service` …
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A route, as tap events name it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteRef {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One tap event.
// A request start is much larger than the others, but an event lives only until it is written
// out; boxing it would cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "event")]
pub enum Event {
    /// A request's headers arrived.
    #[serde(rename_all = "camelCase")]
    RequestStart {
        /// The request's id.
        id: StreamId,
        /// The side of the pod the proxy saw it on.
        direction: ProxyDirection,
        /// The client.
        source: Peer,
        /// Where the proxy sent it.
        destination: Peer,
        /// Whether the hop this proxy saw (inbound: from the client; outbound: to the endpoint)
        /// is mutual TLS.
        tls: bool,
        /// The method.
        method: String,
        /// `Host` or `:authority`.
        authority: String,
        /// The path, without the query.
        path: String,
        /// Request headers worth seeing (content-type, user-agent, grpc ones …); never the
        /// sensitive ones (authorization, cookie …).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
        /// Milliseconds since the Unix epoch.
        timestamp_ms: u64,
        /// Outbound: the route that took the request (absent for a destination without routes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<RouteRef>,
    },
    /// The response's headers went back.
    #[serde(rename_all = "camelCase")]
    ResponseStart {
        /// The request's id.
        id: StreamId,
        /// The HTTP status.
        status: u16,
        /// From the request's headers to the response's, in milliseconds.
        since_request_ms: f64,
    },
    /// The response ended (or failed).
    #[serde(rename_all = "camelCase")]
    ResponseEnd {
        /// The request's id.
        id: StreamId,
        /// The `grpc-status` of a gRPC response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grpc_status: Option<u32>,
        /// Response body bytes.
        bytes: u64,
        /// From the request's headers to the response's end, in milliseconds.
        duration_ms: f64,
        /// Whether the response counts as a success (the same classification as the metrics).
        success: bool,
        /// Why the proxy failed it itself (`connect`, `tls`, `upstream` …) or how the stream
        /// broke, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<String>,
    },
    /// Events not sent since the last event because of the tap's rate limit.
    #[serde(rename_all = "camelCase")]
    Dropped {
        /// How many.
        count: u64,
    },
}

impl Event {
    /// Encodes the event as one line of the tap stream (JSON and a trailing `\n`).
    pub fn to_line(&self) -> Bytes {
        // Serializing these plain types (string keys, no maps with non-string keys) cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

impl Filter {
    /// The filter as the query string of [`TAP_PATH`]: `method=`, `authority=`, `path=`,
    /// `src.<label>=`, `dst.<label>=`, `rate=`.
    pub fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(m) = &self.method {
            q.append_pair("method", m);
        }
        if let Some(a) = &self.authority {
            q.append_pair("authority", a);
        }
        if let Some(p) = &self.path_prefix {
            q.append_pair("path", p);
        }
        for (k, v) in &self.source_labels {
            q.append_pair(&format!("src.{k}"), v);
        }
        for (k, v) in &self.destination_labels {
            q.append_pair(&format!("dst.{k}"), v);
        }
        if let Some(r) = self.max_rate {
            q.append_pair("rate", &r.to_string());
        }
        q.finish()
    }

    /// Parses [`Filter::to_query`]'s form; an unknown key or a bad rate is an error naming it.
    pub fn from_query(query: &str) -> Result<Self, FilterError> {
        let mut filter = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            match k.as_str() {
                "method" => filter.method = Some(v),
                "authority" => filter.authority = Some(v),
                "path" => filter.path_prefix = Some(v),
                "rate" => {
                    let rate: u32 = v.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
                        FilterError(format!("rate={v}: expected a whole number above 0"))
                    })?;
                    filter.max_rate = Some(rate);
                }
                _ => {
                    if let Some(label) = k.strip_prefix("src.") {
                        filter.source_labels.insert(label.to_string(), v);
                    } else if let Some(label) = k.strip_prefix("dst.") {
                        filter.destination_labels.insert(label.to_string(), v);
                    } else {
                        return Err(FilterError(format!(
                            "unknown filter {k:?}: expected method, authority, path, src.<label>, dst.<label> or rate"
                        )));
                    }
                }
            }
        }
        Ok(filter)
    }
}

/// A tap query that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FilterError(pub String);

/// Why a tap could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The connection could not be opened (only from callers that use `?` on their connect).
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    /// The request could not be built (an authority that is not valid in a URI).
    #[error("tap request to {authority}: {source}")]
    Request {
        /// The proxy's admin authority.
        authority: String,
        /// The cause.
        source: http::Error,
    },
    /// The HTTP exchange failed.
    #[error("tap request to {authority}: {source}")]
    Http {
        /// The proxy's admin authority.
        authority: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The proxy refused the caller (403): not on the pod's loopback and not the tap identity
    /// over mutual TLS. The message is the proxy's reason.
    #[error("tap forbidden by {authority}: {message}")]
    Forbidden {
        /// The proxy's admin authority.
        authority: String,
        /// The proxy's one-line reason.
        message: String,
    },
    /// Any other error status (400: a bad filter, 503: shutting down, 404: an older proxy).
    #[error("tap at {authority}: the proxy answered {status}: {message}")]
    Status {
        /// The proxy's admin authority.
        authority: String,
        /// The HTTP status.
        status: http::StatusCode,
        /// The start of the response body.
        message: String,
    },
    /// Reading the stream failed.
    #[error("reading the tap stream of {authority}: {source}")]
    Body {
        /// The proxy's admin authority.
        authority: String,
        /// The cause.
        source: hyper::Error,
    },
    /// A line was longer than [`MAX_LINE`].
    #[error("tap stream of {authority}: a line is longer than {MAX_LINE} bytes")]
    LineTooLong {
        /// The proxy's admin authority.
        authority: String,
    },
    /// A line was not an [`Event`].
    #[error("tap stream of {authority}: invalid event {line:?}: {source}")]
    Decode {
        /// The proxy's admin authority.
        authority: String,
        /// The start of the line.
        line: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Starts a tap over `io`, a connection to a proxy's admin server (`authority` is its
/// `host:port`, sent as `Host`), and yields its events as they come.
///
/// The request is an HTTP/1.1 `GET` [`TAP_PATH`] with the filter as its query, so `io` may be
/// a plain TCP stream (to `127.0.0.1:4191` from inside the pod's network namespace) or a TLS
/// stream the caller opened with its own client certificate. A refusal is
/// [`TapError::Forbidden`] and any other status [`TapError::Status`], both with the proxy's
/// words. The stream ends after an error or when the proxy ends the tap (it shuts down);
/// dropping it closes the connection, which removes the tap at the proxy at once.
pub async fn stream<I>(
    io: I,
    authority: &str,
    filter: &Filter,
) -> Result<impl Stream<Item = Result<Event, TapError>> + Send + 'static, TapError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |source| TapError::Http {
        authority: authority.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let query = filter.to_query();
    let uri = if query.is_empty() {
        TAP_PATH.to_string()
    } else {
        format!("{TAP_PATH}?{query}")
    };
    let request = http::Request::get(uri)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|source| TapError::Request {
            authority: authority.to_owned(),
            source,
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    if status != http::StatusCode::OK {
        let message = error_text(response.into_body(), 1024).await;
        let authority = authority.to_owned();
        return Err(if status == http::StatusCode::FORBIDDEN {
            TapError::Forbidden { authority, message }
        } else {
            TapError::Status {
                authority,
                status,
                message,
            }
        });
    }
    let state = Some(Streaming {
        authority: authority.to_owned(),
        body: response.into_body(),
        lines: LineDecoder::default(),
        _conn: conn,
        _sender: sender,
    });
    Ok(futures_util::stream::unfold(state, next_event))
}

/// A tap being read.
struct Streaming {
    authority: String,
    body: Incoming,
    lines: LineDecoder,
    /// The connection's task, aborted when the stream is dropped.
    _conn: AbortOnDrop<()>,
    /// Kept so the client side of the connection stays open.
    _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

async fn next_event(
    state: Option<Streaming>,
) -> Option<(Result<Event, TapError>, Option<Streaming>)> {
    let mut s = state?;
    loop {
        match s.lines.next_line() {
            Ok(Some(line)) => {
                let event = serde_json::from_slice(&line).map_err(|source| TapError::Decode {
                    authority: s.authority.clone(),
                    line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
                    source,
                });
                let next = event.is_ok().then_some(s);
                return Some((event, next));
            }
            Ok(None) => {}
            Err(TooLong) => {
                let authority = s.authority;
                return Some((Err(TapError::LineTooLong { authority }), None));
            }
        }
        match s.body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    s.lines.push(&data);
                }
            }
            Some(Err(source)) => {
                let authority = s.authority;
                return Some((Err(TapError::Body { authority, source }), None));
            }
            None => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_through_the_query() {
        let filter = Filter {
            method: Some("POST".into()),
            authority: Some("voting-svc.demo:8080".into()),
            path_prefix: Some("/demo.Voting/".into()),
            source_labels: BTreeMap::from([("deployment".into(), "web".into())]),
            destination_labels: BTreeMap::from([("namespace".into(), "demo".into())]),
            max_rate: Some(10),
        };
        assert_eq!(Filter::from_query(&filter.to_query()).unwrap(), filter);
        assert_eq!(Filter::from_query("").unwrap(), Filter::default());
        assert!(Filter::from_query("rate=0").is_err());
        assert!(Filter::from_query("colour=red")
            .unwrap_err()
            .0
            .contains("colour"));
    }

    #[test]
    fn events_are_tagged_json_lines() {
        let e = Event::ResponseEnd {
            id: StreamId {
                connection: 3,
                stream: 1,
            },
            grpc_status: Some(2),
            bytes: 5,
            duration_ms: 1.5,
            success: false,
            failure: None,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(e.to_line(), format!("{line}\n"));
        assert_eq!(
            line,
            r#"{"event":"responseEnd","id":{"connection":3,"stream":1},"grpcStatus":2,"bytes":5,"durationMs":1.5,"success":false}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }

    /// Serves one raw HTTP response to whatever request arrives; returns the request head.
    async fn client_against(
        response: &'static [u8],
        filter: &Filter,
    ) -> (Result<Vec<Result<Event, String>>, TapError>, String) {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if server.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            // In small pieces: lines must be rebuilt across reads.
            // (The client may be gone once it has read what it needs.)
            for chunk in response.chunks(7) {
                let _ = server.write_all(chunk).await;
                tokio::task::yield_now().await;
            }
            let _ = server.shutdown().await;
            String::from_utf8(head).unwrap()
        });
        let events = match stream(client, "127.0.0.1:4191", filter).await {
            Ok(events) => Ok(events
                .map(|e| e.map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
                .await),
            Err(e) => Err(e),
        };
        (events, server.await.unwrap())
    }

    #[tokio::test]
    async fn the_client_streams_events_and_says_why_it_was_refused() {
        let filter = Filter {
            method: Some("GET".into()),
            ..Filter::default()
        };
        let (events, head) = client_against(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              1e\r\n{\"event\":\"dropped\",\"count\":3}\n\r\n\
              1f\r\n{\"event\":\"dropped\",\"count\":4}\n\n\r\n\
              3\r\nxx\n\r\n0\r\n\r\n",
            &filter,
        )
        .await;
        assert!(
            head.starts_with("GET /v1/tap?method=GET HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("host: 127.0.0.1:4191"),
            "{head}"
        );
        let events = events.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], Ok(Event::Dropped { count: 3 }));
        assert_eq!(events[1], Ok(Event::Dropped { count: 4 }));
        assert!(
            events[2]
                .as_ref()
                .unwrap_err()
                .contains("invalid event \"xx\""),
            "{events:?}"
        );

        let (refused, _) = client_against(
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 20\r\n\r\nonly the tap may.\n\n\n",
            &Filter::default(),
        )
        .await;
        match refused {
            Err(TapError::Forbidden { message, .. }) => assert_eq!(message, "only the tap may."),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let (bad, _) = client_against(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n\r\nbad filter\n",
            &Filter::default(),
        )
        .await;
        let err = bad.expect_err("an error");
        assert!(matches!(err, TapError::Status { status, .. } if status == 400));
        assert!(
            err.to_string().contains("400 Bad Request: bad filter"),
            "{err}"
        );
    }
}
