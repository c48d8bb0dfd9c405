//! `mesh check` against an in-process fake API server that serves the recorded responses
//! (`testdata/k8s-fixtures`) and the control plane `mesh install` renders: a healthy cluster,
//! a missing deployment, a missing or outdated CRD, an expiring issuer, RBAC denials, the proxies of meshed pods, a user
//! allowed one namespace, Kubernetes 1.28 and 1.30, policy objects (inbound, a MetaRoute) that refer to what
//! does not exist, and an API server that never answers.

mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::{Child, ChildStdout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mesh_api::identity::ca;
use mesh_api::inject::{self as core, ProxyConfig};
use serde_json::{json, Value};
use support::*;

/// What the fake cluster looks like.
#[derive(Clone, Default)]
struct Cluster {
    /// The control plane's objects by "Kind/name" (from `mesh install`); empty: not installed.
    installed: BTreeMap<String, Value>,
    /// The deployment that is missing, if any.
    missing_deployment: Option<&'static str>,
    /// How many GETs of the missing deployment still answer 404 (`None`: all of them).
    missing_for: Option<Arc<AtomicUsize>>,
    /// The API server's minor version (`None`: the recorded 1.28).
    minor: Option<&'static str>,
    /// The injector's `--native-sidecar` (`None`: `auto`).
    native_sidecar: Option<&'static str>,
    /// Lists of every namespace are refused (403): the user is allowed namespace demo only.
    namespace_only: bool,
    /// Reads of ConfigMaps and Secrets are refused (403), and access reviews say no.
    rbac_denied: bool,
    /// The proxies' pods (namespace demo).
    meshed_pods: Vec<Value>,
    /// The CRD that is not installed, if any.
    missing_crd: Option<&'static str>,
    /// The CRD installed in an older version, serving only `v1beta1`, if any.
    beta_crd: Option<&'static str>,
    /// The `policy.mesh.io` and Gateway API objects, as a user applies them (served when their
    /// CRD is installed).
    policy: Vec<Value>,
}

/// What the API server answers for a resource no CRD defines (seen on 1.28: plain text).
const NO_SUCH_RESOURCE: &str = "404 page not found";

/// The objects of `plural.group` in `namespace` (all of them: `None`) as the API server lists
/// them, in the recorded pod list's envelope; `None` when the CRD is not installed.
fn custom_list(
    cluster: &Cluster,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Option<String> {
    let crd = format!("{plural}.{group}");
    if !cluster
        .installed
        .contains_key(&format!("CustomResourceDefinition/{crd}"))
        || cluster.missing_crd == Some(crd.as_str())
    {
        return None;
    }
    let definition = &cluster.installed[&format!("CustomResourceDefinition/{crd}")];
    let kind = definition["spec"]["names"]["kind"].as_str().unwrap();
    let version = definition["spec"]["versions"][0]["name"].as_str().unwrap();
    let mut list = fixture_json("pods-list.json");
    list["apiVersion"] = format!("{group}/{version}").into();
    list["kind"] = format!("{kind}List").into();
    list["items"] = cluster
        .policy
        .iter()
        .filter(|o| o["kind"] == kind)
        .filter(|o| namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns))
        .cloned()
        .collect();
    Some(list.to_string())
}

fn not_found(kind: &str, name: &str) -> (u16, String) {
    // The recorded 404, for the object asked about.
    let mut status = fixture_json("notfound-404.json");
    status["message"] = format!("{kind} \"{name}\" not found").into();
    status["details"]["name"] = name.into();
    (404, status.to_string())
}

/// A CRD that `mesh install` renders as the API server serves it once it took it: established,
/// its names accepted.
fn established_crd(crd: &Value, beta: bool) -> Value {
    let mut crd = crd.clone();
    if beta {
        crd["spec"]["versions"][0]["name"] = "v1beta1".into();
    }
    let version = crd["spec"]["versions"][0]["name"].clone();
    crd["metadata"]["uid"] = "7b0e7a64-3f0c-4bd4-9a55-2f4e3c1f0d11".into();
    crd["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z".into();
    crd["status"] = json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": "2025-01-01T00:00:00Z"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted",
             "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ],
        "storedVersions": [version],
    });
    crd
}

/// The recorded Deployment `web`, renamed into the control plane (ready, 2 of 2); the
/// injector's container runs with `--native-sidecar=<native_sidecar>`.
fn deployment(name: &str, native_sidecar: &str) -> Value {
    let list = fixture_json("deployments-list.json");
    let mut d = list["items"][0].clone();
    d["apiVersion"] = "apps/v1".into();
    d["kind"] = "Deployment".into();
    d["metadata"]["name"] = name.into();
    d["metadata"]["namespace"] = "mesh".into();
    if name == "mesh-injector" {
        d["spec"]["template"]["spec"]["containers"][0]["args"] = json!([
            "injector",
            "--listen=0.0.0.0:8443",
            format!("--native-sidecar={native_sidecar}"),
            "--log-level=info",
        ]);
    }
    d
}

