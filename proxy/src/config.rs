//! The proxy's configuration, read from `MESH_PROXY_*` environment variables.
//!
//! Parsing takes a lookup function rather than the process environment, so tests pass a map:
//!
//! ```
//! use std::collections::HashMap;
//! let env = HashMap::from([
//!     ("MESH_PROXY_DETECT_TIMEOUT".to_string(), "2s".to_string()),
//!     ("MESH_PROXY_IDENTITY_DISABLED".to_string(), "true".to_string()),
//! ]);
//! let config = mesh_proxy::config::Config::from_env(|k| env.get(k).cloned()).unwrap();
//! assert_eq!(config.detect_timeout, std::time::Duration::from_secs(2));
//! ```

use crate::{init::Mark, ports::PortList, tap::TapConfig};
use mesh_api::{
    defaults,
    identity::{ca, Identity},
    inbound::{parse_networks, DefaultPolicy, Network, DEFAULT_CLUSTER_NETWORKS},
};
use rustls_pki_types::CertificateDer;
use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// Server-speaks-first (or otherwise detection-hostile) ports that are opaque by default: SMTP,
/// MySQL and Galera, PostgreSQL, Redis, Elasticsearch transport, memcached and others. A client of
/// these protocols waits for the server's greeting, so detection would only wait for its timeout.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,4567,4568,5432,6379,9300,11211";

