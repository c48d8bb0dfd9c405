//! Identity attacks on pods (issue 17, "Identity attacks"): a control plane, a meshed `web` pod
//! whose app port (8080) requires identity and authorizes only the `client` service account, a
//! meshed `client` pod, and an unmeshed `attacker` pod that makes certificates of its own. Each
//! test makes one attack a few times and checks that it is refused, how, and that the proxy's
//! metrics counted every attempt. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mesh_api::identity::{ca, Identity};
use mesh_cli::local::{
    require_root, service_yaml, Cluster, ControlOptions, ControlPlane, Pod, Proxy,
};
use mesh_tests::fixtures::eventually;
use mesh_tests::{
    http_get, metric_sum, raw_request, record, serve_app, web_service, APP_PORT, CLIENT_ID,
    CLUSTER_IP, SERVICE, WEB_ID,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const SECTION: &str = "Identity attacks";
/// How many times each attack is made.
const ATTEMPTS: u64 = 3;
/// A port of the web pod that takes plaintext.
const PLAIN_PORT: u16 = 8081;
/// The web proxy's count of requests that came with a `mesh-client-id` of their own.
const REMOVED: &str = "inbound_http_client_id_removed_total";
/// A Service whose one endpoint claims to be `web` but runs no proxy.
const IMPOSTOR_SERVICE: &str = "impostor-svc.demo.svc.cluster.local";
const IMPOSTOR_IP: [u8; 4] = [10, 96, 0, 20];

/// Port 8080 of the web pod authorizes the `client` service account only.
const POLICY: &str = "\
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: client-only, namespace: demo}
spec: {identityRefs: [{kind: ServiceAccount, name: client}]}
---
apiVersion: policy.mesh.io/v1alpha1
kind: Server
metadata: {name: web-http, namespace: demo}
spec: {podSelector: {matchLabels: {app: web}}, port: 8080}
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-http-client, namespace: demo}
spec: {targetRef: {group: policy.mesh.io, kind: Server, name: web-http}, \
requiredAuthenticationRefs: [{group: policy.mesh.io, kind: MeshTLSAuthentication, name: client-only}]}
";

struct Mesh {
    cluster: Cluster,
    control: ControlPlane,
    web: Pod,
    client: Pod,
    attacker: Pod,
    web_proxy: Proxy,
    client_proxy: Proxy,
    apps: Vec<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn mesh(name: &str) -> Mesh {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control_pod = cluster.add_pod("control").expect("control pod");
    let web = cluster.add_pod("web").expect("web pod");
    let client = cluster.add_pod("client").expect("client pod");
    let attacker = cluster.add_pod("attacker").expect("attacker pod");
    let dir = tempfile::tempdir().expect("control folder");
    let control = ControlPlane::start(&control_pod, dir.path(), &ControlOptions::default())
        .expect("control plane");
    control
        .write("web-svc.yaml", &web_service(&web))
        .expect("service");
    control.write("policy.yaml", POLICY).expect("policy");
    let apps = vec![
        serve_app(&web, APP_PORT, Duration::ZERO, "web").expect("web app"),
        serve_app(&web, PLAIN_PORT, Duration::ZERO, "web-plain").expect("plain app"),
    ];
    let mut web_opts = control
        .enroll(&web, "demo", "web", &[("app", "web")])
        .expect("enroll web");
    web_opts.env.push((
        "MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS".into(),
        APP_PORT.to_string(),
    ));
    let web_proxy = web.mesh(web_opts).expect("mesh web");
    client
        .set_hosts(&[
            (IpAddr::from(CLUSTER_IP), SERVICE),
            (IpAddr::from(IMPOSTOR_IP), IMPOSTOR_SERVICE),
        ])
        .expect("hosts file");
    client.route("10.96.0.0/12").expect("service route");
    let client_opts = control
        .enroll(&client, "demo", "client", &[("app", "client")])
        .expect("enroll client");
    let client_proxy = client.mesh(client_opts).expect("mesh client");
    let m = Mesh {
        cluster,
        control,
        web,
        client,
        attacker,
        web_proxy,
        client_proxy,
        apps,
        _dir: dir,
    };
    // The client gets through before any attack: the policy is in force.
    assert!(
        poll(Duration::from_secs(20), || m
            .client_call(CLUSTER_IP, SERVICE, "")
            .starts_with("HTTP/1.1 200")),
        "the meshed client never gets through: {}",
        m.client_call(CLUSTER_IP, SERVICE, "")
    );
    m
}

impl Mesh {
    /// A GET of `/header?name=mesh-client-id` from the client pod to `ip:80` for `host`, with
    /// `extra` headers: the whole response, or the error.
    fn client_call(&self, ip: [u8; 4], host: &str, extra: &str) -> String {
        raw_request(
            &self.client,
            SocketAddr::from((ip, 80)),
            http_get("/header?name=mesh-client-id", host, extra),
        )
        .unwrap_or_else(|e| format!("error: {e:#}"))
    }

