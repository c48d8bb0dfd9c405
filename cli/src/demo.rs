//! `mesh demo`: meshed pods with live traffic on this machine, as far as the mesh exists today.
//!
//! Two pods on a local bridge, `web` (an HTTP application) and `client` (a steady caller of
//! `web` that fails one call in ten on purpose), both meshed by the real `mesh-init` and
//! `mesh-proxy`. The demo prints what runs and how to look at it, then a line of golden metrics
//! from the client's proxy every few seconds, until Ctrl-C; everything is torn down on the way
//! out, and the namespaces of a demo that crashed are removed by the next one.

use crate::local::{self, Cluster, MeshOptions, Pod, Proxy};
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

/// Runs the demo in the foreground until Ctrl-C (or SIGTERM).
pub fn run(summary_every: Duration) -> anyhow::Result<()> {
    local::require_root().context("mesh demo needs root")?;
    let started = Instant::now();
    let mut cluster = step(
        "creating the pod network (bridge, 10.244.0.0/16, no route off it)",
        || Cluster::new("demo"),
    )?;
    let web = step("creating pod web", || cluster.add_pod("web"))?;
    let client = step("creating pod client", || cluster.add_pod("client"))?;
    let _web_app = step("starting the web application in pod web", || {
        serve_web(&web)
    })?;
    let web_proxy = step("meshing pod web (mesh-init, mesh-proxy)", || {
        web.mesh(MeshOptions::default())
    })?;
    let client_proxy = step("meshing pod client (mesh-init, mesh-proxy)", || {
        client.mesh(MeshOptions::default())
    })?;
    let web_addr = SocketAddr::from((web.ip, WEB_PORT));
    let _load = step("starting traffic from client to web", || {
        Ok(drive_load(&client, web_addr))
    })?;

    println!(
        "\nThe local mesh is up ({:.1?}). Running:",
        started.elapsed()
    );
    for (pod, proxy) in [(&web, &web_proxy), (&client, &client_proxy)] {
        println!(
            "  pod {:<7} {:<15} netns {}  mesh-proxy pid {}",
            pod.name,
            pod.ip,
            pod.netns,
            proxy.pid()
        );
    }
    println!("\nLook around (as root):");
    println!(
        "  ip netns exec {} curl -s localhost:4191/metrics | grep -E '^(request|response)_total'",
        client.netns
    );
    println!(
        "  ip netns exec {} curl -s localhost:4191/metrics | grep -E '^response_total'",
        web.netns
    );
    println!(
        "  ip netns exec {} curl -s http://{web_addr}/",
        client.netns
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
    println!("\nstopping: removing the pods and their proxies");
    drop((client_proxy, web_proxy));
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

/// Sums outbound `response_total` by classification.
fn summarize(metrics: &str) -> String {
    let (mut ok, mut failed) = (0u64, 0u64);
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
    }
    let total = ok + failed;
    let rate = if total == 0 {
        100.0
    } else {
        ok as f64 * 100.0 / total as f64
    };
    format!("client → web: {total} responses, {failed} failed, success rate {rate:.1}%")
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

/// Calls `web` from inside `pod` five times a second over one keep-alive connection; every tenth
/// call goes to `/error`. The thread ends with the pod.
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
                    .header("host", format!("web.demo:{WEB_PORT}"))
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
            "client → web: 20 responses, 2 failed, success rate 90.0%"
        );
        assert_eq!(
            super::summarize(""),
            "client → web: 0 responses, 0 failed, success rate 100.0%"
        );
    }
}