/// The recorded 403, for a list of every namespace.
fn forbidden_everywhere(resource: &str) -> (u16, String) {
    let mut status = fixture_json("forbidden-403.json");
    status["message"] = format!(
        "{resource} is forbidden: User \"system:serviceaccount:demo:web\" cannot list resource \"{resource}\" in API group \"\" at the cluster scope"
    )
    .into();
    status["details"]["kind"] = resource.into();
    (403, status.to_string())
}

/// The recorded pods, renamed into the control plane with its labels.
fn control_plane_pods() -> Value {
    let mut list = fixture_json("pods-list.json");
    for (i, pod) in list["items"].as_array_mut().unwrap().iter_mut().enumerate() {
        pod["metadata"]["namespace"] = "mesh".into();
        pod["metadata"]["name"] = format!("mesh-destination-85489d9c68-{i}").into();
        pod["metadata"]["labels"]["mesh.io/control-plane-ns"] = "mesh".into();
    }
    list
}

/// The recorded pods of namespace demo, injected as the webhook would, with their proxy ready.
fn meshed_pods(anchors: &str, version: &str) -> Vec<Value> {
    injected_pods(anchors, version)
        .into_iter()
        .map(|mut pod| {
            pod["status"]["initContainerStatuses"] = json!([
                {"name": "mesh-init", "ready": true, "restartCount": 0, "image": "", "imageID": "",
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "mesh-proxy", "ready": true, "restartCount": 0, "image": "", "imageID": "",
                 "started": true, "state": {"running": {}}},
            ]);
            pod
        })
        .collect()
}

