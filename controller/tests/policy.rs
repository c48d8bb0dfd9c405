//! The outbound policy watch end to end on the folder source: routes and MetaRoutes written and
//! edited as files, followed through `mesh_api::policy::watch_outbound` over HTTP/2.

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

/// A Redis Service (its port's appProtocol `mesh.io/redis`), a second one, and the first one's
/// endpoint.
const REDIS: &str = "
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: demo}
spec: {clusterIP: 10.96.0.20, ports: [{name: redis, port: 6379, appProtocol: mesh.io/redis}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis-sessions, namespace: demo}
spec: {clusterIP: 10.96.0.21, ports: [{name: redis, port: 6379, appProtocol: mesh.io/redis}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: redis-1, namespace: demo, labels: {kubernetes.io/service-name: redis}}
addressType: IPv4
ports: [{name: redis, port: 6379}]
endpoints: [{addresses: [10.244.0.30]}]
";

fn meta_route(match_type: &str) -> String {
    format!(
        "
apiVersion: policy.mesh.io/v1alpha1
kind: MetaRoute
metadata: {{name: sessions, namespace: demo}}
spec:
  parentRefs: [{{group: core, kind: Service, name: redis, port: 6379}}]
  rules:
  - matches: [{{metadata: [{{key: key, type: {match_type}, value: 'session:'}}]}}]
    backendRefs: [{{name: redis-sessions, port: 6379}}]
    timeout: 500ms
"
    )
}

#[tokio::test]
async fn a_codec_port_and_its_meta_routes_follow_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "redis.yaml", REDIS);
    write(d, "meta.yaml", &meta_route("Prefix"));
    let running = on_folder(d).await;
    let addr = running.addr;

    let by_name = watch(addr, "redis.demo.svc.cluster.local:6379", "client");
    let by_ip = watch(addr, "10.96.0.20:6379", "client");
    for w in [&by_name, &by_ip] {
        w.wait("the codec and the MetaRoute", |p| {
            p.codec.as_deref() == Some("redis") && p.meta_routes.len() == 1
        })
        .await;
    }
    let rule = &by_name.last().expect("a line").meta_routes[0].rules[0];
    assert_eq!(
        rule.backends[0].authority,
        "redis-sessions.demo.svc.cluster.local:6379"
    );
    assert_eq!(rule.timeout_ms, Some(500));

    // The endpoints of the codec port are hinted with the codec.
    let endpoints = support::Watch::start(addr, "redis.demo.svc.cluster.local:6379");
    endpoints.wait_addrs(&["10.244.0.30:6379"]).await;
    assert_eq!(
        endpoints
            .endpoint("10.244.0.30:6379")
            .expect("endpoint")
            .protocol_hint,
        Some(mesh_api::destination::ProtocolHint::Codec("redis".into()))
    );

    // An invalid match type: the MetaRoute is no longer served; the codec stays.
    write(d, "meta.yaml", &meta_route("Suffix"));
    by_name
        .wait("no MetaRoute", |p| {
            p.meta_routes.is_empty() && p.codec.as_deref() == Some("redis")
        })
        .await;
    // Fixed again.
    write(d, "meta.yaml", &meta_route("RegularExpression"));
    by_name
        .wait("the fixed MetaRoute", |p| p.meta_routes.len() == 1)
        .await;
    assert_eq!(by_name.error(), None, "the watch is still open");
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
