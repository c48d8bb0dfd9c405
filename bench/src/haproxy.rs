//! The peer proxy: HAProxy from the distribution as a one-hop HTTP proxy (`mode http`) in a pod,
//! with its default threads (one per core) or a fixed number (`nbthread`).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::Pod;

/// The listeners of one HAProxy, on the pod's loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// HTTP/1.1.
    pub http1: u16,
    /// HTTP/2 with prior knowledge.
    pub http2: u16,
}

/// How one HAProxy runs: its threads and its listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// `nbthread`; `None` keeps HAProxy's default (one thread per core).
    pub threads: Option<u32>,
    pub ports: Ports,
}

/// How long HAProxy may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running HAProxy. Dropping it kills it (SIGKILL) and reaps it.
pub struct Haproxy {
    child: Child,
    log: PathBuf,
    ports: Ports,
}

impl Haproxy {
    /// `haproxy -v`'s first line, e.g. `HAProxy version 2.6.12-1+deb12u4 …`.
    pub fn version(program: &Path) -> anyhow::Result<String> {
        let output = Command::new(program)
            .arg("-v")
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "running {} -v: install HAProxy with `scripts/setup-bench.sh` \
                     (or pass --haproxy PATH)",
                    program.display()
                )
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        let first = text.lines().next().unwrap_or_default().trim();
        if !output.status.success() || first.is_empty() {
            bail!("{} -v failed ({})", program.display(), output.status);
        }
        // `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/`: drop the link.
        Ok(first.split(" - ").next().unwrap_or(first).to_string())
    }

    /// Starts `program` in `pod` forwarding to `upstream` (HTTP/1.1 and HTTP/2 on the ports of
    /// `setup`, each spoken to the upstream in the same version), and waits until it listens.
    /// Its configuration and log go to `dir`, named after `name`.
    pub fn start(
        program: &Path,
        pod: &Pod,
        upstream: SocketAddr,
        setup: Setup,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Haproxy> {
        let config_path = dir.join(format!("{name}.cfg"));
        std::fs::write(&config_path, config(upstream, setup))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join(format!("{name}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = pod
            .command(program)
            // Foreground, one process (its threads: `nbthread` in the configuration, else one
            // per core).
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting haproxy in pod {}", pod.name))?;
        let mut haproxy = Haproxy {
            child,
            log,
            ports: setup.ports,
        };
        // On an error `haproxy` is dropped, which kills it.
        haproxy.wait_ready(pod)?;
        Ok(haproxy)
    }

    /// The process id (`ip netns exec` execs into HAProxy, keeping it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its listeners.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Polls both listeners until they accept, HAProxy exits, or [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for haproxy")? {
                bail!(
                    "haproxy in pod {} exited ({status}); its log:\n{}",
                    pod.name,
                    std::fs::read_to_string(&self.log)
                        .unwrap_or_default()
                        .trim()
                );
            }
            let ports = [self.ports.http1, self.ports.http2];
            let listening = pod
                .run_in(move || {
                    Ok(ports.iter().all(|&port| {
                        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok()
                    }))
                })
                .join()
                .map_err(|_| anyhow!("the readiness probe thread panicked"))??;
            if listening {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "haproxy in pod {} not listening after {READY_TIMEOUT:?}",
                    pod.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // Our own child: already gone is fine, `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: two `listen` sections in `mode http`, keep-alive on both sides, server
/// connections reused across client connections where safe (the default).
pub fn config(upstream: SocketAddr, setup: Setup) -> String {
    let Ports { http1, http2 } = setup.ports;
    let threads = match setup.threads {
        Some(n) => format!("    nbthread {n}\n"),
        None => String::new(),
    };
    format!(
        "\
global
    maxconn 4096
{threads}
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s

listen http1
    bind 127.0.0.1:{http1}
    server app {upstream}

listen http2
    bind 127.0.0.1:{http2} proto h2
    server app {upstream} proto h2
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_forwards_both_listeners_to_the_upstream() {
        let upstream = SocketAddr::from(([10, 244, 0, 2], 8080));
        let ports = Ports {
            http1: 8081,
            http2: 8082,
        };
        let config = config(
            upstream,
            Setup {
                threads: None,
                ports,
            },
        );
        assert!(config.contains("bind 127.0.0.1:8081\n    server app 10.244.0.2:8080\n"));
        assert!(config
            .contains("bind 127.0.0.1:8082 proto h2\n    server app 10.244.0.2:8080 proto h2\n"));
        assert!(config.contains("mode http"));
        assert!(!config.contains("nbthread"), "{config}");

        let one = super::config(
            upstream,
            Setup {
                threads: Some(1),
                ports,
            },
        );
        assert!(
            one.starts_with("global\n    maxconn 4096\n    nbthread 1\n"),
            "{one}"
        );
    }
}
