//! One endpoint's keep-alive HTTP/1 connections. A request takes the most recently used idle
//! connection that is still open (or its client opens one), and the connection comes back when
//! the response's body ends. Nothing runs per request but the request itself: no task is spawned
//! to wait for a connection to become idle, and the lock is the endpoint's own, held for a push
//! or a pop.
//!
//! Each connection's task (which hyper needs to drive it) closes it once it has been idle for the
//! pool's idle timeout; its timer fires once per timeout, not per request. A connection the
//! server closed is dropped when a request finds it.

use crate::svc::{lock, BoxBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1, Response};
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// An endpoint's idle connections, the most recently used last.
pub struct Pool {
    idle: Mutex<Vec<Pooled>>,
    idle_timeout: Duration,
    max_idle: usize,
}

/// A connection of the pool: its request sender and what its task knows of it.
pub struct Pooled {
    pub sender: http1::SendRequest<BoxBody>,
    state: Arc<ConnState>,
    /// Whether it carried a request before (a failure to send on it is then retried elsewhere).
    reused: bool,
}

/// What a connection's sender tells the connection's task: since when it has been idle.
struct ConnState {
    /// Milliseconds since [`epoch`] plus one when it went idle; 0 while a request has it.
    idle_since: AtomicU64,
}

/// The zero of the idle clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl ConnState {
    fn busy() -> Self {
        Self {
            idle_since: AtomicU64::new(0),
        }
    }

    fn set_idle(&self, now: Instant) {
        let ms = now.saturating_duration_since(epoch()).as_millis() as u64;
        self.idle_since.store(ms + 1, Ordering::Relaxed);
    }

    fn set_busy(&self) {
        self.idle_since.store(0, Ordering::Relaxed);
    }

    /// How long the connection has been idle at `now`; `None` while in use.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        match self.idle_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let since = epoch() + Duration::from_millis(since - 1);
                Some(now.saturating_duration_since(since))
            }
        }
    }
}

impl Pool {
    /// A pool that keeps at most `max_idle` idle connections, each for at most `idle_timeout`.
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            idle_timeout,
            max_idle,
        })
    }

    /// The most recently used idle connection that is still open and not past the idle timeout.
    pub fn checkout(&self) -> Option<Pooled> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() {
                continue;
            }
            if conn
                .state
                .idle_for(now)
                .is_some_and(|idle| idle >= self.idle_timeout)
            {
                // The ones before it waited longer still.
                idle.clear();
                return None;
            }
            conn.state.set_busy();
            return Some(conn);
        }
        None
    }

    /// Takes a connection back after its response ended.
    fn checkin(&self, mut conn: Pooled) {
        if conn.sender.is_closed() {
            return;
        }
        conn.reused = true;
        conn.state.set_idle(Instant::now());
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// How many idle connections the pool holds (closed ones included until a request finds
    /// them).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Makes a pooled connection of a fresh handshake, and spawns the task that drives it: that
    /// task ends when the connection closes, when its sender is dropped, or when it has been idle
    /// in the pool for the idle timeout.
    pub fn spawn<I>(
        &self,
        sender: http1::SendRequest<BoxBody>,
        connection: http1::Connection<I, BoxBody>,
        target: std::net::SocketAddr,
    ) -> Pooled
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let state = Arc::new(ConnState::busy());
        let watched = state.clone();
        let idle_timeout = self.idle_timeout;
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut check_at = tokio::time::Instant::now() + idle_timeout;
            loop {
                tokio::select! {
                    biased;
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%target, %error, "HTTP/1 upstream connection failed");
                        }
                        return;
                    }
                    () = tokio::time::sleep_until(check_at) => {
                        let now = Instant::now();
                        match watched.idle_for(now) {
                            Some(idle) if idle >= idle_timeout => {
                                tracing::trace!(%target, "closing an idle HTTP/1 connection");
                                return;
                            }
                            Some(idle) => check_at += idle_timeout - idle,
                            None => check_at += idle_timeout,
                        }
                    }
                }
            }
        });
        Pooled {
            sender,
            state,
            reused: false,
        }
    }

    /// The response, whose body gives `conn` back to the pool when it ends.
    pub fn release_on_end(
        self: &Arc<Self>,
        conn: Pooled,
        rsp: Response<Incoming>,
    ) -> Response<PooledBody> {
        let rsp = rsp.map(|inner| PooledBody {
            inner,
            conn: Some((conn, self.clone())),
        });
        if rsp.body().inner.is_end_stream() {
            rsp.map(PooledBody::release)
        } else {
            rsp
        }
    }
}

impl Pooled {
    pub fn reused(&self) -> bool {
        self.reused
    }
}

pin_project_lite::pin_project! {
    /// A response body that gives its connection back to the pool when it ends; dropped before
    /// its end, the connection is dropped (hyper closes it: its response was not read to the
    /// end).
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        conn: Option<(Pooled, Arc<Pool>)>,
    }
}

