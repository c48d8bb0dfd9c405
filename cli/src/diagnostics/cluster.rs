//! The cluster's side of `mesh diagnostics`: the destination controller through the API
//! server's service proxy (which speaks HTTP/1.1 to the pod: the controller serves it beside
//! HTTP/2 on its plaintext port), and a proxy's admin port through the pod proxy.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Pod;
use mesh_api::destination::{Update, MAX_LINE, WATCH_PATH};

use crate::install::NAMESPACE;

/// The destination controller's Service, as the service proxy names it (`scheme:name:port`).
pub const DESTINATION_SERVICE: &str = "http:mesh-destination:8086";

/// The most of an error answer read.
const MAX_ERROR: usize = 64 * 1024;

/// The service proxy's path of the destination watch of `authority`.
///
/// ```
/// # use mesh_cli::diagnostics::watch_path;
/// assert_eq!(
///     watch_path("web-svc.demo:80"),
///     "/api/v1/namespaces/mesh/services/http:mesh-destination:8086/proxy/v1/destination/watch?authority=web-svc.demo%3A80"
/// );
/// ```
pub fn watch_path(authority: &str) -> String {
    format!(
        "/api/v1/namespaces/{NAMESPACE}/services/{DESTINATION_SERVICE}/proxy{WATCH_PATH}?authority={}",
        query_value(authority)
    )
}

/// The first message of the destination controller's watch of `authority`; the watch is dropped
/// as soon as it is read.
pub(crate) async fn first_update(client: &kube::Client, authority: &str) -> anyhow::Result<Update> {
    let (status, mut body) = get(client, &watch_path(authority)).await?;
    if status != 200 {
        let (message, from_api_server) = error_message(&mut body).await;
        let service = "mesh-destination";
        bail!(match (status, from_api_server) {
            (404, true) => format!(
                "the API server has no Service {service} in namespace {NAMESPACE} ({message}): \
                 is the control plane installed? `mesh check`"
            ),
            (503, true) => format!(
                "the Service {service} has no ready pod ({message}): \
                 `kubectl -n {NAMESPACE} get pods` shows why"
            ),
            (403, true) => format!(
                "the API server refused ({message}): mesh diagnostics needs get on \
                 services/proxy in namespace {NAMESPACE}"
            ),
            (_, true) => format!("the API server answered {status}: {message}"),
            // The controller's own answer (a name it cannot parse is a 400).
            (_, false) => format!("the destination controller answered {status}: {message}"),
        });
    }
    let mut line = Vec::new();
    while let Some(chunk) = body.next().await {
        line.extend_from_slice(&chunk.context("reading the watch")?);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            let first = &line[..end];
            return serde_json::from_slice(first).with_context(|| {
                format!(
                    "the destination controller's answer is not an update: {:?}",
                    String::from_utf8_lossy(&first[..first.len().min(200)])
                )
            });
        }
        if line.len() > MAX_LINE {
            bail!("the destination controller's first answer is longer than {MAX_LINE} bytes");
        }
    }
    bail!("the destination controller ended the watch without an answer")
}

/// The raw `/metrics` of pod `namespace/name`'s proxy, through the pod proxy to its admin port.
pub(crate) async fn proxy_metrics(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    // The pod first: a clear answer when it is missing or not meshed.
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get_opt(name)
        .await
        .with_context(|| format!("reading pod {namespace}/{name}"))?
        .ok_or_else(|| anyhow::anyhow!("no pod {name} in namespace {namespace}"))?;
    if !super::meshed(&pod) {
        bail!(
            "pod {namespace}/{name} is not meshed (no {} container): it has no proxy, so no \
             proxy metrics",
            mesh_api::inject::PROXY_CONTAINER
        );
    }
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods/{name}:{}/proxy/metrics",
        mesh_api::defaults::ADMIN_PORT
    );
    let (status, mut body) = get(client, &path).await?;
    if status != 200 {
        let (message, _) = error_message(&mut body).await;
        bail!(
            "the proxy of pod {namespace}/{name} did not answer through the API server \
             ({status}: {message}); `mesh check --proxy -n {namespace}` checks it"
        );
    }
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(&chunk.context("reading the metrics")?);
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

type Chunks = std::pin::Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>;

/// `GET path` on the API server: the status and the body as it streams.
async fn get(client: &kube::Client, path: &str) -> anyhow::Result<(u16, Chunks)> {
    let request = http::Request::get(path).body(kube::client::Body::from(Vec::new()))?;
    let response = client
        .send(request)
        .await
        .context("calling the API server")?;
    let status = response.status().as_u16();
    let chunks = response
        .into_body()
        .into_data_stream()
        .map_err(anyhow::Error::from);
    Ok((status, Box::pin(chunks)))
}

/// The message of an error answer, and whether it is the API server's own (a `Status`) rather
/// than the backend's.
async fn error_message(body: &mut Chunks) -> (String, bool) {
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_ERROR {
            break;
        }
    }
    let status = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("Status"));
    match status {
        Some(status) => (
            status
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string(),
            true,
        ),
        None => (String::from_utf8_lossy(&bytes).trim().to_string(), false),
    }
}

/// `value` percent-encoded for a query string (everything but RFC 3986's unreserved bytes).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_encoded_in_the_query() {
        assert_eq!(query_value("web-svc.demo:80"), "web-svc.demo%3A80");
        assert_eq!(query_value("[fd00::5]:80"), "%5Bfd00%3A%3A5%5D%3A80");
        assert_eq!(query_value("a b&c=d"), "a%20b%26c%3Dd");
    }
}
