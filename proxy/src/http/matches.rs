//! Gateway API route matching, shared by the outbound router and inbound per-route
//! authorization: the matches of every rule in Gateway API's precedence
//! ([`mesh_api::policy::select`]), regular expressions compiled once per policy, so that a
//! request only walks a list and the first match wins.

use http::{HeaderName, Method, Request};
use mesh_api::policy::{self, PathMatch, Route, ValueMatch, ValueMatchKind};
use regex::Regex;
use std::sync::Arc;

/// The matches of a list of routes, best first.
#[derive(Debug, Default)]
pub struct RouteMatches {
    /// `(matcher, route, rule)`.
    order: Vec<(Matcher, usize, usize)>,
}

impl RouteMatches {
    /// Compiles the matches of `routes`; a match the proxy cannot compile (the controller
    /// validates them, so only a newer controller's) is left out and logged, never the rest.
    pub fn new(routes: &[Route]) -> Self {
        let mut order = Vec::new();
        for (route, rule, mi) in policy::select(routes) {
            let r = &routes[route];
            let m = r.rules[rule].matches.get(mi).cloned().unwrap_or_default();
            match Matcher::new(&m) {
                Ok(matcher) => order.push((matcher, route, rule)),
                Err(error) => {
                    tracing::warn!(route = %format!("{}/{}", r.namespace, r.name), rule, %error, "skipping a match the proxy cannot compile")
                }
            }
        }
        Self { order }
    }

    /// The first rule whose match `req` meets, in precedence order.
    pub fn select<B>(&self, req: &Request<B>) -> Option<Selected> {
        let query: Vec<(String, String)> = match req.uri().query() {
            Some(q) if self.order.iter().any(|(m, ..)| !m.query.is_empty()) => {
                form_urlencoded::parse(q.as_bytes()).into_owned().collect()
            }
            _ => Vec::new(),
        };
        self.order.iter().find_map(|(m, route, rule)| {
            m.matches(req, &query).map(|prefix| Selected {
                route: *route,
                rule: *rule,
                prefix,
            })
        })
    }
}

/// Which rule a request matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub route: usize,
    pub rule: usize,
    /// The prefix its `PathPrefix` match matched, for `ReplacePrefixMatch`.
    pub prefix: Option<Arc<str>>,
}

#[derive(Debug)]
struct Matcher {
    path: Option<PathMatcher>,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    Prefix(Arc<str>),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

/// A regular expression that must match the whole value.
fn whole(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

impl Matcher {
    fn new(m: &policy::Match) -> Result<Self, String> {
        let value = |v: &ValueMatch| -> Result<ValueMatcher, String> {
            Ok(match v.kind {
                ValueMatchKind::Exact => ValueMatcher::Exact(v.value.clone()),
                ValueMatchKind::RegularExpression => {
                    ValueMatcher::Regex(whole(&v.value).map_err(|e| e.to_string())?)
                }
            })
        };
        let path = match &m.path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(PathMatcher::Exact(p.clone())),
            Some(PathMatch::PathPrefix(p)) => {
                Some(PathMatcher::Prefix(p.trim_end_matches('/').into()))
            }
            Some(PathMatch::RegularExpression(p)) => {
                Some(PathMatcher::Regex(whole(p).map_err(|e| e.to_string())?))
            }
        };
        let method = match &m.method {
            Some(method) => Some(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?),
            None => None,
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
                Ok((name, value(h)?))
            })
            .collect::<Result<_, String>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), value(q)?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            path,
            method,
            headers,
            query,
        })
    }

    /// `Some` when `req` matches, with the prefix a `PathPrefix` matched. The cheap tests come
    /// first (the path, then the method), so that most matches of other rules end without a
    /// header lookup.
    fn matches<B>(&self, req: &Request<B>, query: &[(String, String)]) -> Option<Option<Arc<str>>> {
        let path = req.uri().path();
        let prefix = match &self.path {
            None => None,
            Some(PathMatcher::Exact(p)) => {
                if path != p {
                    return None;
                }
                None
            }
            Some(PathMatcher::Prefix(prefix)) => {
                let rest = path.strip_prefix(&**prefix)?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                Some(prefix.clone())
            }
            Some(PathMatcher::Regex(re)) => {
                if !re.is_match(path) {
                    return None;
                }
                None
            }
        };
        if let Some(method) = &self.method {
            if req.method() != method {
                return None;
            }
        }
        for (name, value) in &self.headers {
            // Several values of a header match as their comma-joined list.
            let mut values = req.headers().get_all(name).iter();
            let first = values.next()?.to_str().ok()?;
            let joined;
            let text = match values.next() {
                None => first,
                Some(_) => {
                    joined = req
                        .headers()
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(",");
                    &joined
                }
            };
            if !value.matches(text) {
                return None;
            }
        }
        for (name, value) in &self.query {
            // The first value of a repeated parameter, as Gateway API says.
            let (_, v) = query.iter().find(|(k, _)| k == name)?;
            if !value.matches(v) {
                return None;
            }
        }
        Some(prefix)
    }
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}
