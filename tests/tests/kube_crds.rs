//! The cluster tier, CRDs: what `mesh install --crds` prints, applied to a real API server, which
//! must accept the routes and faults the mesh reads (an HTTPRoute whose parent is a Service, with
//! weighted backends, every filter, timeouts and the experimental retry; a GRPCRoute with a method
//! match; HTTPFaults), fill in the schema's defaults, refuse the wrong ones with the schema's
//! message, and take a status report through the status subresource.
//!
//! Run by `./scripts/test-kube` after the mesh's own tier (or `cargo test -p mesh-tests --test
//! kube_crds -- --ignored` with `KUBECONFIG` set: it needs no images). It works in namespace
//! `crd-tier` and leaves the CRDs installed (`mesh uninstall` removes them).

use std::io::Write as _;
use std::process::{Command, Stdio};

use mesh_tests::kube::{kubectl, kubectl_ok, kubectl_stdin, mesh_ok, Cluster};
use serde_json::{json, Value};

const NS: &str = "crd-tier";

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
    let mut cluster = Cluster::from_env();
    cluster.namespaces = vec![NS.into()];

    // mesh install --crds | kubectl apply -f -
    kubectl_stdin(&["apply"], &mesh_ok(&["install", "--crds"]));
    kubectl_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/grpcroutes.gateway.networking.k8s.io",
        "crd/httpfaults.policy.mesh.io",
    ]);
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

/// `kubectl apply --dry-run=server -f -` of `yaml`: whether it was accepted, and stderr.
fn dry_run(yaml: &str) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-f", "-"])
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
    let out = child.wait_with_output().expect("kubectl ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
