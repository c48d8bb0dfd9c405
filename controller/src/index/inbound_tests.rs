//! Data-driven tests of the inbound policy resources: validation, and the inbound policy of a
//! pod's port (server selection, authorizations, routes, rate limits, updates).

use super::tests::{http_route_on, index_of};
use super::*;
use crate::source::folder::parse_yaml;
use mesh_api::inbound::{Access, InboundPolicy, Requirement};

/// The pods every case starts with: `web-0` (`app: web, tier: front`, ports `http` 8080 and
/// `admin` 9000) and `api-0` (`app: api`, port `http` 8081), in `demo`.
const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web, tier: front}}
spec:
  containers:
  - {name: web, ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: demo, labels: {app: api}}
spec: {containers: [{name: api, ports: [{name: http, containerPort: 8081}]}]}
";

/// The identity suffix, shortened to `.sa` in renderings.
const SA: &str = ".serviceaccount.identity.mesh.cluster.local";

/// An index of [`PODS`] and `yaml`, whose documents must all decode.
fn index(yaml: &str) -> Index {
    index_of([PODS, yaml])
}

/// A `policy.mesh.io/v1alpha1` object of `kind` in `demo` with `spec` (YAML flow) and extra
/// metadata.
fn obj(kind: &str, name: &str, meta: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: policy.mesh.io/v1alpha1\nkind: {kind}\n\
         metadata: {{name: {name}, namespace: demo{meta}}}\nspec: {spec}\n"
    )
}

fn server(name: &str, spec: &str) -> String {
    obj("Server", name, "", spec)
}

/// An AuthorizationPolicy on `target` (flow) requiring `refs` (flow list).
fn authz(name: &str, target: &str, refs: &str) -> String {
    obj(
        "AuthorizationPolicy",
        name,
        "",
        &format!("{{targetRef: {target}, requiredAuthenticationRefs: {refs}}}"),
    )
}

const TO_WEB: &str = "{group: policy.mesh.io, kind: Server, name: web-http}";
const WEB_HTTP: &str = "{podSelector: {matchLabels: {app: web}}, port: http}";

/// A reference to the authentication `name` of `kind`.
fn authn(kind: &str, name: &str) -> String {
    format!("{{group: policy.mesh.io, kind: {kind}, name: {name}}}")
}

/// An HTTPRoute `name` in `ns` whose parent is the Server `web-http`, with one path prefix.
fn route(ns: &str, name: &str, meta: &str, prefix: &str) -> String {
    let rules = format!("[{{matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]}}]");
    http_route_on(ns, name, meta, &format!("[{TO_WEB}]"), &rules)
}

