//! The application under the benchmark: a small HTTP/1 and HTTP/2 server that answers every request with a short 200, at once or after a fixed delay, and counts the requests.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{service::service_fn, Response};
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
    requests: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    pod: String,
}

impl Server {
    /// Starts the server in `pod` on `0.0.0.0:`[`PORT`] (HTTP/1.1, and HTTP/2 with prior
    /// knowledge, detected per connection) and returns once it listens.
    pub fn start(pod: &Pod) -> anyhow::Result<Server> {
        Self::start_with_delay(pod, Duration::ZERO)
    }

    /// Like [`Server::start`], but every response waits `delay` first (without holding a
    /// thread): a slow endpoint for the load-balancing benchmark.
    pub fn start_with_delay(pod: &Pod, delay: Duration) -> anyhow::Result<Server> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let thread = pod.run_in(move || serve(stop_rx, ready_tx, delay, counter));
        let mut server = Server {
            requests,
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

    /// How many requests the server has received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
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
fn serve(
    stop: oneshot::Receiver<()>,
    ready: mpsc::Sender<()>,
    delay: Duration,
    requests: Arc<AtomicU64>,
) -> anyhow::Result<()> {
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
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    hello(delay)
                });
                // A client that goes away mid-request is not the server's problem.
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
    // Dropping the runtime here cancels the connection tasks.
}

/// Answers with 200 and [`BODY`], after `delay`.
async fn hello(delay: Duration) -> Result<Response<Full<Bytes>>, Infallible> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}
