//! Packet captures in a pod: `tcpdump` writing every packet of one interface to a file, for
//! tests that check what crosses the wire (mutual TLS hides the traffic between pods).

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use mesh_cli::local::Pod;

/// `tcpdump` on one interface of a pod, until [`Capture::stop`].
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing `interface` of `pod` into `file`; returns once tcpdump listens.
    pub fn start(pod: &Pod, interface: &str, file: PathBuf) -> Capture {
        let mut child = pod
            .command("tcpdump")
            // Immediate mode: every packet reaches the file at once, none wait in a buffer
            // block that the stop would drop.
            .args(["-i", interface])
            .args([
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump runs (scripts/test installs it)");
        // It says "listening on <interface>" once the capture is on.
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("tcpdump's first line");
        assert!(line.contains("listening"), "tcpdump: {line}");
        Capture { child, file }
    }

    /// Stops the capture (SIGINT flushes it) and returns the raw bytes captured.
    pub fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(200));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("the capture file")
    }
}

/// Whether `needle` occurs in the captured bytes.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
