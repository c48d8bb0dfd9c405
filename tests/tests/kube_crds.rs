//! The cluster tier, CRDs: what `mesh install --crds` prints, applied to a real API server, which
//! must accept the routes and faults the mesh reads (an HTTPRoute whose parent is a Service, with
//! weighted backends, every filter, timeouts and the experimental retry; a GRPCRoute with a method
//! match; HTTPFaults), fill in the schema's defaults, refuse the wrong ones with the schema's
//! message, and take a status report through the status subresource. The same for the inbound
//! policy resources (Server, AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication,
//! HTTPLocalRateLimitPolicy) and the MetaRoute, which `mesh check`'s `mesh-policy` category then
//! reads from the real API server.
//!
//! Then the destination controller against that API server: `mesh-controller destination
//! --source kube` on this machine, with the admin kubeconfig, reads routes that are valid,
//! invalid, with a missing backend and with a missing HTTPFault; its outbound policy watch
//! serves what it must (and never the invalid route), it writes each route's
//! `status.parents[]` conditions, and both follow when the routes are fixed. A Redis Service
//! port (`appProtocol: mesh.io/redis`) gets its codec and its valid MetaRoute, never the one
//! whose pattern does not compile.
//!
//! Run by `./scripts/test-kube` after the mesh's own tier (or `cargo test -p mesh-tests --test
//! kube_crds -- --ignored` with `KUBECONFIG` set: it needs no images). The CRD tests work in
//! namespaces `crd-tier` and `crd-policy`, the controller's in `crd-status-<pid>`, which it
//! deletes however it ends; all leave the CRDs installed (`mesh uninstall` removes them). They
//! take turns, so the controller is not writing statuses while the CRD test patches its own.

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use mesh_api::destination::{Connector, WatchError};
use mesh_api::policy::{
    watch_outbound, Fault, FaultAbort, FaultDelay, Filter, OutboundPolicy, Route, RouteKind,
};
use mesh_tests::fixtures::eventually;
use mesh_tests::kube::{kubectl, kubectl_ok, kubectl_stdin, mesh, mesh_ok, Cluster};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const NS: &str = "crd-tier";

/// The two tests take turns: each installs the CRDs, and the second one's controller watches
/// every namespace.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the mesh reads, as a user would write it.
const ACCEPTED: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: crd-tier}
spec:
  parentRefs:
    - {group: "", kind: Service, name: web-svc, port: 80}
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          method: GET
          headers: [{name: x-canary, value: "1"}]
          queryParams: [{name: v, type: RegularExpression, value: "2.*"}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: canary}]
            add: [{name: x-hop, value: "1"}]
            remove: [x-debug]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{name: x-served-by, value: web}]
        - type: RequestMirror
          requestMirror: {backendRef: {name: web-shadow, port: 80}, percent: 10}
        - type: URLRewrite
          urlRewrite: {hostname: web.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
        - type: ExtensionRef
          extensionRef: {group: policy.mesh.io, kind: HTTPFault, name: web-fault}
      backendRefs:
        - {name: web-svc, port: 80, weight: 90}
        - {name: web-v2, port: 80, weight: 10}
      timeouts: {request: 2s, backendRequest: 500ms}
      retry: {codes: [502, 503], attempts: 2, backoff: 100ms}
    - matches:
        - path: {type: Exact, value: /old}
      filters:
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            hostname: web.example
            statusCode: 301
            path: {type: ReplaceFullPath, replaceFullPath: /new}
    - backendRefs:
        - {name: web-svc, port: 80}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: voting-fail, namespace: crd-tier}
spec:
  parentRefs:
    - {group: "", kind: Service, name: voting-svc, port: 8080}
  rules:
    - matches:
        - method: {service: demo.Voting, method: VoteDoughnut}
      filters:
        - type: ExtensionRef
          extensionRef: {group: policy.mesh.io, kind: HTTPFault, name: voting-abort}
      backendRefs:
        - {name: voting-svc, port: 8080}
---
apiVersion: policy.mesh.io/v1alpha1
kind: HTTPFault
metadata: {name: web-fault, namespace: crd-tier}
spec:
  delay: {duration: 1m30s, percent: 0.5}
  abort: {httpStatus: 503, percent: 10}
---
apiVersion: policy.mesh.io/v1alpha1
kind: HTTPFault
metadata: {name: voting-abort, namespace: crd-tier}
spec:
  abort: {grpcStatus: 14, percent: 100}
"#;

const FAULT: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: HTTPFault\n\
                     metadata: {name: bad, namespace: crd-tier}\nspec:";
