//! The `demo.Voting` gRPC service: one `Vote<Name>` method per emoji, `Results` (the
//! leaderboard), and the deliberate fault: every vote for one emoji fails.

use std::collections::HashMap;
use std::future::Future;
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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fail: Some(DEFAULT_FAIL.to_owned()),
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

impl grpc::Unary for VotingService {
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
        });
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut"), Ok(()));
        assert_eq!(vote(&svc, "/demo.Voting/VoteJoy"), Err(Code::Unknown));

        let svc = VotingService::new(Config { fail: None });
        assert_eq!(vote(&svc, "/demo.Voting/VoteDoughnut"), Ok(()));
    }
}
