//! The identity controller in process: certify over HTTP/2 and HTTP/1.1 through the real client,
//! refusals (token, identity, request shape) that issue nothing, a client that does not trust the
//! controller, start-up checks, serving-certificate renewal, and TokenReviews against a fake API
//! server serving the recorded fixtures.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::identity::ca::{self, CertAndKey};
use mesh_api::identity::client::{certify, CertifyError};
use mesh_api::identity::{CertifyRequest, CertifyResponse, ErrorBody, Identity, CERTIFY_PATH};
use mesh_controller::identity::{start, IdentityConfig, Running, StartError};
use mesh_controller::source::Source;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use support::fixture;

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);
const TIMEOUT: Duration = Duration::from_secs(10);
const WEB_TOKEN: &str = "web-token-0123456789";

/// A CA written to files, with its anchors parsed.
struct TestCa {
    dir: tempfile::TempDir,
    anchor: CertAndKey,
    anchors: Vec<CertificateDer<'static>>,
}

impl TestCa {
    fn new() -> Self {
        let anchor = ca::new_trust_anchor("cluster.local", 365 * DAY).expect("anchor");
        let issuer = ca::new_issuer(&anchor, "cluster.local", 30 * DAY).expect("issuer");
        Self::with_issuer(anchor, &issuer.cert_pem, &issuer.key_pem)
    }

    fn with_issuer(anchor: CertAndKey, issuer_cert: &str, issuer_key: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("issuer.crt"), issuer_cert).expect("write");
        std::fs::write(dir.path().join("issuer.key"), issuer_key).expect("write");
        std::fs::write(dir.path().join("anchors.crt"), &anchor.cert_pem).expect("write");
        let anchors = ca::certs_from_pem(&anchor.cert_pem, "anchors").expect("anchors");
        Self {
            dir,
            anchor,
            anchors,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, source: Source) -> IdentityConfig {
        let mut config = IdentityConfig::new(
            self.path("issuer.crt"),
            self.path("issuer.key"),
            self.path("anchors.crt"),
            source,
        );
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.leaf_lifetime = HOUR;
        config
    }
}

/// A folder source with web's token Secret in `demo` and db's.
fn token_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = |name: &str, sa: &str, token: &str| {
        format!(
            "apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: {name}
  namespace: demo
  annotations:
    kubernetes.io/service-account.name: {sa}
data:
  token: {}
",
            base64(token)
        )
    };
    std::fs::write(
        dir.path().join("secrets.yaml"),
        secret("web-token", "web", WEB_TOKEN) + "---\n" + &secret("db-token", "db", "db-token-xyz"),
    )
    .expect("write");
    dir
}

/// The controller on `ca` with the folder source `folder` (see [`token_folder`]).
async fn start_on_folder(ca: &TestCa, folder: &tempfile::TempDir) -> Running {
    start(ca.config(Source::Dir(folder.path().to_owned())))
        .await
        .expect("start")
}

/// Standard base64 (what `data.token` holds), through k8s-openapi's ByteString.
fn base64(s: &str) -> String {
    let json = serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).expect("json");
    json.as_str().expect("a string").to_owned()
}

fn web() -> Identity {
    Identity::new("web", "demo", "cluster.local").expect("identity")
}

/// A fresh key and a CSR for `dns` (plus `uri` if given).
fn csr(dns: &str, uri: Option<&str>) -> (KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(dns.to_owned().try_into().expect("dns"))];
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(uri.to_owned().try_into().expect("uri")));
    }
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, pem)
}