const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                     metadata: {name: bad, namespace: crd-tier}\nspec:\n  \
                     parentRefs: [{group: \"\", kind: Service, name: web-svc, port: 80}]\n  rules:";
const GRPC: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
                    metadata: {name: bad, namespace: crd-tier}\nspec:\n  rules:";

/// What the API server must refuse: (what is wrong, the object's head, the rest of it, what
/// the API server says).
const REFUSED: &[(&str, &str, &str, &str)] = &[
    (
        "an HTTPFault percent of 150",
        FAULT,
        "\n  abort: {httpStatus: 503, percent: 150}",
        "spec.abort.percent in body should be less than or equal to 100",
    ),
    (
        "an HTTPFault without delay or abort",
        FAULT,
        " {}",
        "an HTTPFault sets delay, abort or both",
    ),
    (
        "an abort with two statuses",
        FAULT,
        "\n  abort: {httpStatus: 503, grpcStatus: 2, percent: 1}",
        "abort sets exactly one of httpStatus or grpcStatus",
    ),
    (
        "a gRPC status of 17",
        FAULT,
        "\n  abort: {grpcStatus: 17, percent: 1}",
        "spec.abort.grpcStatus in body should be less than or equal to 16",
    ),
    (
        "a delay that is not a duration",
        FAULT,
        "\n  delay: {duration: 5 seconds, percent: 1}",
        "spec.delay.duration in body should match",
    ),
    (
        "a filter whose field is not its type's",
        ROUTE,
        "\n  - filters: [{type: RequestHeaderModifier, urlRewrite: {hostname: a}}]",
        "filter.urlRewrite must be nil if the filter.type is not URLRewrite",
    ),
    (
        "a redirect and a rewrite",
        ROUTE,
        "\n  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}, \
         {type: URLRewrite, urlRewrite: {hostname: a}}]",
        "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite",
    ),
    (
        "an unknown method",
        ROUTE,
        "\n  - matches: [{method: FETCH}]",
        "Unsupported value: \"FETCH\"",
    ),
    (
        "a weight over 1000000",
        ROUTE,
        "\n  - backendRefs: [{name: a, port: 80, weight: 2000000}]",
        "weight in body should be less than or equal to 1000000",
    ),
    (
        "a Service backend without a port",
        ROUTE,
        "\n  - backendRefs: [{name: a}]",
        "Must have port for Service reference",
    ),
    (
        "a relative path prefix",
        ROUTE,
        "\n  - matches: [{path: {type: PathPrefix, value: api}}]",
        "value must be an absolute path and start with '/'",
    ),
    (
        "a backend timeout longer than the request's",
        ROUTE,
        "\n  - timeouts: {request: 1s, backendRequest: 2s}",
        "backendRequest timeout cannot be longer than request timeout",
    ),
    (
        "a retry of status 200",
        ROUTE,
        "\n  - retry: {codes: [200]}",
        "retry.codes[0] in body should be greater than or equal to 400",
    ),
    (
        "a gRPC service with a slash",
        GRPC,
        "\n  - matches: [{method: {service: demo/Voting}}]",
        "service must only contain valid characters",
    ),
    (
        "a redirect on a GRPCRoute",
        GRPC,
        "\n  - filters: [{type: RequestRedirect}]",
        "Unsupported value: \"RequestRedirect\"",
    ),
];

#[tokio::test]
#[ignore = "the cluster tier: ./scripts/test-kube runs it against a real cluster"]
async fn the_crds_accept_what_the_mesh_reads_and_refuse_the_rest() {
    let _turn = SERIAL.lock().await;
    let mut cluster = Cluster::from_env();
    cluster.namespaces = vec![NS.into()];

    install_crds().await;
    kubectl_stdin(
        &["apply"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
    );

    // Accepted, with the schema's defaults filled in and nothing pruned.
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-o", "json"], ACCEPTED);
    let list: Value = serde_json::from_str(&out).expect("kubectl's JSON");
    let items = list["items"].as_array().expect("a List");
    assert_eq!(items.len(), 4, "{out}");
    let rules = &items[0]["spec"]["rules"];
    assert_eq!(
        rules[0]["backendRefs"][0],
        json!({"group": "", "kind": "Service", "name": "web-svc", "port": 80, "weight": 90})
    );
    assert_eq!(rules[2]["backendRefs"][0]["weight"], 1);
    assert_eq!(
        rules[2]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/"}}]),
        "a rule without matches matches every request"
    );
    assert_eq!(
        rules[0]["retry"],
        json!({"codes": [502, 503], "attempts": 2, "backoff": "100ms"}),
        "the experimental retry is kept"
    );
    assert_eq!(rules[0]["filters"].as_array().unwrap().len(), 5);
    assert_eq!(rules[1]["filters"][0]["requestRedirect"]["statusCode"], 301);
    assert_eq!(
        rules[0]["timeouts"],
        json!({"request": "2s", "backendRequest": "500ms"})
    );
    assert_eq!(
        items[1]["spec"]["rules"][0]["matches"][0]["method"]["type"],
        "Exact"
    );
    assert_eq!(items[2]["spec"]["delay"]["percent"], 0.5);

    // Refused, each with the schema's own message.
    for (what, head, rest, message) in REFUSED {
        let (ok, stderr) = dry_run(&format!("{head}{rest}\n"));
        assert!(!ok, "{what} was accepted");
        assert!(stderr.contains(message), "{what}: {stderr}");
    }

    // The status subresource: what the destination controller reports on a route.
    kubectl_stdin(&["apply"], ACCEPTED);
    let status = |condition: &str| {
        json!({"status": {"parents": [{
            "controllerName": "mesh.io/destination",
            "parentRef": {"group": "", "kind": "Service", "name": "web-svc", "port": 80},
            "conditions": [{"type": "Accepted", "status": condition, "reason": "Accepted",
                            "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        }]}})
        .to_string()
    };
    for kind in ["httproute/web-canary", "grpcroute/voting-fail"] {
        let patch = status("True");
        let args = [
            "patch",
            "-n",
            NS,
            kind,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ];
        kubectl_ok(&args);
        let got: Value =
            serde_json::from_str(&kubectl_ok(&["get", "-n", NS, kind, "-o", "json"])).unwrap();
        assert_eq!(
            got["status"]["parents"][0]["conditions"][0]["status"], "True",
            "{kind}: {got}"
        );
        let bad = status("Maybe");
        let out = kubectl(&[
            "patch",
            "-n",
            NS,
            kind,
            "--subresource=status",
            "--type=merge",
            "-p",
            &bad,
        ]);
        assert!(!out.status.success(), "{kind}: a condition status Maybe");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Unsupported value: \"Maybe\""),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let faults = kubectl_ok(&["get", "hf", "-n", NS]);
    assert!(
        faults.contains("DELAY") && faults.contains("ABORT-HTTP") && faults.contains("1m30s"),
        "the printer columns: {faults}"
    );

    kubectl_ok(&["delete", "namespace", NS, "--wait=false"]);
    drop(cluster);
}

// === the inbound policy resources ===

const POLICY_NS: &str = "crd-policy";

/// The inbound policy as a user writes it (Linkerd's model under policy.mesh.io): two Servers
/// (one by a named port with expressions, one for every pod by number, audited), a policy for
/// one of them requiring a mesh identity, a network and a ServiceAccount, one for the whole
/// namespace requiring nothing, a policy for a GRPCRoute, both kinds of MeshTLSAuthentication,
/// a NetworkAuthentication with exceptions, and a rate limit with an override.
const POLICY_ACCEPTED: &str = r#"
apiVersion: policy.mesh.io/v1alpha1
kind: Server
metadata: {name: voting-grpc, namespace: crd-policy}
spec:
  podSelector:
    matchLabels: {app: voting}
    matchExpressions:
      - {key: tier, operator: In, values: [backend]}
      - {key: canary, operator: DoesNotExist}
  port: grpc
  proxyProtocol: gRPC
---
apiVersion: policy.mesh.io/v1alpha1
kind: Server
metadata: {name: web-http, namespace: crd-policy}
spec: {podSelector: {}, port: 8080, accessPolicy: audit}
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: voting-from-web, namespace: crd-policy}
spec:
  targetRef: {group: policy.mesh.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs:
    - {kind: MeshTLSAuthentication, name: web}
    - {group: policy.mesh.io, kind: NetworkAuthentication, name: cluster, namespace: crd-policy}
    - {group: "", kind: ServiceAccount, name: web}
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: crd-policy}
spec:
  targetRef: {kind: Namespace, name: crd-policy}
  requiredAuthenticationRefs: []
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: votes, namespace: crd-policy}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: GRPCRoute, name: votes}
  requiredAuthenticationRefs: [{kind: MeshTLSAuthentication, name: by-ref}]
---
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web, namespace: crd-policy}
spec:
  identities:
    - web.crd-policy.serviceaccount.identity.mesh.cluster.local
    - "*.demo.serviceaccount.identity.mesh.cluster.local"
---
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: by-ref, namespace: crd-policy}
spec:
  identityRefs: [{kind: ServiceAccount, name: web}, {kind: Namespace, name: demo}]
---
apiVersion: policy.mesh.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: cluster, namespace: crd-policy}
spec:
  networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4]}, {cidr: "fd00::/8"}]
---
apiVersion: policy.mesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: voting-rl, namespace: crd-policy}
spec:
  targetRef: {group: policy.mesh.io, kind: Server, name: voting-grpc}
  total: {requestsPerSecond: 100}
  identity: {requestsPerSecond: 20}
  overrides:
    - requestsPerSecond: 50
      clientRefs: [{kind: ServiceAccount, name: web}]
