//! A client connection of a codec: its requests decoded and handed to the request stack as
//! they come (pipelined: many in flight), its responses written back in the order of the
//! requests, and the local reply of a request the stack could not forward.
//!
//! Order across upstream connections: a request that pins the connection ([`Session`]) is
//! sent only once every request before it is answered, and the ones after it wait until it is
//! answered, so that the pinned connection sees the client's requests in order.

use super::{Codec, Frame, LocalError, Protocol, Side};
use crate::{
    codec::upstream::Upstream,
    svc::{BoxError, BoxIo, ConnFuture, NewService},
    tap::ConnTap,
};
use bytes::BytesMut;
use futures_util::{
    future::{self, Either},
    stream::FuturesOrdered,
    FutureExt, StreamExt,
};
use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tower::ServiceExt;

use super::{Answer, Req, Served, Session};

/// How many requests of one client connection may be in flight before it is read no more.
const MAX_IN_FLIGHT: usize = 1024;
/// How many frames a pinned upstream may push before the client's connection is written.
const PUSHES: usize = 256;

/// One client connection, as its requests see it.
pub struct Conn {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    /// The identity the client proved (inbound, mutual TLS).
    pub client_id: Option<Arc<str>>,
    pub tap: ConnTap,
    pushes: mpsc::Sender<Frame>,
    /// Once a request pinned it, for the connection's life.
    pinned: OnceLock<(Upstream, Arc<Served>)>,
}

impl Conn {
    /// Where a pinned upstream sends the frames it does not match to a request.
    pub fn pushes(&self) -> mpsc::Sender<Frame> {
        self.pushes.clone()
    }

    /// Pins the connection to `upstream` (a connection stays pinned to its first).
    pub fn pin(&self, upstream: Upstream, served: Arc<Served>) {
        let _ = self.pinned.set((upstream, served));
    }

    pub fn pinned(&self) -> Option<&(Upstream, Arc<Served>)> {
        self.pinned.get()
    }
}

/// What a client connection's stage needs of its target.
pub struct ConnParams {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub client_id: Option<Arc<str>>,
    pub protocol: Arc<dyn Protocol>,
}

/// Serves each client connection with the request stack `N` makes for its target.
#[derive(Clone)]
pub struct NewServe<N> {
    inner: N,
    taps: crate::tap::Taps,
}

impl<N> NewServe<N> {
    pub fn layer(taps: crate::tap::Taps) -> impl tower::Layer<N, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| Self {
            inner,
            taps: taps.clone(),
        })
    }
}

pub struct Serve<S> {
    params: Option<ConnParams>,
    svc: S,
    taps: crate::tap::Taps,
}

impl<T, N> NewService<T> for NewServe<N>
where
    T: crate::svc::Param<ConnParams>,
    N: NewService<T>,
{
    type Service = Serve<N::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        Serve {
            params: Some(target.param()),
            svc: self.inner.new_service(target),
            taps: self.taps.clone(),
        }
    }
}

impl<S> tower::Service<BoxIo> for Serve<S>
where
    S: tower::Service<Req, Response = Answer, Error = LocalError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        let params = self
            .params
            .take()
            .expect("a connection's service serves it once");
        let svc = self.svc.clone();
        let tap = self.taps.connection();
        Box::pin(serve(io, params, tap, svc))
    }
}