fn respond(
    cluster: &Cluster,
    method: &http::Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> (u16, String) {
    let installed = |key: &str| cluster.installed.get(key).map(|v| (200, v.to_string()));
    let forbidden = || (403, fixture("forbidden-403.json"));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => match cluster.minor {
            Some(minor) => (200, version_answer(minor)),
            None => (200, fixture("version.json")),
        },
        // A list of every namespace: pods, or deployments and the like of a group.
        ("GET", ["api", "v1", resource] | ["apis", _, _, resource]) if cluster.namespace_only => {
            forbidden_everywhere(resource)
        }
        ("GET", ["api", "v1", "namespaces", "demo"]) => (200, fixture("namespace-demo.json")),
        ("GET", ["api", "v1", "namespaces", name]) => {
            installed(&format!("Namespace/{name}")).unwrap_or_else(|| not_found("namespaces", name))
        }
        ("GET", ["apis", "apps", "v1", "namespaces", "mesh", "deployments", name]) => {
            let missing = cluster.missing_deployment == Some(*name)
                && cluster.missing_for.as_ref().is_none_or(|left| {
                    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                });
            if cluster.installed.is_empty() || missing {
                not_found("deployments.apps", name)
            } else {
                let native_sidecar = cluster.native_sidecar.unwrap_or("auto");
                (200, deployment(name, native_sidecar).to_string())
            }
        }
        ("GET", ["api", "v1", "namespaces", "mesh", "pods"]) => {
            assert!(query.contains("labelSelector"), "{query}");
            (200, control_plane_pods().to_string())
        }
        ("GET", ["api", "v1", "namespaces", "mesh", "configmaps" | "secrets", _])
            if cluster.rbac_denied =>
        {
            forbidden()
        }
        ("GET", ["api", "v1", "namespaces", "mesh", "configmaps", name]) => {
            installed(&format!("ConfigMap/{name}")).unwrap_or_else(|| not_found("configmaps", name))
        }
        ("GET", ["api", "v1", "namespaces", "mesh", "secrets", name]) => {
            installed(&format!("Secret/{name}")).unwrap_or_else(|| not_found("secrets", name))
        }
        (
            "GET",
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => installed(&format!("MutatingWebhookConfiguration/{name}")).unwrap_or_else(|| {
            not_found(
                "mutatingwebhookconfigurations.admissionregistration.k8s.io",
                name,
            )
        }),
        ("GET", ["apis", "apiextensions.k8s.io", "v1", "customresourcedefinitions", name]) => {
            match cluster
                .installed
                .get(&format!("CustomResourceDefinition/{name}"))
            {
                Some(crd) if cluster.missing_crd != Some(*name) => {
                    let beta = cluster.beta_crd == Some(*name);
                    (200, established_crd(crd, beta).to_string())
                }
                _ => not_found("customresourcedefinitions.apiextensions.k8s.io", name),
            }
        }
        ("GET", ["apis", group @ "policy.mesh.io", "v1alpha1", plural]) => {
            custom_list(cluster, group, plural, None)
                .map_or_else(|| (404, NO_SUCH_RESOURCE.into()), |list| (200, list))
        }
        ("GET", ["apis", group @ "gateway.networking.k8s.io", "v1", "namespaces", ns, plural]) => {
            custom_list(cluster, group, plural, Some(ns))
                .map_or_else(|| (404, NO_SUCH_RESOURCE.into()), |list| (200, list))
        }
        ("GET", ["api", "v1", "namespaces", "demo", "serviceaccounts"]) => {
            (200, fixture("serviceaccounts-list.json"))
        }
        ("GET", ["api", "v1", "namespaces", ns, "services"]) => {
            // The recorded Services, those of the namespace.
            let mut list = fixture_json("services-list.json");
            let items: Vec<Value> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["metadata"]["namespace"] == *ns)
                .cloned()
                .collect();
            list["items"] = items.into();
            (200, list.to_string())
        }
        ("GET", ["apis", "rbac.authorization.k8s.io", "v1", "clusterroles", name]) => {
            installed(&format!("ClusterRole/{name}"))
                .unwrap_or_else(|| not_found("clusterroles.rbac.authorization.k8s.io", name))
        }
        ("POST", ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]) => {
            // The recorded answer, for the attributes asked about.
            let name = if cluster.rbac_denied {
                "selfsubjectaccessreview-denied.json"
            } else {
                "selfsubjectaccessreview-allowed.json"
            };
            let mut answer = fixture_json(name);
            let asked: Value = serde_json::from_slice(body).unwrap();
            answer["spec"] = asked["spec"].clone();
            (201, answer.to_string())
        }
        ("POST", ["api", "v1", "namespaces", "default", "pods"]) => {
            assert!(
                query.contains("dryRun=All"),
                "a real pod must never be created: {query}"
            );
            let mut pod: Value = serde_json::from_slice(body).unwrap();
            pod["metadata"]["name"] = "mesh-check-x7k2p".into();
            pod["metadata"]["namespace"] = "default".into();
            (201, pod.to_string())
        }
        (
            "POST",
            ["api", "v1", "namespaces", "mesh", "services", "https:mesh-injector:443", "proxy", "inject"],
        ) => {
            // What the injector answers: the proxy added to the reviewed pod.
            let review: Value = serde_json::from_slice(body).unwrap();
            let mut pod = review["request"]["object"].clone();
            let anchors = cluster.installed["ConfigMap/mesh-trust-anchors"]["data"]
                ["ca-bundle.crt"]
                .as_str()
                .unwrap();
            core::inject(
                &mut pod,
                &BTreeMap::new(),
                &ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", anchors),
            )
            .unwrap();
            let patch = json!([{"op": "add", "path": "/spec/initContainers", "value": pod["spec"]["initContainers"]}]);
            use base64::Engine as _;
            let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            (200, json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": true, "patchType": "JSONPatch", "patch": patch}}).to_string())
        }
        ("GET", ["api", "v1", "pods"]) | ("GET", ["api", "v1", "namespaces", "demo", "pods"]) => {
            let mut list = fixture_json("pods-list.json");
            let mut items = cluster.meshed_pods.clone();
            if segments.len() == 3 {
                items.extend(
                    control_plane_pods()["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .cloned(),
                );
            }
            list["items"] = items.into();
            (200, list.to_string())
        }
        ("GET", ["api", "v1", "namespaces", "demo", "pods", pod, "proxy", "metrics"]) => {
            assert!(pod.ends_with(":4191"), "{pod}");
            let expiry = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 86_400;
            (200, format!("# TYPE identity_cert_expiration_timestamp_seconds gauge\nidentity_cert_expiration_timestamp_seconds {expiry}\n# EOF\n"))
        }
        _ => (404, fixture("notfound-404.json")),
    }
}

/// The control plane as `mesh install` renders it with these certificate flags.
fn installed(cert_flags: &[String]) -> BTreeMap<String, Value> {
    let mut args = vec!["install", "--ignore-cluster"];
    args.extend(cert_flags.iter().map(String::as_str));
    render(&args)
        .1
        .into_iter()
        .map(|d| {
            (
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                ),
                d,
            )
        })
        .collect()
}