---
apiVersion: policy.mesh.io/v1alpha1
kind: MetaRoute
metadata: {name: sessions, namespace: crd-policy}
spec:
  parentRefs: [{kind: Service, name: redis, port: 6379}]
  rules:
    - matches:
        - metadata: [{key: key, type: Prefix, value: "session:"}, {key: command, value: GET}]
      backendRefs: [{name: redis-sessions, port: 6379}]
      requestMutation: [{key: method, value: get_v2}]
      timeout: 500ms
    - {}
"#;

const SERVER: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: Server\n\
                      metadata: {name: bad, namespace: crd-policy}\nspec:";
const AUTHZ: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
                     metadata: {name: bad, namespace: crd-policy}\nspec:";
const MESH_TLS: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: MeshTLSAuthentication\n\
                        metadata: {name: bad, namespace: crd-policy}\nspec:";
const NETWORK: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: NetworkAuthentication\n\
                       metadata: {name: bad, namespace: crd-policy}\nspec:";
const META: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: MetaRoute\n\
                    metadata: {name: bad, namespace: crd-policy}\nspec:";
const RATE_LIMIT: &str = "apiVersion: policy.mesh.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\n\
                          metadata: {name: bad, namespace: crd-policy}\nspec:\n  \
                          targetRef: {group: policy.mesh.io, kind: Server, name: voting-grpc}";

