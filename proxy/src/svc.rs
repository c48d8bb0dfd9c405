//! The vocabulary the proxy's stacks are built from: targets read through [`Param`], stages
//! made by [`NewService`], layers pushed onto a [`Stack`], and the boxed connection type every
//! connection-level service takes.
//!
//! A stack is built once per direction (`inbound::stack`, `outbound::stack`). Each stage is a
//! `NewService<Target>`: given the target of that stage (an accepted connection, a detected
//! protocol, a logical destination, an endpoint …) it makes the service that handles it. A layer
//! wraps the stage below it, and reads what it needs of the target through `Param<T>`, so that it
//! never names a concrete target type.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::combinators::UnsyncBoxBody;
use std::{
    hash::Hash,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Every error a service of the proxy returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every request and response inside the proxy: boxed where the server receives it,
/// so that a layer may buffer it (and replay it) without changing any service's type. (A struct,
/// not an alias of `UnsyncBoxBody`: a trait object in a request's type trips the compiler's
/// reasoning about the futures that hold it.)
pub struct BoxBody(UnsyncBoxBody<Bytes, BoxError>);

impl BoxBody {
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Self(body.map_err(Into::into).boxed_unsync())
    }

    pub fn empty() -> Self {
        Self::new(http_body_util::Empty::<Bytes>::new())
    }
}

impl Default for BoxBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for BoxBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxBody")
    }
}

impl http_body::Body for BoxBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// The future of a connection-level service: it serves the whole connection.
pub type ConnFuture = BoxFuture<'static, Result<(), BoxError>>;

/// A connection served in two steps: `setup` (reading its ClientHello, detecting its protocol,
/// waiting for its port's policy) gives the connection's future, which then runs alone. The
/// setup's state (its target, its configuration, whatever it awaited, the service it called) is
/// freed once it is done, not held for the connection's life: each connection-level stage
/// would otherwise keep ≈500 B in every one of 10,000 idle connections (issue 17).
pub fn then_serve<F>(setup: F) -> ConnFuture
where
    F: std::future::Future<Output = Result<ConnFuture, BoxError>> + Send + 'static,
{
    // Boxed on its own, so that `try_flatten` (which drops the first future for the second)
    // frees the setup's state; the connection's future then runs alone.
    use futures_util::{FutureExt, TryFutureExt};
    Box::pin(setup.boxed().try_flatten())
}

/// Calls `svc` for a connection once it is ready, and lets go of it: what stays is the
/// connection's future, not a copy of the service (often a stack's worth of handles) beside it.
pub async fn call_conn<S>(mut svc: S, io: BoxIo) -> Result<ConnFuture, BoxError>
where
    S: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    Ok(svc.call(io))
}

/// A connection that is done as soon as its setup is: refused, say, once it has been counted.
pub fn conn_done() -> ConnFuture {
    Box::pin(std::future::ready(Ok(())))
}

/// A target's parameter of type `P`, as one layer needs it.
pub trait Param<P> {
    fn param(&self) -> P;
}

/// Every target is its own parameter.
impl<T: Clone> Param<T> for T {
    fn param(&self) -> T {
        self.clone()
    }
}

/// Makes the service for one target of a stage.
pub trait NewService<T> {
    type Service;
    fn new_service(&self, target: T) -> Self::Service;
}

/// A closure is a `NewService`.
#[derive(Clone, Copy, Debug)]
pub struct NewFn<F>(pub F);

impl<T, S, F: Fn(T) -> S> NewService<T> for NewFn<F> {
    type Service = S;
    fn new_service(&self, target: T) -> S {
        (self.0)(target)
    }
}

/// A `NewService` shared behind an `Arc`, so that every connection's stack reaches the same one.
impl<T, N: NewService<T>> NewService<T> for Arc<N> {
    type Service = N::Service;
    fn new_service(&self, target: T) -> N::Service {
        (**self).new_service(target)
    }
}

