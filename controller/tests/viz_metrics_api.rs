//! The metrics API in process, against a fake Prometheus on loopback: the samples of the pods
//! it labels, the errors of bad queries, and 503 with what to do next without Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::viz::SamplesResponse;
use mesh_controller::viz::{metrics_api, prometheus::Prometheus};
use mesh_viz::api::{Api as _, Direct};

/// A Prometheus that answers every query with one `response_total` series of pod demo/web-1.
async fn fake_prometheus() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                    assert_eq!(req.uri().path(), "/api/v1/query");
                    let body = r#"{"status":"success","data":{"resultType":"vector","result":[
                        {"metric":{"__name__":"response_total","namespace":"demo","pod":"web-1",
                          "job":"mesh-proxy","instance":"10.0.0.1:4191","direction":"inbound",
                          "classification":"success"},"value":[1.0,"6"]}]}}"#;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The metrics API on loopback, reading `prometheus`.
async fn metrics_api(prometheus: &str) -> Direct {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let prometheus = Prometheus::new(prometheus, Duration::from_secs(2)).unwrap();
    tokio::spawn(metrics_api::serve(listener, prometheus));
    Direct {
        addr,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn samples_come_back_as_the_proxies_own_by_pod() {
    let prometheus = fake_prometheus().await;
    let api = metrics_api(&format!("http://{prometheus}")).await;
    let (status, body) = api
        .get("/api/v1/samples?namespace=demo&window=5s")
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let rsp: SamplesResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(rsp.window, 5.0);
    assert_eq!(
        (rsp.pods[0].namespace.as_str(), rsp.pods[0].pod.as_str()),
        ("demo", "web-1")
    );
    let after = &rsp.pods[0].after[0];
    assert_eq!((after.name.as_str(), after.value), ("response_total", 6.0));
    assert_eq!(after.label("pod"), None, "Prometheus' labels are taken off");
    assert_eq!(after.label("direction"), Some("inbound"));
    assert!(rsp.pods[0].before.is_some());
}

#[tokio::test]
async fn bad_requests_say_what_is_expected() {
    let prometheus = fake_prometheus().await;
    let api = metrics_api(&format!("http://{prometheus}")).await;
    for (path, status, expected) in [
        ("/api/v1/samples?window=soon", 400, "invalid window"),
        ("/api/v1/samples?namespace=Demo!", 400, "invalid namespace"),
        ("/nope", 404, "no such path"),
        ("/ready", 200, "ready"),
    ] {
        let (got, body) = api.get(path).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(expected), "{path}: {body}");
    }
}

#[tokio::test]
async fn without_prometheus_the_answer_is_503_with_what_to_do_next() {
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let api = Arc::new(metrics_api(&url).await);
    let (status, body) = api.get("/api/v1/samples").await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("cannot reach Prometheus") && body.contains("mesh viz install"),
        "{body}"
    );
}
