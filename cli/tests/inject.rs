//! `mesh inject` / `mesh uninject` on a realistic application: golden output, idempotence,
//! round trips, JSON and Lists, skips, and errors that name the document and line.

mod support;

use serde_json::Value;
use support::*;

const SHOP: &str = "inject/shop.yaml";
const LIST: &str = "inject/list.json";

/// `--manual` with the files it needs and native sidecars (the goldens' shape).
fn manual_flags() -> Vec<String> {
    vec![
        "--manual".into(),
        "--native-sidecar".into(),
        "--image-tag".into(),
        "v0.1.0".into(),
        "--identity-trust-anchors-file".into(),
        testdata_arg("certs/trust-anchors.pem"),
    ]
}

fn run(args: &[String], stdin: Option<&str>) -> (String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mesh(&args, stdin);
    assert!(out.status.success(), "mesh {args:?}: {}", stderr(&out));
    (stdout(&out), stderr(&out))
}

fn inject(extra: &[String], input: &str) -> (String, String) {
    let mut args = vec!["inject".to_string()];
    args.extend(extra.iter().cloned());
    args.push(input.to_string());
    run(&args, None)
}

fn inject_stdin(extra: &[String], text: &str) -> String {
    let mut args = vec!["inject".to_string()];
    args.extend(extra.iter().cloned());
    args.push("-".into());
    run(&args, Some(text)).0
}

fn uninject_stdin(text: &str) -> String {
    run(&["uninject".into(), "-".into()], Some(text)).0
}

#[test]
fn inject_annotates_workloads_and_passes_the_rest_through() {
    let (out, summary) = inject(&[], &testdata_arg(SHOP));
    golden("inject-shop.yaml", &out);
    golden("inject-shop.summary", &summary);
    let docs = docs(&out);
    assert_typed(&docs);
    let original = support::docs(&std::fs::read_to_string(testdata(SHOP)).unwrap());
    for (before, after) in original.iter().zip(&docs) {
        if ["Service", "ServiceAccount"].contains(&before["kind"].as_str().unwrap()) {
            assert_eq!(before, after, "passed through unchanged");
        }
    }
    assert!(summary.contains("daemonset/node-exporter in shop skipped: it uses the host network"));
    assert!(summary.contains("cronjob/nightly-report in shop injected"));
}

