//! The outbound policy of each logical destination: one shared watch of the destination
//! controller's `/v1/policy/outbound/watch` per name (reconnecting with backoff, the last policy
//! kept meanwhile, dropped when idle), and the policy compiled for matching
//! ([`RouteMatches`]: compiled once per update, so that a request only walks a list).

use crate::{
    discover::follow_controller,
    http::matches::{RouteMatches, Selected},
    svc::Cache,
};
use http::Request;
use mesh_api::{
    destination::Connector,
    policy::{self, OutboundPolicy},
};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

/// Where the policy watches go.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// The destination controller, `host:port`.
    pub controller: String,
    /// The pod's namespace: consumer routes of this namespace apply to it.
    pub namespace: String,
    /// How long an unused policy watch is kept.
    pub idle_timeout: Duration,
    pub connector: Connector,
}

/// The policy watches of every logical name, shared by the whole proxy.
pub struct Policies {
    config: PolicyConfig,
    cache: Arc<Cache<String, PolicyWatch>>,
}

/// One logical name's policy: `None` until the controller first answers.
pub struct PolicyWatch {
    state: watch::Receiver<Option<Arc<Compiled>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Policies {
    pub fn new(config: PolicyConfig) -> Arc<Self> {
        Arc::new(Self {
            cache: Cache::new(config.idle_timeout),
            config,
        })
    }

    /// The shared watch of `authority`'s policy, started on first use.
    pub fn watch(&self, authority: &str) -> Arc<PolicyWatch> {
        self.cache.get_or_insert_with(&authority.to_string(), || {
            let (tx, state) = watch::channel(None);
            let task = tokio::spawn(follow(self.config.clone(), authority.to_string(), tx));
            PolicyWatch { state, task }
        })
    }

    /// How many names are watched.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

impl PolicyWatch {
    /// A receiver of the compiled policy.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Compiled>>> {
        self.state.clone()
    }
}

/// Follows one name's policy forever: reconnects with backoff and keeps the last policy.
async fn follow(config: PolicyConfig, authority: String, tx: watch::Sender<Option<Arc<Compiled>>>) {
    follow_controller(
        &config.controller,
        &authority,
        |addr| {
            policy::watch_outbound(
                config.connector.clone(),
                addr,
                &authority,
                &config.namespace,
            )
        },
        |policy: OutboundPolicy, _| {
            tracing::debug!(%authority, routes = policy.routes.len(), "outbound policy");
            tx.send_replace(Some(Arc::new(Compiled::new(policy))));
        },
        || {
            // An old controller without the policy watch answers 404: keep the default route
            // and ask again later, without flooding it.
            if tx.borrow().is_none() {
                tx.send_replace(Some(Arc::new(Compiled::new(OutboundPolicy::default()))));
            }
            !tx.is_closed()
        },
    )
    .await
}

// === matching ===

/// A policy ready for matching.
#[derive(Debug)]
pub struct Compiled {
    pub policy: OutboundPolicy,
    matches: RouteMatches,
    /// The MetaRoutes of a codec's Service port.
    pub meta: crate::codec::route::MetaTable,
}

impl Compiled {
    /// Compiles `policy`; a match the proxy cannot compile (the controller validates them, so
    /// only a newer controller's) is left out and logged, never the whole policy.
    pub fn new(policy: OutboundPolicy) -> Self {
        let matches = RouteMatches::new(&policy.routes);
        let meta = crate::codec::route::MetaTable::new(&policy.meta_routes);
        Self {
            policy,
            matches,
            meta,
        }
    }

    /// Whether the destination has routes (else: its default route).
    pub fn has_routes(&self) -> bool {
        !self.policy.routes.is_empty()
    }

