//! `mesh viz authz`: its table and JSON (golden files `golden/viz-authz-*`, `UPDATE_GOLDEN=1`
//! rewrites them) on the recorded local state folder, from the scrapes of web's pods written to
//! the proxy's authorization families (`viz/tests/data/scrape-authz-*.txt`): read from the
//! proxies (two scrapes a window apart, served over an in-memory transport, as
//! `tests/viz_routes.rs` does) and from a fake viz metrics API (the cluster's source). Without
//! authorization samples, it says the workload's proxies counted no decision.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_cli::viz::{local::State, run_command, Hints, Target, VizArgs};
use mesh_viz::client::{Connecting, Io, ProxyTaps, Transport};
use mesh_viz::model::PodInfo;
use mesh_viz::source::{Api, Getting, MetricsApi, PodSamples, SamplesResponse};
use support::{golden, viz_data};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    viz: VizArgs,
}

/// A proxy whose `/metrics` answers its scrapes in turn, the last one ever after.
struct Scrapes {
    texts: Vec<String>,
    served: AtomicUsize,
}

/// Serves each pod's scrapes over an in-memory connection.
struct Proxies(HashMap<String, Arc<Scrapes>>);

impl Transport for Proxies {
    fn connect<'a>(&'a self, pod: &'a PodInfo) -> Connecting<'a> {
        let scrapes = self.0.get(&pod.name).cloned();
        Box::pin(async move {
            let Some(scrapes) = scrapes else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ));
            };
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let scrapes = scrapes.clone();
                    async move {
                        let rsp = match req.uri().path() {
                            "/metrics" => {
                                let n = scrapes.served.fetch_add(1, Ordering::SeqCst);
                                let text = &scrapes.texts[n.min(scrapes.texts.len() - 1)];
                                hyper::Response::new(Full::new(Bytes::from(text.clone())))
                            }
                            _ => {
                                let mut rsp = hyper::Response::new(Full::new(Bytes::new()));
                                *rsp.status_mut() = hyper::StatusCode::NOT_FOUND;
                                rsp
                            }
                        };
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

fn state() -> State {
    State::read(&support::testdata("viz-state")).expect("the recorded state")
}

fn scrape(pod: &str, when: &str) -> String {
    viz_data(&format!("scrape-authz-{pod}-{when}.txt"))
}

/// The local mesh whose web pods answer their `before` scrape, then their `after` one; client
/// answers the harness' scrape, which has no route families.
fn local() -> Target {
    let mut proxies = HashMap::new();
    for pod in ["web-1", "web-2"] {
        let texts = vec![scrape(pod, "before"), scrape(pod, "after")];
        let served = AtomicUsize::new(0);
        proxies.insert(pod.to_string(), Arc::new(Scrapes { texts, served }));
    }
    let client = Scrapes {
        texts: vec![viz_data("scrape-client.txt")],
        served: AtomicUsize::new(0),
    };
    proxies.insert("client".into(), Arc::new(client));
    Target::local(state(), Arc::new(Proxies(proxies)))
}

/// The viz metrics API: web's pods' samples 5s apart; the paths asked for.
struct FakeMetricsApi {
    seen: Mutex<Vec<String>>,
}

impl Api for FakeMetricsApi {
    fn get<'a>(&'a self, path_and_query: &'a str) -> Getting<'a> {
        self.seen.lock().unwrap().push(path_and_query.to_string());
        Box::pin(async move {
            let samples = |pod: &str, when: &str| mesh_viz::prom::parse(&scrape(pod, when));
            let pods = ["web-1", "web-2"]
                .iter()
                .map(|pod| PodSamples {
                    namespace: "demo".into(),
                    pod: pod.to_string(),
                    before: Some(samples(pod, "before").unwrap()),
                    after: samples(pod, "after").unwrap(),
                })
                .collect();
            let rsp = SamplesResponse {
                time: 1_700_000_000.0,
                window: 5.0,
                pods,
            };
            Ok((200, Bytes::from(serde_json::to_vec(&rsp).unwrap())))
        })
    }
}

/// A cluster's target: the recorded objects, their samples from the metrics API.
fn cluster(api: Arc<FakeMetricsApi>) -> Target {
    let local = local();
    Target {
        metrics: Arc::new(MetricsApi { api }),
        taps: Arc::new(ProxyTaps {
            transport: Arc::new(Proxies(HashMap::new())),
        }),
        hints: Hints {
            unreachable: "",
            forbidden: "",
        },
        ..local
    }
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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn from_the_metrics_api() {
    let api = Arc::new(FakeMetricsApi {
        seen: Mutex::new(Vec::new()),
    });
    let t = cluster(api.clone());
    golden(
        "viz-authz-web.txt",
        &run(&t, &["authz", "deploy/web"]).unwrap(),
    );
    let out = run(&t, &["authz", "deploy/web", "-o", "json"]).unwrap();
    golden("viz-authz-web.json", &out);
    assert_eq!(
        api.seen.lock().unwrap()[0],
        "/api/v1/samples?namespace=demo&window=5000ms"
    );
    let authz = json(&out);
    assert_eq!(authz["window"], 5.0);
    let web = &authz["servers"][1];
    assert_eq!(
        web["server"],
        serde_json::json!({"kind": "Server", "namespace": "demo", "name": "web-http"})
    );
    let page = &web["decisions"][1];
    assert_eq!(page["route"], "web-page");
    assert_eq!(
        page["authorization"],
        serde_json::json!({"kind": "AuthorizationPolicy", "name": "web-from-vote-bot"})
    );
    assert_eq!(
        page["allowed"],
        serde_json::json!({"count": 100, "rate": 20.0})
    );
    assert_eq!(web["decisions"][2]["denied"]["count"], 8);
    assert_eq!(web["decisions"][3]["protocol"], "tcp");
    assert_eq!(
        web["rateLimited"][0],
        serde_json::json!({"name": "web-rl", "scope": "identity", "count": 7, "rate": 1.4})
    );
    // `-o table` is the default, spelled out.
    assert_eq!(
        run(&t, &["authz", "deploy/web", "-o", "table"]).unwrap(),
        run(&t, &["authz", "deploy/web"]).unwrap()
    );
}

#[test]
fn from_the_proxies_over_a_window() {
    let t = local();
    let out = run(
        &t,
        &["authz", "deploy/web", "--window", "200ms", "-o", "json"],
    )
    .unwrap();
    let authz = json(&out);
    let window = authz["window"].as_f64().unwrap();
    assert!((0.2..5.0).contains(&window), "{window}");
    let page = &authz["servers"][1]["decisions"][1];
    assert_eq!(page["allowed"]["count"], 100, "{out}");
    let rate = page["allowed"]["rate"].as_f64().unwrap();
    assert!((rate * window - 100.0).abs() < 1e-6, "{rate} × {window}");
}

#[test]
fn since_the_proxies_started() {
    // One scrape each: the web pods' first.
    golden(
        "viz-authz-web-since-start.txt",
        &run(&local(), &["authz", "deploy/web", "--window", "0s"]).unwrap(),
    );
}

#[test]
fn no_decision_is_said() {
    let t = local();
    assert_eq!(
        run(&t, &["authz", "deploy/client", "--window", "0s"]).unwrap(),
        "deploy/client received no request or connection its inbound policy decided on since \
         its proxies started: its proxies counted no authorization (inbound_http_authz_*, \
         inbound_tcp_authz_*)\n"
    );
    let out = run(&t, &["authz", "po/client", "--window", "10ms"]).unwrap();
    assert!(
        out.starts_with(
            "po/client received no request or connection its inbound policy decided on in the \
             last 10ms: "
        ),
        "{out}"
    );
    let out = run(&t, &["authz", "po/client", "--window", "0s", "-o", "json"]).unwrap();
    assert_eq!(
        json(&out),
        serde_json::json!({"window": 0.0, "servers": []})
    );
}

#[test]
fn errors_say_what_to_do() {
    let t = local();
    let check = |args: &[&str], expected: &str| {
        let e = run(&t, args).expect_err("an error");
        assert!(e.contains(expected), "{args:?}: {e}");
    };
    check(
        &["authz", "po/legacy"],
        "po/legacy has no meshed pod (legacy): authorization metrics come from the pods' \
         proxies; mesh them first",
    );
    check(
        &["authz", "deploy/nope"],
        "no such resource: deploy/nope in namespace demo",
    );
}