/// A policy as short lines: `none` (no server), or the server, its authorizations, routes and
/// rate limit; identities end in `.sa`.
fn render(p: &InboundPolicy) -> String {
    let Some(server) = &p.server else {
        assert_eq!(*p, InboundPolicy::default());
        return "none".into();
    };
    let word = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut lines = vec![format!(
        "server {} {} {}",
        server.name,
        word(serde_json::to_value(p.protocol).expect("json")),
        word(serde_json::to_value(p.access).expect("json")),
    )];
    let authz = |a: &mesh_api::inbound::Authorization| {
        assert_eq!(
            (a.kind.as_str(), a.namespace.as_str()),
            ("AuthorizationPolicy", "demo")
        );
        let requires: Vec<String> = a
            .requires
            .iter()
            .map(|r| match r {
                Requirement::MeshTls { identities } => format!("mtls[{}]", identities.join(",")),
                Requirement::Network { networks } => format!(
                    "net[{}]",
                    networks
                        .iter()
                        .map(|n| {
                            let except: Vec<String> =
                                n.except.iter().map(|e| format!(" -{e}")).collect();
                            format!("{}{}", n.cidr, except.concat())
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            })
            .collect();
        let requires = if requires.is_empty() {
            "anyone".to_owned()
        } else {
            requires.join(" + ")
        };
        format!("authz {}: {requires}", a.name)
    };
    lines.extend(p.authorizations.iter().map(authz));
    for r in &p.routes {
        let matches: Vec<String> = r
            .route
            .rules
            .iter()
            .flat_map(|rule| &rule.matches)
            .map(|m| serde_json::to_string(&m.path).expect("json"))
            .collect();
        lines.push(format!("route {} {}", r.route.name, matches.join(" ")));
        lines.extend(r.authorizations.iter().map(|a| format!("  {}", authz(a))));
    }
    if let Some(l) = &p.rate_limit {
        let overrides: Vec<String> = l
            .overrides
            .iter()
            .map(|o| format!(" {}:[{}]", o.requests_per_second, o.identities.join(",")))
            .collect();
        lines.push(format!(
            "limit {} total={:?} identity={:?}{}",
            l.name,
            l.total,
            l.identity,
            overrides.concat()
        ));
    }
    lines.join("\n").replace(SA, ".sa")
}

/// Checks the inbound policy of `pod` (in `demo`) port `port` over [`PODS`] and `yaml`.
fn check(yaml: &str, pod: &str, port: u16, expected: &str) {
    let index = index(yaml);
    let got = render(&index.inbound_policy("demo", pod, port));
    assert_eq!(got, expected.trim(), "\n{yaml}");
}

#[test]
fn no_server_no_pod() {
    check("", "web-0", 8080, "none");
    check(&server("web-http", WEB_HTTP), "nope", 8080, "none");
    check(&server("web-http", WEB_HTTP), "web-0", 9000, "none");
    // A Server of another namespace does not select the pod.
    check(
        &server("web-http", WEB_HTTP).replace("namespace: demo", "namespace: other"),
        "web-0",
        8080,
        "none",
    );
}

#[test]
fn selects_by_labels_and_expressions() {
    for (selector, web, api) in [
        ("{matchLabels: {app: web}}", true, false),
        ("{matchLabels: {app: web, tier: back}}", false, false),
        ("{}", true, true),
        (
            "{matchExpressions: [{key: app, operator: In, values: [web, api]}]}",
            true,
            true,
        ),
        (
            "{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}",
            false,
            true,
        ),
        // NotIn holds for a pod without the label.
        (
            "{matchExpressions: [{key: tier, operator: NotIn, values: [back]}]}",
            true,
            true,
        ),
        (
            "{matchExpressions: [{key: tier, operator: Exists}]}",
            true,
            false,
        ),
        (
            "{matchExpressions: [{key: tier, operator: DoesNotExist}]}",
            false,
            true,
        ),
        (
            "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: DoesNotExist}]}",
            false,
            false,
        ),
    ] {
        let yaml = server("s", &format!("{{podSelector: {selector}, port: http}}"));
        let index = index(&yaml);
        let selected = |pod: &str, port: u16| index.inbound_policy("demo", pod, port).server;
        assert_eq!(selected("web-0", 8080).is_some(), web, "web-0: {selector}");
        assert_eq!(selected("api-0", 8081).is_some(), api, "api-0: {selector}");
    }
}

#[test]
fn port_by_number_or_container_port_name() {
    let web = |port: &str| server("web-http", &format!("{{podSelector: {{}}, port: {port}}}"));
    check(&web("http"), "web-0", 8080, "server web-http unknown deny");
    // The name is resolved per pod: api-0 calls its 8081 `http`.
    check(&web("http"), "api-0", 8081, "server web-http unknown deny");
    check(&web("http"), "api-0", 8080, "none");
    check(&web("admin"), "web-0", 9000, "server web-http unknown deny");
    check(&web("grpc"), "web-0", 8080, "none");
    check(&web("8080"), "web-0", 8080, "server web-http unknown deny");
    check(
        &web("'8080'"),
        "web-0",
        8080,
        "server web-http unknown deny",
    );
    // A number need not be a declared container port.
    check(&web("7000"), "web-0", 7000, "server web-http unknown deny");
}

#[test]
fn protocol_and_access() {
    for (spec, expected) in [
        ("proxyProtocol: HTTP/1", "server s HTTP/1 deny"),
        (
            "proxyProtocol: HTTP/2, accessPolicy: audit",
            "server s HTTP/2 audit",
        ),
        (
            "proxyProtocol: gRPC, accessPolicy: deny",
            "server s gRPC deny",
        ),
        ("proxyProtocol: opaque", "server s opaque deny"),
        ("proxyProtocol: TLS", "server s TLS deny"),
        ("proxyProtocol: unknown", "server s unknown deny"),
    ] {
        let yaml = server("s", &format!("{{podSelector: {{}}, port: http, {spec}}}"));
        check(&yaml, "web-0", 8080, expected);
    }
}

#[test]
fn oldest_server_wins() {
    let at = |t: &str| format!(", creationTimestamp: '{t}'");
    let yaml = [
        obj("Server", "b-new", &at("2024-02-01T00:00:00Z"), WEB_HTTP),
        obj("Server", "c-old", &at("2024-01-01T00:00:00Z"), WEB_HTTP),
        obj("Server", "a-none", "", WEB_HTTP),
    ]
    .concat();
    check(&yaml, "web-0", 8080, "server c-old unknown deny");
    let (_, warnings) = index(&yaml).inbound("demo", "web-0", 8080);
    assert_eq!(
        warnings,
        [
            "Servers c-old, b-new, a-none of namespace demo all select port 8080 of pod web-0: \
          the oldest, c-old, is served"
        ]
    );
    // Without creation times: by name.
    let yaml = [server("b", WEB_HTTP), server("a", WEB_HTTP)].concat();
    check(&yaml, "web-0", 8080, "server a unknown deny");
    // An invalid Server takes no part.
    let yaml = [
        server("b", WEB_HTTP),
        server(
            "a",
            "{podSelector: {matchLabels: {app: web}}, port: http, proxyProtocol: h3}",
        ),
    ]
    .concat();
    check(&yaml, "web-0", 8080, "server b unknown deny");
}

#[test]
fn authorizations_of_the_server_and_the_namespace() {
    let yaml = [
        server("web-http", WEB_HTTP),
        server(
            "api-http",
            "{podSelector: {matchLabels: {app: api}}, port: http}",
        ),
        obj(
            "MeshTLSAuthentication",
            "clients",
            "",
            "{identities: ['*']}",
        ),
        authz(
            "a-web",
            TO_WEB,
            &format!("[{}]", authn("MeshTLSAuthentication", "clients")),
        ),
        authz(
            "b-api",
            "{group: policy.mesh.io, kind: Server, name: api-http}",
            "[]",
        ),
        authz("c-ns", "{kind: Namespace, name: demo}", "[]"),
        authz(
            "d-ns-core",
            "{group: core, kind: Namespace, name: demo}",
            "[]",
        ),
        // Another namespace's policy never applies.
        authz("e-other", TO_WEB, "[]").replace("namespace: demo", "namespace: other"),
    ]
    .concat();
    check(
        &yaml,
        "web-0",
        8080,
        "
server web-http unknown deny
authz a-web: mtls[*]
authz c-ns: anyone
authz d-ns-core: anyone",
    );
    check(
        &yaml,
        "api-0",
        8081,
        "
server api-http unknown deny
authz b-api: anyone
authz c-ns: anyone
authz d-ns-core: anyone",
    );
}

#[test]
fn mesh_tls_identities_and_refs() {
    for (spec, expected) in [
        ("{identities: ['*']}", "mtls[*]"),
        (
            "{identities: ['*.demo.serviceaccount.identity.mesh.cluster.local', 'Web.Demo.x']}",
            "mtls[*.demo.sa,web.demo.x]",
        ),
        (
            "{identityRefs: [{kind: ServiceAccount, name: web}]}",
            "mtls[web.demo.sa]",
        ),
        (
            "{identityRefs: [{kind: ServiceAccount, name: bot, namespace: load}, \
              {kind: Namespace, name: ops}]}",
            "mtls[bot.load.sa,*.ops.sa]",
        ),
        (
            "{identities: [a.b], identityRefs: [{group: '', kind: ServiceAccount, name: web}]}",
            "mtls[a.b,web.demo.sa]",
        ),
    ] {
        let yaml = [
            server("web-http", WEB_HTTP),
            obj("MeshTLSAuthentication", "m", "", spec),
            authz(
                "a",
                TO_WEB,
                &format!("[{}]", authn("MeshTLSAuthentication", "m")),
            ),
        ]
        .concat();
        check(
            &yaml,
            "web-0",
            8080,
            &format!("server web-http unknown deny\nauthz a: {expected}"),
        );
    }
}

#[test]
fn all_required_authentications_must_hold() {
    let yaml = [
        server("web-http", WEB_HTTP),
        obj("MeshTLSAuthentication", "m", "", "{identities: ['*']}"),
        obj(
            "NetworkAuthentication",
            "n",
            "",
            "{networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4]}, {cidr: 'fd00::/8'}]}",
        ),
        // In another namespace, named explicitly.
        obj(
            "NetworkAuthentication",
            "lan",
            "",
            "{networks: [{cidr: 192.168.0.0/16}]}",
        )
        .replace("namespace: demo", "namespace: shared"),
        authz(
            "a",
            TO_WEB,
            &format!(
                "[{}, {}, {{group: policy.mesh.io, kind: NetworkAuthentication, name: lan, \
                 namespace: shared}}, {{kind: ServiceAccount, name: web}}]",
                authn("MeshTLSAuthentication", "m"),
                authn("NetworkAuthentication", "n"),
            ),
        ),
    ]
    .concat();
    check(
        &yaml,
        "web-0",
        8080,
        "
server web-http unknown deny
authz a: mtls[*] + net[10.0.0.0/8 -10.1.0.0/16 -10.2.3.4/32,fd00::/8] + net[192.168.0.0/16] + \
mtls[web.demo.sa]",
    );
}

#[test]
fn a_missing_or_invalid_authentication_authorizes_nothing() {
    let yaml = [
        server("web-http", WEB_HTTP),
        obj("MeshTLSAuthentication", "ok", "", "{identities: ['*']}"),
        obj("MeshTLSAuthentication", "bad", "", "{identities: ['a.*']}"),
        authz(
            "a-ok",
            TO_WEB,
            &format!("[{}]", authn("MeshTLSAuthentication", "ok")),
        ),
        authz(
            "b-missing",
            TO_WEB,
            &format!(
                "[{}, {}]",
                authn("MeshTLSAuthentication", "ok"),
                authn("NetworkAuthentication", "gone")
            ),
        ),
        authz(
            "c-bad",
            TO_WEB,
            &format!("[{}]", authn("MeshTLSAuthentication", "bad")),
        ),
    ]
    .concat();
    check(
        &yaml,
        "web-0",
        8080,
        "server web-http unknown deny\nauthz a-ok: mtls[*]",
    );
    assert_eq!(
        index(&yaml).inbound_warnings(),
        [
            "AuthorizationPolicy demo/b-missing authorizes nothing: NetworkAuthentication \
             demo/gone not found",
            "AuthorizationPolicy demo/c-bad authorizes nothing: MeshTLSAuthentication demo/bad \
             is invalid: spec.identities[0]: \"a.*\" is not an identity: use a name, `*` or \
             `*.suffix`",
        ]
    );
}

#[test]
fn routes_of_the_server_and_their_authorizations() {
    let at = |t: &str| format!(", creationTimestamp: '{t}'");
    let yaml = [
        server("web-http", WEB_HTTP),
        route("demo", "b-new", &at("2024-02-01T00:00:00Z"), "/api"),
        route("demo", "a-old", &at("2024-01-01T00:00:00Z"), "/"),
        // Not served: another namespace's, an invalid one, one of a Service.
        route("other", "c", "", "/x"),
        route("demo", "d-invalid", "", "relative"),
        route("demo", "e-service", "", "/svc").replace(
            "{group: policy.mesh.io, kind: Server, name: web-http}",
            "{group: '', kind: Service, name: web-svc}",
        ),
        // A GRPCRoute of the Server.
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: f-grpc, namespace: demo}
spec:
  parentRefs: [{group: policy.mesh.io, kind: Server, name: web-http, namespace: demo}]
  rules: [{matches: [{method: {service: demo.Voting}}]}]
"
        .to_owned(),
        authz(
            "on-api",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: b-new}",
            "[{kind: ServiceAccount, name: web}]",
        ),
        authz(
            "on-grpc",
            "{group: gateway.networking.k8s.io, kind: GRPCRoute, name: f-grpc}",
            "[]",
        ),
        // A route that is not the Server's: no effect.
        authz(
            "on-svc",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: e-service}",
            "[]",
        ),
    ]
    .concat();
    check(
        &yaml,
        "web-0",
        8080,
        r#"
server web-http unknown deny
route a-old {"type":"PathPrefix","value":"/"}
route b-new {"type":"PathPrefix","value":"/api"}
  authz on-api: mtls[web.demo.sa]
route f-grpc {"type":"PathPrefix","value":"/demo.Voting"}
  authz on-grpc: anyone"#,
    );
    // Only matches: no backends, filters, timeouts or retries.
    let policy = index(&yaml).inbound_policy("demo", "web-0", 8080);
    let rule = &policy.routes[0].route.rules[0];
    assert!(rule.backends.is_empty() && rule.filters.is_empty() && rule.retry.is_none());
    assert_eq!(
        policy.routes[2].route.kind,
        mesh_api::policy::RouteKind::Grpc
    );
}

