//! The admin server: `GET /metrics`, `GET /ready`, `GET /live`, `GET /v1/tap` (the pod's own
//! loopback, or the tap identity over mutual TLS) and `POST /shutdown` (the pod's own loopback).
//!
//! With identity on, a connection that opens with a ClientHello for the proxy's identity is
//! mutual TLS (the same server configuration as inbound, HTTP/1.1 only); the client's verified
//! identity then decides whether it may tap. Everything else is plaintext, as before.

use crate::{
    drain::Drain,
    identity::{self, Hello, LocalIdentity},
    io::PrefixedIo,
    metrics::Metrics,
    tap::Taps,
};
use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_api::tap::{Filter, TAP_PATH};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
};

/// The body of every admin response: text at once, or a tap's stream of JSON lines.
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// What the admin server reports and controls.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    /// Set once the proxy can serve traffic.
    pub ready: Arc<AtomicBool>,
    pub drain: Drain,
    /// The active taps.
    pub taps: Taps,
    /// The proxy's identity: with it, the admin server also takes mutual TLS for that name.
    pub identity: Option<Arc<LocalIdentity>>,
    /// Who may tap over mutual TLS (`MESH_PROXY_TAP_IDENTITY`).
    pub tap_identity: Option<String>,
    /// How long a client may take to send its first bytes and its request's headers.
    pub header_read_timeout: Duration,
}

/// Who sent an admin request, as far as the proxy knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext connection from this address.
    Plain(SocketAddr),
    /// Mutual TLS from this address, with the identity its certificate proved.
    Mtls(SocketAddr, Arc<str>),
}

impl Caller {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Plain(addr) | Self::Mtls(addr, _) => *addr,
        }
    }
}

/// Whether `addr` is on the pod's own loopback. A pod's loopback belongs to its network
/// namespace, so any loopback address (`127.0.0.0/8`, `::1`, IPv4-mapped ones) is the pod itself;
/// and the inbound listener refuses connections to the proxy's own ports, so nothing from
/// outside reaches the admin server through the proxy.
pub fn is_pod_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

impl Admin {
    /// Serves admin requests until the process exits. During shutdown it keeps answering (`/ready`
    /// then says 503), closing each connection after its current request.
    pub async fn run(self, listener: TcpListener) {
        // HTTP/1.1 only: the admin server speaks nothing else, even to a client offering h2.
        let tls = self.identity.as_ref().map(|identity| {
            let mut config = (*identity.server_config()).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            let tls = tls.clone();
            self.drain.spawn(admin.accept(stream, peer, tls));
        }
    }

    /// Serves one connection: plaintext, or mutual TLS when it opens with a ClientHello for the
    /// proxy's identity. TLS for any other name is closed.
    async fn accept(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let (Some(identity), Some(tls)) = (self.identity.clone(), tls) else {
            return self.serve(stream, Caller::Plain(peer)).await;
        };
        let Some((hello, prefix)) = self.read_hello(&mut stream).await else {
            tracing::debug!(%peer, "admin connection sent nothing");
            return;
        };
        let io = PrefixedIo::new(prefix, stream);
        match hello {
            Hello::NotTls => self.serve(io, Caller::Plain(peer)).await,
            Hello::ServerName(Some(name)) if name == identity.name() => {
                let accepted = tokio::time::timeout(self.header_read_timeout, tls.accept(io)).await;
                let stream = match accepted {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        return tracing::info!(%peer, %error, "admin mutual TLS handshake failed")
                    }
                    Err(_) => return tracing::info!(%peer, "admin mutual TLS handshake timed out"),
                };
                let Some(client_id) =
                    identity::peer_identity(stream.get_ref().1.peer_certificates())
                else {
                    return tracing::info!(%peer, "the admin client's certificate names no mesh identity");
                };
                self.serve(stream, Caller::Mtls(peer, client_id)).await
            }
            hello => {
                tracing::info!(%peer, ?hello, "closed an admin connection with TLS for another name")
            }
        }
    }

