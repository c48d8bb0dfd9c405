//! A codec's requests in the golden metrics and in tap: `request_total`, `response_total` and
//! `response_latency_ms` with `codec` and `method` labels, labelled with the endpoint that
//! answered (or, for a request the proxy answered itself, where its connection was going), and
//! a tap event pair per request (`GET user:*`).
//!
//! The `method` label is bounded: each codec has at most [`MAX_METHODS`] method names; requests
//! of any other are counted as `other` (a client cannot grow the label sets without bound).

use super::{Answer, Frame, Kind, LocalError, Req, Served};
use crate::{
    metrics::{
        Classification, CodecLabels, Metrics, RequestLabels, ResponseLabels, TargetMetrics, Tls,
    },
    svc::lock,
    tap::{RequestMeta, Taps},
};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

/// The most method names one codec's `method` label takes.
pub const MAX_METHODS: usize = 128;

/// Counts a client connection's requests; made per connection with `fallback`: the labels of
/// a request the proxy answered itself.
#[derive(Clone)]
pub struct Meter<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Metrics,
    taps: Taps,
    codec: &'static str,
    /// The `authority` label: what the client asked for (the Service dialed outbound, the
    /// pod's address inbound), wherever a route sent it.
    authority: Arc<str>,
    fallback: Arc<Served>,
    /// The label sets this connection counted, at most [`CACHED_LABEL_SETS`]: a request
    /// counts without hashing its labels.
    handles: Mutex<Vec<Handles>>,
}

/// How many label sets a client connection keeps the metrics of.
const CACHED_LABEL_SETS: usize = 32;

impl<S> Meter<S> {
    pub fn new(
        inner: S,
        metrics: Metrics,
        taps: Taps,
        codec: &'static str,
        authority: Arc<str>,
        fallback: Served,
    ) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                metrics,
                taps,
                codec,
                authority,
                fallback: Arc::new(fallback),
                handles: Mutex::default(),
            }),
        }
    }
}

impl<S> tower::Service<Req> for Meter<S>
where
    S: tower::Service<Req, Response = Answer, Error = LocalError>,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = LocalError;
    type Future = Metered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LocalError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let start = Instant::now();
        let request = req.frame.clone();
        // Tap sees the requests that start while it is on.
        let conn = self.shared.taps.is_active().then(|| req.conn.clone());
        Metered {
            call: self.inner.call(req),
            start,
            shared: self.shared.clone(),
            request,
            conn,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request on its way: counted, and tapped, when it completes.
    pub struct Metered<F> {
        #[pin]
        call: F,
        start: Instant,
        shared: Arc<Shared>,
        request: Arc<Frame>,
        conn: Option<Arc<super::serve::Conn>>,
    }
}

impl<F> std::future::Future for Metered<F>
where
    F: std::future::Future<Output = Result<Answer, LocalError>>,
{
    type Output = Result<Answer, LocalError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        let shared = &**this.shared;
        let served = match &result {
            Ok(answer) => &answer.info,
            Err(_) => &shared.fallback,
        };
        let (success, error) = match &result {
            Ok(Answer { frame: Some(f), .. }) => (f.kind != Kind::Error, None),
            Ok(Answer { frame: None, .. }) => (true, None),
            Err(e) => (false, Some(e.label())),
        };
        let request = &**this.request;
        let outcome = Outcome {
            method: request.method().unwrap_or("unknown"),
            expects: request.kind == Kind::Request || error.is_some(),
            success,
            error,
        };
        shared.count(served, &outcome, this.start.elapsed());
        if let Some(conn) = this.conn {
            tap(
                &shared.taps,
                &shared.authority,
                conn,
                served,
                request,
                *this.start,
                &result,
                success,
            );
        }
        Poll::Ready(result)
    }
}

/// What a request's metrics depend on besides where it was served.
struct Outcome<'a> {
    method: &'a str,
    /// It counts a response (a request that expects one, or one the proxy refused).
    expects: bool,
    success: bool,
    error: Option<&'static str>,
}

/// The metrics of one label set, held by a client connection that counted it.
struct Handles {
    served: Arc<Served>,
    method: Arc<str>,
    expects: bool,
    success: bool,
    error: Option<&'static str>,
    request_total: Counter,
    response: Option<(Counter, Histogram)>,
    /// Keeps the label sets in the families while the handles count.
    _target: Arc<TargetMetrics>,
}

impl Handles {
    fn matches(&self, served: &Arc<Served>, o: &Outcome<'_>) -> bool {
        Arc::ptr_eq(&self.served, served)
            && *self.method == *o.method
            && self.expects == o.expects
            && self.success == o.success
            && self.error == o.error
    }
}

