//! What the `mesh viz` tests share: a viz command run in-process against a [`Target`], the
//! recorded local state, proxies served over an in-memory transport, and a fake viz metrics API.

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

use super::{golden, testdata, viz_data};

/// Runs `mesh viz ARGS` against `target`: its output, or its error (usage or run) as text.
pub fn run(target: &Target, args: &[&str]) -> Result<String, String> {
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

/// Runs `mesh viz ARGS` against `target`, which must fail with an error containing `expected`.
pub fn assert_fails(target: &Target, args: &[&str], expected: &str) {
    let e = run(target, args).expect_err("an error");
    assert!(e.contains(expected), "{args:?}: {e}");
}

/// `mesh viz COMMAND deploy/web` (`routes`, `authz`) on a [`cluster`] whose metrics API serves
/// web's samples of the command's families: its table and JSON match the golden files
/// `viz-COMMAND-web.txt` and `viz-COMMAND-web.json`, `-o table` is the default, and the API was
/// asked for namespace demo's samples over 5s, the JSON's window. Returns the JSON.
pub fn web_from_the_metrics_api(command: &'static str) -> serde_json::Value {
    let api = FakeMetricsApi::new(command);
    let t = cluster(api.clone());
    golden(
        &format!("viz-{command}-web.txt"),
        &run(&t, &[command, "deploy/web"]).unwrap(),
    );
    let out = run(&t, &[command, "deploy/web", "-o", "json"]).unwrap();
    golden(&format!("viz-{command}-web.json"), &out);
    assert_eq!(
        api.seen.lock().unwrap()[0],
        "/api/v1/samples?namespace=demo&window=5000ms"
    );
    // `-o table` is the default, spelled out.
    assert_eq!(
        run(&t, &[command, "deploy/web", "-o", "table"]).unwrap(),
        run(&t, &[command, "deploy/web"]).unwrap()
    );
    let value = json(&out);
    assert_eq!(value["window"], 5.0);
    value
}

/// `mesh viz COMMAND deploy/web --window 200ms -o json` (`routes`, `authz`) on the local mesh of
/// [`web_over_a_window`]: its JSON, and its window, which must be about 200ms (at least, and
/// well under the metrics API's 5s).
pub fn web_from_the_proxies_over_200ms(command: &str) -> (serde_json::Value, f64) {
    let t = web_over_a_window(command);
    let out = run(
        &t,
        &[command, "deploy/web", "--window", "200ms", "-o", "json"],
    )
    .unwrap();
    let value = json(&out);
    let window = value["window"].as_f64().unwrap();
    assert!((0.2..5.0).contains(&window), "{window}");
    (value, window)
}

/// `text` as JSON.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The recorded local state folder (`testdata/viz-state`).
pub fn state() -> State {
    State::read(&testdata("viz-state")).expect("the recorded state")
}

/// How a fake proxy answers a request for a path: its status and body.
pub type Answers = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// Serves each pod's [`Answers`] over an in-memory connection; a pod without is refused.
pub struct Proxies(pub HashMap<String, Answers>);

/// A proxy whose `/metrics` answers `texts` in turn, the last one ever after; 404 elsewhere.
pub fn scrapes_in_turn(texts: Vec<String>) -> Answers {
    let served = AtomicUsize::new(0);
    Arc::new(move |path| match path {
        "/metrics" => {
            let n = served.fetch_add(1, Ordering::SeqCst);
            (200, texts[n.min(texts.len() - 1)].clone())
        }
        _ => (404, String::new()),
    })
}

/// The scrape of web's pod `pod` taken `when` (`before`, `after`), written to the proxy's
/// `families` families: `viz/tests/data/scrape-{families}-{pod}-{when}.txt`.
pub fn web_scrape(families: &str, pod: &str, when: &str) -> String {
    viz_data(&format!("scrape-{families}-{pod}-{when}.txt"))
}

/// The local mesh whose web pods answer their `before` scrape of `families` (`routes`,
/// `authz`), then their `after` one; client answers the harness' scrape, which has none of
/// those families.
pub fn web_over_a_window(families: &str) -> Target {
    let mut proxies = HashMap::new();
    for pod in ["web-1", "web-2"] {
        let texts = vec![
            web_scrape(families, pod, "before"),
            web_scrape(families, pod, "after"),
        ];
        proxies.insert(pod.to_string(), scrapes_in_turn(texts));
    }
    let client = scrapes_in_turn(vec![viz_data("scrape-client.txt")]);
    proxies.insert("client".into(), client);
    Target::local(state(), Arc::new(Proxies(proxies)))
}

/// The viz metrics API: web's pods' samples of `families` 5s apart; the paths asked for.
pub struct FakeMetricsApi {
    families: &'static str,
    pub seen: Mutex<Vec<String>>,
}

impl FakeMetricsApi {
    pub fn new(families: &'static str) -> Arc<Self> {
        Arc::new(FakeMetricsApi {
            families,
            seen: Mutex::new(Vec::new()),
        })
    }
}

/// A cluster's target: the recorded objects, their samples from the metrics API.
pub fn cluster(api: Arc<FakeMetricsApi>) -> Target {
    let local = Target::local(state(), Arc::new(Proxies(HashMap::new())));
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

// === impl Proxies, FakeMetricsApi ===

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    viz: VizArgs,
}

impl Transport for Proxies {
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
                    let (status, body) = answers(req.uri().path());
                    async move {
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

impl Api for FakeMetricsApi {
    fn get<'a>(&'a self, path_and_query: &'a str) -> Getting<'a> {
        self.seen.lock().unwrap().push(path_and_query.to_string());
        Box::pin(async move {
            let samples = |pod: &str, when: &str| {
                mesh_viz::prom::parse(&web_scrape(self.families, pod, when)).unwrap()
            };
            let pods = ["web-1", "web-2"]
                .iter()
                .map(|pod| PodSamples {
                    namespace: "demo".into(),
                    pod: pod.to_string(),
                    before: Some(samples(pod, "before")),
                    after: samples(pod, "after"),
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
