//! Tap, in process: the real proxy (and, where it matters, the real destination and identity
//! controllers) with the test app on loopback, tapped through `mesh_api::tap::stream` the way
//! `mesh viz tap` does. Filters, the rate limit, who may tap (loopback, mutual TLS as the tap
//! identity, anyone else), sensitive headers, a tap that goes away mid-stream, gRPC ends and the
//! proxy's own failures. No root needed.

use futures_util::{Stream, StreamExt};
use http::Version;
use http_body_util::BodyExt;
use mesh_api::identity::Identity;
use mesh_api::tap::{self, Event, Filter, Peer, ProxyDirection, TapError};
use mesh_tests::fixtures::{self, app, eventually, h1, h2, TestProxy};
use mesh_tests::mtls::{identity, MtlsMesh, TestCa};
use mesh_tests::state::{destination_controller, web_svc_endpoint_slices};
use std::{net::SocketAddr, pin::Pin, time::Duration};
use tokio::net::{TcpSocket, TcpStream};

type Events = Pin<Box<dyn Stream<Item = Result<Event, TapError>> + Send>>;

/// Starts a tap on `admin` in plaintext (from 127.0.0.1) with the filter `query`.
async fn tap_plain(admin: SocketAddr, query: &str) -> Result<Events, TapError> {
    let tcp = TcpStream::connect(admin).await?;
    open(tcp, admin, query).await
}

async fn open<I>(io: I, admin: SocketAddr, query: &str) -> Result<Events, TapError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let filter = Filter::from_query(query).expect("a valid filter");
    let events = tap::stream(io, &admin.to_string(), &filter).await?;
    Ok(Box::pin(events))
}

/// The events that arrive until none has for `quiet`.
async fn events_until_quiet(events: &mut Events, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(quiet, events.next()).await {
        out.push(event.expect("a valid event"));
    }
    out
}

const QUIET: Duration = Duration::from_millis(400);

/// Sends a request and reads its whole response: the status.
async fn call(version: Version, addr: SocketAddr, host: &str, method: &str, path: &str) -> u16 {
    let mut req = fixtures::request(version, path);
    *req.method_mut() = method.parse().unwrap();
    if version == Version::HTTP_2 {
        *req.uri_mut() = format!("http://{host}{path}").parse().unwrap();
    }
    req.headers_mut().insert("host", host.parse().unwrap());
    req.headers_mut()
        .insert("user-agent", "tap-test/1".parse().unwrap());
    let rsp = send(version, addr, req).await.unwrap();
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await.unwrap();
    status
}

/// Sends `req` on a new HTTP/1 or HTTP/2 connection to `addr`.
async fn send(
    version: Version,
    addr: SocketAddr,
    req: http::Request<fixtures::Body>,
) -> hyper::Result<http::Response<hyper::body::Incoming>> {
    match version {
        Version::HTTP_2 => h2(addr).await.send_request(req).await,
        _ => h1(addr).await.send_request(req).await,
    }
}

/// `GET /` over HTTP/1.1 with `Host: host`: the status.
async fn get_root(addr: SocketAddr, host: &str) -> u16 {
    call(Version::HTTP_11, addr, host, "GET", "/").await
}

fn starts(events: &[Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RequestStart {
                method,
                authority,
                path,
                ..
            } => Some((method.clone(), authority.clone(), path.clone())),
            _ => None,
        })
        .collect()
}

fn ends(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::ResponseEnd { .. }))
        .collect()
}