/// Runs `mesh check ARGS` against the fake cluster: (exit code, stdout, stderr).
async fn check(cluster: Cluster, args: &[&str]) -> (i32, String, String) {
    let api =
        fake_api_server(move |r| respond(&cluster, &r.method, &r.path, &r.query, &r.body)).await;
    mesh_on_cluster(api, "check", args).await
}

fn healthy() -> Cluster {
    Cluster {
        installed: installed(&cert_flags()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_healthy_control_plane_passes() {
    let (code, out, err) = check(healthy(), &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    golden("check.txt", &out);
    let (code, json, _) = check(healthy(), &["-o", "json"]).await;
    assert_eq!(code, 0);
    golden("check.json", &json);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["success"], true);
    assert_eq!(
        report["categories"][1]["checks"][4],
        json!({
            "description": "proxies are injected as classic sidecars",
            "result": "success",
            "detail": "the injector decides by the cluster's version (--native-sidecar=auto): \
                       the cluster runs 1.28, without native sidecars by default (1.29 and later)",
        }),
        "{json}"
    );
}

#[tokio::test]
async fn the_injector_decides_native_sidecars_on_1_30() {
    let cluster = Cluster {
        minor: Some("30"),
        ..healthy()
    };
    let (code, out, err) = check(cluster, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    golden("check-1.30.txt", &out);
    assert!(
        out.contains(
            "✔ proxies are injected as native sidecars\n    the injector decides by the \
             cluster's version (--native-sidecar=auto): the cluster runs 1.30, with native sidecars\n"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn an_injector_forced_to_native_sidecars_on_1_28_is_a_warning() {
    let cluster = Cluster {
        native_sidecar: Some("True"),
        ..healthy()
    };
    let (code, out, err) = check(cluster, &[]).await;
    assert_eq!(code, 0, "a warning does not fail the run: {out}{err}");
    assert!(
        out.contains(
            "‼ proxies are injected as native sidecars\n    the injector runs with \
             --native-sidecar=True, but the cluster runs 1.28, without native sidecars by default \
             (1.29 and later)\n    hint: meshed pods start only if"
        ),
        "{out}"
    );
    let cluster = Cluster {
        native_sidecar: Some("false"),
        minor: Some("30"),
        ..healthy()
    };
    let (_, out, _) = check(cluster, &[]).await;
    assert!(
        out.contains("✔ proxies are injected as classic sidecars\n    the injector runs with --native-sidecar=false (the cluster runs 1.30, with native sidecars)\n"),
        "{out}"
    );
}

#[tokio::test]
async fn a_missing_deployment_fails_with_the_api_message() {
    let cluster = Cluster {
        missing_deployment: Some("mesh-destination"),
        ..healthy()
    };
    let (code, out, _) = check(cluster, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("× the destination controller is ready\n    deployments.apps \"mesh-destination\" not found\n    hint: "), "{out}");
    assert!(out.contains("✔ the identity controller is ready"), "{out}");
    assert!(out.ends_with("Status check results are ×\n"), "{out}");
}

#[tokio::test]
async fn a_missing_or_outdated_crd_fails_with_how_to_install_the_crds() {
    let cluster = Cluster {
        missing_crd: Some("httpfaults.policy.mesh.io"),
        ..healthy()
    };
    let (code, out, _) = check(cluster, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "mesh-crds\n---------\n× the CRDs the mesh reads are installed\n    \
             httpfaults.policy.mesh.io is not installed\n    \
             hint: install them: mesh install --crds | kubectl apply -f -\n"
        ),
        "{out}"
    );
    // The other categories still run.
    assert!(
        out.contains("✔ the injector webhook answers and injects"),
        "{out}"
    );

    let cluster = Cluster {
        beta_crd: Some("httproutes.gateway.networking.k8s.io"),
        ..healthy()
    };
    let (code, out, _) = check(cluster, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("    httproutes.gateway.networking.k8s.io serves v1beta1, not v1\n"),
        "{out}"
    );

    // Nothing installed: every CRD is named.
    let (code, out, _) = check(Cluster::default(), &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "httproutes.gateway.networking.k8s.io is not installed; \
             grpcroutes.gateway.networking.k8s.io is not installed; \
             httpfaults.policy.mesh.io is not installed; \
             servers.policy.mesh.io is not installed; \
             authorizationpolicies.policy.mesh.io is not installed; \
             meshtlsauthentications.policy.mesh.io is not installed; \
             networkauthentications.policy.mesh.io is not installed; \
             httplocalratelimitpolicies.policy.mesh.io is not installed; \
             metaroutes.policy.mesh.io is not installed"
        ),
        "{out}"
    );
}

/// The policy of namespace demo as a user would apply it: Server `web-http` selects the
/// recorded web pods by their `http` port; Server `ghost` selects nothing; the
/// AuthorizationPolicies need a MeshTLSAuthentication that is missing (and the recorded
/// ServiceAccount `web`, which exists) and an HTTPRoute that is missing; the rate limit names a
/// Server that is missing; the MetaRoute's parent is the recorded `web-svc`, whose port is no
/// codec's, and its backend is missing.
const POLICY: &str = r#"
apiVersion: policy.mesh.io/v1alpha1
kind: Server
metadata: {name: web-http, namespace: demo}
spec: {podSelector: {matchLabels: {app: web}}, port: http, proxyProtocol: HTTP/1}
---
apiVersion: policy.mesh.io/v1alpha1
kind: Server
metadata: {name: ghost, namespace: demo}
spec: {podSelector: {matchExpressions: [{key: app, operator: In, values: [ghost]}]}, port: 80}
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-from-vote-bot, namespace: demo}
spec:
  targetRef: {group: policy.mesh.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
    - {group: policy.mesh.io, kind: MeshTLSAuthentication, name: vote-bot}
    - {group: "", kind: ServiceAccount, name: web}
---
apiVersion: policy.mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-api, namespace: demo}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: web-api}
  requiredAuthenticationRefs: [{group: policy.mesh.io, kind: MeshTLSAuthentication, name: web-clients}]
---
apiVersion: policy.mesh.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web-clients, namespace: demo}
spec: {identities: ["*.demo.serviceaccount.identity.mesh.cluster.local"]}
---
apiVersion: policy.mesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: web-rl, namespace: demo}
spec:
  targetRef: {group: policy.mesh.io, kind: Server, name: web}
  total: {requestsPerSecond: 100}
---
apiVersion: policy.mesh.io/v1alpha1
kind: MetaRoute
metadata: {name: web-meta, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web-svc, port: 80}]
  rules: [{backendRefs: [{name: cache, port: 6379}]}]
