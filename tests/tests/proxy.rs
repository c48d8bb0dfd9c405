//! The real proxy, in process (no root needed), against a test application on loopback: HTTP/1 and HTTP/2 (one
//! body for both), gRPC classification, upgrades, opaque TCP, bad input and graceful shutdown.

use http::Version;
use http_body_util::BodyExt;
use mesh_tests::fixtures::*;
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[tokio::test]
async fn http1_and_http2_are_forwarded_and_counted() {
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let app = app().await;
        let proxy = proxy(app, |_| {}).await;
        let (status, body, _) = send(version, proxy.addrs.outbound, "/").await;
        assert_eq!((status, body.as_str()), (200, "hello"), "{version:?}");
        let (status, _, _) = send(version, proxy.addrs.outbound, "/fail").await;
        assert_eq!(status, 500);

        let metrics = proxy.metrics().await;
        let target = format!(
            r#"authority="app.test:8080",target_addr="{app}",tls="no_identity",no_tls_reason="disabled""#
        );
        for line in [
            format!(r#"request_total{{direction="outbound",{target}}} 2"#),
            format!(
                r#"response_total{{direction="outbound",{target},classification="success",status_code="200"}} 1"#
            ),
            format!(
                r#"response_total{{direction="outbound",{target},classification="failure",status_code="500"}} 1"#
            ),
            format!(
                r#"response_latency_ms_count{{direction="outbound",{target},classification="success",status_code="200"}} 1"#
            ),
            format!(r#"tcp_open_total{{direction="outbound",target_addr="{app}"}} 2"#),
        ] {
            assert!(
                metrics.contains(&line),
                "{version:?}: missing {line}\n{metrics}"
            );
        }
    }
}

#[tokio::test]
async fn http1_keep_alive_reuses_one_client_connection() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    let mut client = h1(proxy.addrs.outbound).await;
    for _ in 0..5 {
        let rsp = client
            .send_request(request(Version::HTTP_11, "/"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.unwrap();
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"tcp_open_total{{direction="outbound",target_addr="{app}"}} 1"#
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn inbound_forwards_to_the_application_on_loopback_at_the_original_port() {
    let app = app().await;
    let pod_addr: SocketAddr = format!("10.244.0.9:{}", app.port()).parse().unwrap();
    let proxy = proxy(pod_addr, |_| {}).await;
    let (status, body, _) = send(Version::HTTP_11, proxy.addrs.inbound, "/").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert!(proxy
        .metrics()
        .await
        .contains(r#"request_total{direction="inbound",authority="app.test:8080""#));
}

#[tokio::test]
async fn grpc_status_classifies_responses() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    for path in ["/grpc/ok", "/grpc/fail", "/grpc/trailers-only"] {
        let (status, _, _) = send(Version::HTTP_2, proxy.addrs.outbound, path).await;
        assert_eq!(status, 200);
    }
    let metrics = proxy.metrics().await;
    for (class, grpc) in [("success", 0), ("failure", 2), ("failure", 5)] {
        let line =
            format!(r#"classification="{class}",status_code="200",grpc_status="{grpc}"}} 1"#);
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    let reply = raw(
        proxy.addrs.outbound,
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close, x-private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nX-Public: 1\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = reply.rsplit("\r\n\r\n").next().unwrap();
    assert_eq!(seen, "host,x-public");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    let mut io = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    io.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let head = read_head(&mut io).await;
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    io.write_all(b"frames both ways").await.unwrap();
    let mut echo = [0u8; 16];
    io.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"frames both ways");
}

#[tokio::test]
async fn connect_tunnels_pass_through() {
    // An HTTP proxy upstream that answers CONNECT and then echoes the tunnel.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut io, _) = upstream.accept().await.unwrap();
        let head = read_head(&mut io).await;
        assert!(
            head.starts_with(b"CONNECT db.internal:5432 HTTP/1.1\r\n"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        io.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        io.write_all(&buf[..n]).await.unwrap();
    });
    let proxy = proxy(addr, |_| {}).await;
    let mut io = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    io.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    io.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The rest of the answer's head.
    read_head(&mut io).await;
    io.write_all(b"tunnelled").await.unwrap();
    let mut echo = [0u8; 9];
    io.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"tunnelled");
}

#[tokio::test]
async fn malformed_http_gets_400_and_a_clean_close() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    let reply = raw(
        proxy.addrs.outbound,
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    // The proxy is still healthy afterwards.
    assert_eq!(get_h1(proxy.addrs.outbound, "/").await.0, 200);
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let app = app().await;
    let proxy = proxy(app, |c| c.max_header_bytes = 8_192).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(20_000)
    );
    let reply = raw(proxy.addrs.outbound, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");

    // HTTP/2: the header list limit refuses the stream.
    let mut client = h2(proxy.addrs.outbound).await;
    let mut req = request(Version::HTTP_2, "/");
    req.headers_mut()
        .insert("x-big", "x".repeat(20_000).parse().unwrap());
    let refused = match client.send_request(req).await {
        Ok(rsp) => rsp.status() == 431,
        Err(_) => true,
    };
    assert!(
        refused,
        "an oversized HTTP/2 header list must not reach the application"
    );
}

#[tokio::test]
async fn a_stalled_client_is_dropped_after_the_header_timeout() {
    let app = app().await;
    let proxy = proxy(app, |c| c.header_read_timeout = Duration::from_millis(200)).await;
    let mut io = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    io.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap(); // and never the blank line
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the proxy must drop a client that stalls in its headers"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502_for_http_and_a_reset_for_tcp() {
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = proxy(gone, |c| c.detect_timeout = Duration::from_millis(100)).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let (status, body, headers) = send(version, proxy.addrs.outbound, "/").await;
        assert_eq!(status, 502, "{version:?}");
        assert!(
            headers["mesh-proxy-error"]
                .to_str()
                .unwrap()
                .contains("refused"),
            "{headers:?}"
        );
        assert!(body.contains("refused"), "{body}");
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"classification="failure",status_code="502",error="connect"} 2"#),
        "{metrics}"
    );

    let mut io = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    io.write_all(b"\x00opaque bytes").await.unwrap();
    let mut buf = [0u8; 8];
    let read = io.read(&mut buf).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {read:?}"
    );
}

#[tokio::test]
async fn opaque_ports_forward_server_first_protocols_at_once() {
    // A server that speaks first, like SMTP or MySQL.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = server.accept().await {
            tokio::spawn(async move {
                io.write_all(b"220 ready\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = io.read(&mut buf).await.unwrap();
                io.write_all(&buf[..n]).await.unwrap();
            });
        }
    });
    let opaque = addr.port().to_string();
    let proxy = proxy(addr, |c| {
        c.outbound_opaque_ports = opaque.parse().unwrap();
        c.detect_timeout = Duration::from_secs(60);
    })
    .await;
    let mut io = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut greeting))
        .await
        .expect("an opaque port never waits for detection")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    io.write_all(b"HELO").await.unwrap();
    let mut echo = [0u8; 4];
    io.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO");
}