#[test]
fn rate_limits() {
    let at = |t: &str| format!(", creationTimestamp: '{t}'");
    let limit = |name: &str, meta: &str, spec: &str| {
        obj(
            "HTTPLocalRateLimitPolicy",
            name,
            meta,
            &format!("{{targetRef: {TO_WEB}, {spec}}}"),
        )
    };
    let yaml = [
        server("web-http", WEB_HTTP),
        limit(
            "rl",
            &at("2024-01-01T00:00:00Z"),
            "total: {requestsPerSecond: 100}, identity: {requestsPerSecond: 10}, overrides: \
             [{requestsPerSecond: 50, clientRefs: [{kind: ServiceAccount, name: web}, \
             {kind: ServiceAccount, name: bot, namespace: load}]}]",
        ),
        limit(
            "newer",
            &at("2024-02-01T00:00:00Z"),
            "total: {requestsPerSecond: 1}",
        ),
        // Another Server's.
        obj(
            "HTTPLocalRateLimitPolicy",
            "api",
            "",
            "{targetRef: {group: policy.mesh.io, kind: Server, name: api-http}, \
             total: {requestsPerSecond: 5}}",
        ),
    ]
    .concat();
    check(
        &yaml,
        "web-0",
        8080,
        "
server web-http unknown deny
limit rl total=Some(100) identity=Some(10) 50:[web.demo.sa,bot.load.sa]",
    );
    let (_, warnings) = index(&yaml).inbound("demo", "web-0", 8080);
    assert_eq!(
        warnings,
        ["HTTPLocalRateLimitPolicies rl, newer all target Server demo/web-http: the oldest, rl, \
          is served"]
    );
    let only_identity = [
        server("web-http", WEB_HTTP),
        limit("id", "", "identity: {requestsPerSecond: 7}"),
    ]
    .concat();
    check(
        &only_identity,
        "web-0",
        8080,
        "server web-http unknown deny\nlimit id total=None identity=Some(7)",
    );
}

