//! Latency-aware load balancing: power of two choices over an EWMA of each endpoint's round
//! trips, where estimates within noise of each other count as equal, with failing endpoints
//! ejected and probed back with exponential backoff.
//!
//! To pick an endpoint, two are drawn at random and compared, as in Finagle's and tower's
//! `PeakEwma`: nearly as good as picking the best of all, at a constant cost, and without herding
//! every client onto the same endpoint.
//!
//! - When their round-trip estimates are within noise of each other (closer than
//!   [`BalanceConfig::tolerance`] of the faster one, or than
//!   [`BalanceConfig::tolerance_floor`]), the estimates do not decide: the endpoint with fewer
//!   requests in flight per weight wins, then the one used least recently. Equal replicas thus
//!   take turns at a trickle of sequential requests and share by load when requests overlap,
//!   instead of the one that answered a hair faster first taking everything.
//! - Otherwise the lower load wins: estimate × (requests in flight + 1) / weight.
//!
//! An estimate is an average of the endpoint's answers over time: a new answer weighs at least
//! [`BalanceConfig::sample_weight`], and more the older the estimate is. A slow answer counts as
//! at most [`BalanceConfig::outlier`] times the estimate (plus the floor), so that one hiccup, a
//! cold start or a pause moves it a little, while an endpoint that turned slow is left out
//! after a few answers.
//!
//! Estimates are evidence that ages. When two are compared, the slower one's lead over the other
//! fades with the time since it last answered ([`BalanceConfig::decay`]) and with the picks it
//! has lost since ([`BalanceConfig::decay_picks`]), until it is within noise and gets a request
//! again: an endpoint that was slow once is tried again after a while at a trickle, and after a
//! few hundred requests under load, and its answer then replaces what had faded. An endpoint
//! that has not answered yet takes the estimate of the endpoint it is compared with, so that a
//! new replica starts as an equal of its peers, neither shunned nor flooded.
//!
//! The state is shared and lock-light, so every request of every connection picks directly;
//! there is no balancer task or queue in front of it: a pick reads two endpoints (a short lock
//! each, as before) and counts one atomic on the loser; an answer updates its endpoint's estimate.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// How the balancer behaves.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// How fast an estimate ages with time: after this long without an answer, its weight
    /// against a new sample, and the lead it gives a slower endpoint over a faster one, are
    /// down to 1/e.
    pub decay: Duration,
    /// How fast an estimate ages with the picks its endpoint loses: after this many, the same
    /// 1/e, on top of `decay`. Under load this, not time, brings a slow endpoint back to be
    /// tried again: every few hundred requests rather than every few thousand.
    pub decay_picks: u32,
    /// Estimates closer than this fraction of the faster one are equal.
    pub tolerance: f64,
    /// Estimates closer than this are equal: at a trickle of requests, a sub-millisecond
    /// difference between replicas is noise.
    pub tolerance_floor: Duration,
    /// The least weight of a new answer in the estimate: one answer moves it at least this
    /// fraction of the way, more when the estimate is old.
    pub sample_weight: f64,
    /// An answer slower than this many times the estimate, plus `tolerance_floor`, counts as
    /// that: one very slow answer (a cold start, a pause) moves the estimate as a slow one
    /// would, not further.
    pub outlier: f64,
    /// Consecutive failures that eject an endpoint.
    pub failures_to_eject: u32,
    /// The first ejection's length; each failed probe doubles it, up to `max_ejection`.
    pub min_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            decay_picks: 200,
            tolerance: 0.2,
            tolerance_floor: Duration::from_millis(1),
            sample_weight: 0.1,
            outlier: 2.0,
            failures_to_eject: 7,
            min_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// One endpoint's balancing state, shared by every request that uses it.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub weight: u32,
    pending: AtomicU32,
    /// Picks this endpoint lost since it last answered.
    passed_over: AtomicU32,
    rtt: Mutex<Rtt>,
    health: Mutex<Health>,
    /// Whether `health` is other than healthy (failures counted, or an ejection set): while
    /// not, a success changes nothing there and an ejection check has nothing to read, so
    /// neither takes the lock (every request's answer is a success, usually).
    troubled: AtomicBool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Rtt {
    /// `None` until the endpoint answers or is compared with one that has.
    estimate: Option<Estimate>,
    /// The estimate is the endpoint's first answer, taken before any other endpoint's to
    /// compare it with: see [`EndpointState::introduce`].
    provisional: bool,
    /// When the latest answered request had been sent: equal endpoints take turns by it.
    last_sent: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Estimate {
    /// The round-trip time, in nanoseconds.
    ns: f64,
    /// When its latest sample came.
    at: Instant,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    /// Set while ejected: no requests until then, except when every endpoint is ejected.
    ejected_until: Option<Instant>,
    /// The length of the next ejection.
    next_ejection: Duration,
}

/// A request (or an opaque connection) in flight on an endpoint: it counts as load until
/// dropped; [`InFlight::record`] feeds its round trip and outcome to the estimate.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    sent: Instant,
    recorded: bool,
}

impl EndpointState {
    /// A new endpoint, with no estimate yet (see the module's documentation); `_now` is kept
    /// for callers that create endpoints as they are discovered.
    pub fn new(addr: SocketAddr, weight: u32, config: &BalanceConfig, _now: Instant) -> Arc<Self> {
        Arc::new(Self {
            addr,
            weight: weight.max(1),
            pending: AtomicU32::new(0),
            passed_over: AtomicU32::new(0),
            rtt: Mutex::new(Rtt::default()),
            health: Mutex::new(Health {
                next_ejection: config.min_ejection,
                ..Health::default()
            }),
            troubled: AtomicBool::new(false),
        })
    }

