//! `mesh install` / `mesh uninstall`: golden output with fixed certificates, every object checked
//! against the API's types, the CRDs printed first (and alone with `--crds`), and the errors of
//! bad flags.

mod support;

use std::time::SystemTime;

use base64::Engine as _;
use mesh_api::identity::ca;
use serde_json::Value;
use support::*;

fn install(extra: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["install", "--ignore-cluster"];
    let certs = cert_flags();
    args.extend(certs.iter().map(String::as_str));
    args.extend(extra);
    render(&args)
}

/// `mesh install --crds`: its text and its documents.
fn crds() -> (String, Vec<Value>) {
    render(&["install", "--crds"])
}

/// The output of `mesh install` without the CRDs, which it must start with (right after its
/// header comment): the CRDs are pinned once, in `install-crds.yaml`.
fn without_crds(text: &str) -> String {
    let (crds, _) = crds();
    let (_, crds) = crds.split_once('\n').expect("a header line");
    let start = text.find("---\n").expect("documents");
    let (header, rest) = text.split_at(start);
    let rest = rest.strip_prefix(crds).unwrap_or_else(|| {
        panic!("mesh install does not start with the CRDs of mesh install --crds:\n{text}")
    });
    format!("{header}{rest}")
}

fn b64(v: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a string"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn install_matches_the_golden_file_and_the_api_types() {
    let (text, docs) = install(&[]);
    golden("install.yaml", &without_crds(&text));
    assert_typed(&docs);
    for (kind, name) in [
        ("Namespace", "mesh"),
        ("ServiceAccount", "mesh-identity"),
        ("ClusterRole", "mesh-destination"),
        ("Deployment", "mesh-destination"),
        ("Deployment", "mesh-identity"),
        ("Deployment", "mesh-injector"),
        ("Service", "mesh-injector"),
        ("ConfigMap", "mesh-trust-anchors"),
        ("Secret", "mesh-identity-issuer"),
        ("MutatingWebhookConfiguration", "mesh-proxy-injector"),
    ] {
        find(&docs, kind, name);
    }
}