"#;

fn policy_objects() -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(POLICY)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

#[tokio::test]
async fn policy_that_refers_to_what_does_not_exist_fails_and_a_server_without_pods_warns() {
    let anchors = std::fs::read_to_string(testdata("certs/trust-anchors.pem")).unwrap();
    let cluster = Cluster {
        policy: policy_objects(),
        meshed_pods: meshed_pods(&anchors, &mesh_cli::install::version()),
        ..healthy()
    };
    let (code, out, _) = check(cluster.clone(), &[]).await;
    assert_eq!(code, 1, "{out}");
    let policy = out
        .split_once("mesh-policy\n-----------\n")
        .map(|(_, rest)| rest.split("\n\n").next().unwrap())
        .unwrap_or_else(|| panic!("no mesh-policy category: {out}"));
    assert_eq!(
        policy,
        "‼ every Server selects a pod\n    \
         demo/ghost selects no pod\n    \
         hint: compare the Server's podSelector and port with the pods' labels and container \
         ports: kubectl get pods -n NAMESPACE --show-labels (a Server written before its \
         workload is fine)\n\
         × every AuthorizationPolicy targets a Server, route or Namespace that exists\n    \
         demo/web-api: HTTPRoute demo/web-api does not exist\n    \
         hint: create what spec.targetRef names in the policy's namespace, or fix it: until then \
         the policy authorizes nothing\n\
         × every authentication an AuthorizationPolicy requires exists\n    \
         demo/web-from-vote-bot: MeshTLSAuthentication demo/vote-bot does not exist\n    \
         hint: create the authentication, or fix spec.requiredAuthenticationRefs: a policy that \
         requires a missing one allows no one\n\
         × every HTTPLocalRateLimitPolicy targets a Server that exists\n    \
         demo/web-rl: Server demo/web does not exist\n    \
         hint: create the Server in the policy's namespace, or fix spec.targetRef: until then \
         nothing is limited\n\
         ‼ every MetaRoute's parent is a codec Service port and its backends exist\n    \
         demo/web-meta: port 80 of parent Service demo/web-svc is not a codec port \
         (appProtocol unset, not mesh.io/redis or mesh.io/thrift); demo/web-meta: backend \
         Service demo/cache port 6379 does not exist\n    \
         hint: a MetaRoute is served only on a Service port whose appProtocol is mesh.io/redis \
         or mesh.io/thrift, and a missing backend's share of requests fails: fix \
         spec.parentRefs or backendRefs, or create the Service"
    );
    // The other categories are unaffected.
    assert!(
        out.contains("✔ the CRDs the mesh reads are installed"),
        "{out}"
    );

    // Without the Gateway API CRDs, no HTTPRoute can exist.
    let (_, out, _) = check(
        Cluster {
            missing_crd: Some("httproutes.gateway.networking.k8s.io"),
            ..cluster
        },
        &[],
    )
    .await;
    assert!(
        out.contains("    demo/web-api: HTTPRoute demo/web-api does not exist\n"),
        "{out}"
    );
}

