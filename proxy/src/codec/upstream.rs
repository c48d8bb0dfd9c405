//! A codec's upstream connections: requests written as they come (many clients' requests
//! pipelined on one connection), responses matched back by id (a protocol whose frames carry
//! one: the connection numbers its requests itself and gives each response back its client's
//! id) or by order; and the layers that choose a request's connection: an endpoint's one shared
//! connection, or the client connection's own once a request pinned it ([`Session`]).
//!
//! A connection that fails answers every request waiting on it with
//! [`LocalError::Unavailable`]; the endpoint opens a new one for the next request. A client
//! connection whose pinned upstream closes is closed after its answers are written: the state
//! it had (a transaction, a subscription) is gone, and the client must know.

use super::{Answer, Codec, Frame, Kind, LocalError, Protocol, Req, Session, Side};
use crate::{
    http::client::NewClient,
    identity::Alpn,
    svc::{lock, NewService},
};
use bytes::BytesMut;
use futures_util::future::{BoxFuture, Either};
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

/// What a request waits for: the response (`None` for a request that expects none).
pub type Reply = Result<Option<Frame>, LocalError>;

/// How many requests may wait to be written on one connection before senders wait.
const QUEUE: usize = 1024;
/// How many queued requests are written with one write.
const BATCH: usize = 128;

fn closed() -> LocalError {
    LocalError::Unavailable("connection closed".into())
}

/// One upstream connection; clones share it.
#[derive(Clone)]
pub struct Upstream {
    tx: mpsc::Sender<Outgoing>,
    /// Cancelled once the connection has closed: read by every request that looks for an
    /// open connection, awaited by a client connection pinned to it.
    closed: CancellationToken,
}

struct Outgoing {
    frame: Arc<Frame>,
    reply: oneshot::Sender<Reply>,
}

/// A request written and not yet answered.
enum Waiting {
    Reply {
        reply: oneshot::Sender<Reply>,
        /// The client's id, given back to the response.
        id: Option<u32>,
    },
    /// A request after which the server sends frames of its own: from its response on,
    /// every frame goes to the client connection as it comes.
    Stream,
}

#[derive(Default)]
struct Pending {
    fifo: VecDeque<Waiting>,
    by_id: HashMap<u32, Waiting>,
    next_id: u32,
    /// The connection failed: why (new requests are answered at once).
    failed: Option<String>,
}

impl Pending {
    fn fail(&mut self, why: &str) {
        self.failed.get_or_insert_with(|| why.to_owned());
        let fifo = self.fifo.drain(..);
        let by_id = self.by_id.drain().map(|(_, w)| w);
        for waiting in fifo.chain(by_id) {
            if let Waiting::Reply { reply, .. } = waiting {
                let _ = reply.send(Err(LocalError::Unavailable(why.to_owned())));
            }
        }
    }
}

