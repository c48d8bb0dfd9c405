//! Data-driven tests of route conversion, validation, outbound policies and route status.

use super::routes::*;
use super::tests::{http_route_on, index_of};
use super::*;
use crate::source::folder::parse_yaml;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mesh_api::policy::{Filter, PathMatch, Retry, RetryBudget, StatusRange};
use serde_json::json;

const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: client}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
";

/// An index of [`SERVICES`] and `yaml`, whose documents must all decode.
fn index(yaml: &str) -> Index {
    index_of([SERVICES, yaml])
}

fn web(port: u16) -> Target {
    Target::Service {
        namespace: "demo".into(),
        name: "web-svc".into(),
        port,
        hostname: None,
    }
}

/// An HTTPRoute `name` in `ns` on `web-svc` with `rules` (YAML flow) and extra metadata.
fn http_route(ns: &str, name: &str, meta: &str, rules: &str) -> String {
    let parent_refs = "[{group: '', kind: Service, name: web-svc, namespace: demo, port: 80}]";
    http_route_on(ns, name, meta, parent_refs, rules)
}

/// The routes' names, in the order the policy gives them.
fn names(policy: &OutboundPolicy) -> Vec<String> {
    policy
        .routes
        .iter()
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect()
}

/// The first rule of the only route as JSON.
fn first_rule(yaml_rules: &str) -> serde_json::Value {
    let index = index(&http_route("demo", "r", "", yaml_rules));
    let policy = index.outbound_policy(&web(80), None);
    assert_eq!(policy.routes.len(), 1, "{policy:?}");
    serde_json::to_value(&policy.routes[0].rules[0]).expect("json")
}

#[test]
fn converts_http_routes() {
    let rule = first_rule(
        "
  - matches:
    - path: {type: Exact, value: /a}
      method: GET
      headers: [{name: x-user, value: bob}, {type: RegularExpression, name: x-v, value: 'v[0-9]+'}]
      queryParams: [{name: debug, value: '1'}]
    - headers: [{name: x-canary, value: 'true'}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: '1'}], remove: [x-b]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 1, denominator: 4}}
    backendRefs: [{name: web-svc, port: 80, weight: 90}, {name: web-v2, port: 80}]
    timeouts: {request: 1m30s, backendRequest: 500ms}
    retry: {codes: [503, 504], attempts: 3, backoff: 100ms}",
    );
    let web_v2 = json!({"authority": "web-v2.demo.svc.cluster.local:80", "namespace": "demo",
                        "name": "web-v2", "port": 80, "weight": 1});
    assert_eq!(
        rule,
        json!({
            "matches": [
                {"path": {"type": "Exact", "value": "/a"}, "method": "GET",
                 "headers": [{"name": "x-user", "type": "Exact", "value": "bob"},
                             {"name": "x-v", "type": "RegularExpression", "value": "v[0-9]+"}],
                 "queryParams": [{"name": "debug", "type": "Exact", "value": "1"}]},
                {"path": {"type": "PathPrefix", "value": "/"},
                 "headers": [{"name": "x-canary", "type": "Exact", "value": "true"}]},
            ],
            "filters": [
                {"requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}},
                {"requestMirror": {"backend": web_v2, "percent": 25.0}},
            ],
            "backends": [
                {"authority": "web-svc.demo.svc.cluster.local:80", "namespace": "demo",
                 "name": "web-svc", "port": 80, "weight": 90},
                web_v2,
            ],
            "timeouts": {"requestMs": 90000, "backendRequestMs": 500},
            "retry": {"http": [{"min": 503, "max": 503}, {"min": 504, "max": 504}], "limit": 3,
                      "backoffMs": 100},
        })
    );

    // Redirect, rewrite, no matches, a zero timeout.
    let rule = first_rule(
        "
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: URLRewrite
      urlRewrite: {hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /x}}
    timeouts: {request: 0s}",
    );
    assert_eq!(
        rule,
        json!({
            "matches": [],
            "filters": [
                {"requestRedirect": {"scheme": "https", "path": {"replacePrefixMatch": "/v2"},
                                     "statusCode": 301}},
                {"urlRewrite": {"hostname": "example.org", "path": {"replaceFullPath": "/x"}}},
            ],
            // No backendRefs: the parent Service (GAMMA).
            "backends": [{"authority": "web-svc.demo.svc.cluster.local:80", "namespace": "demo",
                          "name": "web-svc", "port": 80, "weight": 1}],
            "timeouts": {},
        })
    );
}

