//! Token checks: which workload identity a token proves, in a cluster or on one machine.
//!
//! - [`TokenReviewer::Kube`]: the projected service-account token is sent to the API server in
//!   a TokenReview (`authentication.k8s.io/v1`) with the mesh's audience; the review must say
//!   `authenticated`, list our audience, and name a service account
//!   (`system:serviceaccount:<ns>:<sa>`).
//! - [`TokenReviewer::Folder`]: the token is looked up among the Secrets of type
//!   `kubernetes.io/service-account-token` in the folder source, read at each request (certify
//!   calls are rare, and a new Secret counts at once). Comparison is constant-time; a token held
//!   by Secrets of two different accounts is refused as ambiguous; the annotation
//!   `mesh.io/token-expires-at` (RFC 3339) makes a token expire.
//!
//! Both return the [`Identity`] or a [`TokenError`] that says whether the token was refused
//! (`403`) or could not be checked (`503`, retryable). The token itself is never logged.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Secret;
use mesh_api::identity::{ca, Identity};
use subtle::ConstantTimeEq;

use crate::source::folder;

/// The Secret type whose `data.token` is a service account's token.
pub const SA_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the Secret's service account.
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation that makes a folder token expire (RFC 3339).
pub const EXPIRES_AT_ANNOTATION: &str = "mesh.io/token-expires-at";

/// Why a token proves no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is refused: unknown, expired, for another audience, not a service account
    /// (a `403`).
    #[error("token refused: {0}")]
    Rejected(String),
    /// The token could not be checked now (the API server or the folder is unavailable; a `503`,
    /// worth retrying).
    #[error("the token cannot be checked now: {0}")]
    Unavailable(String),
}

/// Checks tokens.
#[derive(Clone)]
pub enum TokenReviewer {
    /// TokenReviews through the Kubernetes API.
    Kube {
        /// The client.
        client: kube::Client,
        /// The audience the token must be for (`identity.mesh.io`).
        audience: String,
        /// The trust domain of the identities.
        trust_domain: String,
    },
    /// Service-account token Secrets in a folder of YAML.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// The trust domain of the identities.
        trust_domain: String,
    },
}

impl TokenReviewer {
    /// The identity `token` proves.
    pub async fn review(&self, token: &str) -> Result<Identity, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Rejected("the token is empty".into()));
        }
        match self {
            TokenReviewer::Kube {
                client,
                audience,
                trust_domain,
            } => {
                let status = token_review(client, token, audience).await?;
                identity_of_review(&status, audience, trust_domain)
            }
            TokenReviewer::Folder { dir, trust_domain } => {
                let dir = dir.clone();
                let secrets = tokio::task::spawn_blocking(move || read_secrets(&dir))
                    .await
                    .map_err(|e| TokenError::Unavailable(format!("reading the folder: {e}")))??;
                identity_of_secret(&secrets, token, trust_domain, SystemTime::now())
            }
        }
    }
}

// === Kubernetes ===

async fn token_review(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<TokenReviewStatus, TokenError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let created = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| {
            TokenError::Unavailable(match e {
                kube::Error::Api(status) => format!(
                    "the API server refused the TokenReview ({}): {}",
                    status.code, status.message
                ),
                other => format!("creating a TokenReview: {other}"),
            })
        })?;
    created.status.ok_or_else(|| {
        TokenError::Unavailable("the API server answered a TokenReview without a status".into())
    })
}

/// The identity a TokenReview's status proves, for `audience` in `trust_domain`.
pub fn identity_of_review(
    status: &TokenReviewStatus,
    audience: &str,
    trust_domain: &str,
) -> Result<Identity, TokenError> {
    let rejected = |reason: String| Err(TokenError::Rejected(reason));
    if status.authenticated != Some(true) {
        return rejected(match status.error.as_deref() {
            Some(error) if !error.is_empty() => format!("the TokenReview says: {error}"),
            _ => "the TokenReview did not authenticate it".into(),
        });
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return rejected(format!(
            "it is not for audience {audience} (the TokenReview lists {audiences:?})"
        ));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return rejected(format!(
            "it belongs to {username:?}, not to a service account"
        ));
    };
    Identity::new(service_account, namespace, trust_domain)
        .map_err(|e| TokenError::Rejected(format!("its service account is not an identity: {e}")))
}

// === Folder ===

/// Reads every Secret in the folder's YAML files (other kinds and unreadable files skipped).
pub fn read_secrets(dir: &Path) -> Result<Vec<Secret>, TokenError> {
    let paths = folder::files(dir)
        .map_err(|e| TokenError::Unavailable(format!("reading folder {}: {e}", dir.display())))?;
    let mut secrets = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read file");
                continue;
            }
        };
        secrets.extend(parse_secrets(&text, &path));
    }
    Ok(secrets)
}

