//! Test fixtures shared by the in-process and the end-to-end tests: the real proxy on ephemeral
//! loopback ports with a fixed original destination, a test application (HTTP/1, HTTP/2,
//! gRPC-shaped responses, WebSocket-style upgrades), and small clients.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::{config::Config, drain::Drain, orig_dst::OriginalDst, Started};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running in-process proxy.
pub struct TestProxy {
    pub addrs: Started,
    pub drain: Drain,
}

/// Starts the proxy on ephemeral loopback ports; every connection is taken as redirected from
/// `original_dst` (inbound forwards to 127.0.0.1 at its port). Identity is off unless `tweak`
/// sets it.
pub async fn proxy(original_dst: SocketAddr, tweak: impl FnOnce(&mut Config)) -> TestProxy {
    let mut config =
        Config::from_env(|var| (var == "MESH_PROXY_IDENTITY_DISABLED").then(|| "true".to_string()))
            .expect("defaults are valid");
    config.inbound_addr = "127.0.0.1:0".parse().unwrap();
    config.outbound_addr = "127.0.0.1:0".parse().unwrap();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    tweak(&mut config);
    let drain = Drain::new();
    let addrs = mesh_proxy::start_with(
        &config,
        drain.clone(),
        [OriginalDst::Fixed(original_dst); 2],
    )
    .await
    .expect("proxy starts");
    TestProxy { addrs, drain }
}

impl TestProxy {
    pub async fn metrics(&self) -> String {
        let (status, body) = get_h1(self.addrs.admin, "/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

/// Starts the test application on an ephemeral loopback port; it speaks HTTP/1 and HTTP/2.
pub async fn app() -> SocketAddr {
    app_on("127.0.0.1:0".parse().unwrap()).await
}

/// Starts the test application on `addr`. Paths: `/` says hello, `/slow` answers after 300 ms (`/slow?ms=N`: N ms),
/// `/fail` is a 500, `/headers` lists the request's header names, `/header?name=N` returns the
/// value of header N, `/echo` returns the body,
/// `/grpc/ok`, `/grpc/fail` (grpc-status 2 in trailers), `/grpc/trailers-only` (grpc-status 5 in
/// headers), and `/ws` switches protocols and echoes bytes. Every response names the server in
/// a `server-addr` header.
pub async fn app_on(addr: SocketAddr) -> SocketAddr {
    app_with_delay(addr, Duration::ZERO).await
}

/// [`app_on`], answering every request `delay` late: a slow endpoint.
pub async fn app_with_delay(addr: SocketAddr, delay: Duration) -> SocketAddr {
    named_app(addr, delay, None).await
}

/// [`app_with_delay`], naming itself `name` in the `server-addr` header (default: its address).
pub async fn named_app(addr: SocketAddr, delay: Duration, name: Option<&str>) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name: http::HeaderValue = name
        .map_or_else(|| addr.to_string(), str::to_string)
        .parse()
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let name = name.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut rsp = handle(req).await?;
                        rsp.headers_mut().insert("server-addr", name);
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    addr
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let rsp = match path.as_str() {
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok());
            tokio::time::sleep(Duration::from_millis(ms.unwrap_or(300))).await;
            text(200, "slow")
        }
        "/fail" => text(500, "failed"),
        "/header" => {
            // `/header?name=N`: the value of request header N (empty when absent).
            let name = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("name="))
                .unwrap_or("");
            let value = req
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            text(200, value)
        }
        "/headers" => {
            let mut seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
            seen.sort();
            text(200, &seen.join(","))
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::new(Full::new(body).boxed())
        }
        "/grpc/ok" | "/grpc/fail" => {
            let status = if path == "/grpc/ok" { "0" } else { "2" };
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", status.parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut rsp =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            rsp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            rsp
        }
        "/grpc/trailers-only" => {
            let mut rsp = Response::new(Empty::new().boxed());
            rsp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            rsp.headers_mut()
                .insert("grpc-status", "5".parse().unwrap());
            rsp
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut rsp = Response::new(Empty::new().boxed());
            *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            rsp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            rsp.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            rsp
        }
        _ => text(200, "hello"),
    };
    Ok(rsp)
}

fn text(status: u16, body: &str) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    rsp
}

/// An HTTP/1 client connection.
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let io = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 (prior knowledge) client connection.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let io = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

pub fn request(version: http::Version, path: &str) -> Request<Body> {
    let uri = match version {
        http::Version::HTTP_2 => format!("http://app.test:8080{path}"),
        _ => path.to_string(),
    };
    Request::builder()
        .uri(uri)
        .header("host", "app.test:8080")
        .body(Empty::new().boxed())
        .unwrap()
}

/// Sends one request on a new HTTP/1 or HTTP/2 connection: status, body and headers.
pub async fn send(
    version: http::Version,
    addr: SocketAddr,
    path: &str,
) -> (u16, String, http::HeaderMap) {
    let req = request(version, path);
    let rsp = match version {
        http::Version::HTTP_2 => h2(addr).await.send_request(req).await.unwrap(),
        _ => h1(addr).await.send_request(req).await.unwrap(),
    };
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// A one-shot HTTP/1 GET: status and body.
pub async fn get_h1(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut sender = h1(addr).await;
    let rsp = sender
        .send_request(request(http::Version::HTTP_11, path))
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends raw bytes and reads until the peer closes: what the proxy answered. Fails when the
/// connection is not closed within 5 s.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the connection was not closed; read so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `io` byte by byte up to and including the blank line that ends an HTTP head, and
/// returns that; what follows stays unread.
pub async fn read_head(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    head
}

/// Polls `f` until it is true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