impl PooledBody {
    fn release(mut self) -> Self {
        if let Some((conn, pool)) = self.conn.take() {
            pool.checkin(conn);
        }
        self
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Err(_)) => *this.conn = None,
            Some(Ok(_)) | None => {
                if let Some((conn, pool)) = this.conn.take() {
                    pool.checkin(conn);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Opens an HTTP/1 connection over `io` (the handshake sends nothing): the pool's, and a
/// tunnel's (`client.rs`), which then drives it with upgrades.
pub async fn handshake<I>(
    io: I,
) -> Result<
    (
        http1::SendRequest<BoxBody>,
        http1::Connection<hyper_util::rt::TokioIo<I>, BoxBody>,
    ),
    hyper::Error,
>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http1::Builder::new()
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, StatusCode};
    use std::{
        convert::Infallible,
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };
    use tokio::net::{TcpListener, TcpStream};

    /// An HTTP/1 server on 127.0.0.1 that answers `hello`: how many connections it accepted,
    /// and a message each time one of them closes.
    async fn server() -> (
        SocketAddr,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let hello = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/empty" {
                        Bytes::new()
                    } else {
                        Bytes::from_static(b"hello")
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let closed = closed_tx.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), hello)
                        .await;
                    let _ = closed.send(());
                });
            }
        });
        (addr, accepted, closed)
    }

    async fn open(pool: &Pool, addr: SocketAddr) -> Pooled {
        let io = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = handshake(io).await.unwrap();
        pool.spawn(sender, connection, addr)
    }

    /// Sends `path` on a pooled connection (opened when none is idle); the response and whether
    /// the connection was reused.
    async fn send(pool: &Arc<Pool>, addr: SocketAddr, path: &str) -> (Response<PooledBody>, bool) {
        let mut conn = match pool.checkout() {
            Some(conn) => conn,
            None => open(pool, addr).await,
        };
        let reused = conn.reused();
        conn.sender.ready().await.unwrap();
        let req = Request::get(path).body(BoxBody::empty()).unwrap();
        let rsp = conn.sender.send_request(req).await.unwrap();
        (pool.release_on_end(conn, rsp), reused)
    }

    #[tokio::test]
    async fn a_connection_comes_back_when_its_response_ends() {
        let (addr, accepted, _) = server().await;
        let pool = Pool::new(Duration::from_secs(60), 8);
        let (rsp, reused) = send(&pool, addr, "/").await;
        assert!(!reused);
        assert_eq!(pool.idle_len(), 0, "not while its body is being read");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(pool.idle_len(), 1);
        for path in ["/", "/empty", "/"] {
            let (rsp, reused) = send(&pool, addr, path).await;
            assert!(reused, "{path}");
            assert_eq!(rsp.status(), StatusCode::OK);
            rsp.into_body().collect().await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_takes_its_connection_along() {
        let (addr, accepted, _) = server().await;
        let pool = Pool::new(Duration::from_secs(60), 8);
        let (rsp, _) = send(&pool, addr, "/").await;
        drop(rsp);
        assert_eq!(pool.idle_len(), 0);
        let (rsp, reused) = send(&pool, addr, "/").await;
        assert!(!reused);
        rsp.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_maximum() {
        let (addr, _, _) = server().await;
        let pool = Pool::new(Duration::from_secs(60), 2);
        let conns = [
            open(&pool, addr).await,
            open(&pool, addr).await,
            open(&pool, addr).await,
        ];
        for conn in conns {
            pool.checkin(conn);
        }
        assert_eq!(pool.idle_len(), 2);
    }

    /// Waits (with a deadline) until `conn`'s connection has closed.
    async fn closed(conn: &mut Pooled) -> bool {
        let ready = tokio::time::timeout(Duration::from_secs(5), conn.sender.ready());
        matches!(ready.await, Ok(Err(_)))
    }

    #[tokio::test]
    async fn an_idle_connection_closes_after_the_idle_timeout() {
        let (addr, _, mut closed) = server().await;
        let pool = Pool::new(Duration::from_millis(200), 8);
        let (rsp, _) = send(&pool, addr, "/").await;
        rsp.into_body().collect().await.unwrap();
        assert_eq!(pool.idle_len(), 1);
        // Its own task closes it: nobody has to come by for that.
        let seen = tokio::time::timeout(Duration::from_secs(10), closed.recv()).await;
        assert!(
            matches!(seen, Ok(Some(()))),
            "the idle connection was not closed"
        );
        assert!(pool.checkout().is_none());
    }

    #[test]
    fn a_connection_in_use_is_never_idle() {
        let state = ConnState::busy();
        let now = Instant::now();
        assert_eq!(state.idle_for(now), None);
        state.set_idle(now);
        let later = now + Duration::from_secs(31);
        assert!(state.idle_for(later).unwrap() >= Duration::from_secs(30));
        state.set_busy();
        assert_eq!(state.idle_for(later), None);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A server that answers one request, then closes.
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let once = hyper::service::service_fn(|_: Request<Incoming>| async {
                let mut rsp = Response::new(Full::new(Bytes::from_static(b"bye")));
                rsp.headers_mut()
                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                Ok::<_, Infallible>(rsp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), once)
                .await;
        });
        let pool = Pool::new(Duration::from_secs(60), 8);
        let (rsp, _) = send(&pool, addr, "/").await;
        rsp.into_body().collect().await.unwrap();
        // Given back when its response ended, unless it had closed already.
        let conn = lock(&pool.idle).pop();
        if let Some(mut conn) = conn {
            assert!(closed(&mut conn).await);
            pool.checkin(conn);
        }
        assert_eq!(pool.idle_len(), 0, "a closed connection is not taken back");
        assert!(pool.checkout().is_none());
    }
}
