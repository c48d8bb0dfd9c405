//! Opaque TCP forwarding: bytes copied both ways, each direction's end (half-close) passed on.

use crate::{connect::Connect, http::upstream::UpstreamError};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// Connects to `target` and copies bytes between it and `client` until both directions end,
/// returning the bytes copied (client to server, server to client). When the upstream cannot be
/// reached the error is returned and `client` is left to the caller, which resets it.
pub async fn forward<I>(
    client: &mut I,
    target: SocketAddr,
    connect: &Connect,
) -> Result<(u64, u64), TcpError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let server = self::connect(target, connect).await?;
    copy(client, server, target).await
}

/// Opens the upstream connection.
pub async fn connect(target: SocketAddr, connect: &Connect) -> Result<TcpStream, TcpError> {
    connect
        .connect(target)
        .await
        .map_err(|e| TcpError::Connect(e.into()))
}

/// Copies bytes between `client` and `server` until both directions end.
pub async fn copy<I, S>(
    client: &mut I,
    mut server: S,
    target: SocketAddr,
) -> Result<(u64, u64), TcpError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // copy_bidirectional shuts down each write side when the other side's read ends, so a
    // client's half-close reaches the server while the server's answer still flows back.
    tokio::io::copy_bidirectional(client, &mut server)
        .await
        .map_err(|source| TcpError::Io { target, source })
}

/// Why an opaque connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error(transparent)]
    Connect(UpstreamError),
    #[error("copying to and from {target}: {source}")]
    Io {
        target: SocketAddr,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const CONNECT: Connect = Connect {
        timeout: Duration::from_secs(5),
        mark: None,
    };

    #[tokio::test]
    async fn half_close_reaches_the_server_and_its_reply_comes_back() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut io, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap(); // ends only on the client's half-close
            io.write_all(&got).await.unwrap();
            io.write_all(b"!").await.unwrap();
        });
        let (mut client, mut proxy_side) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(async move { forward(&mut proxy_side, target, &CONNECT).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert_eq!(reply, "ping!");
        echo.await.unwrap();
        assert_eq!(proxy.await.unwrap().unwrap(), (4, 5));
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let (_client, mut proxy_side) = tokio::io::duplex(64);
        let err = forward(&mut proxy_side, target, &CONNECT)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("connection refused"),
            "{err}"
        );
    }
}
