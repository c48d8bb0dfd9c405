//! The `demo.Voting` gRPC service: one `Vote<Name>` method per emoji, `Results` (the
//! leaderboard), and two faults: every vote for one emoji fails (the bug to find, answered
//! like any answer, with the status in the trailers), and, when asked, a share of all calls is
//! refused with `UNAVAILABLE` as a trailers-only answer (a transient failure that a proxy's
//! retry recovers).
//!
//! The counts live in Redis, in the hash [`VOTES_KEY`]: a vote is `HINCRBY votes <shortcode> 1`,
//! the results are `HGETALL votes`. While Redis cannot be reached (or does not answer in time)
//! each call that needs it answers `UNAVAILABLE`, and the failure is logged once per streak.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;

use crate::emoji::{self, EMOJIS};
use crate::grpc::{self, Channel, Code, Status};
use crate::net::Target;
use crate::redis::{self, Value};

pub const RESULTS: &str = "/demo.Voting/Results";

/// The emoji whose votes fail unless configured otherwise.
pub const DEFAULT_FAIL: &str = ":doughnut:";

/// The Redis that keeps the votes unless configured otherwise (`MESH_DEMO_REDIS`).
pub const DEFAULT_REDIS: &str = "redis-svc.demo.svc.cluster.local:6379";

/// How long one Redis command may take, connecting included, unless configured otherwise:
/// less than the demo route's 500 ms per attempt, so that the caller gets voting's answer.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(400);

/// The Redis hash of the counts: shortcode → votes.
pub const VOTES_KEY: &str = "votes";

#[derive(Clone, Debug)]
pub struct Config {
    /// Votes for this shortcode fail with `UNKNOWN`; `None` fails nothing.
    pub fail: Option<String>,
    /// This share of calls (0 to 100, any method) is refused with `UNAVAILABLE`, spread
    /// evenly: exactly that many of every hundred calls, never two in a row below 50.
    pub unavailable_percent: u8,
    /// The Redis that keeps the votes.
    pub redis: Target,
    /// The bound on each Redis command, connecting included.
    pub redis_timeout: Duration,
}

impl Config {
    /// The defaults, with the votes kept in `redis`.
    pub fn new(redis: Target) -> Config {
        Config {
            fail: Some(DEFAULT_FAIL.to_owned()),
            unavailable_percent: 0,
            redis,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct VoteRequest {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct VoteResponse {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ResultsRequest {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct VotingResult {
    #[prost(string, tag = "1")]
    pub shortcode: String,
    #[prost(int32, tag = "2")]
    pub votes: i32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ResultsResponse {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<VotingResult>,
}

/// Serves `demo.Voting` until `shutdown` completes. Votes are kept in the Redis of
/// `config.redis`, connected to on the first call.
pub async fn serve(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    grpc::serve(listener, Arc::new(VotingService::new(config)), shutdown).await
}

struct VotingService {
    /// Method path → shortcode.
    methods: HashMap<String, &'static str>,
    fail: Option<String>,
    unavailable_percent: u8,
    /// Calls seen, for spreading the refused ones.
    calls: AtomicU64,
    redis: redis::Client,
    /// Whether the last Redis command failed: a streak of failures is logged once.
    failing: AtomicBool,
}

impl VotingService {
    fn new(config: Config) -> VotingService {
        VotingService {
            methods: EMOJIS
                .iter()
                .map(|&(shortcode, _)| (emoji::vote_method(shortcode), shortcode))
                .collect(),
            fail: config.fail.map(|f| emoji::shortcode(&f)),
            unavailable_percent: config.unavailable_percent.min(100),
            calls: AtomicU64::new(0),
            redis: redis::Client::new(config.redis, config.redis_timeout),
            failing: AtomicBool::new(false),
        }
    }

    async fn vote(&self, shortcode: &'static str) -> Result<(), Status> {
        if self.fail.as_deref() == Some(shortcode) {
            return Err(Status::new(
                Code::Unknown,
                format!(
                    "the vote for {shortcode} fails on purpose: this is the demo's problem to find"
                ),
            ));
        }
        let command: [&[u8]; 4] = [b"HINCRBY", VOTES_KEY.as_bytes(), shortcode.as_bytes(), b"1"];
        match self.store(&command).await? {
            Value::Integer(_) => Ok(()),
            other => Err(Status::new(
                Code::Internal,
                format!("the vote store answered HINCRBY with {other:?}"),
            )),
        }
    }

    /// The counts of the catalogue's emojis, most votes first; fields of the hash that are no
    /// shortcode or no count are left out.
    async fn results(&self) -> Result<Vec<VotingResult>, Status> {
        let items = match self.store(&[b"HGETALL", VOTES_KEY.as_bytes()]).await? {
            Value::Array(Some(items)) => items,
            other => {
                return Err(Status::new(
                    Code::Internal,
                    format!("the vote store answered HGETALL with {other:?}"),
                ))
            }
        };
        let mut results: Vec<_> = items
            .chunks_exact(2)
            .filter_map(|pair| {
                let (Value::Bulk(Some(field)), Value::Bulk(Some(count))) = (&pair[0], &pair[1])
                else {
                    return None;
                };
                let &(shortcode, _) = EMOJIS.iter().find(|(s, _)| s.as_bytes() == &field[..])?;
                let votes: i64 = std::str::from_utf8(count).ok()?.parse().ok()?;
                Some(VotingResult {
                    shortcode: shortcode.to_owned(),
                    votes: votes.clamp(0, i64::from(i32::MAX)) as i32,
                })
            })
            .collect();
        results.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.shortcode.cmp(&b.shortcode)));
        Ok(results)
    }

    /// One Redis command: an unreachable or silent Redis is `UNAVAILABLE`, an error reply
    /// `INTERNAL`.
    async fn store(&self, command: &[&[u8]]) -> Result<Value, Status> {
        match self.redis.command(command).await {
            Ok(value) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.redis.target(), "the vote store answers again");
                }
                Ok(value)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "the vote store is failing: votes and results fail until it answers"
                    );
                }
                let code = if e.is_unavailable() {
                    Code::Unavailable
                } else {
                    Code::Internal
                };
                Err(Status::new(code, format!("the vote store: {e}")))
            }
        }
    }
}

