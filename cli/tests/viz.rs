//! `mesh viz`: each command's non-terminal output, pinned by golden files
//! (`golden/viz-*`, `UPDATE_GOLDEN=1` rewrites them), on a recorded local state folder and
//! recorded proxies: the scrapes of the pod harness (`viz/tests/data/scrape-*.txt`) and a tap
//! stream, served over an in-memory transport by a small HTTP server. The errors a user meets
//! say what to do next.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_cli::viz::{local::State, run_command, Target, VizArgs};
use mesh_viz::client::{Connecting, Io, Transport};
use mesh_viz::model::PodInfo;
use support::{golden, mesh, stderr, viz_data};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    viz: VizArgs,
}

fn state_dir() -> PathBuf {
    support::testdata("viz-state")
}

/// What a fake proxy answers.
#[derive(Clone)]
struct Answers {
    metrics: String,
    /// The tap body, or `None` for 403.
    tap: Option<String>,
}

/// Serves each pod's answers over an in-memory connection.
struct Recorded(HashMap<String, Answers>);

impl Transport for Recorded {
    fn connect<'a>(&'a self, pod: &'a PodInfo) -> Connecting<'a> {
        let answers = self.0.get(&pod.name).cloned();
        Box::pin(async move {
            let Some(answers) = answers else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ));
            };
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let answers = answers.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (200, answers.metrics),
                            "/v1/tap" => match answers.tap {
                                Some(t) => (200, t),
                                None => (403, "tap: forbidden\n".into()),
                            },
                            _ => (404, String::new()),
                        };
                        let mut rsp = hyper::Response::new(Full::new(Bytes::from(body)));
                        *rsp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), service)
                    .await;
            });
            let io: Box<dyn Io> = Box::new(client);
            Ok(io)
        })
    }
}

/// The recorded harness: web-1 and web-2 tapped with the recorded stream.
fn recorded(tap: Option<&str>) -> Target {
    let state = State::read(&state_dir()).expect("the recorded state");
    let mut answers = HashMap::new();
    for pod in ["web-1", "web-2", "client"] {
        answers.insert(
            pod.to_string(),
            Answers {
                metrics: viz_data(&format!("scrape-{pod}.txt")),
                tap: tap.map(|t| {
                    if pod == "web-1" {
                        t.to_string()
                    } else {
                        String::new()
                    }
                }),
            },
        );
    }
    Target::local(state, Arc::new(Recorded(answers)))
}

fn run(target: &Target, args: &[&str]) -> Result<String, String> {
    let cli = Cli::try_parse_from(std::iter::once("viz").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    rt.block_on(run_command(
        target,
        cli.viz.namespace.as_deref(),
        cli.viz.command,
        &mut out,
    ))
    .map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn stat() {
    let t = recorded(Some(""));
    golden(
        "viz-stat-deploy.txt",
        &run(&t, &["stat", "deploy", "--window", "0s"]).unwrap(),
    );
    let json = run(&t, &["stat", "deploy/web", "--window", "0s", "-o", "json"]).unwrap();
    golden("viz-stat-web.json", &json);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["successRate"], 0.75, "6 of 8 succeeded: {json}");
    assert_eq!(rows[0]["meshedPods"], 2);
    golden(
        "viz-stat-po-to-web.txt",
        &run(
            &t,
            &["stat", "po/client", "--to", "deploy/web", "--window", "0s"],
        )
        .unwrap(),
    );
    golden(
        "viz-stat-ns.txt",
        &run(&t, &["stat", "ns", "--window", "0s"]).unwrap(),
    );
}

#[test]
fn edges() {
    let t = recorded(Some(""));
    golden(
        "viz-edges-deploy.txt",
        &run(&t, &["edges", "deploy"]).unwrap(),
    );
    golden(
        "viz-edges-po.json",
        &run(&t, &["edges", "po", "-o", "json"]).unwrap(),
    );
}

#[test]
fn tap() {
    let t = recorded(Some(&viz_data("tap-web.jsonl")));
    golden("viz-tap-web.txt", &run(&t, &["tap", "deploy/web"]).unwrap());
    golden(
        "viz-tap-web-wide.txt",
        &run(&t, &["tap", "deploy/web", "-o", "wide"]).unwrap(),
    );
    let json = run(&t, &["tap", "deploy/web", "-o", "json"]).unwrap();
    golden("viz-tap-web.json", &json);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["pod"].as_str(), first["event"].as_str()),
        (Some("web-1"), Some("requestStart"))
    );
}

#[test]
fn top() {
    let t = recorded(Some(&viz_data("tap-web.jsonl")));
    golden(
        "viz-top-web.txt",
        &run(&t, &["top", "deploy/web", "--duration", "5s"]).unwrap(),
    );
}

#[test]
fn dashboard() {
    let t = recorded(Some(&viz_data("tap-web.jsonl")));
    golden(
        "viz-dashboard.txt",
        &run(&t, &["dashboard", "deploy/web", "--duration", "200ms"]).unwrap(),
    );
}

#[test]
fn errors_say_what_to_do() {
    let t = recorded(Some(""));
    let check = |args: &[&str], expected: &str| {
        let e = run(&t, args).expect_err("an error");
        assert!(e.contains(expected), "{args:?}: {e}");
    };
    check(
        &["stat", "deploy/nope"],
        "no such resource: deploy/nope in namespace demo; there are: deploy/client, deploy/web",
    );
    check(
        &["stat", "deploy", "-n", "shop"],
        "no deployment in namespace shop; there are pods in namespaces demo",
    );
    check(
        &["tap", "po/legacy"],
        "po/legacy has no meshed pod (legacy): only meshed pods can be tapped",
    );
    check(&["stat", "cm/x"], "unknown resource kind");
    let forbidden = recorded(None);
    let e = run(&forbidden, &["tap", "po/web-1"]).unwrap_err();
    assert!(
        e.contains("refused the tap (403: tap: forbidden)") && e.contains("loopback"),
        "{e}"
    );
}

#[test]
fn the_binary_explains_a_missing_local_mesh() {
    let check = |args: &[&str], expected: &str| {
        let out = mesh(args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    };
    check(&["viz", "stat", "deploy"], "no local mesh is running");
    check(
        &["viz", "--target", "local", "stat", "deploy"],
        "no local mesh is running (folder /nonexistent/.local/state/mesh/local): start one with `mesh demo`",
    );
    check(
        &["viz", "stat", "deploy", "--state", "/nonexistent"],
        "no local mesh at /nonexistent",
    );
    check(
        &["viz", "--target", "kube", "stat", "deploy"],
        "finding a cluster (KUBECONFIG, ~/.kube/config or in-cluster)",
    );
}
