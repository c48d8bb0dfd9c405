//! Local rate limits (`HTTPLocalRateLimitPolicy`): requests per second to a Server, in total
//! and per client identity, enforced by each proxy on its own. The layer that applies them
//! (after authorization, so that a refused request does not spend the budget: 429, gRPC
//! `RESOURCE_EXHAUSTED`) is [`super::authorize::NewRateLimit`].
//!
//! Each limit is a GCRA (generic cell rate algorithm): one atomic "theoretical arrival time" per
//! limit, so that a request costs a compare-and-swap, not a lock or a timer. A limit of `r` per
//! second admits a burst of a tenth of a second's worth (at least one request), so that over any
//! window the count stays within `r × window + r / 10`. Written here rather than taken from the
//! `governor` crate: the whole algorithm is the twenty lines of [`Gcra::admit`], and the keyed
//! limiter needs only a map we bound ourselves.

use mesh_api::inbound::RateLimit;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

/// The most client identities whose limits are kept; past it, idle ones are forgotten.
const MAX_IDENTITIES: usize = 10_000;

/// One `HTTPLocalRateLimitPolicy`, with the state of its limits.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimit,
    total: Option<Gcra>,
    per_identity: Mutex<HashMap<Arc<str>, Arc<Gcra>>>,
    epoch: Instant,
}

/// Which limit refused a request (the `scope` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Total,
    Identity,
    Override,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Identity => "identity",
            Self::Override => "override",
        }
    }
}

impl RateLimiter {
    pub fn new(config: RateLimit) -> Self {
        Self {
            total: config.total.map(Gcra::new),
            per_identity: Mutex::default(),
            epoch: Instant::now(),
            config,
        }
    }

    /// The policy it enforces.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Admits one request of client `id` (`None`: unauthenticated clients, who share one
    /// limit), or says which limit refused it.
    pub fn admit(&self, id: Option<&str>) -> Result<(), Scope> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let id = id.unwrap_or("");
        let own = self
            .config
            .overrides
            .iter()
            .find(|o| o.identities.iter().any(|i| i == id))
            .map(|o| (o.requests_per_second, Scope::Override))
            .or(self.config.identity.map(|rps| (rps, Scope::Identity)));
        if let Some((rps, scope)) = own {
            if !self.identity_limit(id, rps, now).admit(now) {
                return Err(scope);
            }
        }
        match &self.total {
            Some(total) if !total.admit(now) => Err(Scope::Total),
            _ => Ok(()),
        }
    }

    fn identity_limit(&self, id: &str, rps: u32, now: u64) -> Arc<Gcra> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut map = self.per_identity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = map.get(id) {
            return limit.clone();
        }
        if map.len() >= MAX_IDENTITIES {
            // Forget the limits that are back to full: they would admit a burst anyway.
            map.retain(|_, g| g.tat.load(Ordering::Relaxed) > now);
        }
        let limit = Arc::new(Gcra::new(rps));
        map.insert(id.into(), limit.clone());
        limit
    }
}

/// One rate: the theoretical arrival time of the next request, in nanoseconds of the limiter's
/// clock.
#[derive(Debug)]
pub struct Gcra {
    tat: AtomicU64,
    /// Nanoseconds between requests at the rate.
    interval: u64,
    /// How far ahead of now the arrival time may run: the burst.
    tolerance: u64,
}

impl Gcra {
    pub fn new(per_second: u32) -> Self {
        let per_second = u64::from(per_second.max(1));
        let interval = 1_000_000_000 / per_second;
        let burst = (per_second / 10).max(1);
        Self {
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval * (burst - 1),
        }
    }

    /// Admits a request at `now`, or refuses it without changing the state.
    pub fn admit(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::inbound::RateLimitOverride;

    const SECOND: u64 = 1_000_000_000;

    /// Requests admitted when `n` arrive evenly over `secs` seconds.
    fn admitted(g: &Gcra, n: u64, secs: u64) -> u64 {
        (0..n).filter(|i| g.admit(i * secs * SECOND / n)).count() as u64
    }

    #[test]
    fn a_rate_holds_over_time_with_a_small_burst() {
        for (rps, offered, expect) in [
            (100, 5_000, 100 * 10 + 10),
            (10, 5_000, 10 * 10 + 1),
            (100, 500, 500),
            (1, 100, 10 + 1),
        ] {
            let g = Gcra::new(rps);
            let got = admitted(&g, offered, 10);
            assert!(
                got.abs_diff(expect) <= 1,
                "{rps} rps, {offered} offered over 10 s: {got} admitted, not ~{expect}"
            );
        }
        let g = Gcra::new(100);
        let burst = (0..1000).filter(|_| g.admit(SECOND)).count();
        assert_eq!(burst, 10, "a tenth of a second's worth at once");
    }

    #[test]
    fn identities_have_their_own_limits_and_overrides() {
        let limiter = RateLimiter::new(RateLimit {
            namespace: "demo".into(),
            name: "rl".into(),
            total: Some(1000),
            identity: Some(10),
            overrides: vec![RateLimitOverride {
                requests_per_second: 50,
                identities: vec!["web".into()],
            }],
        });
        let burst = |id: Option<&str>| (0..200).filter(|_| limiter.admit(id).is_ok()).count();
        assert_eq!(burst(Some("bot")), 1);
        assert_eq!(burst(Some("other")), 1, "each identity on its own");
        assert_eq!(burst(None), 1, "unauthenticated clients share one");
        assert_eq!(burst(Some("web")), 5, "the override's burst");
        assert_eq!(limiter.admit(Some("bot")), Err(Scope::Identity));
        assert_eq!(limiter.admit(Some("web")), Err(Scope::Override));
        let total_only = RateLimiter::new(RateLimit {
            total: Some(10),
            ..RateLimit::default()
        });
        assert_eq!(total_only.admit(None), Ok(()));
        assert_eq!(total_only.admit(Some("x")), Err(Scope::Total));
    }
}
