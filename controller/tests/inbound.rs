//! The inbound policy watch end to end on the folder source: a Pod, its Server and the
//! policies written and edited as files, followed through `mesh_api::inbound::watch_inbound`
//! over HTTP/2.

mod support;

use std::net::SocketAddr;

use mesh_api::destination::Connector;
use mesh_api::inbound::{Access, InboundPolicy, Requirement};
use support::{get, on_folder, write, Lines};

fn pod(name: &str, app: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}
spec: {{containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]}}
"
    )
}

fn server(access: &str) -> String {
    format!(
        "
apiVersion: policy.mesh.io/v1alpha1
kind: Server
metadata: {{name: web-http, namespace: demo}}
spec: {{podSelector: {{matchLabels: {{app: web}}}}, port: http, proxyProtocol: HTTP/1, accessPolicy: {access}}}
"
    )
}

/// A MeshTLSAuthentication `clients` of the ServiceAccount `client`, and an
/// AuthorizationPolicy `from-clients` on the Server that requires `authn`.
fn authz(authn: &str) -> String {
    format!(
        "
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: clients, namespace: demo}}
spec: {{identityRefs: [{{kind: ServiceAccount, name: client}}]}}
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: from-clients, namespace: demo}}
spec:
  targetRef: {{group: policy.mesh.io, kind: Server, name: web-http}}
  requiredAuthenticationRefs: [{{group: policy.mesh.io, kind: MeshTLSAuthentication, name: {authn}}}]
"
    )
}

/// The inbound policy watch of `pod`'s `port`.
fn watch(addr: SocketAddr, pod: &str, port: u16) -> Lines<InboundPolicy> {
    Lines::follow(mesh_api::inbound::watch_inbound(
        Connector::default(),
        addr,
        pod,
        port,
    ))
}

/// The server's name, or `-` without one.
fn server_name(p: &InboundPolicy) -> &str {
    p.server.as_ref().map_or("-", |s| s.name.as_str())
}

/// The names of the authorizations of the whole Server.
fn authorized(p: &InboundPolicy) -> Vec<&str> {
    p.authorizations.iter().map(|a| a.name.as_str()).collect()
}

#[tokio::test]
async fn inbound_watch_follows_policy_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "pods.yaml", &pod("web-0", "web"));
    write(d, "server.yaml", &server("deny"));
    write(d, "authz.yaml", &authz("clients"));
    let running = on_folder(d).await;
    let addr = running.addr;

    let web = watch(addr, "demo/web-0", 8080);
    web.wait("the first line: the Server and its authorization", |p| {
        server_name(p) == "web-http" && authorized(p) == ["from-clients"]
    })
    .await;
    let first = web.last().expect("a line");
    assert_eq!(
        (first.protocol, first.access),
        (mesh_api::inbound::ProxyProtocol::Http1, Access::Deny)
    );
    assert_eq!(
        first.authorizations[0].requires,
        [Requirement::MeshTls {
            identities: vec!["client.demo.serviceaccount.identity.mesh.cluster.local".into()]
        }]
    );

    // The Server edited: a new line.
    write(d, "server.yaml", &server("audit"));
    web.wait("access audit", |p| p.access == Access::Audit)
        .await;

    // The policy now requires an authentication that does not exist: it authorizes nothing.
    write(d, "authz.yaml", &authz("missing"));
    web.wait("no authorization", |p| {
        server_name(p) == "web-http" && p.authorizations.is_empty()
    })
    .await;

    // A change that touches neither this pod nor any policy sends no line. A pod that appears
    // later is followed: its watch starts on the default policy and gets the Server.
    let before = web.count();
    let later = watch(addr, "demo/web-1", 8080);
    later
        .wait("the default policy of an unknown pod", |p| {
            *p == InboundPolicy::default()
        })
        .await;
    write(d, "later.yaml", &pod("web-1", "web"));
    later
        .wait("the new pod's Server", |p| server_name(p) == "web-http")
        .await;
    assert_eq!(web.count(), before);

    // Relabelled out of the Server's selector: the default policy again.
    write(d, "later.yaml", &pod("web-1", "other"));
    later
        .wait("no Server", |p| *p == InboundPolicy::default())
        .await;

    // The Server removed: no Server for web-0 either; the watches stay open.
    std::fs::remove_file(d.join("server.yaml")).expect("remove");
    web.wait("no Server", |p| p.server.is_none()).await;
    assert_eq!((web.error(), later.error()), (None, None));
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("mesh_destination_watchers 2"), "{metrics}");
    assert_eq!(running.destination.watched_inbound(), 2);
}

#[tokio::test]
async fn inbound_watch_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "pods.yaml", &pod("web-0", "web"));
    let running = on_folder(dir.path()).await;
    let addr = running.addr;
    const USE: &str = "use ?pod=NAMESPACE/NAME&port=N\n";
    for (query, expected) in [
        ("", format!("missing pod: {USE}")),
        ("?port=80", format!("missing pod: {USE}")),
        (
            "?pod=web-0&port=80",
            format!("pod \"web-0\" is not NAMESPACE/NAME: {USE}"),
        ),
        (
            "?pod=demo/web-0/x&port=80",
            format!("pod \"demo/web-0/x\" is not NAMESPACE/NAME: {USE}"),
        ),
        ("?pod=demo/web-0", format!("missing port: {USE}")),
        (
            "?pod=demo/web-0&port=http",
            format!("port \"http\" is not a port number (1-65535): {USE}"),
        ),
        (
            "?pod=demo/web-0&port=0",
            format!("port \"0\" is not a port number (1-65535): {USE}"),
        ),
    ] {
        let (status, body) = get(addr, &format!("/v1/policy/inbound/watch{query}")).await;
        assert_eq!((status.as_u16(), body), (400, expected), "{query}");
    }
    assert_eq!(running.destination.watched_inbound(), 0);
}
