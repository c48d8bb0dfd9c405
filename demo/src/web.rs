//! The web front end: an HTML page and a JSON API over HTTP/1.1 and HTTP/2, calling the emoji
//! and voting services as gRPC clients.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | the page: the emojis as vote buttons, the leaderboard |
//! | `POST /vote` (form `choice=`) | votes, then `303` back to `/` with the outcome |
//! | `GET /api/list` | `[{"shortcode", "unicode"}]` from `Emoji/ListAll` |
//! | `GET\|POST /api/vote?choice=joy` | `FindByShortcode`, then `Vote<Name>`: 200, or 404 for an unknown emoji, or 500 with the vote's `grpc_status` |
//! | `GET /api/leaderboard` | `[{"shortcode", "unicode", "votes"}]` from `Voting/Results` |
//! | `GET /healthz` | `ok` |
//!
//! A back end that cannot be reached answers 503, one that does not answer in time 504, one
//! that answers nonsense 502, always as JSON `{"error": …}`. Every answer names the front end's
//! release (`--release`, `v1` by default) in an `x-demo-release` header, and the page says it
//! too: a canary's answers can be told apart.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::emoji::{self, Emoji};
use crate::grpc::{CallError, Channel, Code};
use crate::net::{self, Target};
use crate::voting;

/// How long one call to a back end may take, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request body read (a vote form).
pub const MAX_BODY: usize = 16 * 1024;

/// The release a front end is unless configured otherwise.
pub const DEFAULT_RELEASE: &str = "v1";

/// The response header that names the release.
pub const RELEASE_HEADER: &str = "x-demo-release";

#[derive(Clone, Debug)]
pub struct Config {
    pub emoji: Target,
    pub voting: Target,
    /// The bound on each gRPC call, connecting included.
    pub timeout: Duration,
    /// What this front end calls itself (`v2` for a canary): in a header and on the page.
    pub release: String,
}

/// Serves the front end until `shutdown` completes.
pub async fn serve(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    // A release that is no header value is named `invalid` rather than not at all.
    let release = HeaderValue::from_str(&config.release)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let web = Arc::new(Web {
        emoji: Channel::new(config.emoji, config.timeout),
        voting: Channel::new(config.voting, config.timeout),
        release,
    });
    let svc = hyper::service::service_fn(move |req| {
        let web = web.clone();
        async move {
            let mut rsp = web.route(req).await;
            rsp.headers_mut()
                .insert(RELEASE_HEADER, web.release.clone());
            Ok::<_, Infallible>(rsp)
        }
    });
    net::serve(listener, svc, shutdown).await
}

type Rsp = Response<Full<Bytes>>;

struct Web {
    emoji: Channel,
    voting: Channel,
    release: HeaderValue,
}

/// Why a vote did not count.
enum VoteError {
    UnknownEmoji(String),
    Emoji(CallError),
    Voting(Emoji, CallError),
}