async fn call(
    running: &Running,
    anchors: &[CertificateDer<'static>],
    csr_pem: &str,
    token: &str,
) -> Result<CertifyResponse, CertifyError> {
    let request = CertifyRequest {
        csr_pem: csr_pem.to_owned(),
        token: token.to_owned(),
    };
    certify(
        &running.addr.to_string(),
        &running.server_name,
        anchors,
        &request,
        TIMEOUT,
    )
    .await
}

/// [`call`], which must succeed.
async fn certified(
    running: &Running,
    anchors: &[CertificateDer<'static>],
    csr_pem: &str,
    token: &str,
) -> CertifyResponse {
    call(running, anchors, csr_pem, token)
        .await
        .expect("certified")
}

/// [`call`], which must fail: the error.
async fn refused(
    running: &Running,
    anchors: &[CertificateDer<'static>],
    csr_pem: &str,
    token: &str,
) -> CertifyError {
    call(running, anchors, csr_pem, token)
        .await
        .expect_err("refused")
}

/// Checks a refusal: a 403 whose message contains each of `wants`.
fn assert_forbidden(e: &CertifyError, wants: &[&str]) {
    match e {
        CertifyError::Status { status, message } => {
            assert_eq!(*status, http::StatusCode::FORBIDDEN);
            for want in wants {
                assert!(message.contains(want), "{message}");
            }
        }
        other => panic!("expected a 403, got {other}"),
    }
}

/// Checks a successful answer: the chain verifies for `identity`, carries `key`, and expires
/// about `lifetime` from now.
fn check_issued(
    response: &CertifyResponse,
    anchors: &[CertificateDer<'static>],
    identity: &Identity,
    key: &KeyPair,
    lifetime: Duration,
) {
    let chain = ca::certs_from_pem(&response.cert_chain_pem, "chain").expect("chain");
    assert_eq!(chain.len(), 2, "leaf and issuer");
    ca::verify_chain(&chain, anchors, &identity.dns_name(), SystemTime::now()).expect("verifies");
    let info = ca::cert_info(&chain[0]).expect("info");
    assert_eq!(info.dns_names, vec![identity.dns_name()]);
    assert_eq!(info.uris, vec![identity.spiffe_id()]);
    assert!(!info.is_ca);
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("parse");
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the leaf certifies the CSR's key"
    );
    let expires = ca::parse_rfc3339(&response.expires_at).expect("rfc3339");
    assert_eq!(expires, info.not_after, "expires_at is the leaf's notAfter");
    let expected = SystemTime::now() + lifetime;
    let off = expected
        .duration_since(expires)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(10),
        "expires {off:?} away from now + {lifetime:?}"
    );
    // The clock skew: valid from a minute ago.
    let since = SystemTime::now()
        .duration_since(info.not_before)
        .expect("not_before in the past");
    assert!(
        since >= Duration::from_secs(55),
        "notBefore only {since:?} ago"
    );
}

// === A TLS client for requests the certify client does not make ===

fn tls_client(anchors: &[CertificateDer<'static>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a.clone()).expect("anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    running: &Running,
    anchors: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(running.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(running.server_name.clone()).expect("name");
    tls_client(anchors, alpn)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// One request over HTTP/1.1 (ALPN `http/1.1`) or HTTP/2 (ALPN `h2`).
async fn request(
    running: &Running,
    anchors: &[CertificateDer<'static>],
    h2: bool,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> (http::StatusCode, String) {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = tls_connect(running, anchors, alpn).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn[0]),
        "negotiated the protocol asked for"
    );
    let io = TokioIo::new(tls);
    let req = http::Request::builder()
        .method(method)
        .header("content-type", "application/json");
    let req = if h2 {
        req.uri(format!("https://{}{path}", running.server_name))
    } else {
        req.uri(path).header("host", &running.server_name)
    };
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("response")
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the metric line starting with `series` (e.g.
/// `identity_certify_total{result="ok"}`), or 0 if absent.
async fn metric(running: &Running, anchors: &[CertificateDer<'static>], series: &str) -> f64 {
    let (status, text) = get_metrics(running, anchors).await;
    assert_eq!(status, http::StatusCode::OK);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The count of certify requests that ended with `result` (`identity_certify_total`).
async fn certify_total(
    running: &Running,
    anchors: &[CertificateDer<'static>],
    result: &str,
) -> f64 {
    metric(
        running,
        anchors,
        &format!("identity_certify_total{{result=\"{result}\"}}"),
    )
    .await
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {body}"))
        .error
}

// === Tests ===

#[tokio::test]
async fn certifies_a_workload_over_h2_and_http1() {
    let ca = TestCa::new();
    let folder = token_folder();
    let running = start_on_folder(&ca, &folder).await;
    assert_eq!(
        running.server_name,
        "mesh-identity.mesh.serviceaccount.identity.mesh.cluster.local"
    );

    // HTTP/2 through the client, with and without the SPIFFE URI in the CSR.
    let (key, pem) = csr(&web().dns_name(), Some(&web().spiffe_id()));
    let response = certified(&running, &ca.anchors, &pem, WEB_TOKEN).await;
    check_issued(&response, &ca.anchors, &web(), &key, HOUR);
    let (key, pem) = csr(&web().dns_name(), None);
    let response = certified(&running, &ca.anchors, &pem, WEB_TOKEN).await;
    check_issued(&response, &ca.anchors, &web(), &key, HOUR);

    // HTTP/1.1 (ALPN http/1.1), by hand.
    let (key, pem) = csr(&web().dns_name(), None);
    let body = serde_json::to_vec(&CertifyRequest {
        csr_pem: pem,
        token: WEB_TOKEN.into(),
    })
    .expect("json");
    let (status, text) = request(
        &running,
        &ca.anchors,
        false,
        http::Method::POST,
        CERTIFY_PATH,
        body,
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{text}");
    let response: CertifyResponse = serde_json::from_str(&text).expect("response");
    check_issued(&response, &ca.anchors, &web(), &key, HOUR);

    assert_eq!(certify_total(&running, &ca.anchors, "ok").await, 3.0);
    let issuer_expiry = metric(
        &running,
        &ca.anchors,
        "identity_issuer_expiration_timestamp_seconds",
    )
    .await;
    let in_30_days = (SystemTime::now() + 30 * DAY)
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!((issuer_expiry - in_30_days).abs() < 30.0, "{issuer_expiry}");
    for (path, expected) in [("/ready", "ready\n"), ("/live", "live\n")] {
        for h2 in [true, false] {
            let (status, text) =
                request(&running, &ca.anchors, h2, http::Method::GET, path, vec![]).await;
            assert_eq!((status, text.as_str()), (http::StatusCode::OK, expected));
        }
    }
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn refusals_issue_nothing_and_are_counted() {
    let ca = TestCa::new();
    let folder = token_folder();
    let running = start_on_folder(&ca, &folder).await;
    let (_, pem) = csr(&web().dns_name(), Some(&web().spiffe_id()));

    // A wrong token.
    let e = refused(&running, &ca.anchors, &pem, "not-a-token").await;
    assert_forbidden(&e, &["no service-account token Secret"]);
    assert!(!e.is_retryable());
    assert_eq!(certify_total(&running, &ca.anchors, "bad_token").await, 1.0);

    // A CSR for db with web's token.
    let db = Identity::new("db", "demo", "cluster.local").expect("identity");
    let (_, db_pem) = csr(&db.dns_name(), None);
    let e = refused(&running, &ca.anchors, &db_pem, WEB_TOKEN).await;
    assert_forbidden(&e, &["not for the token's identity", &db.dns_name()]);
    assert_eq!(
        certify_total(&running, &ca.anchors, "identity_mismatch").await,
        1.0
    );

    // A CSR with an extra name, and garbage.
    let (_, extra) = {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![web().dns_name(), "evil.example.com".into()])
            .expect("params");
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        (key, pem)
    };
    for bad in [extra.as_str(), "garbage"] {
        let e = refused(&running, &ca.anchors, bad, WEB_TOKEN).await;
        assert!(
            matches!(&e, CertifyError::Status { status, message } if *status == http::StatusCode::BAD_REQUEST && message.starts_with("bad CSR")),
            "{e}"
        );
    }
    assert_eq!(certify_total(&running, &ca.anchors, "bad_csr").await, 2.0);

    // Request shapes, over both protocols.
    for h2 in [true, false] {
        for (method, path, body, want_status, want) in [
            (
                http::Method::POST,
                CERTIFY_PATH,
                b"{".to_vec(),
                http::StatusCode::BAD_REQUEST,
                "not a certify request",
            ),
            (
                http::Method::GET,
                CERTIFY_PATH,
                vec![],
                http::StatusCode::METHOD_NOT_ALLOWED,
                "takes POST",
            ),
            (
                http::Method::POST,
                CERTIFY_PATH,
                vec![b' '; 70 * 1024],
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "larger than",
            ),
            (
                http::Method::GET,
                "/nope",
                vec![],
                http::StatusCode::NOT_FOUND,
                "/nope",
            ),
        ] {
            let (status, body) = request(&running, &ca.anchors, h2, method, path, body).await;
            assert_eq!(status, want_status);
            assert!(error_message(&body).contains(want), "{body}");
        }
    }
    assert_eq!(
        certify_total(&running, &ca.anchors, "bad_request").await,
        6.0
    );
    assert_eq!(
        certify_total(&running, &ca.anchors, "ok").await,
        0.0,
        "nothing was issued"
    );

    // An expired token (the folder is read at each request, so a new Secret counts at once).
    let past = ca::rfc3339(SystemTime::now() - Duration::from_secs(5));
    std::fs::write(
        folder.path().join("old.yaml"),
        format!(
            "apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: old
  namespace: demo
  annotations: {{kubernetes.io/service-account.name: web, mesh.io/token-expires-at: \"{past}\"}}
data: {{token: {}}}
",
            base64("old-token")
        ),
    )
    .expect("write");
    let e = refused(&running, &ca.anchors, &pem, "old-token").await;
    assert!(e.to_string().contains("expired at"), "{e}");
}

#[tokio::test]
async fn a_client_with_other_anchors_sends_nothing() {
    let ca = TestCa::new();
    let folder = token_folder();
    let running = start_on_folder(&ca, &folder).await;
    let other = TestCa::new();
    let (_, pem) = csr(&web().dns_name(), None);
    let e = refused(&running, &other.anchors, &pem, WEB_TOKEN).await;
    assert!(matches!(e, CertifyError::Tls { .. }), "{e}");
    assert!(!e.is_retryable());
    // The right anchors, but another name expected: refused the same way.
    let request = CertifyRequest {
        csr_pem: pem.clone(),
        token: WEB_TOKEN.into(),
    };
    let e = certify(
        &running.addr.to_string(),
        &web().dns_name(),
        &ca.anchors,
        &request,
        TIMEOUT,
    )
    .await
    .expect_err("refused");
    assert!(matches!(e, CertifyError::Tls { .. }), "{e}");
    // The server saw no request at all.
    let (_, metrics) = get_metrics(&running, &ca.anchors).await;
    assert!(
        !metrics.contains("identity_certify_total{"),
        "a certify request reached the server:\n{metrics}"
    );
}

/// `GET /metrics` over HTTP/2: the status and the text.
async fn get_metrics(
    running: &Running,
    anchors: &[CertificateDer<'static>],
) -> (http::StatusCode, String) {
    request(
        running,
        anchors,
        true,
        http::Method::GET,
        "/metrics",
        vec![],
    )
    .await
}

#[tokio::test]
async fn leaves_never_outlive_the_issuer() {
    let anchor = ca::new_trust_anchor("cluster.local", 365 * DAY).expect("anchor");
    let issuer = ca::new_issuer(&anchor, "cluster.local", 2 * HOUR).expect("issuer");
    let ca = TestCa::with_issuer(anchor, &issuer.cert_pem, &issuer.key_pem);
    let folder = token_folder();
    let mut config = ca.config(Source::Dir(folder.path().to_owned()));
    config.leaf_lifetime = DAY;
    let running = start(config).await.expect("start");
    let (key, pem) = csr(&web().dns_name(), None);
    let response = certified(&running, &ca.anchors, &pem, WEB_TOKEN).await;
    let issuer_der = ca::certs_from_pem(&issuer.cert_pem, "issuer").expect("issuer");
    let issuer_not_after = ca::cert_info(&issuer_der[0]).expect("info").not_after;
    check_issued(&response, &ca.anchors, &web(), &key, 2 * HOUR);
    assert!(ca::parse_rfc3339(&response.expires_at).expect("time") <= issuer_not_after);
}

#[tokio::test]
async fn the_serving_certificate_is_renewed() {
    let ca = TestCa::new();
    let folder = token_folder();
    let mut config = ca.config(Source::Dir(folder.path().to_owned()));
    // Serving certificates live as long as leaves: renewed after ~2.1 s.
    config.leaf_lifetime = Duration::from_secs(3);
    let running = start(config).await.expect("start");
    let serial = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        let certs = tls.get_ref().1.peer_certificates().expect("a certificate");
        ca::cert_info(&certs[0]).expect("info").serial
    };
    let first = serial(&tls_connect(&running, &ca.anchors, &[b"h2"]).await);
    let start = tokio::time::Instant::now();
    loop {
        // Every handshake verifies (tls_connect expects success): never an expired certificate.
        let now = serial(&tls_connect(&running, &ca.anchors, &[b"h2"]).await);
        if now != first {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not renewed within 10s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn start_up_refuses_a_broken_ca() {
    let folder = token_folder();
    let source = || Source::Dir(folder.path().to_owned());
    let start_err = |config: IdentityConfig| async move {
        match start(config).await {
            Ok(_) => panic!("started"),
            Err(e) => e,
        }
    };
    let check = |e: StartError, want: &str| {
        let text = format!("{e:#}");
        assert!(text.contains(want), "{text:?} does not contain {want:?}");
    };

    // A missing file.
    let ca = TestCa::new();
    std::fs::remove_file(ca.path("issuer.key")).expect("rm");
    check(
        start_err(ca.config(source())).await,
        "reading the issuer key",
    );

    // PEM without a certificate, without a key.
    let ca = TestCa::new();
    std::fs::write(ca.path("anchors.crt"), "nothing here").expect("write");
    check(start_err(ca.config(source())).await, "no CERTIFICATE block");
    let ca = TestCa::new();
    std::fs::write(ca.path("issuer.key"), "nothing here").expect("write");
    check(start_err(ca.config(source())).await, "the issuer key");

    // The anchor's key with the issuer's certificate.
    let ca = TestCa::new();
    std::fs::write(ca.path("issuer.key"), &ca.anchor.key_pem).expect("write");
    check(start_err(ca.config(source())).await, "does not belong");

    // A leaf as the issuer.
    let anchor = ca::new_trust_anchor("cluster.local", DAY).expect("anchor");
    let issuer = ca::new_issuer(&anchor, "cluster.local", DAY).expect("issuer");
    let signer = ca::Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).expect("signer");
    let (leaf, leaf_key) = signer
        .issue_with_key(&ca::LeafNames::identity(&web()), HOUR)
        .expect("leaf");
    let ca = TestCa::with_issuer(anchor, &leaf.cert_pem, &leaf_key);
    check(start_err(ca.config(source())).await, "not a CA");

    // An issuer of another root.
    let other = ca::new_trust_anchor("cluster.local", DAY).expect("anchor");
    let anchor = ca::new_trust_anchor("cluster.local", DAY).expect("anchor");
    let issuer = ca::new_issuer(&other, "cluster.local", DAY).expect("issuer");
    let ca = TestCa::with_issuer(anchor, &issuer.cert_pem, &issuer.key_pem);
    check(
        start_err(ca.config(source())).await,
        "does not chain to the trust anchors",
    );

    // An expired issuer.
    let anchor = ca::new_trust_anchor("cluster.local", DAY).expect("anchor");
    let (cert, key) = expired_issuer(&anchor);
    let ca = TestCa::with_issuer(anchor, &cert, &key);
    check(start_err(ca.config(source())).await, "has expired");

    // A source folder that does not exist.
    let ca = TestCa::new();
    check(
        start_err(ca.config(Source::Dir(PathBuf::from("/nonexistent/mesh")))).await,
        "not a folder",
    );
}

/// An issuer (a CA) signed by `anchor` that expired in 2021.
fn expired_issuer(anchor: &CertAndKey) -> (String, String) {
    let anchor_key = KeyPair::from_pem(&anchor.key_pem).expect("key");
    let anchor_issuer =
        rcgen::Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key).expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &anchor_issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

// === Kubernetes: TokenReviews against a fake API server ===

/// The TokenReviews the fake API server received: (token, audiences).
type Reviews = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Answers `POST /apis/authentication.k8s.io/v1/tokenreviews` with the recorded review chosen
/// by the token: `good` → authenticated, `wrong-audience` → wrong audience, else rejected.
async fn fake_api_server() -> (SocketAddr, Reviews) {
    let reviews: Reviews = Arc::default();
    let seen = reviews.clone();
    let addr = support::fake_api_server(move |req| {
        let (status, name) = match (&req.method, req.path.as_str()) {
            (&http::Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
                let review: serde_json::Value =
                    serde_json::from_slice(&req.body).unwrap_or_default();
                let token = review
                    .pointer("/spec/token")
                    .and_then(|t| t.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let audiences = review
                    .pointer("/spec/audiences")
                    .and_then(|a| serde_json::from_value(a.clone()).ok())
                    .unwrap_or_default();
                let name = match token.as_str() {
                    "good" => "tokenreview-authenticated.json",
                    "wrong-audience" => "tokenreview-wrong-audience.json",
                    _ => "tokenreview-rejected.json",
                };
                seen.lock().expect("lock").push((token, audiences));
                (201, name)
            }
            _ => (404, "notfound-404.json"),
        };
        (status, fixture(name))
    })
    .await;
    (addr, reviews)
}

#[tokio::test]
async fn kube_mode_checks_tokens_with_token_reviews() {
    let (api, reviews) = fake_api_server().await;
    let ca = TestCa::new();
    let config = ca.config(Source::Kube {
        kubeconfig: Some(support::kubeconfig(ca.dir.path(), api, None)),
    });
    let running = start(config).await.expect("start");
    let (key, pem) = csr(&web().dns_name(), Some(&web().spiffe_id()));

    // The recorded review authenticates system:serviceaccount:demo:web.
    let response = certified(&running, &ca.anchors, &pem, "good").await;
    check_issued(&response, &ca.anchors, &web(), &key, HOUR);
    assert_eq!(
        reviews.lock().expect("lock").first().cloned(),
        Some(("good".to_owned(), vec!["identity.mesh.io".to_owned()])),
        "the review asked for the mesh's audience"
    );

    // Rejected and wrong-audience reviews: 403 with the API server's error.
    for (token, want) in [
        ("garbage", "invalid bearer token"),
        ("wrong-audience", "is invalid for the target audiences"),
    ] {
        let e = refused(&running, &ca.anchors, &pem, token).await;
        assert_forbidden(&e, &[want]);
    }
    // A CSR for another identity with a good token.
    let (_, other) = csr("db.demo.serviceaccount.identity.mesh.cluster.local", None);
    let e = refused(&running, &ca.anchors, &other, "good").await;
    assert!(
        e.to_string().contains("not for the token's identity"),
        "{e}"
    );
    assert_eq!(certify_total(&running, &ca.anchors, "bad_token").await, 2.0);
    assert_eq!(certify_total(&running, &ca.anchors, "ok").await, 1.0);
}

#[tokio::test]
async fn an_unreachable_api_server_is_retryable() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let ca = TestCa::new();
    let config = ca.config(Source::Kube {
        kubeconfig: Some(support::kubeconfig(ca.dir.path(), closed, None)),
    });
    let running = start(config).await.expect("start");
    let (_, pem) = csr(&web().dns_name(), None);
    let e = refused(&running, &ca.anchors, &pem, "good").await;
    assert!(
        matches!(&e, CertifyError::Status { status, .. } if *status == http::StatusCode::SERVICE_UNAVAILABLE),
        "{e}"
    );
    assert!(e.is_retryable());
    assert_eq!(
        certify_total(&running, &ca.anchors, "unavailable").await,
        1.0
    );
}

// === keys written by openssl, step and cert-manager ===

#[path = "../../api/tests/openssl/mod.rs"]
mod openssl;

#[tokio::test]
async fn starts_from_an_issuer_key_in_any_form_openssl_writes() {
    let dir = openssl::Workdir::new("identity-keys");
    dir.readme_anchor_and_issuer();
    let anchor = || CertAndKey {
        cert_pem: dir.read("ca.crt"),
        key_pem: dir.read("ca.key"),
    };
    let folder = token_folder();
    // The README's issuer first: its key is SEC1, which once could not be parsed.
    assert!(dir
        .read("issuer.key")
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let mut issuers = vec![("issuer.key", dir.read("issuer.crt"))];
    for key in dir.accepted_keys() {
        issuers.push((key, dir.issuer_for(key)));
    }
    for (key_file, cert) in issuers {
        let ca = TestCa::with_issuer(anchor(), &cert, &dir.read(key_file));
        let running = start(ca.config(Source::Dir(folder.path().to_owned())))
            .await
            .unwrap_or_else(|e| panic!("{key_file}: {e:#}"));
        let (key, pem) = csr(&web().dns_name(), Some(&web().spiffe_id()));
        let response = certified(&running, &ca.anchors, &pem, WEB_TOKEN).await;
        check_issued(&response, &ca.anchors, &web(), &key, HOUR);
        running.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn an_unreadable_issuer_key_is_named_with_its_flag() {
    let dir = openssl::Workdir::new("identity-refused");
    dir.readme_anchor_and_issuer();
    dir.sh(
        "openssl pkey -in issuer.key -aes256 -passout pass:secret -out encrypted.key
         openssl ecparam -name prime256v1 -genkey -noout -out other.key",
    );
    let folder = token_folder();
    for (key_file, want) in [
        ("encrypted.key", "encrypted keys are not supported"),
        ("other.key", "it does not belong to the issuer certificate"),
    ] {
        let anchor = CertAndKey {
            cert_pem: dir.read("ca.crt"),
            key_pem: dir.read("ca.key"),
        };
        let ca = TestCa::with_issuer(anchor, &dir.read("issuer.crt"), &dir.read(key_file));
        let e = match start(ca.config(Source::Dir(folder.path().to_owned()))).await {
            Ok(_) => panic!("{key_file}: started"),
            Err(e) => format!("{e:#}"),
        };
        let named = format!(
            "the issuer key {} (--issuer-key): ",
            ca.path("issuer.key").display()
        );
        assert!(e.starts_with(&named), "{e}");
        assert!(e.contains(want), "{e}");
    }
}