/// Everything `mesh-proxy` needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `MESH_PROXY_INBOUND_ADDR`: where redirected inbound connections arrive.
    pub inbound_addr: SocketAddr,
    /// `MESH_PROXY_OUTBOUND_ADDR`: where redirected outbound connections arrive.
    pub outbound_addr: SocketAddr,
    /// `MESH_PROXY_ADMIN_ADDR`: metrics, readiness, liveness and shutdown.
    pub admin_addr: SocketAddr,
    /// `MESH_PROXY_INBOUND_OPAQUE_PORTS`: inbound ports that skip protocol detection.
    pub inbound_opaque_ports: PortList,
    /// `MESH_PROXY_OUTBOUND_OPAQUE_PORTS`: outbound ports that skip protocol detection.
    pub outbound_opaque_ports: PortList,
    /// `MESH_PROXY_INBOUND_CODEC_PORTS`: inbound ports whose connections carry a codec's
    /// protocol, `PORT=CODEC` entries (`6379=redis,9090-9091=thrift`); they skip detection,
    /// and their requests are decoded, metered and rate limited. Unset: none.
    pub inbound_codec_ports: Vec<mesh_api::codec_ports::CodecPorts>,
    /// `MESH_PROXY_DETECT_TIMEOUT`: how long to wait for a client's first bytes.
    pub detect_timeout: Duration,
    /// `MESH_PROXY_HEADER_READ_TIMEOUT`: how long an HTTP/1 client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// `MESH_PROXY_MAX_HEADER_BYTES`: the largest request head (HTTP/1) or header list (HTTP/2) accepted.
    pub max_header_bytes: usize,
    /// `MESH_PROXY_CONNECT_TIMEOUT`: how long to wait for an upstream TCP connection.
    pub connect_timeout: Duration,
    /// `MESH_PROXY_SOCKET_MARK`: a mark (`SO_MARK`; decimal or `0x` hex, nonzero) set on every
    /// TCP connection the proxy opens: upstreams, mutual TLS, opaque forwarding, and the
    /// destination and identity controllers. With `mesh-init --proxy-mark` of the same number,
    /// the pod's redirect rules let those connections out even when the proxy shares the
    /// application's uid (a rootless user namespace). Needs `CAP_NET_ADMIN`; unset, none.
    pub socket_mark: Option<Mark>,
    /// `MESH_PROXY_POOL_IDLE_TIMEOUT`: how long an idle upstream HTTP/1 connection is kept.
    pub pool_idle_timeout: Duration,
    /// `MESH_PROXY_SHUTDOWN_GRACE_PERIOD`: how long in-flight work may take after a shutdown begins.
    pub shutdown_grace_period: Duration,
    /// `MESH_PROXY_SHUTDOWN_DELAY`: how long the proxy goes on serving (and accepting) after
    /// SIGTERM before it drains, while the pod's endpoint is withdrawn from its clients; a second
    /// signal or `POST /shutdown` ends it early. Default none.
    pub shutdown_delay: Duration,
    /// `MESH_PROXY_WORKER_THREADS`: the runtime's worker threads. The default, 1, runs tokio's
    /// single-threaded scheduler: the least CPU and memory per request for a sidecar (see
    /// BENCHMARKS.md); set it to the pod's CPU limit to use more cores.
    pub worker_threads: usize,
    /// `MESH_PROXY_MAX_AUTHORITY_LABELS`: how many distinct `authority` label values are kept
    /// before further ones are counted under `authority="overflow"`.
    pub max_authority_labels: usize,
    /// `MESH_PROXY_DESTINATION_ADDR`: the destination controller (`host:port`); unset, outbound
    /// traffic goes to its original destination.
    pub destination_addr: Option<String>,
    /// `MESH_PROXY_DESTINATION_NAMESPACE`: the pod's namespace, which completes short names.
    pub destination_namespace: String,
    /// `MESH_PROXY_CLUSTER_DOMAIN`: the cluster's DNS domain.
    pub cluster_domain: String,
    /// `MESH_PROXY_OUTBOUND_FAILFAST_TIMEOUT`: how long a request waits for a service's first
    /// endpoints before it fails with 503.
    pub failfast_timeout: Duration,
    /// `MESH_PROXY_DESTINATION_IDLE_TIMEOUT`: how long an unused destination is kept: its
    /// resolution, its stack, and its upstream connections.
    pub destination_idle_timeout: Duration,
    /// `MESH_PROXY_METRICS_IDLE_TIMEOUT`: how long the metric label sets of a target that no
    /// connection or stack uses are kept before they leave `/metrics`.
    pub metrics_idle_timeout: Duration,
    /// The proxy's identity and where it gets its certificate; `None` only with
    /// `MESH_PROXY_IDENTITY_DISABLED=true`.
    pub identity: Option<IdentityConfig>,
    /// `MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS`: inbound ports that refuse connections
    /// without a verified client identity (mutual TLS from another proxy).
    pub inbound_require_identity_ports: PortList,
    /// `MESH_PROXY_INBOUND_DEFAULT_POLICY`: who may call the ports no `Server` selects (and
    /// every port while the controller has not answered): `all-unauthenticated` (the default),
    /// `all-authenticated`, `cluster-authenticated`, `cluster-unauthenticated`, `deny` or
    /// `audit`.
    pub inbound_default_policy: DefaultPolicy,
    /// `MESH_PROXY_INBOUND_CLUSTER_NETWORKS`: the cluster's networks for the `cluster-*`
    /// default policies (comma-separated CIDRs; default the private ranges).
    pub inbound_cluster_networks: Vec<Network>,
    /// `MESH_PROXY_INBOUND_POLICY_TIMEOUT`: how long the first connection to a port waits for
    /// the port's inbound policy from the controller before the default policy applies to it.
    pub inbound_policy_timeout: Duration,
    /// Tap: who may tap (`MESH_PROXY_TAP_IDENTITY`), which request headers are streamed
    /// (`MESH_PROXY_TAP_HEADERS`, `MESH_PROXY_TAP_SENSITIVE_HEADERS`), and the pod's own labels
    /// (`MESH_PROXY_POD_NAME`, `MESH_PROXY_POD_NAMESPACE`, `MESH_PROXY_WORKLOAD`).
    pub tap: TapConfig,
    /// `MESH_PROXY_LOG`: a tracing filter.
    pub log: String,
    /// `MESH_PROXY_LOG_FORMAT`: `plain` or `json`.
    pub log_format: LogFormat,
}

/// The proxy's identity, and how it gets and checks certificates.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityConfig {
    /// `MESH_PROXY_IDENTITY_NAME`: the workload's identity, its certificate's name.
    pub name: Identity,
    /// `MESH_PROXY_IDENTITY_ADDR`: the identity controller, `host:port`.
    pub addr: String,
    /// `MESH_PROXY_IDENTITY_SERVER_NAME`: the identity controller's own identity, verified
    /// before the token is sent; by default `mesh-identity.mesh` in the proxy's trust domain.
    pub server_name: Identity,
    /// `MESH_PROXY_IDENTITY_TOKEN_FILE`: the service-account token, read afresh for every
    /// request (projected tokens rotate).
    pub token_file: PathBuf,
    /// `MESH_PROXY_TRUST_ANCHORS`: the roots peers' and the controller's chains must lead to
    /// (PEM, given inline or as a file path).
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// `MESH_PROXY_IDENTITY_DIR`: where the private key is generated and kept.
    pub dir: PathBuf,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// A configuration variable held an invalid value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

