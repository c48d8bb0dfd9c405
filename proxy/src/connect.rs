//! Opening the proxy's own TCP connections: one function for every connection it originates
//! (upstreams, mutual TLS, opaque forwarding, the destination and identity controllers), so the
//! socket mark is never forgotten on one of them.
//!
//! The mark (`MESH_PROXY_SOCKET_MARK`) is how the pod's redirect rules tell the proxy's traffic
//! from the application's when both run as the same uid (a rootless user namespace has only uid
//! 0): `mesh-init --proxy-mark` lets connections that carry it leave as they are, where any other
//! would be redirected back into the proxy. It is set before `connect`, so the SYN carries it.
//!
//! ```no_run
//! # async fn f() -> Result<(), mesh_proxy::connect::ConnectError> {
//! use mesh_proxy::connect::Connect;
//! use std::time::Duration;
//! let connect = Connect {
//!     timeout: Duration::from_secs(3),
//!     mark: Some("0x66".parse().unwrap()),
//! };
//! let tcp = connect.connect("10.244.0.7:8080".parse().unwrap()).await?;
//! # Ok(()) }
//! ```

use crate::init::Mark;
use nix::sys::socket::{setsockopt, sockopt};
use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpSocket, TcpStream};

/// A connection that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {target}: {source}")]
    Io {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("connecting to {target}: timed out after {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
}

/// How the proxy opens a connection: within a timeout, and with its socket mark, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// `MESH_PROXY_CONNECT_TIMEOUT`: how long the TCP handshake may take.
    pub timeout: Duration,
    /// `MESH_PROXY_SOCKET_MARK`: the mark every socket carries.
    pub mark: Option<Mark>,
}

impl Connect {
    /// Opens a TCP connection to `target` within the timeout, marked, with Nagle's algorithm off.
    pub async fn connect(&self, target: SocketAddr) -> Result<TcpStream, ConnectError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, tcp(target, self.mark)).await {
            Err(_) => Err(ConnectError::Timeout { target, timeout }),
            Ok(Err(source)) => Err(ConnectError::Io { target, source }),
            Ok(Ok(io)) => Ok(io),
        }
    }

    /// The connector of the control-plane clients (destination watch, certify): the same mark,
    /// and their own timeouts.
    pub fn control_plane(&self) -> mesh_api::destination::Connector {
        let mark = self.mark;
        mesh_api::destination::Connector::new(move |addr| tcp(addr, mark))
    }
}

/// Opens a TCP connection to `target` whose socket carries `mark`, with Nagle's algorithm off.
pub async fn tcp(target: SocketAddr, mark: Option<Mark>) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    socket.set_nodelay(true)?;
    socket.connect(target).await
}

/// Whether this process may mark its sockets (`SO_MARK` needs `CAP_NET_ADMIN` in the network
/// namespace): checked at start-up, so a proxy that cannot is an error then rather than a
/// failure of every connection later.
pub fn check_mark(mark: Mark) -> io::Result<()> {
    set_mark(&TcpSocket::new_v4()?, mark)
}

fn set_mark(socket: &TcpSocket, mark: Mark) -> io::Result<()> {
    setsockopt(socket, sockopt::Mark, &mark.get()).map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("setting the socket mark {mark} (SO_MARK, needs CAP_NET_ADMIN): {errno}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_without_a_mark() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let connect = Connect {
            timeout: Duration::from_secs(5),
            mark: None,
        };
        let io = connect.connect(target).await.unwrap();
        assert!(io.nodelay().unwrap());
        assert_eq!(io.peer_addr().unwrap(), target);
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_target() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let connect = Connect {
            timeout: Duration::from_secs(5),
            mark: None,
        };
        let err = connect.connect(target).await.unwrap_err();
        assert!(matches!(err, ConnectError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&target.to_string()), "{err}");
    }

    /// As root the socket carries the mark; without `CAP_NET_ADMIN` the error says why.
    #[tokio::test]
    async fn the_mark_is_set_or_the_error_names_it() {
        let mark: Mark = "0x66".parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let connect = Connect {
            timeout: Duration::from_secs(5),
            mark: Some(mark),
        };
        match check_mark(mark) {
            Ok(()) => {
                let io = connect.connect(target).await.unwrap();
                let got = nix::sys::socket::getsockopt(&io, sockopt::Mark).unwrap();
                assert_eq!(got, 0x66);
            }
            Err(e) => {
                assert!(e.to_string().contains("SO_MARK"), "{e}");
                let err = connect.connect(target).await.unwrap_err();
                assert!(err.to_string().contains("socket mark 0x66"), "{err}");
            }
        }
    }
}