impl Web {
    async fn route(&self, req: Request<Incoming>) -> Rsp {
        let path = req.uri().path().to_owned();
        let allowed: &[Method] = match path.as_str() {
            "/" | "/healthz" | "/api/list" | "/api/leaderboard" => &[Method::GET],
            "/vote" => &[Method::POST],
            "/api/vote" => &[Method::GET, Method::POST],
            _ => return error(StatusCode::NOT_FOUND, format!("no such page: {path}")),
        };
        if !allowed.contains(req.method()) {
            let mut rsp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}", req.method()),
            );
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>();
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                rsp.headers_mut().insert(header::ALLOW, v);
            }
            return rsp;
        }
        let query = req.uri().query().unwrap_or("").to_owned();
        match path.as_str() {
            "/" => self.index(&query).await,
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            "/api/list" => match emoji::list_all(&self.emoji).await {
                Ok(list) => json_rsp(StatusCode::OK, json!(list.iter().map(emoji_json).collect::<Vec<_>>())),
                Err(e) => upstream_error("emoji", &e),
            },
            "/api/leaderboard" => match self.leaderboard().await {
                Ok(board) => json_rsp(StatusCode::OK, json!(board
                    .iter()
                    .map(|(e, votes)| json!({"shortcode": e.shortcode, "unicode": e.unicode, "votes": votes}))
                    .collect::<Vec<_>>())),
                Err((backend, e)) => upstream_error(backend, &e),
            },
            _ => {
                let choice = match choice(req, &query).await {
                    Ok(c) => c,
                    Err(rsp) => return rsp,
                };
                if path == "/vote" {
                    self.vote_form(&choice).await
                } else {
                    self.vote_api(&choice).await
                }
            }
        }
    }

    async fn vote(&self, choice: &str) -> Result<Emoji, VoteError> {
        let shortcode = emoji::shortcode(choice);
        let found = match emoji::find_by_shortcode(&self.emoji, &shortcode).await {
            Ok(e) => e,
            Err(CallError::Status(s)) if s.code() == Code::NotFound => {
                return Err(VoteError::UnknownEmoji(shortcode))
            }
            Err(e) => return Err(VoteError::Emoji(e)),
        };
        match voting::vote(&self.voting, &found.shortcode).await {
            Ok(()) => Ok(found),
            Err(e) => Err(VoteError::Voting(found, e)),
        }
    }

    async fn vote_api(&self, choice: &str) -> Rsp {
        match self.vote(choice).await {
            Ok(e) => json_rsp(
                StatusCode::OK,
                json!({"voted": e.shortcode, "unicode": e.unicode}),
            ),
            Err(VoteError::UnknownEmoji(shortcode)) => json_rsp(
                StatusCode::NOT_FOUND,
                json!({"error": format!("unknown emoji {shortcode}"), "choice": shortcode}),
            ),
            Err(VoteError::Emoji(e)) => upstream_error("emoji", &e),
            Err(VoteError::Voting(emoji, CallError::Status(s))) => {
                tracing::debug!(shortcode = %emoji.shortcode, status = %s, "vote failed");
                json_rsp(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({
                        "error": format!("voting for {} failed: {s}", emoji.shortcode),
                        "choice": emoji.shortcode,
                        "grpc_status": s.code,
                        "grpc_message": s.message,
                    }),
                )
            }
            Err(VoteError::Voting(_, e)) => upstream_error("voting", &e),
        }
    }

    /// The browser's vote: back to the page, with the outcome in the query.
    async fn vote_form(&self, choice: &str) -> Rsp {
        let outcome = self.vote(choice).await;
        let mut q = form_urlencoded::Serializer::new(String::new());
        match outcome {
            Ok(e) => q.append_pair("voted", &e.shortcode),
            Err(VoteError::UnknownEmoji(s)) => q
                .append_pair("failed", &s)
                .append_pair("reason", "no such emoji"),
            Err(VoteError::Emoji(e)) => q
                .append_pair("failed", &emoji::shortcode(choice))
                .append_pair("reason", &truncate(&e.to_string())),
            Err(VoteError::Voting(emoji, e)) => q
                .append_pair("failed", &emoji.shortcode)
                .append_pair("reason", &truncate(&e.to_string())),
        };
        let mut rsp = text(
            StatusCode::SEE_OTHER,
            "text/plain; charset=utf-8",
            String::new(),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("/?{}", q.finish())) {
            rsp.headers_mut().insert(header::LOCATION, v);
        }
        rsp
    }

    /// The results joined with the catalogue, most votes first.
    async fn leaderboard(&self) -> Result<Vec<(Emoji, i32)>, (&'static str, CallError)> {
        let (list, results) =
            tokio::join!(emoji::list_all(&self.emoji), voting::results(&self.voting));
        let list = list.map_err(|e| ("emoji", e))?;
        let results = results.map_err(|e| ("voting", e))?;
        Ok(results
            .into_iter()
            .map(|r| {
                let unicode = list
                    .iter()
                    .find(|e| e.shortcode == r.shortcode)
                    .map(|e| e.unicode.clone())
                    .unwrap_or_default();
                let emoji = Emoji {
                    shortcode: r.shortcode,
                    unicode,
                };
                (emoji, r.votes)
            })
            .collect())
    }

    /// The release, as the page shows it.
    fn release(&self) -> &str {
        self.release.to_str().unwrap_or("invalid")
    }

    async fn index(&self, query: &str) -> Rsp {
        let (list, results) =
            tokio::join!(emoji::list_all(&self.emoji), voting::results(&self.voting));
        let list = match list {
            Ok(list) => list,
            Err(e) => {
                let status = upstream_status(&e);
                return text(
                    status,
                    "text/html; charset=utf-8",
                    page(
                        self.release(),
                        &format!(
                            "<p class=\"bad\">The emoji service cannot list the emojis: {}</p>",
                            escape(&e.to_string())
                        ),
                    ),
                );
            }
        };
        let unicode = |shortcode: &str| {
            list.iter()
                .find(|e| e.shortcode == shortcode)
                .map_or_else(|| escape(shortcode), |e| escape(&e.unicode))
        };
        let mut html = String::new();
        let param = |name| find_param(query.as_bytes(), name);
        if let Some(voted) = param("voted") {
            let _ = writeln!(
                html,
                "<p class=\"good\">You voted for {}.</p>",
                unicode(&voted)
            );
        } else if let Some(failed) = param("failed") {
            let reason = param("reason").unwrap_or_else(|| "unknown reason".into());
            let _ = writeln!(
                html,
                "<p class=\"bad\">Your vote for {} failed: {}</p>",
                unicode(&failed),
                escape(&reason)
            );
        }
        html.push_str(
            "<h2>Vote for your favourite emoji</h2>\n<form method=\"post\" action=\"/vote\">\n",
        );
        for e in &list {
            let code = escape(&e.shortcode);
            let _ = writeln!(
                html,
                "<button name=\"choice\" value=\"{code}\" title=\"{code}\">{}</button>",
                escape(&e.unicode)
            );
        }
        html.push_str("</form>\n<h2>Leaderboard</h2>\n");
        match results {
            Ok(results) if results.is_empty() => html.push_str("<p>No votes yet.</p>\n"),
            Ok(results) => {
                html.push_str("<table>\n");
                for r in results {
                    let _ = writeln!(
                        html,
                        "<tr><td class=\"emoji\">{}</td><td>{}</td><td>{}</td></tr>",
                        unicode(&r.shortcode),
                        escape(&r.shortcode),
                        r.votes
                    );
                }
                html.push_str("</table>\n");
            }
            Err(e) => {
                let _ = writeln!(
                    html,
                    "<p class=\"bad\">The voting service cannot show the leaderboard: {}</p>",
                    escape(&e.to_string())
                );
            }
        }
        text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page(self.release(), &html),
        )
    }
}

