//! Snapshots of the ratatui views (`TestBackend`) and the plain tables, from recorded scrapes of
//! the pod harness (`tests/data/scrape-*.txt`) and a recorded tap stream (`tap-web.jsonl`); the
//! routes table from two scrapes of web's pods written to the proxy's route families
//! (`tests/data/scrape-routes-*.txt`), the authz table from two written to its authorization
//! families (`tests/data/scrape-authz-*.txt`).
//! `UPDATE_GOLDEN=1 cargo test -p mesh-viz` rewrites `tests/golden/`; review the diff.

use std::collections::HashMap;
use std::path::Path;

use mesh_api::tap::Event;
use mesh_viz::authz::authz;
use mesh_viz::edges::edges;
use mesh_viz::model::{Kind, PodInfo, Workload};
use mesh_viz::routes::routes;
use mesh_viz::stat::{stat, Measure, Scrapes};
use mesh_viz::top::{Column, Top};
use mesh_viz::views::{self, Dashboard, WorkloadView};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn data(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        expected,
        actual,
        "{} differs; if intended, run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

fn pod(name: &str, deploy: &str, ip: &str) -> PodInfo {
    PodInfo {
        namespace: "demo".into(),
        name: name.into(),
        ip: Some(ip.parse().unwrap()),
        owner: Workload::new(Kind::Deployment, "demo", deploy),
        services: if deploy == "web" {
            vec!["web-svc".into()]
        } else {
            vec![]
        },
        meshed: true,
        identity: Some(format!(
            "{deploy}.demo.serviceaccount.identity.mesh.cluster.local"
        )),
        address: String::new(),
    }
}

/// The recorded harness: web-1, web-2 (deploy/web), client (deploy/client).
fn pods() -> Vec<PodInfo> {
    vec![
        pod("web-1", "web", "10.244.0.3"),
        pod("web-2", "web", "10.244.0.4"),
        pod("client", "client", "10.244.0.5"),
    ]
}

fn scrapes() -> Scrapes {
    ["web-1", "web-2", "client"]
        .iter()
        .map(|p| {
            let samples = mesh_viz::prom::parse(&data(&format!("scrape-{p}.txt"))).unwrap();
            (("demo".to_string(), p.to_string()), samples)
        })
        .collect()
}

fn groups() -> Vec<(Workload, Vec<PodInfo>)> {
    let pods = pods();
    ["client", "web"]
        .iter()
        .map(|d| {
            let w = Workload::new(Kind::Deployment, "demo", d);
            let members = pods.iter().filter(|p| p.belongs_to(&w)).cloned().collect();
            (w, members)
        })
        .collect()
}

fn events() -> Vec<Event> {
    data("tap-web.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn top() -> Top {
    let names = pods()
        .into_iter()
        .map(|p| (p.ip.unwrap(), p.name))
        .collect::<HashMap<_, _>>();
    let mut top = Top::new(names);
    for e in events() {
        top.record("web-1", &e);
    }
    top
}

fn render(width: u16, height: u16, draw: impl FnOnce(&mut ratatui::Frame)) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let frame = terminal.draw(draw).unwrap();
    views::buffer_text(frame.buffer)
}

#[test]
fn stat_of_recorded_scrapes() {
    let rows = stat(&groups(), None, &scrapes(), 0.0, &Measure::Inbound);
    // The harness sent 6 × `/` and 2 × `/grpc/fail` (grpc-status 2) to web.
    let web = rows.iter().find(|r| r.workload.name == "web").unwrap();
    assert_eq!((web.responses, web.success_rate), (8, Some(0.75)));
    let client = rows.iter().find(|r| r.workload.name == "client").unwrap();
    assert_eq!((client.responses, client.success_rate), (0, None));
    golden("stat.txt", &views::stat_text(&rows));
    golden(
        "stat-view.txt",
        &render(100, 6, |f| {
            views::render_stat(f, f.area(), " stat deploy -n demo ", &rows)
        }),
    );
}

#[test]
fn edges_of_recorded_scrapes() {
    let e = edges(&pods(), &scrapes(), Kind::Deployment);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].mtls);
    golden("edges.txt", &views::edges_text(&e));
}