#[tokio::test]
async fn without_the_policy_crds_there_is_no_policy_to_check() {
    let mut cluster = healthy();
    cluster
        .installed
        .retain(|key, _| !key.ends_with(".policy.mesh.io") || key.contains("httpfaults"));
    cluster.policy = policy_objects();
    let (code, out, _) = check(cluster, &[]).await;
    assert_eq!(code, 1, "the CRDs are missing: {out}");
    assert!(
        out.contains(
            "mesh-policy\n-----------\n✔ no inbound policy to check\n    \
             the policy.mesh.io CRDs are not installed\n\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("servers.policy.mesh.io is not installed; authorizationpolicies"),
        "{out}"
    );
}

#[tokio::test]
async fn an_issuer_expiring_within_60_days_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(3650 * 86_400)).unwrap();
    let issuer =
        ca::new_issuer(&anchor, "cluster.local", Duration::from_secs(30 * 86_400)).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let mut flags = vec![
        "--identity-trust-anchors-file".to_string(),
        write("anchors.pem", &anchor.cert_pem),
        "--identity-issuer-certificate-file".into(),
        write("issuer.crt", &issuer.cert_pem),
        "--identity-issuer-key-file".into(),
        write("issuer.key", &issuer.key_pem),
    ];
    flags.extend(cert_flags().into_iter().skip(6));
    let cluster = Cluster {
        installed: installed(&flags),
        ..Default::default()
    };
    let (code, out, _) = check(cluster, &[]).await;
    assert_eq!(code, 0, "a warning does not fail the run: {out}");
    assert!(
        out.contains("‼ the issuer certificate is not expiring within 60 days\n    it expires on "),
        "{out}"
    );
    assert!(out.contains("(in 29 days)"), "{out}");
    assert!(
        out.contains("✔ the trust anchor is not expiring within 60 days"),
        "{out}"
    );
}

