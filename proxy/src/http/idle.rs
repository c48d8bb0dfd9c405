//! Idle HTTP/1 server connections, parked without hyper.
//!
//! Hyper's HTTP/1 server keeps an 8 KiB read buffer and an 8 KiB write buffer for the life of a
//! connection, idle or not: 10,000 idle keep-alive connections held 166 MB (issue 17). Like
//! nginx's keep-alive handler, this module lets go of them between requests: once a connection
//! is idle — every response written and flushed, every request body read to its end, nothing
//! buffered, and hyper waiting to read — the hyper connection is taken apart (`into_parts`) and
//! the socket waits for its next byte with no buffer at all ([`Readiness`]). When the client
//! writes again, a new hyper connection takes the socket, with the same service.
//!
//! A connection parks only once it has stayed idle for [`Idle::park_after`]: a keep-alive
//! client under load sends its next request at once, and rebuilding hyper's connection for
//! every request of such a client cost a quarter of the proxy's HTTP/1 throughput.
//!
//! What stays as it was: an idle connection is closed after the header read timeout, as hyper
//! closes one (it counts the wait for the next request's head); shutdown and the connection's
//! close signal close a parked connection at once; an upgrade is hyper's, and ends the loop.
//! A connection whose first request is still arriving never parks (a slowloris' timer is not
//! restarted), nor one whose request body the stack dropped unread (hyper drains or closes it).

use super::server::Readiness;
use crate::{
    io::PrefixedIo,
    svc::{BoxBody, BoxError},
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use std::{
    future::{poll_fn, Future},
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What one connection's requests, bodies and socket say of whether it is idle. Shared by the
/// hyper service (requests), the bodies and the socket's wrapper ([`Watched`]); one task polls
/// all of them, so the atomics are never contended.
#[derive(Debug, Default)]
pub struct Watch {
    /// Requests called whose response has not been written to its end.
    in_flight: AtomicUsize,
    /// Responses written to their end by the current hyper connection.
    served: AtomicUsize,
    /// A request body dropped before its end, or hyper shutting the socket down: never park.
    pinned: AtomicBool,
    /// hyper's last read of the socket found nothing to read.
    read_pending: AtomicBool,
    /// hyper wrote to the socket and has not flushed since.
    unflushed: AtomicBool,
    /// How many times the connection was parked.
    parked: AtomicUsize,
}

impl Watch {
    /// A request arrived: the connection is busy until its response body is dropped.
    pub fn request(self: &Arc<Self>, body: Incoming) -> (RequestBody, Finished) {
        self.in_flight.fetch_add(1, Relaxed);
        let watch = (!body.is_end_stream()).then(|| self.clone());
        (
            RequestBody { inner: body, watch },
            Finished(Some(self.clone())),
        )
    }

    fn idle(&self) -> bool {
        self.served.load(Relaxed) > 0
            && self.in_flight.load(Relaxed) == 0
            && self.read_pending.load(Relaxed)
            && !self.unflushed.load(Relaxed)
            && !self.pinned.load(Relaxed)
    }

    /// How many times the connection waited for a request without hyper.
    pub fn parked(&self) -> usize {
        self.parked.load(Relaxed)
    }

    /// A new hyper connection takes the socket.
    fn restart(&self) {
        self.served.store(0, Relaxed);
        self.read_pending.store(false, Relaxed);
        self.unflushed.store(false, Relaxed);
    }
}

/// A request's body, noting when it has been read to its end.
pub struct RequestBody {
    inner: Incoming,
    /// Until the end: dropped before then, the connection may not park.
    watch: Option<Arc<Watch>>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.watch = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.pinned.store(true, Relaxed);
        }
    }
}

/// Held by a request's response body: its drop (hyper drops a body once written to its end)
/// ends the request.
pub struct Finished(Option<Arc<Watch>>);

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            watch.in_flight.fetch_sub(1, Relaxed);
            watch.served.fetch_add(1, Relaxed);
        }
    }
}

/// A response body that ends its request when hyper drops it.
pub struct ResponseBody {
    inner: BoxBody,
    _finished: Finished,
}

