//! Inbound authorization of a workload's pods (`mesh viz authz`): for each Server their proxies
//! applied (a `Server` object, or the `default` policy of a port no Server selects), the HTTP
//! requests each route and authorization allowed, denied and audited, the TCP connections each
//! authorization allowed, denied and audited, and the requests a local rate limit refused.
//!
//! The proxies' authorization families are the contract this folds (label values are opaque
//! strings, printed as they come):
//!
//! | family | labels |
//! |---|---|
//! | `inbound_http_authz_allow_total` | `srv_kind`, `srv_name`, `authz_kind`, `authz_name`, `route_name` |
//! | `inbound_http_authz_deny_total` | the same |
//! | `inbound_http_authz_audit_total` | the same |
//! | `inbound_tcp_authz_allow_total` | `srv_kind`, `srv_name`, `authz_kind`, `authz_name` |
//! | `inbound_tcp_authz_deny_total` | the same |
//! | `inbound_tcp_authz_audit_total` | the same |
//! | `inbound_http_local_ratelimit_total` | `srv_kind`, `srv_name`, `ratelimit_name`, `scope` |
//!
//! `srv_kind` is `Server` or `default` (then `srv_name` is the default policy's name, such as
//! `all-unauthenticated`); `authz_kind` is `AuthorizationPolicy`, `default`, or empty when no
//! authorization allowed what was denied or audited; `route_name` is the inbound HTTPRoute's
//! name, or `default` for a Server without routes; `scope` is `total`, `identity` or
//! `override`. A Server is in its pods' namespace, which the scrape's pod gives. Every other
//! label is summed over.
//!
//! Counters are cumulative since a proxy started: each series' value in the window is its
//! difference between two scrapes (a series that went down was reset, and counts whole; one
//! that is new counts whole too); without a first scrape, the figures cover the proxies' whole
//! life and there are no rates.

use std::collections::BTreeMap;

use crate::model::PodInfo;
use crate::prom::{label, Sample};
use crate::stat::{count, counted, rate, window, Scrapes};

/// HTTP requests an authorization allowed.
pub const HTTP_ALLOW: &str = "inbound_http_authz_allow_total";
/// HTTP requests no authorization allowed, refused.
pub const HTTP_DENY: &str = "inbound_http_authz_deny_total";
/// HTTP requests no authorization allowed, let through by an `audit` access policy.
pub const HTTP_AUDIT: &str = "inbound_http_authz_audit_total";
/// TCP connections an authorization allowed.
pub const TCP_ALLOW: &str = "inbound_tcp_authz_allow_total";
/// TCP connections no authorization allowed, refused.
pub const TCP_DENY: &str = "inbound_tcp_authz_deny_total";
/// TCP connections no authorization allowed, let through by an `audit` access policy.
pub const TCP_AUDIT: &str = "inbound_tcp_authz_audit_total";
/// HTTP requests refused by a local rate limit, by `scope`.
pub const RATE_LIMITED: &str = "inbound_http_local_ratelimit_total";

/// The families [`authz`] reads; every one is in `mesh_api::viz::FAMILIES`, so both sources
/// keep them and the metrics API queries them.
pub const AUTHZ_FAMILIES: [&str; 7] = [
    HTTP_ALLOW,
    HTTP_DENY,
    HTTP_AUDIT,
    TCP_ALLOW,
    TCP_DENY,
    TCP_AUDIT,
    RATE_LIMITED,
];

/// What `mesh viz authz` shows, and its JSON (`-o json`):
///
/// ```json
/// {"window": 5.0,
///  "servers": [{"server": {"kind": "Server", "namespace": "demo", "name": "voting-grpc"},
///               "decisions": [{"protocol": "http", "route": "default",
///                              "authorization": {"kind": "AuthorizationPolicy",
///                                                "name": "voting-from-web"},
///                              "allowed": {"count": 99, "rate": 19.8},
///                              "denied": {"count": 0, "rate": 0.0},
///                              "audited": {"count": 0, "rate": 0.0}},
///                             {"protocol": "tcp", "route": null, "authorization": null,
///                              "allowed": {"count": 0, "rate": 0.0},
///                              "denied": {"count": 2, "rate": 0.4},
///                              "audited": {"count": 0, "rate": 0.0}}],
///               "rateLimited": [{"name": "voting-rl", "scope": "identity",
///                                "count": 10, "rate": 2.0}]}]}
/// ```
///
/// Counts are of the window (or since the proxies started, with `window` 0, where every
/// `rate` is `null`). `authorization` is `null` for what no authorization allowed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Authz {
    /// The seconds between the two scrapes; 0: since the proxies started.
    pub window: f64,
    /// The Servers with decisions or refusals in the window: `Server`s by namespace and name,
    /// then the `default` policies.
    pub servers: Vec<ServerStats>,
}

