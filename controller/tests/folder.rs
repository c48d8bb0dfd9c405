//! The folder source end to end: files written, renamed and deleted, followed by a real HTTP/2
//! watch through `mesh_api::destination::watch`.

mod support;

use support::{get, get_h2, on_folder, write, Watch};

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: demo}
spec:
  clusterIP: 10.96.172.25
  ports: [{name: http, port: 80, targetPort: http}]
";

fn slice(ips: &[&str]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("- {{addresses: [{ip}], conditions: {{ready: true}}}}\n"))
        .collect();
    format!(
        "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-svc-1, namespace: demo, labels: {{kubernetes.io/service-name: web-svc}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{endpoints}"
    )
}

#[tokio::test]
async fn folder_source_follows_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "svc.yaml", SERVICE);
    // Written in place (not renamed), with a second document of a kind the index ignores.
    std::fs::write(
        d.join("slice.yaml"),
        format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n",
            slice(&["10.244.0.5", "10.244.0.6"])
        ),
    )
    .expect("write");
    let running = on_folder(d).await;
    let addr = running.addr;

    let web = Watch::start(addr, "web-svc.demo.svc.cluster.local:80");
    let by_ip = Watch::start(addr, "10.96.172.25:80");
    let unknown = Watch::start(addr, "nope.demo:80");
    web.wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    by_ip
        .wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080"])
        .await;
    unknown.wait_no_endpoints(false).await;
    let e = web.endpoint("10.244.0.5:8080").expect("endpoint");
    assert_eq!(e.labels.get("service").map(String::as_str), Some("web-svc"));
    assert_eq!(e.identity, None, "no pod, so not meshed");

    // A change to the slice: one more endpoint, pushed as a delta.
    write(
        d,
        "slice.yaml",
        &slice(&["10.244.0.5", "10.244.0.6", "10.244.0.7"]),
    );
    web.wait_addrs(&["10.244.0.5:8080", "10.244.0.6:8080", "10.244.0.7:8080"])
        .await;
    assert!(
        matches!(
            web.0.lock().expect("lock").updates.first(),
            Some(mesh_api::destination::Update::Add(a)) if a.endpoints.len() == 2
        ),
        "the first message is the full set"
    );

    // Broken files: invalid YAML over the slice, an invalid object next to a valid one.
    std::fs::write(d.join("slice.yaml"), "kind: [unclosed\n").expect("write");
    write(
        d,
        "other.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: demo}\nspec: {ports: 80}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: demo}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 81}]}\n",
    );
    let other = Watch::start(addr, "other.demo:81");
    other.wait_no_endpoints(true).await;
    // The broken slice file kept its last good state.
    assert_eq!(
        web.addrs(),
        ["10.244.0.5:8080", "10.244.0.6:8080", "10.244.0.7:8080"]
    );
    let bad = Watch::start(addr, "bad.demo:80");
    bad.wait_no_endpoints(false).await;

    // Renamed away (no longer .yaml): the service has no endpoints; renamed back: they return.
    write(d, "slice.yaml", &slice(&["10.244.0.8"]));
    web.wait_addrs(&["10.244.0.8:8080"]).await;
    std::fs::rename(d.join("slice.yaml"), d.join("slice.yaml.off")).expect("rename");
    web.wait_no_endpoints(true).await;
    std::fs::rename(d.join("slice.yaml.off"), d.join("slice.yaml")).expect("rename");
    web.wait_addrs(&["10.244.0.8:8080"]).await;

    // Deleting the service: the name is unknown.
    std::fs::remove_file(d.join("svc.yaml")).expect("delete");
    web.wait_no_endpoints(false).await;
    by_ip.wait_no_endpoints(false).await;
    assert_eq!(web.0.lock().expect("lock").error, None);
}

#[tokio::test]
async fn health_metrics_and_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "svc.yaml", SERVICE);
    let running = on_folder(dir.path()).await;
    let addr = running.addr;
    assert_eq!(get(addr, "/live").await.0, 200);
    assert_eq!(get_h2(addr, "/live").await.0, 200);
    assert_eq!(get(addr, "/nope").await.0, 404);
    let (status, body) = get(addr, "/v1/destination/watch").await;
    assert_eq!(status, 400);
    assert!(body.contains("missing authority"), "{body}");
    let (status, body) = get_h2(addr, "/v1/destination/watch?authority=web-svc:80").await;
    assert_eq!(status, 400);
    assert!(body.contains("no namespace"), "{body}");
    let (status, body) = get(addr, "/v1/destination/watch?authority=web-svc").await;
    assert_eq!(status, 400);
    assert!(body.contains("port"), "{body}");

    // The short name with the caller's namespace.
    let w = Watch::start(addr, "web-svc:80");
    support::eventually(
        "the client reports the 400",
        std::time::Duration::from_secs(5),
        || {
            w.0.lock()
                .expect("lock")
                .error
                .as_deref()
                .is_some_and(|e| e.contains("400"))
        },
    )
    .await;

    let w1 = Watch::start(addr, "web-svc.demo:80");
    let w2 = Watch::start(addr, "web-svc.demo.svc:80");
    w1.wait_no_endpoints(true).await;
    w2.wait_no_endpoints(true).await;
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("mesh_destination_watchers 2"), "{metrics}");
    assert!(
        metrics.contains("mesh_destination_index_services 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_destination_update_latency_seconds_count"),
        "{metrics}"
    );
    assert_eq!(
        running.destination.watched_targets(),
        1,
        "one subscription per target"
    );
}

/// The number of index updates so far (the update latency histogram's count).
async fn updates(addr: std::net::SocketAddr) -> u64 {
    let (_, body) = get(addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with("mesh_destination_update_latency_seconds_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the update latency count")
}

/// Regression: the folder source's own reads were reported as changes, so an idle controller
/// rescanned its folder every ~50 ms forever (76 % of a core with 10,000 endpoints).
#[tokio::test]
async fn an_idle_folder_is_not_rescanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "svc.yaml", SERVICE);
    let running = on_folder(dir.path()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // let the first load settle
    let before = updates(running.addr).await;
    // An observation window: nothing changes in it, so nothing may be rescanned.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        updates(running.addr).await,
        before,
        "no rescans while nothing changes"
    );

    // A real change still is one.
    write(dir.path(), "slice.yaml", &slice(&["10.244.0.5"]));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while updates(running.addr).await == before {
        assert!(tokio::time::Instant::now() < deadline, "a write is seen");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
