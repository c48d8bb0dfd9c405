//! `mesh viz tap` lines: one per tap event, the response lines repeating their request's
//! addresses so each line reads alone.
//!
//! ```text
//! req id=3:1 proxy=out src=10.244.0.5 dst=10.244.0.7 tls=true :method=POST :authority=web-svc:80 :path=/vote
//! rsp id=3:1 proxy=out src=10.244.0.5 dst=10.244.0.7 tls=true :status=200 latency=1.52ms
//! end id=3:1 proxy=out src=10.244.0.5 dst=10.244.0.7 tls=true grpc-status=2 duration=1.61ms response-length=5B
//! ```

use std::collections::HashMap;

use mesh_api::tap::{Event, Peer, ProxyDirection, StreamId};

/// Requests remembered for their response lines; the oldest half is forgotten beyond this.
const MAX_PENDING: usize = 10_000;

/// An event with the pod whose proxy reported it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PodEvent {
    pub namespace: String,
    pub pod: String,
    #[serde(flatten)]
    pub event: Event,
}

/// What is remembered of each open request (by pod and stream id) until its end: beyond
/// [`MAX_PENDING`] the older half is forgotten, so a stream that loses its ends stays bounded.
#[derive(Debug)]
pub struct OpenRequests<V> {
    open: HashMap<(String, StreamId), (u64, V)>,
    seq: u64,
}

impl<V> Default for OpenRequests<V> {
    fn default() -> Self {
        OpenRequests {
            open: HashMap::new(),
            seq: 0,
        }
    }
}

impl<V> OpenRequests<V> {
    /// Remembers `value` for the request `id` of `pod`.
    pub fn insert(&mut self, pod: &str, id: StreamId, value: V) {
        if self.open.len() >= MAX_PENDING {
            let mut ages: Vec<u64> = self.open.values().map(|(n, _)| *n).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.open.retain(|_, (n, _)| *n > cut);
        }
        self.seq += 1;
        self.open.insert((pod.to_string(), id), (self.seq, value));
    }

    /// What is remembered of the request, if anything.
    pub fn get(&self, pod: &str, id: StreamId) -> Option<&V> {
        self.open.get(&(pod.to_string(), id)).map(|(_, v)| v)
    }

    /// Forgets the request (it ended), returning what was remembered.
    pub fn remove(&mut self, pod: &str, id: StreamId) -> Option<V> {
        self.open.remove(&(pod.to_string(), id)).map(|(_, v)| v)
    }

    /// Whether no request is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Turns a stream of events into `req`/`rsp`/`end` lines.
#[derive(Debug, Default)]
pub struct Formatter {
    wide: bool,
    /// The addresses part of each open request's lines.
    pending: OpenRequests<String>,
}

impl Formatter {
    /// `wide` adds ports, identities, the peers' labels and the tapped pod.
    pub fn new(wide: bool) -> Formatter {
        Formatter {
            wide,
            ..Formatter::default()
        }
    }

    /// The line of `event` from `pod`'s proxy.
    pub fn line(&mut self, pod: &str, event: &Event) -> String {
        match event {
            Event::RequestStart {
                id,
                direction,
                source,
                destination,
                tls,
                method,
                authority,
                path,
                route,
                ..
            } => {
                let proxy = match direction {
                    ProxyDirection::Outbound => "out",
                    ProxyDirection::Inbound => "in",
                };
                let mut common = format!("proxy={proxy} ");
                if self.wide {
                    common.push_str(&format!("pod={pod} "));
                }
                common.push_str(&format!(
                    "src={} dst={} tls={tls}",
                    self.peer(source, "src"),
                    self.peer(destination, "dst")
                ));
                self.remember(pod, *id, common.clone());
                let route = route
                    .as_ref()
                    .map(|r| format!(" route={r}"))
                    .unwrap_or_default();
                format!("req id={id} {common} :method={method} :authority={authority} :path={path}{route}")
            }
            Event::ResponseStart {
                id,
                status,
                since_request_ms,
            } => format!(
                "rsp id={id} {}:status={status} latency={}",
                self.common(pod, *id, false),
                ms(*since_request_ms)
            ),
            Event::ResponseEnd {
                id,
                grpc_status,
                bytes,
                duration_ms,
                failure,
                ..
            } => {
                let mut line = format!("end id={id} {}", self.common(pod, *id, true));
                if let Some(g) = grpc_status {
                    line.push_str(&format!("grpc-status={g} "));
                }
                line.push_str(&format!(
                    "duration={} response-length={bytes}B",
                    ms(*duration_ms)
                ));
                if let Some(f) = failure {
                    line.push_str(&format!(" error={f}"));
                }
                line
            }
            Event::Dropped { count } => {
                format!("dropped count={count} pod={pod} (over the tap's rate limit)")
            }
        }
    }

