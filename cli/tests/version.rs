//! `mesh version` through the real binary: against an in-process fake API server holding the
//! control plane `mesh install` renders and the recorded pods (`testdata/k8s-fixtures`) injected
//! with the proxy, against no cluster at all, with `--client`, and on a local mesh's folder.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use support::*;

/// The CLI's own version, which `mesh install` tags the images with.
const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

/// What the fake cluster holds and refuses.
#[derive(Default)]
struct Cluster {
    /// List requests of Deployments in `mesh` and of pods across namespaces answer 403.
    namespaced_user: bool,
    /// The controller Deployments ([`control_plane`]).
    deployments: Value,
    /// The paths asked for, with their queries.
    seen: Mutex<Vec<String>>,
}

/// The controller Deployments of `mesh install`; the injector's image one release behind.
fn control_plane() -> Value {
    let (_, docs) = render(&["install", "--ignore-cluster"]);
    let mut items: Vec<Value> = docs
        .into_iter()
        .filter(|d| d["kind"] == "Deployment")
        .collect();
    assert_eq!(items.len(), 3);
    for d in &mut items {
        // What the server selects on.
        assert_eq!(d["metadata"]["labels"]["mesh.io/control-plane-ns"], "mesh");
        if d["metadata"]["name"] == "mesh-injector" {
            let containers = d["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap();
            let injector = containers.iter_mut().find(|c| c["name"] == "injector");
            injector.unwrap()["image"] = "ghcr.io/mesh/controller:v0.0.9".into();
        }
    }
    json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The recorded pods of namespace demo injected with the proxy of `version`, moved to `ns`.
fn meshed_pods(ns: &str, version: &str) -> Vec<Value> {
    injected_pods("anchors", version)
        .into_iter()
        .map(|mut pod| {
            pod["metadata"]["namespace"] = ns.into();
            pod
        })
        .collect()
}

/// A pod list of the recorded shape.
fn pod_list(items: Vec<Value>) -> String {
    let mut list = fixture_json("pods-list.json");
    list["items"] = items.into();
    list.to_string()
}

fn respond(cluster: &Cluster, r: &ApiRequest) -> (u16, String) {
    cluster
        .seen
        .lock()
        .unwrap()
        .push(format!("{}?{}", r.path, r.query));
    let forbidden = || (403, fixture("forbidden-403.json"));
    match r.path.as_str() {
        "/apis/apps/v1/namespaces/mesh/deployments" if cluster.namespaced_user => forbidden(),
        "/apis/apps/v1/namespaces/mesh/deployments" => {
            assert!(
                r.query.contains("labelSelector=mesh.io%2Fcontrol-plane-ns"),
                "{}",
                r.query
            );
            (200, cluster.deployments.to_string())
        }
        "/api/v1/pods" if cluster.namespaced_user => forbidden(),
        "/api/v1/pods" => {
            let mut items = meshed_pods("demo", VERSION);
            items.extend(meshed_pods("shop", VERSION).into_iter().take(1));
            items.extend(meshed_pods("shop", "v0.0.9"));
            // Not meshed: not counted.
            items.extend(
                fixture_json("pods-list.json")["items"]
                    .as_array()
                    .unwrap()
                    .clone(),
            );
            (200, pod_list(items))
        }
        "/api/v1/namespaces/demo/pods" => (200, pod_list(meshed_pods("demo", VERSION))),
        _ => (404, fixture("notfound-404.json")),
    }
}

/// Runs `mesh version ARGS` against a fake cluster: (exit code, stdout, stderr, paths asked).
async fn version(namespaced_user: bool, args: &[&str]) -> (i32, String, String, Vec<String>) {
    let cluster = Arc::new(Cluster {
        namespaced_user,
        deployments: control_plane(),
        ..Cluster::default()
    });
    let fake = cluster.clone();
    let api = fake_api_server(move |r| respond(&fake, r)).await;
    let (code, out, err) = mesh_on_cluster(api, "version", args).await;
    let seen = cluster.seen.lock().unwrap().clone();
    (code, out, err, seen)
}

#[tokio::test]
async fn version_reads_the_controllers_and_the_proxies_of_every_namespace() {
    let (code, out, err, _) = version(false, &[]).await;
    assert_eq!(code, 0, "{err}");
    golden("version.txt", &out);
    assert!(
        out.starts_with(&format!("Client version: {VERSION}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Control plane version: v0.0.9 (injector), {VERSION} (destination, identity)\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("  demo: {VERSION} (2 pods)\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("  shop: v0.0.9 (2 pods), {VERSION} (1 pod)\n")),
        "{out}"
    );
}

#[tokio::test]
async fn version_as_json() {
    let (code, out, err, _) = version(false, &["-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    golden("version.json", &out);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"], VERSION);
    assert_eq!(v["target"], "kube");
    assert_eq!(
        v["controlPlane"]["versions"][0],
        json!({"component": "destination", "version": VERSION})
    );
    assert_eq!(
        v["proxies"]["versions"][0],
        json!({"namespace": "demo", "version": VERSION, "pods": 2})
    );
}

#[tokio::test]
async fn version_with_a_namespace_lists_only_its_pods() {
    let (code, out, err, seen) = version(false, &["-n", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("Proxy versions:\n  demo: {VERSION} (2 pods)\n")),
        "{out}"
    );
    assert!(!out.contains("shop"), "{out}");
    assert!(
        seen.iter().all(|p| !p.starts_with("/api/v1/pods")),
        "a cluster-wide list was asked for: {seen:?}"
    );
}

#[tokio::test]
async fn version_says_what_the_api_server_refused() {
    // A user allowed one namespace: the control plane's and every namespace's lists are refused.
    let (code, out, err, _) = version(true, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Control plane version: unknown (the API server refused: "),
        "{out}"
    );
    assert!(
        out.contains("Proxy versions: unknown (the API server refused: ")
            && out.contains("; -n NAMESPACE lists one namespace)\n"),
        "{out}"
    );
    // … and with -n, that namespace's pods are read.
    let (code, out, _, _) = version(true, &["-n", "demo"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("  demo: {VERSION} (2 pods)\n")),
        "{out}"
    );
}

#[tokio::test]
async fn version_without_a_cluster_prints_the_client_then_the_error() {
    let (code, out, err) = mesh_on_cluster(unreachable_addr(), "version", &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, format!("Client version: {VERSION}\n"));
    assert!(err.starts_with("mesh: reaching the cluster"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Nor any configuration: the client's version, and what to do.
    let out = mesh(&["version"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("Client version: {VERSION}\n"));
    assert!(
        stderr(&out).contains("start the local mesh with `mesh demo`, or name a cluster"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn version_client_contacts_nothing() {
    let (code, out, err, seen) = version(false, &["--client"]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, format!("Client version: {VERSION}\n"));
    assert!(seen.is_empty(), "{seen:?}");

    let (code, out, _) =
        mesh_on_cluster(unreachable_addr(), "version", &["--client", "-o", "json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"client": VERSION})
    );
}

#[test]
fn version_reads_a_local_mesh_folder() {
    let dir = tempfile::tempdir().unwrap();
    // The objects `mesh demo` writes (local/control.rs): the control pod in namespace mesh, the
    // meshed pods with their proxy version.
    std::fs::write(
        dir.path().join("pod-mesh-control.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: control, namespace: mesh, \
             labels: {{mesh.io/control-plane-ns: mesh}}, annotations: {{mesh.io/local-netns: ns-control}}}}\n\
             spec: {{containers: [{{name: destination, image: \"mesh-controller:{VERSION}\"}}, \
             {{name: identity, image: \"mesh-controller:{VERSION}\"}}]}}\n\
             status: {{phase: Running, podIP: 10.244.0.2}}\n"
        ),
    )
    .unwrap();
    for pod in ["web-1", "web-2"] {
        std::fs::write(
            dir.path().join(format!("pod-demo-{pod}.yaml")),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: demo, \
                 annotations: {{mesh.io/local-netns: ns-{pod}, mesh.io/proxy-version: {VERSION}}}}}\n\
                 spec: {{serviceAccountName: web, containers: [{{name: app, image: app}}, {{name: mesh-proxy, image: mesh-proxy}}]}}\n\
                 status: {{phase: Running, podIP: 10.244.0.3}}\n"
            ),
        )
        .unwrap();
    }
    let state = dir.path().display().to_string();
    let out = mesh(&["version", "--state", &state], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "Client version: {VERSION}\nControl plane version (local mesh): {VERSION}\n\
             Proxy versions:\n  demo: {VERSION} (2 pods)\n"
        )
    );

    // A folder without the control pod (a mesh started by an older mesh) says so.
    std::fs::remove_file(dir.path().join("pod-mesh-control.yaml")).unwrap();
    let out = mesh(&["version", "--state", &state, "-o", "json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["target"], "local");
    assert!(
        v["controlPlane"]["error"]
            .as_str()
            .unwrap()
            .contains("mesh demo down"),
        "{v}"
    );
}