/// What the API server must refuse of the policy resources: (what is wrong, the object's head,
/// the rest of it, what the API server says).
const POLICY_REFUSED: &[(&str, &str, &str, &str)] = &[
    (
        "an accessPolicy of allow",
        SERVER,
        "\n  podSelector: {}\n  port: 80\n  accessPolicy: allow",
        "spec.accessPolicy: Unsupported value: \"allow\"",
    ),
    (
        "a proxyProtocol of http",
        SERVER,
        "\n  podSelector: {}\n  port: 80\n  proxyProtocol: http",
        "spec.proxyProtocol: Unsupported value: \"http\"",
    ),
    (
        "port 0",
        SERVER,
        "\n  podSelector: {}\n  port: 0",
        "port is a number from 1 to 65535, or the name of a container port",
    ),
    (
        "a port name longer than 15",
        SERVER,
        "\n  podSelector: {}\n  port: a-very-long-port-name",
        "port is a number from 1 to 65535, or the name of a container port",
    ),
    (
        "a Server without a port",
        SERVER,
        "\n  podSelector: {}",
        "spec.port: Required value",
    ),
    (
        "an In expression without values",
        SERVER,
        "\n  podSelector: {matchExpressions: [{key: app, operator: In}]}\n  port: 80",
        "In and NotIn need values; Exists and DoesNotExist take none",
    ),
    (
        "a Service as target",
        AUTHZ,
        "\n  targetRef: {kind: Service, name: web}\n  requiredAuthenticationRefs: []",
        "spec.targetRef.kind: Unsupported value: \"Service\"",
    ),
    (
        "a Server target without its group",
        AUTHZ,
        "\n  targetRef: {kind: Server, name: web}\n  requiredAuthenticationRefs: []",
        "targetRef is a Server (group policy.mesh.io)",
    ),
    (
        "a ServiceAccount of the policy group",
        AUTHZ,
        "\n  targetRef: {kind: Namespace, name: crd-policy}\n  \
         requiredAuthenticationRefs: [{kind: ServiceAccount, name: web}]",
        "a ServiceAccount of group \"\" (write group: \"\")",
    ),
    (
        "an AuthorizationPolicy without requiredAuthenticationRefs",
        AUTHZ,
        "\n  targetRef: {kind: Namespace, name: crd-policy}",
        "spec.requiredAuthenticationRefs: Required value",
    ),
    (
        "identities and identityRefs both",
        MESH_TLS,
        "\n  identities: [\"*\"]\n  identityRefs: [{kind: ServiceAccount, name: web}]",
        "a MeshTLSAuthentication sets exactly one of identities or identityRefs",
    ),
    (
        "neither identities nor identityRefs",
        MESH_TLS,
        " {}",
        "a MeshTLSAuthentication sets exactly one of identities or identityRefs",
    ),
    (
        "a wildcard that is not a first label",
        MESH_TLS,
        "\n  identities: [\"web.*\"]",
        "spec.identities[0] in body should match",
    ),
    (
        "a Namespace reference with a namespace",
        MESH_TLS,
        "\n  identityRefs: [{kind: Namespace, name: demo, namespace: demo}]",
        "a Namespace reference has no namespace",
    ),
    (
        "a network that is not one",
        NETWORK,
        "\n  networks: [{cidr: \"pods/8\"}]",
        "spec.networks[0].cidr in body should match",
    ),
    (
        "no network",
        NETWORK,
        "\n  networks: []",
        "spec.networks in body should have at least 1 items",
    ),
    (
        "a limit of 0",
        RATE_LIMIT,
        "\n  total: {requestsPerSecond: 0}",
        "spec.total.requestsPerSecond in body should be greater than or equal to 1",
    ),
    (
        "no limit",
        RATE_LIMIT,
        "",
        "an HTTPLocalRateLimitPolicy sets total, identity or overrides",
    ),
    (
        "an identity limit over the total",
        RATE_LIMIT,
        "\n  total: {requestsPerSecond: 10}\n  identity: {requestsPerSecond: 20}",
        "identity.requestsPerSecond cannot be more than total.requestsPerSecond",
    ),
    (
        "a MetaRoute without parentRefs",
        META,
        "\n  rules: [{}]",
        "spec.parentRefs: Required value",
    ),
    (
        "a MetaRoute with no parent",
        META,
        "\n  parentRefs: []",
        "spec.parentRefs in body should have at least 1 items",
    ),
    (
        "a Server as a MetaRoute's parent",
        META,
        "\n  parentRefs: [{kind: Server, name: redis}]",
        "spec.parentRefs[0].kind: Unsupported value: \"Server\"",
    ),
    (
        "a metadata match type of Glob",
        META,
        "\n  parentRefs: [{name: redis}]\n  \
         rules: [{matches: [{metadata: [{key: key, type: Glob, value: a}]}]}]",
        "spec.rules[0].matches[0].metadata[0].type: Unsupported value: \"Glob\"",
    ),
    (
        "an empty metadata key",
        META,
        "\n  parentRefs: [{name: redis}]\n  \
         rules: [{matches: [{metadata: [{key: \"\", value: a}]}]}]",
        "spec.rules[0].matches[0].metadata[0].key in body should be at least 1 chars long",
    ),
    (
        "a MetaRoute backend without a port",
        META,
        "\n  parentRefs: [{name: redis}]\n  rules: [{backendRefs: [{name: cache}]}]",
        "spec.rules[0].backendRefs[0].port: Required value",
    ),
    (
        "a MetaRoute timeout that is not a duration",
        META,
        "\n  parentRefs: [{name: redis}]\n  rules: [{timeout: 5 seconds}]",
        "spec.rules[0].timeout in body should match",
    ),
];

