//! Data-driven tests of resolution, on the recorded fixtures and small YAML objects; and what
//! the index's tests share (`index_of`, `http_route_on`, `render`), which `policy_tests.rs`,
//! `meta_tests.rs` and `inbound_tests.rs` use too.

use super::*;
use crate::source::folder::parse_yaml;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../testdata/k8s-fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// An index of the recorded cluster (services, slices, pods, and ReplicaSets if asked) plus
/// extra YAML documents.
fn index(with_replicasets: bool, extra_yaml: &str) -> Index {
    let mut files = vec![
        fixture("services-list.json"),
        fixture("endpointslices-list.json"),
        fixture("pods-list.json"),
    ];
    if with_replicasets {
        files.push(fixture("replicasets-list.json"));
    }
    files.push(extra_yaml.to_owned());
    index_of(files)
}

/// An index of `texts`, YAML documents that must all decode.
pub(super) fn index_of<T: AsRef<str>>(texts: impl IntoIterator<Item = T>) -> Index {
    let mut index = Index::new(IndexConfig::default());
    for text in texts {
        let (objects, errors) = parse_yaml(text.as_ref());
        assert!(errors.is_empty(), "{errors:?}");
        for o in objects {
            index.apply(o);
        }
    }
    index
}

/// An HTTPRoute `name` in `ns` with extra metadata `meta`, and its `parentRefs` and `rules`
/// (YAML flow).
pub(super) fn http_route_on(
    ns: &str,
    name: &str,
    meta: &str,
    parent_refs: &str,
    rules: &str,
) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}{meta}}}
spec:
  parentRefs: {parent_refs}
  rules: {rules}
"
    )
}

/// Renders a resolution: `unknown`, `empty`, or one line per endpoint (its hint last: `h2`,
/// `codec:redis`).
pub(super) fn render(r: &Resolution) -> String {
    match r {
        Resolution::Unknown => "unknown".into(),
        Resolution::Endpoints(eps) if eps.is_empty() => "empty".into(),
        Resolution::Endpoints(eps) => eps
            .values()
            .map(|e| {
                let labels: Vec<String> =
                    e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut s = format!("{} {}", e.addr, labels.join(","));
                if let Some(id) = &e.identity {
                    s.push_str(&format!(" id={id}"));
                }
                match &e.protocol_hint {
                    Some(ProtocolHint::H2) => s.push_str(" h2"),
                    Some(ProtocolHint::Codec(codec)) => s.push_str(&format!(" codec:{codec}")),
                    None => {}
                }
                s
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn check(index: &Index, authority: &str, expected: &str) {
    let target = Target::parse(authority, Some("demo"), "cluster.local").expect("valid authority");
    let got = render(&index.resolve(&target));
    assert_eq!(got, expected.trim(), "resolving {authority}");
}

const WEB: &str = "
10.244.0.5:8080 deployment=web,namespace=demo,pod=web-85489d9c68-62pw4,service=web-svc
10.244.0.6:8080 deployment=web,namespace=demo,pod=web-85489d9c68-84cz2,service=web-svc";

#[test]
fn named_target_port_and_names() {
    let idx = index(true, "");
    for authority in [
        "web-svc.demo.svc.cluster.local:80",
        "web-svc.demo.svc:80",
        "web-svc.demo:80",
        "web-svc:80",
    ] {
        check(&idx, authority, WEB);
    }
    check(&idx, "web-svc.demo:8080", "unknown");
    check(&idx, "nope.demo:80", "unknown");
    check(&idx, "web-svc.other:80", "unknown");
}

#[test]
fn cluster_ip_and_pod_ip() {
    let idx = index(true, "");
    check(&idx, "10.96.172.25:80", WEB);
    check(&idx, "10.96.172.25:81", "unknown");
    check(&idx, "10.1.2.3:80", "unknown");
    check(
        &idx,
        "10.244.0.6:8080",
        "10.244.0.6:8080 deployment=web,namespace=demo,pod=web-85489d9c68-84cz2",
    );
}

#[test]
fn owner_without_replicaset_uses_pod_template_hash() {
    check(&index(false, ""), "web-svc.demo:80", WEB);
    let idx = index(
        false,
        "
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: demo
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u1, controller: true}]
spec: {containers: [{name: db}]}
status: {podIP: 10.244.0.20, phase: Running}
---
apiVersion: v1
kind: Pod
metadata:
  name: rs-x
  namespace: demo
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: lonely, uid: u2, controller: true}]
spec: {containers: [{name: app}]}
status: {podIP: 10.244.0.21, phase: Running}
",
    );
    check(
        &idx,
        "10.244.0.20:5432",
        "10.244.0.20:5432 namespace=demo,pod=db-0,statefulset=db",
    );
    check(
        &idx,
        "10.244.0.21:80",
        "10.244.0.21:80 namespace=demo,pod=rs-x,replicaset=lonely",
    );
}