/// A stack under construction: `Stack::new(innermost).push(layer)…` reads from the inside out,
/// the last layer pushed being the first a request meets.
#[derive(Clone, Debug)]
pub struct Stack<S>(S);

impl<S> Stack<S> {
    pub fn new(inner: S) -> Self {
        Self(inner)
    }

    /// Wraps the stack in `layer`.
    pub fn push<L: tower::Layer<S>>(self, layer: L) -> Stack<L::Service> {
        Stack(layer.layer(self.0))
    }

    /// Shares the stack behind an `Arc` (a stage reached from many connections).
    pub fn shared(self) -> Stack<Arc<S>> {
        Stack(Arc::new(self.0))
    }

    pub fn into_inner(self) -> S {
        self.0
    }
}

/// Makes a service of `N` for every target, wrapped by `W`: the shape of a layer that only
/// needs to read its target once, when the service is made.
#[derive(Clone, Debug)]
pub struct NewWrap<N, W> {
    inner: N,
    wrap: W,
}

/// A layer that wraps each target's service with `W::wrap(target, service)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrapLayer<W>(pub W);

/// How a [`WrapLayer`] wraps a target's service.
pub trait Wrap<T, S> {
    type Service;
    fn wrap(&self, target: &T, inner: S) -> Self::Service;
}

impl<N, W: Clone> tower::Layer<N> for WrapLayer<W> {
    type Service = NewWrap<N, W>;
    fn layer(&self, inner: N) -> NewWrap<N, W> {
        NewWrap {
            inner,
            wrap: self.0.clone(),
        }
    }
}

/// The target is cloned once per wrapped stage, when a service is made (not per request).
impl<T: Clone, N: NewService<T>, W: Wrap<T, N::Service>> NewService<T> for NewWrap<N, W> {
    type Service = W::Service;
    fn new_service(&self, target: T) -> W::Service {
        self.wrap
            .wrap(&target, self.inner.new_service(target.clone()))
    }
}

/// A layer that maps each target with `F` before the stage below makes its service.
#[derive(Clone, Copy, Debug)]
pub struct MapTargetLayer<F>(pub F);

#[derive(Clone, Copy, Debug)]
pub struct NewMapTarget<F, N> {
    f: F,
    inner: N,
}

impl<F: Clone, N> tower::Layer<N> for MapTargetLayer<F> {
    type Service = NewMapTarget<F, N>;
    fn layer(&self, inner: N) -> NewMapTarget<F, N> {
        NewMapTarget {
            f: self.0.clone(),
            inner,
        }
    }
}

impl<T, U, F: Fn(T) -> U, N: NewService<U>> NewService<T> for NewMapTarget<F, N> {
    type Service = N::Service;
    fn new_service(&self, target: T) -> N::Service {
        self.inner.new_service((self.f)(target))
    }
}

/// A layer that applies a service layer `L` to every service the stage below makes.
#[derive(Clone, Copy, Debug)]
pub struct ForEachLayer<L>(pub L);

#[derive(Clone, Copy, Debug)]
pub struct NewForEach<L, N> {
    layer: L,
    inner: N,
}

impl<L: Clone, N> tower::Layer<N> for ForEachLayer<L> {
    type Service = NewForEach<L, N>;
    fn layer(&self, inner: N) -> NewForEach<L, N> {
        NewForEach {
            layer: self.0.clone(),
            inner,
        }
    }
}

impl<T, L: tower::Layer<N::Service>, N: NewService<T>> NewService<T> for NewForEach<L, N> {
    type Service = L::Service;
    fn new_service(&self, target: T) -> L::Service {
        self.layer.layer(self.inner.new_service(target))
    }
}

/// One of two connection-level services.
pub enum EitherConn<A, B> {
    A(A),
    B(B),
}

impl<A, B> tower::Service<BoxIo> for EitherConn<A, B>
where
    A: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>,
    B: tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>,
{
    type Response = ();
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self {
            Self::A(a) => a.poll_ready(cx),
            Self::B(b) => b.poll_ready(cx),
        }
    }

    fn call(&mut self, io: BoxIo) -> ConnFuture {
        match self {
            Self::A(a) => a.call(io),
            Self::B(b) => b.call(io),
        }
    }
}