impl Config {
    /// Reads the configuration through `get` (a variable's value, if set).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&get);
        let identity = identity(&get)?;
        let tap = tap(&get, identity.as_ref())?;
        Ok(Self {
            inbound_addr: env.addr("MESH_PROXY_INBOUND_ADDR", defaults::INBOUND_ADDR)?,
            outbound_addr: env.addr("MESH_PROXY_OUTBOUND_ADDR", defaults::OUTBOUND_ADDR)?,
            admin_addr: env.addr("MESH_PROXY_ADMIN_ADDR", defaults::ADMIN_ADDR)?,
            inbound_opaque_ports: env.parse(
                "MESH_PROXY_INBOUND_OPAQUE_PORTS",
                DEFAULT_OPAQUE_PORTS,
                PORTS_EXPECTED,
            )?,
            outbound_opaque_ports: env.parse(
                "MESH_PROXY_OUTBOUND_OPAQUE_PORTS",
                DEFAULT_OPAQUE_PORTS,
                PORTS_EXPECTED,
            )?,
            inbound_codec_ports: {
                let var = "MESH_PROXY_INBOUND_CODEC_PORTS";
                let value = get(var).unwrap_or_default();
                mesh_api::codec_ports::parse_codec_ports(&value).map_err(|why| ConfigError {
                    var,
                    value,
                    expected: format!("PORT=CODEC entries like 6379=redis,9090=thrift ({why})"),
                })?
            },
            detect_timeout: env.duration("MESH_PROXY_DETECT_TIMEOUT", "10s")?,
            header_read_timeout: env.duration("MESH_PROXY_HEADER_READ_TIMEOUT", "10s")?,
            max_header_bytes: env.bounded(
                "MESH_PROXY_MAX_HEADER_BYTES",
                65_536,
                8_192..=16 << 20,
            )?,
            connect_timeout: env.duration("MESH_PROXY_CONNECT_TIMEOUT", "3s")?,
            socket_mark: match get("MESH_PROXY_SOCKET_MARK") {
                None => None,
                Some(value) => Some(value.parse().map_err(|_| ConfigError {
                    var: "MESH_PROXY_SOCKET_MARK",
                    value,
                    expected: "a nonzero 32-bit socket mark, decimal or 0x hex, like 0x66"
                        .to_string(),
                })?),
            },
            pool_idle_timeout: env.duration("MESH_PROXY_POOL_IDLE_TIMEOUT", "30s")?,
            shutdown_grace_period: env.duration("MESH_PROXY_SHUTDOWN_GRACE_PERIOD", "30s")?,
            shutdown_delay: env.duration("MESH_PROXY_SHUTDOWN_DELAY", "0s")?,
            worker_threads: env.bounded("MESH_PROXY_WORKER_THREADS", 1, 1..=1024)?,
            max_authority_labels: env.bounded(
                "MESH_PROXY_MAX_AUTHORITY_LABELS",
                1_000,
                1..=1_000_000,
            )?,
            destination_addr: match get("MESH_PROXY_DESTINATION_ADDR") {
                None => None,
                Some(addr) if is_host_port(&addr) => Some(addr),
                Some(value) => {
                    return Err(ConfigError {
                        var: "MESH_PROXY_DESTINATION_ADDR",
                        value,
                        expected: "host:port, like mesh-destination.mesh.svc.cluster.local:8086 or 127.0.0.1:8086"
                            .to_string(),
                    })
                }
            },
            destination_namespace: get("MESH_PROXY_DESTINATION_NAMESPACE").unwrap_or_else(|| "default".to_string()),
            cluster_domain: get("MESH_PROXY_CLUSTER_DOMAIN").unwrap_or_else(|| "cluster.local".to_string()),
            failfast_timeout: env.duration("MESH_PROXY_OUTBOUND_FAILFAST_TIMEOUT", "3s")?,
            destination_idle_timeout: env.duration("MESH_PROXY_DESTINATION_IDLE_TIMEOUT", "60s")?,
            metrics_idle_timeout: env.duration("MESH_PROXY_METRICS_IDLE_TIMEOUT", "10m")?,
            identity,
            tap,
            inbound_require_identity_ports: env.parse(
                "MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS",
                "",
                PORTS_EXPECTED,
            )?,
            inbound_default_policy: env.parse(
                "MESH_PROXY_INBOUND_DEFAULT_POLICY",
                "all-unauthenticated",
                "all-unauthenticated, all-authenticated, cluster-authenticated, \
                 cluster-unauthenticated, deny or audit",
            )?,
            inbound_cluster_networks: {
                let var = "MESH_PROXY_INBOUND_CLUSTER_NETWORKS";
                let value = get(var).unwrap_or_else(|| DEFAULT_CLUSTER_NETWORKS.to_string());
                parse_networks(&value).map_err(|error| ConfigError {
                    var,
                    value,
                    expected: format!("comma-separated networks like 10.0.0.0/8 ({error})"),
                })?
            },
            inbound_policy_timeout: env.duration("MESH_PROXY_INBOUND_POLICY_TIMEOUT", "3s")?,
            log: get("MESH_PROXY_LOG").unwrap_or_else(|| "warn,mesh_proxy=info".to_string()),
            log_format: env.parse("MESH_PROXY_LOG_FORMAT", "plain", "plain or json")?,
        })
    }
}

