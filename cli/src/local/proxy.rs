//! Meshing a pod: `mesh-init`, then `mesh-proxy` as its own user (or, with a socket mark, as
//! the current one), and a handle on the running proxy.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cluster::Pod;
use super::netns::POLL;
use super::{binary, PROXY_UID};
use mesh_api::defaults;

/// How many lines of the proxy's log an error shows.
const LOG_TAIL_LINES: usize = 40;

/// How to mesh a pod; `MeshOptions::default()` is a proxy with its defaults.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Environment of `mesh-proxy` (`MESH_PROXY_*`). `MESH_PROXY_LOG` defaults to this process's
    /// `MESH_PROXY_LOG`, else `warn`.
    pub env: Vec<(String, String)>,
    /// `mesh-init --skip-inbound-ports`; by default the proxy's admin port, so that other pods
    /// (a metrics scraper) reach it directly rather than through the inbound proxy, which refuses
    /// connections to its own ports.
    pub skip_inbound_ports: Vec<u16>,
    /// `mesh-init --skip-outbound-ports`.
    pub skip_outbound_ports: Vec<u16>,
    /// How long the proxy may take to answer `GET /ready` with 200.
    pub ready_timeout: Duration,
    /// The program to run instead of [`binary`]`("mesh-proxy")`: a peer proxy in a benchmark,
    /// a stand-in in tests. It must serve `GET /ready` on the admin address like `mesh-proxy`.
    pub proxy_program: Option<PathBuf>,
    /// Who the pod is, for mutual TLS; `None` runs the proxy with
    /// `MESH_PROXY_IDENTITY_DISABLED=true` (unless `env` says otherwise).
    pub identity: Option<PodIdentity>,
    /// Tells the proxy's traffic from the application's by this socket mark instead of by the
    /// proxy's uid: `mesh-init --proxy-mark`, `MESH_PROXY_SOCKET_MARK` (unless `env` says
    /// otherwise), and the proxy runs as the current user rather than as [`PROXY_UID`]. This is
    /// what a user namespace with a single uid needs. `None`: uid [`PROXY_UID`], no mark.
    pub proxy_mark: Option<u32>,
}

/// A pod's identity in the local mesh, and how its proxy gets a certificate.
#[derive(Clone, Debug)]
pub struct PodIdentity {
    /// `<sa>.<ns>.serviceaccount.identity.mesh.<trust-domain>`.
    pub name: String,
    /// The identity controller, reachable from the pod.
    pub controller: SocketAddr,
    /// The trust anchors, PEM.
    pub trust_anchors_pem: String,
    /// The token the identity controller knows the service account by.
    pub token: String,
}

/// A `mesh-proxy` running in a pod. Dropping it kills it (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    /// Set once the child has been reaped: its pid may belong to someone else then.
    exited: Option<ExitStatus>,
    pod: Pod,
    admin: SocketAddr,
    log_path: PathBuf,
    /// Where this run's output starts in the (appended) log file.
    log_offset: u64,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            skip_inbound_ports: vec![defaults::ADMIN_PORT],
            skip_outbound_ports: Vec::new(),
            ready_timeout: Duration::from_secs(10),
            proxy_program: None,
            identity: None,
            proxy_mark: None,
        }
    }
}

// === impl Pod ===