/// A Server, or a default policy (`kind` `default`, `name` the policy: `all-unauthenticated`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServerRef {
    pub kind: String,
    /// The pods' namespace, where a Server is.
    pub namespace: String,
    pub name: String,
}

/// An authorization: an `AuthorizationPolicy` (in the Server's namespace), or a default
/// policy's (`default`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct AuthzRef {
    pub kind: String,
    pub name: String,
}

/// HTTP or TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Requests, per route.
    Http,
    /// Connections.
    Tcp,
}

/// A count in the window, and its rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Counted {
    pub count: u64,
    /// Per second; `None` without a window.
    pub rate: Option<f64>,
}

/// What one authorization (or none) decided on one route (HTTP) or on connections (TCP).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decisions {
    pub protocol: Protocol,
    /// The inbound HTTPRoute's name (`default`: the Server has no routes); `None` for TCP.
    pub route: Option<String>,
    /// What allowed it; `None`: no authorization did (what was denied or audited).
    pub authorization: Option<AuthzRef>,
    pub allowed: Counted,
    pub denied: Counted,
    pub audited: Counted,
}

/// Requests a local rate limit refused, in one scope.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RateLimited {
    /// The `HTTPLocalRateLimitPolicy`.
    pub name: String,
    /// `total`, `identity` or `override`.
    pub scope: String,
    pub count: u64,
    pub rate: Option<f64>,
}

/// One Server of `mesh viz authz`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    pub server: ServerRef,
    /// HTTP first (by route, then the authorizations by kind and name, then what none
    /// allowed), then TCP; only those that counted anything in the window.
    pub decisions: Vec<Decisions>,
    /// Refusals of the Server's rate limit, by policy and scope.
    pub rate_limited: Vec<RateLimited>,
}

/// The authorization decisions of `pods`' inbound proxies between two scrapes (`before` and
/// `after`, `seconds` apart); without `before`, since the proxies started, without rates.
pub fn authz(pods: &[PodInfo], before: Option<&Scrapes>, after: &Scrapes, seconds: f64) -> Authz {
    let mut fold = Fold::default();
    for (pod, sample, value) in counted(pods, before, after, &AUTHZ_FAMILIES) {
        fold.add(&pod.namespace, sample, value);
    }
    fold.finish(window(before, seconds))
}

// === the fold ===

/// A row of decisions: (protocol, route, authorization).
type RowKey = (Protocol, Option<String>, Option<AuthzRef>);

#[derive(Default)]
struct Fold {
    servers: BTreeMap<ServerRef, ServerSum>,
}

#[derive(Default)]
struct ServerSum {
    rows: BTreeMap<RowKey, [f64; 3]>,
    rate_limited: BTreeMap<(String, String), f64>,
}

impl Fold {
    fn add(&mut self, namespace: &str, s: &Sample, value: f64) {
        let server = ServerRef {
            kind: label(s, "srv_kind"),
            namespace: namespace.to_string(),
            name: label(s, "srv_name"),
        };
        let sum = self.servers.entry(server).or_default();
        if s.name == RATE_LIMITED {
            let key = (label(s, "ratelimit_name"), label(s, "scope"));
            *sum.rate_limited.entry(key).or_default() += value;
            return;
        }
        let (protocol, decision) = match s.name.as_str() {
            HTTP_ALLOW => (Protocol::Http, 0),
            HTTP_DENY => (Protocol::Http, 1),
            HTTP_AUDIT => (Protocol::Http, 2),
            TCP_ALLOW => (Protocol::Tcp, 0),
            TCP_DENY => (Protocol::Tcp, 1),
            _ => (Protocol::Tcp, 2),
        };
        let route = (protocol == Protocol::Http).then(|| label(s, "route_name"));
        let authorization = match label(s, "authz_kind") {
            kind if kind.is_empty() => None,
            kind => Some(AuthzRef {
                kind,
                name: label(s, "authz_name"),
            }),
        };
        sum.rows
            .entry((protocol, route, authorization))
            .or_default()[decision] += value;
    }