/// Whether call `n` (from 0) is one of the `percent` in a hundred refused: the calls where
/// `n · percent / 100` steps up, so refusals are evenly spaced.
fn refused(n: u64, percent: u8) -> bool {
    let p = u64::from(percent.min(100));
    (n + 1) * p / 100 > n * p / 100
}

impl grpc::Unary for VotingService {
    fn refuse(&self, _path: &str) -> Option<Status> {
        if self.unavailable_percent == 0 {
            return None;
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        refused(n, self.unavailable_percent).then(|| {
            Status::new(
                Code::Unavailable,
                format!(
                    "a transient failure: {}% of calls are refused (--unavailable-percent); \
                     a retry succeeds",
                    self.unavailable_percent
                ),
            )
        })
    }

    async fn call(&self, path: &str, request: Bytes) -> Result<Vec<u8>, Status> {
        use prost::Message;
        if path == RESULTS {
            let _: ResultsRequest = grpc::decode(request)?;
            let results = self.results().await?;
            return Ok(ResultsResponse { results }.encode_to_vec());
        }
        let Some(&shortcode) = self.methods.get(path) else {
            return Err(Status::new(
                Code::Unimplemented,
                format!("unknown method {path}"),
            ));
        };
        let _: VoteRequest = grpc::decode(request)?;
        self.vote(shortcode).await?;
        Ok(VoteResponse {}.encode_to_vec())
    }
}

// === client calls ===

/// Votes for `shortcode` (through its `Vote<Name>` method).
pub async fn vote(channel: &Channel, shortcode: &str) -> Result<(), grpc::CallError> {
    let _: VoteResponse = channel
        .call(&emoji::vote_method(shortcode), &VoteRequest {})
        .await?;
    Ok(())
}

/// The leaderboard, most votes first.
pub async fn results(channel: &Channel) -> Result<Vec<VotingResult>, grpc::CallError> {
    let rsp: ResultsResponse = channel.call(RESULTS, &ResultsRequest {}).await?;
    Ok(rsp.results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Resolve;
    use grpc::Unary;
    use prost::Message;
    use tokio::sync::oneshot;

    /// A Redis on a loopback port, stopped when the sender is dropped.
    async fn redis_server() -> (Target, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(redis::serve(listener, async move {
            let _ = stopped.await;
        }));
        let target = Target::redis(&addr.to_string(), &Resolve::default()).unwrap();
        (target, stop)
    }

    /// A voting service on a Redis of its own.
    async fn service(configure: impl FnOnce(&mut Config)) -> (VotingService, oneshot::Sender<()>) {
        let (target, stop) = redis_server().await;
        let mut config = Config::new(target);
        config.redis_timeout = Duration::from_secs(5);
        configure(&mut config);
        (VotingService::new(config), stop)
    }

    async fn vote(svc: &VotingService, method: &str) -> Result<(), Code> {
        svc.call(method, Bytes::new())
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    async fn counts(svc: &VotingService) -> Vec<(String, i32)> {
        let rsp = svc.call(RESULTS, Bytes::new()).await.unwrap();
        ResultsResponse::decode(&rsp[..])
            .unwrap()
            .results
            .into_iter()
            .map(|r| (r.shortcode, r.votes))
            .collect()
    }

    fn pairs(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|&(s, n)| (s.to_owned(), n)).collect()
    }

    #[tokio::test]
    async fn votes_count_and_sort() {
        let (svc, _redis) = service(|_| {}).await;
        assert_eq!(counts(&svc).await, []);
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy").await, Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteRocket").await, Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteRocket").await, Ok(()));
        assert_eq!(
            vote(&svc, "/demo.Voting/VoteAlpaca").await,
            Err(Code::Unimplemented)
        );
        assert_eq!(counts(&svc).await, pairs(&[(":rocket:", 2), (":joy:", 1)]));
    }

    #[tokio::test]
    async fn votes_are_kept_in_redis() {
        let (svc, _redis) = service(|_| {}).await;
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy").await, Ok(()));
        let store = redis::Client::new(svc.redis.target().clone(), Duration::from_secs(5));
        let hget = |field: &'static [u8]| {
            let store = store.clone();
            async move { store.command(&[b"HGET", b"votes", field]).await.unwrap() }
        };
        assert_eq!(hget(b":joy:").await, Value::bulk("1"));
        // What others write there: counts of the catalogue's emojis are results, the rest is not.
        for (field, value) in [
            (&b":tada:"[..], &b"7"[..]),
            (b":not-an-emoji:", b"9"),
            (b":rocket:", b"many"),
        ] {
            store
                .command(&[b"HSET", b"votes", field, value])
                .await
                .unwrap();
        }
        assert_eq!(counts(&svc).await, pairs(&[(":tada:", 7), (":joy:", 1)]));
        // A key of the wrong type is the store's error, not an outage.
        store.command(&[b"SET", b"votes", b"x"]).await.unwrap();
        assert_eq!(
            vote(&svc, "/demo.Voting/VoteJoy").await,
            Err(Code::Internal)
        );
    }

