//! `mesh demo`: meshed pods with live traffic on this machine, as far as the mesh exists today.
//!
//! Pods on a local bridge: `control` runs the destination and identity controllers on a folder
//! of the cluster's objects, with a CA made for the run; `web-1` and `web-2` serve an HTTP
//! application behind the Service `web-svc`; `client` calls `web-svc` by name (one call in ten
//! fails on purpose), and its proxy discovers and balances over the web pods, over mutual TLS.
//! All but `control` are meshed by the real `mesh-init` and `mesh-proxy`. The demo prints what runs and how to look at it, then a line of golden metrics
//! from the client's proxy every few seconds, until Ctrl-C; everything is torn down on the way
//! out, and the namespaces of a demo that crashed are removed by the next one.

use crate::local::{self, Cluster, ControlOptions, ControlPlane, Pod, Proxy};
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// The port `web` serves on.
const WEB_PORT: u16 = 8080;

/// The service's virtual address; the client's proxy resolves it by name, not by this IP.
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];

/// Runs the demo in the foreground until Ctrl-C (or SIGTERM).
pub fn run(summary_every: Duration) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("mesh demo needs root: it creates network namespaces and iptables rules (run it with sudo)");
    }
    let started = Instant::now();
    step(
        "checking the tools local mode needs (iproute2, iptables, util-linux)",
        || local::ensure_tools(|what| print!("{what} … ")),
    )?;
    local::require_root().context("mesh demo needs root")?;
    let mut cluster = step(
        "creating the pod network (bridge, 10.244.0.0/16, no route off it)",
        || Cluster::new("demo"),
    )?;
    let control = step("creating pod control", || cluster.add_pod("control"))?;
    let webs = [
        step("creating pod web-1", || cluster.add_pod("web-1"))?,
        step("creating pod web-2", || cluster.add_pod("web-2"))?,
    ];
    let client = step("creating pod client", || cluster.add_pod("client"))?;
    let control_plane = step(
        "starting the destination and identity controllers in pod control (fresh CA)",
        || ControlPlane::start(&control, cluster.log_dir(), &ControlOptions::default()),
    )?;
    step(
        "writing the cluster's objects (Service web-svc, its EndpointSlice)",
        || {
            control_plane.write(
                "web-svc.yaml",
                &local::service_yaml(
                    "demo",
                    "web-svc",
                    CLUSTER_IP.into(),
                    (80, WEB_PORT),
                    &[("app", "web")],
                    &webs,
                ),
            )
        },
    )?;
    let mut proxies = Vec::new();
    for web in &webs {
        step(
            &format!("starting the web application in pod {}", web.name),
            || serve_web(web),
        )?;
        proxies.push(step(
            &format!(
                "meshing pod {} (mesh-init, mesh-proxy, certificate for web.demo)",
                web.name
            ),
            || {
                web.mesh(control_plane.enroll_in(
                    web,
                    "demo",
                    "web",
                    &[("app", "web")],
                    Some("web"),
                )?)
            },
        )?);
    }
    let client_proxy = step(
        "meshing pod client (discovery, certificate for client.demo)",
        || {
            client.set_hosts(&[(
                std::net::IpAddr::from(CLUSTER_IP),
                "web-svc.demo.svc.cluster.local",
            )])?;
            client.route("10.96.0.0/12")?;
            client.mesh(control_plane.enroll_in(
                &client,
                "demo",
                "client",
                &[("app", "client")],
                Some("client"),
            )?)
        },
    )?;
    let _load = step("starting traffic from client to web-svc", || {
        Ok(drive_load(&client, SocketAddr::from((CLUSTER_IP, 80))))
    })?;

    println!(
        "\nThe local mesh is up ({:.1?}). Running:",
        started.elapsed()
    );
    println!(
        "  pod control  {:<15} netns {}  mesh-controller destination, mesh-controller identity",
        control.ip, control.netns
    );
    for (pod, proxy) in webs.iter().zip(&proxies).chain([(&client, &client_proxy)]) {
        println!(
            "  pod {:<8} {:<15} netns {}  mesh-proxy pid {}",
            pod.name,
            pod.ip,
            pod.netns,
            proxy.pid()
        );
    }
    println!("\nLook around (as root):");
    println!(
        "  export MESH_LOCAL_STATE={}; mesh viz stat deploy; mesh viz edges deploy; mesh viz tap deploy/web",
        control_plane.state_dir().display()
    );
    println!(
        "  ip netns exec {} curl -s localhost:4191/metrics | grep -E '^response_total'",
        client.netns
    );
    println!(
        "  ip netns exec {} curl -s http://web-svc.demo.svc.cluster.local/",
        client.netns
    );
    println!(
        "  ip netns exec {} curl -sN --http2-prior-knowledge 'http://127.0.0.1:{}/v1/destination/watch?authority=web-svc.demo.svc.cluster.local:80'",
        control.netns,
        local::DESTINATION_PORT
    );
    println!(
        "  ip netns exec {} curl -s localhost:4191/metrics | grep -E '^request_total.*client_id'    # mutual TLS, by client identity",
        webs[0].netns
    );
    println!(
        "  ip netns exec {} iptables -t nat -S    # the redirect rules of mesh-init",
        client.netns
    );
    println!(
        "\nGolden metrics of the client's proxy every {summary_every:?}; Ctrl-C stops the demo.\n"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut ticks = tokio::time::interval(summary_every);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = ticks.tick() => println!("  {}", summary(&client_proxy)),
            }
        }
        anyhow::Ok(())
    })?;
    println!("\nstopping: removing the pods, their proxies and the controller");
    drop((client_proxy, proxies));
    drop(control_plane);
    drop(cluster);
    println!("✔ done");
    Ok(())
}