#[test]
fn ha_renders_replicas_anti_affinity_and_budgets() {
    let (text, docs) = install(&["--ha"]);
    golden("install-ha.yaml", &without_crds(&text));
    assert_typed(&docs);
    for name in ["mesh-destination", "mesh-identity", "mesh-injector"] {
        let d = find(&docs, "Deployment", name);
        assert_eq!(d["spec"]["replicas"], 3);
        assert!(d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
        find(&docs, "PodDisruptionBudget", name);
    }
}

#[test]
fn flags_and_set_override_the_defaults() {
    let (_, docs) = install(&[
        "--proxy-image",
        "registry.example/mesh/proxy",
        "--controller-image",
        "registry.example/mesh/controller",
        "--image-tag",
        "v9.9.9",
        "--set",
        "controller.logLevel=debug",
        "--set",
        "webhook.timeoutSeconds=5",
    ]);
    let d = find(&docs, "Deployment", "mesh-destination");
    let spec = &d["spec"]["template"]["spec"];
    let app = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "destination")
        .unwrap();
    assert_eq!(app["image"], "registry.example/mesh/controller:v9.9.9");
    assert!(app["args"]
        .as_array()
        .unwrap()
        .contains(&"--log-level=debug".into()));
    let proxy = &spec["containers"][0];
    assert_eq!(proxy["name"], "mesh-proxy");
    assert_eq!(proxy["image"], "registry.example/mesh/proxy:v9.9.9");
    let hook = find(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    assert_eq!(hook["webhooks"][0]["timeoutSeconds"], 5);
}

#[test]
fn the_control_plane_is_never_injected_and_failures_never_block_pods() {
    let (_, docs) = install(&[]);
    let hook = &find(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector")["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert!(hook["timeoutSeconds"].as_u64().unwrap() <= 10);
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert_eq!(
        excluded["values"],
        serde_json::json!(["mesh", "kube-system"])
    );
    // The identity controller runs without a proxy; the others are meshed at install time.
    let identity = find(&docs, "Deployment", "mesh-identity");
    assert!(identity["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    assert_eq!(
        identity["spec"]["template"]["spec"]["serviceAccountName"],
        "mesh-identity"
    );
}

#[test]
fn the_certificates_fit_together() {
    let (_, docs) = install(&[]);
    let anchors = find(&docs, "ConfigMap", "mesh-trust-anchors")["data"]["ca-bundle.crt"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        anchors,
        std::fs::read_to_string(testdata("certs/trust-anchors.pem")).unwrap()
    );
    let tls = find(&docs, "Secret", "mesh-injector-tls");
    let hook = find(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    let bundle = b64(&hook["webhooks"][0]["clientConfig"]["caBundle"]);
    let chain = ca::certs_from_pem(&b64(&tls["data"]["tls.crt"]), "webhook").unwrap();
    let roots = ca::certs_from_pem(&bundle, "bundle").unwrap();
    ca::verify_chain(&chain, &roots, "mesh-injector.mesh.svc", SystemTime::now()).unwrap();
}

#[test]
fn fresh_certificates_are_generated_per_install() {
    let a = stdout(&mesh(&["install", "--ignore-cluster"], None));
    let b = stdout(&mesh(&["install", "--ignore-cluster"], None));
    let anchors = |t: &str| {
        find(&docs(t), "ConfigMap", "mesh-trust-anchors")["data"]["ca-bundle.crt"].clone()
    };
    assert_ne!(anchors(&a), anchors(&b));
    assert_typed(&docs(&a));
}

#[test]
fn bad_flags_are_errors_with_nothing_on_stdout() {
    let anchors = testdata_arg("certs/trust-anchors.pem");
    let webhook_ca = testdata_arg("certs/webhook-ca.crt");
    let issuer = testdata_arg("certs/issuer.crt");
    let webhook_key = testdata_arg("certs/webhook.key");
    for (args, message) in [
        (vec!["--set", "nope=1"], "no value \"nope\""),
        (vec!["--set", "ha=maybe"], "is not true or false"),
        (vec!["--set", "controller"], "expected KEY=VALUE"),
        (vec!["--set", "trustDomain=a b"], "trustDomain"),
        (
            vec!["--identity-trust-anchors-file", anchors.as_str()],
            "go together",
        ),
        (
            // The webhook CA as trust anchors: the issuer does not chain to it.
            vec![
                "--identity-trust-anchors-file",
                webhook_ca.as_str(),
                "--identity-issuer-certificate-file",
                issuer.as_str(),
                "--identity-issuer-key-file",
                webhook_key.as_str(),
            ],
            "does not belong",
        ),
    ] {
        let mut all = vec!["install", "--ignore-cluster"];
        all.extend(args.iter().copied());
        let out = mesh(&all, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn install_without_a_cluster_says_how_to_render_anyway() {
    let out = mesh(
        &["install", "--kubeconfig", "/nonexistent/kubeconfig"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("--ignore-cluster"),
        "{}",
        stderr(&out)
    );
}

/// The control plane's proxies: `(init containers, containers)` of Deployment `name`.
fn pod_shape(docs: &[Value], name: &str) -> (Vec<String>, Vec<String>) {
    let spec = &find(docs, "Deployment", name)["spec"]["template"]["spec"];
    let names = |list: &str| -> Vec<String> {
        spec[list]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    (names("initContainers"), names("containers"))
}

/// The injector's `--native-sidecar=…` argument.
fn injector_mode(docs: &[Value]) -> String {
    let containers =
        &find(docs, "Deployment", "mesh-injector")["spec"]["template"]["spec"]["containers"];
    let injector = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "injector")
        .unwrap();
    injector["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--native-sidecar="))
        .collect()
}

/// Without the header comment, which says why.
fn body(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("# "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Regression: on a 1.28 cluster (no native sidecars by default) the API server refused the
/// destination and injector Deployments: `initContainers[1].livenessProbe: Forbidden: may not
/// be set for init containers without restartPolicy=Always`.
#[tokio::test]
async fn native_sidecars_where_the_cluster_has_none() {
    let classic = (
        vec!["mesh-init".to_string()],
        vec!["mesh-proxy".to_string(), "injector".to_string()],
    );
    let native = (
        vec!["mesh-init".to_string(), "mesh-proxy".to_string()],
        vec!["injector".to_string()],
    );
    let certs = cert_flags();
    let certs: Vec<&str> = certs.iter().map(String::as_str).collect();

    // Without a cluster: classic, which every version runs; the injector decides for itself.
    let (offline, docs) = install(&[]);
    assert_eq!(pod_shape(&docs, "mesh-injector"), classic);
    assert_eq!(injector_mode(&docs), "auto");
    assert!(offline.contains("# proxies: classic sidecars (no cluster was asked"));

    // A 1.28 cluster: classic; a 1.30 one: native.
    let (code, out, err) = mesh_on_cluster(bare_cluster("28").await, "install", &certs).await;
    assert_eq!(code, 0, "{err}");
    let docs = support::docs(&out);
    assert_eq!(pod_shape(&docs, "mesh-injector"), classic);
    assert_eq!(pod_shape(&docs, "mesh-destination").0, classic.0);
    assert!(
        out.contains("# proxies: classic sidecars (the cluster runs 1.28"),
        "{out}"
    );
    assert_eq!(body(&out), body(&offline));

    let (code, out, err) = mesh_on_cluster(bare_cluster("30").await, "install", &certs).await;
    assert_eq!(code, 0, "{err}");
    let docs = support::docs(&out);
    assert_eq!(pod_shape(&docs, "mesh-injector"), native);
    assert_eq!(injector_mode(&docs), "auto");
    assert!(
        out.contains("# proxies: native sidecars (the cluster runs 1.30"),
        "{out}"
    );

    // Asked for, on any cluster or none; the injector is told too.
    let (asked, docs) = install(&["--set", "proxy.nativeSidecar=true"]);
    golden("install-native.yaml", &without_crds(&asked));
    assert_eq!(pod_shape(&docs, "mesh-injector"), native);
    assert_eq!(injector_mode(&docs), "true");
    assert_eq!(body(&asked).replace("=true", "=auto"), body(&out));
    let mut set_false = certs.clone();
    set_false.extend(["--set", "proxy.nativeSidecar=false"]);
    let (_, out, _) = mesh_on_cluster(bare_cluster("30").await, "install", &set_false).await;
    let docs = support::docs(&out);
    assert_eq!(pod_shape(&docs, "mesh-injector"), classic);
    assert_eq!(injector_mode(&docs), "false");
}

#[test]
fn uninstall_lists_what_to_delete_webhook_first_crds_last() {
    let (text, docs) = render(&["uninstall"]);
    golden("uninstall.yaml", &text);
    assert_eq!(docs[0]["kind"], "MutatingWebhookConfiguration");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let namespace = kinds.iter().position(|k| *k == "Namespace").unwrap();
    assert!(kinds[namespace + 1..]
        .iter()
        .all(|k| *k == "CustomResourceDefinition"));
    let names: Vec<&str> = docs[namespace + 1..]
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, CRD_NAMES);
}

// === the CRDs ===

const CRD_NAMES: [&str; 9] = [
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "httpfaults.policy.mesh.io",
    "servers.policy.mesh.io",
    "authorizationpolicies.policy.mesh.io",
    "meshtlsauthentications.policy.mesh.io",
    "networkauthentications.policy.mesh.io",
    "httplocalratelimitpolicies.policy.mesh.io",
    "metaroutes.policy.mesh.io",
];

/// The files of `manifests/crds/`, in the order `mesh install` prints them.
const CRD_FILES: [&str; 9] = [
    "httproutes.yaml",
    "grpcroutes.yaml",
    "httpfaults.yaml",
    "servers.yaml",
    "authorizationpolicies.yaml",
    "meshtlsauthentications.yaml",
    "networkauthentications.yaml",
    "httplocalratelimitpolicies.yaml",
    "metaroutes.yaml",
];

/// The CustomResourceDefinition `doc`, typed (which also proves it is one).
fn crd(
    doc: &Value,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

#[test]
fn crds_prints_exactly_the_crds_without_a_cluster() {
    let (text, docs) = crds();
    golden("install-crds.yaml", &text);
    assert!(text.starts_with("# mesh v"), "{text}");
    assert_typed(&docs);
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, CRD_NAMES);
    // What manifests/crds/ holds, object for object.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
    let files: Vec<Value> = CRD_FILES
        .iter()
        .flat_map(|f| support::docs(&std::fs::read_to_string(dir.join(f)).unwrap()))
        .collect();
    assert_eq!(docs, files);

    for doc in &docs[..2] {
        let crd = crd(doc);
        let annotations = crd.metadata.annotations.unwrap();
        assert_eq!(
            annotations["gateway.networking.k8s.io/bundle-version"],
            "v1.2.0"
        );
        assert_eq!(annotations["gateway.networking.k8s.io/channel"], "standard");
        assert!(annotations.contains_key("api-approved.kubernetes.io"));
        assert_eq!(crd.spec.group, "gateway.networking.k8s.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        let [v1] = &crd.spec.versions[..] else {
            panic!("one version: {:?}", crd.spec.versions)
        };
        assert_eq!(
            (v1.name.as_str(), v1.served, v1.storage),
            ("v1", true, true)
        );
        assert!(v1.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_value(&v1.schema).unwrap()["openAPIV3Schema"].clone();
        let conditions = &schema["properties"]["status"]["properties"]["parents"]["items"]
            ["properties"]["conditions"]["items"];
        assert_eq!(
            conditions["properties"]["status"]["enum"],
            serde_json::json!(["True", "False", "Unknown"])
        );
        let rule = &schema["properties"]["spec"]["properties"]["rules"]["items"]["properties"];
        let filter = &rule["filters"]["items"]["properties"];
        assert!(filter["extensionRef"].is_object() && filter["requestMirror"].is_object());
        let backend = &rule["backendRefs"]["items"]["properties"];
        assert_eq!(backend["weight"]["default"], 1);
        assert_eq!(backend["kind"]["default"], "Service");
    }
    let http = serde_json::to_value(&crd(&docs[0]).spec.versions[0].schema).unwrap();
    let rule = &http["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["items"]
        ["properties"];
    for field in ["matches", "filters", "backendRefs", "timeouts", "retry"] {
        assert!(rule[field].is_object(), "HTTPRoute rules[].{field}");
    }
    let fault = crd(&docs[2]);
    assert_eq!(fault.spec.group, "policy.mesh.io");
    assert_eq!(fault.spec.scope, "Namespaced");
    assert_eq!(fault.spec.names.short_names, Some(vec!["hf".to_string()]));
    assert_eq!(fault.spec.versions[0].name, "v1alpha1");
    assert!(fault.spec.versions[0].additional_printer_columns.is_some());

    // The inbound policy resources: Linkerd's kinds under policy.mesh.io/v1alpha1, each with
    // a required spec, printer columns and the enums and rules the API server checks (the
    // cluster tier, tests/tests/kube_crds.rs, proves they hold).
    let policy: Vec<_> = docs[3..8].iter().map(crd).collect();
    let kinds: Vec<&str> = policy.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Server",
            "AuthorizationPolicy",
            "MeshTLSAuthentication",
            "NetworkAuthentication",
            "HTTPLocalRateLimitPolicy"
        ]
    );
    for c in &policy {
        assert_eq!(c.spec.group, mesh_api::inbound::POLICY_GROUP);
        assert_eq!(c.spec.scope, "Namespaced");
        let [v] = &c.spec.versions[..] else {
            panic!("one version: {:?}", c.spec.versions)
        };
        assert_eq!(
            (v.name.as_str(), v.served, v.storage),
            ("v1alpha1", true, true)
        );
        assert!(
            v.additional_printer_columns.is_some(),
            "{}",
            c.spec.names.kind
        );
        let schema = serde_json::to_value(&v.schema).unwrap()["openAPIV3Schema"].clone();
        assert_eq!(schema["required"], serde_json::json!(["spec"]));
    }
    let spec = |i: usize| {
        serde_json::to_value(&policy[i].spec.versions[0].schema).unwrap()["openAPIV3Schema"]
            ["properties"]["spec"]
            .clone()
    };
    let server = spec(0);
    assert_eq!(
        server["properties"]["proxyProtocol"]["enum"],
        serde_json::json!(["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"])
    );
    assert_eq!(
        server["properties"]["accessPolicy"]["enum"],
        serde_json::json!(["deny", "audit"])
    );
    assert_eq!(
        server["properties"]["port"]["x-kubernetes-int-or-string"],
        true
    );
    let mesh_tls = spec(2);
    assert_eq!(
        mesh_tls["x-kubernetes-validations"][0]["rule"],
        "has(self.identities) != has(self.identityRefs)"
    );
    let rate_limit = spec(4);
    assert_eq!(
        rate_limit["properties"]["total"]["properties"]["requestsPerSecond"]["minimum"],
        1.0
    );

    // MetaRoute: the routes of a codec's Service port by their metadata.
    let meta = crd(&docs[8]);
    assert_eq!(
        (meta.spec.group.as_str(), meta.spec.names.kind.as_str()),
        ("policy.mesh.io", "MetaRoute")
    );
    assert_eq!(meta.spec.names.plural, "metaroutes");
    assert_eq!(meta.spec.scope, "Namespaced");
    let [v] = &meta.spec.versions[..] else {
        panic!("one version: {:?}", meta.spec.versions)
    };
    assert_eq!(
        (v.name.as_str(), v.served, v.storage),
        ("v1alpha1", true, true)
    );
    assert!(v.additional_printer_columns.is_some());
    let schema = serde_json::to_value(&v.schema).unwrap()["openAPIV3Schema"].clone();
    assert_eq!(schema["required"], serde_json::json!(["spec"]));
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["parentRefs"]));
    assert_eq!(
        spec["properties"]["parentRefs"]["items"]["properties"]["kind"]["enum"],
        serde_json::json!(["Service"])
    );
    let rule = &spec["properties"]["rules"]["items"]["properties"];
    let metadata = &rule["matches"]["items"]["properties"]["metadata"]["items"];
    assert_eq!(
        metadata["properties"]["type"]["enum"],
        serde_json::json!(["Exact", "Prefix", "RegularExpression"])
    );
    assert_eq!(metadata["required"], serde_json::json!(["key", "value"]));
    assert_eq!(
        rule["backendRefs"]["items"]["required"],
        serde_json::json!(["name", "port"])
    );
    assert!(rule["requestMutation"].is_object() && rule["timeout"]["pattern"].is_string());

    // The rendering flags do not apply to the CRDs: asking for both is a usage error.
    let out = mesh(&["install", "--crds", "--ha"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn install_starts_with_the_crds_then_the_control_plane() {
    let (_, crds) = crds();
    let (_, docs) = install(&[]);
    assert_eq!(docs[..crds.len()], crds[..]);
    assert!(docs[crds.len()..]
        .iter()
        .all(|d| d["kind"] != "CustomResourceDefinition"));
    assert_eq!(docs[crds.len()]["kind"], "Namespace");
}

#[test]
fn the_destination_controller_may_read_routes_faults_and_inbound_policy_and_report_on_routes() {
    let (_, docs) = install(&[]);
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_json::from_value(find(&docs, "ClusterRole", "mesh-destination").clone()).unwrap();
    let rules = role.rules.unwrap();
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |list: &Option<Vec<String>>, x: &str| {
                list.as_ref().is_some_and(|l| l.iter().any(|v| v == x))
            };
            has(&r.api_groups, group)
                && has(&r.resources, resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for (group, resource, verbs) in [
        (
            "gateway.networking.k8s.io",
            "httproutes",
            &["get", "list", "watch"][..],
        ),
        (
            "gateway.networking.k8s.io",
            "grpcroutes",
            &["get", "list", "watch"],
        ),
        ("policy.mesh.io", "httpfaults", &["get", "list", "watch"]),
        ("policy.mesh.io", "servers", &["get", "list", "watch"]),
        (
            "policy.mesh.io",
            "authorizationpolicies",
            &["get", "list", "watch"],
        ),
        (
            "policy.mesh.io",
            "meshtlsauthentications",
            &["get", "list", "watch"],
        ),
        (
            "policy.mesh.io",
            "networkauthentications",
            &["get", "list", "watch"],
        ),
        (
            "policy.mesh.io",
            "httplocalratelimitpolicies",
            &["get", "list", "watch"],
        ),
        ("policy.mesh.io", "metaroutes", &["get", "list", "watch"]),
        (
            "gateway.networking.k8s.io",
            "httproutes/status",
            &["get", "patch", "update"],
        ),
        (
            "gateway.networking.k8s.io",
            "grpcroutes/status",
            &["get", "patch", "update"],
        ),
    ] {
        for verb in verbs {
            assert!(allowed(group, resource, verb), "{verb} {group} {resource}");
        }
    }
    // Reading, not writing: no create or delete of routes, faults or inbound policy, no write
    // of their specs.
    for resource in [
        "httproutes",
        "grpcroutes",
        "httpfaults",
        "servers",
        "authorizationpolicies",
        "meshtlsauthentications",
        "networkauthentications",
        "httplocalratelimitpolicies",
        "metaroutes",
        "metaroutes/status",
    ] {
        for verb in ["create", "update", "patch", "delete"] {
            for group in ["gateway.networking.k8s.io", "policy.mesh.io"] {
                assert!(!allowed(group, resource, verb), "{verb} {group} {resource}");
            }
        }
    }
}

/// `proxy.defaultInboundPolicy` and `proxy.clusterNetworks` reach the injector, which gives
/// them to the workloads' proxies; the control plane's own proxies allow every client whatever
/// the value (the kubelet's probes, the API server's webhook calls and every proxy reach them
/// without a mesh identity).
#[test]
fn the_default_inbound_policy_is_the_workloads_not_the_control_planes() {
    let (_, docs) = install(&[
        "--set",
        "proxy.defaultInboundPolicy=deny",
        "--set",
        "proxy.clusterNetworks=10.244.0.0/16",
    ]);
    let injector = find(&docs, "Deployment", "mesh-injector");
    let args = injector["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "injector")
        .unwrap()["args"]
        .clone();
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--default-inbound-policy=deny"), "{args:?}");
    assert!(
        args.contains(&"--cluster-networks=10.244.0.0/16"),
        "{args:?}"
    );
    for name in ["mesh-destination", "mesh-injector"] {
        let template = &find(&docs, "Deployment", name)["spec"]["template"];
        let spec = &template["spec"];
        let proxy = ["initContainers", "containers"]
            .iter()
            .flat_map(|l| spec[*l].as_array().cloned().unwrap_or_default())
            .find(|c| c["name"] == "mesh-proxy")
            .unwrap();
        let env = |var: &str| {
            proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == var)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            env("MESH_PROXY_INBOUND_DEFAULT_POLICY"),
            Some("all-unauthenticated".into()),
            "{name}"
        );
        assert_eq!(
            env("MESH_PROXY_INBOUND_CLUSTER_NETWORKS"),
            Some("10.244.0.0/16".into()),
            "{name}"
        );
    }
}

// === keys written by openssl, step and cert-manager ===

#[path = "../../api/tests/openssl/mod.rs"]
mod openssl;

/// A webhook CA and a serving certificate for mesh-injector.mesh.svc with a SEC1 key, made by
/// openssl next to the README's anchor and issuer.
fn openssl_webhook(dir: &openssl::Workdir) {
    dir.sh(
        "openssl ecparam -name prime256v1 -genkey -noout -out webhook-ca.key
         openssl req -x509 -new -config mesh-ca.cnf -extensions anchor -key webhook-ca.key \
           -subj /CN=mesh-injector-ca -days 30 -out webhook-ca.crt
         openssl ecparam -name prime256v1 -genkey -noout -out webhook.key
         openssl req -new -config mesh-ca.cnf -key webhook.key -subj /CN=mesh-injector.mesh.svc \
           -out webhook.csr
         printf 'subjectAltName = DNS:mesh-injector.mesh.svc\\nextendedKeyUsage = serverAuth\\n' \
           > webhook.ext
         openssl x509 -req -in webhook.csr -CA webhook-ca.crt -CAkey webhook-ca.key \
           -CAcreateserial -days 30 -extfile webhook.ext -out webhook.crt",
    );
}

fn openssl_flags(dir: &openssl::Workdir, issuer_key: &str, webhook_key: &str) -> Vec<String> {
    [
        ("--identity-trust-anchors-file", "ca.crt"),
        ("--identity-issuer-certificate-file", "issuer.crt"),
        ("--identity-issuer-key-file", issuer_key),
        ("--webhook-ca-file", "webhook-ca.crt"),
        ("--webhook-certificate-file", "webhook.crt"),
        ("--webhook-key-file", webhook_key),
    ]
    .into_iter()
    .flat_map(|(flag, file)| [flag.to_string(), dir.arg(file)])
    .collect()
}

#[test]
fn install_accepts_sec1_keys_which_once_could_not_be_parsed() {
    let dir = openssl::Workdir::new("install-sec1");
    dir.readme_anchor_and_issuer();
    openssl_webhook(&dir);
    for key in ["issuer.key", "webhook.key"] {
        assert!(dir.read(key).starts_with("-----BEGIN EC PRIVATE KEY-----"));
    }
    let flags = openssl_flags(&dir, "issuer.key", "webhook.key");
    let mut args = vec!["install", "--ignore-cluster"];
    args.extend(flags.iter().map(String::as_str));
    let (_, docs) = render(&args);
    assert_typed(&docs);
    let issuer = find(&docs, "Secret", "mesh-identity-issuer");
    assert_eq!(b64(&issuer["data"]["tls.key"]), dir.read("issuer.key"));
    assert_eq!(b64(&issuer["data"]["tls.crt"]), dir.read("issuer.crt"));
    let webhook = find(&docs, "Secret", "mesh-injector-tls");
    assert_eq!(b64(&webhook["data"]["tls.key"]), dir.read("webhook.key"));

    // Every other form openssl writes, for the issuer and the webhook alike.
    for key in dir.accepted_keys() {
        let cert = dir.issuer_for(key);
        dir.write("issuer.crt", &cert);
        let flags = openssl_flags(&dir, key, "webhook.key");
        let mut args = vec!["install", "--ignore-cluster"];
        args.extend(flags.iter().map(String::as_str));
        let out = mesh(&args, None);
        assert!(out.status.success(), "{key}: {}", stderr(&out));
    }
}

#[test]
fn unreadable_keys_are_errors_naming_the_file_and_the_flag() {
    let dir = openssl::Workdir::new("install-refused");
    dir.readme_anchor_and_issuer();
    openssl_webhook(&dir);
    dir.sh(
        "openssl pkey -in issuer.key -aes256 -passout pass:secret -out encrypted.key
         openssl ecparam -name prime256v1 -genkey -noout -out other.key",
    );
    for (issuer_key, webhook_key, message) in [
        (
            "encrypted.key",
            "webhook.key",
            format!(
                "the issuer key {} (--identity-issuer-key-file): encrypted keys are not supported",
                dir.arg("encrypted.key")
            ),
        ),
        (
            "issuer.key",
            "encrypted.key",
            format!(
                "the webhook key {} (--webhook-key-file): encrypted keys are not supported",
                dir.arg("encrypted.key")
            ),
        ),
        (
            "issuer.key",
            "other.key",
            format!(
                "the webhook key {} (--webhook-key-file): it does not belong to the webhook \
                 certificate {}",
                dir.arg("other.key"),
                dir.arg("webhook.crt")
            ),
        ),
        (
            "other.key",
            "webhook.key",
            format!(
                "the issuer key {} (--identity-issuer-key-file): it does not belong to the \
                 issuer certificate {}",
                dir.arg("other.key"),
                dir.arg("issuer.crt")
            ),
        ),
    ] {
        let flags = openssl_flags(&dir, issuer_key, webhook_key);
        let mut args = vec!["install", "--ignore-cluster"];
        args.extend(flags.iter().map(String::as_str));
        let out = mesh(&args, None);
        assert_eq!(out.status.code(), Some(1), "{issuer_key} {webhook_key}");
        assert!(out.stdout.is_empty());
        assert!(stderr(&out).contains(&message), "{}", stderr(&out));
    }
}

/// A folder where the README's recipes run as written: the real `mesh` and a `kubectl` that
/// logs its arguments, answers `get secret mesh-injector-tls` with the fixed webhook
/// certificates and keeps what `apply -f -` is given (`applied-<n>.yaml`).
fn readme_cluster(name: &str) -> openssl::Workdir {
    let dir = openssl::Workdir::new(name);
    dir.readme_anchor_and_issuer();
    let fake = format!(
        r#"#!/bin/sh
echo "kubectl $*" >> kubectl.log
case "$*" in
  *'ca\.crt'*) base64 < {ca} ;;
  *'tls\.crt'*) base64 < {crt} ;;
  *'tls\.key'*) base64 < {key} ;;
  *'apply -f -'*) cat > "applied-$(ls applied-*.yaml 2>/dev/null | wc -l | tr -d ' ').yaml" ;;
esac
"#,
        ca = testdata_arg("certs/webhook-ca.crt"),
        crt = testdata_arg("certs/webhook.crt"),
        key = testdata_arg("certs/webhook.key"),
    );
    dir.sh(&format!(
        "mkdir bin
         ln -s {mesh} bin/mesh
         cat > bin/kubectl <<'END'\n{fake}END
         chmod +x bin/kubectl",
        mesh = env!("CARGO_BIN_EXE_mesh"),
    ));
    dir
}

/// Runs the `n`-th block under `heading` with the fake `kubectl` and the real `mesh`.
fn run_readme(dir: &openssl::Workdir, heading: &str, n: usize) {
    let block = openssl::readme_block(heading, n);
    dir.sh(&format!(
        "PATH=\"$PWD/bin:$PATH\"; unset KUBECONFIG\n{block}"
    ));
}

/// What the README's patch file for Secret mesh-identity-issuer sets.
fn issuer_patch(dir: &openssl::Workdir) -> (String, String) {
    let patch: Value = serde_yaml_ng::from_str(&dir.read("issuer-patch.yaml")).expect("YAML");
    let text = |k: &str| patch["stringData"][k].as_str().expect(k).to_string();
    (text("tls.crt"), text("tls.key"))
}

/// The trust anchors of an applied control plane: the ConfigMap's and those written into the
/// destination controller's proxy.
fn applied_anchors(dir: &openssl::Workdir, n: usize) -> (String, String) {
    let docs = docs(&dir.read(&format!("applied-{n}.yaml")));
    let map = find(&docs, "ConfigMap", "mesh-trust-anchors")["data"]["ca-bundle.crt"]
        .as_str()
        .expect("ca-bundle.crt")
        .to_string();
    let spec = &find(&docs, "Deployment", "mesh-destination")["spec"]["template"]["spec"];
    let proxy = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "mesh-proxy")
        .expect("the destination controller's proxy");
    let env = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "MESH_PROXY_TRUST_ANCHORS")
        .expect("MESH_PROXY_TRUST_ANCHORS")["value"]
        .as_str()
        .expect("value")
        .to_string();
    (map, env)
}

#[test]
fn the_readme_issuer_rotation_runs_as_written() {
    let dir = readme_cluster("readme-issuer-rotation");
    run_readme(&dir, "### Rotating the issuer", 0);
    let (crt, key) = issuer_patch(&dir);
    assert_eq!(crt, dir.read("issuer-2.crt"));
    assert_eq!(key, dir.read("issuer-2.key"));
    assert_eq!(
        dir.read("kubectl.log"),
        "kubectl -n mesh patch secret mesh-identity-issuer --patch-file issuer-patch.yaml\n\
         kubectl -n mesh rollout restart deploy/mesh-identity\n\
         kubectl -n mesh rollout status deploy/mesh-identity\n"
    );
    // The new issuer is one mesh takes with the anchor it already has.
    let (anchors, cert, key) = (
        dir.arg("ca.crt"),
        dir.arg("issuer-2.crt"),
        dir.arg("issuer-2.key"),
    );
    let out = mesh(
        &[
            "install",
            "--ignore-cluster",
            "--identity-trust-anchors-file",
            &anchors,
            "--identity-issuer-certificate-file",
            &cert,
            "--identity-issuer-key-file",
            &key,
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_readme_anchor_rotation_runs_as_written() {
    let dir = readme_cluster("readme-anchor-rotation");
    let heading = "### Rotating the trust anchor";
    let old = dir.read("ca.crt");

    // 1. A new anchor, its issuer, the bundle of both.
    run_readme(&dir, heading, 0);
    let new = dir.read("ca-2.crt");
    assert_ne!(old, new);
    assert_eq!(dir.read("bundle.crt"), format!("{old}{new}"));

    // 2. Both trusted, everywhere, the webhook's certificate kept.
    run_readme(&dir, heading, 1);
    let bundle = dir.read("bundle.crt");
    assert_eq!(applied_anchors(&dir, 0), (bundle.clone(), bundle));
    let both = docs(&dir.read("applied-0.yaml"));
    let issuer = find(&both, "Secret", "mesh-identity-issuer");
    assert_eq!(b64(&issuer["data"]["tls.crt"]), dir.read("issuer.crt"));
    let webhook = find(&both, "Secret", "mesh-injector-tls");
    assert_eq!(
        b64(&webhook["data"]["tls.crt"]),
        std::fs::read_to_string(testdata("certs/webhook.crt")).unwrap()
    );
    let log = dir.read("kubectl.log");
    assert!(
        log.contains("kubectl -n mesh rollout restart deploy\n"),
        "{log}"
    );

    // 3. The new issuer.
    run_readme(&dir, heading, 2);
    assert_eq!(
        issuer_patch(&dir),
        (dir.read("issuer-2.crt"), dir.read("issuer-2.key"))
    );

    // 4. The old anchor dropped.
    run_readme(&dir, heading, 3);
    assert_eq!(applied_anchors(&dir, 1), (new.clone(), new));
    let new_only = docs(&dir.read("applied-1.yaml"));
    let issuer = find(&new_only, "Secret", "mesh-identity-issuer");
    assert_eq!(b64(&issuer["data"]["tls.crt"]), dir.read("issuer-2.crt"));
    assert_eq!(b64(&issuer["data"]["tls.key"]), dir.read("issuer-2.key"));
}
