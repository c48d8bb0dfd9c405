//! A small Redis client: one command at a time per connection, connections made on first use
//! and kept for the next command (a few, for callers in parallel), a broken or timed-out one
//! dropped so that the next command connects afresh. Every command is bounded by a timeout,
//! connecting included.
//!
//! ```no_run
//! # async fn example() -> Result<(), mesh_demo_app::redis::Error> {
//! use mesh_demo_app::net::{Resolve, Target};
//! use mesh_demo_app::redis::{Client, Value};
//! let target = Target::redis("127.0.0.1:6379", &Resolve::default()).unwrap();
//! let client = Client::new(target, std::time::Duration::from_secs(1));
//! let n = client.command(&[b"HINCRBY", b"votes", b":joy:", b"1"]).await?;
//! assert!(matches!(n, Value::Integer(_)));
//! # Ok(())
//! # }
//! ```

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::resp::{self, ProtocolError, Value};
use crate::net::Target;

/// Idle connections kept for the next commands.
const MAX_IDLE: usize = 4;

/// How long a connection may take to establish, even after the command that asked for it has
/// given up (it is then kept for the next one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command got no answer, or got an error for one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {0}: {1}")]
    Connect(String, io::Error),
    #[error("talking to {0}: {1}")]
    Io(String, io::Error),
    #[error("{0} closed the connection")]
    Closed(String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Protocol(String, ProtocolError),
    /// The server answered with an error reply (`-ERR …`).
    #[error("{0} answered: {1}")]
    Server(String, String),
    /// A proxy in between answered for the server (`-ERR mesh: …`, a Redis codec's local
    /// reply): it could not forward the command (no endpoint, unreachable, timed out, refused).
    #[error("{0}: the mesh answered: {1}")]
    Mesh(String, String),
}

impl Error {
    /// Whether the server could not be reached or did not answer (rather than answering
    /// something wrong): worth trying again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Connect(..)
                | Error::Io(..)
                | Error::Closed(_)
                | Error::Timeout(..)
                | Error::Mesh(..)
        )
    }
}

/// A client for one Redis server. Cheap to share: commands from parallel callers go on
/// connections of their own.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

struct Conn {
    stream: TcpStream,
    read: BytesMut,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Client {
        Client {
            inner: Arc::new(Inner {
                target,
                timeout,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// The prefix of the error replies a mesh proxy answers with when it cannot forward a
    /// command.
    pub const MESH_ERROR: &'static str = "ERR mesh: ";

    /// Sends one command and reads its answer; an error reply is [`Error::Server`], or
    /// [`Error::Mesh`] when a proxy answered it.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Value, Error> {
        let call = async {
            let mut conn = self.checkout().await?;
            let value = conn.round_trip(args, &self.inner.target).await?;
            // In step with the server (an error reply included): kept for the next command.
            self.inner.check_in(conn);
            Ok(value)
        };
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(Value::Error(e))) => match e.strip_prefix(Self::MESH_ERROR) {
                Some(why) => Err(Error::Mesh(self.inner.target.to_string(), why.to_owned())),
                None => Err(Error::Server(self.inner.target.to_string(), e)),
            },
            Ok(result) => result,
            // The connection, in the middle of the command, was dropped with the future.
            Err(_) => Err(Error::Timeout(
                self.inner.target.to_string(),
                self.inner.timeout,
            )),
        }
    }

    /// An idle connection that is still open, or a new one.
    async fn checkout(&self) -> Result<Conn, Error> {
        loop {
            let conn = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            match conn {
                Some(conn) if conn.is_open() => return Ok(conn),
                Some(_) => continue,
                None => break,
            }
        }
        // Connecting goes on in a task of its own: if the command gives up first, the
        // connection is kept for the next one rather than dropped half made.
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let target = &inner.target;
            let result = match tokio::time::timeout(CONNECT_TIMEOUT, target.connect()).await {
                Ok(Ok(stream)) => Ok(Conn {
                    stream,
                    read: BytesMut::with_capacity(512),
                }),
                Ok(Err(e)) => Err(Error::Connect(target.to_string(), e)),
                Err(_) => Err(Error::Connect(
                    target.to_string(),
                    io::Error::new(io::ErrorKind::TimedOut, "timed out"),
                )),
            };
            if let Err(Ok(conn)) = tx.send(result) {
                inner.check_in(conn);
            }
        });
        rx.await.unwrap_or_else(|_| {
            Err(Error::Connect(
                self.inner.target.to_string(),
                io::Error::other("the connecting task ended"),
            ))
        })
    }
}

impl Inner {
    fn check_in(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

impl Conn {
    async fn round_trip(&mut self, args: &[&[u8]], target: &Target) -> Result<Value, Error> {
        let io = |e| Error::Io(target.to_string(), e);
        let mut request = BytesMut::new();
        resp::encode_command(args, &mut request);
        self.stream.write_all(&request).await.map_err(io)?;
        loop {
            match resp::parse_value(&self.read) {
                Ok(Some((value, n))) => {
                    self.read.advance(n);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(target.to_string(), e)),
            }
            self.read.reserve(4096);
            if self.stream.read_buf(&mut self.read).await.map_err(io)? == 0 {
                return Err(Error::Closed(target.to_string()));
            }
        }
    }

    /// Whether an idle connection is still open: nothing to read, and no end of stream
    /// (a server that restarted, or a proxy that closed it, shows as one).
    fn is_open(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}
