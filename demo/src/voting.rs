//! The `demo.Voting` gRPC service: one `Vote<Name>` method per emoji, `Results` (the
//! leaderboard), and two faults: every vote for one emoji fails (the bug to find, answered
//! like any answer, with the status in the trailers), and, when asked, a share of all calls is
//! refused with `UNAVAILABLE` as a trailers-only answer (a transient failure that a proxy's
//! retry recovers).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::TcpListener;

use crate::emoji::{self, EMOJIS};
use crate::grpc::{self, Channel, Code, Status};

pub const RESULTS: &str = "/demo.Voting/Results";

/// The emoji whose votes fail unless configured otherwise.
pub const DEFAULT_FAIL: &str = ":doughnut:";

#[derive(Clone, Debug)]
pub struct Config {
    /// Votes for this shortcode fail with `UNKNOWN`; `None` fails nothing.
    pub fail: Option<String>,
    /// This share of calls (0 to 100, any method) is refused with `UNAVAILABLE`, spread
    /// evenly: exactly that many of every hundred calls, never two in a row below 50.
    pub unavailable_percent: u8,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fail: Some(DEFAULT_FAIL.to_owned()),
            unavailable_percent: 0,
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

/// Serves `demo.Voting` until `shutdown` completes. Votes are kept in memory.
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
    votes: Mutex<HashMap<&'static str, i32>>,
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
            votes: Mutex::new(HashMap::new()),
        }
    }

    fn vote(&self, shortcode: &'static str) -> Result<(), Status> {
        if self.fail.as_deref() == Some(shortcode) {
            return Err(Status::new(
                Code::Unknown,
                format!(
                    "the vote for {shortcode} fails on purpose: this is the demo's problem to find"
                ),
            ));
        }
        // The lock is only held to count; a poisoned map is still a valid map of counts.
        let mut votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        let n = votes.entry(shortcode).or_insert(0);
        *n = n.saturating_add(1);
        Ok(())
    }

    fn results(&self) -> Vec<VotingResult> {
        let votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        let mut results: Vec<_> = votes
            .iter()
            .map(|(shortcode, votes)| VotingResult {
                shortcode: (*shortcode).to_owned(),
                votes: *votes,
            })
            .collect();
        results.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.shortcode.cmp(&b.shortcode)));
        results
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

    fn call(&self, path: &str, request: Bytes) -> Result<Vec<u8>, Status> {
        use prost::Message;
        if path == RESULTS {
            let _: ResultsRequest = grpc::decode(request)?;
            let results = self.results();
            return Ok(ResultsResponse { results }.encode_to_vec());
        }
        let Some(&shortcode) = self.methods.get(path) else {
            return Err(Status::new(
                Code::Unimplemented,
                format!("unknown method {path}"),
            ));
        };
        let _: VoteRequest = grpc::decode(request)?;
        self.vote(shortcode)?;
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
    use grpc::Unary;
    use prost::Message;

    fn vote(svc: &VotingService, method: &str) -> Result<(), Code> {
        svc.call(method, Bytes::new())
            .map(|_| ())
            .map_err(|s| s.code())
    }

    #[test]
    fn votes_count_and_sort() {
        let svc = VotingService::new(Config::default());
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy"), Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteRocket"), Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteRocket"), Ok(()));
        assert_eq!(
            vote(&svc, "/demo.Voting/VoteAlpaca"),
            Err(Code::Unimplemented)
        );
        let rsp = svc.call(RESULTS, Bytes::new()).unwrap();
        let results = ResultsResponse::decode(&rsp[..]).unwrap().results;
        let got: Vec<_> = results
            .iter()
            .map(|r| (r.shortcode.as_str(), r.votes))
            .collect();
        assert_eq!(got, [(":rocket:", 2), (":joy:", 1)]);
    }

    #[test]
    fn the_failing_emoji_fails_and_is_not_counted() {
        let svc = VotingService::new(Config::default());
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut"), Err(Code::Unknown));
        assert!(svc.results().is_empty());

        let svc = VotingService::new(Config {
            fail: Some("joy".into()),
            ..Config::default()
        });
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut"), Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy"), Err(Code::Unknown));

        let svc = VotingService::new(Config {
            fail: None,
            ..Config::default()
        });
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut"), Ok(()));
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

    #[test]
    fn unavailable_calls_are_refused_before_voting_and_not_counted() {
        let svc = VotingService::new(Config {
            unavailable_percent: 50,
            ..Config::default()
        });
        // What the server does per call: refuse, or call.
        let serve = |method: &str| match svc.refuse(method) {
            Some(status) => Err(status.code()),
            None => vote(&svc, method),
        };
        let got: Vec<_> = (0..4).map(|_| serve("/demo.Voting/VoteJoy")).collect();
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
        assert_eq!(serve("/demo.Voting/VoteDoughnut"), Err(Code::Unknown));
        let results = svc.results();
        assert_eq!(results.len(), 1);
        assert_eq!(
            (results[0].shortcode.as_str(), results[0].votes),
            (":joy:", 2)
        );

        let off = VotingService::new(Config::default());
        assert!((0..1000).all(|_| off.refuse(RESULTS).is_none()));
    }
}