async fn serve<S>(
    mut io: BoxIo,
    params: ConnParams,
    tap: ConnTap,
    mut svc: S,
) -> Result<(), BoxError>
where
    S: tower::Service<Req, Response = Answer, Error = LocalError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (pushes, mut pushed) = mpsc::channel(PUSHES);
    let conn = Arc::new(Conn {
        client: params.client,
        orig_dst: params.orig_dst,
        client_id: params.client_id,
        tap,
        pushes,
        pinned: OnceLock::new(),
    });
    let mut codec = params.protocol.codec(Side::Client);
    let mut rbuf = BytesMut::with_capacity(super::READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(super::READ_CHUNK);
    let mut in_flight = pin!(Ordered::new());
    // A decoded request that waits for the ones before it.
    let mut held: Option<Frame> = None;
    // A request that pins the connection is in flight: the next ones wait for it.
    let mut pinning = false;
    let mut reading = true;
    loop {
        // Hand on what can go.
        while in_flight.len() < MAX_IN_FLIGHT && (!pinning || in_flight.is_empty()) {
            pinning = false;
            let frame = match held.take() {
                Some(frame) => frame,
                None => match codec.decode(&mut rbuf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::info!(client = %conn.client, %error, "closing the connection");
                        flush(&mut io, &mut codec, in_flight.as_mut(), &mut wbuf).await?;
                        return Ok(());
                    }
                },
            };
            if !frame.is_request() {
                tracing::debug!(kind = ?frame.kind, "a client sent a frame that is no request");
                continue;
            }
            let pins = frame.session != Session::None && conn.pinned().is_none();
            if pins && !in_flight.is_empty() {
                held = Some(frame);
                pinning = true;
                break;
            }
            let lane = codec.lane(&frame);
            let frame = Arc::new(frame);
            let request = frame.clone();
            let req = Req {
                frame,
                lane,
                conn: conn.clone(),
            };
            // The connection's own stack: ready at once but for backpressure.
            let call = match svc.ready().await {
                Ok(svc) => Either::Left(svc.call(req)),
                Err(error) => Either::Right(future::ready(Err(error))),
            };
            in_flight
                .as_mut()
                .push_back(call.map(move |result| (result, request)));
            if pins {
                pinning = true;
                break;
            }
        }
        if !reading && in_flight.is_empty() && held.is_none() {
            break;
        }
        let pinned = conn.pinned().map(|(up, _)| up.clone());
        // Only a pinned upstream pushes frames: the connection waits for them once one of
        // its requests pins (or is pinning) it.
        let may_push = pinned.is_some() || pinning;
        let can_read = reading && held.is_none() && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            Some((result, request)) = in_flight.as_mut().next(), if !in_flight.is_empty() => {
                write_answer(&mut codec, &request, result, &mut wbuf);
                // Whatever else is ready goes in the same write.
                while let Some(Some((result, request))) = in_flight.as_mut().next().now_or_never() {
                    write_answer(&mut codec, &request, result, &mut wbuf);
                }
                io.write_all(&wbuf).await?;
                io.flush().await?;
                wbuf.clear();
            }
            Some(frame) = pushed.recv(), if may_push => {
                codec.encode(&frame, &mut wbuf)?;
                while let Ok(frame) = pushed.try_recv() {
                    codec.encode(&frame, &mut wbuf)?;
                }
                io.write_all(&wbuf).await?;
                io.flush().await?;
                wbuf.clear();
            }
            () = closed(pinned.clone()), if pinned.is_some() => {
                // Its state is gone: write what is answered, then close.
                while let Ok(frame) = pushed.try_recv() {
                    codec.encode(&frame, &mut wbuf)?;
                }
                flush(&mut io, &mut codec, in_flight.as_mut(), &mut wbuf).await?;
                return Ok(());
            }
            read = io.read_buf(&mut rbuf), if can_read => {
                if read? == 0 {
                    reading = false;
                }
                super::make_room(&mut rbuf);
            }
        }
    }
    let _ = io.shutdown().await;
    Ok(())
}

async fn closed(upstream: Option<Upstream>) {
    match upstream {
        Some(up) => up.closed().await,
        None => std::future::pending().await,
    }
}

/// Writes the answers of the requests in flight, then the buffer.
async fn flush<F>(
    io: &mut BoxIo,
    codec: &mut Box<dyn Codec>,
    mut in_flight: Pin<&mut Ordered<F>>,
    wbuf: &mut BytesMut,
) -> Result<(), BoxError>
where
    F: Future<Output = (Result<Answer, LocalError>, Arc<Frame>)>,
{
    while let Some((result, request)) = in_flight.as_mut().next().await {
        write_answer(codec, &request, result, wbuf);
    }
    io.write_all(wbuf).await?;
    io.flush().await?;
    wbuf.clear();
    let _ = io.shutdown().await;
    Ok(())
}

pin_project_lite::pin_project! {
    /// A connection's requests in flight, answered in the order they came. The oldest is
    /// polled in place: a client that waits for each answer (the usual case) never reaches
    /// the `FuturesOrdered`, where each request is a task of its own (an allocation, and a
    /// wake-up through its queue); the requests after the oldest go there.
    struct Ordered<F: Future> {
        #[pin]
        head: Option<F>,
        // Answers of `rest` that came before `head`'s, in order.
        early: VecDeque<F::Output>,
        rest: FuturesOrdered<F>,
    }
}

