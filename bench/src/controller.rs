//! The destination controller under the benchmark: the real `mesh-controller` binary as a child process (on the host or in a pod) over a folder of YAML, with its readiness and memory.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::Pod;

/// The controller's port inside a pod (its default).
pub const POD_PORT: u16 = 8086;

/// How long a request to the controller's HTTP/1 endpoints may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// A running `mesh-controller destination --source dir:…`. Dropping it kills it (SIGKILL) and
/// reaps it.
pub struct Controller {
    child: Child,
    /// Where the controller listens, as seen from where it runs.
    pub addr: SocketAddr,
    log: PathBuf,
    /// When the process was started.
    pub started: Instant,
}

impl Controller {
    /// Starts the controller on this host's loopback, serving the objects of `folder`; its
    /// output goes to `log`. Returns at once: see [`Controller::wait_ready`].
    pub fn start(program: &Path, folder: &Path, log: &Path) -> anyhow::Result<Controller> {
        let addr = free_loopback_addr()?;
        Self::spawn(Command::new(program), folder, addr, addr, log)
    }

    /// Starts the controller in `pod` on `0.0.0.0:`[`POD_PORT`]. Returns at once.
    pub fn start_in(
        pod: &Pod,
        program: &Path,
        folder: &Path,
        log: &Path,
    ) -> anyhow::Result<Controller> {
        let listen = SocketAddr::from(([0, 0, 0, 0], POD_PORT));
        let addr = SocketAddr::from((pod.ip, POD_PORT));
        Self::spawn(pod.command(program), folder, listen, addr, log)
    }

    fn spawn(
        mut cmd: Command,
        folder: &Path,
        listen: SocketAddr,
        addr: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Controller> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut source = OsString::from("dir:");
        source.push(folder);
        let child = cmd
            .arg("destination")
            .arg("--source")
            .arg(source)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--log-level")
            .arg("warn")
            // Whatever this shell exports, the controller logs quietly.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .spawn()
            .context("starting mesh-controller")?;
        Ok(Controller {
            child,
            addr,
            log: log.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// The process id (`ip netns exec` execs into the controller, keeping it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `GET /ready` through `probe` (which runs a request where the controller is
    /// reachable) until it answers 200, the controller exits, or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        probe: impl Fn(SocketAddr) -> anyhow::Result<u16>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("waiting for mesh-controller")?
            {
                bail!(
                    "mesh-controller exited ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if matches!(probe(self.addr), Ok(200)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "mesh-controller at {} not ready after {timeout:?}; its log:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The controller's memory now: (`VmHWM`, `VmRSS`) in bytes.
    pub fn memory(&self) -> anyhow::Result<(u64, u64)> {
        crate::resources::memory(self.pid()).context("reading the controller's memory")
    }

    /// The controller's CPU time so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        crate::resources::cpu_ticks(self.pid()).context("reading the controller's CPU time")
    }

    /// The last lines of the controller's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Our own child: already gone is fine, `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; returns the status code.
pub fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer of {addr}{path}"))?;
    parse_status(&response).ok_or_else(|| {
        anyhow!(
            "{addr}{path} answered {:?}, expected an HTTP/1.1 status line",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        )
    })
}

/// The path of the `mesh-controller` binary ([`mesh_cli::local::binary`] builds it, fresh,
/// with the proxy's binaries when running under cargo).
pub fn binary() -> anyhow::Result<PathBuf> {
    mesh_cli::local::binary("mesh-controller")
}

// === helpers ===

/// A loopback address nobody listens on right now (the kernel's pick; the controller binds it
/// a moment later).
fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let check = |response: &str, expected: Option<u16>| {
            assert_eq!(parse_status(response.as_bytes()), expected, "{response:?}");
        };
        check("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Some(200));
        check("HTTP/1.1 503 Service Unavailable\r\n\r\n", Some(503));
        check("", None);
        check("SSH-2.0-OpenSSH\r\n", None);
        check("HTTP/1.1 abc\r\n", None);
    }
}
