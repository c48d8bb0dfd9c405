//! The viz component's wire format: what `mesh-controller metrics-api` and `mesh-controller tap`
//! answer and `mesh viz` (through `mesh-viz`) reads, so the servers and their clients cannot
//! disagree.
//!
//! ```text
//! GET /api/v1/samples?namespace=demo&window=5000ms           (SAMPLES_PATH, samples_query)
//! 200 {"time":1700000000.0,"window":5.0,"pods":[{"namespace":"demo","pod":"web-1",
//!      "before":[{"name":"response_total","labels":{…},"value":"12"}],"after":[…]}]}
//! GET /api/v1/pods/<namespace>/<pod>/{tap,metrics}             (PODS_PATH, pod_path)
//! 4xx/5xx {"error":"…"}                                        (ApiError)
//! ```
//!
//! The samples are the proxies' own ([`Sample`]), of the metric families the aggregations read
//! ([`FAMILIES`]); the metrics API queries only those.

use std::collections::BTreeMap;
use std::time::Duration;

/// The metric families the aggregations read (`mesh_viz::stat`, `mesh_viz::edges`,
/// `mesh_viz::routes`, `mesh_viz::authz`); sources keep only these, and the metrics API queries only these, so no
/// view can come to depend on a family the metrics API does not query.
pub const FAMILIES: &[&str] = &[
    "response_total",
    "response_latency_ms_bucket",
    "request_total",
    "tcp_open_connections",
    "tcp_open_total",
    // Per route (`mesh viz routes`): the outbound proxies' route, backend, retry, fault and
    // mirror families.
    "outbound_http_route_request_total",
    "outbound_http_route_response_total",
    "outbound_http_route_response_latency_ms_bucket",
    "outbound_http_route_backend_request_total",
    "outbound_http_route_backend_response_total",
    "outbound_http_route_backend_response_latency_ms_bucket",
    "outbound_http_retry_total",
    "retry_budget_exhausted_total",
    "fault_injected_total",
    "mirror_total",
    "mirror_dropped_total",
    // Per Server, route and authorization (`mesh viz authz`): the inbound proxies'
    // authorization decisions and local rate limits.
    "inbound_http_authz_allow_total",
    "inbound_http_authz_deny_total",
    "inbound_http_authz_audit_total",
    "inbound_tcp_authz_allow_total",
    "inbound_tcp_authz_deny_total",
    "inbound_tcp_authz_audit_total",
    "inbound_http_local_ratelimit_total",
];

/// The metrics API's samples endpoint: `GET /api/v1/samples?namespace=demo&window=5000ms`.
pub const SAMPLES_PATH: &str = "/api/v1/samples";

/// Where the viz tap aggregator (`mesh-controller tap`) serves a pod's proxy:
/// `GET /api/v1/pods/<namespace>/<pod>/tap?<filter>` and `…/metrics`, answered with the
/// proxy's own body (errors: `{"error": …}`, [`ApiError`]).
pub const PODS_PATH: &str = "/api/v1/pods";

/// The aggregator's path of `pod`'s `what` (`tap` or `metrics`).
///
/// ```
/// assert_eq!(mesh_api::viz::pod_path("demo", "web-1", "tap"), "/api/v1/pods/demo/web-1/tap");
/// ```
pub fn pod_path(namespace: &str, pod: &str, what: &str) -> String {
    format!("{PODS_PATH}/{namespace}/{pod}/{what}")
}

/// The body of the metrics API's (and the tap aggregator's) errors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    /// What went wrong, and what to do about it.
    pub error: String,
}

/// The answer of [`SAMPLES_PATH`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplesResponse {
    /// When `after` was read (Unix seconds).
    pub time: f64,
    /// The seconds between `before` and `after` (0: no `before`).
    pub window: f64,
    /// The samples of each pod that has any.
    pub pods: Vec<PodSamples>,
}

/// One pod's samples in a [`SamplesResponse`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodSamples {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// At `time - window`; absent for a zero window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Vec<Sample>>,
    /// At `time`.
    pub after: Vec<Sample>,
}