/// Chooses, per target, between two stages: `A` where `F` says yes, else `B`.
#[derive(Clone, Copy, Debug)]
pub struct NewSelect<F, A, B> {
    choose: F,
    a: A,
    b: B,
}

impl<F, A, B> NewSelect<F, A, B> {
    pub fn new(choose: F, a: A, b: B) -> Self {
        Self { choose, a, b }
    }
}

impl<T, F: Fn(&T) -> bool, A: NewService<T>, B: NewService<T>> NewService<T>
    for NewSelect<F, A, B>
{
    type Service = EitherConn<A::Service, B::Service>;
    fn new_service(&self, target: T) -> Self::Service {
        if (self.choose)(&target) {
            EitherConn::A(self.a.new_service(target))
        } else {
            EitherConn::B(self.b.new_service(target))
        }
    }
}

/// A layer that shares the stage's services between targets with the same key `K`, in a
/// [`Cache`] that forgets the ones no target has used for its idle timeout.
pub struct CacheLayer<K, S> {
    cache: Arc<Cache<K, S>>,
}

impl<K, S> Clone for CacheLayer<K, S> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + 'static, S: Send + Sync + 'static> CacheLayer<K, S> {
    pub fn new(cache: Arc<Cache<K, S>>) -> Self {
        Self { cache }
    }
}

pub struct NewCached<K, S, N> {
    cache: Arc<Cache<K, S>>,
    inner: N,
}

impl<K, S, N: Clone> Clone for NewCached<K, S, N> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<K, S, N> tower::Layer<N> for CacheLayer<K, S> {
    type Service = NewCached<K, S, N>;
    fn layer(&self, inner: N) -> Self::Service {
        NewCached {
            cache: self.cache.clone(),
            inner,
        }
    }
}

impl<T, K, S, N> NewService<T> for NewCached<K, S, N>
where
    T: Param<K>,
    K: Eq + Hash + Clone + Send + 'static,
    S: Clone + Send + Sync + 'static,
    N: NewService<T, Service = S>,
{
    type Service = Cached<S>;
    fn new_service(&self, target: T) -> Cached<S> {
        let key: K = target.param();
        let shared = self
            .cache
            .get_or_insert_with(&key, || self.inner.new_service(target));
        Cached {
            service: (*shared).clone(),
            _held: shared,
        }
    }
}

/// A service shared through a [`Cache`]; holding it keeps the entry in the cache.
#[derive(Clone)]
pub struct Cached<S> {
    service: S,
    _held: Arc<S>,
}

impl<Req, S: tower::Service<Req>> tower::Service<Req> for Cached<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> S::Future {
        self.service.call(req)
    }
}

/// A connection-level service, boxed.
pub type BoxConn = tower::util::BoxService<BoxIo, (), BoxError>;

/// A connection-level stage, boxed: what a codec hands the protocol switch.
pub type BoxNewConn<T> = Arc<dyn NewService<T, Service = BoxConn> + Send + Sync>;

/// A connection: the socket and what wraps it (the bytes read to detect its protocol, mutual
/// TLS). Boxed, so that every connection-level service takes the same type; a struct for the
/// same reason as [`BoxBody`].
pub struct BoxIo(Box<dyn Io>);

impl BoxIo {
    pub fn new(io: impl Io) -> Self {
        Self(Box::new(io))
    }
}

impl tokio::io::AsyncRead for BoxIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BoxIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// What a connection-level service needs of a connection.
pub trait Io: AsyncRead + AsyncWrite + Socket + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Socket + Send + Unpin + 'static> Io for T {}

/// A connection that can reach its TCP socket (to reset it).
pub trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for BoxIo {
    fn tcp(&self) -> &TcpStream {
        self.0.tcp()
    }
}

impl<T: Socket> Socket for crate::io::PrefixedIo<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<T: Socket> Socket for crate::io::CountingIo<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<T: Socket> Socket for tokio_rustls::server::TlsStream<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

