//! `mesh-load`: an HTTP/1.1 load client for the end-to-end tests. It resolves the URL's host with
//! the system resolver (inside a pod: the pod's hosts file), keeps `--concurrency` keep-alive
//! connections busy for `--duration`, and prints one JSON object: requests answered per server
//! (the `server-addr` response header) and failures.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{collections::BTreeMap, process::ExitCode, time::Duration};

struct Args {
    url: http::Uri,
    concurrency: usize,
    duration: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let (mut concurrency, mut duration) = (4, Duration::from_secs(3));
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--concurrency" => {
                concurrency = value("--concurrency")?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--duration-ms" => {
                duration = Duration::from_millis(
                    value("--duration-ms")?
                        .parse()
                        .map_err(|e| format!("--duration-ms: {e}"))?,
                )
            }
            _ if url.is_none() => {
                url = Some(
                    arg.parse::<http::Uri>()
                        .map_err(|e| format!("{arg}: {e}"))?,
                )
            }
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    let url = url.ok_or("usage: mesh-load URL [--concurrency N] [--duration-ms MS]")?;
    Ok(Args {
        url,
        concurrency: concurrency.max(1),
        duration,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("mesh-load: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(authority) = args.url.authority().cloned() else {
        eprintln!("mesh-load: the URL needs a host");
        return ExitCode::from(2);
    };
    let port = authority.port_u16().unwrap_or(80);
    let addr = match tokio::net::lookup_host((authority.host(), port))
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) | Err(_) => {
            eprintln!("mesh-load: cannot resolve {}", authority.host());
            return ExitCode::from(1);
        }
    };
    let deadline = tokio::time::Instant::now() + args.duration;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (authority, path) = (authority.clone(), args.url.path().to_string());
            tokio::spawn(async move {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                let mut sender = None;
                while tokio::time::Instant::now() < deadline {
                    if sender.is_none() {
                        sender = connect(addr).await.ok();
                    }
                    let Some(s) = sender.as_mut() else {
                        *counts.entry("failed: connect".into()).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let req = http::Request::get(&path)
                        .header("host", authority.as_str())
                        .body(Empty::<Bytes>::new())
                        .expect("a valid request");
                    let key = match s.send_request(req).await {
                        Ok(rsp) if rsp.status() == 200 => {
                            let server = rsp
                                .headers()
                                .get("server-addr")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_string();
                            match rsp.into_body().collect().await {
                                Ok(_) => server,
                                Err(e) => format!("failed: body: {e}"),
                            }
                        }
                        Ok(rsp) => format!("failed: status {}", rsp.status()),
                        Err(e) => {
                            sender = None;
                            format!("failed: {e}")
                        }
                    };
                    *counts.entry(key).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        for (k, v) in worker.await.unwrap_or_default() {
            *total.entry(k).or_default() += v;
        }
    }
    let (failed, servers): (BTreeMap<_, _>, BTreeMap<_, _>) = total
        .into_iter()
        .partition(|(k, _)| k.starts_with("failed"));
    let out = serde_json::json!({ "servers": servers, "failures": failed });
    println!("{out}");
    ExitCode::SUCCESS
}

async fn connect(
    addr: std::net::SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let io = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