    /// A metric of `proxy`, summed as [`metric_sum`] does.
    fn metric(proxy: &Proxy, name: &str, must_contain: &[&str]) -> u64 {
        let (_, metrics) = proxy.admin_get("/metrics").expect("metrics");
        metric_sum(&metrics, name, must_contain)
    }

    /// Mutual TLS from the attacker pod to the web pod's app port for `server_name`, presenting
    /// `chain_pem`/`key_pem`, then one HTTP/1.1 GET of `/header?name=mesh-client-id`: what came
    /// back.
    fn attack_tls(&self, server_name: &str, (chain_pem, key_pem): (&str, &str)) -> Seen {
        let addr = SocketAddr::from((self.web.ip, APP_PORT));
        let anchors = ca::certs_from_pem(self.control.trust_anchors_pem(), "anchors")
            .expect("the mesh's anchors");
        let chain = ca::certs_from_pem(chain_pem, "chain").expect("a chain");
        let key = ca::key_from_pem(key_pem, "key").expect("a key");
        let server_name = server_name.to_string();
        self.attacker
            .run_in(move || {
                let rt = runtime();
                Ok(rt.block_on(tls_get(addr, &server_name, anchors, chain, key)))
            })
            .join()
            .expect("the attacker's thread")
            .expect("the attacker's pod")
    }

    /// Serves mutual-TLS-looking TLS on the impostor's app port with `chain_pem`/`key_pem` (no
    /// client certificate asked); returns once it listens.
    fn serve_tls(&mut self, pod: &Pod, (chain_pem, key_pem): (String, String)) {
        let chain = ca::certs_from_pem(&chain_pem, "chain").expect("a chain");
        let key = ca::key_from_pem(&key_pem, "key").expect("a key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (up, is_up) = std::sync::mpsc::channel();
        self.apps.push(pod.run_in(move || {
            let rt = runtime();
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], APP_PORT)))
                        .await?;
                let _ = up.send(());
                loop {
                    let (io, _) = listener.accept().await?;
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // The handshake is the test; what follows is never read.
                        let _ = acceptor.accept(io).await;
                    });
                }
            })
        }));
        is_up
            .recv_timeout(Duration::from_secs(5))
            .expect("the impostor listens");
    }

    /// A pod that the control plane lists as a meshed `web` pod (service account `web`) behind
    /// `impostor-svc`, but that runs no proxy: what it serves on the app port is the caller's.
    fn add_impostor(&mut self) -> Pod {
        let pod = self.cluster.add_pod("impostor").expect("impostor pod");
        self.control
            .enroll(&pod, "demo", "web", &[("app", "impostor")])
            .expect("the impostor's Pod object");
        self.control
            .write(
                "impostor-svc.yaml",
                &service_yaml(
                    "demo",
                    "impostor-svc",
                    IMPOSTOR_IP.into(),
                    (80, APP_PORT),
                    &[("app", "impostor")],
                    std::slice::from_ref(&pod),
                ),
            )
            .expect("the impostor's Service");
        pod
    }

    /// Calls the impostor through the client's proxy until the controller has published it (the
    /// proxy tries mutual TLS with it: anything but a connect failure or a 503 without
    /// endpoints); returns the last response.
    fn wait_impostor_known(&self) -> String {
        let mut last = String::new();
        poll(Duration::from_secs(20), || {
            last = self.client_call(IMPOSTOR_IP, IMPOSTOR_SERVICE, "");
            let lower = last.to_lowercase();
            let unknown = lower.starts_with("error")
                || lower.contains("mesh-proxy-error: connecting")
                || lower.starts_with("http/1.1 503");
            !unknown
        });
        last
    }
}