impl Shared {
    /// Counts a request (and its response): with the handles this connection already holds
    /// for its label set, else looked up in the families (hashing every label) and kept.
    fn count(&self, served: &Arc<Served>, outcome: &Outcome<'_>, elapsed: std::time::Duration) {
        let mut handles = lock(&self.handles);
        let i = match handles.iter().position(|h| h.matches(served, outcome)) {
            Some(i) => i,
            None => {
                if handles.len() >= CACHED_LABEL_SETS {
                    handles.clear();
                }
                handles.push(self.handles(served, outcome));
                handles.len() - 1
            }
        };
        let h = &handles[i];
        h.request_total.inc();
        if let Some((total, latency)) = &h.response {
            total.inc();
            latency.observe(elapsed.as_secs_f64() * 1e3);
        }
    }

    fn handles(&self, served: &Arc<Served>, o: &Outcome<'_>) -> Handles {
        let method = method_label(self.codec, o.method);
        let labels = RequestLabels {
            direction: served.direction,
            authority: self.authority.clone(),
            target_addr: served.target_addr,
            dst: served.dst.clone(),
            tls: served.tls.clone(),
            codec: Some(CodecLabels {
                codec: self.codec,
                method: method.clone(),
            }),
        };
        let target = self.metrics.target(served.direction, served.target_addr);
        let request_total = target.request_total(&labels);
        let response = o.expects.then(|| {
            target.response(&ResponseLabels {
                request: labels,
                classification: if o.success {
                    Classification::Success
                } else {
                    Classification::Failure
                },
                status_code: None,
                grpc_status: None,
                error: o.error,
            })
        });
        Handles {
            served: served.clone(),
            method,
            expects: o.expects,
            success: o.success,
            error: o.error,
            request_total,
            response,
            _target: target,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn tap(
    taps: &Taps,
    authority: &str,
    conn: &super::serve::Conn,
    served: &Served,
    request: &Frame,
    start: Instant,
    result: &Result<Answer, LocalError>,
    success: bool,
) {
    let path = request.get("key").map(key_pattern).unwrap_or_default();
    let headers = http::HeaderMap::new();
    let meta = RequestMeta {
        direction: served.direction,
        method: request.method().unwrap_or("unknown"),
        authority,
        path: &path,
        headers: &headers,
        client: conn.client,
        client_id: conn.client_id.as_ref(),
        target: served.target_addr,
        dst: served.dst.as_deref(),
        server_id: served.server_id.as_ref(),
        tls: matches!(served.tls, Tls::Established(_)),
        route: None,
    };
    let Some(tapped) = taps.start(&conn.tap, start, &meta) else {
        return;
    };
    let (status, bytes, failure) = match result {
        Ok(Answer { frame, .. }) => (
            if success { 200 } else { 500 },
            frame.as_ref().map_or(0, |f| f.bytes.len() as u64),
            None,
        ),
        Err(e) => (503, 0, Some(e.to_string())),
    };
    tapped.response_start(status);
    tapped.response_end(None, bytes, success, failure.as_deref());
}

/// How tap and `top` show a key: up to its first `:`, then `*` (`user:42` → `user:*`); a key
/// without one as it is, cut at 64 bytes.
pub fn key_pattern(key: &str) -> String {
    match key.find(':') {
        Some(i) => format!("{}*", &key[..=i]),
        None => {
            let mut end = key.len().min(64);
            while !key.is_char_boundary(end) {
                end -= 1;
            }
            key[..end].to_owned()
        }
    }
}

/// The `method` label of `method` for `codec`, within [`MAX_METHODS`].
pub fn method_label(codec: &'static str, method: &str) -> Arc<str> {
    type Names = HashMap<&'static str, HashMap<Box<str>, Arc<str>>>;
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let mut names = lock(NAMES.get_or_init(Default::default));
    let names = names.entry(codec).or_default();
    if let Some(label) = names.get(method) {
        return label.clone();
    }
    if names.len() >= MAX_METHODS {
        return names
            .entry("other".into())
            .or_insert_with(|| Arc::from("other"))
            .clone();
    }
    let label: Arc<str> = Arc::from(method);
    names.insert(method.into(), label.clone());
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_their_prefix() {
        assert_eq!(key_pattern("user:42"), "user:*");
        assert_eq!(key_pattern("session:a:b"), "session:*");
        assert_eq!(key_pattern("plain"), "plain");
        assert_eq!(key_pattern(&"é".repeat(40)).len(), 64);
    }

    #[test]
    fn method_labels_are_bounded() {
        for i in 0..MAX_METHODS * 2 {
            method_label("bounded-test", &format!("m{i}"));
        }
        assert_eq!(&*method_label("bounded-test", "m0"), "m0");
        assert_eq!(&*method_label("bounded-test", "new"), "other");
    }
}
