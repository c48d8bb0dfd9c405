//! Sockets: back-end targets with curl-style `--resolve`, and the accept loop with graceful
//! shutdown that every server of the app runs.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

/// How long a shutdown waits for the requests in flight before it gives up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Host names pinned to addresses, like curl's `--resolve`: the app connects to the address but
/// keeps the name as the authority (the demo's pods have no DNS).
#[derive(Clone, Debug, Default)]
pub struct Resolve(HashMap<String, IpAddr>);

impl Resolve {
    pub fn new(entries: impl IntoIterator<Item = (String, IpAddr)>) -> Resolve {
        Resolve(entries.into_iter().collect())
    }

    /// Parses one `HOST=IP` flag value.
    pub fn parse_entry(s: &str) -> Result<(String, IpAddr), String> {
        let (host, ip) = s
            .split_once('=')
            .ok_or_else(|| format!("expected HOST=IP, got {s:?}"))?;
        if host.is_empty() {
            return Err(format!("expected HOST=IP, got {s:?}"));
        }
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = ip
            .parse::<IpAddr>()
            .map_err(|e| format!("{ip:?} is not an IP address: {e}"))?;
        Ok((host.to_ascii_lowercase(), ip))
    }

    fn get(&self, host: &str) -> Option<IpAddr> {
        self.0.get(&host.to_ascii_lowercase()).copied()
    }
}

/// Why a URL cannot be a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not a URL: {1}")]
    Parse(String, http::uri::InvalidUri),
    #[error("{0:?}: only {1}:// URLs with a host are supported")]
    Unsupported(String, &'static str),
}

/// A back end named by an `http://host[:port]` URL (or, for [`Target::redis`],
/// `redis://host[:port]`).
#[derive(Clone, Debug)]
pub struct Target {
    scheme: &'static str,
    authority: String,
    host: String,
    port: u16,
    pinned: Option<IpAddr>,
}

impl Target {
    pub fn new(url: &str, resolve: &Resolve) -> Result<Target, TargetError> {
        Target::parse(url, "http", 80, resolve)
    }

    /// A Redis server: `redis://host[:port]` or `host:port` (port 6379 by default).
    pub fn redis(addr: &str, resolve: &Resolve) -> Result<Target, TargetError> {
        if addr.contains("://") {
            Target::parse(addr, "redis", 6379, resolve)
        } else {
            Target::parse(&format!("redis://{addr}"), "redis", 6379, resolve)
        }
    }

    fn parse(
        url: &str,
        scheme: &'static str,
        default_port: u16,
        resolve: &Resolve,
    ) -> Result<Target, TargetError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| TargetError::Parse(url.to_owned(), e))?;
        let unsupported = || TargetError::Unsupported(url.to_owned(), scheme);
        if uri.scheme_str() != Some(scheme) {
            return Err(unsupported());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(unsupported());
        }
        let authority = uri.authority().ok_or_else(unsupported)?;
        if authority.as_str().contains('@') {
            return Err(unsupported());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(unsupported());
        }
        let pinned = resolve.get(&host);
        Ok(Target {
            scheme,
            authority: authority.as_str().to_owned(),
            port: authority.port_u16().unwrap_or(default_port),
            host,
            pinned,
        })
    }

    /// The authority as written in the URL (`emoji-svc.demo.svc.cluster.local:8080`).
    pub fn authority(&self) -> String {
        self.authority.clone()
    }

    /// Connects to the pinned address, or to the first address of the name that answers.
    pub async fn connect(&self) -> io::Result<TcpStream> {
        let stream = match self.pinned {
            Some(ip) => TcpStream::connect(SocketAddr::new(ip, self.port)).await?,
            None => {
                let mut last = None;
                let mut found = None;
                for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
                    match TcpStream::connect(addr).await {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e),
                    (None, None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{} has no addresses", self.host),
                        ))
                    }
                }
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pinned {
            Some(ip) => write!(f, "{}://{} (at {ip})", self.scheme, self.authority),
            None => write!(f, "{}://{}", self.scheme, self.authority),
        }
    }
}