impl<F: Future> Ordered<F> {
    fn new() -> Self {
        Self {
            head: None,
            early: VecDeque::new(),
            rest: FuturesOrdered::new(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.early.len() + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(self: Pin<&mut Self>, call: F) {
        let oldest = self.is_empty();
        let mut this = self.project();
        if oldest {
            this.head.set(Some(call));
        } else {
            this.rest.push_back(call);
        }
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let mut this = self.project();
        if let Some(head) = this.head.as_mut().as_pin_mut() {
            if let Poll::Ready(out) = head.poll(cx) {
                this.head.set(None);
                return Poll::Ready(Some(out));
            }
            // The ones after it go on meanwhile; their answers wait their turn.
            while !this.rest.is_empty() {
                let Poll::Ready(Some(out)) = this.rest.poll_next_unpin(cx) else {
                    break;
                };
                this.early.push_back(out);
            }
            return Poll::Pending;
        }
        match this.early.pop_front() {
            Some(out) => Poll::Ready(Some(out)),
            None if this.rest.is_empty() => Poll::Ready(None),
            None => this.rest.poll_next_unpin(cx),
        }
    }

    /// The next answer, in order (`None` once none is in flight).
    async fn next(mut self: Pin<&mut Self>) -> Option<F::Output> {
        poll_fn(|cx| self.as_mut().poll_next(cx)).await
    }
}

/// Appends the response to `request`, or its local reply.
fn write_answer(
    codec: &mut Box<dyn Codec>,
    request: &Frame,
    result: Result<Answer, LocalError>,
    wbuf: &mut BytesMut,
) {
    let frame = match result {
        Ok(Answer { frame: None, .. }) => return,
        Ok(Answer {
            frame: Some(frame), ..
        }) => frame,
        Err(error) => match codec.local_reply(request, &error) {
            Some(frame) => frame,
            None => return,
        },
    };
    if let Err(error) = codec.encode(&frame, wbuf) {
        tracing::warn!(%error, "a response could not be written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::oneshot;

    /// A request in flight: answered with what `rx` gets; `done` says it completed.
    async fn answer(rx: oneshot::Receiver<u32>, done: Arc<AtomicBool>) -> u32 {
        let n = rx.await.unwrap();
        done.store(true, Ordering::SeqCst);
        n
    }

    type Call = (oneshot::Sender<u32>, Arc<AtomicBool>);

    /// Starts a request answered by `answer`: what answers it, and whether it completed.
    fn push<F: Future<Output = u32>>(
        in_flight: Pin<&mut Ordered<F>>,
        answer: fn(oneshot::Receiver<u32>, Arc<AtomicBool>) -> F,
    ) -> Call {
        let (tx, rx) = oneshot::channel();
        let done = Arc::new(AtomicBool::new(false));
        in_flight.push_back(answer(rx, done.clone()));
        (tx, done)
    }

    /// The next answer if one is ready now.
    fn ready<F: Future<Output = u32>>(in_flight: Pin<&mut Ordered<F>>) -> Option<u32> {
        in_flight.next().now_or_never().flatten()
    }

    #[test]
    fn answers_come_in_the_order_of_their_requests() {
        let mut in_flight = pin!(Ordered::new());
        let [first, second, third] = [(); 3].map(|()| push(in_flight.as_mut(), answer).0);
        assert_eq!(in_flight.len(), 3);
        third.send(3).unwrap();
        second.send(2).unwrap();
        assert_eq!(
            ready(in_flight.as_mut()),
            None,
            "the oldest is not answered"
        );
        first.send(1).unwrap();
        assert_eq!(ready(in_flight.as_mut()), Some(1));
        assert_eq!(ready(in_flight.as_mut()), Some(2));
        assert_eq!(ready(in_flight.as_mut()), Some(3));
        assert!(in_flight.is_empty());
    }

    #[test]
    fn the_requests_after_the_oldest_go_on_while_it_waits() {
        let mut in_flight = pin!(Ordered::new());
        let (first, first_done) = push(in_flight.as_mut(), answer);
        let (second, second_done) = push(in_flight.as_mut(), answer);
        second.send(2).unwrap();
        assert_eq!(ready(in_flight.as_mut()), None);
        // Polled, and so complete (its latency recorded), though its answer waits its turn.
        assert!(second_done.load(Ordering::SeqCst));
        assert!(!first_done.load(Ordering::SeqCst));
        assert_eq!(in_flight.len(), 2);
        first.send(1).unwrap();
        assert_eq!(ready(in_flight.as_mut()), Some(1));
        assert_eq!(ready(in_flight.as_mut()), Some(2));
    }

    #[test]
    fn a_request_after_a_burst_waits_for_the_burst() {
        let mut in_flight = pin!(Ordered::new());
        let [a, b] = [(); 2].map(|()| push(in_flight.as_mut(), answer).0);
        a.send(1).unwrap();
        assert_eq!(ready(in_flight.as_mut()), Some(1));
        // The oldest is answered and one is still in flight: a new request goes after it.
        let (c, _) = push(in_flight.as_mut(), answer);
        c.send(3).unwrap();
        assert_eq!(ready(in_flight.as_mut()), None);
        b.send(2).unwrap();
        assert_eq!(ready(in_flight.as_mut()), Some(2));
        assert_eq!(ready(in_flight.as_mut()), Some(3));
        assert!(in_flight.is_empty());
        // Empty again: the next one is the oldest, polled in place.
        let (d, _) = push(in_flight.as_mut(), answer);
        d.send(4).unwrap();
        assert_eq!(ready(in_flight.as_mut()), Some(4));
    }
}