/// Runs one setup step, printing it with a tick (or a cross) and how long it took.
fn step<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    print!("  {what} … ");
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    match f() {
        Ok(t) => {
            println!("✔ ({:.0?})", start.elapsed());
            Ok(t)
        }
        Err(e) => {
            println!("×");
            Err(e.context(what.to_string()))
        }
    }
}

/// A one-line summary of a proxy's outbound HTTP traffic: requests, success rate.
fn summary(proxy: &Proxy) -> String {
    match proxy.admin_get("/metrics") {
        Ok((200, body)) => summarize(&body),
        Ok((status, _)) => format!("metrics answered {status}"),
        Err(e) => format!("metrics unavailable: {e:#}"),
    }
}

/// Sums outbound `response_total` by classification, and the share of each `dst_pod`.
fn summarize(metrics: &str) -> String {
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut by_pod: std::collections::BTreeMap<String, u64> = Default::default();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with(r#"response_total{direction="outbound""#))
    {
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if line.contains(r#"classification="success""#) {
            ok += n;
        } else {
            failed += n;
        }
        if let Some(pod) = line
            .split(r#"dst_pod=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            *by_pod.entry(pod.to_string()).or_default() += n;
        }
    }
    let total = ok + failed;
    let rate = if total == 0 {
        100.0
    } else {
        ok as f64 * 100.0 / total as f64
    };
    let mut line =
        format!("client → web-svc: {total} responses, {failed} failed, success rate {rate:.1}%");
    if total > 0 && !by_pod.is_empty() {
        let shares: Vec<String> = by_pod
            .iter()
            .map(|(pod, n)| format!("{pod} {:.0}%", *n as f64 * 100.0 / total as f64))
            .collect();
        line.push_str(&format!(" ({})", shares.join(", ")));
    }
    line
}

/// Serves the web application in `pod` on a thread inside it: `/` answers with the pod's name,
/// `/error` fails with a 500 so there is something to find.
fn serve_web(pod: &Pod) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let (ready, is_ready) = std::sync::mpsc::channel();
    let name = pod.name.clone();
    let handle = pod.run_in(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], WEB_PORT))).await?;
            let _ = ready.send(());
            loop {
                let (io, _) = listener.accept().await?;
                let name = name.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/error" => (
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "{\"error\":\"on purpose\"}\n".to_string(),
                                ),
                                _ => (
                                    StatusCode::OK,
                                    format!(
                                        "{{\"pod\":\"{name}\",\"path\":\"{}\"}}\n",
                                        req.uri().path()
                                    ),
                                ),
                            };
                            let mut rsp = Response::new(Full::new(Bytes::from(body)));
                            *rsp.status_mut() = status;
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), service)
                        .await;
                });
            }
        })
    });
    is_ready
        .recv_timeout(Duration::from_secs(10))
        .context("the web application did not start")?;
    Ok(handle)
}

/// Calls `web-svc` (its ClusterIP, `Host: web-svc`) from inside `pod` five times a second over
/// one keep-alive connection; every tenth call goes to `/error`. The thread ends with the pod.
fn drive_load(pod: &Pod, web: SocketAddr) -> std::thread::JoinHandle<anyhow::Result<()>> {
    pod.run_in(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(200));
            let mut sender = None;
            for n in 0u64.. {
                ticks.tick().await;
                if sender.is_none() {
                    sender = connect(web).await.ok();
                }
                let Some(s) = sender.as_mut() else { continue };
                let path = if n % 10 == 9 { "/error" } else { "/" };
                let req = Request::get(path)
                    .header("host", "web-svc")
                    .body(Empty::<Bytes>::new())?;
                match s.send_request(req).await {
                    Ok(rsp) => {
                        let _ = rsp.into_body().collect().await;
                    }
                    Err(_) => sender = None,
                }
            }
            Ok(())
        })
    })
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let io = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_sums_outbound_responses_by_classification() {
        let metrics = r#"
response_total{direction="outbound",authority="web.demo:8080",target_addr="10.244.0.2:8080",classification="success",status_code="200"} 18
response_total{direction="outbound",authority="web.demo:8080",target_addr="10.244.0.2:8080",classification="failure",status_code="500"} 2
response_total{direction="inbound",authority="x",target_addr="127.0.0.1:1",classification="failure",status_code="500"} 7
"#;
        assert_eq!(
            super::summarize(metrics),
            "client → web-svc: 20 responses, 2 failed, success rate 90.0%"
        );
        assert_eq!(
            super::summarize(""),
            "client → web-svc: 0 responses, 0 failed, success rate 100.0%"
        );
        let balanced = r#"
response_total{direction="outbound",authority="web-svc",target_addr="10.244.0.3:8080",dst_namespace="demo",dst_service="web-svc",dst_pod="web-1",classification="success",status_code="200"} 6
response_total{direction="outbound",authority="web-svc",target_addr="10.244.0.4:8080",dst_namespace="demo",dst_service="web-svc",dst_pod="web-2",classification="success",status_code="200"} 3
response_total{direction="outbound",authority="web-svc",target_addr="10.244.0.4:8080",dst_namespace="demo",dst_service="web-svc",dst_pod="web-2",classification="failure",status_code="500"} 1
"#;
        assert_eq!(
            super::summarize(balanced),
            "client → web-svc: 10 responses, 1 failed, success rate 90.0% (web-1 60%, web-2 40%)"
        );
    }
}
