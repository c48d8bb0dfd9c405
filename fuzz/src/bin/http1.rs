//! The HTTP/1 request head path: a connection detected as HTTP/1, served by the proxy's own
//! HTTP server (`mesh_proxy::http::server::NewServeHttp`: hyper with the proxy's header limit
//! and header read timeout from its default configuration, `ServeHttp::serve`), over an in-memory connection
//! that delivers the input in pieces and then ends.
//!
//! Each request goes through what the stacks do first with a request head: the hop-by-hop
//! headers are stripped, the authority is normalised to a logical name as the outbound router
//! does, a route is selected from an outbound policy (path, header, query and method matches,
//! regular expressions included), the request is turned into HTTP/2 for the hop between proxies
//! and back, and its body is read (chunked or not) up to 64 KiB. Asserts: the connection ends
//! (the clock is paused, so a timeout ends it at once); whatever the server wrote is HTTP/1
//! responses, no more of them than requests reached the stack plus one error answer.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use mesh_api::policy::OutboundPolicy;
use mesh_fuzz::{pieces, runtime};
use mesh_proxy::{
    config::Config,
    detect::Protocol,
    discover,
    drain::Drain,
    http::{
        headers::{restore_http1, strip_hop_by_hop, to_http2, wants_upgrade},
        server::{CloseSignal, HttpSettings, NewServeHttp},
    },
    metrics::{Metrics, Tls, NO_TLS_DISABLED},
    outbound::policy::Compiled,
    svc::{BoxBody, BoxError, NewFn, NewService, Param},
    tap::{TapConfig, Taps},
    transport::{ClientAddr, OrigDst},
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The outbound policy requests are matched against: every kind of match the proxy compiles.
const POLICY: &str = r#"{"routes":[{"kind":"HTTPRoute","namespace":"demo","name":"web","rules":[
{"matches":[{"path":{"type":"Exact","value":"/api/vote"},"method":"POST"}]},
{"matches":[{"path":{"type":"PathPrefix","value":"/static/"},"headers":[{"name":"x-canary","value":"1"}]}]},
{"matches":[{"path":{"type":"RegularExpression","value":"/users/[0-9]+(/.*)?"},"queryParams":[{"name":"v","type":"RegularExpression","value":"v[12]"}]}]},
{"matches":[{"headers":[{"name":"user-agent","type":"RegularExpression","value":".*curl.*"}]}]}
]},{"kind":"GRPCRoute","namespace":"demo","name":"voting","rules":[
{"matches":[{"path":{"type":"Exact","value":"/demo.Voting/Results"}}]}]}]}"#;

/// The largest body a request's test reads (the retry layer's replay limit).
const BODY_LIMIT: usize = 64 * 1024;

fn main() {
    let rt = runtime();
    // The proxy's default limits, as `MESH_PROXY_*` unset gives them (identity off: it has no
    // default, and the HTTP server does not read it).
    let config =
        Config::from_env(|var| (var == "MESH_PROXY_IDENTITY_DISABLED").then(|| "true".to_string()))
            .expect("the default configuration is valid");
    let settings = HttpSettings {
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_header_bytes,
    };
    let policy: OutboundPolicy = serde_json::from_str(POLICY).expect("the policy parses");
    let policy = Arc::new(Compiled::new(policy));
    // Each input gets its own server and connection; these are only read: a panic cannot leave
    // them half-changed.
    let (rt, policy) = (
        std::panic::AssertUnwindSafe(rt),
        std::panic::AssertUnwindSafe(policy),
    );
    afl::fuzz!(|data: &[u8]| {
        rt.block_on(serve(data, &settings, &policy));
    });
}

