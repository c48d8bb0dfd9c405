//! End to end through two meshed pods: a client application in one pod calls a server
//! application in another by its pod address; the client pod's outbound proxy and the server pod's
//! inbound proxy carry every byte, transparently to both applications. Needs root.

use http::Version;
use http_body_util::BodyExt;
use mesh_cli::local::{require_root, Cluster, MeshOptions, Pod, Proxy, Signal};
use mesh_tests::fixtures::{self, eventually, h1, h2, request, send};
use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The server application's HTTP port and its server-speaks-first port (PostgreSQL's, opaque by
/// default).
const HTTP_PORT: u16 = 8080;
const GREETER_PORT: u16 = 5432;

/// A client pod and a server pod, both meshed, with the test application serving in the server.
struct Mesh {
    client: Pod,
    server: Pod,
    client_proxy: Proxy,
    server_proxy: Proxy,
    app: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<anyhow::Result<()>>,
    )>,
    // Dropped last: kills what is left and removes the namespaces.
    _cluster: Cluster,
}

impl Mesh {
    fn new(name: &str, env: &[(&str, &str)]) -> Self {
        require_root().expect("end-to-end tests need root and network namespaces");
        let mut cluster = Cluster::new(name).expect("cluster");
        let server = cluster.add_pod("server").expect("server pod");
        let client = cluster.add_pod("client").expect("client pod");

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (up, is_up) = std::sync::mpsc::channel();
        let app = server.run_in(move || {
            runtime().block_on(async move {
                fixtures::app_on(SocketAddr::from(([0, 0, 0, 0], HTTP_PORT))).await;
                greeter(SocketAddr::from(([0, 0, 0, 0], GREETER_PORT))).await;
                let _ = up.send(());
                let _ = stopped.await;
                Ok(())
            })
        });
        is_up
            .recv_timeout(Duration::from_secs(10))
            .expect("the server application starts");

        let opts = MeshOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..MeshOptions::default()
        };
        let server_proxy = server.mesh(opts.clone()).expect("mesh the server pod");
        let client_proxy = client.mesh(opts).expect("mesh the client pod");
        Self {
            client,
            server,
            client_proxy,
            server_proxy,
            app: Some((stop, app)),
            _cluster: cluster,
        }
    }

    fn server_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.server.ip, port))
    }

    /// Runs a client future inside the client pod and returns its output.
    fn in_client<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.client
            .run_in(move || Ok(runtime().block_on(f())))
            .join()
            .expect("the client thread does not panic")
            .expect("the client thread enters the pod")
    }

    fn metrics(proxy: &Proxy) -> String {
        let (status, body) = proxy.admin_get("/metrics").expect("metrics");
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some((stop, app)) = self.app.take() {
            let _ = stop.send(());
            let _ = app.join();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A server that speaks first, like PostgreSQL, SMTP or MySQL: a greeting, then an echo.
async fn greeter(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("greeter binds");
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            tokio::spawn(async move {
                io.write_all(b"220 greeter ready\r\n").await?;
                let mut buf = [0u8; 256];
                loop {
                    let n = io.read(&mut buf).await?;
                    if n == 0 {
                        return io.shutdown().await;
                    }
                    io.write_all(&buf[..n]).await?;
                }
            });
        }
    });
}

