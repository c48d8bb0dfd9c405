//! A small client of Prometheus' HTTP API: instant queries (`GET /api/v1/query`), answered as
//! series with their labels and one value.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// A Prometheus server, by its base URL (`http://prometheus.mesh-viz.svc.cluster.local:9090`).
#[derive(Clone, Debug)]
pub struct Prometheus {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

/// One series of an instant vector.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct Series {
    /// Its labels, `__name__` included.
    pub metric: BTreeMap<String, String>,
    /// The evaluation time and the value, as text (`"+Inf"`, `"NaN"` …).
    pub value: (f64, String),
}

/// `--prometheus-url` is not a plain-HTTP URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid Prometheus URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// A query that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Prometheus could not be reached, or did not answer in time.
    #[error("cannot reach Prometheus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Prometheus answered with an error.
    #[error("Prometheus at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("Prometheus at {url} answered something that is not an instant vector: {reason}")]
    Invalid { url: String, reason: String },
}

impl Prometheus {
    /// A client of the Prometheus at `url` (plain HTTP; a path prefix is kept).
    pub fn new(url: &str, timeout: Duration) -> Result<Prometheus, UrlError> {
        let error = |reason: &str| UrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| error("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(error("only http:// is supported")),
            None => return Err(error("expected http://HOST:PORT")),
        }
        if uri.authority().is_none() {
            return Err(error("no host"));
        }
        if uri.query().is_some() {
            return Err(error("a query does not belong in the base URL"));
        }
        let base = url.trim_end_matches('/').to_string();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Prometheus {
            base,
            client,
            timeout,
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Evaluates `query` at `time` (Unix seconds): the series of the instant vector.
    pub async fn instant(&self, query: &str, time: f64) -> Result<Vec<Series>, QueryError> {
        let params = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .append_pair("time", &format!("{time:.3}"))
            .finish();
        let url = format!("{}/api/v1/query?{params}", self.base);
        let unreachable = |reason: String| QueryError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| unreachable(format!("building the query URL: {e}")))?;
        let call = async {
            let rsp = self
                .client
                .get(uri)
                .await
                .map_err(|e| unreachable(format!("{e:#}: {}", source_chain(&e))))?;
            let status = rsp.status().as_u16();
            let body = rsp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, QueryError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unreachable(format!("no answer in {:?}", self.timeout)))??;
        self.parse(status, &body)
    }

    fn parse(&self, status: u16, body: &[u8]) -> Result<Vec<Series>, QueryError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            status: String,
            #[serde(default)]
            data: Option<Data>,
            #[serde(default)]
            error: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            result_type: String,
            result: serde_json::Value,
        }
        let answer: Answer = match serde_json::from_slice(body) {
            Ok(answer) => answer,
            Err(e) if status == 200 => {
                return Err(QueryError::Invalid {
                    url: self.base.clone(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(QueryError::Status {
                    url: self.base.clone(),
                    status,
                    message: String::from_utf8_lossy(body).trim().to_string(),
                })
            }
        };
        if answer.status != "success" || status != 200 {
            return Err(QueryError::Status {
                url: self.base.clone(),
                status,
                message: answer.error.unwrap_or(answer.status),
            });
        }
        let invalid = |reason: String| QueryError::Invalid {
            url: self.base.clone(),
            reason,
        };
        let data = answer.data.ok_or_else(|| invalid("no data".into()))?;
        if data.result_type != "vector" {
            return Err(invalid(format!("result type {}", data.result_type)));
        }
        serde_json::from_value(data.result).map_err(|e| invalid(e.to_string()))
    }
}

/// The causes under a client error (hyper-util's legacy client hides the connect error there).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        causes.push(cause.to_string());
        next = cause.source();
    }
    causes.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prometheus() -> Prometheus {
        Prometheus::new("http://prometheus:9090/", Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn urls() {
        assert_eq!(prometheus().url(), "http://prometheus:9090");
        for bad in [
            "prometheus:9090x",
            "https://p:9090",
            "http://p:9090/?x=1",
            "/p",
        ] {
            assert!(
                Prometheus::new(bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers() {
        let p = prometheus();
        let ok = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","pod":"web-1"},"value":[1700000000.5,"1"]}]}}"#;
        let series = p.parse(200, ok).unwrap();
        assert_eq!(series[0].metric["pod"], "web-1");
        assert_eq!(series[0].value, (1700000000.5, "1".to_string()));

        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let e = p.parse(400, bad).unwrap_err().to_string();
        assert!(e.contains("400") && e.contains("parse error"), "{e}");
        let e = p
            .parse(503, b"Service Unavailable")
            .unwrap_err()
            .to_string();
        assert!(e.contains("503"), "{e}");
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(matches!(
            p.parse(200, matrix),
            Err(QueryError::Invalid { .. })
        ));
    }
}
