//! The load generator: runs `oha` inside a pod, bounded in time, and reads its JSON summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::Pod;
use serde::Deserialize;

/// How long `oha` may run past its `-z` duration before it is killed.
const GRACE: Duration = Duration::from_secs(30);

/// The HTTP version the load generator speaks to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge (`h2c`).
    Http2,
}

/// How hard to push.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Load {
    /// A fixed rate of requests per second, latency corrected for coordinated omission: a
    /// request's latency counts from when it should have been sent.
    Rate(u32),
    /// As fast as the fixed concurrency allows.
    Max,
}

/// One load-generator run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    pub url: String,
    pub protocol: Protocol,
    pub load: Load,
    /// HTTP/1: connections. HTTP/2: connections, each with `streams` requests in flight.
    pub connections: u32,
    /// HTTP/2 only: parallel requests per connection (`-p`).
    pub streams: u32,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The `Host` header to send instead of the URL's (`--host`), e.g. a service name when
    /// the URL is its ClusterIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What the report needs from a run; `raw` is oha's whole JSON output, kept for the record.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Requests answered with a 200.
    pub ok: u64,
    /// Requests that failed or were answered with another status.
    pub failed: u64,
    /// Requests still in flight when the run ended (oha cancels them on HTTP/2): not failures.
    pub aborted: u64,
    /// The length of the run, in seconds.
    pub seconds: f64,
    /// Latency percentiles, in seconds.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// Every latency percentile oha printed, as (quantile in 0..=1, seconds), in order; the
    /// fastest and slowest request are quantiles 0 and 1.
    pub percentiles: Vec<(f64, f64)>,
    pub raw: serde_json::Value,
}

/// The `oha` executable.
#[derive(Clone, Debug)]
pub struct Oha {
    path: PathBuf,
    /// `oha --version`, e.g. `oha 1.16.0`.
    pub version: String,
}

impl Oha {
    /// Checks that `path` runs and notes its version.
    pub fn new(path: &Path) -> anyhow::Result<Oha> {
        let output = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "running {} --version: install the load generator with \
                     `scripts/setup-bench.sh` (or pass --oha PATH)",
                    path.display()
                )
            })?;
        if !output.status.success() {
            bail!("{} --version failed ({})", path.display(), output.status);
        }
        Ok(Oha {
            path: path.to_path_buf(),
            version: String::from_utf8_lossy(&output.stdout).trim().to_string(),
        })
    }

    /// The arguments of `run` (after the program name), as `oha` takes them.
    pub fn args(run: &Run) -> Vec<String> {
        let mut args = vec![
            "--no-tui".to_string(),
            "--output-format".to_string(),
            "json".to_string(),
            "-z".to_string(),
            format!("{}ms", run.duration.as_millis()),
            // Let in-flight requests finish at the deadline rather than count them as errors.
            "-w".to_string(),
            "-c".to_string(),
            run.connections.to_string(),
        ];
        if run.protocol == Protocol::Http2 {
            args.extend([
                "--http2".to_string(),
                "-p".to_string(),
                run.streams.to_string(),
            ]);
        }
        if let Load::Rate(rate) = run.load {
            args.extend([
                "-q".to_string(),
                rate.to_string(),
                "--latency-correction".to_string(),
            ]);
        }
        if let Some(host) = &run.host {
            args.extend(["--host".to_string(), host.clone()]);
        }
        args.push(run.url.clone());
        args
    }

    /// Runs `run` in `pod` and parses the outcome; `oha` is killed if it overruns its duration.
    pub fn run(&self, pod: &Pod, run: &Run) -> anyhow::Result<Outcome> {
        let what = format!("oha {} in pod {}", Self::args(run).join(" "), pod.name);
        let mut child = pod
            .command(&self.path)
            .args(Self::args(run))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        // Read both pipes on threads, so a chatty child never blocks on a full pipe.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + run.duration + GRACE;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {what}"))?
            {
                break status;
            }
            if crate::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                // Our own child: kill it by its handle, then reap it.
                let _ = child.kill();
                let _ = child.wait();
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                // Our own child: kill it by its handle, then reap it.
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} still ran {GRACE:?} after its duration: killed it");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = join(stdout);
        let stderr = join(stderr);
        if !status.success() {
            bail!("{what} failed ({status}): {}", stderr.trim());
        }
        parse(&stdout).with_context(|| format!("reading the output of {what}"))
    }
}

// === helpers ===

/// oha's error for a request cut off by the end of the run.
const ABORTED: &str = "aborted due to deadline";

