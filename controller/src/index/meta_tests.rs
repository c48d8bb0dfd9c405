//! Data-driven tests of codec ports (a Service port's `appProtocol` → the outbound policy's
//! `codec` and the endpoints' hint) and of MetaRoutes: validation, resolution, order and the
//! client namespace's choice.

use super::tests::{index_of, render};
use super::*;
use crate::source::folder::parse_yaml;
use serde_json::json;

/// `redis` (6379 a Redis port, 9000 a plain one), `thrift` (a Thrift port), `cache` (a second
/// Redis Service), `web` (an HTTP port), and `redis`'s two endpoints: a meshed pod and an
/// unmeshed one.
const CLUSTER: &str = "
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: redis, port: 6379, targetPort: 6379, appProtocol: mesh.io/redis}
  - {name: admin, port: 9000, targetPort: 9000}
---
apiVersion: v1
kind: Service
metadata: {name: thrift, namespace: demo}
spec: {clusterIP: 10.96.0.21, ports: [{port: 9090, appProtocol: mesh.io/thrift}]}
---
apiVersion: v1
kind: Service
metadata: {name: cache, namespace: demo}
spec: {clusterIP: 10.96.0.22, ports: [{port: 6379, appProtocol: mesh.io/redis}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.23
  ports:
  - {name: http, port: 80, appProtocol: http}
  - {name: memcached, port: 11211, appProtocol: mesh.io/memcached}
  - {name: bare, port: 6379, appProtocol: redis}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: redis-1, namespace: demo, labels: {kubernetes.io/service-name: redis}}
addressType: IPv4
ports: [{name: redis, port: 6379}, {name: admin, port: 9000}]
endpoints:
- {addresses: [10.244.0.30], targetRef: {kind: Pod, name: redis-0, namespace: demo}}
- {addresses: [10.244.0.31], targetRef: {kind: Pod, name: redis-1, namespace: demo}}
---
apiVersion: v1
kind: Pod
metadata: {name: redis-0, namespace: demo}
spec: {serviceAccountName: redis, containers: [{name: redis}, {name: mesh-proxy}]}
status: {podIP: 10.244.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: redis-1, namespace: demo}
spec: {containers: [{name: redis}]}
status: {podIP: 10.244.0.31}
";

/// An index of [`CLUSTER`] and `yaml`, whose documents must all decode.
fn index(yaml: &str) -> Index {
    index_of([CLUSTER, yaml])
}

fn target(authority: &str) -> Target {
    Target::parse(authority, Some("demo"), "cluster.local").expect("valid authority")
}

/// A MetaRoute `name` in `ns` with extra metadata `meta`, its `parentRefs` and `rules` (YAML
/// flow).
fn meta_route(ns: &str, name: &str, meta: &str, parent_refs: &str, rules: &str) -> String {
    format!(
        "---
apiVersion: policy.mesh.io/v1alpha1
kind: MetaRoute
metadata: {{name: {name}, namespace: {ns}{meta}}}
spec:
  parentRefs: {parent_refs}
  rules: {rules}
"
    )
}

/// A MetaRoute on `redis:6379` with one catch-all rule.
fn on_redis(ns: &str, name: &str, meta: &str) -> String {
    meta_route(
        ns,
        name,
        meta,
        "[{kind: Service, name: redis, namespace: demo, port: 6379}]",
        "[{}]",
    )
}

/// The MetaRoutes of a policy, as `namespace/name`.
fn names(policy: &OutboundPolicy) -> Vec<String> {
    policy
        .meta_routes
        .iter()
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect()
}

#[test]
fn a_codec_app_protocol_is_the_ports_codec() {
    let index = index("");
    for (authority, codec) in [
        ("redis.demo.svc.cluster.local:6379", Some("redis")),
        ("redis:6379", Some("redis")),
        ("10.96.0.20:6379", Some("redis")),
        ("thrift.demo:9090", Some("thrift")),
        ("10.96.0.21:9090", Some("thrift")),
        // The Service's other port, and other appProtocols: no codec.
        ("redis:9000", None),
        ("10.96.0.20:9000", None),
        ("web:80", None),
        ("web:11211", None),
        ("web:6379", None),
        // Not a Service port at all.
        ("10.244.0.30:6379", None),
        ("redis:6380", None),
    ] {
        let policy = index.outbound_policy(&target(authority), None);
        assert_eq!(policy.codec.as_deref(), codec, "{authority}");
    }
    let policy = index.outbound_policy(&target("10.96.0.20:6379"), None);
    assert_eq!(
        policy.parent,
        Some(Parent {
            namespace: "demo".into(),
            name: "redis".into(),
            port: 6379,
        }),
        "by ClusterIP, the Service port it names"
    );
}

#[test]
fn a_codec_ports_endpoints_are_hinted_with_the_codec_meshed_or_not() {
    let index = index("");
    let check = |authority: &str, expected: &str| {
        let got = render(&index.resolve(&target(authority)));
        assert_eq!(got, expected.trim(), "resolving {authority}");
    };
    let codec = "
10.244.0.30:6379 namespace=demo,pod=redis-0,service=redis id=redis.demo.serviceaccount.identity.mesh.cluster.local codec:redis
10.244.0.31:6379 namespace=demo,pod=redis-1,service=redis codec:redis";
    check("redis:6379", codec);
    check("10.96.0.20:6379", codec);
    // The other port of the same pods: h2 for the meshed one only, as always.
    check(
        "redis:9000",
        "
10.244.0.30:9000 namespace=demo,pod=redis-0,service=redis id=redis.demo.serviceaccount.identity.mesh.cluster.local h2
10.244.0.31:9000 namespace=demo,pod=redis-1,service=redis",
    );
    // A pod addressed by its own IP is no Service port: no codec.
    check(
        "10.244.0.30:6379",
        "10.244.0.30:6379 namespace=demo,pod=redis-0 id=redis.demo.serviceaccount.identity.mesh.cluster.local h2",
    );
}

#[test]
fn meta_routes_are_converted_with_their_backends_resolved() {
    let index = index(&meta_route(
        "demo",
        "sessions",
        "",
        "[{group: core, kind: Service, name: redis, port: 6379}]",
        "
  - matches:
    - metadata: [{key: key, type: Prefix, value: 'session:'}, {key: command, value: GET}]
    - metadata: [{key: key, type: RegularExpression, value: 'user:[0-9]+'}]
    backendRefs: [{name: cache, port: 6379, weight: 3}, {name: gone, port: 6379}]
    requestMutation: [{key: method, value: x}]
    timeout: 1m30s
  - backendRefs: [{name: cache, namespace: other, port: 6379}]
    timeout: 0s
  - {}",
    ));
    let policy = index.outbound_policy(&target("redis:6379"), None);
    assert_eq!(policy.codec.as_deref(), Some("redis"));
    assert!(policy.routes.is_empty(), "{policy:?}");
    let got = serde_json::to_value(&policy.meta_routes).expect("json");
    let redis = json!({"authority": "redis.demo.svc.cluster.local:6379", "namespace": "demo",
                       "name": "redis", "port": 6379, "weight": 1});
    assert_eq!(
        got,
        json!([{
            "namespace": "demo",
            "name": "sessions",
            "rules": [
                {
                    "matches": [
                        {"metadata": [{"key": "key", "type": "Prefix", "value": "session:"},
                                      {"key": "command", "type": "Exact", "value": "GET"}]},
                        {"metadata": [{"key": "key", "type": "RegularExpression",
                                       "value": "user:[0-9]+"}]},
                    ],
                    "backends": [
                        {"authority": "cache.demo.svc.cluster.local:6379", "namespace": "demo",
                         "name": "cache", "port": 6379, "weight": 3},
                        {"authority": "gone.demo.svc.cluster.local:6379", "namespace": "demo",
                         "name": "gone", "port": 6379, "weight": 1,
                         "error": "BackendNotFound: Service demo/gone not found"},
                    ],
                    "requestMutation": [{"key": "method", "value": "x"}],
                    "timeoutMs": 90000,
                },
                {
                    "matches": [],
                    // As an HTTPRoute's: another namespace's Service needs a ReferenceGrant.
                    "backends": [
                        {"authority": "cache.other.svc.cluster.local:6379", "namespace": "other",
                         "name": "cache", "port": 6379, "weight": 1,
                         "error": "RefNotPermitted: backendRef to Service other/cache: \
                                   cross-namespace backends need a ReferenceGrant, which the \
                                   mesh does not read"},
                    ],
                },
                // No backendRefs: the parent Service.
                {"matches": [], "backends": [redis]},
            ],
        }])
    );
    // The same by ClusterIP.
    let by_ip = index.outbound_policy(&target("10.96.0.20:6379"), None);
    assert_eq!(by_ip.meta_routes, policy.meta_routes);
}

#[test]
fn meta_routes_attach_to_their_parents_codec_ports() {
    let routes = [
        // Every port of redis: only 6379 has a codec.
        meta_route(
            "demo",
            "all-ports",
            "",
            "[{kind: Service, name: redis}]",
            "[{}]",
        ),
        meta_route(
            "demo",
            "admin",
            "",
            "[{kind: Service, name: redis, port: 9000}]",
            "[{}]",
        ),
        meta_route(
            "demo",
            "two-parents",
            "",
            "[{kind: Service, name: cache, port: 6379}, {group: '', kind: Service, name: thrift, port: 9090}]",
            "[{}]",
        ),
        meta_route(
            "demo",
            "web",
            "",
            "[{kind: Service, name: web, port: 6379}]",
            "[{}]",
        ),
    ];
    let index = index(&routes.concat());
    for (authority, expected) in [
        ("redis:6379", vec!["demo/all-ports"]),
        ("redis:9000", vec![]),
        ("cache:6379", vec!["demo/two-parents"]),
        ("10.96.0.21:9090", vec!["demo/two-parents"]),
        // Not a codec port: nothing to route by metadata.
        ("web:6379", vec![]),
    ] {
        let policy = index.outbound_policy(&target(authority), None);
        assert_eq!(names(&policy), expected, "{authority}");
    }
    // The default backend is the port's own Service.
    let policy = index.outbound_policy(&target("thrift:9090"), None);
    assert_eq!(
        policy.meta_routes[0].rules[0].backends[0].authority,
        "thrift.demo.svc.cluster.local:9090"
    );
}

#[test]
fn meta_routes_come_oldest_first_then_by_namespace_and_name() {
    let at = |t: &str| format!(", creationTimestamp: '{t}'");
    let yaml = [
        on_redis("demo", "b-new", &at("2025-01-02T00:00:00Z")),
        on_redis("demo", "no-time", ""),
        on_redis("demo", "z-old", &at("2025-01-01T00:00:00Z")),
        on_redis("demo", "a-new", &at("2025-01-02T00:00:00Z")),
    ]
    .concat();
    let policy = index(&yaml).outbound_policy(&target("redis:6379"), None);
    assert_eq!(
        names(&policy),
        ["demo/z-old", "demo/a-new", "demo/b-new", "demo/no-time"]
    );
}

#[test]
fn a_client_namespaces_own_meta_routes_replace_the_producers() {
    let yaml = [
        on_redis("demo", "producer", ""),
        on_redis("shop", "consumer", ""),
        on_redis("blog", "other-consumer", ""),
    ]
    .concat();
    let index = index(&yaml);
    let names_for =
        |client: Option<&str>| names(&index.outbound_policy(&target("redis:6379"), client));
    assert_eq!(names_for(None), ["demo/producer"]);
    assert_eq!(names_for(Some("demo")), ["demo/producer"]);
    assert_eq!(names_for(Some("web")), ["demo/producer"]);
    assert_eq!(names_for(Some("shop")), ["shop/consumer"]);
    assert_eq!(names_for(Some("blog")), ["blog/other-consumer"]);
}

/// Checks that a MetaRoute with `parent_refs` and `rules` is refused with a message containing
/// `expected` (and never served), or accepted when `expected` is empty.
fn check_validation(parent_refs: &str, rules: &str, expected: &str) {
    let yaml = meta_route("demo", "r", "", parent_refs, rules);
    let (objects, errors) = parse_yaml(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let object = objects.into_iter().next().expect("an object");
    let Object::MetaRoute(route) = &object else {
        panic!("a MetaRoute: {object:?}");
    };
    match (&route.valid, expected) {
        (Ok(_), "") => assert!(object.warnings().is_empty()),
        (Err(e), x) if !x.is_empty() && e.contains(x) => {
            let warnings = object.warnings();
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(
                warnings[0].starts_with("the MetaRoute is not served: ") && warnings[0].contains(x),
                "{warnings:?}"
            );
            let mut index = index("");
            index.apply(object);
            let policy = index.outbound_policy(&target("redis:6379"), None);
            assert!(policy.meta_routes.is_empty(), "{policy:?}");
        }
        (got, _) => panic!("{parent_refs} {rules}\nexpected {expected:?}, got {got:?}"),
    }
}

#[test]
fn validates_meta_routes() {
    let redis = "[{kind: Service, name: redis, port: 6379}]";
    for (parent_refs, rules, expected) in [
        (redis, "[{}]", ""),
        (
            redis,
            "[{matches: [{metadata: [{key: key, type: RegularExpression, value: 'a.*'}]}]}]",
            "",
        ),
        (
            redis,
            "[{}, {matches: [{metadata: [{key: key, type: RegularExpression, value: 'user:(['}]}]}]",
            "spec.rules[1].matches[0].metadata[0].value: invalid regular expression \"user:([\"",
        ),
        (
            redis,
            "[{matches: [{metadata: []}, {metadata: [{key: key, type: Glob, value: 'a*'}]}]}]",
            "spec.rules[0].matches[1].metadata[0].type: \"Glob\" is not supported (Exact, \
             Prefix or RegularExpression)",
        ),
        (
            redis,
            "[{matches: [{metadata: [{key: '', value: x}]}]}]",
            "spec.rules[0].matches[0].metadata[0].key: required",
        ),
        (
            redis,
            "[{requestMutation: [{key: '', value: x}]}]",
            "spec.rules[0].requestMutation[0].key: required",
        ),
        (
            redis,
            "[{timeout: 5 seconds}]",
            "spec.rules[0].timeout: \"5 seconds\" is not a Gateway API duration",
        ),
        (
            redis,
            "[{backendRefs: [{name: cache}]}]",
            "spec.rules[0].backendRefs[0].port: required for a Service",
        ),
        (
            redis,
            "[{backendRefs: [{name: cache, port: 6379, weight: -1}]}]",
            "spec.rules[0].backendRefs[0].weight: -1 is not within 0-1000000",
        ),
        (
            "[]",
            "[{}]",
            "spec.parentRefs: required (a Service, and its port)",
        ),
        (
            "[{group: policy.mesh.io, kind: Server, name: redis}]",
            "[{}]",
            "spec.parentRefs[0]: policy.mesh.io/Server is not supported: a MetaRoute's parent \
             is a Service",
        ),
        (
            "[{kind: Service, name: redis, port: 0}]",
            "[{}]",
            "spec.parentRefs[0].port: 0 is not within 1-65535",
        ),
        (
            "[{kind: Service, name: ''}]",
            "[{}]",
            "spec.parentRefs[0].name: required",
        ),
    ] {
        check_validation(parent_refs, rules, expected);
    }
}

#[test]
fn an_invalid_meta_route_is_not_served_and_the_others_are() {
    let bad = meta_route(
        "demo",
        "bad",
        "",
        "[{kind: Service, name: redis, port: 6379}]",
        "[{matches: [{metadata: [{key: key, type: Suffix, value: x}]}]}]",
    );
    let index = index(&[bad, on_redis("demo", "good", "")].concat());
    let policy = index.outbound_policy(&target("redis:6379"), None);
    assert_eq!(names(&policy), ["demo/good"]);
}

#[test]
fn meta_routes_move_the_policy_version() {
    let mut index = index("");
    let before = index.policy_version();
    let (objects, _) = parse_yaml(&on_redis("demo", "r", ""));
    for o in objects {
        index.apply(o);
    }
    assert!(index.policy_version() > before);
    assert_eq!(index.keys(Kind::MetaRoute).len(), 1);
    let applied = index.policy_version();
    index.delete(&ObjectKey {
        kind: Kind::MetaRoute,
        namespace: "demo".into(),
        name: "r".into(),
    });
    assert!(index.policy_version() > applied);
    assert!(index
        .outbound_policy(&target("redis:6379"), None)
        .meta_routes
        .is_empty());
}
