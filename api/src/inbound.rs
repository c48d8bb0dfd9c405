//! The inbound policy watch: who may call one port of one pod, and how fast, as JSON lines, and
//! its streaming client; with the two tests both sides must agree on ([`IdentityMatch`] and
//! [`Network::contains`]).
//!
//! `GET /v1/policy/inbound/watch?pod=NAMESPACE/NAME&port=N` answers with a long body of
//! [`InboundPolicy`] lines. Each line is the **whole** policy of the port (the client replaces
//! what it held); the first line is the current state, a new one follows every change.
//!
//! The model is Linkerd's `policy.linkerd.io`, under `policy.mesh.io`: a `Server` selects pods
//! and a port; `AuthorizationPolicy`s (targeting the Server, one of its HTTPRoutes, or its
//! Namespace) name the authentications a client needs, **all** of which must hold: a
//! `MeshTLSAuthentication` (the client's proven mesh identity) or a `NetworkAuthentication` (the
//! client's address). The controller resolves every reference, so the proxy only tests
//! requirements. A port that no Server selects has no server here (`server` absent): the proxy
//! then applies its default inbound policy ([`DefaultPolicy`]).
//!
//! ```
//! use mesh_api::inbound::{InboundPolicy, Requirement};
//! let line = r#"{"server":{"namespace":"demo","name":"voting-grpc"},"protocol":"gRPC",
//!   "access":"deny","authorizations":[{"kind":"AuthorizationPolicy","namespace":"demo",
//!   "name":"voting-from-web","requires":[{"meshTLS":{"identities":[
//!   "web.demo.serviceaccount.identity.mesh.cluster.local"]}}]}]}"#;
//! let policy: InboundPolicy = serde_json::from_str(line).unwrap();
//! assert!(matches!(policy.authorizations[0].requires[0], Requirement::MeshTls { .. }));
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::destination::{Connector, WatchError};
use crate::policy::Route;

/// The path of the inbound policy watch.
pub const INBOUND_WATCH_PATH: &str = "/v1/policy/inbound/watch";

/// The API group of the mesh's policy resources.
pub const POLICY_GROUP: &str = "policy.mesh.io";

/// The annotation (on a pod, or its namespace) that sets the pod's default inbound policy; the
/// injector turns it into `MESH_PROXY_INBOUND_DEFAULT_POLICY`.
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.mesh.io/default-inbound-policy";

/// The networks `cluster-*` default policies take as the cluster's when nothing else is said
/// (`MESH_PROXY_INBOUND_CLUSTER_NETWORKS`): the private and shared address ranges.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// The inbound policy of one port of one pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicy {
    /// The Server that selects the pod and port (the oldest, when several do); `None`: no
    /// Server does, and the proxy applies its default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ObjectRef>,
    /// The Server's `proxyProtocol`.
    #[serde(default)]
    pub protocol: ProxyProtocol,
    /// What happens to what no authorization allows: `deny`, or `audit` (allowed, counted).
    #[serde(default)]
    pub access: Access,
    /// The authorizations of the whole Server (targeting it or its namespace): any one that
    /// holds allows a connection, and a request on any route.
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
    /// The HTTPRoutes whose parent is the Server, in Gateway API's tie-break order (only their
    /// matches count). When there are any, a request that matches none is refused (404), and a
    /// request is also allowed by the authorizations of the route it matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<InboundRoute>,
    /// The Server's `HTTPLocalRateLimitPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The paths of the pod's HTTP probes on this port (`httpGet` liveness, readiness and
    /// startup probes): a `GET` or `HEAD` of one of them is allowed from anyone, whatever the
    /// Server or the default policy says, so that a strict policy does not fail the kubelet's
    /// probes. Served with or without a Server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_paths: Vec<String>,
}

/// A namespaced object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A Server's `proxyProtocol`: what the proxy expects on the port without detecting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyProtocol {
    /// Detect it (the default).
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
    /// HTTP/1.
    #[serde(rename = "HTTP/1")]
    Http1,
    /// HTTP/2.
    #[serde(rename = "HTTP/2")]
    Http2,
    /// gRPC.
    #[serde(rename = "gRPC")]
    Grpc,
    /// Bytes, forwarded as they are.
    #[serde(rename = "opaque")]
    Opaque,
    /// The application's own TLS, forwarded as it is.
    #[serde(rename = "TLS")]
    Tls,
}

/// What happens to a connection or request no authorization allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// Refused.
    #[default]
    Deny,
    /// Allowed, and counted as audited (`…_authz_audit_total`): what `deny` would refuse.
    Audit,
    /// Allowed (a default policy that allows everything).
    Allow,
}