/// The identity variables: all of them, unless `MESH_PROXY_IDENTITY_DISABLED=true`.
const IDENTITY_VARS: [&str; 5] = [
    "MESH_PROXY_IDENTITY_NAME",
    "MESH_PROXY_IDENTITY_ADDR",
    "MESH_PROXY_IDENTITY_TOKEN_FILE",
    "MESH_PROXY_TRUST_ANCHORS",
    "MESH_PROXY_IDENTITY_DIR",
];

fn identity(get: &impl Fn(&str) -> Option<String>) -> Result<Option<IdentityConfig>, ConfigError> {
    let err = |var: &'static str, value: String, expected: &str| ConfigError {
        var,
        value,
        expected: expected.to_string(),
    };
    match get("MESH_PROXY_IDENTITY_DISABLED")
        .as_deref()
        .map(str::trim)
    {
        Some("true") => return Ok(None),
        None | Some("false") => {}
        Some(other) => {
            return Err(err(
                "MESH_PROXY_IDENTITY_DISABLED",
                other.to_string(),
                "true or false",
            ))
        }
    }
    let [name, addr, token_file, anchors, dir] = IDENTITY_VARS.map(get);
    if let Some(missing) = IDENTITY_VARS
        .iter()
        .zip([&name, &addr, &token_file, &anchors, &dir])
        .find_map(|(var, value)| value.is_none().then_some(*var))
    {
        return Err(err(
            missing,
            String::new(),
            "a value: identity (mutual TLS) is on unless MESH_PROXY_IDENTITY_DISABLED=true, and \
             then MESH_PROXY_IDENTITY_NAME, _ADDR, _TOKEN_FILE, _DIR and MESH_PROXY_TRUST_ANCHORS \
             are all needed",
        ));
    }
    let (name, addr, token_file, anchors, dir) = (
        name.unwrap_or_default(),
        addr.unwrap_or_default(),
        token_file.unwrap_or_default(),
        anchors.unwrap_or_default(),
        dir.unwrap_or_default(),
    );
    let name = Identity::parse(name.trim()).map_err(|e| {
        err(
            "MESH_PROXY_IDENTITY_NAME",
            name.clone(),
            &format!("<sa>.<ns>.serviceaccount.identity.mesh.<trust-domain> ({e})"),
        )
    })?;
    if !is_host_port(&addr) {
        return Err(err(
            "MESH_PROXY_IDENTITY_ADDR",
            addr,
            "host:port, like mesh-identity.mesh.svc.cluster.local:8080",
        ));
    }
    let server_name = match get("MESH_PROXY_IDENTITY_SERVER_NAME") {
        None => Identity::controller(name.trust_domain()).expect("a valid trust domain"),
        Some(value) => Identity::parse(value.trim()).map_err(|e| {
            err(
                "MESH_PROXY_IDENTITY_SERVER_NAME",
                value.clone(),
                &format!("the identity controller's identity ({e})"),
            )
        })?,
    };
    // Inline PEM, or the path of a PEM file.
    let pem = if anchors.contains("-----BEGIN") {
        anchors.clone()
    } else {
        std::fs::read_to_string(anchors.trim()).map_err(|e| {
            err(
                "MESH_PROXY_TRUST_ANCHORS",
                anchors.clone(),
                &format!("PEM certificates, or a readable file of them ({e})"),
            )
        })?
    };
    let trust_anchors = ca::certs_from_pem(&pem, "the trust anchors").map_err(|e| {
        err(
            "MESH_PROXY_TRUST_ANCHORS",
            anchors.clone(),
            &format!("PEM certificates ({e})"),
        )
    })?;
    for anchor in &trust_anchors {
        if let Err(e) = webpki::anchor_from_trusted_cert(anchor) {
            return Err(err(
                "MESH_PROXY_TRUST_ANCHORS",
                anchors,
                &format!("certificates that parse as trust anchors ({e})"),
            ));
        }
    }
    for (var, value) in [
        ("MESH_PROXY_IDENTITY_TOKEN_FILE", &token_file),
        ("MESH_PROXY_IDENTITY_DIR", &dir),
    ] {
        if value.trim().is_empty() {
            return Err(err(var, value.clone(), "a path"));
        }
    }
    Ok(Some(IdentityConfig {
        name,
        addr,
        server_name,
        token_file: PathBuf::from(token_file),
        trust_anchors,
        dir: PathBuf::from(dir),
    }))
}