/// The value of a metric line with all of `must` in its labels (0 when absent).
fn metric(metrics: &str, name: &str, must: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn tap_active(proxy: &TestProxy) -> u64 {
    metric(&proxy.metrics().await, "tap_active", &[])
}

/// Whether the proxy counts `n` active taps within 2 s.
async fn tap_active_becomes(proxy: &TestProxy, n: u64) -> bool {
    eventually(Duration::from_secs(2), || async {
        tap_active(proxy).await == n
    })
    .await
}

/// The test app behind a proxy with the default configuration: the app's address, the proxy.
async fn proxied_app() -> (SocketAddr, TestProxy) {
    let app = app().await;
    let proxy = fixtures::proxy(app, |_| {}).await;
    (app, proxy)
}

/// How many requests the `Dropped` events among `events` say the tap did not take.
fn dropped(events: &[Event]) -> u64 {
    events
        .iter()
        .map(|e| match e {
            Event::Dropped { count } => *count,
            _ => 0,
        })
        .sum()
}

/// A tap client that never reads: a raw `GET target` (e.g. `/v1/tap`) to `admin`.
async fn raw_tap(admin: SocketAddr, target: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut io = TcpStream::connect(admin).await.unwrap();
    io.write_all(format!("GET {target} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    io
}

/// The message of a refused tap; otherwise panics, with `allowed` when the tap was taken.
fn forbidden_message(tap: Result<Events, TapError>, allowed: &str) -> String {
    match tap {
        Err(TapError::Forbidden { message, .. }) => message,
        Err(other) => panic!("expected 403, got {other}"),
        Ok(_) => panic!("{allowed}"),
    }
}

/// The first of `events`, which must be a request's start: its direction, source, destination
/// and whether the hop was mutual TLS.
fn first_request_start(events: &[Event]) -> (&ProxyDirection, &Peer, &Peer, bool) {
    let Some(Event::RequestStart {
        direction,
        source,
        destination,
        tls,
        ..
    }) = events.first()
    else {
        panic!("{events:?}")
    };
    (direction, source, destination, *tls)
}

#[tokio::test]
async fn filters_pick_requests_by_method_authority_and_path() {
    let (app, proxy) = proxied_app().await;
    let out = proxy.addrs.outbound;
    let mut all = tap_plain(proxy.addrs.admin, "").await.unwrap();
    let mut posts = tap_plain(proxy.addrs.admin, "method=POST").await.unwrap();
    let mut web = tap_plain(proxy.addrs.admin, "authority=WEB.demo:80")
        .await
        .unwrap();
    let mut grpc = tap_plain(proxy.addrs.admin, "path=/grpc/").await.unwrap();
    let mut both = tap_plain(
        proxy.addrs.admin,
        "method=GET&authority=web.demo:80&path=/slow",
    )
    .await
    .unwrap();
    assert_eq!(tap_active(&proxy).await, 5);

    assert_eq!(
        call(Version::HTTP_11, out, "app.test:8080", "GET", "/").await,
        200
    );
    assert_eq!(
        call(Version::HTTP_11, out, "app.test:8080", "POST", "/echo").await,
        200
    );
    assert_eq!(
        call(Version::HTTP_11, out, "web.demo:80", "GET", "/slow?ms=5").await,
        200
    );
    assert_eq!(
        call(Version::HTTP_2, out, "web.demo:80", "POST", "/grpc/ok").await,
        200
    );

    let s = |m: &str, a: &str, p: &str| (m.to_string(), a.to_string(), p.to_string());
    let all = events_until_quiet(&mut all, QUIET).await;
    assert_eq!(
        starts(&all),
        [
            s("GET", "app.test:8080", "/"),
            s("POST", "app.test:8080", "/echo"),
            s("GET", "web.demo:80", "/slow"),
            s("POST", "web.demo:80", "/grpc/ok"),
        ],
        "the path comes without its query"
    );
    assert_eq!(ends(&all).len(), 4, "{all:?}");
    let posts = events_until_quiet(&mut posts, QUIET).await;
    assert_eq!(
        starts(&posts),
        [
            s("POST", "app.test:8080", "/echo"),
            s("POST", "web.demo:80", "/grpc/ok")
        ]
    );
    let web = events_until_quiet(&mut web, QUIET).await;
    assert_eq!(
        starts(&web),
        [
            s("GET", "web.demo:80", "/slow"),
            s("POST", "web.demo:80", "/grpc/ok")
        ]
    );
    let grpc = events_until_quiet(&mut grpc, QUIET).await;
    assert_eq!(starts(&grpc), [s("POST", "web.demo:80", "/grpc/ok")]);
    let both = events_until_quiet(&mut both, QUIET).await;
    assert_eq!(starts(&both), [s("GET", "web.demo:80", "/slow")]);

    // One request's three events, in order, with what the tap promises.
    let [Event::RequestStart {
        id,
        direction,
        source,
        destination,
        tls,
        headers,
        ..
    }, Event::ResponseStart {
        id: id2,
        status,
        since_request_ms,
    }, Event::ResponseEnd {
        id: id3,
        grpc_status,
        bytes,
        duration_ms,
        success,
        failure,
    }] = &both[..]
    else {
        panic!("three events: {both:?}")
    };
    assert_eq!((id, id), (id2, id3));
    assert_eq!(id.stream, 1, "the first request of its connection");
    assert_eq!(*direction, ProxyDirection::Outbound);
    assert!(source.addr.ip().is_loopback());
    assert_eq!(destination.addr, app);
    assert!(!tls);
    assert!(
        headers.contains(&("user-agent".to_string(), "tap-test/1".to_string())),
        "{headers:?}"
    );
    assert_eq!(*status, 200);
    assert!(
        *since_request_ms >= 5.0,
        "the app waited 5 ms: {since_request_ms}"
    );
    assert!(duration_ms >= since_request_ms);
    assert_eq!(
        (*grpc_status, *bytes, *success),
        (None, 4, true),
        "body \"slow\""
    );
    assert_eq!(*failure, None);
}

#[tokio::test]
async fn grpc_ends_carry_the_grpc_status_and_the_classification() {
    let (_, proxy) = proxied_app().await;
    let mut events = tap_plain(proxy.addrs.admin, "path=/grpc").await.unwrap();
    for (path, expected_status) in [
        ("/grpc/ok", 0),
        ("/grpc/fail", 2),
        ("/grpc/trailers-only", 5),
    ] {
        assert_eq!(
            call(
                Version::HTTP_2,
                proxy.addrs.outbound,
                "app.test:8080",
                "POST",
                path
            )
            .await,
            200
        );
        let got = events_until_quiet(&mut events, QUIET).await;
        let [Event::ResponseEnd {
            grpc_status,
            success,
            failure,
            ..
        }] = &ends(&got)[..]
        else {
            panic!("one end for {path}: {got:?}")
        };
        assert_eq!(*grpc_status, Some(expected_status), "{path}");
        assert_eq!(*success, expected_status == 0, "{path}");
        assert_eq!(*failure, None, "{path}: the stream itself was fine");
    }
}

#[tokio::test]
async fn requests_the_proxy_fails_itself_show_their_reason() {
    // Nothing listens at the original destination: the proxy answers 502 itself.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = fixtures::proxy(closed, |_| {}).await;
    let mut events = tap_plain(proxy.addrs.admin, "").await.unwrap();
    assert_eq!(
        call(
            Version::HTTP_11,
            proxy.addrs.outbound,
            "gone:80",
            "GET",
            "/x"
        )
        .await,
        502
    );
    let got = events_until_quiet(&mut events, QUIET).await;
    assert!(
        matches!(&got[..], [Event::RequestStart { .. }, Event::ResponseStart { status: 502, .. }, Event::ResponseEnd { success: false, failure: Some(f), bytes, .. }] if f == "connect" && *bytes > 0),
        "{got:?}"
    );
}

/// The destination controller on a folder with `web-svc` (endpoints `web-0`, `web-1`) and
/// `empty-svc` (no endpoints), and a proxy discovering through it.
async fn discovering_proxy(
    endpoints: [SocketAddr; 2],
) -> (TestProxy, mesh_controller::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-svc, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: empty-svc, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80, targetPort: http}]}\n",
    );
    yaml.push_str(&web_svc_endpoint_slices(&endpoints));
    std::fs::write(dir.path().join("svc.yaml"), yaml).unwrap();
    let controller = destination_controller(dir.path()).await;
    let addr = controller.addr;
    let proxy = fixtures::proxy(endpoints[0], |c| {
        c.destination_addr = Some(addr.to_string());
        c.destination_namespace = "demo".into();
        c.failfast_timeout = Duration::from_millis(300);
        c.tap.pod_labels = [
            ("deployment".to_string(), "client".to_string()),
            ("namespace".to_string(), "demo".to_string()),
        ]
        .into();
    })
    .await;
    (proxy, controller, dir)
}

