//! The demo app in process, on 127.0.0.1: the gRPC services called directly and through the web
//! front end, back ends going away and coming back, the bot, and shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_demo_app::net::{Resolve, Target};
use mesh_demo_app::{bot, emoji, redis, voting, web};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A bound on anything that should finish, so that a bug fails the test instead of hanging it.
/// Not a timing assertion: generous for a loaded machine.
const HANG: Duration = Duration::from_secs(60);

/// A running server and the way to stop it.
struct Running<T> {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    /// Signals shutdown and waits for the serve future to end.
    async fn stop(self) -> T {
        let _ = self.stop.send(());
        tokio::time::timeout(HANG, self.task)
            .await
            .expect("the serve future ends after shutdown")
            .expect("the serve task does not panic")
    }
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn shutdown() -> (oneshot::Sender<()>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn start_emoji_on(listener: TcpListener) -> Running<()> {
    let addr = listener.local_addr().unwrap();
    let (stop, signal) = shutdown();
    let task = tokio::spawn(emoji::serve(listener, signal));
    Running { addr, stop, task }
}

async fn start_emoji() -> Running<()> {
    start_emoji_on(listener().await).await
}

/// A Redis for a voting service, serving until the test ends.
async fn start_redis() -> Target {
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(redis::serve(listener, std::future::pending()));
    Target::redis(&addr.to_string(), &Resolve::default()).unwrap()
}

async fn start_voting() -> Running<()> {
    start_voting_with(voting::Config::new(start_redis().await)).await
}

async fn start_voting_with(config: voting::Config) -> Running<()> {
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let (stop, signal) = shutdown();
    let task = tokio::spawn(voting::serve(listener, config, signal));
    Running { addr, stop, task }
}

/// The web front end, calling the back ends by name (`emoji.test`, `voting.test`) pinned to
/// their addresses with `--resolve`.
async fn start_web(emoji: SocketAddr, voting: SocketAddr, timeout: Duration) -> Running<()> {
    start_web_release(emoji, voting, timeout, web::DEFAULT_RELEASE).await
}

async fn start_web_release(
    emoji: SocketAddr,
    voting: SocketAddr,
    timeout: Duration,
    release: &str,
) -> Running<()> {
    let resolve = Resolve::new([
        Resolve::parse_entry(&format!("emoji.test={}", emoji.ip())).unwrap(),
        Resolve::parse_entry(&format!("voting.test={}", voting.ip())).unwrap(),
    ]);
    let config = web::Config {
        emoji: Target::new(&format!("http://emoji.test:{}", emoji.port()), &resolve).unwrap(),
        voting: Target::new(&format!("http://voting.test:{}", voting.port()), &resolve).unwrap(),
        timeout,
        release: release.into(),
    };
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let (stop, signal) = shutdown();
    let task = tokio::spawn(web::serve(listener, config, signal));
    Running { addr, stop, task }
}

struct App {
    emoji: Running<()>,
    voting: Running<()>,
    web: Running<()>,
}

async fn start_app() -> App {
    let emoji = start_emoji().await;
    let voting = start_voting().await;
    let web = start_web(emoji.addr, voting.addr, Duration::from_secs(10)).await;
    App { emoji, voting, web }
}

impl App {
    async fn stop(self) {
        self.web.stop().await;
        self.voting.stop().await;
        self.emoji.stop().await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Version {
    Http1,
    Http2,
}

/// One request to the web front end on a new connection: the status and the body as JSON (or
/// as a string when it is not JSON).
async fn http(
    addr: SocketAddr,
    version: Version,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Value) {
    let (status, _, body) = http_raw(addr, version, method, path, body).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, value)
}

async fn http_raw(
    addr: SocketAddr,
    version: Version,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let call = async {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let mut req = Request::builder()
            .method(method)
            .header("content-type", "application/x-www-form-urlencoded");
        let rsp = match version {
            Version::Http1 => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                req = req
                    .uri(path)
                    .header("host", format!("web.test:{}", addr.port()));
                send.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
                    .await
                    .unwrap()
            }
            Version::Http2 => {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                req = req.uri(format!("http://web.test:{}{path}", addr.port()));
                send.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
                    .await
                    .unwrap()
            }
        };
        let (parts, body) = rsp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    };
    tokio::time::timeout(HANG, call)
        .await
        .expect("the web answers")
}

/// A raw gRPC call over HTTP/2: the response's status, headers, body and trailers.
struct GrpcAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl GrpcAnswer {
    /// `grpc-status` from the trailers, or from the headers of a trailers-only answer.
    fn grpc_status(&self) -> Option<String> {
        let from = |h: &HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
    }
}

async fn grpc_raw(addr: SocketAddr, path: &str, content_type: &str, body: Bytes) -> GrpcAnswer {
    let call = async {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::post(format!("http://voting.test{path}"))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(body))
            .unwrap();
        let rsp: Response<_> = send.send_request(req).await.unwrap();
        let (parts, body) = rsp.into_parts();
        let collected = body.collect().await.unwrap();
        GrpcAnswer {
            status: parts.status,
            headers: parts.headers,
            trailers: collected.trailers().cloned(),
            body: collected.to_bytes(),
        }
    };
    tokio::time::timeout(HANG, call)
        .await
        .expect("the server answers")
}

fn framed(message: &[u8]) -> Bytes {
    mesh_demo_app::grpc::frame(message)
}

// === the web API ===

#[tokio::test]
async fn list_returns_the_emojis() {
    let app = start_app().await;
    for version in [Version::Http1, Version::Http2] {
        let (status, list) = http(app.web.addr, version, Method::GET, "/api/list", "").await;
        assert_eq!(status, StatusCode::OK, "{version:?}: {list}");
        let list = list.as_array().expect("a JSON array");
        assert_eq!(list.len(), emoji::EMOJIS.len(), "{version:?}");
        assert!(
            list.iter()
                .any(|e| e["shortcode"] == ":doughnut:" && e["unicode"] == "🍩"),
            "{version:?}: {list:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_vote_counts_on_the_leaderboard() {
    let app = start_app().await;
    let web = app.web.addr;
    let (status, body) = http(
        web,
        Version::Http1,
        Method::POST,
        "/api/vote?choice=joy",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["voted"], ":joy:");
    assert_eq!(body["unicode"], "😂");
    // GET, HTTP/2, the choice with its colons.
    let (status, body) = http(
        web,
        Version::Http2,
        Method::GET,
        "/api/vote?choice=%3Ajoy%3A",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The choice in a form body.
    let (status, body) = http(
        web,
        Version::Http1,
        Method::POST,
        "/api/vote",
        "choice=rocket",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, board) = http(web, Version::Http1, Method::GET, "/api/leaderboard", "").await;
    assert_eq!(status, StatusCode::OK, "{board}");
    let board: Vec<(String, String, u64)> = board
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["shortcode"].as_str().unwrap().to_owned(),
                r["unicode"].as_str().unwrap().to_owned(),
                r["votes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        board,
        [
            (":joy:".to_owned(), "😂".to_owned(), 2),
            (":rocket:".to_owned(), "🚀".to_owned(), 1)
        ]
    );

    // The page shows the buttons and the leaderboard.
    let (status, headers, page) = http_raw(web, Version::Http1, Method::GET, "/", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.contains("value=\":doughnut:\""), "{page}");
    assert!(page.contains("<td>:joy:</td><td>2</td>"), "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_doughnut_vote_fails_with_grpc_status_2() {
    let app = start_app().await;
    let (status, body) = http(
        app.web.addr,
        Version::Http1,
        Method::POST,
        "/api/vote?choice=doughnut",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["grpc_status"], 2, "{body}");
    assert!(
        body["grpc_message"]
            .as_str()
            .unwrap()
            .contains("on purpose"),
        "{body}"
    );

    // Directly: HTTP 200, then grpc-status 2 in the trailers.
    let rsp = grpc_raw(
        app.voting.addr,
        "/demo.Voting/VoteDoughnut",
        "application/grpc",
        framed(b""),
    )
    .await;
    assert_eq!(rsp.status, StatusCode::OK);
    let trailers = rsp.trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "2");
    assert!(
        trailers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("on%20purpose")
            || trailers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("on purpose")
    );
    assert!(rsp.headers.get("grpc-status").is_none());

    // The doughnut never makes the leaderboard.
    let (_, board) = http(
        app.web.addr,
        Version::Http1,
        Method::GET,
        "/api/leaderboard",
        "",
    )
    .await;
    assert_eq!(board, serde_json::json!([]));

    // The browser's form: back to the page, which says what went wrong.
    let (status, headers, _) = http_raw(
        app.web.addr,
        Version::Http1,
        Method::POST,
        "/vote",
        "choice=%3Adoughnut%3A",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/?failed="), "{location}");
    let (_, _, page) = http_raw(app.web.addr, Version::Http1, Method::GET, &location, "").await;
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.contains("Your vote for 🍩 failed"), "{page}");
    app.stop().await;
}

#[tokio::test]
async fn unavailable_calls_are_trailers_only_and_the_doughnut_is_not() {
    let voting = start_voting_with(voting::Config {
        unavailable_percent: 50,
        ..voting::Config::new(start_redis().await)
    })
    .await;
    // Every other call is refused: the first is answered, the second refused.
    let joy = grpc_raw(
        voting.addr,
        "/demo.Voting/VoteJoy",
        "application/grpc",
        framed(b""),
    )
    .await;
    assert_eq!(joy.grpc_status().as_deref(), Some("0"));
    let refused = grpc_raw(
        voting.addr,
        "/demo.Voting/VoteJoy",
        "application/grpc",
        framed(b""),
    )
    .await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.headers["grpc-status"], "14", "in the headers");
    assert!(
        refused.headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("transient"),
        "{:?}",
        refused.headers
    );
    assert!(refused.body.is_empty(), "no message");
    assert!(
        refused.trailers.is_none(),
        "no trailers: {:?}",
        refused.trailers
    );

    // The doughnut's failure is an answer, status in the trailers, whatever the share refused.
    let doughnut = grpc_raw(
        voting.addr,
        "/demo.Voting/VoteDoughnut",
        "application/grpc",
        framed(b""),
    )
    .await;
    assert!(doughnut.headers.get("grpc-status").is_none());
    assert_eq!(doughnut.trailers.expect("trailers")["grpc-status"], "2");

    // Through the web front end, a refused vote is a 500 that names the status.
    let emoji = start_emoji().await;
    let web = start_web(emoji.addr, voting.addr, Duration::from_secs(10)).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (status, body) = http(
            web.addr,
            Version::Http1,
            Method::POST,
            "/api/vote?choice=joy",
            "",
        )
        .await;
        statuses.push((status, body["grpc_status"].clone()));
    }
    statuses.sort_by_key(|(s, _)| *s);
    assert_eq!(
        statuses,
        [
            (StatusCode::OK, Value::Null),
            (StatusCode::INTERNAL_SERVER_ERROR, Value::from(14))
        ]
    );
    web.stop().await;
    emoji.stop().await;
    voting.stop().await;
}

#[tokio::test]
async fn a_canary_names_its_release() {
    let emoji = start_emoji().await;
    let voting = start_voting().await;
    let v1 = start_web(emoji.addr, voting.addr, Duration::from_secs(10)).await;
    let v2 = start_web_release(emoji.addr, voting.addr, Duration::from_secs(10), "v2").await;
    for (web, release) in [(&v1, "v1"), (&v2, "v2")] {
        for path in ["/", "/api/list", "/nowhere"] {
            let (_, headers, body) =
                http_raw(web.addr, Version::Http2, Method::GET, path, "").await;
            assert_eq!(headers["x-demo-release"], release, "{path}");
            if path == "/" {
                let page = String::from_utf8(body.to_vec()).unwrap();
                assert!(page.contains(&format!("web {release}")), "{page}");
            }
        }
    }
    v2.stop().await;
    v1.stop().await;
    voting.stop().await;
    emoji.stop().await;
}

#[tokio::test]
async fn unknown_emoji_and_paths_are_404() {
    let app = start_app().await;
    let web = app.web.addr;
    let (status, body) = http(
        web,
        Version::Http1,
        Method::POST,
        "/api/vote?choice=alpaca",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["choice"], ":alpaca:");
    let (status, body) = http(web, Version::Http2, Method::GET, "/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = http(web, Version::Http1, Method::POST, "/api/vote", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http(web, Version::Http1, Method::DELETE, "/api/list", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let big = format!("x={}", "a".repeat(web::MAX_BODY + 1));
    let (status, _) = http(web, Version::Http1, Method::POST, "/api/vote", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = http(web, Version::Http1, Method::GET, "/healthz", "").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, Value::String("ok\n".into()))
    );
    app.stop().await;
}

// === the gRPC services, called directly ===

#[tokio::test]
async fn bad_grpc_input_is_answered() {
    let voting = start_voting().await;
    let emoji = start_emoji().await;
    let check = |rsp: GrpcAnswer, expected: &str, what: &str| {
        assert_eq!(rsp.status, StatusCode::OK, "{what}");
        assert_eq!(rsp.grpc_status().as_deref(), Some(expected), "{what}");
    };
    check(
        grpc_raw(
            voting.addr,
            "/demo.Voting/VoteAlpaca",
            "application/grpc",
            framed(b""),
        )
        .await,
        "12",
        "unknown method",
    );
    check(
        grpc_raw(
            emoji.addr,
            "/demo.Nope/ListAll",
            "application/grpc",
            framed(b""),
        )
        .await,
        "12",
        "unknown service",
    );
    check(
        grpc_raw(
            voting.addr,
            "/demo.Voting/VoteJoy",
            "application/grpc",
            Bytes::from_static(&[0, 0, 0, 0, 9, 1]),
        )
        .await,
        "3",
        "a frame shorter than its prefix says",
    );
    check(
        grpc_raw(
            voting.addr,
            "/demo.Voting/VoteJoy",
            "application/grpc",
            Bytes::from_static(&[0, 0]),
        )
        .await,
        "3",
        "a truncated prefix",
    );
    check(
        grpc_raw(
            emoji.addr,
            "/demo.Emoji/FindByShortcode",
            "application/grpc",
            framed(&[0x0a, 0x7f, b'x']),
        )
        .await,
        "3",
        "malformed protobuf",
    );
    check(
        grpc_raw(
            voting.addr,
            "/demo.Voting/VoteJoy",
            "application/grpc",
            framed(&vec![0u8; 1024 * 1024 + 1]),
        )
        .await,
        "8",
        "an oversized message",
    );
    check(
        grpc_raw(
            emoji.addr,
            "/demo.Emoji/FindByShortcode",
            "application/grpc+proto",
            framed(b"\x0a\x08:unicorn"),
        )
        .await,
        "5",
        "an emoji that is not there",
    );
    let ok = grpc_raw(
        emoji.addr,
        "/demo.Emoji/ListAll",
        "application/grpc",
        framed(b""),
    )
    .await;
    assert_eq!(ok.trailers.as_ref().unwrap()["grpc-status"], "0");
    assert!(ok.body.len() > 5);

    let rsp = grpc_raw(
        voting.addr,
        "/demo.Voting/VoteJoy",
        "application/json",
        framed(b""),
    )
    .await;
    assert_eq!(rsp.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    voting.stop().await;
    emoji.stop().await;
}

// === back ends going away ===

#[tokio::test]
async fn a_back_end_that_is_down_is_503_and_recovers() {
    // A port with nothing listening: connections are refused.
    let emoji_listener = listener().await;
    let emoji_addr = emoji_listener.local_addr().unwrap();
    drop(emoji_listener);
    let voting = start_voting().await;
    let web = start_web(emoji_addr, voting.addr, Duration::from_secs(10)).await;

    let (status, body) = http(web.addr, Version::Http1, Method::GET, "/api/list", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["backend"], "emoji", "{body}");
    let (status, _) = http(
        web.addr,
        Version::Http1,
        Method::POST,
        "/api/vote?choice=joy",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // The emoji service comes back on the same port; the next call connects again.
    let emoji = match TcpListener::bind(emoji_addr).await {
        Ok(l) => start_emoji_on(l).await,
        Err(e) => panic!("rebinding {emoji_addr}: {e}"),
    };
    let (status, body) = http(web.addr, Version::Http1, Method::GET, "/api/list", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // It goes away again while the web holds a connection to it.
    emoji.stop().await;
    let (status, body) = http(web.addr, Version::Http1, Method::GET, "/api/list", "").await;
    assert!(
        [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
        "{status}: {body}"
    );
    web.stop().await;
    voting.stop().await;
}

#[tokio::test]
async fn a_back_end_that_does_not_answer_is_504() {
    // Accepts connections and never says anything.
    let silent = listener().await;
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let emoji = start_emoji().await;
    let web = start_web(emoji.addr, silent_addr, Duration::from_millis(300)).await;
    let (status, body) = http(
        web.addr,
        Version::Http2,
        Method::GET,
        "/api/leaderboard",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["backend"], "voting");
    let (status, _) = http(
        web.addr,
        Version::Http1,
        Method::POST,
        "/api/vote?choice=joy",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // The list does not need the voting service.
    let (status, _) = http(web.addr, Version::Http1, Method::GET, "/api/list", "").await;
    assert_eq!(status, StatusCode::OK);
    accept.abort();
    web.stop().await;
    emoji.stop().await;
}

/// voting keeps the votes in Redis: while Redis is away, votes and the leaderboard fail with
/// UNAVAILABLE and voting goes on serving; once Redis is back, votes count again.
#[tokio::test]
async fn votes_fail_while_redis_is_away_and_count_once_it_is_back() {
    // A port nobody listens on, for now.
    let redis_addr = listener().await.local_addr().unwrap();
    let target = Target::redis(&redis_addr.to_string(), &Resolve::default()).unwrap();
    let emoji = start_emoji().await;
    let voting = start_voting_with(voting::Config::new(target)).await;
    let web = start_web(emoji.addr, voting.addr, Duration::from_secs(10)).await;
    let vote = || {
        http(
            web.addr,
            Version::Http1,
            Method::POST,
            "/api/vote?choice=joy",
            "",
        )
    };
    let (status, body) = vote().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["grpc_status"], 14, "{body}");
    let (status, body) = http(
        web.addr,
        Version::Http1,
        Method::GET,
        "/api/leaderboard",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["grpc_status"], 14, "{body}");

    let redis = TcpListener::bind(redis_addr).await.unwrap();
    let (stop_redis, signal) = shutdown();
    let redis = tokio::spawn(redis::serve(redis, signal));
    let (status, body) = vote().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, board) = http(
        web.addr,
        Version::Http1,
        Method::GET,
        "/api/leaderboard",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(board[0]["shortcode"], ":joy:", "{board}");
    assert_eq!(board[0]["votes"], 1, "{board}");

    let _ = stop_redis.send(());
    tokio::time::timeout(HANG, redis).await.unwrap().unwrap();
    web.stop().await;
    voting.stop().await;
    emoji.stop().await;
}

/// The back ends see the names the web was given as `:authority`, not the pinned addresses.
#[tokio::test]
async fn back_ends_are_called_by_name() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let fake = listener().await;
    let fake_addr = fake.local_addr().unwrap();
    let (stop, signal) = shutdown();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        record
            .lock()
            .unwrap()
            .push((req.version(), req.uri().authority().map(|a| a.to_string())));
        async move {
            let rsp = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .body(Full::new(Bytes::new()))
                .unwrap();
            Ok::<_, std::convert::Infallible>(rsp)
        }
    });
    let task = tokio::spawn(mesh_demo_app::net::serve(fake, svc, signal));
    let web = start_web(fake_addr, fake_addr, Duration::from_secs(10)).await;
    let (status, body) = http(web.addr, Version::Http1, Method::GET, "/api/list", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["grpc_status"], 14);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            http::Version::HTTP_2,
            Some(format!("emoji.test:{}", fake_addr.port()))
        )]
    );
    web.stop().await;
    let _ = stop.send(());
    tokio::time::timeout(HANG, task).await.unwrap().unwrap();
}