impl Pod {
    /// `GET path` on `addr` from inside the pod: the status code and body. Plain HTTP/1.0 over
    /// one TCP connection (the body ends when the server closes), with 5 s timeouts.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let response = self
            .run_in(move || {
                let timeout = Duration::from_secs(5);
                let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.write_all(request.as_bytes())?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response)?;
                Ok(response)
            })
            .join()
            .map_err(|_| anyhow!("the HTTP request thread panicked"))?
            .with_context(|| format!("GET http://{addr}{path} in pod {}", self.name))?;
        parse_response(&response)
            .with_context(|| format!("GET http://{addr}{path} in pod {}", self.name))
    }

    /// Polls `GET path` on `addr` from inside the pod until it answers 200 or `timeout` passes;
    /// the error says what it answered last.
    pub fn wait_http_ok(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.http_get(addr, path) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("status {status}: {}", body.trim()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "GET http://{addr}{path} in pod {} not 200 after {timeout:?} (last: {last})",
                    self.name
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Meshes the pod: runs `mesh-init` in it (as root), then `mesh-proxy` as uid
    /// [`PROXY_UID`] (as the current user with [`MeshOptions::proxy_mark`]), and waits until the
    /// proxy answers `GET /ready` with 200.
    ///
    /// The proxy's stdout and stderr go to `<log_dir>/<pod>-proxy.log`; a proxy that exits or
    /// is not ready in time fails this call with the tail of that log.
    pub fn mesh(&self, opts: MeshOptions) -> anyhow::Result<Proxy> {
        let init = binary("mesh-init")?;
        let proxy = match &opts.proxy_program {
            Some(program) => program.clone(),
            None => binary("mesh-proxy")?,
        };

        let mut cmd = self.command(&init);
        match opts.proxy_mark {
            // The proxy runs as the current user then: exempt it by its mark alone (in a user
            // namespace, uid PROXY_UID may not even exist).
            Some(mark) => cmd
                .arg(format!("--proxy-mark={mark:#x}"))
                .arg("--no-proxy-uid"),
            None => cmd.arg(format!("--proxy-uid={PROXY_UID}")),
        };
        if !opts.skip_inbound_ports.is_empty() {
            cmd.arg(format!(
                "--skip-inbound-ports={}",
                join(&opts.skip_inbound_ports)
            ));
        }
        if !opts.skip_outbound_ports.is_empty() {
            cmd.arg(format!(
                "--skip-outbound-ports={}",
                join(&opts.skip_outbound_ports)
            ));
        }
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running mesh-init in pod {}", self.name))?;
        if !output.status.success() {
            bail!(
                "mesh-init in pod {} failed ({}): {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }

        let env_value = |key: &str| {
            opts.env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(key).ok())
        };
        let admin = admin_addr(env_value("MESH_PROXY_ADMIN_ADDR").as_deref())?;
        let log_level = env_value("MESH_PROXY_LOG").unwrap_or_else(|| "warn".to_string());

        let identity_env = self.identity_env(&opts)?;
        let log_path = self.log_dir.join(format!("{}-proxy.log", self.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let (mut command, mark_env) = match opts.proxy_mark {
            None => (self.command_as(PROXY_UID, &proxy), None),
            Some(mark) => (
                self.command(&proxy),
                Some(("MESH_PROXY_SOCKET_MARK", format!("{mark:#x}"))),
            ),
        };
        let child = command
            .env("MESH_PROXY_LOG", log_level)
            .envs(mark_env)
            .envs(identity_env)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting mesh-proxy in pod {}", self.name))?;

        let mut proxy = Proxy {
            child,
            exited: None,
            pod: self.clone(),
            admin,
            log_path,
            log_offset,
        };
        // On an error `proxy` is dropped, which kills it.
        proxy.wait_ready(opts.ready_timeout)?;
        Ok(proxy)
    }
}

impl Pod {
    /// The proxy's identity variables: the token and trust anchors written where the proxy's user
    /// (uid [`PROXY_UID`], or the current one with a socket mark) can read them, and a key folder
    /// it owns.
    fn identity_env(&self, opts: &MeshOptions) -> anyhow::Result<Vec<(String, String)>> {
        let Some(id) = &opts.identity else {
            return Ok(vec![("MESH_PROXY_IDENTITY_DISABLED".into(), "true".into())]);
        };
        let dir = self.log_dir.join(format!("{}-identity", self.name));
        let key_dir = dir.join("key");
        std::fs::create_dir_all(&key_dir)
            .with_context(|| format!("creating {}", key_dir.display()))?;
        let token = dir.join("token");
        let anchors = dir.join("trust-anchors.pem");
        std::fs::write(&token, &id.token)
            .with_context(|| format!("writing {}", token.display()))?;
        std::fs::write(&anchors, &id.trust_anchors_pem)
            .with_context(|| format!("writing {}", anchors.display()))?;
        let uid = match opts.proxy_mark {
            None => nix::unistd::Uid::from_raw(PROXY_UID),
            Some(_) => nix::unistd::geteuid(),
        };
        for path in [&dir, &key_dir, &token, &anchors] {
            nix::unistd::chown(path.as_path(), Some(uid), None)
                .with_context(|| format!("giving {} to uid {uid}", path.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o700))?;
        let path = |p: &std::path::Path| p.display().to_string();
        Ok(vec![
            ("MESH_PROXY_IDENTITY_NAME".into(), id.name.clone()),
            ("MESH_PROXY_IDENTITY_ADDR".into(), id.controller.to_string()),
            ("MESH_PROXY_IDENTITY_TOKEN_FILE".into(), path(&token)),
            ("MESH_PROXY_TRUST_ANCHORS".into(), path(&anchors)),
            ("MESH_PROXY_IDENTITY_DIR".into(), path(&key_dir)),
        ])
    }
}

// === impl Proxy ===

impl Proxy {
    /// The proxy's process id (`ip netns exec` and `setpriv` exec into `mesh-proxy`, keeping it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pod the proxy runs in.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Sends `signal` to the proxy, e.g. [`Signal::SIGTERM`] to start a graceful shutdown.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.exited {
            bail!(
                "mesh-proxy in pod {} already exited ({status})",
                self.pod.name
            );
        }
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to mesh-proxy in pod {}", self.pod.name))
    }

    /// Waits up to `timeout` for the proxy to exit; `None` if it still runs then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Everything the proxy has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut file = File::open(&self.log_path)?;
            file.seek(SeekFrom::Start(self.log_offset))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|err| format!("(cannot read {}: {err})", self.log_path.display()))
    }

    /// `GET path` on the proxy's admin server from inside the pod: the status code and body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.pod.http_get(self.admin, path)
    }

    /// Polls `GET /ready` until it answers 200, the proxy exits, or `timeout` passes.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "mesh-proxy in pod {} exited ({status}) before it was ready; its log:\n{}",
                    self.pod.name,
                    self.log_tail()
                );
            }
            let last = match self.admin_get("/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("status {status}: {}", body.trim()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "mesh-proxy in pod {} not ready after {timeout:?} (last: {last}); its log:\n{}",
                    self.pod.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for mesh-proxy in pod {}", self.pod.name))?;
        }
        Ok(self.exited)
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        if tail.is_empty() {
            "(empty)".to_string()
        } else {
            tail
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // Already gone is fine: `wait` below reaps it either way.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// === helpers ===

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Where to reach the admin server from inside the pod, given `MESH_PROXY_ADMIN_ADDR`.
fn admin_addr(configured: Option<&str>) -> anyhow::Result<SocketAddr> {
    let Some(value) = configured else {
        return Ok(defaults::LOCAL_ADMIN_ADDR);
    };
    let mut addr: SocketAddr = value
        .parse()
        .with_context(|| format!("MESH_PROXY_ADMIN_ADDR={value}: expected IP:PORT"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}

/// Splits an HTTP/1.x response into its status code and body.
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed response (no end of headers): {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| anyhow!("malformed status line {status_line:?}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let check = |input: &str, expected: Result<(u16, &str), &str>| {
            let actual = parse_response(input.as_bytes()).map_err(|e| e.to_string());
            let expected = expected
                .map(|(s, b)| (s, b.to_string()))
                .map_err(str::to_string);
            assert_eq!(actual, expected, "{input:?}");
        };
        check("HTTP/1.0 200 OK\r\n\r\nready\n", Ok((200, "ready\n")));
        check(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            Ok((503, "")),
        );
        check(
            "HTTP/1.1 200 OK\r\n",
            Err("malformed response (no end of headers): \"HTTP/1.1 200 OK\\r\\n\""),
        );
        check("SSH-2.0\r\n\r\n", Err("malformed status line \"SSH-2.0\""));
    }

    #[test]
    fn admin_addrs() {
        let check = |input: Option<&str>, expected: Result<&str, &str>| {
            let actual = admin_addr(input)
                .map(|a| a.to_string())
                .map_err(|e| format!("{e:#}"));
            let expected = expected.map(str::to_string).map_err(str::to_string);
            assert_eq!(actual, expected, "{input:?}");
        };
        check(None, Ok("127.0.0.1:4191"));
        check(Some("0.0.0.0:9990"), Ok("127.0.0.1:9990"));
        check(Some("127.0.0.1:9990"), Ok("127.0.0.1:9990"));
        check(
            Some("9990"),
            Err("MESH_PROXY_ADMIN_ADDR=9990: expected IP:PORT: invalid socket address syntax"),
        );
    }
}