/// The tap variables.
fn tap(
    get: &impl Fn(&str) -> Option<String>,
    identity: Option<&IdentityConfig>,
) -> Result<TapConfig, ConfigError> {
    let tap_identity = match (identity, get("MESH_PROXY_TAP_IDENTITY")) {
        (None, _) => None,
        (Some(_), Some(value)) => Some(
            Identity::parse(value.trim())
                .map_err(|e| ConfigError {
                    var: "MESH_PROXY_TAP_IDENTITY",
                    value: value.clone(),
                    expected: format!("the identity allowed to tap ({e})"),
                })?
                .dns_name(),
        ),
        (Some(identity), None) => Some(
            Identity::new(
                TAP_SERVICE_ACCOUNT,
                TAP_NAMESPACE,
                identity.name.trust_domain(),
            )
            .expect("the trust domain of a valid identity is valid")
            .dns_name(),
        ),
    };
    let mut config = TapConfig {
        identity: tap_identity,
        ..TapConfig::default()
    };
    for (var, list) in [
        ("MESH_PROXY_TAP_HEADERS", &mut config.headers),
        (
            "MESH_PROXY_TAP_SENSITIVE_HEADERS",
            &mut config.sensitive_headers,
        ),
    ] {
        let Some(value) = get(var) else { continue };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError {
                    var,
                    value: value.clone(),
                    expected: "a comma-separated list of header names".to_string(),
                });
            }
            let name = name.to_ascii_lowercase();
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
    let labels = &mut config.pod_labels;
    if let Some(pod) = get("MESH_PROXY_POD_NAME").filter(|p| !p.trim().is_empty()) {
        labels.insert("pod".to_string(), pod.trim().to_string());
    }
    if let Some(ns) = get("MESH_PROXY_POD_NAMESPACE")
        .or_else(|| get("MESH_PROXY_DESTINATION_NAMESPACE"))
        .filter(|ns| !ns.trim().is_empty())
    {
        labels.insert("namespace".to_string(), ns.trim().to_string());
    }
    if let Some(value) = get("MESH_PROXY_WORKLOAD") {
        let workload = value.trim().split_once('/').filter(|(kind, name)| {
            !kind.is_empty()
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.is_empty()
                && !name.contains(['/', ' '])
        });
        let Some((kind, name)) = workload else {
            return Err(ConfigError {
                var: "MESH_PROXY_WORKLOAD",
                value,
                expected: "the pod's workload as kind/name, like deployment/web".to_string(),
            });
        };
        labels.insert(kind.to_string(), name.to_string());
    }
    Ok(config)
}

/// The viz component's tap identity: `mesh-tap.mesh-viz` in the proxy's trust domain.
const TAP_SERVICE_ACCOUNT: &str = "mesh-tap";
const TAP_NAMESPACE: &str = "mesh-viz";