// === the bot ===

#[tokio::test]
async fn the_bot_votes_with_both_outcomes() {
    let app = start_app().await;
    let resolve = Resolve::new([Resolve::parse_entry("web.test=127.0.0.1").unwrap()]);
    let mut config = bot::Config::new(
        Target::new(
            &format!("http://web.test:{}", app.web.addr.port()),
            &resolve,
        )
        .unwrap(),
    );
    config.rate = 200.0;
    config.requests = Some(60);
    config.seed = Some(42);
    let (_stop, signal) = shutdown();
    let stats = tokio::time::timeout(HANG, bot::run(config, signal))
        .await
        .expect("the bot stops after its requests");
    assert_eq!(stats.sent, 60);
    assert_eq!(stats.ok + stats.failed, 60);
    assert!(stats.ok > 0, "{stats:?}");
    assert!(stats.failed > 0, "{stats:?}");

    // The failures are the doughnut's: the web saw them as 500s, not as broken connections.
    let (_, board) = http(
        app.web.addr,
        Version::Http1,
        Method::GET,
        "/api/leaderboard",
        "",
    )
    .await;
    let counted: u64 = board
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["votes"].as_u64().unwrap())
        .sum();
    assert!(counted > 0 && counted < 60, "{counted}");
    app.stop().await;
}