/// Checks that a route with `rules` is refused with a message containing `expected`, or
/// accepted when `expected` is empty.
fn check_validation(rules: &str, expected: &str) {
    let yaml = http_route("demo", "r", "", rules);
    let (objects, errors) = parse_yaml(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let Some(Object::HttpRoute(route)) = objects.into_iter().next() else {
        panic!("an HTTPRoute");
    };
    match (&route.invalid, expected) {
        (None, "") => {}
        (Some(invalid), e) if !e.is_empty() && invalid.message.contains(e) => {}
        (got, _) => panic!("{rules}\nexpected {expected:?}, got {got:?}"),
    }
}

#[test]
fn validates_http_routes() {
    for (rules, expected) in [
        ("[{matches: [{path: {type: RegularExpression, value: '/a/.*'}}]}]", ""),
        (
            "[{matches: [{path: {type: RegularExpression, value: '/a/(['}}]}]",
            "spec.rules[0].matches[0].path.value: invalid regular expression",
        ),
        (
            "[{matches: [{path: {type: Exact, value: a}}]}]",
            "spec.rules[0].matches[0].path.value: \"a\" must start with /",
        ),
        (
            "[{}, {matches: [{headers: [{name: 'x a', value: b}]}]}]",
            "spec.rules[1].matches[0].headers[0].name: \"x a\" is not a valid header name",
        ),
        (
            "[{matches: [{headers: [{type: RegularExpression, name: x, value: '(('}]}]}]",
            "headers[0].value: invalid regular expression",
        ),
        (
            "[{matches: [{queryParams: [{type: RegularExpression, name: q, value: '*'}]}]}]",
            "queryParams[0].value: invalid regular expression",
        ),
        (
            "[{timeouts: {request: 10s, backendRequest: 20s}}]",
            "spec.rules[0].timeouts.backendRequest: 20s is longer than timeouts.request (10s)",
        ),
        ("[{timeouts: {request: 10s, backendRequest: 10s}}]", ""),
        (
            "[{timeouts: {request: 10 seconds}}]",
            "spec.rules[0].timeouts.request: \"10 seconds\" is not a Gateway API duration",
        ),
        (
            "[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]}]",
            "spec.rules[0].filters[0].requestRedirect.statusCode: 307 is not 301 or 302",
        ),
        (
            "[{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, \
             urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]",
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
        ),
        (
            "[{matches: [{path: {value: /a}}], filters: [{type: URLRewrite, \
             urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]",
            "",
        ),
        (
            "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}, percent: 101}}]}]",
            "spec.rules[0].filters[0].requestMirror.percent: 101 is not within 0-100",
        ),
        (
            "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 5, denominator: 4}}}]}]",
            "requestMirror.fraction: 5/4 is not a fraction within 0-1",
        ),
        (
            "[{filters: [{type: CORS}]}]",
            "spec.rules[0].filters[0].type: \"CORS\" is not supported on a HTTPRoute",
        ),
        (
            "[{filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Thing, name: x}}]}]",
            "example.com/Thing is not supported",
        ),
        (
            "[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: 'a:b', value: c}]}}]}]",
            "requestHeaderModifier.add[0].name",
        ),
        (
            "[{backendRefs: [{name: web-v2}]}]",
            "spec.rules[0].backendRefs[0].port: required for a Service",
        ),
        (
            "[{retry: {codes: [200]}}]",
            "spec.rules[0].retry.codes[0]: 200 is not an HTTP error status",
        ),
        (
            "[{matches: [{method: 'GE T'}]}]",
            "spec.rules[0].matches[0].method",
        ),
    ] {
        check_validation(rules, expected);
    }
}

#[test]
fn gateway_durations() {
    for (text, ms) in [
        ("1h30m", Some(5_400_000)),
        ("500ms", Some(500)),
        ("10s", Some(10_000)),
        ("0s", Some(0)),
        ("1h1m1s1ms", Some(3_661_001)),
        ("1h1m1s1ms1h", None),
        ("123456s", None),
        ("1.5s", None),
        ("", None),
        ("10", None),
        ("-1s", None),
    ] {
        let got = parse_gateway_duration(text).ok().map(|d| d.as_millis());
        assert_eq!(got, ms, "{text:?}");
    }
}

#[test]
fn an_invalid_route_is_not_served_and_the_others_are() {
    let index = index(&format!(
        "{}{}",
        http_route(
            "demo",
            "bad",
            "",
            "[{matches: [{path: {type: RegularExpression, value: '(('}}]}]"
        ),
        http_route(
            "demo",
            "good",
            "",
            "[{backendRefs: [{name: web-v2, port: 80}]}]"
        ),
    ));
    assert_eq!(names(&index.outbound_policy(&web(80), None)), ["demo/good"]);
    let reports = index.route_reports();
    let bad = reports.iter().find(|r| r.name == "bad").expect("bad");
    let (reason, message) = bad.parents[0].accepted.clone().expect_err("refused");
    assert_eq!(reason, "UnsupportedValue");
    assert!(
        message.starts_with("spec.rules[0].matches[0].path.value"),
        "{message}"
    );
    let good = reports.iter().find(|r| r.name == "good").expect("good");
    assert_eq!(good.parents[0].accepted, Ok(()));
    assert_eq!(good.parents[0].resolved_refs, Ok(()));
}

#[test]
fn producer_and_consumer_routes() {
    let index = index(&format!(
        "{}{}{}",
        http_route("demo", "producer", "", "[{}]"),
        http_route("client", "consumer", "", "[{}]"),
        http_route("elsewhere", "consumer", "", "[{}]"),
    ));
    // A client in the Service's namespace, or in one without consumer routes: the producer's.
    for ns in [None, Some("demo"), Some("nobody")] {
        assert_eq!(
            names(&index.outbound_policy(&web(80), ns)),
            ["demo/producer"],
            "{ns:?}"
        );
    }
    // A client whose namespace has a consumer route: only its own namespace's.
    assert_eq!(
        names(&index.outbound_policy(&web(80), Some("client"))),
        ["client/consumer"]
    );
    assert_eq!(
        names(&index.outbound_policy(&web(80), Some("elsewhere"))),
        ["elsewhere/consumer"]
    );
    // The route names port 80: the Service's other port has no routes.
    let admin = index.outbound_policy(&web(9000), Some("client"));
    assert!(admin.routes.is_empty());
    assert_eq!(admin.parent.expect("parent").port, 9000);
}

#[test]
fn routes_come_in_tie_break_order() {
    let at = |t: &str| format!(", creationTimestamp: '{t}'");
    let index = index(&format!(
        "{}{}{}{}{}",
        http_route("demo", "no-time", "", "[{}]"),
        http_route("demo", "newer", &at("2024-05-01T00:00:00Z"), "[{}]"),
        http_route("demo", "b-same", &at("2024-01-01T00:00:00Z"), "[{}]"),
        http_route("demo", "a-same", &at("2024-01-01T00:00:00Z"), "[{}]"),
        http_route("demo", "oldest", &at("2023-01-01T00:00:00Z"), "[{}]"),
    ));
    assert_eq!(
        names(&index.outbound_policy(&web(80), None)),
        [
            "demo/oldest",
            "demo/a-same",
            "demo/b-same",
            "demo/newer",
            "demo/no-time"
        ]
    );
}

#[test]
fn targets_without_a_service_port_have_the_default_policy() {
    let index = index(&http_route("demo", "r", "", "[{}]"));
    let by_ip = index.outbound_policy(&Target::Addr("10.96.0.10:80".parse().expect("addr")), None);
    assert_eq!(names(&by_ip), ["demo/r"]);
    for target in [
        Target::Addr("10.244.0.5:8080".parse().expect("addr")),
        Target::External("example.org".into()),
        web(81),
        Target::Service {
            namespace: "demo".into(),
            name: "nope".into(),
            port: 80,
            hostname: None,
        },
    ] {
        assert_eq!(
            index.outbound_policy(&target, None),
            OutboundPolicy::default(),
            "{target:?}"
        );
    }
}

#[test]
fn unresolved_backends_stay_with_an_error() {
    let index = index(&http_route(
        "demo",
        "r",
        "",
        "[{backendRefs: [{name: web-v2, port: 80, weight: 3}, {name: gone, port: 80}, \
          {name: web-v2, port: 81}, {name: other, namespace: client, port: 80}, \
          {group: example.com, kind: Bucket, name: b, port: 1}]}]",
    ));
    let policy = index.outbound_policy(&web(80), None);
    let errors: Vec<Option<&str>> = policy.routes[0].rules[0]
        .backends
        .iter()
        .map(|b| b.error.as_deref())
        .collect();
    assert_eq!(errors[0], None);
    assert_eq!(
        errors[1],
        Some("BackendNotFound: Service demo/gone not found")
    );
    assert_eq!(
        errors[2],
        Some("BackendNotFound: Service demo/web-v2 has no port 81")
    );
    assert!(
        errors[3].is_some_and(|e| e.starts_with("RefNotPermitted: ")),
        "{errors:?}"
    );
    assert!(
        errors[4].is_some_and(|e| e.starts_with("InvalidKind: ")),
        "{errors:?}"
    );
    let report = &index.route_reports()[0];
    assert_eq!(
        report.parents[0].accepted,
        Ok(()),
        "the route is still served"
    );
    let (reason, message) = report.parents[0]
        .resolved_refs
        .clone()
        .expect_err("unresolved");
    assert_eq!(reason, "BackendNotFound");
    assert!(
        message.contains("demo/gone") && message.contains("ReferenceGrant"),
        "{message}"
    );
}

#[test]
fn extension_ref_faults() {
    let rules = "[{filters: [{type: ExtensionRef, extensionRef: {group: policy.mesh.io, kind: HTTPFault, name: flaky}}]}]";
    // Missing: the filter is not skipped, every request is answered 500.
    let index1 = index(&http_route("demo", "r", "", rules));
    let policy = index1.outbound_policy(&web(80), None);
    assert_eq!(
        policy.routes[0].rules[0].filters,
        [Filter::Fault(failing_fault("flaky"))]
    );
    let report = &index1.route_reports()[0];
    assert!(
        matches!(&report.parents[0].resolved_refs, Err((_, m)) if m == "HTTPFault demo/flaky not found"),
        "{report:?}"
    );
    // Present: inlined.
    let fault = "---
apiVersion: policy.mesh.io/v1alpha1
kind: HTTPFault
metadata: {name: flaky, namespace: demo}
spec:
  delay: {duration: 100ms, percent: 50}
  abort: {grpcStatus: 14, percent: 10}
";
    let index2 = index(&format!("{}{fault}", http_route("demo", "r", "", rules)));
    let policy = index2.outbound_policy(&web(80), None);
    assert_eq!(
        serde_json::to_value(&policy.routes[0].rules[0].filters).expect("json"),
        json!([{"fault": {"name": "flaky", "delay": {"durationMs": 100, "percent": 50.0},
                          "abort": {"grpcStatus": 14, "percent": 10.0}}}])
    );
    assert_eq!(index2.route_reports()[0].parents[0].resolved_refs, Ok(()));
}

#[test]
fn grpc_method_matches() {
    fn check(method: &str, expected: Option<PathMatch>) {
        let yaml = format!(
            "
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: GRPCRoute
metadata: {{name: g, namespace: demo}}
spec:
  parentRefs: [{{group: core, kind: Service, name: web-svc}}]
  rules: [{{matches: [{{method: {method}}}]}}]
"
        );
        let index = index(&yaml);
        let policy = index.outbound_policy(&web(9000), None);
        let got = policy
            .routes
            .first()
            .map(|r| r.rules[0].matches[0].path.clone().expect("a path"));
        assert_eq!(got, expected, "{method}");
    }
    use PathMatch::*;
    check(
        "{service: demo.Voting, method: Results}",
        Some(Exact("/demo.Voting/Results".into())),
    );
    check(
        "{service: demo.Voting}",
        Some(PathPrefix("/demo.Voting".into())),
    );
    check(
        "{method: Results.V2}",
        Some(RegularExpression("/[^/]+/Results\\.V2".into())),
    );
    check(
        "{type: RegularExpression, service: 'demo\\.(Voting|Emoji)'}",
        Some(RegularExpression("/(demo\\.(Voting|Emoji))/([^/]+)".into())),
    );
    check(
        "{type: RegularExpression, method: 'Vote.*'}",
        Some(RegularExpression("/([^/]+)/(Vote.*)".into())),
    );
    // Refused: nothing to match, a slash, a bad pattern.
    check("{}", None);
    check("{service: a/b}", None);
    check("{type: RegularExpression, method: '(('}", None);
}

#[test]
fn retry_annotations_on_routes_and_services() {
    let service = "---
apiVersion: v1
kind: Service
metadata:
  name: web-svc
  namespace: demo
  annotations:
    retry.mesh.io/http: 5xx
    retry.mesh.io/limit: '2'
    retry.mesh.io/budget-ratio: '0.5'
    retry.mesh.io/budget-min-rps: lots
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
";
    let route_ann = ", annotations: {retry.mesh.io/grpc: 'unavailable, cancelled', retry.mesh.io/timeout: 300ms}";
    let index = index(&format!(
        "{service}{}{}",
        http_route(
            "demo",
            "annotated",
            route_ann,
            "[{}, {retry: {codes: [502]}}]"
        ),
        http_route("demo", "plain", "", "[{}]"),
    ));
    let policy = index.outbound_policy(&web(80), None);
    let from_service = Retry {
        http: vec![StatusRange { min: 500, max: 599 }],
        limit: 2,
        ..Retry::default()
    };
    assert_eq!(policy.retry.as_ref(), Some(&from_service));
    assert_eq!(
        policy.retry_budget,
        RetryBudget {
            ratio: 0.5,
            ..RetryBudget::default()
        },
        "the invalid min-rps is ignored"
    );
    let annotated = &policy
        .routes
        .iter()
        .find(|r| r.name == "annotated")
        .expect("route");
    assert_eq!(
        annotated.rules[0].retry,
        Some(Retry {
            grpc: vec![14, 1],
            limit: 1,
            timeout_ms: Some(300),
            ..Retry::default()
        }),
        "the route's annotations, the default limit"
    );
    assert_eq!(
        annotated.rules[1].retry,
        Some(Retry {
            http: vec![StatusRange { min: 502, max: 502 }],
            limit: 1,
            ..Retry::default()
        }),
        "a rule's own retry field wins"
    );
    let plain = &policy
        .routes
        .iter()
        .find(|r| r.name == "plain")
        .expect("route");
    assert_eq!(plain.rules[0].retry.as_ref(), Some(&from_service));

    // The invalid ones are reported, named.
    let (objects, _) = parse_yaml(service);
    assert_eq!(
        objects[0].warnings(),
        ["annotation retry.mesh.io/budget-min-rps: \"lots\" is not a count; ignored"]
    );
    for (annotations, expected) in [
        ("{retry.mesh.io/http: 6xx}", "retry.mesh.io/http"),
        (
            "{retry.mesh.io/grpc: 'ok'}",
            "retry.mesh.io/grpc: \"ok\" is not one of",
        ),
        ("{retry.mesh.io/limit: '-1'}", "retry.mesh.io/limit"),
        ("{retry.mesh.io/timeout: soon}", "retry.mesh.io/timeout"),
        (
            "{retry.mesh.io/budget-ratio: NaN}",
            "retry.mesh.io/budget-ratio",
        ),
        (
            "{retry.mesh.io/budget-ratio: '-0.1'}",
            "retry.mesh.io/budget-ratio",
        ),
    ] {
        let map: BTreeMap<String, String> = serde_yaml_ng::from_str(annotations).expect("yaml");
        let errors = service_annotation_errors(Some(&map));
        assert!(
            errors.len() == 1 && errors[0].to_string().contains(expected),
            "{annotations}: {errors:?}"
        );
    }
    // Invalid everywhere: the defaults, never a broken policy.
    let bad: BTreeMap<String, String> =
        serde_yaml_ng::from_str("{retry.mesh.io/http: nope, retry.mesh.io/budget-ratio: inf}")
            .expect("yaml");
    assert_eq!(retry_annotations(Some(&bad)).0, None);
    assert_eq!(budget_annotations(Some(&bad)).0, RetryBudget::default());
}

#[test]
fn status_merges_with_other_controllers() {
    let index = index(&format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: gw, namespace: demo, generation: 3}}
spec:
  parentRefs: [{{name: my-gateway}}, {{group: '', kind: Service, name: web-svc, port: 80}}]
  rules: [{{backendRefs: [{{name: gone, port: 80}}]}}]
status:
  parents:
  - parentRef: {{name: my-gateway}}
    controllerName: example.com/gateway
    conditions: [{{type: Accepted, status: 'True', reason: Accepted, message: '',
                  lastTransitionTime: '2024-01-01T00:00:00Z'}}]
",
        http_route("demo", "unrelated", "", "[{}]").replace("kind: Service", "kind: Gateway")
    ));
    let reports = index.route_reports();
    assert_eq!(
        reports.len(),
        1,
        "a route without Service parents is not ours"
    );
    let report = &reports[0];
    let t1 = Time("2025-01-01T00:00:00Z".parse().expect("time"));
    let status = merge_status(
        report.current.as_ref(),
        &report.parents,
        report.generation,
        &t1,
    )
    .expect("a change");
    let value = serde_json::to_value(&status).expect("json");
    assert_eq!(value["parents"][0]["controllerName"], "example.com/gateway");
    assert_eq!(
        value["parents"][1],
        json!({
            "parentRef": {"group": "", "kind": "Service", "name": "web-svc", "port": 80},
            "controllerName": "mesh.io/destination-controller",
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                 "observedGeneration": 3, "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                 "message": "Service demo/gone not found", "observedGeneration": 3,
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
        })
    );
    // Written: nothing more to write, whatever the time.
    let t2 = Time("2025-02-01T00:00:00Z".parse().expect("time"));
    assert_eq!(
        merge_status(Some(&status), &report.parents, report.generation, &t2),
        None
    );
    // The backend appears: ResolvedRefs flips and moves its time; Accepted keeps its own.
    let mut parents = report.parents.clone();
    parents[0].resolved_refs = Ok(());
    let next = merge_status(Some(&status), &parents, report.generation, &t2).expect("a change");
    let conditions = &next.parents[1].conditions;
    assert_eq!(conditions[0].last_transition_time, t1);
    assert_eq!(conditions[1].last_transition_time, t2);
    assert_eq!(conditions[1].status, "True");
}

#[test]
fn a_rule_without_backends_goes_to_the_parent_service() {
    let index = index(&http_route(
        "demo",
        "timeout-only",
        "",
        "[{timeouts: {request: 1s}}, {backendRefs: [{name: web-v2, port: 80, weight: 3}]}]",
    ));
    let policy = index.outbound_policy(&web(80), None);
    let rules = &policy.routes[0].rules;
    assert_eq!(rules[0].backends.len(), 1);
    let parent = &rules[0].backends[0];
    assert_eq!(
        (
            parent.authority.as_str(),
            parent.name.as_str(),
            parent.weight
        ),
        ("web-svc.demo.svc.cluster.local:80", "web-svc", 1)
    );
    assert!(parent.error.is_none());
    assert_eq!(rules[1].backends[0].name, "web-v2", "named backends stay");
}