#[test]
fn headless_and_pod_dns_names() {
    let idx = index(true, "");
    check(
        &idx,
        "web-headless.demo.svc.cluster.local:8080",
        "
10.244.0.5:8080 deployment=web,namespace=demo,pod=web-85489d9c68-62pw4,service=web-headless
10.244.0.6:8080 deployment=web,namespace=demo,pod=web-85489d9c68-84cz2,service=web-headless",
    );
    // A pod's DNS name: by the endpoint's hostname, else its pod name.
    check(
        &idx,
        "web-85489d9c68-84cz2.web-headless.demo.svc.cluster.local:8080",
        "10.244.0.6:8080 deployment=web,namespace=demo,pod=web-85489d9c68-84cz2,service=web-headless",
    );
    check(
        &idx,
        "web-0.web-headless.demo.svc.cluster.local:8080",
        "empty",
    );
    let idx = index(
        true,
        "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.1], hostname: db-0}
- {addresses: [10.244.1.2], hostname: db-1}
ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
",
    );
    check(
        &idx,
        "db-1.db.demo.svc.cluster.local:5432",
        "10.244.1.2:5432 namespace=demo,service=db",
    );
    // Headless: a port the service does not declare goes straight to the pod.
    check(
        &idx,
        "db-0.db.demo.svc:9999",
        "10.244.1.1:9999 namespace=demo,service=db",
    );
}

const CONDITIONS: &str = "
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec: {clusterIP: 10.96.0.9, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: demo, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true, serving: true, terminating: false}}
- {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: false}}
- {addresses: [10.0.0.4]}
";

#[test]
fn ready_serving_terminating() {
    let mut idx = index(false, CONDITIONS);
    check(
        &idx,
        "api.demo:80",
        "
10.0.0.1:8080 namespace=demo,service=api
10.0.0.4:8080 namespace=demo,service=api",
    );
    // With no ready endpoint left, terminating-but-serving ones stand in.
    let only_terminating = CONDITIONS
        .replace(
            "{ready: true, serving: true, terminating: false}",
            "{ready: false, serving: false, terminating: true}",
        )
        .replace("- {addresses: [10.0.0.4]}", "");
    idx = index(false, &only_terminating);
    check(
        &idx,
        "api.demo:80",
        "10.0.0.2:8080 namespace=demo,service=api",
    );
    check(
        &idx,
        "10.96.0.9:80",
        "10.0.0.2:8080 namespace=demo,service=api",
    );
    // A known service with no endpoints at all.
    let (objects, _) = parse_yaml(CONDITIONS);
    idx = Index::new(IndexConfig::default());
    for o in objects
        .into_iter()
        .filter(|o| o.key().kind == Kind::Service)
    {
        idx.apply(o);
    }
    check(&idx, "api.demo:80", "empty");
    // Deleting the service makes it unknown.
    idx.delete(&ObjectKey {
        kind: Kind::Service,
        namespace: "demo".into(),
        name: "api".into(),
    });
    check(&idx, "api.demo:80", "unknown");
    check(&idx, "10.96.0.9:80", "unknown");
}

const MESHED: &str = "
apiVersion: v1
kind: Service
metadata: {name: m, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: m-1, namespace: demo, labels: {kubernetes.io/service-name: m}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.1.1], targetRef: {kind: Pod, name: sidecar, namespace: demo}}
- {addresses: [10.0.1.2], targetRef: {kind: Pod, name: native, namespace: demo}}
- {addresses: [10.0.1.3], targetRef: {kind: Pod, name: annotated, namespace: demo}}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecar, namespace: demo}
spec: {serviceAccountName: web, containers: [{name: app}, {name: mesh-proxy}]}
---
apiVersion: v1
kind: Pod
metadata: {name: native, namespace: demo}
spec: {initContainers: [{name: mesh-proxy, restartPolicy: Always}], containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: annotated, namespace: demo, annotations: {mesh.io/inject: enabled}}
spec: {containers: [{name: app}]}
";

#[test]
fn meshed_vs_not() {
    let idx = index(false, MESHED);
    check(
        &idx,
        "m.demo:80",
        "
10.0.1.1:8080 namespace=demo,pod=sidecar,service=m id=web.demo.serviceaccount.identity.mesh.cluster.local h2
10.0.1.2:8080 namespace=demo,pod=native,service=m id=default.demo.serviceaccount.identity.mesh.cluster.local h2
10.0.1.3:8080 namespace=demo,pod=annotated,service=m",
    );
    let mut other = Index::new(IndexConfig {
        trust_domain: "example.org".into(),
        ..IndexConfig::default()
    });
    for o in parse_yaml(MESHED).0 {
        other.apply(o);
    }
    let r = other.resolve(&Target::parse("m.demo:80", None, "cluster.local").expect("valid"));
    assert!(render(&r).contains("id=web.demo.serviceaccount.identity.mesh.example.org h2"));
}
