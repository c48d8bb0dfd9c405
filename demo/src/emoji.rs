//! The `demo.Emoji` gRPC service: the emoji catalogue (`ListAll`, `FindByShortcode`), and its
//! messages and client calls.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;

use crate::grpc::{self, Channel, Code, Status};

/// The catalogue: shortcode and character. Every shortcode is `:snake_case:`, which gives the
/// voting method its name ([`vote_method`]).
pub const EMOJIS: &[(&str, &str)] = &[
    (":joy:", "😂"),
    (":sunglasses:", "😎"),
    (":doughnut:", "🍩"),
    (":stuck_out_tongue_winking_eye:", "😜"),
    (":money_mouth_face:", "🤑"),
    (":flushed:", "😳"),
    (":mask:", "😷"),
    (":nerd_face:", "🤓"),
    (":ghost:", "👻"),
    (":skull_and_crossbones:", "☠️"),
    (":heart_eyes_cat:", "😻"),
    (":tada:", "🎉"),
    (":man_dancing:", "🕺"),
    (":rocket:", "🚀"),
    (":unicorn:", "🦄"),
];

pub const LIST_ALL: &str = "/demo.Emoji/ListAll";
pub const FIND_BY_SHORTCODE: &str = "/demo.Emoji/FindByShortcode";

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Emoji {
    #[prost(string, tag = "1")]
    pub unicode: String,
    #[prost(string, tag = "2")]
    pub shortcode: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListAllRequest {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListAllResponse {
    #[prost(message, repeated, tag = "1")]
    pub list: Vec<Emoji>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FindByShortcodeRequest {
    #[prost(string, tag = "1")]
    pub shortcode: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FindByShortcodeResponse {
    #[prost(message, optional, tag = "1")]
    pub emoji: Option<Emoji>,
}

/// Normalises a user's choice to a shortcode: `doughnut` and `:doughnut:` are `:doughnut:`.
pub fn shortcode(choice: &str) -> String {
    format!(":{}:", choice.trim().trim_matches(':'))
}

/// The voting method for a shortcode: `:stuck_out_tongue:` votes with
/// `/demo.Voting/VoteStuckOutTongue`.
pub fn vote_method(shortcode: &str) -> String {
    let mut name = String::from("/demo.Voting/Vote");
    for word in shortcode.trim_matches(':').split(['_', '-']) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

/// Serves `demo.Emoji` until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    grpc::serve(listener, Arc::new(EmojiService), shutdown).await
}

struct EmojiService;

impl grpc::Unary for EmojiService {
    async fn call(&self, path: &str, request: Bytes) -> Result<Vec<u8>, Status> {
        use prost::Message;
        match path {
            LIST_ALL => {
                let _: ListAllRequest = grpc::decode(request)?;
                let list = EMOJIS
                    .iter()
                    .map(|&(shortcode, unicode)| Emoji {
                        shortcode: shortcode.to_owned(),
                        unicode: unicode.to_owned(),
                    })
                    .collect();
                Ok(ListAllResponse { list }.encode_to_vec())
            }
            FIND_BY_SHORTCODE => {
                let req: FindByShortcodeRequest = grpc::decode(request)?;
                let found = EMOJIS.iter().find(|(s, _)| *s == req.shortcode);
                match found {
                    Some(&(shortcode, unicode)) => Ok(FindByShortcodeResponse {
                        emoji: Some(Emoji {
                            shortcode: shortcode.to_owned(),
                            unicode: unicode.to_owned(),
                        }),
                    }
                    .encode_to_vec()),
                    None => Err(Status::new(
                        Code::NotFound,
                        format!("no emoji {:?}", req.shortcode),
                    )),
                }
            }
            _ => Err(Status::new(
                Code::Unimplemented,
                format!("unknown method {path}"),
            )),
        }
    }
}

// === client calls ===

pub async fn list_all(channel: &Channel) -> Result<Vec<Emoji>, grpc::CallError> {
    let rsp: ListAllResponse = channel.call(LIST_ALL, &ListAllRequest {}).await?;
    Ok(rsp.list)
}

/// The emoji for a shortcode; an unknown one is `CallError::Status` with `NotFound`.
pub async fn find_by_shortcode(
    channel: &Channel,
    shortcode: &str,
) -> Result<Emoji, grpc::CallError> {
    let req = FindByShortcodeRequest {
        shortcode: shortcode.to_owned(),
    };
    let rsp: FindByShortcodeResponse = channel.call(FIND_BY_SHORTCODE, &req).await?;
    rsp.emoji.ok_or_else(|| {
        grpc::CallError::Status(Status::new(
            Code::NotFound,
            format!("no emoji {shortcode:?}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpc::Unary;
    use prost::Message;

    #[test]
    fn vote_methods() {
        for (shortcode, method) in [
            (":doughnut:", "/demo.Voting/VoteDoughnut"),
            (":joy:", "/demo.Voting/VoteJoy"),
            (
                ":stuck_out_tongue_winking_eye:",
                "/demo.Voting/VoteStuckOutTongueWinkingEye",
            ),
        ] {
            assert_eq!(vote_method(shortcode), method);
        }
    }

    #[test]
    fn catalogue_is_well_formed() {
        let mut methods: Vec<_> = EMOJIS.iter().map(|(s, _)| vote_method(s)).collect();
        methods.sort();
        methods.dedup();
        assert_eq!(methods.len(), EMOJIS.len(), "vote methods are unique");
        for (s, u) in EMOJIS {
            assert_eq!(shortcode(s), *s);
            assert!(s
                .trim_matches(':')
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!u.is_empty());
        }
        assert!(EMOJIS.contains(&(":doughnut:", "🍩")));
    }

    #[test]
    fn choices_normalise() {
        assert_eq!(shortcode("doughnut"), ":doughnut:");
        assert_eq!(shortcode(":doughnut:"), ":doughnut:");
        assert_eq!(shortcode(" joy "), ":joy:");
    }

    #[tokio::test]
    async fn find_by_shortcode_answers_not_found() {
        let req = FindByShortcodeRequest {
            shortcode: ":nope:".into(),
        };
        let err = EmojiService
            .call(FIND_BY_SHORTCODE, req.encode_to_vec().into())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let req = FindByShortcodeRequest {
            shortcode: ":joy:".into(),
        };
        let rsp = EmojiService
            .call(FIND_BY_SHORTCODE, req.encode_to_vec().into())
            .await
            .unwrap();
        let rsp = FindByShortcodeResponse::decode(&rsp[..]).unwrap();
        assert_eq!(rsp.emoji.unwrap().unicode, "😂");
    }

    #[tokio::test]
    async fn malformed_protobuf_is_invalid_argument() {
        // A length-delimited field whose length runs past the end.
        let err = EmojiService
            .call(FIND_BY_SHORTCODE, Bytes::from_static(&[0x0a, 0x7f, b'x']))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
