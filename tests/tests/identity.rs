//! Mutual TLS between proxies, in process: the real identity and destination controllers on a
//! folder of YAML with a fresh CA, a client proxy and a server proxy in front of the test app on
//! loopback addresses. What the end-to-end tests cannot reach easily lives here: gRPC, upgrades
//! and opaque TCP over mutual TLS, a foreign client certificate, the application's own TLS,
//! readiness before the first certificate. No root needed.

use http::Version;
use http_body_util::BodyExt;
use mesh_api::identity::{ca, Identity};
use mesh_tests::mtls::{identity, ready, MtlsMesh, TestCa, CLUSTER_IP, DAY};
use mesh_tests::{fixtures, metric_sum};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVICE: &str = "web-svc.demo.svc.cluster.local";

fn web() -> Identity {
    identity("web")
}

fn client_id() -> Identity {
    identity("client")
}

fn request(version: Version, path: &str) -> http::Request<fixtures::Body> {
    let mut req = fixtures::request(version, path);
    let uri = match version {
        Version::HTTP_2 => format!("http://{SERVICE}{path}"),
        _ => path.to_string(),
    };
    *req.uri_mut() = uri.parse().unwrap();
    req.headers_mut().insert("host", SERVICE.parse().unwrap());
    req
}

#[tokio::test]
async fn http1_http2_and_grpc_go_over_mutual_tls_and_carry_the_client_identity() {
    let m = MtlsMesh::start(|_| {}).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let req = request(version, "/header?name=mesh-client-id");
        let rsp = match version {
            Version::HTTP_2 => {
                fixtures::h2(m.client.addrs.outbound)
                    .await
                    .send_request(req)
                    .await
            }
            _ => {
                fixtures::h1(m.client.addrs.outbound)
                    .await
                    .send_request(req)
                    .await
            }
        }
        .unwrap();
        assert_eq!(rsp.status(), 200, "{version:?}");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, client_id().dns_name(), "{version:?}");
    }
    // gRPC: trailers survive the hop between proxies and classify the response.
    let mut h2 = fixtures::h2(m.client.addrs.outbound).await;
    let mut req = request(Version::HTTP_2, "/grpc/fail");
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let rsp = h2.send_request(req).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "2");

    let server = m.server.metrics().await;
    let client = m.client.metrics().await;
    let client_label = format!("client_id=\"{}\"", client_id());
    let server_label = format!("server_id=\"{}\"", web());
    assert_eq!(
        metric_sum(&server, "request_total", &["tls=\"true\"", &client_label]),
        3,
        "{server}"
    );
    assert_eq!(
        metric_sum(
            &client,
            "response_total",
            &["tls=\"true\"", &server_label, "grpc_status=\"2\""]
        ),
        1,
        "{client}"
    );
    assert!(
        metric_sum(
            &server,
            "tcp_open_total",
            &["direction=\"inbound\"", "tls=\"true\"", &client_label]
        ) >= 1,
        "{server}"
    );
    assert!(metric_sum(&client, "identity_cert_expiration_timestamp_seconds", &[]) > 1_700_000_000);
}

#[tokio::test]
async fn websocket_upgrades_cross_the_mutual_tls_hop() {
    let m = MtlsMesh::start(|_| {}).await;
    let mut io = TcpStream::connect(m.client.addrs.outbound).await.unwrap();
    io.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: {SERVICE}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = fixtures::read_head(&mut io).await;
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    io.write_all(b"frames both ways").await.unwrap();
    let mut echo = [0u8; 16];
    io.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"frames both ways");
    let server = m.server.metrics().await;
    assert!(
        metric_sum(&server, "request_total", &["tls=\"true\""]) >= 1,
        "{server}"
    );
}

#[tokio::test]
async fn opaque_tcp_is_wrapped_in_mutual_tls() {
    let m = MtlsMesh::start(|c| c.inbound_opaque_ports = "1-65535".parse().unwrap()).await;
    // The client proxy takes port 80 as opaque: bytes go by the ClusterIP, through mutual TLS.
    let opaque_client = fixtures::proxy(CLUSTER_IP.parse().unwrap(), |c| {
        c.identity = Some(m.proxy_identity(&client_id(), "client-token"));
        c.destination_addr = Some(m.destination.addr.to_string());
        c.destination_namespace = "demo".into();
        c.outbound_opaque_ports = "80".parse().unwrap();
    })
    .await;
    assert!(ready(&opaque_client, Duration::from_secs(10)).await);
    let reply = fixtures::raw(
        opaque_client.addrs.outbound,
        b"GET /header?name=mesh-client-id HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}\n{}",
        opaque_client.metrics().await,
        m.server.metrics().await
    );
    assert!(
        !reply.contains("serviceaccount"),
        "opaque bytes are not HTTP to the proxies: no header is added: {reply}"
    );
    let client = opaque_client.metrics().await;
    assert!(
        metric_sum(
            &client,
            "tcp_open_total",
            &[
                "direction=\"outbound\"",
                "tls=\"true\"",
                &format!("server_id=\"{}\"", web())
            ]
        ) >= 1,
        "{client}"
    );
    let server = m.server.metrics().await;
    assert!(
        metric_sum(
            &server,
            "tcp_open_total",
            &[
                "direction=\"inbound\"",
                &format!("client_id=\"{}\"", client_id())
            ]
        ) >= 1,
        "{server}"
    );
}