    fn peer(&self, peer: &Peer, side: &str) -> String {
        if !self.wide {
            return peer.addr.ip().to_string();
        }
        let mut s = peer.addr.to_string();
        if let Some(id) = &peer.identity {
            s.push_str(&format!(" {side}_id={id}"));
        }
        for (k, v) in &peer.labels {
            s.push_str(&format!(" {side}_{k}={v}"));
        }
        s
    }

    fn remember(&mut self, pod: &str, id: StreamId, common: String) {
        self.pending.insert(pod, id, common);
    }

    /// The request's addresses (with a trailing space), forgotten after the end.
    fn common(&mut self, pod: &str, id: StreamId, end: bool) -> String {
        let found = if end {
            self.pending.remove(pod, id)
        } else {
            self.pending.get(pod, id).cloned()
        };
        match found {
            Some(c) => format!("{c} "),
            None if self.wide => format!("pod={pod} "),
            None => String::new(),
        }
    }
}

/// Milliseconds as the lines print them.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}ms")
    } else if v < 100.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.0}ms")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A recorded stream: JSON lines of events.
    pub(crate) fn recorded() -> Vec<Event> {
        include_str!("../tests/data/tap-web.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event"))
            .collect()
    }

    #[test]
    fn lines_of_a_recorded_stream() {
        let mut f = Formatter::new(false);
        let lines: Vec<String> = recorded()
            .iter()
            .take(3)
            .map(|e| f.line("web-1", e))
            .collect();
        assert_eq!(
            lines,
            [
                "req id=3:1 proxy=in src=10.244.0.5 dst=10.244.0.3 tls=true :method=POST :authority=web-svc.demo.svc.cluster.local :path=/grpc/fail",
                "rsp id=3:1 proxy=in src=10.244.0.5 dst=10.244.0.3 tls=true :status=200 latency=1.25ms",
                "end id=3:1 proxy=in src=10.244.0.5 dst=10.244.0.3 tls=true grpc-status=2 duration=1.50ms response-length=5B",
            ]
        );
        assert!(f.pending.is_empty(), "the end forgets the request");
    }

    #[test]
    fn wide_lines_carry_ports_identities_and_labels() {
        let mut f = Formatter::new(true);
        let line = f.line("web-1", &recorded()[0]);
        assert!(line.contains("pod=web-1 src=10.244.0.5:40112 src_id=client.demo.serviceaccount.identity.mesh.cluster.local"), "{line}");
        assert!(line.contains("dst_deployment=web"), "{line}");
    }

    #[test]
    fn a_response_of_an_unseen_request_still_prints() {
        let mut f = Formatter::new(false);
        let line = f.line("web-1", &recorded()[2]);
        assert!(line.starts_with("end id=3:1 grpc-status=2 "), "{line}");
        assert_eq!(
            f.line("web-1", &Event::Dropped { count: 4 }),
            "dropped count=4 pod=web-1 (over the tap's rate limit)"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(ms(0.123), "0.12ms");
        assert_eq!(ms(12.345), "12.3ms");
        assert_eq!(ms(1234.5), "1234ms");
    }
}