/// The parts of oha's JSON output the report reads.
#[derive(Deserialize)]
struct Json {
    summary: JsonSummary,
    #[serde(rename = "latencyPercentiles")]
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    status_codes: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    errors: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct JsonSummary {
    /// The run's length in seconds.
    total: f64,
    /// The fastest and slowest request, in seconds (absent without requests).
    fastest: Option<f64>,
    slowest: Option<f64>,
}

/// Parses oha's `--output-format json` output.
fn parse(stdout: &str) -> anyhow::Result<Outcome> {
    let raw: serde_json::Value = serde_json::from_str(stdout).context("parsing JSON")?;
    let json: Json = serde_json::from_value(raw.clone()).context("unexpected JSON shape")?;
    let ok = json.status_codes.get("200").copied().unwrap_or(0);
    let aborted = json.errors.get(ABORTED).copied().unwrap_or(0);
    let failed =
        json.status_codes.values().sum::<u64>() - ok + json.errors.values().sum::<u64>() - aborted;
    let percentile = |key: &str| {
        json.latency_percentiles
            .get(key)
            .copied()
            .flatten()
            .ok_or_else(|| anyhow!("no {key} latency: no request succeeded?"))
    };
    let mut percentiles: Vec<(f64, f64)> = json
        .latency_percentiles
        .iter()
        .filter_map(|(key, value)| {
            let quantile = key.strip_prefix('p')?.parse::<f64>().ok()? / 100.0;
            Some((quantile, (*value)?))
        })
        .chain(json.summary.fastest.map(|v| (0.0, v)))
        .chain(json.summary.slowest.map(|v| (1.0, v)))
        .collect();
    percentiles.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Outcome {
        ok,
        failed,
        aborted,
        seconds: json.summary.total,
        percentiles,
        p50: percentile("p50")?,
        p99: percentile("p99")?,
        p999: percentile("p99.9")?,
        raw,
    })
}

pub(crate) fn drain<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
) -> Option<std::thread::JoinHandle<String>> {
    pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error leaves what was read so far: the parse then says what is missing.
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

pub(crate) fn join(handle: Option<std::thread::JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Serializes a [`Duration`] as a human-readable string like `15s`.
mod humantime_serde {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(protocol: Protocol, load: Load) -> Run {
        Run {
            url: "http://10.244.0.2:8080/".to_string(),
            protocol,
            load,
            connections: 16,
            streams: 4,
            duration: Duration::from_secs(15),
            host: None,
        }
    }

    #[test]
    fn arguments() {
        let check = |run: Run, expected: &str| assert_eq!(Oha::args(&run).join(" "), expected);
        check(
            run(Protocol::Http1, Load::Rate(2000)),
            "--no-tui --output-format json -z 15000ms -w -c 16 -q 2000 --latency-correction \
             http://10.244.0.2:8080/",
        );
        check(
            run(Protocol::Http2, Load::Max),
            "--no-tui --output-format json -z 15000ms -w -c 16 --http2 -p 4 http://10.244.0.2:8080/",
        );
        check(
            Run {
                host: Some("web-svc.demo.svc.cluster.local".to_string()),
                ..run(Protocol::Http1, Load::Max)
            },
            "--no-tui --output-format json -z 15000ms -w -c 16 --host \
             web-svc.demo.svc.cluster.local http://10.244.0.2:8080/",
        );
    }

    #[test]
    fn outcomes() {
        let json = r#"{
            "summary": {"successRate": 1.0, "total": 2.0, "requestsPerSec": 10.0,
                        "fastest": 0.00005, "slowest": 0.0004},
            "latencyPercentiles": {"p50": 0.0001, "p99": 0.0002, "p99.9": 0.0003, "p99.99": null},
            "statusCodeDistribution": {"200": 18, "503": 1},
            "errorDistribution": {"connection closed": 1, "aborted due to deadline": 3}
        }"#;
        let outcome = parse(json).expect("valid output");
        assert_eq!((outcome.ok, outcome.failed, outcome.aborted), (18, 2, 3));
        assert_eq!(outcome.seconds, 2.0);
        assert_eq!(
            (outcome.p50, outcome.p99, outcome.p999),
            (0.0001, 0.0002, 0.0003)
        );
        // Quantiles in per mille, to compare without rounding noise (99.9 / 100).
        let points: Vec<(u32, f64)> = outcome
            .percentiles
            .iter()
            .map(|&(q, v)| ((q * 1000.0).round() as u32, v))
            .collect();
        assert_eq!(
            points,
            [
                (0, 0.00005),
                (500, 0.0001),
                (990, 0.0002),
                (999, 0.0003),
                (1000, 0.0004)
            ]
        );

        let err = |json: &str| format!("{:#}", parse(json).expect_err("invalid output"));
        assert_eq!(
            err(r#"{"summary": {"total": 1.0}, "latencyPercentiles": {"p50": null}}"#),
            "no p50 latency: no request succeeded?"
        );
        assert!(err("oha: error").starts_with("parsing JSON"));
    }
}