/// Accepts connections on `listener` and serves them (HTTP/1.1, or HTTP/2 when the client
/// starts with its preface) until `shutdown` completes; then stops accepting and waits for the
/// connections to finish their requests, at most [`DRAIN_TIMEOUT`].
pub async fn serve<S, B>(listener: TcpListener, service: S, shutdown: impl Future<Output = ()>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service.clone())
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: wait a
                    // little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_target(url: &str, expected: Result<(&str, &str, u16), ()>) {
        let resolve = Resolve::new([("pinned.example".to_owned(), [10, 0, 0, 7].into())]);
        match (Target::new(url, &resolve), expected) {
            (Ok(t), Ok((authority, host, port))) => {
                assert_eq!(
                    (t.authority.as_str(), t.host.as_str(), t.port),
                    (authority, host, port)
                )
            }
            (Err(_), Err(())) => {}
            (got, expected) => panic!("{url}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn targets() {
        check_target(
            "http://emoji-svc.demo.svc.cluster.local:8080",
            Ok((
                "emoji-svc.demo.svc.cluster.local:8080",
                "emoji-svc.demo.svc.cluster.local",
                8080,
            )),
        );
        check_target("http://web/", Ok(("web", "web", 80)));
        check_target("http://127.0.0.1:9", Ok(("127.0.0.1:9", "127.0.0.1", 9)));
        check_target("http://[::1]:9", Ok(("[::1]:9", "::1", 9)));
        check_target("https://web:443", Err(()));
        check_target("web:80", Err(()));
        check_target("http://web/path", Err(()));
        check_target("http://user@web", Err(()));
        check_target("not a url", Err(()));
    }

    #[test]
    fn redis_targets() {
        let resolve = Resolve::new([Resolve::parse_entry("redis-svc=10.0.0.9").unwrap()]);
        let check = |addr: &str, expected: Option<(&str, u16, &str)>| {
            let got = Target::redis(addr, &resolve)
                .ok()
                .map(|t| (t.authority.clone(), t.port, t.to_string()));
            let expected = expected.map(|(a, p, d)| (a.to_string(), p, d.to_string()));
            assert_eq!(got, expected, "{addr}");
        };
        check(
            "redis-svc:6379",
            Some((
                "redis-svc:6379",
                6379,
                "redis://redis-svc:6379 (at 10.0.0.9)",
            )),
        );
        check(
            "redis://cache:7000",
            Some(("cache:7000", 7000, "redis://cache:7000")),
        );
        check("redis://cache", Some(("cache", 6379, "redis://cache")));
        check("http://cache:6379", None);
        check("cache:6379/0", None);
        check("", None);
    }

    #[test]
    fn pinned_names_keep_their_authority() {
        let resolve = Resolve::new([Resolve::parse_entry("Pinned.Example=10.0.0.7").unwrap()]);
        let t = Target::new("http://pinned.example:8080", &resolve).unwrap();
        assert_eq!(t.authority(), "pinned.example:8080");
        assert_eq!(t.pinned, Some([10, 0, 0, 7].into()));
        assert_eq!(t.to_string(), "http://pinned.example:8080 (at 10.0.0.7)");
    }

    fn check_entry(s: &str, expected: Option<(&str, &str)>) {
        let got = Resolve::parse_entry(s).ok();
        let expected = expected.map(|(h, ip)| (h.to_owned(), ip.parse::<IpAddr>().unwrap()));
        assert_eq!(got, expected, "{s}");
    }

    #[test]
    fn resolve_entries() {
        check_entry("web-svc=10.1.2.3", Some(("web-svc", "10.1.2.3")));
        check_entry("WEB=10.1.2.3", Some(("web", "10.1.2.3")));
        check_entry("v6=[fd00::1]", Some(("v6", "fd00::1")));
        check_entry("v6=fd00::1", Some(("v6", "fd00::1")));
        check_entry("web-svc", None);
        check_entry("=10.1.2.3", None);
        check_entry("web=not-an-ip", None);
        check_entry("web:80:10.1.2.3", None);
    }
}
