//! What the CLI's tests share: running `mesh`, golden files, fixed certificates, typed checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// `cli/tests/`.
pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// A file of the fixed test data (`cli/tests/testdata/…`).
pub fn testdata(name: &str) -> PathBuf {
    tests_dir().join("testdata").join(name)
}

/// A recorded Kubernetes response (`testdata/k8s-fixtures/…`).
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/k8s-fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The flags that make `mesh install` deterministic: the fixed certificates.
pub fn cert_flags() -> Vec<String> {
    let c = |n: &str| testdata(&format!("certs/{n}")).display().to_string();
    [
        ("--identity-trust-anchors-file", c("trust-anchors.pem")),
        ("--identity-issuer-certificate-file", c("issuer.crt")),
        ("--identity-issuer-key-file", c("issuer.key")),
        ("--webhook-ca-file", c("webhook-ca.crt")),
        ("--webhook-certificate-file", c("webhook.crt")),
        ("--webhook-key-file", c("webhook.key")),
    ]
    .into_iter()
    .flat_map(|(f, v)| [f.to_string(), v])
    .collect()
}

/// Runs `mesh` with `args` and `stdin`, without a cluster (no KUBECONFIG).
pub fn mesh(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("MESH_LOCAL_STATE")
        .env("HOME", "/nonexistent")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("mesh output")
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// Compares `actual` with `cli/tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites the file.
pub fn golden(name: &str, actual: &str) {
    let path = tests_dir().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a)
            .map(|(i, (e, a))| format!("first difference at line {}:\n- {e}\n+ {a}", i + 1))
            .unwrap_or_else(|| "one is a prefix of the other".into());
        panic!(
            "{} differs from the output ({diff}); if the change is intended, run with UPDATE_GOLDEN=1 and review the diff",
            path.display()
        );
    }
}

/// Every document of a YAML stream.
pub fn docs(yaml: &str) -> Vec<Value> {
    mesh_cli::manifest::parse(yaml, "output")
        .expect("valid YAML")
        .1
}

/// Checks every object against its k8s-openapi type.
pub fn assert_typed(docs: &[Value]) {
    for doc in docs {
        if let Err(e) = mesh_cli::manifest::check_typed(doc) {
            panic!("{}: {e}", mesh_cli::manifest::describe(doc));
        }
    }
}