impl Upstream {
    /// Serves `io` (a connection to a server of `protocol`) on two tasks; frames the server
    /// sends on its own, and every frame once a request asked for a stream, go to `pushes`
    /// (dropped without one).
    pub fn spawn<I>(io: I, protocol: &dyn Protocol, pushes: Option<mpsc::Sender<Frame>>) -> Self
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        let closed = CancellationToken::new();
        let set_closed = closed.clone();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (read, write) = tokio::io::split(io);
        let writer = protocol.codec(Side::Server);
        let reader = protocol.codec(Side::Server);
        let name = protocol.name();
        let p = pending.clone();
        let write_task = tokio::spawn(async move {
            let why = write_loop(write, writer, rx, &p).await;
            lock(&p).fail(&why);
        });
        tokio::spawn(async move {
            let why = read_loop(read, reader, &pending, pushes).await;
            tracing::debug!(codec = name, %why, "upstream connection closed");
            lock(&pending).fail(&why);
            write_task.abort();
            set_closed.cancel();
        });
        Self { tx, closed }
    }

    /// Sends `frame` and waits for its response.
    pub async fn send(&self, frame: Arc<Frame>) -> Reply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Outgoing { frame, reply }).await.is_err() {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Queues `frame` when the connection has room for it, without waiting.
    fn try_queue(&self, frame: &Arc<Frame>) -> Option<oneshot::Receiver<Reply>> {
        let permit = self.tx.try_reserve().ok()?;
        let (reply, rx) = oneshot::channel();
        permit.send(Outgoing {
            frame: frame.clone(),
            reply,
        });
        Some(rx)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.tx.is_closed()
    }

    /// Resolves once the connection has closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut codec: Box<dyn Codec>,
    mut rx: mpsc::Receiver<Outgoing>,
    pending: &Mutex<Pending>,
) -> String {
    let mut buf = BytesMut::with_capacity(super::READ_CHUNK);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            let _ = io.shutdown().await;
            return "no more requests".into();
        }
        {
            let mut p = lock(pending);
            for Outgoing { frame, reply } in batch.drain(..) {
                if let Some(why) = &p.failed {
                    let _ = reply.send(Err(LocalError::Unavailable(why.clone())));
                    continue;
                }
                let written = match (frame.id, frame.kind) {
                    (_, Kind::OneWay) => {
                        let written = codec.encode(&frame, &mut buf);
                        let _ = reply.send(Ok(None));
                        written
                    }
                    (Some(id), _) => {
                        // Number the request on this connection; the response gets `id` back.
                        let mut own = (*frame).clone();
                        let mut next = p.next_id;
                        while p.by_id.contains_key(&next) {
                            next = next.wrapping_add(1);
                        }
                        p.next_id = next.wrapping_add(1);
                        own.id = Some(next);
                        p.by_id.insert(
                            next,
                            Waiting::Reply {
                                reply,
                                id: Some(id),
                            },
                        );
                        codec.encode(&own, &mut buf)
                    }
                    (None, _) if frame.session == Session::Stream => {
                        p.fifo.push_back(Waiting::Stream);
                        let _ = reply.send(Ok(None));
                        codec.encode(&frame, &mut buf)
                    }
                    (None, _) => {
                        p.fifo.push_back(Waiting::Reply { reply, id: None });
                        codec.encode(&frame, &mut buf)
                    }
                };
                if let Err(e) = written {
                    return format!("encoding a request: {e}");
                }
            }
        }
        // A TLS stream may keep what it encrypted until it is flushed.
        if let Err(e) = io.write_all(&buf).await {
            return format!("writing: {e}");
        }
        if let Err(e) = io.flush().await {
            return format!("writing: {e}");
        }
        buf.clear();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut io: R,
    mut codec: Box<dyn Codec>,
    pending: &Mutex<Pending>,
    pushes: Option<mpsc::Sender<Frame>>,
) -> String {
    let mut buf = BytesMut::with_capacity(super::READ_CHUNK);
    let mut streaming = false;
    loop {
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return e.to_string(),
            };
            let to_client = if streaming {
                Some(frame)
            } else {
                match deliver(pending, frame) {
                    Delivered::Done => None,
                    Delivered::Stream(frame) => {
                        streaming = true;
                        Some(frame)
                    }
                    Delivered::Unsolicited(frame) => Some(frame),
                }
            };
            if let (Some(frame), Some(pushes)) = (to_client, &pushes) {
                if pushes.send(frame).await.is_err() {
                    return "the client connection closed".into();
                }
            }
        }
        super::make_room(&mut buf);
        match io.read_buf(&mut buf).await {
            Ok(0) => return "closed by the server".into(),
            Ok(_) => {}
            Err(e) => return format!("reading: {e}"),
        }
    }
}

enum Delivered {
    Done,
    /// The response of a streaming request: it and every later frame go to the client.
    Stream(Frame),
    /// A frame no request waits for.
    Unsolicited(Frame),
}

fn deliver(pending: &Mutex<Pending>, mut frame: Frame) -> Delivered {
    let mut p = lock(pending);
    if frame.kind == Kind::Push || frame.kind == Kind::Heartbeat {
        return Delivered::Unsolicited(frame);
    }
    let waiting = match frame.id {
        Some(id) => p.by_id.remove(&id),
        None => p.fifo.pop_front(),
    };
    drop(p);
    match waiting {
        Some(Waiting::Reply { reply, id }) => {
            if id.is_some() {
                frame.id = id;
            }
            // The requester may have gone (a timeout): the response is dropped.
            let _ = reply.send(Ok(Some(frame)));
            Delivered::Done
        }
        Some(Waiting::Stream) => Delivered::Stream(frame),
        None => Delivered::Unsolicited(frame),
    }
}

// === choosing a request's connection ===