/// Serves one connection that sends `data` and ends its side, then checks what it answered.
async fn serve(data: &[u8], settings: &HttpSettings, policy: &Arc<Compiled>) {
    let taps = Taps::new(&TapConfig::default(), None, Metrics::new(10, false));
    let layer = NewServeHttp::layer(settings.clone(), Drain::new(), taps);
    let requests = Arc::new(AtomicUsize::new(0));
    let stack = tower::Layer::layer(&layer, {
        let (policy, requests) = (policy.clone(), requests.clone());
        NewFn(move |_: Conn| {
            let (policy, requests) = (policy.clone(), requests.clone());
            tower::service_fn(move |req| {
                requests.fetch_add(1, Ordering::Relaxed);
                handle(req, policy.clone())
            })
        })
    });
    let (client, server) = tokio::io::duplex(1 << 20);
    let (mut rx, mut tx) = tokio::io::split(client);
    // `serve` is what the stack calls with each socket, for a connection held in memory.
    let conn = stack.new_service(Conn).serve(server);
    let write = async {
        for piece in pieces(data) {
            if tx.write_all(piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = tx.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rx.read_to_end(&mut out).await;
        out
    };
    let (_, (), out) = tokio::join!(
        async {
            let result = conn.await;
            if mesh_fuzz::verbose() {
                eprintln!("connection: {result:?}");
            }
        },
        write,
        read
    );
    if mesh_fuzz::verbose() {
        eprintln!("answered: {:?}", String::from_utf8_lossy(&out));
    }
    check_answers(&out, requests.load(Ordering::Relaxed));
}

/// What the server wrote is HTTP/1 responses (a `101` and what follows aside): each begins with
/// a status line, and there are no more final (non-1xx) ones than one per request plus one
/// error answer.
fn check_answers(out: &[u8], requests: usize) {
    if out.is_empty() {
        return;
    }
    assert!(
        out.starts_with(b"HTTP/1."),
        "{:?}",
        String::from_utf8_lossy(out)
    );
    if out.starts_with(b"HTTP/1.1 101") {
        return;
    }
    // `HTTP/1.x NNN`, NNN not 1xx (a `100 Continue` precedes the final answer).
    let answers = out
        .windows(10)
        .filter(|w| w.starts_with(b"HTTP/1.") && w[8] == b' ' && w[9] != b'1')
        .count();
    assert!(
        answers <= requests + 1,
        "{answers} answers to {requests} requests: {:?}",
        String::from_utf8_lossy(out)
    );
}

/// The request stack: what the proxy does first with a request's head, then its body.
async fn handle(
    mut req: Request<BoxBody>,
    policy: Arc<Compiled>,
) -> Result<Response<BoxBody>, BoxError> {
    let upgrade = wants_upgrade(req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let host = req.headers().get(http::header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_default();
    let logical = discover::logical_name(&authority, 80, "demo", "cluster.local");
    let selected = policy.select(&req).is_some();
    let mut req = to_http2(
        req,
        logical
            .as_deref()
            .unwrap_or("web.demo.svc.cluster.local:80"),
    )?;
    if let Some(proto) = req
        .headers_mut()
        .remove(mesh_proxy::http::ORIG_PROTO_HEADER)
    {
        restore_http1(&mut req, &proto);
    }
    let body = Limited::new(req.into_body(), BODY_LIMIT).collect().await?;
    // Lengths only: an echo of the input could look like a status line to `check_answers`.
    let text = format!(
        "{} {selected} {}",
        logical.map_or(0, |l| l.len()),
        body.to_bytes().len()
    );
    Ok(Response::new(BoxBody::new(Full::new(Bytes::from(text)))))
}

/// A connection the detection layer found to be HTTP/1, from a plaintext client.
#[derive(Clone)]
struct Conn;

impl Param<Protocol> for Conn {
    fn param(&self) -> Protocol {
        Protocol::HTTP1
    }
}

impl Param<ClientAddr> for Conn {
    fn param(&self) -> ClientAddr {
        ClientAddr(SocketAddr::from(([10, 0, 0, 1], 40000)))
    }
}

impl Param<OrigDst> for Conn {
    fn param(&self) -> OrigDst {
        OrigDst(SocketAddr::from(([10, 96, 0, 10], 80)))
    }
}

impl Param<Tls> for Conn {
    fn param(&self) -> Tls {
        Tls::NoIdentity(NO_TLS_DISABLED)
    }
}

impl Param<CloseSignal> for Conn {
    fn param(&self) -> CloseSignal {
        CloseSignal::never()
    }
}
