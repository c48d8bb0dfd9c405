//! The tap API's wire types: `GET /v1/tap?<filter>` on a proxy's admin port answers a long
//! response of JSON lines, one [`Event`] per line, until the caller goes away.
//!
//! A request of the tapped proxy produces up to three events with one [`StreamId`]:
//! [`Event::RequestStart`], [`Event::ResponseStart`] (headers back: status and time to first
//! byte) and [`Event::ResponseEnd`] (grpc-status, bytes, duration, failure reason). Events over
//! the filter's rate are dropped, never queued, and reported by [`Event::Dropped`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

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
        assert_eq!(
            line,
            r#"{"event":"responseEnd","id":{"connection":3,"stream":1},"grpcStatus":2,"bytes":5,"durationMs":1.5,"success":false}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}