#[tokio::test]
#[ignore = "the cluster tier: ./scripts/test-kube runs it against a real cluster"]
async fn the_policy_crds_accept_linkerds_model_and_refuse_the_rest() {
    let _turn = SERIAL.lock().await;
    let mut cluster = Cluster::from_env();
    cluster.namespaces = vec![POLICY_NS.into()];

    install_crds().await;
    // The namespace, the ServiceAccount the policy requires, and the MetaRoute's parent (a
    // Redis port; its backend redis-sessions is missing).
    kubectl_stdin(
        &["apply"],
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {POLICY_NS}}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: web, namespace: {POLICY_NS}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: redis, namespace: {POLICY_NS}}}\n\
             spec: {{ports: [{{port: 6379, appProtocol: mesh.io/redis}}]}}\n"
        ),
    );

    // Accepted, with the schema's defaults filled in and nothing pruned.
    let out = kubectl_stdin(
        &["apply", "--dry-run=server", "-o", "json"],
        POLICY_ACCEPTED,
    );
    let list: Value = serde_json::from_str(&out).expect("kubectl's JSON");
    let items = list["items"].as_array().expect("a List");
    assert_eq!(items.len(), 10, "{out}");
    let spec = |name: &str| {
        items
            .iter()
            .find(|i| i["metadata"]["name"] == name)
            .map(|i| i["spec"].clone())
            .unwrap_or_else(|| panic!("{name}: {out}"))
    };
    let voting = spec("voting-grpc");
    assert_eq!(voting["accessPolicy"], "deny", "the default access policy");
    assert_eq!(voting["port"], "grpc");
    assert_eq!(
        voting["podSelector"]["matchExpressions"][1]["operator"],
        "DoesNotExist"
    );
    let web = spec("web-http");
    assert_eq!(
        (&web["port"], &web["proxyProtocol"]),
        (&json!(8080), &json!("unknown"))
    );
    let refs = &spec("voting-from-web")["requiredAuthenticationRefs"];
    assert_eq!(refs[0]["group"], "policy.mesh.io", "the group's default");
    assert_eq!(
        refs[2],
        json!({"group": "", "kind": "ServiceAccount", "name": "web"})
    );
    assert_eq!(
        spec("by-ref")["identityRefs"][1],
        json!({"kind": "Namespace", "name": "demo"})
    );
    assert_eq!(spec("cluster")["networks"][0]["except"][1], "10.2.3.4");
    assert_eq!(
        spec("voting-rl")["overrides"][0]["clientRefs"][0],
        json!({"kind": "ServiceAccount", "name": "web"})
    );
    let sessions = spec("sessions");
    assert_eq!(
        sessions["parentRefs"][0],
        json!({"group": "", "kind": "Service", "name": "redis", "port": 6379}),
        "the parent's defaults"
    );
    assert_eq!(
        sessions["rules"][0]["matches"][0]["metadata"][1],
        json!({"key": "command", "type": "Exact", "value": "GET"}),
        "the match type's default"
    );
    assert_eq!(
        sessions["rules"][0]["backendRefs"][0],
        json!({"group": "", "kind": "Service", "name": "redis-sessions", "port": 6379, "weight": 1})
    );
    assert_eq!(sessions["rules"][0]["timeout"], "500ms");
    assert_eq!(sessions["rules"][1], json!({}));

    // Refused, each with the schema's own message.
    for (what, head, rest, message) in POLICY_REFUSED {
        let (ok, stderr) = dry_run(&format!("{head}{rest}\n"));
        assert!(!ok, "{what} was accepted");
        assert!(stderr.contains(message), "{what}: {stderr}");
    }

    // The printer columns.
    kubectl_stdin(&["apply"], POLICY_ACCEPTED);
    let servers = kubectl_ok(&["get", "srv", "-n", POLICY_NS]);
    assert!(
        servers.contains("PROTOCOL") && servers.contains("ACCESS") && servers.contains("gRPC"),
        "{servers}"
    );
    let limits = kubectl_ok(&["get", "ratelimit", "-n", POLICY_NS]);
    assert!(
        limits.contains("TOTAL-RPS") && limits.contains("100"),
        "{limits}"
    );
    let policies = kubectl_ok(&["get", "authzpolicy", "-n", POLICY_NS]);
    assert!(
        policies.contains("TARGET-KIND") && policies.contains("Namespace"),
        "{policies}"
    );
    let meta = kubectl_ok(&["get", "mr", "-n", POLICY_NS]);
    assert!(meta.contains("PARENTS") && meta.contains("redis"), "{meta}");

    // mesh check reads them from the API server: no pod runs in the namespace, so the Servers
    // select none (a warning); the GRPCRoute does not exist; the MetaRoute's backend does not
    // exist (a warning); everything else does (the ServiceAccount and the MetaRoute's parent,
    // a Redis port, too).
    let out = mesh(&["check", "-o", "json", "--check-timeout", "10s"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mesh check -o json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let policy = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["categoryName"] == "mesh-policy")
        .unwrap_or_else(|| panic!("no mesh-policy category: {report}"))
        .clone();
    let line = |i: usize| {
        let check = &policy["checks"][i];
        let found = check["error"].as_str().unwrap_or_default().to_string();
        (
            check["result"].as_str().unwrap_or_default().to_string(),
            found,
        )
    };
    let (result, found) = line(0);
    assert_eq!(result, "warning", "{policy}");
    assert!(
        found.contains("crd-policy/voting-grpc selects no pod"),
        "{found}"
    );
    let (_, found) = line(1);
    assert!(
        found.contains("crd-policy/votes: GRPCRoute crd-policy/votes does not exist"),
        "{policy}"
    );
    for i in [2, 3] {
        let (_, found) = line(i);
        assert!(!found.contains("crd-policy/"), "{policy}");
    }
    let (result, found) = line(4);
    assert_eq!(result, "warning", "{policy}");
    assert_eq!(
        found,
        "crd-policy/sessions: backend Service crd-policy/redis-sessions port 6379 does not exist",
        "{policy}"
    );

    kubectl_ok(&["delete", "namespace", POLICY_NS, "--wait=false"]);
    drop(cluster);
}

/// `kubectl apply --dry-run=server -f -` of `yaml`: whether it was accepted, and stderr.
fn dry_run(yaml: &str) -> (bool, String) {
    let out = kubectl_input(&["apply", "--dry-run=server"], yaml);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `mesh install --crds | kubectl apply -f -`, then waits until the API server serves them.
/// Another process applying them at the same moment can make one apply fail (`AlreadyExists`,
/// a conflict): it is tried again.
async fn install_crds() {
    let crds = mesh_ok(&["install", "--crds"]);
    let mut last = String::new();
    let applied = eventually(Duration::from_secs(60), || {
        let out = kubectl_input(&["apply"], &crds);
        let ok = out.status.success();
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        async move { ok }
    })
    .await;
    assert!(
        applied,
        "kubectl apply of `mesh install --crds` failed: {last}"
    );
    kubectl_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/grpcroutes.gateway.networking.k8s.io",
        "crd/httpfaults.policy.mesh.io",
        "crd/servers.policy.mesh.io",
        "crd/authorizationpolicies.policy.mesh.io",
        "crd/meshtlsauthentications.policy.mesh.io",
        "crd/networkauthentications.policy.mesh.io",
        "crd/httplocalratelimitpolicies.policy.mesh.io",
        "crd/metaroutes.policy.mesh.io",
    ]);
}

/// `kubectl ARGS -f -` with `yaml` on stdin, whatever its outcome.
fn kubectl_input(args: &[&str], yaml: &str) -> std::process::Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write to kubectl");
    child.wait_with_output().expect("kubectl ends")
}

