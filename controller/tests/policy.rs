//! The outbound policy watch end to end on the folder source: routes written and edited as
//! files, followed through `mesh_api::policy::watch_outbound` over HTTP/2.

mod support;

use std::net::SocketAddr;

use mesh_api::destination::Connector;
use mesh_api::policy::{OutboundPolicy, PathMatch};
use support::{get, on_folder, write, Lines};

const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: demo, annotations: {retry.mesh.io/budget-ratio: '0.1'}}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}
";

fn route(name: &str, prefix: &str, backend: &str) -> String {
    format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: demo}}
spec:
  parentRefs: [{{group: '', kind: Service, name: web-svc, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: {backend}, port: 80}}]
"
    )
}

/// The outbound policy watch of `authority` for a client in namespace `ns`.
fn watch(addr: SocketAddr, authority: &str, ns: &str) -> Lines<OutboundPolicy> {
    Lines::follow(mesh_api::policy::watch_outbound(
        Connector::default(),
        addr,
        authority,
        ns,
    ))
}

fn prefixes(p: &OutboundPolicy) -> Vec<(String, String)> {
    p.routes
        .iter()
        .flat_map(|r| {
            r.rules.iter().flat_map(move |rule| {
                rule.matches.iter().map(move |m| match &m.path {
                    Some(PathMatch::PathPrefix(v)) => (r.name.clone(), v.clone()),
                    other => (r.name.clone(), format!("{other:?}")),
                })
            })
        })
        .collect()
}

#[tokio::test]
async fn policy_watch_follows_route_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "svc.yaml", SERVICES);
    write(d, "route.yaml", &route("canary", "/api", "web-v2"));
    let running = on_folder(d).await;
    let addr = running.addr;

    let web = watch(addr, "web-svc.demo.svc.cluster.local:80", "client");
    web.wait("the first line: one route", |p| {
        prefixes(p) == [("canary".to_owned(), "/api".to_owned())]
    })
    .await;
    let first = web.last().expect("a line");
    let parent = first.parent.as_ref().expect("a parent");
    assert_eq!((parent.name.as_str(), parent.port), ("web-svc", 80));
    assert_eq!(first.retry_budget.ratio, 0.1);
    let backend = &first.routes[0].rules[0].backends[0];
    assert_eq!(backend.authority, "web-v2.demo.svc.cluster.local:80");
    assert_eq!(backend.error, None);

    // Edit the route: a new line with the new prefix and a backend that does not exist.
    write(d, "route.yaml", &route("canary", "/v2", "web-v3"));
    web.wait("the edited route", |p| {
        prefixes(p) == [("canary".to_owned(), "/v2".to_owned())]
    })
    .await;
    let error = web.last().expect("a line").routes[0].rules[0].backends[0]
        .error
        .clone();
    assert_eq!(
        error.as_deref(),
        Some("BackendNotFound: Service demo/web-v3 not found")
    );

    // An invalid route next to a valid one: the valid one is served.
    write(
        d,
        "bad.yaml",
        &route("bad", "/b", "web-v2").replace(
            "{type: PathPrefix, value: /b}",
            "{type: RegularExpression, value: '/(('}",
        ),
    );
    write(d, "good.yaml", &route("good", "/good", "web-v2"));
    web.wait("the good route joins, the bad one does not", |p| {
        prefixes(p)
            == [
                ("canary".to_owned(), "/v2".to_owned()),
                ("good".to_owned(), "/good".to_owned()),
            ]
    })
    .await;

    // A change that touches no policy sends no line.
    let before = web.count();
    write(
        d,
        "slice.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: demo, \
         labels: {kubernetes.io/service-name: web-svc}}\naddressType: IPv4\nendpoints: []\n",
    );
    let ip = watch(addr, "10.96.0.10:80", "");
    ip.wait("the policy by ClusterIP", |p| p.routes.len() == 2)
        .await;
    assert_eq!(web.count(), before);

    // Routes removed: the default route (no routes), the parent kept.
    for f in ["route.yaml", "bad.yaml", "good.yaml"] {
        std::fs::remove_file(d.join(f)).expect("remove");
    }
    web.wait("no routes", |p| p.routes.is_empty() && p.parent.is_some())
        .await;
    assert_eq!(web.error(), None, "the watch is still open");
}

#[tokio::test]
async fn policy_watch_bad_requests_and_unknown_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "svc.yaml", SERVICES);
    let running = on_folder(dir.path()).await;
    let addr = running.addr;
    let (status, body) = get(addr, "/v1/policy/outbound/watch").await;
    assert_eq!(status, 400);
    assert_eq!(body, "missing authority: use ?authority=HOST:PORT\n");
    let (status, body) = get(addr, "/v1/policy/outbound/watch?authority=web-svc").await;
    assert_eq!(status, 400);
    assert!(body.contains("needs a numeric port"), "{body}");

    // Not a Service: the default policy, no parent.
    let unknown = watch(addr, "example.org:443", "demo");
    unknown
        .wait("the default policy", |p| *p == OutboundPolicy::default())
        .await;
    // The short name with the client's namespace.
    let short = watch(addr, "web-svc:80", "demo");
    short.wait("a parent", |p| p.parent.is_some()).await;
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("mesh_destination_watchers 2"), "{metrics}");
    assert_eq!(running.destination.watched_policies(), 2);
}