/// One authorization: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// `AuthorizationPolicy`, or `default` for a default policy's.
    pub kind: String,
    /// Its namespace (empty for a default policy's).
    #[serde(default)]
    pub namespace: String,
    /// Its name (a default policy's: the policy, `all-authenticated`).
    pub name: String,
    /// What the client must meet, all of it. Empty: anyone.
    #[serde(default)]
    pub requires: Vec<Requirement>,
}

/// One authentication a client must meet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Requirement {
    /// The client proved a mesh identity over mutual TLS that one of these matches.
    #[serde(rename = "meshTLS")]
    MeshTls {
        /// Identity names: exact, `*` (any), or `*.suffix`.
        identities: Vec<String>,
    },
    /// The client's address is in one of these networks.
    #[serde(rename = "network")]
    Network {
        /// The networks.
        networks: Vec<Network>,
    },
}

/// A network of a `NetworkAuthentication`: a CIDR, less its exceptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The network.
    pub cidr: Cidr,
    /// Parts of it that do not count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

/// An HTTPRoute of a Server, and its own authorizations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InboundRoute {
    /// The route (only `kind`, `namespace`, `name` and the rules' `matches` are used).
    #[serde(flatten)]
    pub route: Route,
    /// The authorizations that target this route.
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

/// An `HTTPLocalRateLimitPolicy`: requests per second, enforced by each proxy on its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// All requests to the Server together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u32>,
    /// Each client identity on its own (clients without one share one limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// Per-identity limits that replace `identity` for the identities they name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RateLimitOverride>,
}

/// A limit of its own for some client identities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitOverride {
    /// Requests per second, for each of these identities on its own.
    pub requests_per_second: u32,
    /// The identities (from `clientRefs` ServiceAccounts).
    pub identities: Vec<String>,
}

impl InboundPolicy {
    /// Encodes the policy as one line of the watch body.
    pub fn to_line(&self) -> Bytes {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

// === default policies ===

/// The default inbound policy of the ports no Server selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DefaultPolicy {
    /// Everyone (today's behaviour).
    #[default]
    AllUnauthenticated,
    /// Clients with a mesh identity, from anywhere.
    AllAuthenticated,
    /// Clients with a mesh identity, from the cluster's networks.
    ClusterAuthenticated,
    /// Anyone from the cluster's networks.
    ClusterUnauthenticated,
    /// No one.
    Deny,
    /// Everyone, each decision counted as audited.
    Audit,
}

impl DefaultPolicy {
    /// Every policy, as spelled.
    pub const ALL: [DefaultPolicy; 6] = [
        Self::AllUnauthenticated,
        Self::AllAuthenticated,
        Self::ClusterAuthenticated,
        Self::ClusterUnauthenticated,
        Self::Deny,
        Self::Audit,
    ];

    /// The name as users spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    /// The policy this default means for a port, with `cluster` as the cluster's networks.
    pub fn policy(self, cluster: &[Network]) -> InboundPolicy {
        let authz = |requires: Vec<Requirement>| Authorization {
            kind: "default".into(),
            namespace: String::new(),
            name: self.as_str().into(),
            requires,
        };
        let mesh = || Requirement::MeshTls {
            identities: vec!["*".into()],
        };
        let cluster = || Requirement::Network {
            networks: cluster.to_vec(),
        };
        let (access, authorizations) = match self {
            Self::AllUnauthenticated => (Access::Deny, vec![authz(vec![])]),
            Self::AllAuthenticated => (Access::Deny, vec![authz(vec![mesh()])]),
            Self::ClusterAuthenticated => (Access::Deny, vec![authz(vec![mesh(), cluster()])]),
            Self::ClusterUnauthenticated => (Access::Deny, vec![authz(vec![cluster()])]),
            Self::Deny => (Access::Deny, vec![]),
            Self::Audit => (Access::Audit, vec![]),
        };
        InboundPolicy {
            server: None,
            protocol: ProxyProtocol::Unknown,
            access,
            authorizations,
            routes: Vec::new(),
            rate_limit: None,
            probe_paths: Vec::new(),
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown default inbound policy {s:?}: use one of {}",
                    names.join(", ")
                )
            })
    }
}

// === what both sides test ===

/// An identity pattern of a `MeshTLSAuthentication`: exact, `*`, or `*.suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Any identity.
    Any,
    /// Identities that end with `.suffix` (the suffix kept with its dot).
    Suffix(String),
    /// This identity.
    Exact(String),
}