/// Where an endpoint's upstream connections go, and how they are opened.
#[derive(Clone)]
pub struct EndpointTarget {
    pub addr: SocketAddr,
    /// The identity its proxy must prove (mutual TLS), when meshed.
    pub server_id: Option<Arc<str>>,
    /// What the answers say about where they came from (metrics, tap).
    pub info: Arc<super::Served>,
    pub protocol: Arc<dyn Protocol>,
}

/// Makes each endpoint's client.
#[derive(Clone)]
pub struct NewEndpoint {
    client: NewClient,
}

impl NewEndpoint {
    pub fn new(client: NewClient) -> Self {
        Self { client }
    }
}

/// Sends requests to one endpoint: on its shared connection of the request's lane (opened by
/// the first request that needs it, again after it fails), or on a connection of the client's
/// own when the request pins one. Outbound, an endpoint's stack is shared by every client
/// connection; inbound, each client connection (a peer proxy's) has its own, so the
/// application sees one connection per peer connection and lane.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    target: EndpointTarget,
    client: NewClient,
    /// The shared connection of each lane: looked up by every request, under a lock held
    /// for no await.
    shared: Mutex<Vec<(u8, Upstream)>>,
    /// Held while a shared connection is opened: one at a time, so that requests that find
    /// none wait for the one being opened rather than each opening their own.
    opening: tokio::sync::Mutex<()>,
}

impl<T: Into<EndpointTarget>> NewService<T> for NewEndpoint {
    type Service = Endpoint;
    fn new_service(&self, target: T) -> Endpoint {
        Endpoint {
            inner: Arc::new(EndpointInner {
                target: target.into(),
                client: self.client.clone(),
                shared: Default::default(),
                opening: Default::default(),
            }),
        }
    }
}

impl EndpointInner {
    /// Opens a connection to the endpoint (mutual TLS to a meshed one) and serves it.
    async fn open(&self, pushes: Option<mpsc::Sender<Frame>>) -> Result<Upstream, LocalError> {
        let t = &self.target;
        let failed = |e| LocalError::Unavailable(format!("connecting to {}: {e}", t.addr));
        let protocol = &*t.protocol;
        Ok(match &t.server_id {
            Some(id) => {
                let io = self.client.connect_tls(t.addr, id, Alpn::None).await;
                Upstream::spawn(io.map_err(failed)?, protocol, pushes)
            }
            None => {
                let io = self.client.connect(t.addr).await.map_err(failed)?;
                Upstream::spawn(io, protocol, pushes)
            }
        })
    }

    /// `f` of the lane's open shared connection, if there is one (under the list's lock).
    fn with_open<R>(&self, lane: u8, f: impl FnOnce(&Upstream) -> R) -> Option<R> {
        lock(&self.shared)
            .iter()
            .find(|(l, up)| *l == lane && !up.is_closed())
            .map(|(_, up)| f(up))
    }

    async fn shared(&self, lane: u8) -> Result<Upstream, LocalError> {
        if let Some(up) = self.with_open(lane, Upstream::clone) {
            return Ok(up);
        }
        let _opening = self.opening.lock().await;
        // Another request may have opened it meanwhile.
        if let Some(up) = self.with_open(lane, Upstream::clone) {
            return Ok(up);
        }
        let up = self.open(None).await?;
        let mut shared = lock(&self.shared);
        shared.retain(|(l, _)| *l != lane);
        shared.push((lane, up.clone()));
        Ok(up)
    }

    /// Queues `frame` on the lane's open shared connection, when there is one with room:
    /// the usual case, without waiting.
    fn queue(&self, frame: &Arc<Frame>, lane: u8) -> Option<oneshot::Receiver<Reply>> {
        self.with_open(lane, |up| up.try_queue(frame)).flatten()
    }
}

impl tower::Service<Req> for Endpoint {
    type Response = Answer;
    type Error = LocalError;
    type Future = Either<Replied, BoxFuture<'static, Result<Answer, LocalError>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LocalError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if req.frame.session == Session::None {
            if let Some(rx) = self.inner.queue(&req.frame, req.lane) {
                return Either::Left(Replied {
                    rx,
                    info: Some(self.inner.target.info.clone()),
                });
            }
        }
        let this = self.inner.clone();
        Either::Right(Box::pin(async move {
            let info = this.target.info.clone();
            let up = if req.frame.session != Session::None {
                let up = this.open(Some(req.conn.pushes())).await?;
                req.conn.pin(up.clone(), info.clone());
                up
            } else {
                this.shared(req.lane).await?
            };
            let frame = up.send(req.frame).await?;
            Ok(Answer { frame, info })
        }))
    }
}