    /// Starts a request on this endpoint.
    pub fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            sent: now,
            recorded: false,
        }
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.health)
            .ejected_until
            .is_some_and(|until| now < until)
    }

    /// Feeds one round trip to the estimate.
    fn observe_rtt(&self, config: &BalanceConfig, sent: Instant, now: Instant) {
        let sample = now.saturating_duration_since(sent).as_nanos() as f64;
        let passed_over = self.passed_over.swap(0, Ordering::Relaxed);
        let mut rtt = lock(&self.rtt);
        rtt.provisional = rtt.estimate.is_none();
        rtt.estimate = Some(match rtt.estimate {
            None => Estimate {
                ns: sample,
                at: now,
            },
            Some(old) => {
                // What has faded of the old estimate is the new sample's.
                let faded = 1.0 - fade(config, now.saturating_duration_since(old.at), passed_over);
                Estimate {
                    ns: moved(config, old.ns, sample, faded),
                    at: now,
                }
            }
        });
        rtt.last_sent = rtt.last_sent.max(Some(sent));
    }

    fn observe_outcome(&self, config: &BalanceConfig, success: bool, now: Instant) {
        if success && !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut health = lock(&self.health);
        if success {
            *health = Health {
                next_ejection: config.min_ejection,
                ..Health::default()
            };
            self.troubled.store(false, Ordering::Release);
            return;
        }
        self.troubled.store(true, Ordering::Release);
        health.consecutive_failures += 1;
        let probing = health.ejected_until.is_some_and(|until| now >= until);
        if health.consecutive_failures >= config.failures_to_eject || probing {
            let ejection = health.next_ejection;
            health.ejected_until = Some(now + ejection);
            health.next_ejection = (ejection * 2).min(config.max_ejection);
            tracing::info!(endpoint = %self.addr, ?ejection, failures = health.consecutive_failures, "endpoint ejected");
        }
    }

    /// What a pick reads of the endpoint, at once.
    fn candidate(&self) -> Candidate {
        let rtt = *lock(&self.rtt);
        Candidate {
            estimate: rtt.estimate,
            provisional: rtt.provisional,
            last_sent: rtt.last_sent,
            pending: self.pending.load(Ordering::Relaxed),
            passed_over: self.passed_over.load(Ordering::Relaxed),
        }
    }

    /// Meets `peer` in a comparison, the first time this endpoint can be compared with one that
    /// has an estimate: an endpoint that has not answered yet takes the peer's estimate (and so
    /// starts as an equal); one whose only answer came before any other endpoint's takes it as
    /// if it had been the peer's equal until then, so that an outlier among the very first
    /// answers moves it as any answer would, no further. Updates `own` to what it now has.
    fn introduce(&self, config: &BalanceConfig, own: &mut Candidate, peer: &Candidate) {
        let Some(theirs) = peer.estimate else { return };
        if own.estimate.is_some() && !own.provisional {
            return;
        }
        let mut rtt = lock(&self.rtt);
        match rtt.estimate {
            None => rtt.estimate = Some(theirs),
            Some(mine) if rtt.provisional => {
                rtt.provisional = false;
                if mine.ns > theirs.ns {
                    rtt.estimate = Some(Estimate {
                        ns: moved(config, theirs.ns, mine.ns, 0.0),
                        at: mine.at,
                    });
                }
            }
            Some(_) => {}
        }
        own.estimate = rtt.estimate;
        own.provisional = rtt.provisional;
    }
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    /// Records the round trip (to the response's headers, or to the connection's set-up) and
    /// whether it succeeded; only the first call counts.
    pub fn record(&mut self, config: &BalanceConfig, success: bool, now: Instant) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.endpoint.observe_rtt(config, self.sent, now);
        self.endpoint.observe_outcome(config, success, now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks an endpoint by power of two choices, skipping ejected endpoints where it can; `None`
/// only when `endpoints` is empty. `state` finds an item's balancing state; `random(n)` draws an
/// index below `n`.
pub fn pick<'a, T>(
    endpoints: &'a [T],
    state: impl Fn(&T) -> &EndpointState,
    config: &BalanceConfig,
    now: Instant,
    mut random: impl FnMut(usize) -> usize,
) -> Option<&'a T> {
    match endpoints.len() {
        0 => return None,
        1 => return endpoints.first(),
        _ => {}
    }
    // Draw a non-ejected endpoint, a few tries each: with most endpoints healthy this almost
    // always succeeds at once; when all are ejected any endpoint beats failing outright. Each
    // draw says whether its endpoint is ejected, so no endpoint's health is read twice.
    let mut draw = |avoid: Option<usize>| {
        let mut last = (0, true);
        for _ in 0..4 {
            let mut i = random(endpoints.len());
            if Some(i) == avoid {
                i = (i + 1) % endpoints.len();
            }
            let ejected = state(&endpoints[i]).is_ejected(now);
            if !ejected {
                return (i, false);
            }
            last = (i, true);
        }
        last
    };
    let (a, a_ejected) = draw(None);
    let (b, b_ejected) = draw(Some(a));
    let (ea, eb) = (state(&endpoints[a]), state(&endpoints[b]));
    let prefer_a = match (a_ejected, b_ejected) {
        (false, true) => true,
        (true, false) => false,
        _ => prefer_first(ea, eb, config, now),
    };
    let (winner, loser) = if prefer_a { (a, b) } else { (b, a) };
    state(&endpoints[loser])
        .passed_over
        .fetch_add(1, Ordering::Relaxed);
    Some(&endpoints[winner])
}

// === helpers ===

/// What [`prefer_first`] reads of a candidate.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    estimate: Option<Estimate>,
    provisional: bool,
    last_sent: Option<Instant>,
    pending: u32,
    passed_over: u32,
}