#[tokio::test]
async fn the_bot_retries_when_web_is_down() {
    // Nothing listens: every request fails, and the bot backs off and tries again.
    let gone = listener().await;
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let target = Target::new(&format!("http://{addr}"), &Resolve::default()).unwrap();
    let mut config = bot::Config::new(target);
    config.rate = 100.0;
    config.requests = Some(4);
    let (_stop, signal) = shutdown();
    let stats = tokio::time::timeout(HANG, bot::run(config, signal))
        .await
        .expect("the bot stops after its requests");
    assert_eq!(
        stats,
        bot::Stats {
            sent: 4,
            ok: 0,
            failed: 4
        }
    );
}

#[tokio::test]
async fn the_bot_stops_on_shutdown() {
    let app = start_app().await;
    let target = Target::new(&format!("http://{}", app.web.addr), &Resolve::default()).unwrap();
    let mut config = bot::Config::new(target);
    config.rate = 50.0;
    let (stop, signal) = shutdown();
    let bot = Running {
        addr: app.web.addr,
        stop,
        task: tokio::spawn(bot::run(config, signal)),
    };
    // Wait (polling, with a deadline) until its votes show on the leaderboard.
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let (_, board) = http(
            app.web.addr,
            Version::Http1,
            Method::GET,
            "/api/leaderboard",
            "",
        )
        .await;
        if board.as_array().is_some_and(|b| !b.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no votes from the bot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = bot.stop().await;
    assert!(stats.sent > 0 && stats.ok > 0, "{stats:?}");
    app.stop().await;
}

// === shutdown ===

#[tokio::test]
async fn shutdown_ends_every_serve_future() {
    let app = start_app().await;
    // An open idle HTTP/1 keep-alive connection to web does not hold the shutdown.
    let idle = TcpStream::connect(app.web.addr).await.unwrap();
    let (status, _) = http(app.web.addr, Version::Http2, Method::GET, "/api/list", "").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
    drop(idle);
}