impl IdentityMatch {
    /// Reads a pattern; `*` anywhere but as a whole first label is refused.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let p = pattern.trim().to_ascii_lowercase();
        if p == "*" {
            return Ok(Self::Any);
        }
        let (suffix, rest) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let valid = !rest.is_empty()
            && rest.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "{pattern:?} is not an identity: use a name, `*` or `*.suffix`"
            ));
        }
        Ok(if suffix {
            Self::Suffix(format!(".{rest}"))
        } else {
            Self::Exact(rest.to_owned())
        })
    }

    /// Whether `identity` (as the client's certificate names it) matches.
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Suffix(s) => {
                identity.len() > s.len()
                    && identity
                        .get(identity.len() - s.len()..)
                        .is_some_and(|end| end.eq_ignore_ascii_case(s))
            }
            Self::Exact(e) => identity.eq_ignore_ascii_case(e),
        }
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`; an address alone is a host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a network: use an address or address/prefix");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Network {
    /// Whether `ip` is in the network and in none of its exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// Reads a comma-separated list of networks (`MESH_PROXY_INBOUND_CLUSTER_NETWORKS`).
pub fn parse_networks(list: &str) -> Result<Vec<Network>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Ok(Network {
                cidr: s.parse()?,
                except: Vec::new(),
            })
        })
        .collect()
}

/// Watches the inbound policy of `port` of the pod `namespace/name`, at the controller `addr`.
/// Like [`crate::destination::watch_with`], the stream ends after the first error and does not
/// reconnect.
pub fn watch_inbound(
    connector: Connector,
    addr: SocketAddr,
    pod: &str,
    port: u16,
) -> impl Stream<Item = Result<InboundPolicy, WatchError>> + Send + 'static {
    crate::destination::watch_lines(
        connector,
        addr,
        INBOUND_WATCH_PATH,
        ("pod", pod),
        vec![("port", port.to_string())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_patterns() {
        let id = "web.demo.serviceaccount.identity.mesh.cluster.local";
        assert!(IdentityMatch::parse("*").unwrap().matches(id));
        assert!(IdentityMatch::parse(id).unwrap().matches(id));
        assert!(
            IdentityMatch::parse("WEB.demo.serviceaccount.identity.mesh.cluster.local")
                .unwrap()
                .matches(id)
        );
        let ns = IdentityMatch::parse("*.demo.serviceaccount.identity.mesh.cluster.local").unwrap();
        assert!(ns.matches(id));
        assert!(!ns.matches("web.other.serviceaccount.identity.mesh.cluster.local"));
        assert!(!ns.matches("demo.serviceaccount.identity.mesh.cluster.local"));
        assert!(
            !IdentityMatch::parse("vote-bot.demo.serviceaccount.identity.mesh.cluster.local")
                .unwrap()
                .matches(id)
        );
        for bad in ["", "a.*", "*web.demo", "a..b", "web demo", "*."] {
            assert!(IdentityMatch::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks() {
        let net = Network {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(net.contains("10.2.3.4".parse().unwrap()));
        assert!(!net.contains("10.1.3.4".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.2.3.4".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        assert!(!host.contains("192.0.2.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        assert_eq!(parse_networks(DEFAULT_CLUSTER_NETWORKS).unwrap().len(), 5);
    }

    #[test]
    fn default_policies() {
        for p in DefaultPolicy::ALL {
            assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
        }
        assert!("allow".parse::<DefaultPolicy>().is_err());
        let deny = DefaultPolicy::Deny.policy(&[]);
        assert!(deny.authorizations.is_empty() && deny.access == Access::Deny);
    }

    #[test]
    fn round_trip() {
        let policy = InboundPolicy {
            server: Some(ObjectRef {
                namespace: "demo".into(),
                name: "emoji-http".into(),
            }),
            protocol: ProxyProtocol::Http1,
            access: Access::Audit,
            authorizations: vec![Authorization {
                kind: "AuthorizationPolicy".into(),
                namespace: "demo".into(),
                name: "a".into(),
                requires: vec![Requirement::Network {
                    networks: parse_networks("10.0.0.0/8").unwrap(),
                }],
            }],
            routes: vec![InboundRoute::default()],
            rate_limit: Some(RateLimit {
                namespace: "demo".into(),
                name: "rl".into(),
                total: Some(100),
                identity: Some(10),
                overrides: vec![RateLimitOverride {
                    requests_per_second: 50,
                    identities: vec!["x".into()],
                }],
            }),
            probe_paths: vec!["/ready".into()],
        };
        let line = policy.to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains(r#""protocol":"HTTP/1""#), "{text}");
        assert!(text.contains(r#""cidr":"10.0.0.0/8""#), "{text}");
        assert!(text.contains(r#""requestsPerSecond":50"#), "{text}");
        let back: InboundPolicy = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, policy);
    }
}