const PORTS_EXPECTED: &str = "a comma-separated list of ports and ranges like 25,587,8000-8100";

/// Reads one variable at a time, turning parse failures into [`ConfigError`]s that name it.
struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn parse<T: FromStr>(
        &self,
        var: &'static str,
        default: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = (self.0)(var).unwrap_or_else(|| default.to_string());
        value.trim().parse().map_err(|_| ConfigError {
            var,
            value,
            expected: expected.to_string(),
        })
    }

    /// A socket address, `default` when unset; an error shows the default as the example.
    fn addr(&self, var: &'static str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
        let expected = format!("a socket address like {default}");
        self.parse(var, &default.to_string(), &expected)
    }

    fn duration(&self, var: &'static str, default: &str) -> Result<Duration, ConfigError> {
        let value = (self.0)(var).unwrap_or_else(|| default.to_string());
        parse_duration(&value).ok_or_else(|| ConfigError {
            var,
            value,
            expected: "a duration like 500ms, 10s, 1m or 1h".to_string(),
        })
    }

    fn bounded(
        &self,
        var: &'static str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        let n: usize = self.parse(var, &default.to_string(), &expected)?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(ConfigError {
                var,
                value: n.to_string(),
                expected,
            })
        }
    }
}

/// `host:port` with a non-empty host and a numeric port (an IPv6 host in brackets).
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// Parses a `MESH_PROXY_*` duration: [`mesh_api::duration::parse_duration`] (`500ms`, `10s`,
/// `2m`, `1h`, `1d`) after trimming, or a bare number of seconds, which these variables have
/// always accepted.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let bare_seconds = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if bare_seconds {
        mesh_api::duration::parse_duration(&format!("{s}s")).ok()
    } else {
        mesh_api::duration::parse_duration(s).ok()
    }
}