#[tokio::test]
async fn a_silent_client_on_another_port_is_opaque_after_the_detect_timeout() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut io, _) = server.accept().await.unwrap();
        io.write_all(b"hello first\n").await.unwrap();
    });
    let proxy = proxy(addr, |c| c.detect_timeout = Duration::from_millis(200)).await;
    let mut io = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    let mut greeting = String::new();
    io.read_to_string(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello first\n");
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    let mut clients = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let addr = proxy.addrs.outbound;
        clients.push(tokio::spawn(
            async move { send(version, addr, "/slow").await },
        ));
    }
    // Both requests are in flight (the handler takes 300 ms) once the proxy counted them.
    let both = format!(
        r#"request_total{{direction="outbound",authority="app.test:8080",target_addr="{app}",tls="no_identity",no_tls_reason="disabled"}} 2"#
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metrics().await.contains(&both)
        })
        .await
    );
    proxy.drain.start();
    for client in clients {
        let (status, body, _) = client.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slow"));
    }
    assert!(
        proxy.drain.wait(Duration::from_secs(5)).await,
        "drained within the grace period"
    );
    // New connections are no longer accepted.
    let refused = tokio::time::timeout(Duration::from_secs(2), async {
        match TcpStream::connect(proxy.addrs.outbound).await {
            Err(_) => true,
            Ok(mut io) => {
                let mut buf = [0u8; 1];
                let _ = io.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
                matches!(io.read(&mut buf).await, Ok(0) | Err(_))
            }
        }
    })
    .await;
    assert_eq!(refused, Ok(true));
}

#[tokio::test]
async fn post_shutdown_from_loopback_starts_a_graceful_shutdown() {
    let app = app().await;
    let proxy = proxy(app, |_| {}).await;
    assert_eq!(get_h1(proxy.addrs.admin, "/ready").await.0, 200);
    let mut admin = h1(proxy.addrs.admin).await;
    let req = http::Request::post("/shutdown")
        .header("host", "localhost")
        .body(http_body_util::Empty::new().boxed())
        .unwrap();
    assert_eq!(admin.send_request(req).await.unwrap().status(), 202);
    assert!(proxy.drain.is_draining());
    assert_eq!(
        get_h1(proxy.addrs.admin, "/ready").await.0,
        503,
        "not ready while draining"
    );
    assert!(proxy.drain.wait(Duration::from_secs(5)).await);
}

#[test]
fn the_binary_refuses_an_invalid_variable_and_names_it() {
    let proxy = mesh_cli::local::binary("mesh-proxy").expect("the mesh-proxy binary");
    for (var, value, expected) in [
        ("MESH_PROXY_DETECT_TIMEOUT", "soon", "expected a duration"),
        (
            "MESH_PROXY_INBOUND_OPAQUE_PORTS",
            "25,mysql",
            "expected a comma-separated list",
        ),
        ("MESH_PROXY_LOG_FORMAT", "yaml", "expected plain or json"),
        ("MESH_PROXY_LOG", "info,[", "expected a tracing filter"),
    ] {
        let out = std::process::Command::new(&proxy)
            .env("MESH_PROXY_IDENTITY_DISABLED", "true")
            .env(var, value)
            .output()
            .expect("run mesh-proxy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains(expected),
            "{var}={value}: {stderr}"
        );
    }
    // Without identity configured, and without saying it is off, the proxy does not start.
    let out = std::process::Command::new(&proxy)
        .env_remove("MESH_PROXY_IDENTITY_DISABLED")
        .output()
        .expect("run mesh-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("MESH_PROXY_IDENTITY_NAME")
            && stderr.contains("MESH_PROXY_IDENTITY_DISABLED=true"),
        "{stderr}"
    );
}