/// The answer to a request queued on a connection.
pub struct Replied {
    rx: oneshot::Receiver<Reply>,
    info: Option<Arc<super::Served>>,
}

impl std::future::Future for Replied {
    type Output = Result<Answer, LocalError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let reply = std::task::ready!(std::pin::Pin::new(&mut self.rx).poll(cx));
        let info = self
            .info
            .take()
            .expect("a future is not polled once it is ready");
        Poll::Ready(match reply {
            Ok(Ok(frame)) => Ok(Answer { frame, info }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(closed()),
        })
    }
}

/// Sends the requests of a pinned client connection on its own upstream connection, and the
/// others down the stack.
#[derive(Clone)]
pub struct Pinned<S> {
    inner: S,
}

impl<S> Pinned<S> {
    pub fn layer() -> impl tower::Layer<S, Service = Self> + Clone {
        tower::layer::layer_fn(|inner| Self { inner })
    }
}

impl<S> tower::Service<Req> for Pinned<S>
where
    S: tower::Service<Req, Response = Answer, Error = LocalError>,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = LocalError;
    type Future = Either<BoxFuture<'static, Result<Answer, LocalError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LocalError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match req.conn.pinned().cloned() {
            Some((up, info)) => Either::Left(Box::pin(async move {
                let frame = up.send(req.frame).await?;
                Ok(Answer { frame, info })
            })),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The framework on loopback with the Redis codec: a fake server that answers `ECHO x`
    //! with `x` (after `DELAY ms x`: late), `CONN` with its connection's number, `MULTI` with
    //! `+OK`, closes on `DROP`, and answers `QUIT` then closes; client connections served by
    //! `serve::Serve` over an endpoint stack.

    use super::*;
    use crate::{
        codec::{
            meter::Meter,
            redis::Redis,
            serve::{ConnParams, NewServe},
            Served, Side,
        },
        connect::Connect,
        drain::Drain,
        metrics::{Metrics, Tls},
        svc::{BoxIo, NewFn, Param},
        tap::{TapConfig, Taps},
    };
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };
    use tokio::net::{TcpListener, TcpStream};
    use tower::{Layer, ServiceExt};

    /// Serves the fake server; counts its connections.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut io, _) = listener.accept().await.unwrap();
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let mut codec = Redis.codec(Side::Client);
                    let mut buf = BytesMut::new();
                    loop {
                        while let Ok(Some(req)) = codec.decode(&mut buf) {
                            let words: Vec<String> = String::from_utf8_lossy(&req.bytes)
                                .split("\r\n")
                                .filter(|w| !w.is_empty() && !w.starts_with(['*', '$']))
                                .flat_map(str::split_whitespace)
                                .map(str::to_owned)
                                .collect();
                            let reply = match words[0].to_uppercase().as_str() {
                                "ECHO" => format!("+{}\r\n", words[1]),
                                "DELAY" => {
                                    let ms = words[1].parse().unwrap();
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                    format!("+{}\r\n", words[2])
                                }
                                "CONN" => format!(":{n}\r\n"),
                                "MULTI" => "+OK\r\n".to_owned(),
                                "DROP" => return,
                                "QUIT" => {
                                    io.write_all(b"+OK\r\n").await.unwrap();
                                    return;
                                }
                                _ => "-ERR unknown\r\n".to_owned(),
                            };
                            io.write_all(reply.as_bytes()).await.unwrap();
                        }
                        if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    struct Target(SocketAddr);

    impl Param<ConnParams> for Target {
        fn param(&self) -> ConnParams {
            ConnParams {
                client: "127.0.0.1:1".parse().unwrap(),
                orig_dst: self.0,
                client_id: None,
                protocol: Arc::new(Redis),
            }
        }
    }

    /// A proxy of one endpoint, `upstream`: each accepted client connection is served.
    async fn proxy(upstream: SocketAddr) -> SocketAddr {
        let metrics = Metrics::new(10, false);
        let taps = Taps::new(&TapConfig::default(), None, metrics.clone());
        let connect = Connect {
            timeout: Duration::from_secs(5),
            mark: None,
        };
        let client = NewClient::new(connect, Duration::from_secs(60), None, Drain::new());
        let served = Arc::new(Served {
            direction: crate::metrics::Direction::Outbound,
            target_addr: upstream,
            dst: None,
            tls: Tls::NoIdentity("disabled"),
            server_id: None,
        });
        let endpoint = NewEndpoint::new(client).new_service(EndpointTarget {
            addr: upstream,
            server_id: None,
            info: served.clone(),
            protocol: Arc::new(Redis),
        });
        let requests = Meter::new(
            Pinned::layer().layer(endpoint),
            metrics,
            taps.clone(),
            "redis",
            "redis".into(),
            (*served).clone(),
        );
        let serve = NewServe::layer(taps).layer(NewFn(move |_: Target| requests.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                let conn = serve.new_service(Target(upstream));
                tokio::spawn(conn.oneshot(BoxIo::new(io)));
            }
        });
        addr
    }

    /// Writes `requests` at once, reads until `replies` is what came back.
    async fn exchange(io: &mut TcpStream, requests: &str, replies: &str) {
        io.write_all(requests.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < replies.len() {
            let mut chunk = [0; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk))
                .await
                .expect("replies within 5 s")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), replies);
    }

    #[tokio::test]
    async fn pipelines_keep_their_order_and_clients_share_a_connection() {
        let (upstream, conns) = server().await;
        let proxy = proxy(upstream).await;
        let mut a = TcpStream::connect(proxy).await.unwrap();
        let mut b = TcpStream::connect(proxy).await.unwrap();
        exchange(
            &mut a,
            "ECHO 1\r\nDELAY 50 2\r\n*2\r\n$4\r\nECHO\r\n$1\r\n3\r\n",
            "+1\r\n+2\r\n+3\r\n",
        )
        .await;
        exchange(&mut b, "ECHO 4\r\n", "+4\r\n").await;
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one shared upstream connection"
        );
    }

    #[tokio::test]
    async fn a_transaction_pins_its_client_to_a_connection_of_its_own() {
        let (upstream, conns) = server().await;
        let proxy = proxy(upstream).await;
        let mut a = TcpStream::connect(proxy).await.unwrap();
        exchange(&mut a, "CONN\r\n", ":1\r\n").await;
        // MULTI waits for the request before it; the ones after it wait for it.
        exchange(
            &mut a,
            "DELAY 30 x\r\nMULTI\r\nCONN\r\nCONN\r\n",
            "+x\r\n+OK\r\n:2\r\n:2\r\n",
        )
        .await;
        let mut b = TcpStream::connect(proxy).await.unwrap();
        exchange(&mut b, "CONN\r\n", ":1\r\n").await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_upstream_is_answered_in_the_protocol_and_replaced() {
        let (upstream, _) = server().await;
        let proxy = proxy(upstream).await;
        let mut a = TcpStream::connect(proxy).await.unwrap();
        exchange(&mut a, "ECHO 1\r\n", "+1\r\n").await;
        // The server closes the shared connection without answering.
        a.write_all(b"DROP\r\n").await.unwrap();
        let mut reply = [0; 256];
        let n = a.read(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(
            reply.starts_with("-ERR mesh: upstream unavailable"),
            "{reply}"
        );
        // The next request gets a new connection.
        exchange(&mut a, "CONN\r\n", ":2\r\n").await;
    }

    #[tokio::test]
    async fn a_malformed_frame_closes_its_own_connection_only() {
        let (upstream, _) = server().await;
        let proxy = proxy(upstream).await;
        let mut good = TcpStream::connect(proxy).await.unwrap();
        let mut bad = TcpStream::connect(proxy).await.unwrap();
        exchange(&mut good, "ECHO 1\r\n", "+1\r\n").await;
        bad.write_all(b"*2\r\n$-7\r\n").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut rest));
        assert!(read.await.expect("closed within 5 s").is_ok());
        exchange(&mut good, "ECHO 2\r\n", "+2\r\n").await;
    }

    #[tokio::test]
    async fn quit_closes_its_client_and_not_the_shared_connection() {
        let (upstream, _) = server().await;
        let proxy = proxy(upstream).await;
        let mut a = TcpStream::connect(proxy).await.unwrap();
        let mut b = TcpStream::connect(proxy).await.unwrap();
        exchange(&mut a, "CONN\r\n", ":1\r\n").await;
        exchange(&mut b, "CONN\r\n", ":1\r\n").await;
        exchange(&mut a, "QUIT\r\n", "+OK\r\n").await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), a.read_to_end(&mut rest));
        assert!(read.await.expect("closed within 5 s").is_ok());
        exchange(&mut b, "CONN\r\n", ":1\r\n").await;
    }
}
