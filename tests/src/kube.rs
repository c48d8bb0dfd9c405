//! The cluster tier's helpers: `kubectl` and `mesh` against a real cluster (`$KUBECONFIG`), and
//! what to print when a step fails (the events and logs of the pods that are not ready).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::fixtures::eventually;

/// A real cluster, from `$KUBECONFIG`. Dropped while panicking, it prints what a person
/// would look at first: the pods, the recent events, and the logs of every pod not ready.
pub struct Cluster {
    /// The namespaces whose pods the report covers.
    pub namespaces: Vec<String>,
}

impl Cluster {
    /// The cluster of `$KUBECONFIG`; fails with what to do when there is none.
    pub fn from_env() -> Self {
        let Some(kubeconfig) = std::env::var_os("KUBECONFIG") else {
            panic!(
                "the cluster tier needs a cluster: run ./scripts/test-kube (it brings up \
                 ../shared/k8s), or set KUBECONFIG to a cluster with the mesh's images loaded"
            );
        };
        let out = kubectl(&["version", "-o", "json"]);
        assert!(
            out.status.success(),
            "KUBECONFIG={} does not reach a cluster: {}",
            kubeconfig.to_string_lossy(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            namespaces: vec!["mesh".into(), "mesh-viz".into(), "demo".into()],
        }
    }

    /// Prints the state of the cluster's pods, events and logs of unready pods to stderr.
    pub fn report(&self) {
        eprintln!("==== the cluster when the step failed ====");
        let show = |args: &[&str]| {
            let out = kubectl(args);
            eprintln!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        show(&["get", "pods", "-A", "-o", "wide"]);
        for ns in &self.namespaces {
            show(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]);
            let pods = kubectl(&[
                "get",
                "pods",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            for line in String::from_utf8_lossy(&pods.stdout).lines() {
                let Some((pod, ready)) = line.split_once(' ') else {
                    continue;
                };
                if ready != "True" {
                    show(&["describe", "pod", "-n", ns, pod]);
                    show(&["logs", "-n", ns, pod, "--all-containers", "--tail=60"]);
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
    }
}

/// Runs `kubectl ARGS`.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl runs (scripts/test-kube puts the cluster's kubectl on PATH)")
}

/// Runs `kubectl ARGS` and returns stdout; panics with stderr when it fails.
pub fn kubectl_ok(args: &[&str]) -> String {
    ok(&format!("kubectl {}", args.join(" ")), kubectl(args))
}

/// `kubectl ARGS -f -` with `yaml` on stdin, e.g. `&["apply"]`; panics with stderr when it fails.
pub fn kubectl_stdin(args: &[&str], yaml: &str) -> String {
    ok(
        &format!("kubectl {} -f -", args.join(" ")),
        kubectl_stdin_output(args, yaml),
    )
}

fn kubectl_stdin_output(args: &[&str], yaml: &str) -> Output {
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

/// `kubectl delete --ignore-not-found --wait=false -f -` of `yaml`, where a kind whose CRD is
/// not installed (a fresh cluster, before `mesh install`) counts as nothing to delete: kubectl
/// fails those objects with "resource mapping not found … ensure CRDs are installed first".
/// Any other failure panics.
pub fn kubectl_delete_if_present(yaml: &str) {
    let out = kubectl_stdin_output(&["delete", "--ignore-not-found", "--wait=false"], yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let other: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.contains("resource mapping not found")
                && !l.contains("ensure CRDs are installed first")
        })
        .collect();
    assert!(
        out.status.success() || other.is_empty(),
        "kubectl delete --ignore-not-found --wait=false -f - failed ({}):\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The `mesh` binary this workspace built.
pub fn mesh_binary() -> PathBuf {
    mesh_cli::local::binary("mesh").expect("the mesh binary builds")
}

/// Runs `mesh ARGS` against the cluster.
pub fn mesh(args: &[&str]) -> Output {
    Command::new(mesh_binary())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("MESH_LOCAL_STATE")
        .output()
        .expect("mesh runs")
}

/// Runs `mesh ARGS` and returns stdout; panics with stdout and stderr when it fails.
pub fn mesh_ok(args: &[&str]) -> String {
    ok(&format!("mesh {}", args.join(" ")), mesh(args))
}

fn ok(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until every Deployment of `namespace` has all its replicas available.
pub async fn rolled_out(namespace: &str, within: Duration) {
    let done = eventually(within, || async {
        let out = kubectl(&[
            "get",
            "deploy",
            "-n",
            namespace,
            "-o",
            "jsonpath={range .items[*]}{.spec.replicas} {.status.availableReplicas} {.status.updatedReplicas}{\"\\n\"}{end}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success()
            && !text.trim().is_empty()
            && text.lines().all(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() == 3 && f[0] == f[1] && f[0] == f[2]
            })
    })
    .await;
    assert!(
        done,
        "the Deployments of {namespace} were not all available within {within:?}"
    );
}

/// Waits until `namespace` is gone.
pub async fn gone(namespace: &str, within: Duration) {
    let done = eventually(within, || async {
        let out = kubectl(&["get", "namespace", namespace]);
        !out.status.success()
    })
    .await;
    assert!(done, "namespace {namespace} still exists after {within:?}");
}