    /// The first rule whose match `req` meets, in precedence order.
    pub fn select<B>(&self, req: &Request<B>) -> Option<Selected> {
        self.matches.select(req)
    }
}

#[cfg(test)]
impl PolicyWatch {
    /// A watch that follows a test's own channel.
    pub fn following(state: watch::Receiver<Option<Arc<Compiled>>>) -> Arc<Self> {
        Arc::new(Self {
            state,
            task: tokio::spawn(async {}),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::policy::{Match, PathMatch, Route, Rule, ValueMatch, ValueMatchKind};

    fn rule(matches: Vec<Match>) -> Rule {
        Rule {
            matches,
            ..Rule::default()
        }
    }

    fn route(name: &str, rules: Vec<Rule>) -> Route {
        Route {
            name: name.into(),
            namespace: "demo".into(),
            rules,
            ..Route::default()
        }
    }

    fn path(kind: &str, value: &str) -> Match {
        Match {
            path: Some(match kind {
                "exact" => PathMatch::Exact(value.into()),
                "prefix" => PathMatch::PathPrefix(value.into()),
                _ => PathMatch::RegularExpression(value.into()),
            }),
            ..Match::default()
        }
    }

    fn header(name: &str, value: &str, regex: bool) -> ValueMatch {
        ValueMatch {
            name: name.into(),
            kind: if regex {
                ValueMatchKind::RegularExpression
            } else {
                ValueMatchKind::Exact
            },
            value: value.into(),
        }
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn selected(c: &Compiled, r: Request<()>) -> Option<(String, usize)> {
        c.select(&r)
            .map(|s| (c.policy.routes[s.route].name.clone(), s.rule))
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let c = Compiled::new(OutboundPolicy {
            routes: vec![route("r", vec![rule(vec![path("prefix", "/api/")])])],
            ..OutboundPolicy::default()
        });
        for (uri, hit) in [
            ("/api", true),
            ("/api/", true),
            ("/api/x?y=1", true),
            ("/apix", false),
            ("/", false),
        ] {
            assert_eq!(c.select(&req("GET", uri, &[])).is_some(), hit, "{uri}");
        }
        assert_eq!(
            c.select(&req("GET", "/api/v1", &[]))
                .unwrap()
                .prefix
                .as_deref(),
            Some("/api")
        );
    }

    #[test]
    fn the_best_match_wins_across_routes() {
        let with = |m: Match, f: &dyn Fn(&mut Match)| {
            let mut m = m;
            f(&mut m);
            m
        };
        let c = Compiled::new(OutboundPolicy {
            routes: vec![
                route(
                    "old",
                    vec![
                        rule(vec![path("prefix", "/")]),
                        rule(vec![with(path("prefix", "/a"), &|m| {
                            m.method = Some("POST".into())
                        })]),
                    ],
                ),
                route(
                    "new",
                    vec![
                        rule(vec![path("exact", "/a/b")]),
                        rule(vec![path("prefix", "/a")]),
                        rule(vec![with(path("prefix", "/a"), &|m| {
                            m.headers = vec![header("x-canary", "t.*", true)];
                            m.query_params = vec![header("v", "2", false)];
                        })]),
                    ],
                ),
            ],
            ..OutboundPolicy::default()
        });
        let s = |m: &str, uri: &str, h: &[(&str, &str)]| selected(&c, req(m, uri, h));
        assert_eq!(s("GET", "/a/b", &[]), Some(("new".into(), 0)));
        assert_eq!(s("GET", "/a/c", &[]), Some(("new".into(), 1)));
        assert_eq!(
            s("POST", "/a/c", &[]),
            Some(("old".into(), 1)),
            "method wins"
        );
        assert_eq!(
            s("POST", "/a/c?v=2", &[("x-canary", "true")]),
            Some(("old".into(), 1)),
            "a method outranks headers"
        );
        assert_eq!(
            s("GET", "/a/c?v=2", &[("x-canary", "true")]),
            Some(("new".into(), 2))
        );
        assert_eq!(
            s("GET", "/a/c?v=3", &[("x-canary", "true")]),
            Some(("new".into(), 1))
        );
        assert_eq!(s("GET", "/z", &[]), Some(("old".into(), 0)));
    }

    #[test]
    fn a_match_the_proxy_cannot_compile_is_left_out() {
        let c = Compiled::new(OutboundPolicy {
            routes: vec![route(
                "r",
                vec![
                    rule(vec![path("regex", "(")]),
                    rule(vec![path("exact", "/x")]),
                ],
            )],
            ..OutboundPolicy::default()
        });
        assert_eq!(selected(&c, req("GET", "/x", &[])), Some(("r".into(), 1)));
        assert_eq!(selected(&c, req("GET", "/(", &[])), None);
    }

    #[test]
    fn no_routes_no_match() {
        let c = Compiled::new(OutboundPolicy::default());
        assert!(!c.has_routes());
        assert_eq!(c.select(&req("GET", "/", &[])), None);
    }
}