    /// Reads a connection's first bytes: a whole ClientHello, or enough to know it is none.
    async fn read_hello(&self, stream: &mut TcpStream) -> Option<(Hello, Bytes)> {
        let deadline = tokio::time::Instant::now() + self.header_read_timeout;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
            // A TLS record starts with its content type, 22 for a handshake.
            if buf[0] != 22 {
                return Some((Hello::NotTls, buf.freeze()));
            }
            match identity::client_hello(&buf) {
                Hello::Incomplete if buf.len() < 64 * 1024 => {}
                Hello::Incomplete => return Some((Hello::NotTls, buf.freeze())),
                hello => return Some((hello, buf.freeze())),
            }
        }
    }

    async fn serve<I>(self, io: I, caller: Caller)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let drain = self.drain.clone();
        let timeout = self.header_read_timeout;
        let peer = caller.addr();
        let service = service_fn(move |req| {
            let admin = self.clone();
            let caller = caller.clone();
            async move { Ok::<_, Infallible>(admin.handle(&req, &caller)) }
        });
        // Once shutdown has begun, a new connection still gets its answer (`/ready` says
        // 503, `/metrics` a last scrape), then closes: no keep-alive. Connections from
        // before close after their current request (a tap's stream ends at shutdown).
        let draining = drain.is_draining();
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .keep_alive(!draining)
            .serve_connection(TokioIo::new(io), service);
        let result = if draining {
            conn.await
        } else {
            drain.serve(conn, |c| c.graceful_shutdown()).await
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "admin connection failed");
        }
    }

    /// Answers one admin request.
    pub fn handle(&self, req: &Request<Incoming>, caller: &Caller) -> Response<AdminBody> {
        self.route(req.method(), req.uri().path(), req.uri().query(), caller)
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        caller: &Caller,
    ) -> Response<AdminBody> {
        let peer = caller.addr();
        match (path, method) {
            ("/metrics", &Method::GET) => {
                let mut rsp = text(StatusCode::OK, self.metrics.encode());
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                rsp
            }
            ("/ready", &Method::GET) if self.drain.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            ("/ready", &Method::GET) if self.ready.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ready\n")
            }
            ("/ready", &Method::GET) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            ("/live", &Method::GET) => text(StatusCode::OK, "live\n"),
            (TAP_PATH, &Method::GET) => self.tap(query, caller),
            ("/shutdown", &Method::POST) if is_pod_loopback(peer) => {
                tracing::info!(%peer, "shutdown requested through the admin server");
                self.drain.start();
                text(StatusCode::ACCEPTED, "shutting down\n")
            }
            ("/shutdown", &Method::POST) => {
                tracing::warn!(%peer, "refused a shutdown request from outside the pod");
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is accepted only from the pod's loopback\n",
                )
            }
            ("/metrics" | "/ready" | "/live" | TAP_PATH, _) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            ("/shutdown", _) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live, /v1/tap or POST /shutdown\n",
            ),
        }
    }

    /// `GET /v1/tap`: checks the caller and the filter, then streams the tap's events.
    fn tap(&self, query: Option<&str>, caller: &Caller) -> Response<AdminBody> {
        if let Err(reason) = self.may_tap(caller) {
            tracing::info!(peer = %caller.addr(), %reason, "refused a tap");
            return text(StatusCode::FORBIDDEN, format!("{reason}\n"));
        }
        let filter = match Filter::from_query(query.unwrap_or("")) {
            Ok(filter) => filter,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad tap filter: {e}\n")),
        };
        if self.drain.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
        tracing::info!(peer = %caller.addr(), ?filter, "tap started");
        let drain = self.drain.clone();
        let body = self
            .taps
            .subscribe(filter)
            .into_body(async move { drain.signaled().await });
        let mut rsp = Response::new(body.boxed_unsync());
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-ndjson"),
        );
        rsp
    }

    /// Whether `caller` may tap: in plaintext from the pod's loopback, or over mutual TLS as
    /// the tap identity; otherwise the one-line reason.
    pub fn may_tap(&self, caller: &Caller) -> Result<(), String> {
        match (caller, &self.tap_identity) {
            (Caller::Plain(addr), _) if is_pod_loopback(*addr) => Ok(()),
            (Caller::Plain(addr), Some(tap)) => Err(format!(
                "tap from {} is forbidden: tap needs mutual TLS as {tap}, or a caller on the pod's loopback",
                addr.ip()
            )),
            (Caller::Plain(addr), None) => Err(format!(
                "tap from {} is forbidden: without identity only the pod's loopback may tap",
                addr.ip()
            )),
            (Caller::Mtls(_, id), Some(tap)) if **id == **tap => Ok(()),
            (Caller::Mtls(_, id), Some(tap)) => {
                Err(format!("{id} may not tap: only {tap} may"))
            }
            (Caller::Mtls(_, id), None) => Err(format!("{id} may not tap: no tap identity is set")),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut rsp = Response::new(Full::new(body.into()).boxed_unsync());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAP_ID: &str = "mesh-tap.mesh-viz.serviceaccount.identity.mesh.cluster.local";

    fn admin() -> Admin {
        let metrics = Metrics::new(10, false);
        Admin {
            taps: Taps::new(&Default::default(), None, metrics.clone()),
            metrics,
            ready: Arc::default(),
            drain: Drain::new(),
            identity: None,
            tap_identity: Some(TAP_ID.to_string()),
            header_read_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn routes() {
        let a = admin();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.244.0.9:5000".parse().unwrap();
        let check = |method: Method, path: &str, peer: SocketAddr, status: u16| {
            assert_eq!(
                a.route(&method, path, None, &Caller::Plain(peer)).status(),
                status,
                "{method} {path} from {peer}"
            );
        };
        check(Method::GET, "/live", remote, 200);
        check(Method::GET, "/ready", local, 503);
        a.ready.store(true, Ordering::Release);
        check(Method::GET, "/ready", local, 200);
        check(Method::GET, "/metrics", remote, 200);
        check(Method::POST, "/metrics", local, 405);
        check(Method::GET, "/shutdown", local, 405);
        check(Method::POST, "/v1/tap", local, 405);
        check(Method::GET, "/nope", local, 404);
        check(Method::POST, "/shutdown", remote, 403);
        assert!(
            !a.drain.is_draining(),
            "a remote caller cannot shut the proxy down"
        );
        check(Method::POST, "/shutdown", "[::1]:1".parse().unwrap(), 202);
        assert!(a.drain.is_draining());
        check(Method::GET, "/ready", local, 503);
    }

    #[tokio::test]
    async fn tap_access() {
        let a = admin();
        let check = |caller: Caller, query: &str, status: u16| {
            let rsp = a.route(&Method::GET, TAP_PATH, Some(query), &caller);
            assert_eq!(rsp.status(), status, "{caller:?} {query}");
        };
        let tap_id: Arc<str> = Arc::from(TAP_ID);
        let other: Arc<str> = Arc::from("web.demo.serviceaccount.identity.mesh.cluster.local");
        for loopback in [
            "127.0.0.1:1",
            "127.0.0.2:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            check(Caller::Plain(loopback.parse().unwrap()), "", 200);
        }
        check(Caller::Plain("10.244.0.9:1".parse().unwrap()), "", 403);
        check(Caller::Plain("[fd00::2]:1".parse().unwrap()), "", 403);
        check(
            Caller::Mtls("10.244.0.9:1".parse().unwrap(), tap_id.clone()),
            "",
            200,
        );
        check(
            Caller::Mtls("10.244.0.9:1".parse().unwrap(), other.clone()),
            "",
            403,
        );
        check(Caller::Plain("127.0.0.1:1".parse().unwrap()), "rate=0", 400);
        check(
            Caller::Plain("127.0.0.1:1".parse().unwrap()),
            "colour=red",
            400,
        );
        assert_eq!(a.taps.len(), 0, "every tap response above was dropped");

        let reason = a
            .may_tap(&Caller::Mtls("10.0.0.1:1".parse().unwrap(), other))
            .unwrap_err();
        assert!(
            reason.contains(TAP_ID) && !reason.contains('\n'),
            "{reason}"
        );

        let without_identity = Admin {
            tap_identity: None,
            ..admin()
        };
        assert!(without_identity
            .may_tap(&Caller::Mtls("127.0.0.1:1".parse().unwrap(), tap_id))
            .is_err());
        assert!(without_identity
            .may_tap(&Caller::Plain("127.0.0.1:1".parse().unwrap()))
            .is_ok());
    }
}
