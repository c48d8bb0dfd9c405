//! Matching a codec's requests by their metadata: the `MetaRoute`s of a Service (from its
//! outbound policy), compiled once per policy; the first rule one of whose matches holds
//! takes the request (routes in tie-break order, rules in order). What a rule then does (its
//! mutations, a backend by weight, its timeout) is the outbound router's (`outbound/codec.rs`).

use mesh_api::policy::{Backend, MetaMatchKind, MetaRoute};
use regex::Regex;
use std::time::Duration;

/// The MetaRoutes of one policy, ready for matching.
#[derive(Debug, Default)]
pub struct MetaTable {
    rules: Vec<MetaRule>,
}

#[derive(Debug)]
pub struct MetaRule {
    /// Any of these; none: every request.
    matches: Vec<Vec<KeyMatch>>,
    pub backends: Vec<Backend>,
    total_weight: u64,
    /// Metadata keys set on the request.
    pub mutations: Vec<(String, String)>,
    /// How long the request may wait for its response.
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
struct KeyMatch {
    key: String,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl MetaTable {
    /// Compiles `routes`; a rule with a match the proxy cannot compile is left out (the
    /// controller validates them, so only a newer controller's) and logged.
    pub fn new(routes: &[MetaRoute]) -> Self {
        let mut rules = Vec::new();
        for route in routes {
            'rule: for rule in &route.rules {
                let mut matches = Vec::new();
                for m in &rule.matches {
                    let mut keys = Vec::new();
                    for k in &m.metadata {
                        let value = match k.kind {
                            MetaMatchKind::Exact => Value::Exact(k.value.clone()),
                            MetaMatchKind::Prefix => Value::Prefix(k.value.clone()),
                            MetaMatchKind::RegularExpression => {
                                match Regex::new(&format!("^(?:{})$", k.value)) {
                                    Ok(re) => Value::Regex(re),
                                    Err(error) => {
                                        tracing::warn!(route = %route.name, %error, "a MetaRoute rule left out");
                                        continue 'rule;
                                    }
                                }
                            }
                        };
                        keys.push(KeyMatch {
                            key: k.key.clone(),
                            value,
                        });
                    }
                    matches.push(keys);
                }
                rules.push(MetaRule {
                    matches,
                    total_weight: rule.backends.iter().map(|b| u64::from(b.weight)).sum(),
                    backends: rule.backends.clone(),
                    mutations: rule
                        .request_mutation
                        .iter()
                        .map(|m| (m.key.clone(), m.value.clone()))
                        .collect(),
                    timeout: rule.timeout_ms.map(Duration::from_millis),
                });
            }
        }
        Self { rules }
    }

    /// The rule that takes `frame`, if any.
    pub fn select(&self, frame: &super::Frame) -> Option<&MetaRule> {
        self.rules.iter().find(|rule| {
            rule.matches.is_empty()
                || rule.matches.iter().any(|keys| {
                    keys.iter().all(|k| {
                        frame.get(&k.key).is_some_and(|v| match &k.value {
                            Value::Exact(x) => v == x,
                            Value::Prefix(p) => v.starts_with(p.as_str()),
                            Value::Regex(re) => re.is_match(v),
                        })
                    })
                })
        })
    }
}

impl MetaRule {
    /// A backend by weight; `None` when every weight is 0.
    pub fn pick(&self, roll: impl FnOnce(u64) -> u64) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut at = roll(self.total_weight);
        for b in &self.backends {
            let w = u64::from(b.weight);
            if at < w {
                return Some(b);
            }
            at -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Frame, Kind, Metadata, Session, Text};
    use mesh_api::policy::{MetaMatch, MetaRule as ApiRule, MetaValueMatch};

    fn frame(key: &str) -> Frame {
        Frame {
            kind: Kind::Request,
            id: None,
            metadata: Metadata::decoded(vec![
                ("command".into(), Text::from("GET")),
                ("key".into(), key.into()),
            ]),
            session: Session::None,
            bytes: Default::default(),
        }
    }

    fn backend(name: &str, weight: u32) -> Backend {
        Backend {
            authority: format!("{name}.demo.svc.cluster.local:6379"),
            namespace: "demo".into(),
            name: name.into(),
            port: 6379,
            weight,
            error: None,
        }
    }

    fn route(kind: MetaMatchKind, value: &str, to: &str) -> MetaRoute {
        MetaRoute {
            namespace: "demo".into(),
            name: "r".into(),
            rules: vec![ApiRule {
                matches: vec![MetaMatch {
                    metadata: vec![MetaValueMatch {
                        key: "key".into(),
                        kind,
                        value: value.into(),
                    }],
                }],
                backends: vec![backend(to, 1)],
                ..Default::default()
            }],
        }
    }

    fn selected(t: &MetaTable, key: &str) -> Option<String> {
        t.select(&frame(key)).map(|r| r.backends[0].name.clone())
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let t = MetaTable::new(&[
            route(MetaMatchKind::Prefix, "session:", "sessions"),
            route(MetaMatchKind::Exact, "config", "config"),
            route(MetaMatchKind::RegularExpression, "user:[0-9]+", "users"),
        ]);
        assert_eq!(selected(&t, "session:1").as_deref(), Some("sessions"));
        assert_eq!(selected(&t, "config").as_deref(), Some("config"));
        assert_eq!(selected(&t, "configx"), None);
        assert_eq!(selected(&t, "user:12").as_deref(), Some("users"));
        assert_eq!(selected(&t, "user:12x"), None, "the whole value must match");
        assert_eq!(selected(&t, "other"), None);
    }

    #[test]
    fn a_missing_key_never_matches_and_no_matches_match_all() {
        let t = MetaTable::new(&[route(MetaMatchKind::Prefix, "", "any")]);
        let mut f = frame("x");
        f.metadata = Metadata::decoded(vec![("command".into(), Text::from("PING"))]);
        assert!(t.select(&f).is_none());
        let all = MetaTable::new(&[MetaRoute {
            rules: vec![ApiRule {
                backends: vec![backend("all", 1)],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        assert!(all.select(&f).is_some());
    }

    #[test]
    fn an_invalid_regex_leaves_out_its_rule_only() {
        let t = MetaTable::new(&[
            route(MetaMatchKind::RegularExpression, "(", "broken"),
            route(MetaMatchKind::Prefix, "a", "a"),
        ]);
        assert_eq!(t.rules.len(), 1);
        assert_eq!(selected(&t, "ab").as_deref(), Some("a"));
    }

    #[test]
    fn backends_are_picked_by_weight() {
        let rule = MetaTable::new(&[MetaRoute {
            rules: vec![ApiRule {
                backends: vec![backend("a", 1), backend("b", 0), backend("c", 3)],
                ..Default::default()
            }],
            ..Default::default()
        }])
        .rules
        .remove(0);
        let names: Vec<_> = (0..4)
            .map(|roll| rule.pick(|_| roll).unwrap().name.clone())
            .collect();
        assert_eq!(names, ["a", "c", "c", "c"]);
        let none = MetaTable::new(&[MetaRoute {
            rules: vec![ApiRule {
                backends: vec![backend("a", 0)],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        assert!(none.rules[0].pick(|_| 0).is_none());
    }
}