/// Whether `a` is the better of two candidates (ties go to `a`, the first drawn).
fn prefer_first(
    a: &EndpointState,
    b: &EndpointState,
    config: &BalanceConfig,
    now: Instant,
) -> bool {
    let (mut ca, mut cb) = (a.candidate(), b.candidate());
    a.introduce(config, &mut ca, &cb);
    b.introduce(config, &mut cb, &ca);
    // Round-trip estimates, the slower one's lead faded with its age; two endpoints that have
    // never answered are equal.
    let (ra, rb) = match (ca.estimate, cb.estimate) {
        (Some(x), Some(y)) => {
            let faster = x.ns.min(y.ns);
            let faded = |e: Estimate, c: &Candidate| {
                let age = now.saturating_duration_since(e.at);
                faster + (e.ns - faster) * fade(config, age, c.passed_over)
            };
            (faded(x, &ca), faded(y, &cb))
        }
        _ => (0.0, 0.0),
    };
    // (requests in flight + 1) / weight, cross-multiplied to stay in integers.
    let la = u64::from(ca.pending.saturating_add(1)) * u64::from(b.weight);
    let lb = u64::from(cb.pending.saturating_add(1)) * u64::from(a.weight);
    let tolerance = (config.tolerance * ra.min(rb)).max(config.tolerance_floor.as_nanos() as f64);
    if (ra - rb).abs() > tolerance {
        return ra * la as f64 <= rb * lb as f64;
    }
    if la != lb {
        return la < lb;
    }
    // The least recently used; one never used before any other.
    match (ca.last_sent, cb.last_sent) {
        (Some(x), Some(y)) => x <= y,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// `estimate` moved towards `sample` by `weight`, or by at least
/// [`BalanceConfig::sample_weight`], a slow sample counted as [`BalanceConfig::outlier`] says.
fn moved(config: &BalanceConfig, estimate: f64, sample: f64, weight: f64) -> f64 {
    let most = estimate * config.outlier + config.tolerance_floor.as_nanos() as f64;
    let sample = sample.min(most);
    estimate + (sample - estimate) * weight.max(config.sample_weight).min(1.0)
}

/// How much of an estimate is left after `age` and `passed_over` lost picks (1 when fresh).
fn fade(config: &BalanceConfig, age: Duration, passed_over: u32) -> f64 {
    let time = age.as_secs_f64() / config.decay.as_secs_f64().max(1e-9);
    let picks = f64::from(passed_over) / f64::from(config.decay_picks.max(1));
    (-(time + picks)).exp()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the numbers stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === the service ===

/// Balances requests over a set of endpoint services: picks one per request by P2C over the
/// endpoints' load, counts the request as load until its response's headers arrive, and feeds
/// its round trip and outcome (a 5xx or an error is a failure) back to the estimate.
///
/// There is no task or queue in front of it: every caller picks directly, and the set is a
/// shared snapshot that discovery replaces as a whole.
pub struct Balance<S> {
    endpoints: Arc<[(Arc<EndpointState>, S)]>,
    config: Arc<BalanceConfig>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            endpoints: self.endpoints.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S> Balance<S> {
    pub fn new(endpoints: Arc<[(Arc<EndpointState>, S)]>, config: Arc<BalanceConfig>) -> Self {
        Self { endpoints, config }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[(Arc<EndpointState>, S)] {
        &self.endpoints
    }
}

/// Whether a response counts as a success for the balancer.
pub trait Outcome {
    fn is_success(&self) -> bool;

    /// Whether the endpoint's proxy says the request may go to another endpoint
    /// (`mesh-proxy-unanswered`): its application never got it (whatever the request), or reset
    /// the connection before answering it (a `safe` request only).
    fn resendable(&self, _safe: bool) -> bool {
        false
    }
}

impl<B> Outcome for http::Response<B> {
    fn is_success(&self) -> bool {
        !self.status().is_server_error()
    }

    fn resendable(&self, safe: bool) -> bool {
        crate::http::errors::unanswered(self).is_some_and(|why| why.allows(safe))
    }
}

/// A request the balancer may send to a second endpoint when the first refused it unsent (it
/// could not connect, or the connection went away before the request was written): nothing of it
/// reached the first endpoint, so sending it elsewhere is safe whatever its method. Only a request
/// that is cheap to copy is kept for that: one without a body (a GET, most of the time).
pub trait Resend<E>: Sized {
    /// A copy of the request to send elsewhere; `None` when it is not kept.
    fn resend(&self) -> Option<Self>;
    /// Whether `error` says the request never reached the endpoint.
    fn unsent(error: &E) -> bool;

    /// Whether this request may go to another endpoint after `error`: when it never reached
    /// the first one, and for some requests also when it may have.
    fn may_resend(&self, error: &E) -> bool {
        Self::unsent(error)
    }

    /// Whether the request asks for nothing to change at the endpoint: then it may go to
    /// another endpoint when the first one's proxy says its application reset the connection
    /// before answering ([`Outcome::resendable`]).
    fn safe(&self) -> bool {
        false
    }
}

impl Resend<crate::svc::BoxError> for http::Request<crate::svc::BoxBody> {
    fn resend(&self) -> Option<Self> {
        use http_body::Body as _;
        if !self.body().is_end_stream() {
            return None;
        }
        let mut copy = http::Request::new(crate::svc::BoxBody::new(http_body_util::Empty::<
            bytes::Bytes,
        >::new()));
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }

    /// A safe request whose connection was reset or closed before any answer came: it may
    /// have reached the endpoint, but it asks for nothing to change there, so the proxy sends it
    /// elsewhere, once, rather than answer 502 for an endpoint that dropped its connections
    /// (issue 17: an upstream resetting one connection in three lost a third of the GETs of a
    /// default route). Requests with a body are never copied (see [`Resend::resend`]).
    fn may_resend(&self, error: &crate::svc::BoxError) -> bool {
        crate::http::errors::Unanswered::of(&**error).is_some_and(|why| why.allows(self.safe()))
    }

    fn safe(&self) -> bool {
        safe(self.method())
    }

    fn unsent(error: &crate::svc::BoxError) -> bool {
        crate::http::errors::unsent(&**error)
    }
}

/// A safe method (GET, HEAD, OPTIONS, TRACE: RFC 9110 §9.2.1): one that asks for nothing to
/// change at the endpoint, which a client may retry (RFC 9110 §9.2.2).
fn safe(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// A codec's request is pinned to its upstream connection's order: never sent twice.
impl Resend<crate::codec::LocalError> for crate::codec::Req {
    fn resend(&self) -> Option<Self> {
        None
    }

    fn unsent(_: &crate::codec::LocalError) -> bool {
        false
    }
}

impl<S, Req> tower::Service<Req> for Balance<S>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Response: Outcome + Send,
    S::Error: Send,
    S::Future: Send + 'static,
    Req: Resend<S::Error> + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Without a copy to send elsewhere (one endpoint, or a request that cannot be copied:
    /// every codec request), the request's own future; boxed only to resend.
    type Future = futures_util::future::Either<
        Sent<tower::util::Oneshot<S, Req>>,
        futures_util::future::BoxFuture<'static, Result<S::Response, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// Sends `req` to the endpoint [`pick`] chooses; if that one refused it unsent (see
    /// [`Resend`]), once more to another endpoint.
    ///
    /// # Panics
    /// When the set is empty: the caller answers that case (no endpoints) itself.
    fn call(&mut self, req: Req) -> Self::Future {
        use futures_util::future::Either;
        let now = Instant::now();
        let (state, svc) = pick(
            &self.endpoints,
            |(state, _)| state,
            &self.config,
            now,
            |n| fastrand::usize(..n),
        )
        .expect("the caller checks that there are endpoints");
        let in_flight = state.start(now);
        // A copy only where there is another endpoint to send it to.
        let again = (self.endpoints.len() > 1).then(|| req.resend()).flatten();
        let sent = send(svc.clone(), req, in_flight, &self.config);
        let Some(again) = again else {
            return Either::Left(sent);
        };
        let (balance, failed) = (self.clone(), state.clone());
        Either::Right(Box::pin(async move {
            let again = match sent.await {
                Err(error) if again.may_resend(&error) => again,
                // The endpoint's proxy answered for its application, which reset the
                // connection before an answer (the same case one hop further).
                Ok(rsp) if rsp.resendable(again.safe()) => again,
                result => return result,
            };
            balance.send_elsewhere(&failed, again).await
        }))
    }
}

impl<S: Clone> Balance<S> {
    /// Sends `req` to an endpoint other than `failed`, picked the same way.
    async fn send_elsewhere<Req>(
        &self,
        failed: &Arc<EndpointState>,
        req: Req,
    ) -> Result<S::Response, S::Error>
    where
        S: tower::Service<Req>,
        S::Response: Outcome,
    {
        let others: Vec<&(Arc<EndpointState>, S)> = self
            .endpoints
            .iter()
            .filter(|(state, _)| !Arc::ptr_eq(failed, state))
            .collect();
        let now = Instant::now();
        let (state, svc) = pick(
            &others,
            |e| &e.0,
            &self.config,
            now,
            |n| fastrand::usize(..n),
        )
        .copied()
        .expect("the caller resends only where the set has another endpoint");
        tracing::debug!(endpoint = %state.addr, "sending a request refused unsent elsewhere");
        send(svc.clone(), req, state.start(now), &self.config).await
    }
}

/// Sends `req` to `svc`; its outcome is recorded on the endpoint when it completes.
fn send<S, Req>(
    svc: S,
    req: Req,
    in_flight: InFlight,
    config: &Arc<BalanceConfig>,
) -> Sent<tower::util::Oneshot<S, Req>>
where
    S: tower::Service<Req>,
{
    Sent {
        call: tower::util::Oneshot::new(svc, req),
        in_flight,
        config: config.clone(),
    }
}

pin_project_lite::pin_project! {
    /// A request sent to an endpoint: when it completes, its round trip and outcome are
    /// recorded on the endpoint (a request dropped before that leaves only its pending count,
    /// which [`InFlight`] gives back).
    pub struct Sent<F> {
        #[pin]
        call: F,
        in_flight: InFlight,
        config: Arc<BalanceConfig>,
    }
}

impl<F, Rsp, E> std::future::Future for Sent<F>
where
    F: std::future::Future<Output = Result<Rsp, E>>,
    Rsp: Outcome,
{
    type Output = Result<Rsp, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        let success = matches!(&result, Ok(rsp) if rsp.is_success());
        this.in_flight.record(this.config, success, Instant::now());
        std::task::Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{cmp::Reverse, collections::BinaryHeap, collections::HashMap};

    fn endpoints(n: u16, config: &BalanceConfig, now: Instant) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| {
                EndpointState::new(
                    SocketAddr::from(([10, 0, 0, 1], 8000 + i)),
                    10_000,
                    config,
                    now,
                )
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// `ep` answers a request sent at `sent` after `rtt`.
    fn answer(config: &BalanceConfig, ep: &Arc<EndpointState>, sent: Instant, rtt: Duration) {
        ep.start(sent).record(config, true, sent + rtt);
    }

    /// How an endpoint answers: after `base` give or take 25 %, with now and then (2 % of
    /// answers) a hiccup of up to 3 ms more, as replicas on a busy node do; the first answer
    /// also opens a connection (`first`).
    #[derive(Clone, Copy, Debug)]
    struct Latency {
        base: Duration,
        first: Duration,
    }

    /// A small HTTP server in a pod, answering in about 1.5 ms (busybox httpd on a cluster).
    const REPLICA: Latency = Latency {
        base: Duration::from_micros(1_500),
        first: Duration::from_millis(2),
    };

    /// The same, 10 ms slower.
    const SLOW_REPLICA: Latency = Latency {
        base: Duration::from_micros(11_500),
        first: Duration::from_millis(2),
    };

    impl Latency {
        fn sample(self, rng: &mut fastrand::Rng, first: bool) -> Duration {
            let mut rtt = self.base.mul_f64(0.75 + 0.5 * rng.f64());
            if rng.f64() < 0.02 {
                rtt += Duration::from_micros(rng.u64(0..3_000));
            }
            if first {
                rtt += self.first;
            }
            rtt
        }
    }

    /// A client of a service, on simulated time: sends requests evenly spaced and feeds each
    /// endpoint's answers back at the instants they come, with no clock and no sleep.
    struct Client {
        config: BalanceConfig,
        t0: Instant,
        /// Simulated time since `t0`.
        now: Duration,
        endpoints: Vec<Arc<EndpointState>>,
        latencies: Vec<Latency>,
        answered: Vec<bool>,
        rng: fastrand::Rng,
        /// Requests in flight by when they are answered, and their in-flight guards.
        answers: BinaryHeap<Reverse<(Duration, u64)>>,
        in_flight: HashMap<u64, InFlight>,
        sent: u64,
    }

    impl Client {
        fn new(latencies: &[Latency], seed: u64) -> Client {
            let mut client = Client {
                config: BalanceConfig::default(),
                t0: Instant::now(),
                now: Duration::ZERO,
                endpoints: Vec::new(),
                latencies: Vec::new(),
                answered: Vec::new(),
                rng: fastrand::Rng::with_seed(seed),
                answers: BinaryHeap::new(),
                in_flight: HashMap::new(),
                sent: 0,
            };
            for &latency in latencies {
                client.join(latency);
            }
            client
        }

        /// A new endpoint joins the service.
        fn join(&mut self, latency: Latency) {
            let port = 8000 + self.endpoints.len() as u16;
            self.endpoints.push(EndpointState::new(
                SocketAddr::from(([10, 0, 0, 1], port)),
                10_000,
                &self.config,
                self.t0 + self.now,
            ));
            self.latencies.push(latency);
            self.answered.push(false);
        }

        /// Sends `rate` requests per second for `length`; returns how many each endpoint got.
        fn run(&mut self, rate: f64, length: Duration) -> Vec<u64> {
            let gap = Duration::from_secs_f64(1.0 / rate);
            let mut counts = vec![0; self.endpoints.len()];
            for _ in 0..(rate * length.as_secs_f64()).round() as u64 {
                self.answer_until(self.now);
                let now = self.t0 + self.now;
                let rng = &mut self.rng;
                let picked = pick(
                    &self.endpoints,
                    |e| e,
                    &self.config,
                    now,
                    |n| rng.usize(..n),
                )
                .expect("endpoints");
                let i = self
                    .endpoints
                    .iter()
                    .position(|e| Arc::ptr_eq(e, picked))
                    .expect("one of them");
                counts[i] += 1;
                let first = !std::mem::replace(&mut self.answered[i], true);
                let rtt = self.latencies[i].sample(&mut self.rng, first);
                self.sent += 1;
                self.in_flight.insert(self.sent, picked.start(now));
                self.answers.push(Reverse((self.now + rtt, self.sent)));
                self.now += gap;
            }
            counts
        }

        /// Feeds every answer due by `until`.
        fn answer_until(&mut self, until: Duration) {
            while let Some(&Reverse((at, id))) = self.answers.peek() {
                if at > until {
                    break;
                }
                self.answers.pop();
                if let Some(mut in_flight) = self.in_flight.remove(&id) {
                    in_flight.record(&self.config, true, self.t0 + at);
                }
            }
        }
    }

    fn share(counts: &[u64], i: usize) -> f64 {
        counts[i] as f64 / counts.iter().sum::<u64>().max(1) as f64
    }

    /// Two equal endpoints each got 45–55 %.
    fn assert_even(counts: &[u64], what: &str) {
        let first = share(counts, 0);
        assert!(
            (0.45..=0.55).contains(&first),
            "{what}: {counts:?} is not within 45/55"
        );
    }

    #[test]
    fn two_equal_replicas_one_gets_almost_everything() {
        // On a cluster, a client calling a Service with two identical replicas at about 2
        // requests per second, one at a time, sent 81 requests to one and 2 to the other in
        // 40 s: the replica whose first answers were a little slower (here, a cold start) kept
        // a higher estimate than the other, and lost every comparison for most of a minute.
        for cold_start in [ms(5), ms(20), ms(100)] {
            let cold = Latency {
                first: cold_start,
                ..REPLICA
            };
            for seed in 0..20 {
                let mut client = Client::new(&[REPLICA, cold], seed);
                let counts = client.run(2.0, secs(40));
                assert_even(
                    &counts,
                    &format!("cold start {cold_start:?}, 2 req/s for 40 s, seed {seed}"),
                );
            }
        }
    }

    #[test]
    fn equal_endpoints_split_evenly_at_any_rate() {
        let check = |rate: f64, length: Duration| {
            for seed in 0..8 {
                let mut client = Client::new(&[REPLICA, REPLICA], seed);
                let counts = client.run(rate, length);
                assert_even(
                    &counts,
                    &format!("{rate} req/s for {length:?}, seed {seed}"),
                );
            }
        };
        check(1.0, secs(60));
        check(2.0, secs(40));
        check(10.0, secs(20));
        check(50.0, secs(10));
        // From here requests overlap: 1.5 ms answers every 2 ms, then every 0.5 ms.
        check(500.0, secs(5));
        check(2_000.0, secs(5));
    }

    #[test]
    fn a_10ms_slower_endpoint_gets_under_5_percent() {
        let check = |rate: f64, length: Duration| {
            for seed in 0..8 {
                let mut client = Client::new(&[REPLICA, SLOW_REPLICA], seed);
                let counts = client.run(rate, length);
                let slow = share(&counts, 1);
                assert!(
                    slow < 0.05,
                    "{rate} req/s for {length:?}, seed {seed}: the slow endpoint got {counts:?}"
                );
            }
        };
        check(2.0, secs(120));
        check(50.0, secs(20));
        check(500.0, secs(10));
        check(2_000.0, secs(5));
    }

    #[test]
    fn a_new_endpoint_gets_a_fair_share_quickly() {
        for seed in 0..8 {
            // Under load: two endpoints that have answered for a minute, then a third.
            let mut client = Client::new(&[REPLICA, REPLICA], seed);
            client.run(50.0, secs(60));
            client.join(REPLICA);
            let first_second = client.run(50.0, secs(1));
            assert!(
                (10..=25).contains(&first_second[2]),
                "seed {seed}: the new endpoint got {first_second:?} of its first 50"
            );
            let next = client.run(50.0, secs(10));
            let new = share(&next, 2);
            assert!(
                (0.28..=0.39).contains(&new),
                "seed {seed}: the new endpoint got {next:?} of the next 500"
            );

            // At a trickle: its turn comes within a few requests, then it takes turns.
            let mut client = Client::new(&[REPLICA, REPLICA], seed);
            client.run(2.0, secs(60));
            client.join(REPLICA);
            let first = client.run(2.0, secs(2));
            assert!(
                first[2] >= 1,
                "seed {seed}: the new endpoint got none of {first:?}"
            );
            let next = client.run(2.0, secs(60));
            let new = share(&next, 2);
            assert!(
                (0.25..=0.42).contains(&new),
                "seed {seed}: the new endpoint got {next:?} of the next 120"
            );
        }
    }

    #[test]
    fn estimates_within_noise_are_equal() {
        // `a` answers twice in `a_rtt`, then `b` twice in `b_rtt`; then the one that wins a
        // pick: when their estimates are equal, `a`, used less recently; otherwise the faster.
        let check = |a_rtt: Duration, b_rtt: Duration, winner: &str| {
            let config = BalanceConfig::default();
            let t0 = Instant::now();
            let eps = endpoints(2, &config, t0);
            for (i, (ep, rtt)) in eps.iter().zip([a_rtt, b_rtt]).enumerate() {
                for j in 0..2 {
                    answer(&config, ep, t0 + ms(100) * (2 * i + j) as u32, rtt);
                }
            }
            let now = t0 + ms(500);
            for first in [0, 1] {
                let picked = pick(&eps, |e| e, &config, now, |_| first).expect("endpoints");
                let got = if Arc::ptr_eq(picked, &eps[0]) {
                    "a"
                } else {
                    "b"
                };
                assert_eq!(
                    got, winner,
                    "{a_rtt:?} then {b_rtt:?}, drawn first: {first}"
                );
            }
        };
        let us = Duration::from_micros;
        // Under the 1 ms floor: noise.
        check(us(300), us(250), "a");
        check(us(1_900), us(1_000), "a");
        check(us(1_000), us(1_900), "a");
        check(us(2_100), us(1_000), "b");
        // Within 20 % of the faster one.
        check(ms(11), ms(10), "a");
        check(ms(13), ms(10), "b");
        check(ms(10), ms(13), "a");
        // 10 ms slower.
        check(us(10_300), us(300), "b");
    }

    #[test]
    fn equal_endpoints_go_by_requests_in_flight_then_take_turns() {
        let config = BalanceConfig::default();
        let t0 = Instant::now();
        let eps = endpoints(2, &config, t0);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut next = |now| {
            let picked = pick(&eps, |e| e, &config, now, |n| rng.usize(..n)).expect("endpoints");
            usize::from(picked.addr.port() - 8000)
        };
        // One at a time: they alternate, whichever was drawn first.
        let mut order = Vec::new();
        for i in 0..6 {
            let now = t0 + ms(500) * i;
            let picked = next(now);
            order.push(picked);
            eps[picked].start(now).record(&config, true, now + ms(1));
        }
        assert!(
            order.windows(2).all(|w| w[0] != w[1]),
            "they take turns: {order:?}"
        );
        // Overlapping: the one with fewer requests in flight.
        let now = t0 + secs(10);
        let busy = eps[0].start(now);
        assert_eq!(next(now), 1);
        assert_eq!(next(now), 1);
        drop(busy);
    }

    #[test]
    fn a_slower_answer_moves_the_estimate_part_of_the_way() {
        let config = BalanceConfig::default();
        let t0 = Instant::now();
        let ep = &endpoints(1, &config, t0)[0];
        let estimate = || lock(&ep.rtt).estimate.expect("an estimate").ns / 1e6;
        let close = |value: f64, expected: f64| (value - expected).abs() < 1e-6;
        answer(&config, ep, t0, ms(1));
        assert_eq!(estimate(), 1.0, "the first answer is the estimate");
        answer(&config, ep, t0 + ms(10), ms(6));
        assert!(
            close(estimate(), 1.2),
            "a hiccup right after counts as 3 ms (twice the estimate plus the floor), a tenth \
             of the way: {}",
            estimate()
        );
        answer(&config, ep, t0 + ms(20), ms(1));
        assert!(
            close(estimate(), 1.18),
            "a fast answer right after moves it a tenth of the way back: {}",
            estimate()
        );
        for i in 1..=5 {
            answer(&config, ep, t0 + ms(20 + i * 10), ms(11));
        }
        assert!(
            estimate() > 2.0,
            "five slow answers in a row take it more than the floor above a 1 ms peer: {}",
            estimate()
        );
        answer(&config, ep, t0 + secs(60), ms(1));
        assert!(
            estimate() < 1.01,
            "after a long silence an answer replaces it: {}",
            estimate()
        );
        answer(&config, ep, t0 + secs(120), ms(11));
        assert!(
            (2.99..3.01).contains(&estimate()),
            "even then, an answer counts as at most twice the estimate plus the floor: {}",
            estimate()
        );
    }

    #[test]
    fn an_endpoint_that_was_slow_once_is_tried_again() {
        let config = BalanceConfig::default();
        let t0 = Instant::now();
        let eps = endpoints(2, &config, t0);
        let fast = |now: Instant| answer(&config, &eps[1], now, ms(1));
        for i in 0..2 {
            answer(&config, &eps[0], t0 + ms(100 * i), ms(20));
            fast(t0 + ms(100 * i));
        }
        let winner = |now| {
            let picked = pick(&eps, |e| e, &config, now, |_| 0).expect("endpoints");
            usize::from(picked.addr.port() - 8000)
        };
        assert_eq!(winner(t0 + ms(200)), 1, "the slow one loses at first");
        // With time: 19 ms of lead fade under the 1 ms floor after 10 s × ln 19 ≈ 29 s.
        fast(t0 + secs(25));
        assert_eq!(winner(t0 + secs(25)), 1, "still slower after 25 s");
        fast(t0 + secs(31));
        assert_eq!(winner(t0 + secs(31)), 0, "tried again after 31 s");
        // Its answer replaces what had faded: still 20 ms.
        answer(&config, &eps[0], t0 + secs(31), ms(20));
        let estimate = lock(&eps[0].rtt).estimate.expect("an estimate").ns / 1e6;
        assert!((19.9..20.1).contains(&estimate), "{estimate}");
        // With picks, under load: 200 × ln 19 ≈ 589 lost picks, however short the time.
        let now = t0 + secs(31) + ms(50);
        fast(now);
        let mut lost = 0;
        while winner(now) == 1 {
            lost += 1;
            assert!(lost < 1_000, "never tried again");
        }
        assert!(
            (560..=620).contains(&lost),
            "tried again after {lost} picks"
        );
    }

    #[test]
    fn an_outlier_among_the_first_answers_does_not_shut_an_endpoint_out() {
        let config = BalanceConfig::default();
        let t0 = Instant::now();
        // Both answer their first request before either is compared: `a` after a cold start.
        let eps = endpoints(2, &config, t0);
        answer(&config, &eps[0], t0, ms(30));
        answer(&config, &eps[1], t0 + ms(10), ms(1));
        let picked = pick(&eps, |e| e, &config, t0 + ms(100), |_| 1).expect("endpoints");
        assert!(
            Arc::ptr_eq(picked, &eps[0]),
            "its first answer counts as one hiccup after the other's: equal, and its turn"
        );
        let estimate = lock(&eps[0].rtt).estimate.expect("an estimate").ns / 1e6;
        assert!((estimate - 1.2).abs() < 1e-6, "{estimate}");

        // A new endpoint joining later starts as an equal of the endpoint it is compared
        // with, and its first answer, a cold start, moves it as one hiccup would.
        let eps = endpoints(2, &config, t0);
        for i in 0..2 {
            answer(&config, &eps[0], t0 + ms(100 * i), ms(1));
        }
        let picked = pick(&eps, |e| e, &config, t0 + ms(200), |_| 0).expect("endpoints");
        assert!(Arc::ptr_eq(picked, &eps[1]), "never used: its turn");
        answer(&config, &eps[1], t0 + ms(200), ms(30));
        let picked = pick(&eps, |e| e, &config, t0 + ms(300), |_| 1).expect("endpoints");
        assert!(Arc::ptr_eq(picked, &eps[0]), "equal again: turns");
        let picked = pick(&eps, |e| e, &config, t0 + ms(300), |_| 0).expect("endpoints");
        assert!(Arc::ptr_eq(picked, &eps[0]), "whichever is drawn first");
    }

    #[test]
    fn a_much_slower_endpoint_among_three_gets_few_requests() {
        let very_slow = Latency {
            base: ms(200),
            first: ms(2),
        };
        for seed in 0..4 {
            let mut client = Client::new(&[very_slow, REPLICA, REPLICA], seed);
            let counts = client.run(100.0, secs(30));
            assert!(
                share(&counts, 0) < 0.01,
                "seed {seed}: the slow endpoint got {counts:?}"
            );
            assert!(
                (0.45..=0.55).contains(&(counts[1] as f64 / (counts[1] + counts[2]) as f64)),
                "seed {seed}: the others share evenly: {counts:?}"
            );
        }
    }

    #[test]
    fn requests_in_flight_count_as_load() {
        let config = BalanceConfig::default();
        let now = Instant::now();
        let eps = endpoints(2, &config, now);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].start(now)).collect();
        let mut rng = fastrand::Rng::with_seed(1);
        let picked = pick(&eps, |e| e, &config, now, |n| rng.usize(..n)).unwrap();
        assert_eq!(picked.addr, eps[1].addr);
        drop(_busy);
        assert_eq!(
            eps[0].pending.load(Ordering::Relaxed),
            0,
            "dropping an in-flight request releases it"
        );
    }

    #[test]
    fn consecutive_failures_eject_and_a_failed_probe_doubles_the_ejection() {
        let config = BalanceConfig {
            failures_to_eject: 3,
            ..BalanceConfig::default()
        };
        let t0 = Instant::now();
        let ep = &endpoints(1, &config, t0)[0];
        for _ in 0..2 {
            ep.start(t0).record(&config, false, t0);
        }
        assert!(!ep.is_ejected(t0), "two failures are not enough");
        ep.start(t0).record(&config, true, t0);
        for _ in 0..2 {
            ep.start(t0).record(&config, false, t0);
        }
        assert!(!ep.is_ejected(t0), "a success resets the count");
        ep.start(t0).record(&config, false, t0);
        assert!(ep.is_ejected(t0), "three in a row eject");
        assert!(
            !ep.is_ejected(t0 + ms(1_000)),
            "after the first backoff a probe is allowed"
        );
        ep.start(t0 + ms(1_000))
            .record(&config, false, t0 + ms(1_000));
        assert!(
            ep.is_ejected(t0 + ms(2_900)),
            "a failed probe ejects again, for twice as long"
        );
        assert!(!ep.is_ejected(t0 + ms(3_000)));
        ep.start(t0 + ms(3_000))
            .record(&config, true, t0 + ms(3_000));
        for _ in 0..2 {
            ep.start(t0 + ms(3_000))
                .record(&config, false, t0 + ms(3_000));
        }
        assert!(
            !ep.is_ejected(t0 + ms(3_000)),
            "a successful probe restores it fully"
        );
    }

    #[test]
    fn ejected_endpoints_are_skipped_unless_all_are() {
        let config = BalanceConfig {
            failures_to_eject: 1,
            ..BalanceConfig::default()
        };
        let now = Instant::now();
        let eps = endpoints(3, &config, now);
        eps[0].start(now).record(&config, false, now);
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..500 {
            let ep = pick(&eps, |e| e, &config, now, |n| rng.usize(..n)).unwrap();
            assert_ne!(ep.addr, eps[0].addr);
        }
        eps[1].start(now).record(&config, false, now);
        eps[2].start(now).record(&config, false, now);
        assert!(
            pick(&eps, |e| e, &config, now, |n| rng.usize(..n)).is_some(),
            "all ejected: still pick one"
        );
        assert!(pick::<Arc<EndpointState>>(&[], |e| e, &config, now, |_| 0).is_none());
    }

    /// `Balance`, the service, over endpoint services that answer at once.
    mod service {
        use super::*;
        use http::{Response, StatusCode};
        use std::{
            convert::Infallible,
            future::{ready, Ready},
            sync::atomic::AtomicUsize,
        };
        use tower::{Service, ServiceExt};

        /// An endpoint's service: answers `status` (`None`: fails) and counts its requests.
        #[derive(Clone)]
        struct Answer {
            status: Option<StatusCode>,
            calls: Arc<AtomicUsize>,
        }

        impl Service<()> for Answer {
            type Response = Response<()>;
            type Error = &'static str;
            type Future = Ready<Result<Response<()>, &'static str>>;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), &'static str>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, (): ()) -> Self::Future {
                self.calls.fetch_add(1, Ordering::Relaxed);
                ready(self.status.ok_or("connection refused").map(|status| {
                    let mut rsp = Response::new(());
                    *rsp.status_mut() = status;
                    rsp
                }))
            }
        }

        /// A balancer over one endpoint per answer, and each endpoint's request count.
        fn balance(
            config: BalanceConfig,
            answers: &[Option<StatusCode>],
        ) -> (Balance<Answer>, Vec<Arc<AtomicUsize>>) {
            let states = endpoints(answers.len() as u16, &config, Instant::now());
            let set: Vec<_> = states
                .into_iter()
                .zip(answers)
                .map(|(state, &status)| {
                    let calls = Arc::default();
                    (state, Answer { status, calls })
                })
                .collect();
            let calls = set.iter().map(|(_, a)| a.calls.clone()).collect();
            (Balance::new(set.into(), Arc::new(config)), calls)
        }

        fn counts(calls: &[Arc<AtomicUsize>]) -> Vec<usize> {
            calls.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        }

        const OK: Option<StatusCode> = Some(StatusCode::OK);

        impl Resend<&'static str> for () {
            fn resend(&self) -> Option<Self> {
                None
            }
            fn unsent(_: &&'static str) -> bool {
                false
            }
        }

        impl Resend<Infallible> for () {
            fn resend(&self) -> Option<Self> {
                None
            }
            fn unsent(_: &Infallible) -> bool {
                false
            }
        }

        /// An HTTP endpoint that fails every request with `error` (`None`: answers 200).
        #[derive(Clone)]
        struct Http {
            error: Option<fn() -> crate::svc::BoxError>,
            /// Answers the error as the endpoint's proxy would (`Failure::response`) rather
            /// than failing with it.
            proxied: bool,
            calls: Arc<AtomicUsize>,
        }

        impl Service<http::Request<crate::svc::BoxBody>> for Http {
            type Response = Response<()>;
            type Error = crate::svc::BoxError;
            type Future = Ready<Result<Response<()>, crate::svc::BoxError>>;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), crate::svc::BoxError>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, _: http::Request<crate::svc::BoxBody>) -> Self::Future {
                self.calls.fetch_add(1, Ordering::Relaxed);
                ready(match self.error {
                    Some(error) if self.proxied => {
                        let failure = crate::http::errors::Failure::of(&*error());
                        Ok(failure.response(false).map(|_| ()))
                    }
                    Some(error) => Err(error()),
                    None => Ok(Response::new(())),
                })
            }
        }

        /// Sends 20 requests (with `body`, or none) over a failing endpoint (`error`) and a
        /// healthy one: how many were answered, and how many the failing one got.
        async fn resent(
            error: fn() -> crate::svc::BoxError,
            body: Option<&'static str>,
        ) -> (usize, usize) {
            resent_as(http::Method::GET, error, body).await
        }

        /// The same with requests of `method`.
        async fn resent_as(
            method: http::Method,
            error: fn() -> crate::svc::BoxError,
            body: Option<&'static str>,
        ) -> (usize, usize) {
            let config = BalanceConfig {
                failures_to_eject: 1000,
                ..BalanceConfig::default()
            };
            let states = endpoints(2, &config, Instant::now());
            let failing = Http {
                error: Some(error),
                proxied: false,
                calls: Arc::default(),
            };
            let healthy = Http {
                error: None,
                proxied: false,
                calls: Arc::default(),
            };
            let calls = failing.calls.clone();
            let set = vec![(states[0].clone(), failing), (states[1].clone(), healthy)];
            let mut balance = Balance::new(set.into(), Arc::new(config));
            let mut answered = 0;
            for _ in 0..20 {
                let body = match body {
                    Some(b) => crate::svc::BoxBody::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b.as_bytes()),
                    )),
                    None => crate::svc::BoxBody::new(http_body_util::Empty::<bytes::Bytes>::new()),
                };
                let req = http::Request::builder()
                    .method(method.clone())
                    .uri("http://web/")
                    .body(body)
                    .unwrap();
                if balance.ready().await.unwrap().call(req).await.is_ok() {
                    answered += 1;
                }
            }
            (answered, calls.load(Ordering::Relaxed))
        }

        fn refused() -> crate::svc::BoxError {
            crate::http::client::UpstreamError::Connect {
                target: SocketAddr::from(([10, 0, 0, 1], 8000)),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }
            .into()
        }

        /// As the endpoint's metrics layer returns it.
        fn refused_and_recorded() -> crate::svc::BoxError {
            crate::http::errors::Recorded(refused()).into()
        }

        fn reset_after_sending() -> crate::svc::BoxError {
            crate::http::errors::Recorded(
                crate::http::client::UpstreamError::Request {
                    target: SocketAddr::from(([10, 0, 0, 1], 8000)),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
                }
                .into(),
            )
            .into()
        }

        /// A failure that is not the connection's: the response's body broke off.
        fn answered_then_failed() -> crate::svc::BoxError {
            crate::http::errors::Recorded("the response body broke off".into()).into()
        }

        /// Regression (issue 17, chaos): an upstream that reset one connection in three lost a
        /// third of a default route's GETs. A safe method without a body whose connection was
        /// reset before an answer goes once to another endpoint.
        #[tokio::test]
        async fn a_safe_request_whose_connection_was_reset_goes_to_another_endpoint() {
            for method in [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS] {
                let (answered, failing) =
                    resent_as(method.clone(), reset_after_sending, None).await;
                assert!(failing > 0, "the failing endpoint gets its turns");
                assert_eq!(
                    answered, 20,
                    "{method}: every reset request is sent elsewhere"
                );
            }
        }

        /// An endpoint whose proxy answers every request 502 `mesh-proxy-unanswered` (its
        /// application reset the connection first, or refused it), and a healthy one.
        #[tokio::test]
        async fn a_safe_request_its_endpoints_proxy_says_was_unanswered_goes_elsewhere() {
            for (method, error, resent) in [
                (http::Method::GET, reset_after_sending as fn() -> _, true),
                (http::Method::HEAD, reset_after_sending, true),
                (http::Method::POST, reset_after_sending, false),
                // Its application never got it: whatever the method.
                (http::Method::POST, refused, true),
            ] {
                let config = BalanceConfig {
                    failures_to_eject: 1000,
                    ..BalanceConfig::default()
                };
                let states = endpoints(2, &config, Instant::now());
                let bad = Arc::default();
                let set = vec![
                    (
                        states[0].clone(),
                        Http {
                            error: Some(error),
                            proxied: true,
                            calls: Arc::clone(&bad),
                        },
                    ),
                    (
                        states[1].clone(),
                        Http {
                            error: None,
                            proxied: false,
                            calls: Arc::default(),
                        },
                    ),
                ];
                let mut balance = Balance::new(set.into(), Arc::new(config));
                let mut ok = 0;
                for _ in 0..20 {
                    let req = http::Request::builder()
                        .method(method.clone())
                        .uri("http://web/")
                        .body(crate::svc::BoxBody::empty())
                        .unwrap();
                    let rsp = balance.ready().await.unwrap().call(req).await.unwrap();
                    if rsp.status() == StatusCode::OK {
                        ok += 1;
                    }
                }
                let bad = bad.load(Ordering::Relaxed);
                assert!(bad > 0, "the unanswering endpoint gets its turns");
                let expected = if resent { 20 } else { 20 - bad };
                assert_eq!(ok, expected, "{method}: resent elsewhere: {resent}");
            }
        }

        #[tokio::test]
        async fn a_request_refused_unsent_goes_to_another_endpoint() {
            for error in [refused as fn() -> _, refused_and_recorded] {
                let (answered, failing) = resent(error, None).await;
                assert!(failing > 0, "the failing endpoint gets its turns");
                assert_eq!(
                    answered, 20,
                    "every request refused unsent is sent elsewhere"
                );
            }
        }

        #[tokio::test]
        async fn a_request_with_a_body_or_that_may_have_been_sent_is_not_sent_twice() {
            for (method, error, body) in [
                (http::Method::GET, refused as fn() -> _, Some("a body")),
                (http::Method::POST, reset_after_sending, None),
                (http::Method::DELETE, reset_after_sending, None),
                (http::Method::GET, answered_then_failed, None),
            ] {
                let (answered, failing) = resent_as(method.clone(), error, body).await;
                assert!(failing > 0, "the failing endpoint gets its turns");
                assert_eq!(
                    answered,
                    20 - failing,
                    "{body:?}: each of its failures stands"
                );
            }
        }

        #[tokio::test]
        async fn requests_go_to_the_endpoint_services_of_the_set() {
            let (mut balance, calls) = balance(BalanceConfig::default(), &[OK, OK]);
            for _ in 0..2 {
                let rsp = balance.ready().await.unwrap().call(()).await.unwrap();
                assert_eq!(rsp.status(), StatusCode::OK);
            }
            assert_eq!(
                counts(&calls),
                [1, 1],
                "a never-used endpoint gets its turn"
            );
        }

        #[tokio::test]
        async fn a_5xx_or_an_error_is_a_failure() {
            let check = |answer: Option<StatusCode>, failure: bool| async move {
                let config = BalanceConfig {
                    failures_to_eject: 1,
                    ..BalanceConfig::default()
                };
                let (mut balance, _) = balance(config, &[answer]);
                let _ = balance.ready().await.unwrap().call(()).await;
                let state = &balance.endpoints()[0].0;
                assert_eq!(state.is_ejected(Instant::now()), failure, "{answer:?}");
            };
            check(Some(StatusCode::OK), false).await;
            check(Some(StatusCode::NOT_FOUND), false).await;
            check(Some(StatusCode::INTERNAL_SERVER_ERROR), true).await;
            check(Some(StatusCode::SERVICE_UNAVAILABLE), true).await;
            check(None, true).await;
        }

        #[tokio::test]
        async fn an_endpoint_that_keeps_failing_is_ejected_and_the_other_takes_the_traffic() {
            let config = BalanceConfig {
                failures_to_eject: 3,
                min_ejection: Duration::from_secs(3_600),
                max_ejection: Duration::from_secs(3_600),
                ..BalanceConfig::default()
            };
            let (mut balance, calls) =
                balance(config, &[Some(StatusCode::INTERNAL_SERVER_ERROR), OK]);
            let failing = balance.endpoints()[0].0.clone();
            let send_until_failing_got = |n: usize| {
                let mut balance = balance.clone();
                let calls = calls.clone();
                async move {
                    for _ in 0..100 {
                        if calls[0].load(Ordering::Relaxed) == n {
                            return;
                        }
                        balance.ready().await.unwrap().call(()).await.unwrap();
                    }
                    panic!("the failing endpoint never got {n} requests");
                }
            };
            send_until_failing_got(2).await;
            assert!(
                !failing.is_ejected(Instant::now()),
                "two failures are not enough"
            );
            send_until_failing_got(3).await;
            assert!(failing.is_ejected(Instant::now()), "three eject it");

            let before = counts(&calls);
            for _ in 0..20 {
                let rsp = balance.ready().await.unwrap().call(()).await.unwrap();
                assert_eq!(rsp.status(), StatusCode::OK);
            }
            assert_eq!(counts(&calls), [before[0], before[1] + 20]);
        }

        /// An endpoint's service whose answer waits for its sender.
        #[derive(Clone)]
        struct Held(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>);

        impl Service<()> for Held {
            type Response = Response<()>;
            type Error = Infallible;
            type Future =
                futures_util::future::BoxFuture<'static, Result<Response<()>, Infallible>>;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Infallible>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, (): ()) -> Self::Future {
                let answer = lock(&self.0).take();
                Box::pin(async move {
                    if let Some(answer) = answer {
                        let _ = answer.await;
                    }
                    Ok(Response::new(()))
                })
            }
        }

        /// A balancer over one endpoint whose answer waits for the returned sender.
        fn held() -> (
            Balance<Held>,
            Arc<EndpointState>,
            tokio::sync::oneshot::Sender<()>,
        ) {
            let config = BalanceConfig::default();
            let state = endpoints(1, &config, Instant::now()).remove(0);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let svc = Held(Arc::new(Mutex::new(Some(rx))));
            let balance = Balance::new(vec![(state.clone(), svc)].into(), Arc::new(config));
            (balance, state, tx)
        }

        #[tokio::test]
        async fn a_request_is_in_flight_until_its_response_arrives() {
            let (mut balance, state, answer) = held();
            let rsp = balance.ready().await.unwrap().call(());
            assert_eq!(state.pending.load(Ordering::Relaxed), 1);
            let rsp = tokio::spawn(rsp);
            answer.send(()).unwrap();
            rsp.await.unwrap().unwrap();
            assert_eq!(state.pending.load(Ordering::Relaxed), 0);
            assert!(lock(&state.rtt).estimate.is_some(), "its round trip counts");
        }

        #[tokio::test]
        async fn a_request_dropped_before_its_response_is_no_longer_in_flight() {
            let (mut balance, state, _answer) = held();
            let rsp = balance.ready().await.unwrap().call(());
            assert_eq!(state.pending.load(Ordering::Relaxed), 1);
            drop(rsp);
            assert_eq!(state.pending.load(Ordering::Relaxed), 0);
            assert!(lock(&state.rtt).estimate.is_none(), "nothing to record");
        }
    }
}