/// Checks that the object in `yaml` decodes but is refused with a message containing
/// `expected`, or is accepted when `expected` is empty.
fn check_validation(yaml: &str, expected: &str) {
    let (objects, errors) = parse_yaml(yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let [object] = objects.as_slice() else {
        panic!("one object: {yaml}");
    };
    let warnings = object.warnings();
    match (warnings.as_slice(), expected) {
        ([], "") => {}
        ([w], e) if !e.is_empty() && w.contains(e) => {}
        (got, _) => panic!("{yaml}\nexpected {expected:?}, got {got:?}"),
    }
}

#[test]
fn validation() {
    let srv = |spec: &str| server("s", spec);
    let authz_to = |target: &str, refs: &str| authz("a", target, refs);
    let mtls = |spec: &str| obj("MeshTLSAuthentication", "m", "", spec);
    let net = |spec: &str| obj("NetworkAuthentication", "n", "", spec);
    let limit = |spec: &str| obj("HTTPLocalRateLimitPolicy", "l", "", spec);
    for (yaml, expected) in [
        (srv(WEB_HTTP), ""),
        (
            srv("{port: http}"),
            "the Server is not served: spec.podSelector: required",
        ),
        (srv("{podSelector: {}}"), "spec.port: required"),
        (srv("{podSelector: {}, port: 0}"), "spec.port: 0 is not within 1-65535"),
        (srv("{podSelector: {}, port: 70000}"), "spec.port: 70000 is not within 1-65535"),
        (
            srv("{podSelector: {}, port: HTTP}"),
            "spec.port: \"HTTP\" is not a port number or a container port name",
        ),
        (
            srv("{podSelector: {}, port: 80, proxyProtocol: http}"),
            "spec.proxyProtocol: \"http\" is not one of unknown, HTTP/1",
        ),
        (
            srv("{podSelector: {}, port: 80, accessPolicy: all-unauthenticated}"),
            "spec.accessPolicy: \"all-unauthenticated\" is not deny or audit",
        ),
        (
            srv("{podSelector: {matchExpressions: [{key: a, operator: In}]}, port: 80}"),
            "spec.podSelector.matchExpressions[0].values: required with operator In",
        ),
        (
            srv("{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}, port: 80}"),
            "values: must be empty with operator Exists",
        ),
        (
            srv("{podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}, port: 80}"),
            "operator: \"Gt\" is not In, NotIn, Exists or DoesNotExist",
        ),
        (authz_to(TO_WEB, "[]"), ""),
        (
            authz_to("{kind: Namespace, name: other}", "[]"),
            "spec.targetRef.name: a policy can only target its own Namespace, demo",
        ),
        (
            authz_to("{group: '', kind: Service, name: web}", "[]"),
            "spec.targetRef: kind \"Service\" is not supported",
        ),
        (
            authz_to("{group: policy.mesh.io, kind: Server, name: s, namespace: other}", "[]"),
            "spec.targetRef.namespace: a policy targets objects of its own namespace, demo",
        ),
        (
            authz_to(TO_WEB, "[{group: policy.mesh.io, kind: Secret, name: x}]"),
            "spec.requiredAuthenticationRefs[0]: policy.mesh.io/Secret is not supported",
        ),
        (
            authz_to(TO_WEB, "[{kind: MeshTLSAuthentication, name: x}]"),
            "spec.requiredAuthenticationRefs[0]: kind \"MeshTLSAuthentication\" is not supported",
        ),
        (mtls("{identities: ['*.demo']}"), ""),
        (
            mtls("{}"),
            "the MeshTLSAuthentication cannot be used (the AuthorizationPolicies that require \
             it authorize nothing): spec: one of identities and identityRefs is required",
        ),
        (mtls("{identities: ['web demo']}"), "spec.identities[0]: \"web demo\" is not an identity"),
        (
            mtls("{identityRefs: [{kind: Pod, name: web}]}"),
            "spec.identityRefs[0]: kind \"Pod\" is not supported",
        ),
        (
            mtls("{identityRefs: [{kind: ServiceAccount, name: Web}]}"),
            "spec.identityRefs[0].name: \"Web\" is not a DNS label",
        ),
        (net("{networks: [{cidr: 10.0.0.0/8, except: ['10.1.0.0/16']}]}"), ""),
        (net("{networks: []}"), "spec.networks: at least one network is required"),
        (net("{networks: [{cidr: 10.0.0.0/33}]}"), "spec.networks[0].cidr: \"10.0.0.0/33\" is not a network"),
        (
            net("{networks: [{cidr: 10.0.0.0/8, except: [x]}]}"),
            "spec.networks[0].except[0]: \"x\" is not a network",
        ),
        (limit(&format!("{{targetRef: {TO_WEB}}}")), ""),
        (
            limit("{targetRef: {group: '', kind: Service, name: web}}"),
            "spec.targetRef: kind \"Service\" \"web\" is not supported: use a policy.mesh.io/Server",
        ),
        (
            limit(&format!("{{targetRef: {TO_WEB}, total: {{requestsPerSecond: 0}}}}")),
            "spec.total.requestsPerSecond: 0 is not within 1-",
        ),
        (
            limit(&format!(
                "{{targetRef: {TO_WEB}, total: {{requestsPerSecond: 10}}, identity: {{requestsPerSecond: 20}}}}"
            )),
            "spec.identity.requestsPerSecond: 20 is more than total.requestsPerSecond (10)",
        ),
        (
            limit(&format!(
                "{{targetRef: {TO_WEB}, total: {{requestsPerSecond: 10}}, overrides: [{{requestsPerSecond: 20, clientRefs: [{{kind: ServiceAccount, name: a}}]}}]}}"
            )),
            "spec.overrides[0].requestsPerSecond: 20 is more than total.requestsPerSecond (10)",
        ),
        (
            limit(&format!(
                "{{targetRef: {TO_WEB}, overrides: [{{requestsPerSecond: 5, clientRefs: []}}]}}"
            )),
            "spec.overrides[0].clientRefs: at least one is required",
        ),
        (
            limit(&format!(
                "{{targetRef: {TO_WEB}, overrides: [{{requestsPerSecond: 5, clientRefs: [{{kind: Namespace, name: a}}]}}]}}"
            )),
            "spec.overrides[0].clientRefs[0]: kind \"Namespace\" is not supported: use ServiceAccount",
        ),
    ] {
        check_validation(&yaml, expected);
    }
}

#[test]
fn wrong_api_version_is_an_error() {
    let yaml = server("s", WEB_HTTP).replace("policy.mesh.io/v1alpha1", "policy.mesh.io/v1beta3");
    let (objects, errors) = parse_yaml(&yaml);
    assert!(objects.is_empty());
    let message = errors[0].to_string();
    assert!(
        message.contains(
            "apiVersion \"policy.mesh.io/v1beta3\" is not supported (use policy.mesh.io/v1alpha1)"
        ),
        "{message}"
    );
}

#[test]
fn updates_change_the_policy_version_and_the_pod_stamp() {
    let mut index = index("");
    let v0 = index.policy_version();
    let stamp = index.pod_stamp("demo", "web-0");
    assert!(stamp.is_some());
    assert_eq!(index.pod_stamp("demo", "nope"), None);
    let apply = |index: &mut Index, yaml: &str| {
        let (objects, errors) = parse_yaml(yaml);
        assert!(errors.is_empty(), "{errors:?}");
        objects.into_iter().for_each(|o| index.apply(o));
    };

    // Each inbound policy kind moves the policy version.
    for yaml in [
        server("web-http", WEB_HTTP),
        authz("a", TO_WEB, "[]"),
        obj("MeshTLSAuthentication", "m", "", "{identities: ['*']}"),
        obj(
            "NetworkAuthentication",
            "n",
            "",
            "{networks: [{cidr: 10.0.0.0/8}]}",
        ),
        obj(
            "HTTPLocalRateLimitPolicy",
            "l",
            "",
            &format!("{{targetRef: {TO_WEB}}}"),
        ),
    ] {
        let before = index.policy_version();
        apply(&mut index, &yaml);
        assert!(index.policy_version() > before, "{yaml}");
    }
    assert_eq!(
        render(&index.inbound_policy("demo", "web-0", 8080)),
        "server web-http unknown deny\nauthz a: anyone\nlimit l total=None identity=None"
    );
    assert!(index.policy_version() > v0);

    // A pod's change moves its stamp, not the policy version; relabelled, it leaves the Server.
    let v1 = index.policy_version();
    apply(&mut index, &PODS.replace("app: web,", "app: other,"));
    assert_eq!(index.policy_version(), v1);
    assert_ne!(index.pod_stamp("demo", "web-0"), stamp);
    assert_eq!(render(&index.inbound_policy("demo", "web-0", 8080)), "none");

    // Deleting a kind moves the version; deleting what is not there does not.
    for kind in [
        Kind::Server,
        Kind::AuthorizationPolicy,
        Kind::MeshTlsAuthentication,
        Kind::NetworkAuthentication,
        Kind::HttpLocalRateLimitPolicy,
    ] {
        let keys = index.keys(kind);
        assert_eq!(keys.len(), 1, "{kind:?}");
        let before = index.policy_version();
        index.delete(&keys[0]);
        assert!(index.policy_version() > before, "{kind:?}");
        index.delete(&keys[0]);
        assert_eq!(index.policy_version(), before + 1, "{kind:?}");
    }
    index.delete(&ObjectKey {
        kind: Kind::Pod,
        namespace: "demo".into(),
        name: "web-0".into(),
    });
    assert_eq!(index.pod_stamp("demo", "web-0"), None);

    // A reset keeps stamps unique: the pod comes back with a stamp never seen.
    let (objects, _) = parse_yaml(PODS);
    let last = index.pod_stamp("demo", "api-0");
    index.reset(objects);
    assert!(index.pod_stamp("demo", "api-0") > last);
}

#[test]
fn inbound_routes_are_not_outbound_routes() {
    // A route whose parent is a Server has no status entry of ours and no outbound role.
    let index = index(&[server("web-http", WEB_HTTP), route("demo", "r", "", "/")].concat());
    assert!(index.route_reports().is_empty());
    assert_eq!(
        index.inbound_policy("demo", "web-0", 8080).access,
        Access::Deny
    );
}

/// The pod's HTTP probes on a port are served with its policy, with a Server or without one,
/// by port number or container port name.
#[test]
fn probe_paths_come_with_the_policy() {
    let mut index = index(&server("web-http", WEB_HTTP));
    let (objects, errors) = parse_yaml(
        "apiVersion: v1
kind: Pod
metadata: {name: probed-0, namespace: demo, labels: {app: web}}
spec:
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /ready, port: http}}
    livenessProbe: {httpGet: {path: '/live?full=1', port: 8080}}
    startupProbe: {httpGet: {port: 9000}}
",
    );
    assert!(errors.is_empty(), "{errors:?}");
    for o in objects {
        index.apply(o);
    }
    let on = |port| index.inbound_policy("demo", "probed-0", port);
    assert_eq!(on(8080).probe_paths, ["/live", "/ready"]);
    assert!(on(8080).server.is_some(), "the Server's port");
    assert_eq!(on(9000).probe_paths, ["/"], "no Server there: still served");
    assert_eq!(on(9000).server, None);
    assert!(on(7000).probe_paths.is_empty());
}