// === the destination controller against the API server ===

/// The controller name the destination controller writes its status entries with.
const CONTROLLER_NAME: &str = "mesh.io/destination-controller";

/// How long the controller may take to see a change and answer it (watch event, policy line,
/// status write).
const WITHIN: Duration = Duration::from_secs(30);

/// The two Services, in namespace `$NS`.
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: $NS}
spec: {type: ClusterIP, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: $NS}
spec: {type: ClusterIP, selector: {app: web-v2}, ports: [{port: 80, targetPort: 8080}]}
"#;

/// The routes of web-svc:80: a canary split; a regular expression that does not compile; a
/// backend Service that does not exist; a GRPCRoute whose HTTPFault does not exist (yet).
const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: $NS}
spec:
  parentRefs: [{group: "", kind: Service, name: web-svc, port: 80}]
  rules:
    - backendRefs:
        - {name: web-svc, port: 80, weight: 90}
        - {name: web-v2, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gone, namespace: $NS}
spec:
  parentRefs: [{group: "", kind: Service, name: web-svc, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /gone}}]
      backendRefs: [{name: nowhere, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: voting, namespace: $NS}
spec:
  parentRefs: [{group: "", kind: Service, name: web-svc, port: 80}]
  rules:
    - matches: [{method: {service: demo.Voting}}]
      filters:
        - type: ExtensionRef
          extensionRef: {group: policy.mesh.io, kind: HTTPFault, name: voting-delay}
      backendRefs: [{name: web-svc, port: 80}]
"#;

/// HTTPRoute `bad-regex` with the path pattern `$PATTERN`.
const BAD_REGEX: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: $NS}
spec:
  parentRefs: [{group: "", kind: Service, name: web-svc, port: 80}]
  rules:
    - matches: [{path: {type: RegularExpression, value: "$PATTERN"}}]
      backendRefs: [{name: web-v2, port: 80}]
"#;

