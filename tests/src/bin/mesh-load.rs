//! `mesh-load`: an HTTP/1.1 load client for the end-to-end tests. It resolves the URL's host with
//! the system resolver (inside a pod: the pod's hosts file) and prints one JSON object: requests
//! answered per server (the `server-addr` response header), failures by reason, how many
//! requests were sent, and their latency.
//!
//! By default it keeps `--concurrency` keep-alive connections busy for `--duration-ms` (a closed
//! loop). With `--rate R` it is an open loop: a request is due every 1/R s whatever the answers
//! do, `--concurrency` connections take them in turn, and a request's latency counts from when it
//! was due (so a stall shows as latency, not as fewer requests). After the duration it waits up
//! to `--grace-ms` for the requests still due or in flight; those it gives up on are failures
//! ("failed: not sent" or "failed: no answer"), so every due request is counted once: `sent`
//! equals the sum of answers and failures.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration};
use tokio::{sync::Mutex, time::Instant};

struct Args {
    url: http::Uri,
    concurrency: usize,
    duration: Duration,
    rate: Option<u32>,
    grace: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let (mut concurrency, mut duration) = (4, Duration::from_secs(3));
    let (mut rate, mut grace) = (None, Duration::from_secs(5));
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let mut number = |name: &str| -> Result<u64, String> {
            value(name)?.parse().map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--concurrency" => concurrency = number("--concurrency")? as usize,
            "--duration-ms" => duration = Duration::from_millis(number("--duration-ms")?),
            "--rate" => {
                rate = Some(
                    u32::try_from(number("--rate")?)
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or("--rate: a number of requests per second, at least 1")?,
                )
            }
            "--grace-ms" => grace = Duration::from_millis(number("--grace-ms")?),
            _ if url.is_none() => {
                url = Some(
                    arg.parse::<http::Uri>()
                        .map_err(|e| format!("{arg}: {e}"))?,
                )
            }
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    let url = url.ok_or(
        "usage: mesh-load URL [--concurrency N] [--duration-ms MS] [--rate R] [--grace-ms MS]",
    )?;
    Ok(Args {
        url,
        concurrency: concurrency.max(1),
        duration,
        rate,
        grace,
    })
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    /// Latencies of answered requests, in µs.
    latencies: Vec<u64>,
    /// When each failure happened, ms after the start, with its reason (the first 1,000).
    failed_at: Vec<(u64, String)>,
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
    let start = Instant::now();
    let deadline = start + args.duration;
    // In the open loop, the due times of requests; the workers take them in turn.
    let due = args.rate.map(|rate| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut ticks = tokio::time::interval(period);
            // A late tick is still due: count it, so the number of requests is rate × duration.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = (args.duration.as_secs_f64() * f64::from(rate)).round() as u64;
            for n in 0..total {
                ticks.tick().await;
                if tx.send(start + period.mul_f64(n as f64)).is_err() {
                    break;
                }
            }
        });
        Arc::new(Mutex::new(rx))
    });
    let give_up = deadline + args.grace;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (authority, path) = (authority.clone(), args.url.path().to_string());
            let due = due.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut sender = None;
                loop {
                    let began = match &due {
                        None if Instant::now() < deadline => Instant::now(),
                        None => break,
                        Some(due) => {
                            let mut due = due.lock().await;
                            match tokio::time::timeout_at(give_up, due.recv()).await {
                                Ok(Some(at)) => at,
                                Ok(None) | Err(_) => break,
                            }
                        }
                    };
                    let key = if Instant::now() >= give_up {
                        "failed: not sent".to_string()
                    } else {
                        match tokio::time::timeout_at(
                            give_up,
                            call(&mut sender, addr, &authority, &path),
                        )
                        .await
                        {
                            Ok(key) => key,
                            Err(_) => "failed: no answer".to_string(),
                        }
                    };
                    if key.starts_with("failed") {
                        if tally.failed_at.len() < 1000 {
                            tally.failed_at.push((
                                began.duration_since(start).as_millis() as u64,
                                key.clone(),
                            ));
                        }
                        if key == "failed: connect" && due.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    } else {
                        tally.latencies.push(began.elapsed().as_micros() as u64);
                    }
                    *tally.counts.entry(key).or_default() += 1;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await.unwrap_or_default();
        for (k, v) in tally.counts {
            *total.counts.entry(k).or_default() += v;
        }
        total.latencies.extend(tally.latencies);
        total.failed_at.extend(tally.failed_at);
    }
    // The due requests no worker took before giving up.
    if let Some(due) = due {
        let mut rx = due.lock().await;
        rx.close();
        let mut left = 0;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            *total.counts.entry("failed: not sent".into()).or_default() += left;
        }
    }
    total.latencies.sort_unstable();
    total.failed_at.sort();
    let sent: u64 = total.counts.values().sum();
    let percentile = |p: f64| -> f64 {
        let l = &total.latencies;
        if l.is_empty() {
            return 0.0;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i] as f64 / 1000.0
    };
    let (failed, servers): (BTreeMap<_, _>, BTreeMap<_, _>) = total
        .counts
        .into_iter()
        .partition(|(k, _)| k.starts_with("failed"));
    let out = serde_json::json!({
        "servers": servers,
        "failures": failed,
        "sent": sent,
        "latency_ms": {
            "p50": percentile(0.50),
            "p99": percentile(0.99),
            "max": percentile(1.0),
        },
        "failed_at_ms": total.failed_at,
    });
    println!("{out}");
    ExitCode::SUCCESS
}

/// One GET on the worker's connection (a new one if it has none); the answering server's name,
/// or `failed: <reason>`.
async fn call(
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    addr: std::net::SocketAddr,
    authority: &http::uri::Authority,
    path: &str,
) -> String {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await.ok();
    }
    let Some(s) = sender.as_mut() else {
        return "failed: connect".into();
    };
    if s.ready().await.is_err() {
        *sender = None;
        return "failed: connection closed".into();
    }
    let req = http::Request::get(path)
        .header("host", authority.as_str())
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    match s.send_request(req).await {
        Ok(rsp) if rsp.status() == 200 => {
            let server = rsp
                .headers()
                .get("server-addr")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            match rsp.into_body().collect().await {
                Ok(_) => server,
                Err(e) => {
                    *sender = None;
                    format!("failed: body: {e}")
                }
            }
        }
        Ok(rsp) => format!("failed: status {}", rsp.status()),
        Err(e) => {
            *sender = None;
            format!("failed: {e}")
        }
    }
}

async fn connect(
    addr: std::net::SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let io = tokio::net::TcpStream::connect(addr).await?;
    io.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