// === impl LogFormat ===

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The configuration from `vars`, with identity disabled unless `vars` say otherwise.
    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env: HashMap<String, String> = HashMap::from([(
            "MESH_PROXY_IDENTITY_DISABLED".to_string(),
            "true".to_string(),
        )]);
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_env(|k| env.get(k).cloned())
    }

    fn anchor_pem() -> String {
        ca::new_trust_anchor("cluster.local", Duration::from_secs(3600))
            .unwrap()
            .cert_pem
    }

    fn identity_vars(anchors: &str) -> Vec<(&'static str, String)> {
        vec![
            ("MESH_PROXY_IDENTITY_DISABLED", "false".into()),
            (
                "MESH_PROXY_IDENTITY_NAME",
                "web.demo.serviceaccount.identity.mesh.cluster.local".into(),
            ),
            ("MESH_PROXY_IDENTITY_ADDR", "10.244.0.2:8080".into()),
            ("MESH_PROXY_IDENTITY_TOKEN_FILE", "/var/run/token".into()),
            ("MESH_PROXY_TRUST_ANCHORS", anchors.into()),
            ("MESH_PROXY_IDENTITY_DIR", "/var/run/mesh".into()),
        ]
    }

    fn with(vars: &[(&'static str, String)]) -> Result<Config, ConfigError> {
        let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        config(&borrowed)
    }

    #[test]
    fn identity_is_required_unless_disabled() {
        let err = Config::from_env(|_| None).unwrap_err();
        assert_eq!(err.var, "MESH_PROXY_IDENTITY_NAME");
        assert!(
            err.to_string()
                .contains("MESH_PROXY_IDENTITY_DISABLED=true"),
            "{err}"
        );
        assert_eq!(config(&[]).unwrap().identity, None);

        let pem = anchor_pem();
        let c = with(&identity_vars(&pem)).unwrap();
        let id = c.identity.unwrap();
        assert_eq!(id.name.service_account(), "web");
        assert_eq!(
            id.server_name.to_string(),
            "mesh-identity.mesh.serviceaccount.identity.mesh.cluster.local"
        );
        assert_eq!(id.trust_anchors.len(), 1);

        // Every variable is needed, and each is checked.
        for skip in 1..6 {
            let mut vars = identity_vars(&pem);
            let var = vars.remove(skip).0;
            assert_eq!(with(&vars).unwrap_err().var, var);
        }
        for (var, value, fragment) in [
            ("MESH_PROXY_IDENTITY_NAME", "web.demo.svc", "serviceaccount"),
            ("MESH_PROXY_IDENTITY_ADDR", "identity", "host:port"),
            (
                "MESH_PROXY_TRUST_ANCHORS",
                "/nonexistent.pem",
                "readable file",
            ),
            (
                "MESH_PROXY_TRUST_ANCHORS",
                "-----BEGIN CERTIFICATE-----\nxx",
                "PEM",
            ),
            (
                "MESH_PROXY_IDENTITY_SERVER_NAME",
                "controller",
                "identity controller",
            ),
            ("MESH_PROXY_IDENTITY_DISABLED", "yes", "true or false"),
        ] {
            let mut vars = identity_vars(&pem);
            vars.push((var, value.into()));
            let err = with(&vars).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(fragment), "{err}");
        }

        // A path to the anchors works as well as the PEM itself.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchors.pem");
        std::fs::write(&path, &pem).unwrap();
        let c = with(&identity_vars(path.to_str().unwrap())).unwrap();
        assert_eq!(c.identity.unwrap().trust_anchors.len(), 1);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.inbound_addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(c.outbound_addr, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(c.admin_addr, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(c.detect_timeout, Duration::from_secs(10));
        assert_eq!(c.log_format, LogFormat::Plain);
        for port in [25, 587, 3306, 5432, 6379, 11211] {
            assert!(c.inbound_opaque_ports.contains(port), "{port}");
            assert!(c.outbound_opaque_ports.contains(port), "{port}");
        }
        assert!(!c.inbound_opaque_ports.contains(80));
        assert_eq!(c.inbound_default_policy, DefaultPolicy::AllUnauthenticated);
        assert_eq!(c.inbound_cluster_networks.len(), 5);
        assert_eq!(c.inbound_policy_timeout, Duration::from_secs(3));
        assert_eq!(
            c.destination_addr, None,
            "discovery is off unless configured"
        );
        let c = config(&[(
            "MESH_PROXY_DESTINATION_ADDR",
            "mesh-destination.mesh.svc.cluster.local:8086",
        )])
        .unwrap();
        assert_eq!(
            c.destination_addr.as_deref(),
            Some("mesh-destination.mesh.svc.cluster.local:8086")
        );
    }

    #[test]
    fn tap_variables() {
        let c = config(&[]).unwrap();
        assert_eq!(c.tap.identity, None, "identity off: only the loopback taps");
        assert!(c.tap.headers.contains(&"user-agent".to_string()));
        assert!(c
            .tap
            .sensitive_headers
            .contains(&"authorization".to_string()));
        assert!(c.tap.pod_labels.is_empty());

        let c = config(&[
            ("MESH_PROXY_TAP_HEADERS", "X-Team, x-request-id"),
            ("MESH_PROXY_TAP_SENSITIVE_HEADERS", "x-api-key"),
            ("MESH_PROXY_POD_NAME", "web-5d9f-abcde"),
            ("MESH_PROXY_DESTINATION_NAMESPACE", "demo"),
            ("MESH_PROXY_WORKLOAD", "deployment/web"),
        ])
        .unwrap();
        assert!(c.tap.headers.contains(&"x-team".to_string()));
        assert_eq!(
            c.tap
                .headers
                .iter()
                .filter(|h| *h == "x-request-id")
                .count(),
            1
        );
        assert!(
            c.tap.sensitive_headers.contains(&"x-api-key".to_string())
                && c.tap.sensitive_headers.contains(&"cookie".to_string()),
            "the variable adds to the default"
        );
        let labels: Vec<_> = c.tap.pod_labels.iter().collect();
        assert_eq!(
            format!("{labels:?}"),
            r#"[("deployment", "web"), ("namespace", "demo"), ("pod", "web-5d9f-abcde")]"#
        );
        let c = config(&[
            ("MESH_PROXY_DESTINATION_NAMESPACE", "demo"),
            ("MESH_PROXY_POD_NAMESPACE", "shop"),
        ])
        .unwrap();
        assert_eq!(c.tap.pod_labels["namespace"], "shop");

        let anchors = anchor_pem();
        let mut vars = identity_vars(&anchors);
        let c = with(&vars).unwrap();
        assert_eq!(
            c.tap.identity.as_deref(),
            Some("mesh-tap.mesh-viz.serviceaccount.identity.mesh.cluster.local"),
            "the viz component's identity in the proxy's trust domain"
        );
        vars.push((
            "MESH_PROXY_TAP_IDENTITY",
            "tap.ops.serviceaccount.identity.mesh.cluster.local".to_string(),
        ));
        let c = with(&vars).unwrap();
        assert_eq!(
            c.tap.identity.as_deref(),
            Some("tap.ops.serviceaccount.identity.mesh.cluster.local")
        );
    }

    #[test]
    fn invalid_values_name_the_variable() {
        fn check(var: &'static str, value: &str, expected_fragment: &str) {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            let msg = err.to_string();
            assert!(
                msg.contains(var) && msg.contains(expected_fragment),
                "{msg}"
            );
        }
        check("MESH_PROXY_INBOUND_ADDR", "4143", "socket address");
        check("MESH_PROXY_ADMIN_ADDR", "localhost:x", "socket address");
        check(
            "MESH_PROXY_INBOUND_OPAQUE_PORTS",
            "25,x",
            "ports and ranges",
        );
        check("MESH_PROXY_INBOUND_OPAQUE_PORTS", "0", "ports and ranges");
        check(
            "MESH_PROXY_OUTBOUND_OPAQUE_PORTS",
            "9-1",
            "ports and ranges",
        );
        check("MESH_PROXY_DETECT_TIMEOUT", "10 parsecs", "duration");
        check(
            "MESH_PROXY_INBOUND_DEFAULT_POLICY",
            "allow",
            "cluster-authenticated",
        );
        check(
            "MESH_PROXY_INBOUND_CLUSTER_NETWORKS",
            "10.0.0.0/33",
            "10.0.0.0/8",
        );
        check("MESH_PROXY_INBOUND_POLICY_TIMEOUT", "soon", "duration");
        check("MESH_PROXY_DETECT_TIMEOUT", "", "duration");
        check("MESH_PROXY_LOG_FORMAT", "xml", "plain or json");
        check("MESH_PROXY_MAX_HEADER_BYTES", "100", "8192");
        check("MESH_PROXY_WORKER_THREADS", "0", "1 to 1024");
        check("MESH_PROXY_DESTINATION_ADDR", "controller", "host:port");
        check(
            "MESH_PROXY_DESTINATION_ADDR",
            "controller:http",
            "host:port",
        );
        check("MESH_PROXY_OUTBOUND_FAILFAST_TIMEOUT", "3 s", "duration");
        check(
            "MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS",
            "http",
            "ports and ranges",
        );
        check(
            "MESH_PROXY_TAP_HEADERS",
            "x-ok, not a header",
            "header names",
        );
        check("MESH_PROXY_TAP_SENSITIVE_HEADERS", "a:b", "header names");
        check("MESH_PROXY_WORKLOAD", "web", "kind/name");
        check("MESH_PROXY_WORKLOAD", "Deployment/web", "kind/name");
        check("MESH_PROXY_WORKLOAD", "deployment/", "kind/name");
        check("MESH_PROXY_SOCKET_MARK", "0", "nonzero 32-bit socket mark");
        check("MESH_PROXY_SOCKET_MARK", "0x", "nonzero 32-bit socket mark");
        check("MESH_PROXY_SOCKET_MARK", "4294967296", "0x hex");
        check("MESH_PROXY_SOCKET_MARK", "mark", "0x hex");
    }

    #[test]
    fn socket_mark() {
        assert_eq!(config(&[]).unwrap().socket_mark, None, "unset: no mark");
        for (value, expected) in [("102", 102), ("0x66", 0x66), (" 0xffffffff ", u32::MAX)] {
            let c = config(&[("MESH_PROXY_SOCKET_MARK", value)]).unwrap();
            assert_eq!(c.socket_mark.map(Mark::get), Some(expected), "{value:?}");
        }
    }

    #[test]
    fn durations() {
        fn check(s: &str, expected: Option<u64>) {
            assert_eq!(
                parse_duration(s),
                expected.map(Duration::from_millis),
                "{s}"
            );
        }
        check("500ms", Some(500));
        check("10s", Some(10_000));
        check("10", Some(10_000));
        check("2m", Some(120_000));
        check("1h", Some(3_600_000));
        check("1.5s", None);
        check("s", None);
        check("-1s", None);
        check("99999999999999999999h", None);
    }
}