/// A Redis Service port (its appProtocol `mesh.io/redis`), its sessions Service, and MetaRoute
/// `sessions` on it: a key prefix to redis-sessions, with a timeout.
const REDIS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: $NS}
spec: {type: ClusterIP, selector: {app: redis}, ports: [{port: 6379, appProtocol: mesh.io/redis}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis-sessions, namespace: $NS}
spec: {type: ClusterIP, selector: {app: redis-sessions}, ports: [{port: 6379}]}
---
apiVersion: policy.mesh.io/v1alpha1
kind: MetaRoute
metadata: {name: sessions, namespace: $NS}
spec:
  parentRefs: [{kind: Service, name: redis, port: 6379}]
  rules:
    - matches: [{metadata: [{key: key, type: Prefix, value: "session:"}]}]
      backendRefs: [{name: redis-sessions, port: 6379}]
      timeout: 500ms
"#;

/// A MetaRoute on the Redis port whose pattern does not compile, which the CRD cannot say: the
/// controller never serves it.
const BAD_META: &str = r#"
apiVersion: policy.mesh.io/v1alpha1
kind: MetaRoute
metadata: {name: bad-meta, namespace: $NS}
spec:
  parentRefs: [{kind: Service, name: redis, port: 6379}]
  rules:
    - matches: [{metadata: [{key: key, type: RegularExpression, value: "user:(["}]}]
"#;

/// The HTTPFault the GRPCRoute names.
const FAULT_CREATED: &str = r#"
apiVersion: policy.mesh.io/v1alpha1
kind: HTTPFault
metadata: {name: voting-delay, namespace: $NS}
spec:
  delay: {duration: 250ms, percent: 50}
"#;

#[tokio::test]
#[ignore = "the cluster tier: ./scripts/test-kube runs it against a real cluster"]
async fn the_destination_controller_serves_valid_routes_and_reports_every_route_status() {
    let _turn = SERIAL.lock().await;
    let mut cluster = Cluster::from_env();
    let ns = Namespace::create(&format!("crd-status-{}", std::process::id()));
    cluster.namespaces = vec![ns.0.clone()];
    let yaml = |text: &str| text.replace("$NS", &ns.0);

    // 1. The CRDs and the Services.
    install_crds().await;
    kubectl_stdin(&["apply"], &yaml(SERVICES));

    // 2. The controller, on this machine, with the admin kubeconfig.
    let controller = Controller::start().await;

    // 3. The routes.
    kubectl_stdin(&["apply"], &yaml(ROUTES));
    kubectl_stdin(&["apply"], &yaml(&BAD_REGEX.replace("$PATTERN", "/((")));

    // 4. The policy: the valid routes, the missing backend and fault in them; never bad-regex.
    let authority = format!("web-svc.{}.svc.cluster.local:80", ns.0);
    let mut watch = PolicyWatch::open(controller.addr, &authority, &ns.0);
    let policy = watch
        .until("good, gone and voting (the fault missing)", |p| {
            route(p, "good").is_some() && route(p, "gone").is_some() && fault(p).is_some()
        })
        .await;
    let good = route(&policy, "good").unwrap();
    let backends: Vec<(&str, u32, Option<&str>)> = good.rules[0]
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight, b.error.as_deref()))
        .collect();
    assert_eq!(
        backends,
        [("web-svc", 90, None), ("web-v2", 10, None)],
        "{policy:#?}"
    );
    let gone = &route(&policy, "gone").unwrap().rules[0].backends[0];
    assert_eq!(gone.name, "nowhere", "{policy:#?}");
    assert!(
        gone.error
            .as_deref()
            .is_some_and(|e| e.starts_with("BackendNotFound")),
        "the missing backend's error: {gone:?}"
    );
    assert_eq!(route(&policy, "voting").unwrap().kind, RouteKind::Grpc);
    assert_eq!(
        fault(&policy).unwrap().abort,
        Some(FaultAbort {
            http_status: Some(500),
            grpc_status: None,
            percent: 100.0
        }),
        "a missing HTTPFault aborts every request with 500: {policy:#?}"
    );

    // 5. The status of every route.
    let statuses = wait_for_statuses(
        &ns.0,
        &[
            (
                "httproute",
                "good",
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
            ),
            (
                "httproute",
                "bad-regex",
                ("False", "UnsupportedValue"),
                ("True", "ResolvedRefs"),
            ),
            (
                "httproute",
                "gone",
                ("True", "Accepted"),
                ("False", "BackendNotFound"),
            ),
            (
                "grpcroute",
                "voting",
                ("True", "Accepted"),
                ("False", "BackendNotFound"),
            ),
        ],
    )
    .await;
    let message = |at: usize, kind: &str| {
        condition(&statuses[at], kind).unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let bad = message(1, "Accepted");
    assert!(
        bad.contains("spec.rules[0].matches[0].path.value") && bad.contains("/(("),
        "the message names the field and the pattern: {bad}"
    );
    assert!(
        message(2, "ResolvedRefs").contains("nowhere"),
        "{}",
        statuses[2]
    );
    assert!(
        message(3, "ResolvedRefs").contains("voting-delay"),
        "{}",
        statuses[3]
    );
    // Never bad-regex: in no policy sent so far, nor in a new watch's first one, which is the
    // state of the index that wrote bad-regex's status.
    let mut now = PolicyWatch::open(controller.addr, &authority, &ns.0);
    now.until("the current policy", |_| true).await;
    assert!(
        watch
            .seen
            .iter()
            .chain(&now.seen)
            .all(|p| route(p, "bad-regex").is_none()),
        "bad-regex was served: {:#?}",
        watch.seen.iter().chain(&now.seen).collect::<Vec<_>>()
    );
    drop(now);

    // 6. bad-regex fixed, the HTTPFault created: both follow.
    let resolved_since =
        condition(&statuses[1], "ResolvedRefs").unwrap()["lastTransitionTime"].clone();
    kubectl_stdin(
        &["apply"],
        &yaml(&BAD_REGEX.replace("$PATTERN", "/v[0-9]+/.*")),
    );
    kubectl_stdin(&["apply"], &yaml(FAULT_CREATED));
    let policy = watch
        .until("bad-regex served and voting's HTTPFault inlined", |p| {
            route(p, "bad-regex").is_some() && fault(p).is_some_and(|f| f.abort.is_none())
        })
        .await;
    assert_eq!(
        route(&policy, "bad-regex").unwrap().rules[0].backends[0].name,
        "web-v2"
    );
    assert_eq!(
        fault(&policy).unwrap(),
        &Fault {
            name: "voting-delay".into(),
            delay: Some(FaultDelay {
                duration_ms: 250,
                percent: 50.0
            }),
            abort: None,
        },
        "{policy:#?}"
    );
    let statuses = wait_for_statuses(
        &ns.0,
        &[
            (
                "httproute",
                "bad-regex",
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
            ),
            (
                "grpcroute",
                "voting",
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
            ),
        ],
    )
    .await;
    assert_eq!(statuses[0]["metadata"]["generation"], 2, "{}", statuses[0]);
    assert_eq!(
        condition(&statuses[0], "ResolvedRefs").unwrap()["lastTransitionTime"],
        resolved_since,
        "a condition whose status stays keeps its lastTransitionTime: {}",
        statuses[0]
    );

    // 7. A Redis port and its MetaRoutes: the codec, the valid MetaRoute with its backend
    //    resolved; never bad-meta, applied first (one watch of the kind: the controller has it
    //    before sessions).
    kubectl_stdin(&["apply"], &yaml(BAD_META));
    kubectl_stdin(&["apply"], &yaml(REDIS));
    let redis = format!("redis.{}.svc.cluster.local:6379", ns.0);
    let mut meta = PolicyWatch::open(controller.addr, &redis, &ns.0);
    let policy = meta
        .until("the codec and MetaRoute sessions", |p| {
            p.codec.as_deref() == Some("redis")
                && p.meta_routes.iter().any(|r| r.name == "sessions")
        })
        .await;
    let rule = &policy.meta_routes[0].rules[0];
    assert_eq!(
        (
            rule.backends[0].authority.as_str(),
            rule.backends[0].error.as_deref(),
            rule.timeout_ms
        ),
        (
            format!("redis-sessions.{}.svc.cluster.local:6379", ns.0).as_str(),
            None,
            Some(500)
        ),
        "{policy:#?}"
    );
    let mut now = PolicyWatch::open(controller.addr, &redis, &ns.0);
    now.until("the current policy", |_| true).await;
    assert!(
        meta.seen
            .iter()
            .chain(&now.seen)
            .all(|p| p.meta_routes.iter().all(|r| r.name != "bad-meta")),
        "bad-meta was served: {:#?}",
        meta.seen.iter().chain(&now.seen).collect::<Vec<_>>()
    );

    drop(now);
    drop(meta);
    drop(watch);
    drop(controller);
    drop(ns);
    drop(cluster);
}

/// The route `name` of a policy.
fn route<'a>(policy: &'a OutboundPolicy, name: &str) -> Option<&'a Route> {
    policy.routes.iter().find(|r| r.name == name)
}

/// The fault of the GRPCRoute `voting`'s rule.
fn fault(policy: &OutboundPolicy) -> Option<&Fault> {
    route(policy, "voting")?
        .rules
        .first()?
        .filters
        .iter()
        .find_map(|f| match f {
            Filter::Fault(fault) => Some(fault),
            _ => None,
        })
}