/// The Secrets of one file's documents (and `List`s); invalid ones are logged and skipped.
fn parse_secrets(text: &str, path: &Path) -> Vec<Secret> {
    let (documents, error) = folder::documents(text);
    if let Some(error) = error {
        tracing::warn!(file = %path.display(), %error, "invalid YAML; reading the documents before the error");
    }
    let mut secrets = Vec::new();
    let mut values: Vec<serde_json::Value> = documents.into_iter().map(|(_, v)| v).collect();
    while let Some(value) = values.pop() {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Secret") => match serde_json::from_value::<Secret>(value) {
                Ok(secret) => secrets.push(secret),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "skipping an invalid Secret")
                }
            },
            Some("List" | "SecretList") => {
                if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
                    values.extend(items.iter().cloned().map(|mut item| {
                        if let Some(obj) = item.as_object_mut() {
                            obj.entry("kind").or_insert_with(|| "Secret".into());
                        }
                        item
                    }));
                }
            }
            _ => {}
        }
    }
    secrets
}

/// The identity of the service-account token Secret holding `token` at `now`.
pub fn identity_of_secret(
    secrets: &[Secret],
    token: &str,
    trust_domain: &str,
    now: SystemTime,
) -> Result<Identity, TokenError> {
    let mut found: Vec<&Secret> = Vec::new();
    for secret in secrets {
        if secret.type_.as_deref() != Some(SA_TOKEN_TYPE) {
            continue;
        }
        let Some(stored) = secret.data.as_ref().and_then(|d| d.get("token")) else {
            continue;
        };
        // Every candidate is compared in full (constant time per comparison), and an empty
        // stored token never matches.
        if !stored.0.is_empty() && bool::from(stored.0.ct_eq(token.as_bytes())) {
            found.push(secret);
        }
    }
    let name_of = |s: &Secret| {
        format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or("default"),
            s.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let mut identities = Vec::new();
    for secret in &found {
        let annotations = secret.metadata.annotations.as_ref();
        let Some(sa) = annotations.and_then(|a| a.get(SA_NAME_ANNOTATION)) else {
            return Err(TokenError::Rejected(format!(
                "its Secret {} has no {SA_NAME_ANNOTATION} annotation",
                name_of(secret)
            )));
        };
        if let Some(expires_at) = annotations.and_then(|a| a.get(EXPIRES_AT_ANNOTATION)) {
            let Some(at) = ca::parse_rfc3339(expires_at) else {
                return Err(TokenError::Rejected(format!(
                    "its Secret {} has an invalid {EXPIRES_AT_ANNOTATION} {expires_at:?} (expected RFC 3339)",
                    name_of(secret)
                )));
            };
            if at <= now {
                return Err(TokenError::Rejected(format!(
                    "it expired at {expires_at} (Secret {})",
                    name_of(secret)
                )));
            }
        }
        let namespace = secret.metadata.namespace.as_deref().unwrap_or("default");
        let identity = Identity::new(sa, namespace, trust_domain).map_err(|e| {
            TokenError::Rejected(format!(
                "its Secret {} names no valid identity: {e}",
                name_of(secret)
            ))
        })?;
        if !identities.contains(&identity) {
            identities.push(identity);
        }
    }
    match identities.len() {
        0 => Err(TokenError::Rejected(
            "no service-account token Secret holds it".into(),
        )),
        1 => Ok(identities.remove(0)),
        _ => Err(TokenError::Rejected(format!(
            "it is ambiguous: Secrets of {} different service accounts hold it ({})",
            identities.len(),
            found
                .iter()
                .map(|s| name_of(s))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TD: &str = "cluster.local";

    fn secrets(yaml: &str) -> Vec<Secret> {
        parse_secrets(yaml, Path::new("test.yaml"))
    }

    /// A service-account token Secret as YAML (k8s-openapi writes `data.token` as base64),
    /// with `extra` annotations.
    fn secret(ns: &str, name: &str, sa: &str, token: &str, extra: &[(&str, &str)]) -> String {
        use k8s_openapi::ByteString;
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(SA_NAME_ANNOTATION.to_owned(), sa.to_owned());
        for (k, v) in extra {
            annotations.insert((*k).to_owned(), (*v).to_owned());
        }
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some(SA_TOKEN_TYPE.to_owned()),
            data: Some([("token".to_owned(), ByteString(token.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        format!("{}---\n", serde_yaml_ng::to_string(&secret).unwrap())
    }

    fn check(yaml: &str, token: &str, expected: Result<&str, &str>) {
        let got = identity_of_secret(&secrets(yaml), token, TD, SystemTime::now());
        match (got, expected) {
            (Ok(id), Ok(want)) => assert_eq!(id.dns_name(), want),
            (Err(e), Err(want)) => assert!(
                e.to_string().contains(want),
                "error {e:?} does not contain {want:?}"
            ),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    const WEB: &str = "web.demo.serviceaccount.identity.mesh.cluster.local";

    #[test]
    fn the_yaml_helper_writes_base64() {
        assert!(secret("demo", "t", "web", "web-token", &[]).contains("token: d2ViLXRva2Vu"));
    }

    #[test]
    fn the_right_token_proves_its_account() {
        let yaml = secret("demo", "web-token", "web", "s3cret-web", &[])
            + &secret("demo", "db-token", "db", "s3cret-db", &[]);
        check(&yaml, "s3cret-web", Ok(WEB));
        check(
            &yaml,
            "s3cret-db",
            Ok("db.demo.serviceaccount.identity.mesh.cluster.local"),
        );
    }

    #[test]
    fn a_secret_without_namespace_is_in_default() {
        let yaml = secret("demo", "t", "web", "tok", &[]).replace("namespace: demo", "");
        check(
            &yaml,
            "tok",
            Ok("web.default.serviceaccount.identity.mesh.cluster.local"),
        );
    }

    #[test]
    fn a_wrong_token_is_refused() {
        let yaml = secret("demo", "web-token", "web", "s3cret-web", &[]);
        check(&yaml, "s3cret-wex", Err("no service-account token Secret"));
        check(
            &yaml,
            "s3cret-web-and-more",
            Err("no service-account token Secret"),
        );
        check(&yaml, "s3cret", Err("no service-account token Secret"));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let past = ca::rfc3339(SystemTime::now() - Duration::from_secs(60));
        let future = ca::rfc3339(SystemTime::now() + Duration::from_secs(3600));
        let expired = secret("demo", "t", "web", "tok", &[(EXPIRES_AT_ANNOTATION, &past)]);
        check(&expired, "tok", Err("expired at"));
        let valid = secret(
            "demo",
            "t",
            "web",
            "tok",
            &[(EXPIRES_AT_ANNOTATION, &future)],
        );
        check(&valid, "tok", Ok(WEB));
        let invalid = secret(
            "demo",
            "t",
            "web",
            "tok",
            &[(EXPIRES_AT_ANNOTATION, "tomorrow")],
        );
        check(&invalid, "tok", Err("expected RFC 3339"));
    }

    #[test]
    fn a_token_of_two_accounts_is_ambiguous() {
        let yaml =
            secret("demo", "a", "web", "same", &[]) + &secret("demo", "b", "db", "same", &[]);
        check(&yaml, "same", Err("ambiguous"));
        // Two Secrets of the same account with one token are not ambiguous.
        let yaml =
            secret("demo", "a", "web", "same", &[]) + &secret("demo", "b", "web", "same", &[]);
        check(&yaml, "same", Ok(WEB));
    }

    #[test]
    fn other_secrets_and_kinds_are_ignored() {
        let opaque = secret("demo", "t", "web", "tok", &[])
            .replace("type: kubernetes.io/service-account-token", "type: Opaque");
        check(&opaque, "tok", Err("no service-account token Secret"));
        let configmap =
            secret("demo", "t", "web", "tok", &[]).replace("kind: Secret", "kind: ConfigMap");
        check(&configmap, "tok", Err("no service-account token Secret"));
        let empty = "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\nmetadata: {name: e, annotations: {kubernetes.io/service-account.name: web}}\ndata: {token: \"\"}\n";
        check(empty, "", Err("no service-account token Secret"));
        let unnamed = secret("demo", "t", "web", "tok", &[])
            .replace("kubernetes.io/service-account.name: web", "x: y");
        check(
            &unnamed,
            "tok",
            Err("no kubernetes.io/service-account.name"),
        );
    }

    #[test]
    fn secrets_in_a_list_are_read() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  type: kubernetes.io/service-account-token\n  metadata: {name: t, namespace: demo, annotations: {kubernetes.io/service-account.name: web}}\n  data: {token: dG9r}\n";
        check(yaml, "tok", Ok(WEB));
    }

    fn review(fixture: &str) -> TokenReviewStatus {
        let path = format!(
            "{}/../testdata/k8s-fixtures/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let review: TokenReview = serde_json::from_str(&text).unwrap();
        review.status.unwrap()
    }

    #[test]
    fn an_authenticated_review_proves_its_service_account() {
        let status = review("tokenreview-authenticated.json");
        let id = identity_of_review(&status, mesh_api::identity::TOKEN_AUDIENCE, TD).unwrap();
        assert_eq!(id.dns_name(), WEB);
    }

    #[test]
    fn rejected_reviews_are_refused_with_their_error() {
        let audience = mesh_api::identity::TOKEN_AUDIENCE;
        let e = identity_of_review(&review("tokenreview-rejected.json"), audience, TD).unwrap_err();
        assert_eq!(
            e,
            TokenError::Rejected("the TokenReview says: invalid bearer token".into())
        );
        let e = identity_of_review(&review("tokenreview-wrong-audience.json"), audience, TD)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("is invalid for the target audiences"),
            "{e}"
        );
    }

    #[test]
    fn an_authenticated_review_for_another_audience_or_user_is_refused() {
        let status = review("tokenreview-authenticated.json");
        let e = identity_of_review(&status, "other.example", TD).unwrap_err();
        assert!(
            e.to_string().contains("not for audience other.example"),
            "{e}"
        );
        let mut user = status.clone();
        user.user.as_mut().unwrap().username = Some("kubernetes-admin".into());
        let e = identity_of_review(&user, mesh_api::identity::TOKEN_AUDIENCE, TD).unwrap_err();
        assert!(e.to_string().contains("not to a service account"), "{e}");
    }
}
