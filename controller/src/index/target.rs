//! Parsing a watch's authority (`HOST:PORT`) into what the index resolves.

use std::net::{IpAddr, SocketAddr};

/// What a watch asks for, once its authority is parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A service port, or one pod of a (headless) service by its DNS hostname.
    Service {
        /// The service's namespace.
        namespace: String,
        /// The service's name.
        name: String,
        /// The service port.
        port: u16,
        /// `pod` in `pod.svc.ns.svc.cluster.local`.
        hostname: Option<String>,
    },
    /// An IP and port: a ClusterIP (opaque TCP) or a pod IP.
    Addr(SocketAddr),
    /// A well-formed name that cannot be in the cluster (always unknown).
    External(String),
}

/// Why an authority was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No `:PORT`, or not a port number.
    #[error("authority {0:?} needs a numeric port (HOST:PORT)")]
    Port(String),
    /// An empty or malformed host.
    #[error("authority {0:?} has an invalid host")]
    Host(String),
    /// `svc:port` without the caller's namespace.
    #[error("authority {0:?} has no namespace: use svc.ns:PORT or pass &ns=NAMESPACE")]
    NoNamespace(String),
}

impl Target {
    /// Parses `authority`. `caller_ns` completes a bare `svc:port` (the namespace of the pod that
    /// asks, as its DNS search path would); `cluster_domain` is usually `cluster.local`.
    ///
    /// ```
    /// use mesh_controller::index::Target;
    /// let t = Target::parse("web-svc.demo:80", None, "cluster.local").unwrap();
    /// assert_eq!(t, Target::Service {
    ///     namespace: "demo".into(), name: "web-svc".into(), port: 80, hostname: None,
    /// });
    /// ```
    pub fn parse(
        authority: &str,
        caller_ns: Option<&str>,
        cluster_domain: &str,
    ) -> Result<Self, AuthorityError> {
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| AuthorityError::Port(authority.to_owned()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| AuthorityError::Port(authority.to_owned()))?;
        if host.parse::<IpAddr>().is_ok() {
            // An IPv6 address without brackets is ambiguous: refuse it rather than guess.
            return Err(AuthorityError::Host(authority.to_owned()));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let valid = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if host.is_empty() || !host.split('.').all(valid) {
            return Err(AuthorityError::Host(authority.to_owned()));
        }
        let full_suffix = format!(".svc.{cluster_domain}");
        let (rest, in_cluster) = if let Some(rest) = host.strip_suffix(&full_suffix) {
            (rest, true)
        } else if let Some(rest) = host.strip_suffix(".svc") {
            (rest, true)
        } else {
            (host.as_str(), false)
        };
        let labels: Vec<&str> = rest.split('.').collect();
        let service = |name: &str, namespace: &str, hostname: Option<&str>| Target::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
            hostname: hostname.map(str::to_owned),
        };
        Ok(match (labels.as_slice(), in_cluster) {
            ([name, ns], _) => service(name, ns, None),
            ([pod, name, ns], true) => service(name, ns, Some(pod)),
            ([name], false) => match caller_ns {
                Some(ns) if valid(ns) => service(name, ns, None),
                _ => return Err(AuthorityError::NoNamespace(authority.to_owned())),
            },
            _ => Target::External(host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(authority: &str, ns: Option<&str>, expected: Result<&str, AuthorityError>) {
        let got = Target::parse(authority, ns, "cluster.local").map(|t| match t {
            Target::Service {
                namespace,
                name,
                port,
                hostname,
            } => format!("svc {namespace}/{name}:{port} host={hostname:?}"),
            Target::Addr(a) => format!("addr {a}"),
            Target::External(h) => format!("external {h}"),
        });
        assert_eq!(
            got.as_deref().map_err(Clone::clone),
            expected,
            "{authority}"
        );
    }

    #[test]
    fn authorities() {
        let web = Ok("svc demo/web-svc:80 host=None");
        check("web-svc.demo.svc.cluster.local:80", None, web.clone());
        check("web-svc.demo.svc.cluster.local.:80", None, web.clone());
        check("WEB-SVC.demo.svc:80", None, web.clone());
        check("web-svc.demo:80", None, web.clone());
        check("web-svc:80", Some("demo"), web.clone());
        check(
            "web-svc:80",
            None,
            Err(AuthorityError::NoNamespace("web-svc:80".into())),
        );
        check(
            "web-0.web-headless.demo.svc.cluster.local:8080",
            None,
            Ok("svc demo/web-headless:8080 host=Some(\"web-0\")"),
        );
        check("10.96.172.25:80", None, Ok("addr 10.96.172.25:80"));
        check("[fd00::1]:80", None, Ok("addr [fd00::1]:80"));
        check("example.co.uk:443", None, Ok("external example.co.uk"));
        check(
            "web-svc.demo",
            None,
            Err(AuthorityError::Port("web-svc.demo".into())),
        );
        check(
            "web-svc.demo:http",
            None,
            Err(AuthorityError::Port("web-svc.demo:http".into())),
        );
        check(":80", None, Err(AuthorityError::Host(":80".into())));
        check(
            "a b.demo:80",
            None,
            Err(AuthorityError::Host("a b.demo:80".into())),
        );
    }
}