    fn finish(self, window: f64) -> Authz {
        let counted = |n: f64| Counted {
            count: count(n),
            rate: rate(n, window),
        };
        let mut servers: Vec<ServerStats> = self
            .servers
            .into_iter()
            .filter_map(|(server, sum)| {
                let mut decisions: Vec<Decisions> = sum
                    .rows
                    .into_iter()
                    .filter(|(_, counts)| counts.iter().any(|n| *n > 0.0))
                    .map(|((protocol, route, authorization), [a, d, u])| Decisions {
                        protocol,
                        route,
                        authorization,
                        allowed: counted(a),
                        denied: counted(d),
                        audited: counted(u),
                    })
                    .collect();
                // Per route, what an authorization allowed before what none did.
                decisions.sort_by(|a, b| {
                    (
                        a.protocol,
                        &a.route,
                        a.authorization.is_none(),
                        &a.authorization,
                    )
                        .cmp(&(
                            b.protocol,
                            &b.route,
                            b.authorization.is_none(),
                            &b.authorization,
                        ))
                });
                let rate_limited: Vec<RateLimited> = sum
                    .rate_limited
                    .into_iter()
                    .filter(|(_, n)| *n > 0.0)
                    .map(|((name, scope), n)| RateLimited {
                        name,
                        scope,
                        count: count(n),
                        rate: rate(n, window),
                    })
                    .collect();
                (!decisions.is_empty() || !rate_limited.is_empty()).then_some(ServerStats {
                    server,
                    decisions,
                    rate_limited,
                })
            })
            .collect();
        // Servers first, then the default policies.
        servers.sort_by(|a, b| {
            let order = |s: &ServerRef| (s.kind == "default", s.namespace.clone(), s.name.clone());
            order(&a.server).cmp(&order(&b.server))
        });
        Authz { window, servers }
    }
}

// === display ===