/// One sample: `name{labels} value`.
///
/// In JSON (the viz metrics API's answers) the value is text, as Prometheus' own API writes it,
/// so that `+Inf` and `NaN` survive: `{"name":"up","labels":{},"value":"1"}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The metric's name, with its suffix (`response_total`, `…_bucket`).
    pub name: String,
    /// The sample's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The sample's value.
    #[serde(with = "value_text")]
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// A sample value as the text format (and Prometheus' API) writes it: a float, `+Inf`, `Inf`,
/// `-Inf` or `NaN`.
pub fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

/// The query of [`SAMPLES_PATH`]: `namespace=a&namespace=b&window=5000ms`.
///
/// ```
/// use std::time::Duration;
/// let q = mesh_api::viz::samples_query(&["demo"], Duration::from_secs(5));
/// assert_eq!(q, "namespace=demo&window=5000ms");
/// ```
pub fn samples_query(namespaces: &[&str], window: Duration) -> String {
    let mut query = form_urlencoded_pairs(namespaces.iter().map(|n| ("namespace", *n)));
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(&format!("window={}ms", window.as_millis()));
    query
}

/// The `window` of a [`SAMPLES_PATH`] query: `500ms`, `5s`, `2m`, `0s`, or plain seconds
/// (`5`, `0.5`).
///
/// Laxer than [`crate::duration::parse_duration`] on purpose: [`samples_query`] writes whole
/// milliseconds, and the server also takes the fractional and bare seconds that Prometheus'
/// own API takes.
pub fn parse_window(s: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = number.parse().ok()?;
    (n.is_finite() && n >= 0.0)
        .then(|| Duration::try_from_secs_f64(n * scale).ok())
        .flatten()
}

/// `k=v&k=v`, percent-encoded (a space is `%20`, not `+`).
fn form_urlencoded_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A sample's value as text in JSON (see [`Sample`]).
mod value_text {
    pub fn serialize<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        let text = if value.is_nan() {
            "NaN".to_string()
        } else if value.is_infinite() {
            if *value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
        } else {
            value.to_string()
        };
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        super::parse_value(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid sample value {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let check =
            |s: &str, expected: Option<Duration>| assert_eq!(parse_window(s), expected, "{s}");
        check("5000ms", Some(Duration::from_secs(5)));
        check("5s", Some(Duration::from_secs(5)));
        check("2m", Some(Duration::from_secs(120)));
        check("0.5", Some(Duration::from_millis(500)));
        check("0s", Some(Duration::ZERO));
        check("-1s", None);
        check("x", None);
        check("", None);
    }

    #[test]
    fn queries() {
        assert_eq!(samples_query(&[], Duration::ZERO), "window=0ms");
        assert_eq!(
            samples_query(&["a", "b c"], Duration::from_millis(1500)),
            "namespace=a&namespace=b%20c&window=1500ms"
        );
    }

    #[test]
    fn a_query_comes_back_as_its_window() {
        for ms in [0, 1, 500, 1500, 5000, 120_000] {
            let window = Duration::from_millis(ms);
            let query = samples_query(&["demo"], window);
            let (_, written) = query.rsplit_once("window=").unwrap();
            assert_eq!(parse_window(written), Some(window), "{query}");
        }
    }

    #[test]
    fn samples_round_trip_through_json_with_their_special_values() {
        for value in [3.0, 0.25, f64::INFINITY, f64::NEG_INFINITY] {
            let sample = Sample {
                name: "x".into(),
                labels: [("le".to_string(), "+Inf".to_string())].into(),
                value,
            };
            let json = serde_json::to_string(&sample).unwrap();
            assert_eq!(
                serde_json::from_str::<Sample>(&json).unwrap(),
                sample,
                "{json}"
            );
        }
        let nan: Sample = serde_json::from_str(r#"{"name":"n","value":"NaN"}"#).unwrap();
        assert!(nan.value.is_nan());
        assert!(serde_json::from_str::<Sample>(r#"{"name":"n","value":"x"}"#).is_err());
    }

    #[test]
    fn errors_are_one_field() {
        let e = ApiError {
            error: "no such path".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":"no such path"}"#
        );
    }
}
