//! `mesh-await`: waits until the proxy's admin server answers `GET /ready` with 200.
//!
//! The post-start hook of a proxy injected as a regular container (not a native sidecar): the
//! kubelet starts the pod's next container only when the hook returns, so the application
//! starts with its proxy ready. Standard library only at run time (the default port is
//! `mesh_api::defaults::ADMIN_PORT`, a constant), so it fits in the proxy image.
#![forbid(unsafe_code)]

use mesh_api::defaults::ADMIN_PORT;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let mut port = ADMIN_PORT;
    let mut timeout = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value.as_deref()) {
            ("--port", Some(v)) => v.parse().map(|p| port = p).is_ok(),
            ("--timeout", Some(v)) => v.parse().map(|s| timeout = Duration::from_secs(s)).is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("usage: mesh-await [--port {ADMIN_PORT}] [--timeout SECONDS]");
            return ExitCode::from(2);
        }
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + timeout;
    loop {
        match ready(addr) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            outcome => {
                eprintln!(
                    "mesh-await: the proxy on {addr} is not ready after {timeout:?} ({outcome:?})"
                );
                return ExitCode::from(1);
            }
        }
    }
}

/// Whether `GET /ready` answers 200.
fn ready(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}
