//! How the viz component's HTTP APIs (the metrics API, the tap aggregator) are called: the
//! [`Api`] trait, directly at an address ([`Direct`]) or, in the CLI, through the Kubernetes API
//! server's service proxy; and the body of their errors ([`ApiError`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// The body of the metrics API's (and the tap aggregator's) errors.
pub use mesh_api::viz::ApiError;

/// What [`Api::get`] returns: the status and the body.
pub type Getting<'a> = Pin<Box<dyn Future<Output = io::Result<(u16, Bytes)>> + Send + 'a>>;

/// A body as it comes.
pub type Chunks = Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send>>;

/// What [`Api::stream`] returns: the status and the body as it comes.
pub type Streaming<'a> = Pin<Box<dyn Future<Output = io::Result<(u16, Chunks)>> + Send + 'a>>;

/// A way to call the viz component's HTTP APIs (directly, or through the Kubernetes API
/// server's service proxy).
pub trait Api: Send + Sync + 'static {
    /// `GET path_and_query`, the whole body.
    fn get<'a>(&'a self, path_and_query: &'a str) -> Getting<'a>;

    /// `GET path_and_query`, the body as it comes (a tap's stream never ends by itself);
    /// dropping the body ends the call. By default the whole body of [`Api::get`].
    fn stream<'a>(&'a self, path_and_query: &'a str) -> Streaming<'a> {
        Box::pin(async move {
            let (status, body) = self.get(path_and_query).await?;
            let chunks: Chunks = Box::pin(futures_util::stream::once(async move { Ok(body) }));
            Ok((status, chunks))
        })
    }
}

/// Calls an API at a plain-HTTP address (`mesh-controller metrics-api --listen`), one
/// HTTP/1.1 connection per call.
#[derive(Clone, Debug)]
pub struct Direct {
    pub addr: SocketAddr,
    /// How long a call may take in all.
    pub timeout: Duration,
}

impl Api for Direct {
    fn get<'a>(&'a self, path_and_query: &'a str) -> Getting<'a> {
        Box::pin(async move {
            let call = async {
                let (status, mut chunks) = self.open(path_and_query).await?;
                let mut body = Vec::new();
                while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
                    body.extend_from_slice(&chunk?);
                }
                Ok((status, Bytes::from(body)))
            };
            tokio::time::timeout(self.timeout, call)
                .await
                .map_err(|_| self.timed_out())?
        })
    }

    fn stream<'a>(&'a self, path_and_query: &'a str) -> Streaming<'a> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.open(path_and_query))
                .await
                .map_err(|_| self.timed_out())?
        })
    }
}

impl Direct {
    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {} in {:?}", self.addr, self.timeout),
        )
    }

    /// The status and the body as it comes; the connection lives as long as the body.
    async fn open(&self, path_and_query: &str) -> io::Result<(u16, Chunks)> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path_and_query)
            .header(http::header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        let rsp = sender.send_request(req).await.map_err(io::Error::other)?;
        let status = rsp.status().as_u16();
        let chunks = futures_util::TryStreamExt::map_err(
            rsp.into_body().into_data_stream(),
            io::Error::other,
        );
        Ok((status, Box::pin(chunks)))
    }
}
