//! Latency-aware load balancing: power of two choices over peak-EWMA load, with failing
//! endpoints ejected and probed back with exponential backoff.
//!
//! Each endpoint keeps an estimate of its round-trip time that jumps up at once to a slower
//! response (the *peak*) and decays towards faster ones exponentially over time (the *EWMA*), as
//! in Finagle and tower's `PeakEwma`. Its load is that estimate times the requests it has in
//! flight, divided by its weight. To pick an endpoint, two are drawn at random and the less
//! loaded one wins: nearly as good as picking the least loaded of all, at a constant cost, and
//! without herding every client onto the same endpoint.
//!
//! The state is shared and lock-light, so every request of every connection picks directly;
//! there is no balancer task or queue in front of it.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// How the balancer behaves.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// The round-trip time assumed for an endpoint that has not answered yet.
    pub default_rtt: Duration,
    /// How fast the estimate forgets: after this long, a past sample weighs 1/e.
    pub decay: Duration,
    /// Consecutive failures that eject an endpoint.
    pub failures_to_eject: u32,
    /// The first ejection's length; each failed probe doubles it, up to `max_ejection`.
    pub min_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
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
    rtt: Mutex<Rtt>,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Rtt {
    /// The estimate, in nanoseconds.
    ns: f64,
    updated: Instant,
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
    pub fn new(addr: SocketAddr, weight: u32, config: &BalanceConfig, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            addr,
            weight: weight.max(1),
            pending: AtomicU32::new(0),
            rtt: Mutex::new(Rtt {
                ns: config.default_rtt.as_nanos() as f64,
                updated: now,
            }),
            health: Mutex::new(Health {
                next_ejection: config.min_ejection,
                ..Health::default()
            }),
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

    /// The endpoint's load now: decayed RTT estimate × (requests in flight + 1) / weight.
    pub fn load(&self, config: &BalanceConfig, now: Instant) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed);
        let rtt = lock(&self.rtt).decayed(config.decay, now);
        rtt * f64::from(pending + 1) / f64::from(self.weight)
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        lock(&self.health)
            .ejected_until
            .is_some_and(|until| now < until)
    }

    fn observe_rtt(&self, config: &BalanceConfig, sent: Instant, now: Instant) {
        lock(&self.rtt).observe(config.decay, now.saturating_duration_since(sent), now);
    }

    fn observe_outcome(&self, config: &BalanceConfig, success: bool, now: Instant) {
        let mut health = lock(&self.health);
        if success {
            *health = Health {
                next_ejection: config.min_ejection,
                ..Health::default()
            };
            return;
        }
        health.consecutive_failures += 1;
        let probing = health.ejected_until.is_some_and(|until| now >= until);
        if health.consecutive_failures >= config.failures_to_eject || probing {
            let ejection = health.next_ejection;
            health.ejected_until = Some(now + ejection);
            health.next_ejection = (ejection * 2).min(config.max_ejection);
            tracing::info!(endpoint = %self.addr, ?ejection, failures = health.consecutive_failures, "endpoint ejected");
        }
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

impl Rtt {
    /// The estimate decayed to `now`: it drifts towards zero while nothing is observed, so an
    /// endpoint that was slow long ago gets traffic again.
    fn decayed(&mut self, decay: Duration, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated);
        if !elapsed.is_zero() {
            self.ns *= (-(elapsed.as_nanos() as f64) / decay.as_nanos().max(1) as f64).exp();
            self.updated = now;
        }
        self.ns
    }

    /// A new sample: a slower one replaces the estimate (the peak), a faster one is averaged in
    /// with a weight that grows with the time since the last update.
    fn observe(&mut self, decay: Duration, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        if sample > self.ns {
            self.ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
            let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            self.ns = self.ns * w + sample * (1.0 - w);
        }
        self.updated = now;
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
    // always succeeds at once; when all are ejected any endpoint beats failing outright.
    let mut draw = |avoid: Option<usize>| {
        let mut last = 0;
        for _ in 0..4 {
            let mut i = random(endpoints.len());
            if Some(i) == avoid {
                i = (i + 1) % endpoints.len();
            }
            last = i;
            if !state(&endpoints[i]).is_ejected(now) {
                return i;
            }
        }
        last
    };
    let a = draw(None);
    let b = draw(Some(a));
    let (ea, eb) = (state(&endpoints[a]), state(&endpoints[b]));
    let prefer_a = match (ea.is_ejected(now), eb.is_ejected(now)) {
        (false, true) => true,
        (true, false) => false,
        _ => ea.load(config, now) <= eb.load(config, now),
    };
    Some(&endpoints[if prefer_a { a } else { b }])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the numbers stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn rtt_jumps_to_a_peak_and_decays_towards_faster_samples() {
        let config = BalanceConfig::default();
        let t0 = Instant::now();
        let mut rtt = Rtt {
            ns: ms(10).as_nanos() as f64,
            updated: t0,
        };
        rtt.observe(config.decay, ms(100), t0);
        assert_eq!(
            rtt.ns,
            ms(100).as_nanos() as f64,
            "a slower sample is taken at once"
        );
        rtt.observe(config.decay, ms(1), t0 + ms(10));
        assert!(
            rtt.ns > ms(99).as_nanos() as f64,
            "a fast sample right after moves it little"
        );
        rtt.observe(config.decay, ms(1), t0 + Duration::from_secs(60));
        assert!(
            rtt.ns < ms(2).as_nanos() as f64,
            "after a long time the fast sample dominates"
        );
        let decayed = rtt.decayed(config.decay, t0 + Duration::from_secs(120));
        assert!(decayed < rtt.ns + 1.0 && decayed < ms(1).as_nanos() as f64);
    }

    #[test]
    fn the_slower_endpoint_gets_fewer_requests() {
        let config = BalanceConfig::default();
        let now = Instant::now();
        let eps = endpoints(3, &config, now);
        for (i, ep) in eps.iter().enumerate() {
            let rtt = if i == 0 { ms(200) } else { ms(5) };
            ep.start(now).record(&config, true, now + rtt);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0usize; 3];
        for _ in 0..3_000 {
            let ep = pick(&eps, |e| e, &config, now + ms(300), |n| rng.usize(..n)).unwrap();
            counts[usize::from(ep.addr.port() - 8000)] += 1;
        }
        assert!(
            counts[0] < 3_000 / 10,
            "the slow endpoint only wins when drawn twice: {counts:?}"
        );
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
}