/// Resets a connection (RST instead of FIN): what a client sees when the proxy refuses it or
/// cannot reach its upstream, as if it had dialed the upstream itself.
pub fn reset(io: &dyn Socket) {
    let _ = io.tcp().set_zero_linger();
}

/// A cache of values by key that forgets: an entry nobody holds (no clone of its `Arc` outside
/// the cache) for longer than the idle timeout is dropped by a sweep, and with it whatever it
/// owns (a discovery watch, upstream connections, metric label sets).
pub struct Cache<K, V> {
    entries: Mutex<std::collections::HashMap<K, Entry<V>>>,
    idle: Duration,
    /// Whether the sweeper runs (it starts with the first entry, on the runtime of the caller).
    sweeping: std::sync::atomic::AtomicBool,
    this: Weak<Self>,
}

struct Entry<V> {
    value: Arc<V>,
    /// Since when the cache has been the entry's only holder, as the last sweep saw it.
    unheld_since: Option<Instant>,
}

impl<K: Eq + Hash + Clone + Send + 'static, V: Send + Sync + 'static> Cache<K, V> {
    /// A cache whose sweeper runs every `idle / 4` (at least every 100 ms, at most every 5 s)
    /// while it has entries: an empty cache wakes nobody.
    pub fn new(idle: Duration) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            entries: Mutex::default(),
            idle,
            sweeping: Default::default(),
            this: this.clone(),
        })
    }

    /// The value for `key`, made by `make` when there is none.
    pub fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(key) {
            entry.unheld_since = None;
            return entry.value.clone();
        }
        self.start_sweeping();
        let value = Arc::new(make());
        entries.insert(
            key.clone(),
            Entry {
                value: value.clone(),
                unheld_since: None,
            },
        );
        value
    }

    fn start_sweeping(&self) {
        use std::sync::atomic::Ordering;
        if self.sweeping.load(Ordering::Relaxed) {
            return;
        }
        // Outside a runtime (a unit test), sweeps are the caller's to run.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.sweeping.store(true, Ordering::Relaxed);
            let period = (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            runtime.spawn(sweep(self.this.clone(), period));
        }
    }

    /// How many entries the cache holds.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries nobody held for the idle timeout; returns how many it dropped.
    pub fn sweep(&self, now: Instant) -> usize {
        self.sweep_locked(&mut lock(&self.entries), now)
    }

    /// The sweeper's sweep: also whether it stops (the cache is empty), decided under the lock
    /// that a new entry takes to start one, so that one sweeper runs while there are entries.
    fn sweep_or_stop(&self, now: Instant) -> (usize, bool) {
        let mut entries = lock(&self.entries);
        let dropped = self.sweep_locked(&mut entries, now);
        let stop = entries.is_empty();
        if stop {
            self.sweeping
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        (dropped, stop)
    }

    // Dropped under the lock, so that a value made again for the same key cannot overlap the
    // end of the one it replaces (a `TargetMetrics` removing label sets, say).
    fn sweep_locked(
        &self,
        entries: &mut std::collections::HashMap<K, Entry<V>>,
        now: Instant,
    ) -> usize {
        let idle = self.idle;
        let mut dropped = 0;
        entries.retain(|_, entry| {
            if Arc::strong_count(&entry.value) > 1 {
                entry.unheld_since = None;
                return true;
            }
            let since = *entry.unheld_since.get_or_insert(now);
            if now.saturating_duration_since(since) < idle {
                return true;
            }
            dropped += 1;
            false
        });
        dropped
    }
}

async fn sweep<K, V>(cache: Weak<Cache<K, V>>, period: Duration)
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Send + Sync + 'static,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(cache) = cache.upgrade() else { return };
        let (dropped, stop) = cache.sweep_or_stop(Instant::now());
        if dropped > 0 {
            tracing::debug!(dropped, left = cache.len(), "dropped idle cache entries");
        }
        if stop {
            return;
        }
    }
}