#[tokio::test]
async fn destination_labels_from_discovery_and_the_pod_s_own_labels_filter_taps() {
    let web0 = fixtures::app_on("127.0.0.1:0".parse().unwrap()).await;
    let web1 = fixtures::app_on("127.0.0.2:0".parse().unwrap()).await;
    let (proxy, _controller, _dir) = discovering_proxy([web0, web1]).await;
    let admin = proxy.addrs.admin;
    let mut to_web1 = tap_plain(admin, "dst.pod=web-1&dst.service=web-svc")
        .await
        .unwrap();
    let mut from_client = tap_plain(admin, "src.deployment=client").await.unwrap();
    let mut from_other = tap_plain(admin, "src.deployment=other").await.unwrap();

    for _ in 0..20 {
        let status = get_root(proxy.addrs.outbound, "web-svc.demo.svc.cluster.local:80").await;
        assert_eq!(status, 200);
    }
    let got = events_until_quiet(&mut to_web1, QUIET).await;
    let dsts: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            Event::RequestStart { destination, .. } => Some(destination.clone()),
            _ => None,
        })
        .collect();
    assert!(!dsts.is_empty(), "some of 20 requests went to web-1");
    assert!(dsts.len() < 20, "and some to web-0");
    for dst in &dsts {
        assert_eq!(dst.addr, web1);
        assert_eq!(dst.labels["pod"], "web-1");
        assert_eq!(dst.labels["namespace"], "demo");
        assert_eq!(dst.labels["service"], "web-svc");
    }
    let got = events_until_quiet(&mut from_client, QUIET).await;
    assert_eq!(starts(&got).len(), 20);
    assert!(events_until_quiet(&mut from_other, QUIET).await.is_empty());

    // A service without endpoints: the proxy's own 503, with its reason.
    let status = get_root(proxy.addrs.outbound, "empty-svc.demo.svc.cluster.local:80").await;
    assert_eq!(status, 503);
    let got = events_until_quiet(&mut from_client, QUIET).await;
    assert!(
        matches!(&got[..], [Event::RequestStart { .. }, Event::ResponseStart { status: 503, .. }, Event::ResponseEnd { success: false, failure: Some(f), .. }] if f == "no_endpoints"),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_tap_gets_no_more_than_its_rate_and_is_told_what_it_missed() {
    let (_, proxy) = proxied_app().await;
    let rate = 30.0;
    let mut events = tap_plain(proxy.addrs.admin, "rate=30").await.unwrap();
    let begin = std::time::Instant::now();
    let mut client = h1(proxy.addrs.outbound).await;
    let mut sent = 0;
    while begin.elapsed() < Duration::from_secs(1) {
        let rsp = client
            .send_request(fixtures::request(Version::HTTP_11, "/"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "traffic is never refused for a tap");
        rsp.into_body().collect().await.unwrap();
        sent += 1;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let got = events_until_quiet(&mut events, QUIET).await;
    let delivered = got
        .iter()
        .filter(|e| !matches!(e, Event::Dropped { .. }))
        .count();
    let reported = dropped(&got);
    assert!(sent > 100, "enough traffic to go over the rate: {sent}");
    let bound = rate * elapsed + rate;
    assert!(
        (delivered as f64) <= bound,
        "{delivered} events in {elapsed:.2} s at {rate}/s (bound {bound})"
    );
    assert!(delivered >= 30, "a second's burst at least: {delivered}");
    assert_eq!(delivered % 3, 0, "requests are taken whole: {delivered}");
    // The last drops are reported before the next event: make one.
    let _ = tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_root(proxy.addrs.outbound, "a:80").await, 200);
    let more = events_until_quiet(&mut events, QUIET).await;
    let reported_later = dropped(&more);
    let not_taken = sent as u64 - delivered as u64 / 3;
    assert_eq!(
        reported + reported_later,
        not_taken,
        "every request the tap did not take is reported: {got:?} {more:?}"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tap_events_dropped_total", &["reason=\"rate\""]),
        not_taken,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tap_that_goes_away_mid_stream_is_removed_and_traffic_goes_on() {
    let (_, proxy) = proxied_app().await;
    let mut events = tap_plain(proxy.addrs.admin, "").await.unwrap();
    assert_eq!(tap_active(&proxy).await, 1);
    assert_eq!(get_root(proxy.addrs.outbound, "a:80").await, 200);
    assert!(matches!(
        events.next().await,
        Some(Ok(Event::RequestStart { .. }))
    ));
    drop(events);
    let removed = tap_active_becomes(&proxy, 0).await;
    assert!(removed, "the tap is removed once its client closes");

    // A tap that stops reading (its connection open) never holds traffic back.
    {
        let stalled = raw_tap(proxy.addrs.admin, "/v1/tap?rate=100000").await;
        assert!(tap_active_becomes(&proxy, 1).await);
        let begin = std::time::Instant::now();
        let mut client = h2(proxy.addrs.outbound).await;
        let mut calls = Vec::new();
        for _ in 0..500 {
            let req = fixtures::request(Version::HTTP_2, "/");
            calls.push(client.send_request(req));
        }
        for rsp in futures_util::future::join_all(calls).await {
            assert_eq!(rsp.unwrap().status(), 200);
        }
        assert!(begin.elapsed() < Duration::from_secs(10));
        drop(stalled);
    }
    let removed = tap_active_becomes(&proxy, 0).await;
    assert!(removed, "the stalled tap goes when its connection does");
}

#[tokio::test]
async fn sensitive_headers_are_never_streamed() {
    let app = app().await;
    let proxy = fixtures::proxy(app, |c| {
        // Ask for them all; the sensitive ones still stay out.
        for h in ["authorization", "cookie", "x-team", "x-secret"] {
            c.tap.headers.push(h.to_string());
        }
        c.tap.sensitive_headers.push("x-secret".to_string());
    })
    .await;
    let admin = proxy.addrs.admin;
    // The raw stream, as a tap client would read it.
    let mut raw = raw_tap(admin, "/v1/tap").await;
    assert!(tap_active_becomes(&proxy, 1).await);
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut req = fixtures::request(version, "/");
        for (k, v) in [
            ("authorization", "Bearer s3cret-1"),
            ("proxy-authorization", "Basic s3cret-2"),
            ("cookie", "session=s3cret-3"),
            ("x-secret", "s3cret-4"),
            ("x-team", "books"),
        ] {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        let rsp = send(version, proxy.addrs.outbound, req).await;
        assert_eq!(rsp.unwrap().status(), 200);
    }
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while text.matches("responseEnd").count() < 2 && tokio::time::Instant::now() < deadline {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), raw.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(text.matches("requestStart").count(), 2, "{text}");
    assert_eq!(text.matches(r#"["x-team","books"]"#).count(), 2, "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("authorization"),
        "{text}"
    );
}

/// A local address that is not loopback, if the machine has one: where a caller from outside
/// the pod would come from.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn plaintext_taps_are_for_the_pod_s_loopback_only() {
    let app = app().await;
    let proxy = fixtures::proxy(app, |c| c.admin_addr = "0.0.0.0:0".parse().unwrap()).await;
    let port = proxy.addrs.admin.port();
    let admin: SocketAddr = ([127, 0, 0, 1], port).into();

    // Any loopback address is the pod's own (its network namespace has its own loopback).
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let from_127_0_0_2 = socket.connect(admin).await.unwrap();
    let _loopback_tap = open(from_127_0_0_2, admin, "")
        .await
        .expect("127.0.0.2 may tap");

    let Some(ip) = non_loopback_ip() else {
        // The refusal itself is covered by the admin server's unit tests.
        eprintln!(
            "no non-loopback address on this machine: the refusal over the network is not tried"
        );
        return;
    };
    let outside: SocketAddr = (ip, port).into();
    let tcp = TcpStream::connect(outside).await.unwrap();
    let message = forbidden_message(
        open(tcp, outside, "").await,
        &format!("a caller from {ip} must not tap"),
    );
    assert!(message.contains("loopback"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    // The rest of the admin server still answers it.
    assert_eq!(fixtures::get_h1(outside, "/ready").await.0, 200);
    assert_eq!(tap_active(&proxy).await, 1, "only the loopback tap");
}

// === mutual TLS ===

fn web() -> Identity {
    identity("web")
}

fn client_identity() -> Identity {
    identity("client")
}

fn tap_identity() -> Identity {
    Identity::new("mesh-tap", "mesh-viz", "cluster.local").unwrap()
}

/// Both controllers on a fresh CA, a server proxy (`web`, inbound on 127.0.0.2) in front of
/// the test app and a client proxy (`client`) that discovers `web-svc`: every hop mutual TLS;
/// both proxies take taps from the tap identity.
async fn mesh() -> MtlsMesh {
    let tap_id = Some(tap_identity().dns_name());
    MtlsMesh::start(|c| c.tap.identity = tap_id.clone()).await
}

/// Mutual TLS to `admin` as `who` (a certificate of `ca`), for `server_name`. Offering h2 too:
/// the admin server still picks HTTP/1.1.
async fn tls_as(
    m: &MtlsMesh,
    ca: &TestCa,
    admin: SocketAddr,
    who: &Identity,
    server_name: &Identity,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (chain, key) = ca.issue(who);
    m.tls_client(
        admin,
        &server_name.dns_name(),
        (&chain, &key),
        &[b"h2", b"http/1.1"],
    )
    .await
}

#[tokio::test]
async fn over_mutual_tls_only_the_tap_identity_may_tap() {
    let m = mesh().await;
    let server_admin = m.server.addrs.admin;

    // The wrong identity, with a valid certificate of the mesh: refused, with the reason.
    let tls = tls_as(&m, &m.ca, server_admin, &client_identity(), &web())
        .await
        .unwrap();
    let message = forbidden_message(
        open(tls, server_admin, "").await,
        "the client identity must not tap",
    );
    assert!(message.contains(&tap_identity().dns_name()), "{message}");
    assert!(message.contains(&client_identity().dns_name()), "{message}");
    // The rest of the admin server answers over the same TLS.
    let tls = tls_as(&m, &m.ca, server_admin, &client_identity(), &web())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let rsp = sender
        .send_request(fixtures::request(Version::HTTP_11, "/ready"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);

    // The tap identity taps both proxies; the inbound side shows who called, verified.
    let tls = tls_as(&m, &m.ca, server_admin, &tap_identity(), &web())
        .await
        .unwrap();
    let mut inbound = open(tls, server_admin, "")
        .await
        .expect("the tap identity may tap");
    let client_admin = m.client.addrs.admin;
    let tls = tls_as(&m, &m.ca, client_admin, &tap_identity(), &client_identity())
        .await
        .unwrap();
    let mut outbound = open(tls, client_admin, "").await.unwrap();
    let status = get_root(m.client.addrs.outbound, "web-svc.demo.svc.cluster.local:80").await;
    assert_eq!(status, 200);

    let got = events_until_quiet(&mut inbound, QUIET).await;
    let (direction, source, destination, tls) = first_request_start(&got);
    assert_eq!(*direction, ProxyDirection::Inbound);
    assert!(tls);
    assert_eq!(
        source.identity.as_deref(),
        Some(&*client_identity().dns_name())
    );
    assert_eq!(source.labels["serviceaccount"], "client");
    assert_eq!(destination.addr, m.app, "the address the client dialed");
    assert_eq!(destination.identity.as_deref(), Some(&*web().dns_name()));

    let got = events_until_quiet(&mut outbound, QUIET).await;
    let (direction, source, destination, tls) = first_request_start(&got);
    assert_eq!(*direction, ProxyDirection::Outbound);
    assert!(tls);
    assert_eq!(
        source.identity.as_deref(),
        Some(&*client_identity().dns_name())
    );
    assert_eq!(destination.identity.as_deref(), Some(&*web().dns_name()));
    assert_eq!(destination.labels["pod"], "web-0");

    // TLS for another name than the proxy's is not the admin server's: closed.
    assert!(
        open_or_closed(
            tls_as(&m, &m.ca, server_admin, &tap_identity(), &client_identity()).await,
            server_admin
        )
        .await,
        "a ClientHello for another name gets no answer"
    );
    // A certificate from another CA, even for the tap identity: no handshake.
    let other = TestCa::new();
    assert!(
        open_or_closed(
            tls_as(&m, &other, server_admin, &tap_identity(), &web()).await,
            server_admin
        )
        .await,
        "a foreign certificate gets no tap"
    );
}

/// Whether a TLS attempt ended without a tap: the handshake or the request failed.
async fn open_or_closed(
    tls: std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
    admin: SocketAddr,
) -> bool {
    match tls {
        Err(_) => true,
        Ok(tls) => open(tls, admin, "").await.is_err(),
    }
}