#[tokio::test]
async fn rbac_denials_fail_with_a_hint() {
    let cluster = Cluster {
        rbac_denied: true,
        ..healthy()
    };
    let (code, out, _) = check(cluster.clone(), &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("× the trust anchors are valid\n    pods is forbidden"),
        "{out}"
    );
    assert!(
        out.contains("hint: your user lacks the permission"),
        "{out}"
    );
    let (code, out, _) = check(
        Cluster {
            installed: BTreeMap::new(),
            ..cluster
        },
        &["--pre"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("× can create the cluster-wide resources install needs\n    not allowed to create namespaces, clusterroles.rbac.authorization.k8s.io"), "{out}");
}

#[tokio::test]
async fn pre_passes_on_an_empty_cluster_and_fails_on_an_installed_one() {
    let (code, out, err) = check(Cluster::default(), &["--pre"]).await;
    assert_eq!(code, 0, "{out}{err}");
    golden("check-pre.txt", &out);
    assert!(
        out.contains(
            "✔ the Kubernetes version is supported\n✔ proxies are injected as classic sidecars\n    \
             the cluster runs 1.28, without native sidecars by default (1.29 and later)\n"
        ),
        "{out}"
    );
    let on_1_30 = Cluster {
        minor: Some("30"),
        ..Cluster::default()
    };
    let (code, out, err) = check(on_1_30, &["--pre"]).await;
    assert_eq!(code, 0, "{out}{err}");
    golden("check-pre-1.30.txt", &out);
    assert!(
        out.contains("✔ proxies are injected as native sidecars\n    the cluster runs 1.30, with native sidecars\n"),
        "{out}"
    );
    let (code, out, _) = check(healthy(), &["--pre"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("× the control plane namespace does not exist yet"),
        "{out}"
    );
    assert!(
        out.contains(
            "found mutatingwebhookconfiguration/mesh-proxy-injector, clusterrole/mesh-destination"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn proxies_are_ready_current_and_certified() {
    let mut cluster = healthy();
    let anchors = std::fs::read_to_string(testdata("certs/trust-anchors.pem")).unwrap();
    cluster.meshed_pods = meshed_pods(&anchors, &mesh_cli::install::version());
    let (code, out, err) = check(cluster.clone(), &["--proxy", "-n", "demo"]).await;
    assert_eq!(code, 0, "{out}{err}");
    golden("check-proxy.txt", &out);

    // An old proxy with other trust anchors, and one not ready.
    let other = ca::new_trust_anchor("cluster.local", Duration::from_secs(86_400)).unwrap();
    let mut pods = meshed_pods(&other.cert_pem, "v0.0.9");
    pods[1]["status"]["initContainerStatuses"][1]["ready"] = false.into();
    cluster.meshed_pods = pods;
    let (code, out, _) = check(cluster.clone(), &["--proxy"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("× the proxies are ready\n    not ready: demo/web-85489d9c68-"),
        "{out}"
    );
    assert!(
        out.contains("‼ the proxies run this CLI's version"),
        "{out}"
    );
    assert!(
        out.contains("× the proxies trust the current trust anchors"),
        "{out}"
    );

    cluster.meshed_pods.clear();
    let (code, out, _) = check(cluster, &["--proxy", "-n", "demo"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("× there are meshed pods"), "{out}");
}

#[tokio::test]
async fn an_unreachable_cluster_fails_at_once_and_wait_retries_until_its_deadline() {
    let start = std::time::Instant::now();
    let out = mesh(
        &[
            "check",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--wait",
            "3s",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "waited {:?}",
        start.elapsed()
    );
    assert!(
        stdout(&out).contains("× can initialize the client"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("waiting for the checks of kubernetes-api to pass"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn wait_retries_a_failing_category_and_prints_it_once_when_it_passes() {
    let cluster = Cluster {
        missing_deployment: Some("mesh-destination"),
        missing_for: Some(Arc::new(AtomicUsize::new(1))),
        ..healthy()
    };
    let (code, out, err) = check(cluster, &["--wait", "1m"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("✔ the destination controller is ready"),
        "{out}"
    );
    assert_eq!(out.matches("mesh-control-plane\n").count(), 1, "{out}");
    assert_eq!(out.matches("kubernetes-api\n").count(), 1, "{out}");
    assert!(
        err.contains("waiting for the checks of mesh-control-plane to pass"),
        "{err}"
    );
}

#[tokio::test]
async fn with_a_namespace_proxy_checks_list_only_that_namespace() {
    let mut cluster = healthy();
    let anchors = std::fs::read_to_string(testdata("certs/trust-anchors.pem")).unwrap();
    cluster.meshed_pods = meshed_pods(&anchors, &mesh_cli::install::version());
    cluster.namespace_only = true;
    let (code, out, err) = check(cluster.clone(), &["--proxy", "-n", "demo"]).await;
    assert_eq!(code, 0, "{out}{err}");
    golden("check-proxy.txt", &out);
    // Without -n, --proxy means every namespace, which this user may not list.
    let (code, out, _) = check(cluster, &["--proxy"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("× there are meshed pods\n    pods is forbidden: User \"system:serviceaccount:demo:web\" cannot list resource \"pods\" in API group \"\" at the cluster scope\n"),
        "{out}"
    );
}

// === an API server that does not answer ===

/// The injector webhook through the API server's service proxy.
const INJECT: &str = "/api/v1/namespaces/mesh/services/https:mesh-injector:443/proxy/inject";
/// A test's outer deadline: far beyond what any run here takes.
const DEADLINE: Duration = Duration::from_secs(120);

/// Waits for `child` to end (polling), reading its stdout as it comes; past the test's outer
/// deadline, kills it and fails.
fn finish(mut child: Child, stdout: &mut ChildStdout, out: &mut String) -> (i32, String) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        out.push_str(&read_available(stdout));
        if let Some(status) = child.try_wait().unwrap() {
            out.push_str(&read_available(stdout));
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("mesh check had not ended after {DEADLINE:?}; its output so far:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the child has written to `stdout` so far (set non-blocking by [`spawn`]).
fn read_available(stdout: &mut ChildStdout) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading mesh's stdout: {e}"),
        }
    }
    String::from_utf8(bytes).unwrap()
}

/// Starts `mesh check ARGS` on the cluster at `api`, its stdout read without blocking.
fn spawn(api: std::net::SocketAddr, args: &[&str]) -> (Child, ChildStdout, tempfile::TempDir) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd as _;
    let (mut child, dir) = spawn_mesh_on_cluster(api, "check", args);
    let stdout = child.stdout.take().unwrap();
    fcntl(stdout.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    (child, stdout, dir)
}

/// Runs `mesh check ARGS` on the cluster at `api` to its end: (exit code, stdout, stderr).
async fn check_bounded(api: std::net::SocketAddr, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, mut stdout, _dir) = spawn(api, &args);
        let mut out = String::new();
        let (code, err) = finish(child, &mut stdout, &mut out);
        (code, out, err)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn check_on_a_cluster_whose_injector_never_answers_streams_and_ends() {
    let cluster = healthy();
    let (asked, hung) = std::sync::mpsc::channel();
    let asked = std::sync::Mutex::new(asked);
    let hangs = move |r: &ApiRequest| {
        (r.path == INJECT).then(|| {
            asked.lock().unwrap().send(()).unwrap();
            Hang::Never
        })
    };
    let api = fake_api_server_hanging(hangs, move |r| {
        respond(&cluster, &r.method, &r.path, &r.query, &r.body)
    })
    .await;
    let (code, before, out, err) = tokio::task::spawn_blocking(move || {
        let (child, mut stdout, _dir) = spawn(api, &["--check-timeout", "1s"]);
        hung.recv_timeout(DEADLINE)
            .expect("mesh check asks the injector");
        // What mesh wrote before it asked the injector, which never answers.
        let before = read_available(&mut stdout);
        let mut out = before.clone();
        let (code, err) = finish(child, &mut stdout, &mut out);
        (code, before, out, err)
    })
    .await
    .unwrap();
    // The categories before the hanging check were printed before it started.
    assert!(
        before.starts_with("kubernetes-api\n") && before.contains("\nmesh-control-plane\n"),
        "{before}"
    );
    assert!(
        before.contains(
            "mesh-identity\n-------------\n✔ the trust anchor is valid\n✔ the trust anchor is \
             not expiring within 60 days\n✔ the issuer certificate is valid\n✔ the issuer \
             certificate is not expiring within 60 days\n✔ the issuer certificate is signed by the \
             trust anchors\n\n"
        ),
        "{before}"
    );
    // The hanging check ran out of time and said what it waited for; the run ended.
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "× the injector webhook answers and injects\n    no answer within 1s from the API \
             server's service proxy to mesh-injector:443\n    hint: check the injector's pods: \
             kubectl -n mesh get pods -l mesh.io/control-plane-component=injector; raise \
             --check-timeout on a slow cluster\n"
        ),
        "{out}"
    );
    assert!(out.ends_with("Status check results are ×\n"), "{out}");
    // JSON is still one document, at the end.
    let cluster = healthy();
    let api = fake_api_server_hanging(
        |r| (r.path == INJECT).then_some(Hang::Never),
        move |r| respond(&cluster, &r.method, &r.path, &r.query, &r.body),
    )
    .await;
    let (code, json, err) = check_bounded(api, &["--check-timeout", "1s", "-o", "json"]).await;
    assert_eq!(code, 1, "{json}{err}");
    let report: Value = serde_json::from_str(&json).unwrap();
    let webhook = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["categoryName"] == "mesh-webhook")
        .unwrap();
    let last = &webhook["checks"][3];
    assert_eq!(last["result"], "error", "{json}");
    assert_eq!(
        last["error"],
        "no answer within 1s from the API server's service proxy to mesh-injector:443"
    );
}

#[tokio::test]
async fn a_proxy_whose_answer_stalls_after_its_headers_fails_its_check_in_time() {
    let mut cluster = healthy();
    let anchors = std::fs::read_to_string(testdata("certs/trust-anchors.pem")).unwrap();
    cluster.meshed_pods = meshed_pods(&anchors, &mesh_cli::install::version());
    let stalled = cluster.meshed_pods[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = format!("/api/v1/namespaces/demo/pods/{stalled}:4191/proxy/metrics");
    let api = fake_api_server_hanging(
        move |r| (r.path == metrics).then_some(Hang::AfterHeaders(200)),
        move |r| respond(&cluster, &r.method, &r.path, &r.query, &r.body),
    )
    .await;
    let (code, out, err) =
        check_bounded(api, &["--proxy", "-n", "demo", "--check-timeout", "1s"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "× the proxies have a valid certificate\n    demo/{stalled} (no answer within 1s from \
             the API server's pod proxy to demo/{stalled}:4191)\n    hint: see the proxy's logs: \
             kubectl -n demo logs {stalled} -c mesh-proxy; raise --check-timeout on a slow cluster\n"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn an_api_server_that_accepts_and_says_nothing_fails_in_time() {
    let api = silent_api_server().await;
    for args in [
        &["--check-timeout", "1s"][..],
        &["--pre", "--check-timeout", "1s"],
    ] {
        let (code, out, err) = check_bounded(api, args).await;
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(
            out,
            "kubernetes-api\n--------------\n✔ can initialize the client\n× can query the \
             Kubernetes API\n    no answer within 1s from the API server\n    hint: check that \
             the cluster is reachable (kubectl cluster-info); raise --check-timeout on a slow \
             cluster\n\nStatus check results are ×\n",
            "{args:?}"
        );
    }
}