/// Locks a mutex; a poisoned lock only means a thread panicked while holding it, and the data
/// the proxy keeps under its locks stays valid.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_lets_go_of_its_setup_once_it_is_served() {
        // The setup holds `state` (as a stage holds its target and configuration) and hands
        // over a connection that waits for `finish`.
        let state = Arc::new(());
        let held = state.clone();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let mut conn = then_serve(async move {
            let _held = held;
            tokio::task::yield_now().await;
            let conn: ConnFuture = Box::pin(async move {
                let _ = finished.await;
                Ok(())
            });
            Ok(conn)
        });
        let mut poll = || futures_util::FutureExt::now_or_never(&mut conn);
        assert!(poll().is_none(), "setting up");
        assert_eq!(Arc::strong_count(&state), 2);
        assert!(poll().is_none(), "serving");
        assert_eq!(Arc::strong_count(&state), 1, "the setup's state is freed");
        finish.send(()).unwrap();
        assert!(matches!(poll(), Some(Ok(()))));

        // A setup that fails is the connection's error.
        let failed = then_serve(async { Err::<ConnFuture, BoxError>("refused".into()) });
        assert_eq!(failed.await.unwrap_err().to_string(), "refused");
    }

    #[tokio::test]
    async fn a_cache_forgets_entries_nobody_holds() {
        let cache: Arc<Cache<u32, String>> = Cache::new(Duration::from_secs(60));
        let held = cache.get_or_insert_with(&1, || "one".into());
        let again = cache.get_or_insert_with(&1, || unreachable!("cached"));
        assert!(Arc::ptr_eq(&held, &again));
        drop(again);
        cache.get_or_insert_with(&2, || "two".into());
        let t0 = Instant::now();
        assert_eq!(
            cache.sweep(t0),
            0,
            "the first sweep only notes who is unheld"
        );
        assert_eq!(cache.sweep(t0 + Duration::from_secs(59)), 0);
        assert_eq!(cache.sweep(t0 + Duration::from_secs(61)), 1, "2 is idle");
        assert_eq!(cache.len(), 1, "1 is held");
        drop(held);
        let t1 = t0 + Duration::from_secs(62);
        assert_eq!(cache.sweep(t1), 0);
        cache.get_or_insert_with(&1, || unreachable!("still cached"));
        assert_eq!(
            cache.sweep(t1 + Duration::from_secs(61)),
            0,
            "a use restarts the idle time"
        );
        assert_eq!(cache.sweep(t1 + Duration::from_secs(122)), 1);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_cache_sweeps_only_while_it_has_entries() {
        use std::sync::atomic::Ordering::Relaxed;
        let cache: Arc<Cache<u32, ()>> = Cache::new(Duration::ZERO);
        async fn emptied(cache: &Cache<u32, ()>) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cache.is_empty() || cache.sweeping.load(Relaxed) {
                assert!(
                    Instant::now() < deadline,
                    "the sweeper did not empty the cache"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert!(!cache.sweeping.load(Relaxed), "no entry, no sweeper");
        drop(cache.get_or_insert_with(&1, || ()));
        assert!(cache.sweeping.load(Relaxed));
        emptied(&cache).await;
        // The next entry starts a sweeper again, which drops it too.
        drop(cache.get_or_insert_with(&2, || ()));
        assert!(cache.sweeping.load(Relaxed));
        emptied(&cache).await;
    }

    #[test]
    fn a_stack_reads_from_the_inside_out() {
        #[derive(Clone)]
        struct Tag<S>(&'static str, S);
        struct TagLayer(&'static str);
        impl<S> tower::Layer<S> for TagLayer {
            type Service = Tag<S>;
            fn layer(&self, inner: S) -> Tag<S> {
                Tag(self.0, inner)
            }
        }
        let stack = Stack::new(())
            .push(TagLayer("inner"))
            .push(TagLayer("outer"));
        let Tag(outer, Tag(inner, ())) = stack.into_inner();
        assert_eq!((outer, inner), ("outer", "inner"));
    }
}