/// Sends `request` over mutual TLS with `chain_pem` / `key_pem` to the server proxy's inbound,
/// as the web identity, and reads until it closes. TLS 1.3: the server checks the client's
/// certificate after the client is done, so a refusal shows on the read.
async fn exchange(
    m: &MtlsMesh,
    chain_pem: &str,
    key_pem: &str,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut tls = m
        .tls_client(
            m.server.addrs.inbound,
            &web().dns_name(),
            (chain_pem, key_pem),
            &[],
        )
        .await?;
    tls.write_all(request).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_and_the_mesh_one_taken() {
    let m = MtlsMesh::start(|_| {}).await;
    let request =
        b"GET /header?name=mesh-client-id HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";

    // Another CA's certificate for the same client identity: refused.
    let other = TestCa::new();
    let (foreign, foreign_key) = other
        .signer
        .issue_with_key(&ca::LeafNames::identity(&client_id()), DAY)
        .unwrap();
    let outcome = exchange(&m, &foreign.chain_pem, &foreign_key, request).await;
    assert!(
        outcome.as_ref().map_or(true, |out| out.is_empty()),
        "a foreign certificate must not get an answer: {:?}",
        outcome.map(|o| String::from_utf8_lossy(&o).into_owned())
    );

    // The same client with a certificate of the mesh's CA gets through, and is named.
    let (ours, our_key) =
        m.ca.signer
            .issue_with_key(&ca::LeafNames::identity(&client_id()), DAY)
            .unwrap();
    let out = exchange(&m, &ours.chain_pem, &our_key, request)
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&client_id().dns_name()), "{out}");

    // A certificate of the mesh's CA that names no identity proves none: refused.
    let (nameless, nameless_key) =
        m.ca.signer
            .issue_with_key(
                &ca::LeafNames {
                    dns: vec!["client.example".into()],
                    uris: vec![],
                },
                DAY,
            )
            .unwrap();
    let outcome = exchange(&m, &nameless.chain_pem, &nameless_key, request).await;
    assert!(outcome.map_or(true, |out| out.is_empty()));

    let server = m.server.metrics().await;
    assert!(
        metric_sum(&server, "tcp_refused_total", &["reason=\"tls_handshake\""]) >= 1,
        "{server}"
    );
    assert!(
        metric_sum(
            &server,
            "tcp_refused_total",
            &["reason=\"no_client_identity\""]
        ) >= 1,
        "{server}"
    );
}

#[tokio::test]
async fn the_application_s_own_tls_passes_through_and_a_forged_client_id_is_removed() {
    let m = MtlsMesh::start(|_| {}).await;
    // Plaintext from outside the mesh: the forged header does not reach the app.
    let reply = fixtures::raw(
        m.server.addrs.inbound,
        b"GET /header?name=mesh-client-id HTTP/1.1\r\nHost: web\r\nmesh-client-id: admin.demo.serviceaccount.identity.mesh.cluster.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\n"),
        "the app saw no client id: {reply}"
    );

    // TLS for another name is the application's: the proxy does not answer it. (The app here
    // speaks plain HTTP, so it answers the ClientHello with an HTTP 400, which the client
    // sees as a TLS failure: the point is that the proxy did not terminate it.)
    let (ours, our_key) =
        m.ca.signer
            .issue_with_key(&ca::LeafNames::identity(&client_id()), DAY)
            .unwrap();
    let passthrough = m
        .tls_client(
            m.server.addrs.inbound,
            "app.example.com",
            (&ours.chain_pem, &our_key),
            &[],
        )
        .await;
    assert!(
        passthrough.is_err(),
        "the proxy must not terminate TLS for another name"
    );
    let server = m.server.metrics().await;
    assert!(
        metric_sum(
            &server,
            "tcp_open_total",
            &["no_tls_reason=\"not_provided_by_remote\""]
        ) >= 2,
        "{server}"
    );
}

#[tokio::test]
async fn a_proxy_is_not_ready_until_it_has_a_certificate() {
    let m = MtlsMesh::start(|_| {}).await;
    // A wrong token: the controller refuses, the proxy retries and stays unready.
    let mut identity = m.proxy_identity(&client_id(), "client-token");
    std::fs::write(&identity.token_file, "not-the-token").unwrap();
    identity.dir = m.state.path().join("unready-key");
    let token_file = identity.token_file.clone();
    let proxy = fixtures::proxy("127.0.0.1:9".parse().unwrap(), |c| {
        c.identity = Some(identity)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(fixtures::get_h1(proxy.addrs.admin, "/ready").await.0, 503);
    let metrics = proxy.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "identity_cert_refresh_total",
            &["result=\"failure\""]
        ) >= 2,
        "it retries: {metrics}"
    );
    // The right token (token files are read afresh): ready at the next attempt.
    std::fs::write(&token_file, "client-token").unwrap();
    assert!(ready(&proxy, Duration::from_secs(40)).await);
}