/// What an attacker's TLS request got.
#[derive(Debug)]
enum Seen {
    /// The handshake failed, or the connection ended without an answer: why.
    Refused(String),
    /// An HTTP response: its status line.
    Answer(String),
}

impl Seen {
    fn how(&self) -> String {
        match self {
            Seen::Refused(why) => why.clone(),
            Seen::Answer(status) => status.clone(),
        }
    }
}

async fn tls_get(
    addr: SocketAddr,
    server_name: &str,
    anchors: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Seen {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor).expect("an anchor");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("a client certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).expect("a server name");
    let attempt = async {
        let io = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await?;
        tls.write_all(http_get("/header?name=mesh-client-id", "web", "").as_bytes())
            .await?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Err(_) => Seen::Refused("no answer within 5 s".into()),
        Ok(Err(e)) => Seen::Refused(format!("TLS: {e}")),
        Ok(Ok(response)) if response.is_empty() => Seen::Refused("connection closed".into()),
        Ok(Ok(response)) => Seen::Answer(response.lines().next().unwrap_or("").trim().to_string()),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Polls `f` until it is true or `within` passes.
fn poll(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    runtime().block_on(eventually(within, || std::future::ready(f())))
}

fn identity(sa: &str) -> Identity {
    Identity::new(sa, "demo", "cluster.local").expect("an identity")
}

/// The ways the attempts were refused, deduplicated: `TLS: received fatal alert: UnknownCA ×3`.
fn refusals(seen: &[Seen]) -> String {
    let mut ways: Vec<(String, usize)> = Vec::new();
    for s in seen {
        let how = s.how();
        match ways.iter_mut().find(|(w, _)| *w == how) {
            Some((_, n)) => *n += 1,
            None => ways.push((how, 1)),
        }
    }
    ways.iter()
        .map(|(w, n)| format!("{w} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes a TLS attack `ATTEMPTS` times with `cert` against the web pod and records it: refused
/// (no answer, or `status` when given) and counted by `counter` of the web proxy.
fn tls_attack(
    m: &Mesh,
    check: &str,
    cert: (&str, &str),
    refused_with: Option<&str>,
    counter: (&str, &[&str]),
) {
    let before = Mesh::metric(&m.web_proxy, counter.0, counter.1);
    let seen: Vec<Seen> = (0..ATTEMPTS).map(|_| m.attack_tls(WEB_ID, cert)).collect();
    let counted = Mesh::metric(&m.web_proxy, counter.0, counter.1) - before;
    let refused = seen.iter().all(|s| match (s, refused_with) {
        (Seen::Refused(_), None) => true,
        (Seen::Answer(status), Some(want)) => status.contains(want),
        _ => false,
    });
    let passed = refused && counted == ATTEMPTS;
    let figure = format!(
        "{ATTEMPTS} attempts: {}; {}{{{}}} +{counted}",
        refusals(&seen),
        counter.0,
        counter.1.join(",")
    );
    assert!(
        record!(
            SECTION,
            check,
            figure,
            format!("refused, +{ATTEMPTS} counted"),
            passed
        ),
        "{seen:?}"
    );
}

#[test]
fn a_forged_client_id_from_a_plaintext_client_never_reaches_the_app() {
    let m = mesh("id-forge-plain");
    // The app echoes a request header through the proxy: an empty echo below means removed.
    let echo = raw_request(
        &m.attacker,
        SocketAddr::from((m.web.ip, PLAIN_PORT)),
        http_get("/header?name=x-probe", "web", "x-probe: seen\r\n"),
    )
    .expect("a plaintext request");
    assert!(echo.ends_with("\r\n\r\nseen"), "{echo}");
    let counter = ["tls=\"false\""];
    let before = Mesh::metric(&m.web_proxy, REMOVED, &counter);
    let seen: Vec<String> = (0..ATTEMPTS)
        .map(|_| {
            raw_request(
                &m.attacker,
                SocketAddr::from((m.web.ip, PLAIN_PORT)),
                http_get(
                    "/header?name=mesh-client-id",
                    "web",
                    &format!("mesh-client-id: {CLIENT_ID}\r\n"),
                ),
            )
            .unwrap_or_else(|e| format!("error: {e:#}"))
        })
        .collect();
    let counted = Mesh::metric(&m.web_proxy, REMOVED, &counter) - before;
    let app_saw: Vec<&str> = seen
        .iter()
        .map(|r| r.split_once("\r\n\r\n").map_or("(no answer)", |(_, b)| b))
        .collect();
    let stripped =
        seen.iter().all(|r| r.starts_with("HTTP/1.1 200")) && app_saw.iter().all(|b| b.is_empty());
    let passed = stripped && counted == ATTEMPTS;
    let figure = format!(
        "{ATTEMPTS} plaintext requests forging {CLIENT_ID}: the header removed, the app saw {:?}; \
         {REMOVED}{{tls=false}} +{counted}",
        app_saw
    );
    assert!(
        record!(
            SECTION,
            "Forged mesh-client-id, plaintext client",
            figure,
            "the app never sees the forged identity",
            passed
        ),
        "{seen:?}"
    );
}

#[test]
fn a_forged_client_id_from_a_meshed_client_is_replaced_by_the_proven_one() {
    let m = mesh("id-forge-mesh");
    let counter = ["tls=\"true\""];
    let before = Mesh::metric(&m.web_proxy, REMOVED, &counter);
    let seen: Vec<String> = (0..ATTEMPTS)
        .map(|_| {
            m.client_call(
                CLUSTER_IP,
                SERVICE,
                &format!("mesh-client-id: {WEB_ID}\r\n"),
            )
        })
        .collect();
    let counted = Mesh::metric(&m.web_proxy, REMOVED, &counter) - before;
    let app_saw: Vec<&str> = seen
        .iter()
        .map(|r| r.split_once("\r\n\r\n").map_or("(no answer)", |(_, b)| b))
        .collect();
    let replaced = seen.iter().all(|r| r.starts_with("HTTP/1.1 200"))
        && app_saw.iter().all(|b| *b == CLIENT_ID);
    let passed = replaced && counted == ATTEMPTS;
    let figure = format!(
        "{ATTEMPTS} meshed requests forging {WEB_ID}: the app saw {:?}; \
         {REMOVED}{{tls=true}} +{counted}",
        app_saw.first().copied().unwrap_or("")
    );
    assert!(
        record!(
            SECTION,
            "Forged mesh-client-id, meshed client",
            figure,
            "the app sees only the proven identity",
            passed
        ),
        "{seen:?}"
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_counted() {
    let m = mesh("id-other-ca");
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(86_400)).unwrap();
    let issuer = ca::new_issuer(&anchor, "cluster.local", Duration::from_secs(86_400)).unwrap();
    let signer = ca::Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).unwrap();
    let (issued, key) = signer
        .issue_with_key(
            &ca::LeafNames::identity(&identity("client")),
            Duration::from_secs(3600),
        )
        .unwrap();
    tls_attack(
        &m,
        "Client certificate from another CA",
        (&issued.chain_pem, &key),
        None,
        ("tcp_refused_total", &["reason=\"tls_handshake\""]),
    );
}

#[test]
fn an_expired_client_certificate_is_refused_and_counted() {
    let m = mesh("id-expired");
    let (chain, key) = m
        .control
        .issue(&identity("client"), Duration::from_secs(1))
        .expect("a certificate");
    // Pacing: the certificate's one second runs out.
    std::thread::sleep(Duration::from_millis(2_500));
    tls_attack(
        &m,
        "Expired client certificate",
        (&chain, &key),
        None,
        ("tcp_refused_total", &["reason=\"tls_handshake\""]),
    );
}

#[test]
fn a_client_certificate_for_another_workload_is_forbidden_and_counted() {
    let m = mesh("id-other-sa");
    // A valid certificate of the mesh's CA, for service account `db`, which the policy omits.
    let (chain, key) = m
        .control
        .issue(&identity("db"), Duration::from_secs(3600))
        .expect("a certificate");
    tls_attack(
        &m,
        "Client certificate for another workload",
        (&chain, &key),
        Some("403"),
        ("inbound_http_authz_deny_total", &[]),
    );
}

#[test]
fn a_plaintext_client_of_an_identity_required_port_is_refused_and_counted() {
    let m = mesh("id-plain");
    let counter = ["reason=\"identity_required\""];
    let before = Mesh::metric(&m.web_proxy, "tcp_refused_total", &counter);
    let seen: Vec<String> = (0..ATTEMPTS)
        .map(|_| {
            raw_request(
                &m.attacker,
                SocketAddr::from((m.web.ip, APP_PORT)),
                http_get("/", "web", &format!("mesh-client-id: {CLIENT_ID}\r\n")),
            )
            .map(|r| {
                if r.is_empty() {
                    "connection closed".into()
                } else {
                    r
                }
            })
            .unwrap_or_else(|e| format!("error: {e:#}"))
        })
        .collect();
    let counted = Mesh::metric(&m.web_proxy, "tcp_refused_total", &counter) - before;
    let refused = seen
        .iter()
        .all(|r| r == "connection closed" || r.starts_with("error"));
    let passed = refused && counted == ATTEMPTS;
    let figure = format!(
        "{ATTEMPTS} plaintext requests (forging the client's identity): {}; \
         tcp_refused_total{{reason=identity_required}} +{counted}",
        seen.first().map(String::as_str).unwrap_or("")
    );
    assert!(
        record!(
            SECTION,
            "Plaintext to an identity-required port",
            figure,
            format!("refused, +{ATTEMPTS} counted"),
            passed
        ),
        "{seen:?}"
    );
}

/// Calls the impostor `ATTEMPTS` times from the client pod and records that the client's proxy
/// answered 502 for mutual TLS every time, counting each in its outbound `error="tls"`
/// responses.
fn impostor_attack(m: &Mesh, check: &str, what: &str) {
    let first = m.wait_impostor_known();
    let counter = ["direction=\"outbound\"", "error=\"tls\""];
    let before = Mesh::metric(&m.client_proxy, "response_total", &counter);
    let seen: Vec<String> = (0..ATTEMPTS)
        .map(|_| m.client_call(IMPOSTOR_IP, IMPOSTOR_SERVICE, ""))
        .collect();
    let counted = Mesh::metric(&m.client_proxy, "response_total", &counter) - before;
    let error = |r: &str| {
        r.lines()
            .find(|l| l.to_lowercase().starts_with("mesh-proxy-error:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    let refused = seen
        .iter()
        .all(|r| r.starts_with("HTTP/1.1 502") && error(r).to_lowercase().contains("mutual tls"));
    let passed = refused && counted == ATTEMPTS;
    let figure = format!(
        "{ATTEMPTS} calls {what}: 502 ({}); response_total{{outbound,error=tls}} +{counted}",
        seen.first().map(|r| error(r)).unwrap_or_default()
    );
    assert!(
        record!(
            SECTION,
            check,
            figure,
            format!("502, no plaintext, +{ATTEMPTS} counted"),
            passed
        ),
        "first: {first}\nseen: {seen:?}"
    );
}

#[test]
fn a_server_certificate_for_another_workload_is_refused_by_the_client_proxy() {
    let mut m = mesh("id-other-srv");
    let impostor = m.add_impostor();
    // A valid certificate of the mesh's CA, for `db`, where the client's proxy expects `web`.
    let cert = m
        .control
        .issue(&identity("db"), Duration::from_secs(3600))
        .expect("a certificate");
    m.serve_tls(&impostor, cert);
    impostor_attack(
        &m,
        "Server certificate for another workload",
        "to a `web` endpoint that presents `db`'s certificate",
    );
}

#[test]
fn a_plaintext_server_where_mutual_tls_is_expected_is_never_a_downgrade() {
    let mut m = mesh("id-downgrade");
    let impostor = m.add_impostor();
    // The impostor answers in plaintext HTTP: the client's proxy must not fall back to it.
    m.apps
        .push(serve_app(&impostor, APP_PORT, Duration::ZERO, "impostor").expect("app"));
    impostor_attack(
        &m,
        "Downgrade to plaintext",
        "to a `web` endpoint that serves plaintext HTTP only",
    );
}