#[test]
fn top_of_a_recorded_stream() {
    let mut top = top();
    golden("top.txt", &views::top_text(&top.rows()));
    golden(
        "top-view.txt",
        &render(110, 6, |f| {
            views::render_top(
                f,
                f.area(),
                " top deploy/web ",
                &top.rows(),
                top.sort,
                top.reversed,
            )
        }),
    );
    top.sort = Column::Worst;
    top.reversed = true;
    golden(
        "top-view-by-worst.txt",
        &render(110, 6, |f| {
            views::render_top(
                f,
                f.area(),
                " top deploy/web ",
                &top.rows(),
                top.sort,
                top.reversed,
            )
        }),
    );
}

#[test]
fn dashboard_of_recorded_data() {
    let rows = stat(&groups(), None, &scrapes(), 0.0, &Measure::Inbound);
    let all_edges = edges(&pods(), &scrapes(), Kind::Deployment);
    let model = Dashboard {
        title: "mesh viz · ns/demo".into(),
        workloads: rows
            .into_iter()
            .enumerate()
            .map(|(i, stat)| WorkloadView {
                stat,
                rps: (0..30).map(|n| (n * (i as u64 + 1)) % 7).collect(),
                p95: (0..30).map(|n| (n % 5) + 1).collect(),
            })
            .collect(),
        selected: 1,
        edges: all_edges,
        top: top().rows(),
        status: "refreshed every 2s · 3 pods".into(),
    };
    golden(
        "dashboard.txt",
        &render(120, 24, |f| views::render_dashboard(f, &model)),
    );
}

/// The route scrapes of web-1 and web-2 taken `when` (`before`, `after`).
fn route_scrapes(when: &str) -> Scrapes {
    ["web-1", "web-2"]
        .iter()
        .map(|p| {
            let text = data(&format!("scrape-routes-{p}-{when}.txt"));
            let samples = mesh_viz::prom::parse(&text).unwrap();
            (("demo".to_string(), p.to_string()), samples)
        })
        .collect()
}

#[test]
fn routes_of_two_scrapes() {
    let web: Vec<PodInfo> = pods()
        .into_iter()
        .filter(|p| p.services.len() == 1)
        .collect();
    let (before, after) = (route_scrapes("before"), route_scrapes("after"));
    let r = routes(&web, Some(&before), &after, 5.0);
    // web-1 sent half its traffic so far in the window, web-2 all of its second half.
    let voting = r
        .routes
        .iter()
        .find(|r| r.route.name == "voting-split")
        .unwrap();
    assert_eq!((voting.requests, voting.rps), (100, Some(20.0)));
    assert_eq!(voting.success_rate, Some(0.92));
    golden("routes.txt", &views::routes_text(&r));
    let whole = routes(&web, None, &after, 0.0);
    golden("routes-since-start.txt", &views::routes_text(&whole));
    // The callers are web's pods: client's scrape has no route families.
    assert_eq!(routes(&pods()[2..], None, &scrapes(), 0.0).routes, vec![]);
}

/// The authorization scrapes of web-1 and web-2 taken `when` (`before`, `after`).
fn authz_scrapes(when: &str) -> Scrapes {
    ["web-1", "web-2"]
        .iter()
        .map(|p| {
            let text = data(&format!("scrape-authz-{p}-{when}.txt"));
            let samples = mesh_viz::prom::parse(&text).unwrap();
            (("demo".to_string(), p.to_string()), samples)
        })
        .collect()
}

#[test]
fn authz_of_two_scrapes() {
    let web: Vec<PodInfo> = pods()
        .into_iter()
        .filter(|p| p.services.len() == 1)
        .collect();
    let (before, after) = (authz_scrapes("before"), authz_scrapes("after"));
    let a = authz(&web, Some(&before), &after, 5.0);
    let names: Vec<String> = a.servers.iter().map(|s| s.server.to_string()).collect();
    assert_eq!(
        names,
        [
            "Server demo/web-admin",
            "Server demo/web-http",
            "default all-unauthenticated"
        ]
    );
    // web-page: 50 more on each pod; web-api: 10 on web-1, 5 new on web-2.
    let http = &a.servers[1].decisions;
    assert_eq!(
        (
            http[0].route.as_deref(),
            http[0].allowed.count,
            http[0].allowed.rate
        ),
        (Some("web-api"), 15, Some(3.0))
    );
    assert_eq!((http[1].allowed.count, http[2].denied.count), (100, 8));
    golden("authz.txt", &views::authz_text(&a));
    let whole = authz(&web, None, &after, 0.0);
    golden("authz-since-start.txt", &views::authz_text(&whole));
    // The client's scrape has no authorization families.
    assert_eq!(authz(&pods()[2..], None, &scrapes(), 0.0).servers, vec![]);
}
