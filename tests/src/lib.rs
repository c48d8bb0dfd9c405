//! End-to-end tests of the mesh on network-namespace pods (see `tests/tests/`); this library holds their shared helpers.

pub mod fixtures;

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use mesh_cli::local::Pod;
use tokio::io::AsyncWriteExt as _;

/// How long a helper waits for a connection, a read or a server to come up.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// TCP servers in a pod that answer every connection with one line, their marker, and close.
///
/// Dropping it stops the servers and joins their thread.
pub struct Markers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts marker servers in `pod`, one per `(address, marker)`, and returns once all listen.
///
/// ```no_run
/// # fn demo(pod: &mesh_cli::local::Pod) -> anyhow::Result<()> {
/// let _servers = mesh_tests::serve_markers(pod, &[("0.0.0.0:80".parse()?, "server")])?;
/// assert_eq!(mesh_tests::read_marker(pod, "127.0.0.1:80".parse()?)?, "server");
/// # Ok(()) }
/// ```
pub fn serve_markers(pod: &Pod, listeners: &[(SocketAddr, &str)]) -> anyhow::Result<Markers> {
    let listeners: Vec<(SocketAddr, String)> = listeners
        .iter()
        .map(|(addr, marker)| (*addr, format!("{marker}\n")))
        .collect();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            for (addr, marker) in listeners {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                tokio::spawn(async move {
                    while let Ok((mut stream, _)) = listener.accept().await {
                        // A client that went away early is not the server's problem.
                        let _ = stream.write_all(marker.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
            // The receiver only goes away when the caller gave up waiting.
            let _ = ready_tx.send(());
            // Stop when told to, or when the handle is gone.
            let _ = stop_rx.await;
            Ok(())
        })
    });
    let mut markers = Markers {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    if ready_rx.recv_timeout(TIMEOUT).is_err() {
        // The thread ended (bind failed) or hangs: report what it says.
        return Err(markers
            .join()
            .err()
            .unwrap_or_else(|| anyhow!("marker servers in pod {} did not start", pod.name)));
    }
    Ok(markers)
}

/// Connects from inside `pod` to `addr` and returns the line it answers, trimmed.
pub fn read_marker(pod: &Pod, addr: SocketAddr) -> anyhow::Result<String> {
    pod.run_in(move || {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.trim().to_string())
    })
    .join()
    .map_err(|_| anyhow!("client thread panicked"))?
    .with_context(|| format!("reading a marker from {addr} in pod {}", pod.name))
}

/// The pod's nat table as `iptables-save -t nat` prints it, without comments and counters, so
/// two saves of the same rules compare equal.
pub fn nat_table(pod: &Pod) -> anyhow::Result<String> {
    let output = pod.command("iptables-save").args(["-t", "nat"]).output()?;
    let stdout = success(output).context("iptables-save -t nat")?;
    Ok(stdout
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.rfind(" [") {
            Some(at) if line.starts_with(':') => format!("{} [0:0]", &line[..at]),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The stdout of a command that must have succeeded; otherwise an error with its stderr.
pub fn success(output: Output) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// === impl Markers ===

impl Markers {
    fn join(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            // The server may have ended already.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("marker server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        if let Err(err) = self.join() {
            eprintln!("marker servers: {err:#}");
        }
    }
}