/// The condition `kind` of the destination controller's entry in a route's `status.parents`.
fn condition<'a>(route: &'a Value, kind: &str) -> Option<&'a Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME)?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// What is wrong with a route's status, against `(status, reason)` of its `Accepted` and
/// `ResolvedRefs`: one entry, the controller's, for parent Service web-svc port 80, each
/// condition for the route's current generation.
fn status_mismatch(
    route: &Value,
    accepted: (&str, &str),
    resolved: (&str, &str),
) -> Option<String> {
    let parents = route["status"]["parents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if parents.len() != 1 {
        return Some(format!("{} status.parents entries", parents.len()));
    }
    let parent = &parents[0];
    if parent["controllerName"] != CONTROLLER_NAME {
        return Some(format!("controllerName {}", parent["controllerName"]));
    }
    let parent_ref = &parent["parentRef"];
    if parent_ref["kind"] != "Service"
        || parent_ref["name"] != "web-svc"
        || parent_ref["port"] != 80
    {
        return Some(format!("parentRef {parent_ref}"));
    }
    let generation = &route["metadata"]["generation"];
    for (kind, (status, reason)) in [("Accepted", accepted), ("ResolvedRefs", resolved)] {
        let Some(c) = condition(route, kind) else {
            return Some(format!("no {kind} condition"));
        };
        if c["status"] != status || c["reason"] != reason {
            return Some(format!("{kind}={}/{}", c["status"], c["reason"]));
        }
        if c["observedGeneration"] != *generation {
            return Some(format!(
                "{kind}: observedGeneration {} of generation {generation}",
                c["observedGeneration"]
            ));
        }
        if !c["lastTransitionTime"].is_string() {
            return Some(format!("{kind} without lastTransitionTime"));
        }
    }
    None
}

/// A route (kind, name) and the `(status, reason)` of its Accepted and ResolvedRefs conditions.
type Expected<'a> = (&'a str, &'a str, (&'a str, &'a str), (&'a str, &'a str));

/// Waits until every `(kind, name, Accepted, ResolvedRefs)` route has that status; the routes,
/// as `kubectl get -o json` shows them.
async fn wait_for_statuses(ns: &str, expected: &[Expected<'_>]) -> Vec<Value> {
    let mut last: Vec<Value> = Vec::new();
    let mut wrong = String::new();
    let done = eventually(WITHIN, || {
        last = expected
            .iter()
            .map(|(kind, name, ..)| {
                let json = kubectl_ok(&["get", kind, name, "-n", ns, "-o", "json"]);
                serde_json::from_str(&json).expect("kubectl's JSON")
            })
            .collect();
        wrong = expected
            .iter()
            .zip(&last)
            .filter_map(|((kind, name, accepted, resolved), route)| {
                status_mismatch(route, *accepted, *resolved).map(|w| format!("{kind} {name}: {w}"))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let ok = wrong.is_empty();
        async move { ok }
    })
    .await;
    assert!(
        done,
        "the route statuses within {WITHIN:?}: {wrong}\n{}",
        last.iter()
            .map(|r| format!("{}: {}", r["metadata"]["name"], r["status"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    last
}

/// A namespace of the test's own, deleted when dropped, however the test ends.
struct Namespace(String);

impl Namespace {
    fn create(name: &str) -> Self {
        kubectl_stdin(
            &["apply"],
            &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"),
        );
        Self(name.to_owned())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// `mesh-controller destination --source kube` on this machine, killed when dropped; its log
/// is printed when the test failed.
struct Controller {
    child: std::process::Child,
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Controller {
    /// Starts it with `$KUBECONFIG` on a free port and waits until it is ready.
    async fn start() -> Self {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = Command::new(
            mesh_cli::local::binary("mesh-controller").expect("the mesh-controller binary"),
        )
        .args([
            "destination",
            "--source",
            "kube",
            "--kubeconfig",
            &kubeconfig,
        ])
        .args(["--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(log.reopen().expect("the log file"))
        .stderr(log.reopen().expect("the log file"))
        .spawn()
        .expect("mesh-controller runs");
        let controller = Self { child, addr, log };
        let ready = eventually(Duration::from_secs(60), || ready(addr)).await;
        assert!(ready, "the destination controller was not ready within 60s");
        controller
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("==== mesh-controller destination's log (last 80 lines) ====");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Whether `GET /ready` at `addr` answers 200.
async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut io) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /ready HTTP/1.1\r\nHost: controller\r\nConnection: close\r\n\r\n";
    if io.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), io.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.1 200")
}

/// One outbound policy watch, and every policy it has sent.
struct PolicyWatch {
    lines: Pin<Box<dyn Stream<Item = Result<OutboundPolicy, WatchError>> + Send>>,
    seen: Vec<OutboundPolicy>,
}

impl PolicyWatch {
    fn open(addr: SocketAddr, authority: &str, ns: &str) -> Self {
        Self {
            lines: Box::pin(watch_outbound(Connector::default(), addr, authority, ns)),
            seen: Vec::new(),
        }
    }

    /// Reads policies until the latest one satisfies `ok`, within [`WITHIN`], and returns it.
    async fn until(&mut self, what: &str, ok: impl Fn(&OutboundPolicy) -> bool) -> OutboundPolicy {
        if let Some(latest) = self.seen.last().filter(|p| ok(p)) {
            return latest.clone();
        }
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.next()).await;
            let policy = match next {
                Ok(Some(Ok(policy))) => policy,
                Ok(Some(Err(error))) => panic!("the policy watch failed: {error}"),
                Ok(None) => panic!("the controller ended the policy watch"),
                Err(_) => panic!(
                    "the policy watch did not send {what} within {WITHIN:?}; the latest: {:#?}",
                    self.seen.last()
                ),
            };
            self.seen.push(policy.clone());
            if ok(&policy) {
                return policy;
            }
        }
    }
}
