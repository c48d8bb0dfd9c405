//! The application under the benchmark: a small, fast HTTP/1 and HTTP/2 server that answers every request with a short 200.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_cli::local::Pod;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The port the application listens on, on every address of its pod.
pub const PORT: u16 = 8080;

/// The body of every response.
pub const BODY: &[u8] = b"hello from mesh-bench\n";

/// How long the server may take to bind its port.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's worker threads: it shares two cores with the load generator and the proxies,
/// and answering a request costs little.
const WORKER_THREADS: usize = 2;

/// A running server in a pod. Dropping it stops the server and joins its thread.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    pod: String,
}

impl Server {
    /// Starts the server in `pod` on `0.0.0.0:`[`PORT`] (HTTP/1.1, and HTTP/2 with prior
    /// knowledge, detected per connection) and returns once it listens.
    pub fn start(pod: &Pod) -> anyhow::Result<Server> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = pod.run_in(move || serve(stop_rx, ready_tx));
        let mut server = Server {
            stop: Some(stop_tx),
            thread: Some(thread),
            pod: pod.name.clone(),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(()) => Ok(server),
            // The thread ended (its error is in the join result) or hangs.
            Err(_) => {
                server.stop.take();
                let err = match server.thread.take().map(JoinHandle::join) {
                    Some(Ok(Err(err))) => err,
                    Some(Err(_)) => anyhow!("the server thread panicked"),
                    _ => anyhow!("not listening after {START_TIMEOUT:?}"),
                };
                Err(err.context(format!("starting the server in pod {}", pod.name)))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server may have stopped already: nothing to tell it then.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => eprintln!("mesh-bench: server in pod {}: {err:#}", self.pod),
                Err(_) => eprintln!("mesh-bench: server thread in pod {} panicked", self.pod),
            }
        }
    }
}

// === helpers ===

/// The server thread's body: a runtime, the listener, one task per connection until `stop`.
fn serve(stop: oneshot::Receiver<()>, ready: mpsc::Sender<()>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("building the server's runtime")?;
    rt.block_on(async move {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        // The caller waits for this; if it gave up, serving anyway is harmless.
        let _ = ready.send(());
        let builder = auto::Builder::new(TokioExecutor::new());
        tokio::pin!(stop);
        loop {
            let (stream, _peer) = tokio::select! {
                _ = &mut stop => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // E.g. out of file descriptors: keep serving the connections we have.
                    Err(err) => {
                        eprintln!("mesh-bench: server accept: {err}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            // Small responses must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                // A client that goes away mid-request is not the server's problem.
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    })
    // Dropping the runtime here cancels the connection tasks.
}

/// Answers every request with 200 and [`BODY`].
async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}
