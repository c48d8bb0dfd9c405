//! Outbound discovery and balancing, in process: the real destination controller on a folder of
//! YAML, the real proxy resolving through it, and test servers on loopback addresses standing in
//! for pods. No root needed.

use futures_util::StreamExt;
use http::Version;
use http_body_util::BodyExt;
use mesh_tests::fixtures::{self, app_with_delay, eventually, h1, TestProxy};
use mesh_tests::state::{destination_controller, web_svc_endpoint_slices, write};
use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

const NAME: &str = "web-svc.demo.svc.cluster.local";

/// A service with one EndpointSlice per endpoint (each endpoint has its own port here, since the
/// test servers share the loopback interface).
fn write_service(dir: &Path, endpoints: &[SocketAddr]) {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-svc, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}]}\n",
    );
    yaml.push_str(&web_svc_endpoint_slices(endpoints));
    write(dir, "svc.yaml", &yaml);
}

/// The proxy, discovering through `controller`; connections are taken as redirected from
/// `original_dst`.
async fn proxy(controller: SocketAddr, original_dst: SocketAddr) -> TestProxy {
    fixtures::proxy(original_dst, |c| {
        c.destination_addr = Some(controller.to_string());
        c.destination_namespace = "demo".into();
        c.failfast_timeout = Duration::from_millis(500);
    })
    .await
}

/// Sends `n` requests for `host` on `concurrency` keep-alive connections; counts answers by
/// the server that gave them (`failed` for anything but a 200).
async fn load(
    proxy: SocketAddr,
    host: &str,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut counts = HashMap::new();
            let mut client = h1(proxy).await;
            for _ in 0..n / concurrency {
                let mut req = fixtures::request(Version::HTTP_11, "/");
                req.headers_mut().insert("host", host.parse().unwrap());
                let key = match client.send_request(req).await {
                    Ok(rsp) if rsp.status() == 200 => {
                        let server = rsp.headers()["server-addr"].to_str().unwrap().to_string();
                        let _ = rsp.into_body().collect().await;
                        server
                    }
                    Ok(rsp) => format!("failed: {}", rsp.status()),
                    Err(e) => {
                        client = h1(proxy).await;
                        format!("failed: {e}")
                    }
                };
                *counts.entry(key).or_insert(0) += 1;
            }
            counts
        }));
    }
    let mut total = HashMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

fn failures(counts: &HashMap<String, usize>) -> usize {
    counts
        .iter()
        .filter(|(k, _)| k.starts_with("failed"))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn a_slow_endpoint_gets_a_clearly_smaller_share() {
    let fast1 = app_with_delay("127.0.0.2:0".parse().unwrap(), Duration::ZERO).await;
    let fast2 = app_with_delay("127.0.0.3:0".parse().unwrap(), Duration::ZERO).await;
    let slow = app_with_delay("127.0.0.4:0".parse().unwrap(), Duration::from_millis(25)).await;
    let dir = tempfile::tempdir().unwrap();
    write_service(dir.path(), &[fast1, fast2, slow]);
    let controller = destination_controller(dir.path()).await;
    let proxy = proxy(controller.addr, "10.96.0.10:80".parse().unwrap()).await;

    let counts = load(proxy.addrs.outbound, "web-svc", 600, 6).await;
    assert_eq!(failures(&counts), 0, "{counts:?}");
    let slow_share = counts.get(&slow.to_string()).copied().unwrap_or(0);
    assert!(
        slow_share < 600 / 10,
        "the slow endpoint got {slow_share} of 600: {counts:?}"
    );
    assert!(counts.len() == 3 || slow_share == 0, "{counts:?}");

    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"request_total{{direction="outbound",authority="web-svc",target_addr="{fast1}",dst_namespace="demo",dst_service="web-svc",dst_pod="web-0",tls="no_identity",no_tls_reason="disabled"}}"#
        )),
        "destination labels: {metrics}"
    );
}

#[tokio::test]
async fn removing_an_endpoint_under_load_fails_no_request() {
    let eps = [
        app_with_delay("127.0.0.5:0".parse().unwrap(), Duration::ZERO).await,
        app_with_delay("127.0.0.6:0".parse().unwrap(), Duration::ZERO).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    write_service(dir.path(), &eps);
    let controller = destination_controller(dir.path()).await;
    let proxy = proxy(controller.addr, "10.96.0.10:80".parse().unwrap()).await;

    let load = tokio::spawn(load(proxy.addrs.outbound, NAME, 2_000, 4));
    tokio::time::sleep(Duration::from_millis(100)).await;
    write_service(dir.path(), &eps[..1]);
    let counts = load.await.unwrap();
    assert_eq!(failures(&counts), 0, "{counts:?}");

    // Once the change has propagated, the removed endpoint gets nothing more.
    let gone = eps[1].to_string();
    let settled = eventually(Duration::from_secs(5), || async {
        let counts = self::load(proxy.addrs.outbound, NAME, 40, 2).await;
        !counts.contains_key(&gone) && failures(&counts) == 0
    })
    .await;
    assert!(settled, "traffic left the removed endpoint");
}

#[tokio::test]
async fn the_controller_going_away_under_load_fails_no_request() {
    let eps = [
        app_with_delay("127.0.0.7:0".parse().unwrap(), Duration::ZERO).await,
        app_with_delay("127.0.0.8:0".parse().unwrap(), Duration::ZERO).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    write_service(dir.path(), &eps);
    let controller = destination_controller(dir.path()).await;
    let proxy = proxy(controller.addr, "10.96.0.10:80".parse().unwrap()).await;
    let warm = load(proxy.addrs.outbound, NAME, 20, 2).await;
    assert_eq!(failures(&warm), 0, "{warm:?}");

    // A watch of our own, to see that stopping the controller really ends its watches.
    let probe = mesh_api::destination::watch(controller.addr, &format!("{NAME}:80"));
    futures_util::pin_mut!(probe);
    assert!(
        matches!(probe.next().await, Some(Ok(_))),
        "the probe watch starts"
    );

    let load = tokio::spawn(load(proxy.addrs.outbound, NAME, 2_000, 4));
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(controller);
    let ended = tokio::time::timeout(Duration::from_secs(5), probe.next()).await;
    assert!(
        matches!(ended, Ok(None | Some(Err(_)))),
        "watches end with the controller: {ended:?}"
    );
    let counts = load.await.unwrap();
    assert_eq!(failures(&counts), 0, "{counts:?}");
    assert_eq!(counts.len(), 2, "both endpoints keep serving: {counts:?}");
}

#[tokio::test]
async fn unknown_names_go_to_the_original_destination_and_empty_services_fail_fast() {
    let original = fixtures::app_on("127.0.0.9:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    write_service(dir.path(), &[]);
    let controller = destination_controller(dir.path()).await;
    let proxy = proxy(controller.addr, original).await;

    let counts = load(proxy.addrs.outbound, "example.org", 10, 1).await;
    assert_eq!(counts.get(&original.to_string()), Some(&10), "{counts:?}");

    // The original destination's port is the fallback app's here, so name the service port.
    let mut client = h1(proxy.addrs.outbound).await;
    let mut req = fixtures::request(Version::HTTP_11, "/");
    req.headers_mut()
        .insert("host", format!("{NAME}:80").parse().unwrap());
    let rsp = client.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 503);
    let reason = rsp.headers()["mesh-proxy-error"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("no endpoints") && reason.contains(NAME),
        "{reason}"
    );
}