/// The vote's choice: `choice` in the query, or in a form body.
async fn choice(req: Request<Incoming>, query: &str) -> Result<String, Rsp> {
    if let Some(c) = find_param(query.as_bytes(), "choice") {
        return Ok(c);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY} bytes"),
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ))
        }
    };
    find_param(&body, "choice").ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "missing the choice parameter (choice=doughnut)".into(),
        )
    })
}

fn find_param(form: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(k, v)| k == name && !v.trim().trim_matches(':').is_empty())
        .map(|(_, v)| v.into_owned())
}

fn emoji_json(e: &Emoji) -> Value {
    json!({"shortcode": e.shortcode, "unicode": e.unicode})
}

fn upstream_status(e: &CallError) -> StatusCode {
    match e {
        CallError::Status(_) => StatusCode::INTERNAL_SERVER_ERROR,
        CallError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
        CallError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
        CallError::Protocol(..) => StatusCode::BAD_GATEWAY,
    }
}

fn upstream_error(backend: &str, e: &CallError) -> Rsp {
    let status = upstream_status(e);
    let mut body = json!({"error": format!("{backend}: {e}"), "backend": backend});
    if let CallError::Status(s) = e {
        body["grpc_status"] = json!(s.code);
        body["grpc_message"] = json!(s.message);
    } else {
        tracing::warn!(backend, error = %e, "calling a back end");
    }
    json_rsp(status, body)
}

fn error(status: StatusCode, message: String) -> Rsp {
    json_rsp(status, json!({"error": message}))
}

fn json_rsp(status: StatusCode, value: Value) -> Rsp {
    let mut body = value.to_string();
    body.push('\n');
    text(status, "application/json", body)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Rsp {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn page(release: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>mesh demo: emoji vote</title>\n<style>\
         body{{font-family:sans-serif;max-width:48em;margin:2em auto;padding:0 1em}}\
         button{{font-size:2em;margin:.15em;padding:.2em .4em;cursor:pointer}}\
         td{{padding:.2em 1em}}td.emoji{{font-size:1.5em}}\
         .good{{color:#060}}.bad{{color:#a00}}\
         </style></head>\n<body>\n<h1>🗳️ mesh demo: emoji vote</h1>\n{body}\
         <p><small>API: <a href=\"/api/list\">/api/list</a> · <a href=\"/api/leaderboard\">/api/leaderboard</a> · \
         <code>POST /api/vote?choice=joy</code> · web {release}</small></p>\n</body></html>\n",
        release = escape(release),
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape("🍩 :doughnut:"), "🍩 :doughnut:");
    }

    #[test]
    fn finds_the_choice() {
        assert_eq!(
            find_param(b"choice=doughnut", "choice").as_deref(),
            Some("doughnut")
        );
        assert_eq!(
            find_param(b"x=1&choice=%3Ajoy%3A", "choice").as_deref(),
            Some(":joy:")
        );
        assert_eq!(
            find_param(b"choice=&choice=joy", "choice").as_deref(),
            Some("joy")
        );
        assert_eq!(find_param(b"choice=::", "choice"), None);
        assert_eq!(find_param(b"", "choice"), None);
    }
}
