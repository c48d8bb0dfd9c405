//! A small in-memory Redis that keeps voting's counts, and the client voting calls it with.
//!
//! `mesh-demo-app redis` serves RESP2 (arrays of bulk strings and inline commands, pipelined)
//! with the commands the demo and `redis-cli` need: `PING`, `ECHO`, `GET`, `SET` (`NX`, `XX`,
//! `EX`, `PX`), `DEL`, `EXISTS`, `INCR`, `INCRBY`, `HINCRBY`, `HGET`, `HGETALL`, `HSET`,
//! `HELLO` (protocol 2 only), `COMMAND` (an empty list), `CLIENT SETNAME|GETNAME|ID|SETINFO`,
//! `SELECT 0`, `QUIT`, `FLUSHALL`; anything else is answered as Redis answers a command it does
//! not know. It is a Service port with `appProtocol: mesh.io/redis` in the demo, so a proxy
//! that has the Redis codec sees each command.
//!
//! - `resp.rs` — the wire format: parsing commands and replies, encoding them, the bounds;
//! - `server.rs` — the keyspace, the commands and the accept loop;
//! - `client.rs` — the client.

mod client;
pub mod resp;
mod server;

pub use client::{Client, Error};
pub use resp::Value;
pub use server::{serve, Next, Session, Store};

/// The port Redis serves on.
pub const DEFAULT_PORT: u16 = 6379;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::net::{Resolve, Target};

    /// A server on a loopback port, stopped when the sender is dropped.
    async fn server() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Writes `request` and reads until `expected` has come, or the connection ends.
    async fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) {
        stream.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < expected.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("an answer within 5s")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// The connection has been closed by the server.
    async fn closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("closed within 5s")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    }

    #[tokio::test]
    async fn pipelined_commands_are_answered_in_order() {
        let (addr, _stop) = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        exchange(
            &mut s,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nINCR k\r\n",
            b"+OK\r\n+PONG\r\n$1\r\nv\r\n-ERR value is not an integer or out of range\r\n",
        )
        .await;
        // A command split across writes.
        exchange(&mut s, b"*2\r\n$4\r\nEC", b"").await;
        exchange(&mut s, b"HO\r\n$2\r\nhi\r\n", b"$2\r\nhi\r\n").await;
        exchange(&mut s, b"QUIT\r\n", b"+OK\r\n").await;
        closed(&mut s).await;
    }

    #[tokio::test]
    async fn connections_share_the_keyspace() {
        let (addr, _stop) = server().await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        exchange(&mut a, b"HINCRBY votes :joy: 1\r\n", b":1\r\n").await;
        exchange(&mut b, b"HINCRBY votes :joy: 1\r\n", b":2\r\n").await;
        exchange(
            &mut a,
            b"HGETALL votes\r\n",
            b"*2\r\n$5\r\n:joy:\r\n$1\r\n2\r\n",
        )
        .await;
    }

    #[tokio::test]
    async fn garbage_is_answered_then_closed() {
        let (addr, _stop) = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        exchange(
            &mut s,
            b"PING\r\n*1\r\n:1\r\n",
            b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n",
        )
        .await;
        closed(&mut s).await;
        // The server goes on serving others.
        let mut s = TcpStream::connect(addr).await.unwrap();
        exchange(&mut s, b"PING\r\n", b"+PONG\r\n").await;
    }

    #[tokio::test]
    async fn a_request_over_the_bound_is_refused_and_closed() {
        let (addr, _stop) = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let len = resp::MAX_FRAME;
        exchange(
            &mut s,
            format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n").as_bytes(),
            b"-ERR Protocol error: frame larger than 1048576 bytes\r\n",
        )
        .await;
        closed(&mut s).await;
        // An inline line that never ends: answered with the error, or reset, but ended.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..(resp::MAX_FRAME / chunk.len() + 2) {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let mut got = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(ended.is_ok(), "the connection is still open");
        assert!(
            got.is_empty() || got.starts_with(b"-ERR Protocol error: frame larger"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }

    #[tokio::test]
    async fn the_client_reconnects_and_reports_errors() {
        let (addr, stop) = server().await;
        let target = Target::redis(&addr.to_string(), &Resolve::default()).unwrap();
        let client = Client::new(target, Duration::from_secs(5));
        assert_eq!(
            client
                .command(&[b"HINCRBY", b"votes", b":joy:", b"1"])
                .await
                .unwrap(),
            Value::Integer(1)
        );
        let e = client.command(&[b"NOPE"]).await.unwrap_err();
        assert!(
            matches!(&e, Error::Server(_, m) if m.starts_with("ERR unknown command 'NOPE'")),
            "{e}"
        );
        assert!(!e.is_unavailable());
        // An error reply leaves the connection in step.
        assert_eq!(
            client
                .command(&[b"HGET", b"votes", b":joy:"])
                .await
                .unwrap(),
            Value::bulk("1")
        );

        // The server goes away: the kept connection is found closed, and a new one refused.
        drop(stop);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match client.command(&[b"PING"]).await {
                Err(e) if e.is_unavailable() => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "still answered after the server stopped: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // A new server on the same port: the client connects to it.
        let listener = TcpListener::bind(addr).await.unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, async move {
            let _ = stopped.await;
        }));
        assert_eq!(
            client.command(&[b"PING"]).await.unwrap(),
            Value::Simple("PONG".into())
        );
    }

    /// What a proxy with the Redis codec answers when it cannot forward a command: an outage,
    /// not the server's own error.
    #[tokio::test]
    async fn a_mesh_error_reply_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await.unwrap_or(0) > 0 {
                let reply = b"-ERR mesh: upstream unavailable: connection refused\r\n";
                if s.write_all(reply).await.is_err() {
                    break;
                }
            }
        });
        let target = Target::redis(&addr.to_string(), &Resolve::default()).unwrap();
        let client = Client::new(target, Duration::from_secs(5));
        let e = client.command(&[b"PING"]).await.unwrap_err();
        assert!(
            matches!(&e, Error::Mesh(_, m) if m == "upstream unavailable: connection refused"),
            "{e}"
        );
        assert!(e.is_unavailable());
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Target::redis(&addr.to_string(), &Resolve::default()).unwrap();
        let client = Client::new(target, Duration::from_millis(100));
        let e = client.command(&[b"PING"]).await.unwrap_err();
        assert!(matches!(e, Error::Timeout(..)), "{e}");
        assert!(e.is_unavailable());
        drop(listener);
    }
}