    #[tokio::test]
    async fn the_failing_emoji_fails_and_is_not_counted() {
        let (svc, _redis) = service(|_| {}).await;
        assert_eq!(
            vote(&svc, "/demo.Voting/VoteDoughnut").await,
            Err(Code::Unknown)
        );
        assert!(svc.results().await.unwrap().is_empty());

        let (svc, _redis) = service(|c| c.fail = Some("joy".into())).await;
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut").await, Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy").await, Err(Code::Unknown));

        let (svc, _redis) = service(|c| c.fail = None).await;
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut").await, Ok(()));
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_until_it_is_back() {
        // A port nobody listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = Target::redis(&addr.to_string(), &Resolve::default()).unwrap();
        let svc = VotingService::new(Config::new(target));
        assert_eq!(
            vote(&svc, "/demo.Voting/VoteJoy").await,
            Err(Code::Unavailable)
        );
        let e = svc.call(RESULTS, Bytes::new()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(svc.failing.load(Ordering::Relaxed));
        // The doughnut fails as ever, without asking Redis.
        assert_eq!(
            vote(&svc, "/demo.Voting/VoteDoughnut").await,
            Err(Code::Unknown)
        );

        // Redis comes up on that port: the next call connects.
        let listener = TcpListener::bind(addr).await.unwrap();
        let (_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(redis::serve(listener, async move {
            let _ = stopped.await;
        }));
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy").await, Ok(()));
        assert!(!svc.failing.load(Ordering::Relaxed));
        assert_eq!(counts(&svc).await, pairs(&[(":joy:", 1)]));
    }

    /// The calls refused out of the first `calls`, at `percent`.
    fn refusals(percent: u8, calls: u64) -> Vec<u64> {
        (0..calls).filter(|&n| refused(n, percent)).collect()
    }

    #[test]
    fn refusals_are_the_share_asked_for_and_evenly_spread() {
        assert_eq!(refusals(0, 1000), Vec::<u64>::new());
        assert_eq!(refusals(10, 30), [9, 19, 29]);
        assert_eq!(refusals(100, 3), [0, 1, 2]);
        for percent in [1, 10, 25, 33, 49, 50, 90] {
            let got = refusals(percent, 1000);
            assert_eq!(got.len() as u64, 10 * u64::from(percent), "{percent}%");
            if percent < 50 {
                assert!(
                    got.windows(2).all(|w| w[1] - w[0] >= 2),
                    "{percent}%: never two refusals in a row, so one retry recovers"
                );
            }
        }
    }

    #[tokio::test]
    async fn unavailable_calls_are_refused_before_voting_and_not_counted() {
        let (svc, _redis) = service(|c| c.unavailable_percent = 50).await;
        // What the server does per call: refuse, or call.
        let serve = |method: &'static str| {
            let svc = &svc;
            async move {
                match svc.refuse(method) {
                    Some(status) => Err(status.code()),
                    None => vote(svc, method).await,
                }
            }
        };
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(serve("/demo.Voting/VoteJoy").await);
        }
        assert_eq!(
            got,
            [
                Ok(()),
                Err(Code::Unavailable),
                Ok(()),
                Err(Code::Unavailable)
            ]
        );
        // The doughnut still fails with UNKNOWN when it is not refused: that is not transient.
        assert_eq!(serve("/demo.Voting/VoteDoughnut").await, Err(Code::Unknown));
        assert_eq!(
            svc.results().await.unwrap(),
            [VotingResult {
                shortcode: ":joy:".into(),
                votes: 2
            }]
        );

        let (off, _redis) = service(|_| {}).await;
        assert!((0..1000).all(|_| off.refuse(RESULTS).is_none()));
    }
}
