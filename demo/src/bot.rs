//! The vote bot: a steady, low-rate load through the web front end over one HTTP/1.1
//! keep-alive connection, which never gives up (it backs off and retries) and reports a
//! one-line summary now and then.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, MissedTickBehavior};

use crate::emoji::EMOJIS;
use crate::net::Target;

/// Votes per second unless configured otherwise.
pub const DEFAULT_RATE: f64 = 2.0;

/// The emoji the bot picks about one time in [`DOUGHNUT_ONE_IN`].
pub const DOUGHNUT: &str = ":doughnut:";
pub const DOUGHNUT_ONE_IN: u32 = 8;

#[derive(Clone, Debug)]
pub struct Config {
    pub web: Target,
    /// Votes per second (each tick also sends, now and then, a list or a leaderboard request).
    pub rate: f64,
    /// Stop after this many requests; `None` runs until shutdown.
    pub requests: Option<u64>,
    /// Seeds the choices, for a repeatable run.
    pub seed: Option<u64>,
    /// How often the summary line is logged.
    pub summary_every: Duration,
    /// The bound on one request, connecting included.
    pub timeout: Duration,
}

impl Config {
    pub fn new(web: Target) -> Config {
        Config {
            web,
            rate: DEFAULT_RATE,
            requests: None,
            seed: None,
            summary_every: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What the bot did: requests sent, answered 2xx, and the rest (error statuses and failures to
/// connect or get an answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
}

/// Sends requests until `shutdown` completes (or `config.requests` were sent); the request in
/// flight then finishes. Never fails: every error is counted, backed off from and retried.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Stats {
    let mut rng = config
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    // The rate is validated by the CLI; here it is only kept in a range a timer can serve.
    let rate = if config.rate.is_finite() {
        config.rate.clamp(0.001, 1000.0)
    } else {
        DEFAULT_RATE
    };
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A zero period would make the timer panic.
    let every = config.summary_every.max(Duration::from_millis(1));
    let mut summary = tokio::time::interval_at(Instant::now() + every, every);
    let mut client = Client {
        target: config.web.clone(),
        conn: None,
    };
    let mut stats = Stats::default();
    let mut failures_in_a_row = 0u32;
    tokio::pin!(shutdown);
    'run: loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = summary.tick() => log_summary(&stats),
            _ = ticks.tick() => {
                for (method, path) in pick(&mut rng) {
                    if config.requests.is_some_and(|max| stats.sent >= max) {
                        break 'run;
                    }
                    stats.sent += 1;
                    let sent = tokio::time::timeout(config.timeout, client.send(method, &path));
                    match sent.await {
                        Ok(Ok(status)) => {
                            failures_in_a_row = 0;
                            if status.is_success() {
                                stats.ok += 1;
                            } else {
                                stats.failed += 1;
                            }
                        }
                        outcome => {
                            let error = match outcome {
                                Ok(Err(e)) => e,
                                _ => format!("no answer within {:?}", config.timeout),
                            };
                            stats.failed += 1;
                            client.conn = None;
                            failures_in_a_row = failures_in_a_row.saturating_add(1);
                            let backoff = backoff(failures_in_a_row, &mut rng);
                            tracing::warn!(web = %config.web, %error, ?backoff, "vote-bot request failed");
                            tokio::select! {
                                () = &mut shutdown => break 'run,
                                () = tokio::time::sleep(backoff) => continue 'run,
                            }
                        }
                    }
                }
            }
        }
        if config.requests.is_some_and(|max| stats.sent >= max) {
            break;
        }
    }
    log_summary(&stats);
    stats
}

fn log_summary(stats: &Stats) {
    tracing::info!(
        sent = stats.sent,
        ok = stats.ok,
        failed = stats.failed,
        "vote-bot summary"
    );
}

/// One tick's requests: a vote, and sometimes a list or a leaderboard.
fn pick(rng: &mut fastrand::Rng) -> Vec<(Method, String)> {
    let mut requests = vec![(
        Method::POST,
        format!("/api/vote?choice={}", choose(rng).trim_matches(':')),
    )];
    match rng.u32(..10) {
        0 => requests.push((Method::GET, "/api/list".to_owned())),
        1 => requests.push((Method::GET, "/api/leaderboard".to_owned())),
        _ => {}
    }
    requests
}

/// An emoji: the doughnut about one time in eight, otherwise any other, evenly.
fn choose(rng: &mut fastrand::Rng) -> &'static str {
    if rng.u32(..DOUGHNUT_ONE_IN) == 0 {
        return DOUGHNUT;
    }
    let others: Vec<_> = EMOJIS
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != DOUGHNUT)
        .collect();
    others[rng.usize(..others.len())]
}

/// Exponential from 100 ms to 5 s, with up to half of it as jitter.
fn backoff(failures: u32, rng: &mut fastrand::Rng) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1));
    let base = base.min(5_000);
    Duration::from_millis(base / 2 + rng.u64(..=base / 2))
}

/// One HTTP/1.1 connection, made again when it closes.
struct Client {
    target: Target,
    conn: Option<http1::SendRequest<Empty<Bytes>>>,
}

impl Client {
    async fn send(&mut self, method: Method, path: &str) -> Result<StatusCode, String> {
        let sender = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let sender = self.conn.insert(sender);
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.authority())
            .header(header::USER_AGENT, "mesh-demo-app vote-bot")
            .header(header::CONTENT_LENGTH, "0")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        // Read the answer to the end so that the connection can carry the next request.
        Limited::new(rsp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok(status)
    }

    async fn connect(&self) -> Result<http1::SendRequest<Empty<Bytes>>, String> {
        let stream = self
            .target
            .connect()
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "vote-bot connection closed");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doughnut_is_picked_about_one_time_in_eight() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 8000;
        let doughnuts = (0..n).filter(|_| choose(&mut rng) == DOUGHNUT).count();
        // Expected 1000; the seed makes this exact, the range says what is meant.
        assert!((800..1200).contains(&doughnuts), "{doughnuts}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = fastrand::Rng::with_seed(1);
        for (failures, lo, hi) in [(1, 50, 100), (2, 100, 200), (4, 400, 800), (30, 2500, 5000)] {
            let b = backoff(failures, &mut rng).as_millis() as u64;
            assert!((lo..=hi).contains(&b), "{failures}: {b}");
        }
    }

    #[test]
    fn every_tick_votes() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100 {
            let reqs = pick(&mut rng);
            assert_eq!(reqs[0].0, Method::POST);
            assert!(reqs[0].1.starts_with("/api/vote?choice="));
            assert!(reqs.len() <= 2);
        }
    }
}