/// Requests a proxy has received but not yet answered, in one direction.
fn in_flight(metrics: &str, direction: &str) -> u64 {
    let sum = |family: &str| -> u64 {
        let prefix = format!(r#"{family}{{direction="{direction}""#);
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    sum("request_total").saturating_sub(sum("response_total"))
}

fn assert_has(metrics: &str, line: &str) {
    assert!(metrics.contains(line), "missing {line}\nin:\n{metrics}");
}

#[test]
fn http1_keep_alive_through_two_proxies() {
    let mesh = Mesh::new("e2e-h1", &[]);
    let server = mesh.server_addr(HTTP_PORT);
    let bodies = mesh.in_client(move || async move {
        let mut client = h1(server).await;
        let mut bodies = Vec::new();
        for _ in 0..5 {
            let rsp = client
                .send_request(request(Version::HTTP_11, "/"))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
            bodies.push(
                String::from_utf8_lossy(&rsp.into_body().collect().await.unwrap().to_bytes())
                    .into_owned(),
            );
        }
        bodies
    });
    assert_eq!(bodies, vec!["hello"; 5]);

    let out = Mesh::metrics(&mesh.client_proxy);
    assert_has(
        &out,
        &format!(
            r#"request_total{{direction="outbound",authority="app.test:8080",target_addr="{server}",tls="no_identity",no_tls_reason="disabled"}} 5"#
        ),
    );
    assert_has(
        &out,
        &format!(r#"tcp_open_total{{direction="outbound",target_addr="{server}"}} 1"#),
    );
    let inbound = Mesh::metrics(&mesh.server_proxy);
    assert_has(
        &inbound,
        r#"response_total{direction="inbound",authority="app.test:8080",target_addr="127.0.0.1:8080",tls="no_identity",no_tls_reason="disabled",classification="success",status_code="200"} 5"#,
    );
}

#[test]
fn http2_and_grpc_through_two_proxies() {
    let mesh = Mesh::new("e2e-h2", &[]);
    let server = mesh.server_addr(HTTP_PORT);
    let statuses = mesh.in_client(move || async move {
        let mut client = h2(server).await;
        let mut statuses = Vec::new();
        for path in ["/", "/grpc/ok", "/grpc/fail", "/grpc/fail"] {
            let rsp = client
                .send_request(request(Version::HTTP_2, path))
                .await
                .unwrap();
            let status = rsp.status().as_u16();
            let trailers = rsp.into_body().collect().await.unwrap().trailers().cloned();
            let grpc = trailers.and_then(|t| {
                t.get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_string())
            });
            statuses.push((status, grpc));
        }
        statuses
    });
    let expected = [
        (200, None),
        (200, Some("0".into())),
        (200, Some("2".into())),
        (200, Some("2".into())),
    ];
    assert_eq!(
        statuses, expected,
        "responses and their trailers arrive unchanged"
    );

    for (proxy, direction, target) in [
        (&mesh.client_proxy, "outbound", server.to_string()),
        (
            &mesh.server_proxy,
            "inbound",
            format!("127.0.0.1:{HTTP_PORT}"),
        ),
    ] {
        let m = Mesh::metrics(proxy);
        let labels = format!(
            r#"direction="{direction}",authority="app.test:8080",target_addr="{target}",tls="no_identity",no_tls_reason="disabled""#
        );
        assert_has(
            &m,
            &format!(
                r#"response_total{{{labels},classification="success",status_code="200",grpc_status="0"}} 1"#
            ),
        );
        assert_has(
            &m,
            &format!(
                r#"response_total{{{labels},classification="failure",status_code="200",grpc_status="2"}} 2"#
            ),
        );
        assert_has(
            &m,
            &format!(r#"response_total{{{labels},classification="success",status_code="200"}} 1"#),
        );
    }
}

#[test]
fn websocket_through_two_proxies() {
    let mesh = Mesh::new("e2e-ws", &[]);
    let server = mesh.server_addr(HTTP_PORT);
    let echoed = mesh.in_client(move || async move {
        let mut io = TcpStream::connect(server).await.unwrap();
        io.write_all(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(io.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut echoed = Vec::new();
        for message in ["one", "two", "three"] {
            io.write_all(message.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; message.len()];
            io.read_exact(&mut buf).await.unwrap();
            echoed.push(String::from_utf8(buf).unwrap());
        }
        echoed
    });
    assert_eq!(echoed, ["one", "two", "three"]);
}

#[test]
fn opaque_tcp_with_a_server_that_speaks_first() {
    // A long detection timeout: if the opaque port were not skipped, the greeting would wait for it.
    let mesh = Mesh::new("e2e-tcp", &[("MESH_PROXY_DETECT_TIMEOUT", "60s")]);
    let server = mesh.server_addr(GREETER_PORT);
    let (greeting, echo) = mesh.in_client(move || async move {
        let mut io = TcpStream::connect(server).await.unwrap();
        let mut greeting = [0u8; 19];
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut greeting))
            .await
            .expect("the greeting arrives without waiting for protocol detection")
            .unwrap();
        io.write_all(b"SELECT 1").await.unwrap();
        io.shutdown().await.unwrap(); // half-close: the echo still comes back
        let mut echo = String::new();
        io.read_to_string(&mut echo).await.unwrap();
        (String::from_utf8_lossy(&greeting).into_owned(), echo)
    });
    assert_eq!(
        (greeting.as_str(), echo.as_str()),
        ("220 greeter ready\r\n", "SELECT 1")
    );
    let m = Mesh::metrics(&mesh.client_proxy);
    assert_has(
        &m,
        &format!(
            r#"tcp_read_bytes_total{{direction="outbound",target_addr="{server}",tls="no_identity",no_tls_reason="disabled"}} 8"#
        ),
    );
    assert_has(
        &m,
        &format!(
            r#"tcp_write_bytes_total{{direction="outbound",target_addr="{server}",tls="no_identity",no_tls_reason="disabled"}} 27"#
        ),
    );
}

#[test]
fn graceful_shutdown_with_requests_in_flight_loses_none() {
    let mut mesh = Mesh::new("e2e-drain", &[]);
    let server = mesh.server_addr(HTTP_PORT);
    for side in ["inbound", "outbound"] {
        // Eight slow requests (2 s each) on their own connections, half HTTP/1, half HTTP/2.
        let client = mesh.client.clone();
        let requests = client.run_in(move || {
            Ok(runtime().block_on(async move {
                let calls = (0..8).map(|i| {
                    let version = if i % 2 == 0 {
                        Version::HTTP_11
                    } else {
                        Version::HTTP_2
                    };
                    tokio::spawn(async move { send(version, server, "/slow?ms=2000").await })
                });
                let mut results = Vec::new();
                for call in calls.collect::<Vec<_>>() {
                    let (status, body, _) = call.await.unwrap();
                    results.push((status, body));
                }
                results
            }))
        });
        let proxy = if side == "inbound" {
            &mut mesh.server_proxy
        } else {
            &mut mesh.client_proxy
        };
        let direction = if side == "inbound" {
            "inbound"
        } else {
            "outbound"
        };
        let seen = runtime().block_on(eventually(Duration::from_secs(10), || {
            let m = Mesh::metrics(proxy);
            async move { in_flight(&m, direction) >= 8 }
        }));
        assert!(
            seen,
            "{side}: the 8 requests reached the proxy:\n{}",
            Mesh::metrics(proxy)
        );

        let signalled = Instant::now();
        proxy.signal(Signal::SIGTERM).expect("SIGTERM");
        let results = requests.join().unwrap().unwrap();
        assert_eq!(
            results,
            vec![(200, "slow".to_string()); 8],
            "{side}: every request in flight completed"
        );
        let status = proxy
            .wait_timeout(Duration::from_secs(10))
            .expect("wait")
            .expect("the proxy exits");
        assert!(status.success(), "{side}: clean exit, got {status}");
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "{side}: exited well before the grace period"
        );

        // The server pod's proxy is gone, so the next round (outbound) needs a fresh one.
        if side == "inbound" {
            mesh.server_proxy = mesh
                .server
                .mesh(MeshOptions::default())
                .expect("re-mesh the server");
        }
    }
}