#[test]
fn manual_inject_writes_the_proxy_into_every_workload() {
    let (out, summary) = inject(&manual_flags(), &testdata_arg(SHOP));
    golden("inject-shop-manual.yaml", &out);
    golden("inject-shop-manual.summary", &summary);
    let docs = docs(&out);
    assert_typed(&docs);
    let cart = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "cart" && d["kind"] == "Deployment")
        .unwrap();
    let inits: Vec<&str> = cart["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["mesh-init", "mesh-proxy", "migrate"]);
    let cron = docs.iter().find(|d| d["kind"] == "CronJob").unwrap();
    let job_pod = &cron["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        job_pod["spec"]["initContainers"][1]["restartPolicy"], "Always",
        "Jobs complete"
    );
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert!(ds["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
}

/// The proxy's place in a pod: `(init containers, containers)` of the Deployment `web`.
fn proxy_shape(out: &str) -> (Vec<String>, Vec<String>) {
    let docs = docs(out);
    assert_typed(&docs);
    let web = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "web" && d["kind"] == "Deployment")
        .unwrap();
    let names = |list: &str| -> Vec<String> {
        web["spec"]["template"]["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    (names("initContainers"), names("containers"))
}

/// Regression: `mesh inject --manual` made native sidecars on a 1.28 cluster, which refused
/// every pod (`livenessProbe: Forbidden: may not be set for init containers without
/// restartPolicy=Always`). The mode now follows the cluster's version, or is classic without one.
#[tokio::test]
async fn native_sidecars_where_the_cluster_has_none() {
    let flags = [
        "--manual",
        "--image-tag",
        "v0.1.0",
        "--identity-trust-anchors-file",
        &testdata_arg("certs/trust-anchors.pem"),
        &testdata_arg(SHOP),
    ];
    let classic = (
        vec!["mesh-init".to_string()],
        vec!["mesh-proxy".to_string()],
    );
    let native = (
        vec!["mesh-init".to_string(), "mesh-proxy".to_string()],
        vec![],
    );
    let only_proxy = |(init, containers): (Vec<String>, Vec<String>)| {
        let keep = |v: Vec<String>| v.into_iter().filter(|n| n.starts_with("mesh-")).collect();
        (keep(init), keep(containers))
    };

    let (code, out, summary) = mesh_on_cluster(bare_cluster("28").await, "inject", &flags).await;
    assert_eq!(code, 0, "{summary}");
    assert_eq!(only_proxy(proxy_shape(&out)), classic);
    golden("inject-shop-manual-classic.yaml", &out);
    assert!(
        summary.starts_with("proxies are classic sidecars: the cluster runs 1.28"),
        "{summary}"
    );

    let (code, out, summary) = mesh_on_cluster(bare_cluster("30").await, "inject", &flags).await;
    assert_eq!(code, 0, "{summary}");
    assert_eq!(only_proxy(proxy_shape(&out)), native);
    let (golden_native, _) = inject(&manual_flags(), &testdata_arg(SHOP));
    assert_eq!(out, golden_native, "1.30 renders the native golden");
    assert!(summary.starts_with("proxies are native sidecars: the cluster runs 1.30"));

    // Asked for, the cluster's version does not matter.
    let mut asked = vec!["--native-sidecar"];
    asked.extend(flags);
    let (_, out, _) = mesh_on_cluster(bare_cluster("28").await, "inject", &asked).await;
    assert_eq!(only_proxy(proxy_shape(&out)), native);

    // Without a cluster: classic, which every version runs, and the reason on stderr.
    let mut offline: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    offline.insert(0, "inject".into());
    let (out, summary) = run(&offline, None);
    assert_eq!(only_proxy(proxy_shape(&out)), classic);
    assert!(summary.contains("no cluster was asked"), "{summary}");
    offline.insert(1, "--ignore-cluster".into());
    assert_eq!(run(&offline, None).0, out);

    // A cluster that was named but cannot be read is an error, not a guess.
    let mut unreachable = offline.clone();
    unreachable.remove(1);
    unreachable.extend(["--kubeconfig".into(), "/nonexistent".into()]);
    let refused = mesh(
        &unreachable.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--ignore-cluster"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn regular_sidecars_on_request() {
    let mut flags = manual_flags();
    flags.retain(|f| f != "--native-sidecar");
    flags.push("--native-sidecar=false".into());
    let (out, _) = inject(&flags, &testdata_arg(SHOP));
    let docs = docs(&out);
    assert_typed(&docs);
    let web = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "web" && d["kind"] == "Deployment")
        .unwrap();
    let spec = &web["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["name"], "mesh-proxy");
    assert!(spec["containers"][0]["lifecycle"]["postStart"].is_object());
    assert_eq!(spec["initContainers"][0]["name"], "mesh-init");
}

#[test]
fn injecting_twice_is_injecting_once() {
    let text = std::fs::read_to_string(testdata(SHOP)).unwrap();
    for flags in [vec![], manual_flags()] {
        let once = inject_stdin(&flags, &text);
        let twice = inject_stdin(&flags, &once);
        assert_eq!(once, twice, "{flags:?}");
    }
}

#[test]
fn uninject_restores_the_input() {
    let text = std::fs::read_to_string(testdata(SHOP)).unwrap();
    // The input as mesh writes it (same values, its own YAML style).
    let normalized = run(&["uninject".into(), "-".into()], Some(&text)).0;
    assert_eq!(docs(&normalized), docs(&text));
    for flags in [vec![], manual_flags()] {
        let injected = inject_stdin(&flags, &text);
        assert_ne!(injected, normalized);
        assert_eq!(uninject_stdin(&injected), normalized, "{flags:?}");
    }
}

#[test]
fn json_lists_stay_json_with_every_item_handled() {
    let (out, summary) = inject(&manual_flags(), &testdata_arg(LIST));
    let doc: Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(doc["kind"], "List");
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items[0]["spec"]["initContainers"][1]["name"], "mesh-proxy");
    assert_eq!(
        items[1]["spec"]["template"]["spec"]["initContainers"][1]["name"],
        "mesh-proxy"
    );
    assert_eq!(items[2]["data"]["LOG"], "info");
    assert!(summary.contains("pod/debug in shop injected"), "{summary}");
    assert!(
        summary.contains("configmap/settings in shop unchanged"),
        "{summary}"
    );
    let back = uninject_stdin(&out);
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(testdata(LIST)).unwrap()).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&back).unwrap(), original);
}