impl ResponseBody {
    pub fn new(inner: BoxBody, finished: Finished) -> Self {
        Self {
            inner,
            _finished: finished,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket as hyper sees it: notes whether its last read found nothing and whether its
/// writes are flushed.
struct Watched<I> {
    io: PrefixedIo<I>,
    watch: Arc<Watch>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        self.watch.read_pending.store(poll.is_pending(), Relaxed);
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.watch.unflushed.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.watch.unflushed.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(poll, Poll::Ready(Ok(()))) {
            self.watch.unflushed.store(false, Relaxed);
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.watch.pinned.store(true, Relaxed);
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// When an idle connection lets go of hyper, and how long it may stay idle in all.
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    /// How long a connection stays idle, holding hyper's connection, before it parks (up to
    /// twice this: see [`serve`]).
    pub park_after: Duration,
    /// How long an idle connection is kept open (parked or not) before it is closed.
    pub timeout: Duration,
}

impl Idle {
    /// 20 ms: a client sending request after request (waiting for each answer) does not
    /// park, and a burst of new connections that then go quiet holds hyper's buffers only
    /// briefly. A connection parks between one and two periods after its last response.
    pub const PARK_AFTER: Duration = Duration::from_millis(20);
}

/// Serves an HTTP/1 connection with `service` (whose requests and bodies report to `watch`),
/// parking it whenever it has been idle for `idle.park_after`, until it closes or `stop`
/// completes (then the requests in flight finish, as hyper's graceful shutdown does).
pub async fn serve<I, S>(
    builder: http1::Builder,
    io: I,
    mut service: S,
    watch: Arc<Watch>,
    idle: Idle,
    mut stop: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Readiness + Send + Unpin + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ResponseBody> + Unpin,
    S::Error: Into<BoxError>,
{
    enum Next {
        Closed(hyper::Result<()>),
        Idle,
        Stop,
    }
    let mut io = PrefixedIo::new(Bytes::new(), io);
    loop {
        watch.restart();
        // Armed when the connection first turns idle, with the count of responses served
        // then. When it fires, an idle connection that has served none since parks; one that
        // has is re-armed. A busy connection thus costs a timer every `park_after`, not one
        // per request. Boxed, and dropped at the park: a parked connection holds no timer but
        // its idle timeout.
        let mut grace: Option<(usize, Pin<Box<tokio::time::Sleep>>)> = None;
        let watched = Watched {
            io,
            watch: watch.clone(),
        };
        // Boxed: a parked connection's future is not as large as hyper's connection.
        let mut conn = Box::new(
            builder
                .serve_connection(TokioIo::new(watched), service)
                .with_upgrades(),
        );
        let next = poll_fn(|cx| {
            if let Poll::Ready(closed) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Next::Closed(closed));
            }
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Next::Stop);
            }
            if !I::PARKS || !watch.idle() {
                return Poll::Pending;
            }
            let served = watch.served.load(Relaxed);
            let (since, timer) = grace
                .get_or_insert_with(|| (served, Box::pin(tokio::time::sleep(idle.park_after))));
            while timer.as_mut().poll(cx).is_ready() {
                if *since == served {
                    return Poll::Ready(Next::Idle);
                }
                // Served a response within the period: idle for less than `park_after`.
                *since = served;
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle.park_after);
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Closed(closed) => return Ok(closed?),
            Next::Stop => {
                Pin::new(&mut *conn).graceful_shutdown();
                return Ok(conn.await?);
            }
            Next::Idle => {}
        }
        drop(grace);
        // Moved out of its box in a block of its own: a box moved out of is freed at the end of
        // its variable's scope, which for `conn` is after the park (680 B per parked
        // connection).
        let parts = {
            let conn = conn;
            (*conn).into_parts()
        };
        let Some(parts) = parts else {
            return Ok(()); // upgraded (not idle: it has ended)
        };
        service = parts.service;
        io = parts.io.into_inner().io;
        if !parts.read_buf.is_empty() {
            // The start of a pipelined request: a new connection goes on reading it.
            io = io.prepend(parts.read_buf);
            continue;
        }
        // Empty, but still hyper's whole read buffer: not kept while parked.
        drop(parts.read_buf);
        watch.parked.fetch_add(1, Relaxed);
        let mut timeout = std::pin::pin!(tokio::time::sleep(
            idle.timeout.saturating_sub(idle.park_after)
        ));
        // Moved in as `&mut`s: the future stays `Send` without `I: Sync`.
        let (parked, stop) = (&mut io, &mut stop);
        let woke = poll_fn(move |cx| {
            if let Poll::Ready(ready) = parked.get_ref().poll_read_ready(cx) {
                return Poll::Ready(Some(ready));
            }
            if stop.as_mut().poll(cx).is_ready() || timeout.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Some(ready) => ready?,
            None => {
                let _ = io.shutdown().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svc::BoxIo;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
        sync::oneshot,
    };

    /// A server of one connection: answers `path body-length`; `/drop` answers without reading
    /// the body.
    struct Server {
        client: TcpStream,
        watch: Arc<Watch>,
        stop: Option<oneshot::Sender<()>>,
        conn: tokio::task::JoinHandle<Result<(), BoxError>>,
    }

    async fn server(timeout: Duration) -> Server {
        server_parking_after(Duration::from_millis(10), timeout).await
    }

    async fn server_parking_after(park_after: Duration, timeout: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, _) = listener.accept().await.unwrap();
        let watch = Arc::new(Watch::default());
        let service = hyper::service::service_fn({
            let watch = watch.clone();
            move |req: Request<Incoming>| {
                let (parts, body) = req.into_parts();
                let (body, finished) = watch.request(body);
                async move {
                    if parts.uri.path().starts_with("/slow") {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let answer = if parts.uri.path() == "/drop" {
                        drop(body);
                        "/drop unread".to_string()
                    } else {
                        let body = body.collect().await.unwrap().to_bytes();
                        format!("{} {}", parts.uri.path(), body.len())
                    };
                    let body = BoxBody::new(Full::new(Bytes::from(answer)));
                    Ok::<_, Infallible>(Response::new(ResponseBody::new(body, finished)))
                }
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(5));
        let (stop, stopped) = oneshot::channel::<()>();
        let stop_fut = Box::pin(async move {
            let _ = stopped.await;
        });
        let conn = tokio::spawn(serve(
            builder,
            BoxIo::new(io),
            service,
            watch.clone(),
            Idle {
                park_after,
                timeout,
            },
            stop_fut,
        ));
        Server {
            client,
            watch,
            stop: Some(stop),
            conn,
        }
    }

    /// Reads responses until `n` bodies have been seen (each answer is one small write).
    async fn read_answers(client: &mut TcpStream, n: usize) -> String {
        let mut seen = String::new();
        while seen.matches("HTTP/1.1 200 OK").count() < n || !complete(&seen, n) {
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("answered within 5 s")
                .unwrap();
            assert!(read > 0, "the server closed the connection; so far: {seen}");
            seen.push_str(std::str::from_utf8(&buf[..read]).unwrap());
        }
        seen
    }

    /// Sends `GET path` and reads its answer.
    async fn get(client: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        read_answers(client, 1).await
    }

    /// Whether the last of `n` answers has its whole body (`content-length`).
    fn complete(seen: &str, n: usize) -> bool {
        let Some(last) = seen.split("HTTP/1.1 200 OK").nth(n) else {
            return false;
        };
        let Some((head, body)) = last.split_once("\r\n\r\n") else {
            return false;
        };
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        body.len() >= len
    }

    async fn parked_at_least(watch: &Watch, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while watch.parked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "parked {} times, not {n}",
                watch.parked()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_keep_alive_connection_parks_between_requests_and_serves_each() {
        let mut s = server(Duration::from_secs(30)).await;
        for i in 1..=3 {
            let answer = get(&mut s.client, &format!("/slow{i}")).await;
            assert!(answer.ends_with(&format!("/slow{i} 0")), "{answer}");
            parked_at_least(&s.watch, i).await;
        }
        // A request body, sent in two pieces with a pause: served, then parked again.
        s.client
            .write_all(b"POST /body HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.client.write_all(b"world").await.unwrap();
        let answer = read_answers(&mut s.client, 1).await;
        assert!(answer.ends_with("/body 10"), "{answer}");
        parked_at_least(&s.watch, 4).await;
        // The client closes: so does the server, without an error.
        drop(s.client);
        assert!(s.conn.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_client_sending_request_after_request_keeps_its_hyper_connection() {
        // Requests 10 ms apart for four times `park_after`: every period has served one.
        let park_after = Duration::from_millis(100);
        let mut s = server_parking_after(park_after, Duration::from_secs(30)).await;
        let started = tokio::time::Instant::now();
        let mut i = 0;
        while started.elapsed() < park_after * 4 {
            let answer = get(&mut s.client, &format!("/{i}")).await;
            assert!(answer.ends_with(&format!("/{i} 0")), "{answer}");
            tokio::time::sleep(Duration::from_millis(10)).await;
            i += 1;
        }
        assert_eq!(s.watch.parked(), 0, "parked within {i} requests");
        // Quiet: it parks, once, and stays parked (no spurious wake builds hyper's again).
        parked_at_least(&s.watch, 1).await;
        tokio::time::sleep(park_after * 3).await;
        assert_eq!(s.watch.parked(), 1);
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_even_split_across_a_park() {
        let mut s = server(Duration::from_secs(30)).await;
        // Two whole requests in one write, and the start of a third.
        s.client
            .write_all(
                b"GET /a HTTP/1.1\r\nhost: a\r\n\r\nGET /b HTTP/1.1\r\nhost: a\r\n\r\nGET /c HT",
            )
            .await
            .unwrap();
        let answer = read_answers(&mut s.client, 2).await;
        let (a, b) = (answer.find("/a 0").unwrap(), answer.find("/b 0").unwrap());
        assert!(a < b, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.client
            .write_all(b"TP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answers(&mut s.client, 1).await;
        assert!(answer.ends_with("/c 0"), "{answer}");
    }

    #[tokio::test]
    async fn a_first_request_arriving_slowly_is_not_parked_and_times_out_as_hyper_says() {
        let mut s = server(Duration::from_secs(30)).await;
        s.client.write_all(b"GET / HT").await.unwrap();
        // hyper's header read timeout (5 s) closes it; it was never parked (which would have
        // restarted that timer).
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), s.client.read(&mut buf))
            .await
            .expect("closed by the header read timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(s.watch.parked(), 0);
    }

    #[tokio::test]
    async fn a_parked_connection_closes_at_the_idle_timeout() {
        let mut s = server(Duration::from_millis(200)).await;
        get(&mut s.client, "/").await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.client.read(&mut buf))
            .await
            .expect("closed at the idle timeout");
        assert_eq!(read.unwrap(), 0);
        assert_eq!(s.watch.parked(), 1);
        assert!(s.conn.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn stop_closes_a_parked_connection_and_lets_a_request_in_flight_finish() {
        let mut s = server(Duration::from_secs(30)).await;
        get(&mut s.client, "/").await;
        parked_at_least(&s.watch, 1).await;
        let _ = s.stop.take().unwrap().send(());
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.client.read(&mut buf))
            .await
            .expect("closed when stopped");
        assert_eq!(read.unwrap(), 0);

        // In flight: the body is half sent when the stop comes; the answer still arrives.
        let mut s = server(Duration::from_secs(30)).await;
        s.client
            .write_all(b"POST /late HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nab")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.stop.take().unwrap().send(());
        s.client.write_all(b"cd").await.unwrap();
        let answer = read_answers(&mut s.client, 1).await;
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.ends_with("/late 4"), "{answer}");
    }

    #[tokio::test]
    async fn a_body_the_service_left_unread_pins_the_connection_to_hyper() {
        let mut s = server(Duration::from_secs(30)).await;
        s.client
            .write_all(b"POST /drop HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nxy")
            .await
            .unwrap();
        let answer = read_answers(&mut s.client, 1).await;
        assert!(answer.ends_with("/drop unread"), "{answer}");
        // The rest of the body is never taken for a request: hyper drains it or closes (and
        // then these writes may fail).
        let _ = s.client.write_all(&[b'z'; 98]).await;
        let _ = s
            .client
            .write_all(b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        let mut rest = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), s.client.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            rest.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(!rest.contains("400"), "{rest}");
        assert!(rest.is_empty() || rest.ends_with("/next 0"), "{rest}");
        assert_eq!(s.watch.parked(), 0);
    }
}