impl std::fmt::Display for ServerRef {
    /// `Server demo/voting-grpc`, or `default all-unauthenticated`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == "default" {
            return write!(f, "default {}", self.name);
        }
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl std::fmt::Display for AuthzRef {
    /// `AuthorizationPolicy voting-from-web`, or `default all-authenticated`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn pod(name: &str) -> PodInfo {
        testing::pod(name, "voting")
    }

    fn scrapes(entries: &[(&str, &str)]) -> Scrapes {
        testing::scrapes(entries, expand)
    }

    /// The scrapes spell labels in short: `S` is Server voting-grpc, `D` the default policy,
    /// `A` the AuthorizationPolicy voting-from-web, `N` no authorization, `P` the default
    /// policy's authorization.
    fn expand(text: &str) -> String {
        text.replace("$S", r#"srv_kind="Server",srv_name="voting-grpc""#)
            .replace("$D", r#"srv_kind="default",srv_name="all-authenticated""#)
            .replace(
                "$A",
                r#"authz_kind="AuthorizationPolicy",authz_name="voting-from-web""#,
            )
            .replace("$N", r#"authz_kind="",authz_name="""#)
            .replace(
                "$P",
                r#"authz_kind="default",authz_name="all-authenticated""#,
            )
    }

    const BEFORE: &str = r#"
inbound_http_authz_allow_total{$S,$A,route_name="default"} 100
inbound_http_authz_deny_total{$S,$N,route_name="default"} 4
inbound_tcp_authz_allow_total{$S,$A} 10
inbound_tcp_authz_deny_total{$S,$N} 1
inbound_http_local_ratelimit_total{$S,ratelimit_name="voting-rl",scope="identity"} 3
inbound_http_authz_allow_total{$D,$P,route_name="default"} 50
"#;

    const AFTER: &str = r#"
# TYPE inbound_http_authz_allow counter
inbound_http_authz_allow_total{$S,$A,route_name="default"} 140
inbound_http_authz_allow_total{$S,$A,route_name="votes"} 8
inbound_http_authz_deny_total{$S,$N,route_name="default"} 14
inbound_http_authz_audit_total{$S,$N,route_name="default"} 0
inbound_tcp_authz_allow_total{$S,$A} 12
inbound_tcp_authz_deny_total{$S,$N} 5
inbound_http_local_ratelimit_total{$S,ratelimit_name="voting-rl",scope="identity"} 11
inbound_http_local_ratelimit_total{$S,ratelimit_name="voting-rl",scope="total"} 0
inbound_http_authz_allow_total{$D,$P,route_name="default"} 50
response_total{direction="inbound",classification="success"} 1000
"#;

    /// One decision row as text: `http default AuthorizationPolicy voting-from-web 40/0/0`.
    fn rows(a: &Authz) -> Vec<String> {
        a.servers
            .iter()
            .flat_map(|s| {
                s.decisions.iter().map(move |d| {
                    format!(
                        "{} {:?} {} {} {}/{}/{}",
                        s.server,
                        d.protocol,
                        d.route.as_deref().unwrap_or("-"),
                        d.authorization
                            .as_ref()
                            .map_or("-".to_string(), ToString::to_string),
                        d.allowed.count,
                        d.denied.count,
                        d.audited.count,
                    )
                })
            })
            .collect()
    }

    #[test]
    fn a_window_of_a_server_with_a_policy() {
        let before = scrapes(&[("voting-1", BEFORE)]);
        let after = scrapes(&[("voting-1", AFTER)]);
        let a = authz(&[pod("voting-1")], Some(&before), &after, 2.0);
        assert_eq!(a.window, 2.0);
        // The default policy allowed nothing in the window: left out.
        assert_eq!(
            rows(&a),
            [
                "Server demo/voting-grpc Http default AuthorizationPolicy voting-from-web 40/0/0",
                "Server demo/voting-grpc Http default - 0/10/0",
                "Server demo/voting-grpc Http votes AuthorizationPolicy voting-from-web 8/0/0",
                "Server demo/voting-grpc Tcp - AuthorizationPolicy voting-from-web 2/0/0",
                "Server demo/voting-grpc Tcp - - 0/4/0",
            ]
        );
        let server = &a.servers[0];
        assert_eq!(server.decisions[0].allowed.rate, Some(20.0));
        assert_eq!(server.decisions[1].denied.rate, Some(5.0));
        assert_eq!(
            server.rate_limited,
            [RateLimited {
                name: "voting-rl".into(),
                scope: "identity".into(),
                count: 8,
                rate: Some(4.0),
            }],
            "a scope that refused nothing is left out"
        );
    }

    #[test]
    fn since_start_there_are_counts_but_no_rates() {
        let after = scrapes(&[("voting-1", AFTER)]);
        let a = authz(&[pod("voting-1")], None, &after, 0.0);
        assert_eq!(a.window, 0.0);
        let names: Vec<String> = a.servers.iter().map(|s| s.server.to_string()).collect();
        assert_eq!(
            names,
            ["Server demo/voting-grpc", "default all-authenticated"],
            "Servers first, then the default policies"
        );
        let default = &a.servers[1].decisions[0];
        assert_eq!(
            default.authorization.as_ref().map(ToString::to_string),
            Some("default all-authenticated".to_string())
        );
        assert_eq!(
            default.allowed,
            Counted {
                count: 50,
                rate: None
            }
        );
        // A before without a window length is no window either.
        let before = scrapes(&[("voting-1", BEFORE)]);
        assert_eq!(
            authz(&[pod("voting-1")], Some(&before), &after, 0.0).window,
            0.0
        );
    }

    #[test]
    fn only_the_servers_pods_are_read_and_summed() {
        let after = scrapes(&[("voting-1", AFTER), ("voting-2", AFTER), ("other", AFTER)]);
        let a = authz(&[pod("voting-1"), pod("voting-2")], None, &after, 0.0);
        assert_eq!(a.servers[0].decisions[0].allowed.count, 280);
        assert_eq!(a.servers[0].rate_limited[0].count, 22);
    }

    #[test]
    fn a_proxy_that_restarted_counts_its_new_values_whole() {
        let before = scrapes(&[("voting-1", AFTER)]);
        let after = scrapes(&[("voting-1", BEFORE)]);
        let a = authz(&[pod("voting-1")], Some(&before), &after, 10.0);
        // Every counter went down (the scrapes swapped): all of `BEFORE` is new, the default
        // policy's equal counter is not.
        assert_eq!(a.servers.len(), 1, "{a:#?}");
        assert_eq!(a.servers[0].decisions[0].allowed.count, 100);
        assert_eq!(a.servers[0].decisions[0].allowed.rate, Some(10.0));
    }

    #[test]
    fn no_authz_metrics_no_servers() {
        let after = scrapes(&[(
            "voting-1",
            r#"response_total{direction="inbound",classification="success"} 5"#,
        )]);
        let a = authz(&[pod("voting-1")], None, &after, 0.0);
        assert_eq!(a.servers, vec![]);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json, serde_json::json!({"window": 0.0, "servers": []}));
    }

    #[test]
    fn the_json_shape() {
        let before = scrapes(&[("voting-1", BEFORE)]);
        let after = scrapes(&[("voting-1", AFTER)]);
        let a = authz(&[pod("voting-1")], Some(&before), &after, 2.0);
        let json = serde_json::to_value(&a).unwrap();
        let server = &json["servers"][0];
        assert_eq!(
            server["server"],
            serde_json::json!({"kind": "Server", "namespace": "demo", "name": "voting-grpc"})
        );
        assert_eq!(
            server["decisions"][0],
            serde_json::json!({"protocol": "http", "route": "default",
                "authorization": {"kind": "AuthorizationPolicy", "name": "voting-from-web"},
                "allowed": {"count": 40, "rate": 20.0}, "denied": {"count": 0, "rate": 0.0},
                "audited": {"count": 0, "rate": 0.0}})
        );
        assert_eq!(server["decisions"][4]["route"], serde_json::Value::Null);
        assert_eq!(
            server["decisions"][4]["authorization"],
            serde_json::Value::Null
        );
        assert_eq!(
            server["rateLimited"],
            serde_json::json!([{"name": "voting-rl", "scope": "identity", "count": 8, "rate": 4.0}])
        );
    }

    #[test]
    fn every_family_read_is_one_the_sources_keep() {
        testing::assert_the_sources_keep(&AUTHZ_FAMILIES);
    }
}