#[test]
fn folders_are_read_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(testdata(SHOP), dir.path().join("b.yaml")).unwrap();
    std::fs::write(dir.path().join("a.yml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: first}\nspec: {containers: [{name: a, image: a}]}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let (out, _) = inject(&[], &dir.path().display().to_string());
    let docs = docs(&out);
    assert_eq!(docs[0]["metadata"]["name"], "first");
    assert_eq!(docs.len(), 11);
}

#[test]
fn bad_input_is_an_error_naming_the_document_and_line_with_nothing_on_stdout() {
    let good = std::fs::read_to_string(testdata(SHOP)).unwrap();
    // The stream ends inside the flow sequence: the error is on the line after the last.
    let end = good.lines().count() + 4;
    let unclosed = format!("<stdin>: document 11, line {end}: did not find expected");
    let cases = [
        (format!("{good}---\nkind: Pod\nmetadata: {{name: [oops\n"), unclosed.as_str()),
        ("{\"kind\": \"Pod\",\n \"metadata\": }\n".to_string(), "<stdin>: document 1, line 2"),
        (
            format!("{good}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  annotations:\n    config.mesh.io/opaque-ports: mysql\nspec:\n  containers: [{{name: a, image: a}}]\n"),
            "<stdin>: document 11 (pod/bad): annotation config.mesh.io/opaque-ports",
        ),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n".to_string(), "a Deployment without a pod template"),
    ];
    for (input, message) in cases {
        let out = mesh(
            &[
                "inject",
                "--manual",
                "--identity-trust-anchors-file",
                &testdata_arg("certs/trust-anchors.pem"),
                "-",
            ],
            Some(&input),
        );
        assert_eq!(out.status.code(), Some(1), "{message}");
        assert!(out.stdout.is_empty(), "{message}");
        assert!(
            stderr(&out).contains(message),
            "want {message:?} in {}",
            stderr(&out)
        );
    }
}

#[test]
fn manual_inject_without_trust_anchors_or_cluster_says_what_to_do() {
    let out = mesh(
        &[
            "inject",
            "--manual",
            "--kubeconfig",
            "/nonexistent",
            &testdata_arg(SHOP),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("--identity-trust-anchors-file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_kinds_pass_through() {
    let text = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  template:\n    spec: {}\n";
    let out = inject_stdin(&[], text);
    assert_eq!(docs(&out), docs(text));
}

/// A Namespace `shop` (annotated as `ns` says, when it is given) and a Deployment `web` in it
/// (its pod template annotated as `pod` says), as one YAML stream.
fn shop_with(ns: Option<&str>, pod: Option<&str>) -> String {
    let annotations = |policy: Option<&str>| match policy {
        Some(p) => format!("annotations: {{config.mesh.io/default-inbound-policy: {p}}}"),
        None => "annotations: {}".to_string(),
    };
    let namespace = match ns {
        Some(_) => format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, {}}}\n---\n",
            annotations(ns)
        ),
        None => String::new(),
    };
    format!(
        "{namespace}apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    \
         metadata: {{labels: {{app: web}}, {}}}\n    \
         spec: {{containers: [{{name: web, image: example/web:1}}]}}\n",
        annotations(pod)
    )
}

/// The proxy's value of `var` in the Deployment of `out`.
fn proxy_env(out: &str, var: &str) -> String {
    let deployment = docs(out)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    let proxy = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "mesh-proxy")
        .unwrap_or_else(|| panic!("no proxy: {out}"));
    let env = proxy["env"].as_array().unwrap();
    let value = env.iter().find(|e| e["name"] == var).map(|e| &e["value"]);
    value
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `mesh inject --manual` sets the default inbound policy the way the webhook does: the pod's
/// annotation, else its namespace's (a Namespace among the inputs, or the cluster's), else the
/// flag; the cluster networks come from the flag.
#[tokio::test]
async fn manual_inject_takes_the_default_inbound_policy_from_the_pod_its_namespace_or_the_flag() {
    let policy = |flags: &[&str], input: &str| {
        let mut args: Vec<String> = manual_flags();
        args.extend(flags.iter().map(|f| f.to_string()));
        proxy_env(
            &inject_stdin(&args, input),
            "MESH_PROXY_INBOUND_DEFAULT_POLICY",
        )
    };
    for (flags, ns, pod, expected) in [
        (&[][..], None, None, "all-unauthenticated"),
        (
            &["--default-inbound-policy", "deny"][..],
            None,
            None,
            "deny",
        ),
        (
            &["--default-inbound-policy", "deny"],
            Some("audit"),
            None,
            "audit",
        ),
        (
            &[],
            Some("audit"),
            Some("all-authenticated"),
            "all-authenticated",
        ),
        (
            &[],
            None,
            Some("cluster-authenticated"),
            "cluster-authenticated",
        ),
    ] {
        assert_eq!(
            policy(flags, &shop_with(ns, pod)),
            expected,
            "flags {flags:?}, namespace {ns:?}, pod {pod:?}"
        );
    }

    let mut args = manual_flags();
    args.extend([
        "--cluster-networks".into(),
        "10.244.0.0/16, 10.96.0.0/12".into(),
    ]);
    let out = inject_stdin(&args, &shop_with(None, None));
    assert_eq!(
        proxy_env(&out, "MESH_PROXY_INBOUND_CLUSTER_NETWORKS"),
        "10.244.0.0/16,10.96.0.0/12"
    );
    assert_eq!(
        proxy_env(
            &inject_stdin(&manual_flags(), &shop_with(None, None)),
            "MESH_PROXY_INBOUND_CLUSTER_NETWORKS"
        ),
        mesh_api::inbound::DEFAULT_CLUSTER_NETWORKS
    );

    // Invalid values: the flag's is a usage error, an annotation's names it; nothing is written.
    let mut args: Vec<&str> = vec!["inject"];
    let flags = manual_flags();
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--default-inbound-policy", "allow", "-"]);
    let out = mesh(&args, Some(&shop_with(None, None)));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown default inbound policy \"allow\""),
        "{}",
        stderr(&out)
    );
    args.truncate(args.len() - 3);
    args.push("-");
    let out = mesh(&args, Some(&shop_with(Some("allow"), None)));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains(
            "annotation config.mesh.io/default-inbound-policy: \"allow\" is not a default inbound \
             policy: use one of all-unauthenticated"
        ),
        "{}",
        stderr(&out)
    );

    // With a cluster: the workload's namespace as the API server has it (the recorded
    // namespace, renamed and annotated), unless the inputs hold the Namespace.
    let api = fake_api_server(|req| match req.path.as_str() {
        "/version" => (200, version_answer("30")),
        "/api/v1/namespaces/shop" => {
            let mut ns = fixture_json("namespace-demo.json");
            ns["metadata"]["name"] = "shop".into();
            ns["metadata"]["annotations"]["config.mesh.io/default-inbound-policy"] =
                "cluster-authenticated".into();
            (200, ns.to_string())
        }
        _ => (404, fixture("notfound-404.json")),
    })
    .await;
    let on_cluster = |input: String| async move {
        let dir = tempfile::tempdir().unwrap();
        let input_file = dir.path().join("shop.yaml");
        std::fs::write(&input_file, input).unwrap();
        let anchors = testdata_arg("certs/trust-anchors.pem");
        let file = input_file.display().to_string();
        let flags = [
            "--manual",
            "--identity-trust-anchors-file",
            anchors.as_str(),
            file.as_str(),
        ];
        let (code, out, summary) = mesh_on_cluster(api, "inject", &flags).await;
        assert_eq!(code, 0, "{summary}");
        proxy_env(&out, "MESH_PROXY_INBOUND_DEFAULT_POLICY")
    };
    assert_eq!(
        on_cluster(shop_with(None, None)).await,
        "cluster-authenticated"
    );
    assert_eq!(on_cluster(shop_with(Some("deny"), None)).await, "deny");
    assert_eq!(on_cluster(shop_with(None, Some("audit"))).await, "audit");

    // A namespace the user may not read: said, and nothing inherited.
    let forbidden = fake_api_server(|req| match req.path.as_str() {
        "/version" => (200, version_answer("30")),
        "/api/v1/namespaces/shop" => (403, fixture("forbidden-403.json")),
        _ => (404, fixture("notfound-404.json")),
    })
    .await;
    let anchors = testdata_arg("certs/trust-anchors.pem");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.yaml");
    std::fs::write(&file, shop_with(None, None)).unwrap();
    let file = file.display().to_string();
    let flags = ["--manual", "--identity-trust-anchors-file", &anchors, &file];
    let (code, out, summary) = mesh_on_cluster(forbidden, "inject", &flags).await;
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.contains("namespace shop could not be read (")
            && summary.contains("its pods inherit none"),
        "{summary}"
    );
    assert_eq!(
        proxy_env(&out, "MESH_PROXY_INBOUND_DEFAULT_POLICY"),
        "all-unauthenticated"
    );
}
