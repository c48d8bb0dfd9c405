//! Graceful shutdown: a signal every listener and connection watches, and a tracker of the
//! work in flight so the process exits only when it is done or the grace period is over.

use std::{future::Future, pin::Pin, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A cloneable handle to the proxy's shutdown state.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    signal: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` as in-flight work that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Completes once shutdown has begun.
    pub async fn signaled(&self) {
        self.signal.cancelled().await
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Drives a server connection to its end; once shutdown begins, calls `begin_shutdown` on it
    /// (hyper's `graceful_shutdown`: finish the requests in flight, accept no more) and drives it
    /// on until it closes. For example, `drain.serve(conn, |c| c.graceful_shutdown())` with a
    /// hyper `http1::Connection`.
    pub fn serve<C: Future>(
        &self,
        conn: C,
        begin_shutdown: impl FnOnce(Pin<&mut C>),
    ) -> impl Future<Output = C::Output> {
        let signal = self.signal.clone();
        async move {
            tokio::pin!(conn);
            tokio::select! {
                out = conn.as_mut() => out,
                () = signal.cancelled() => {
                    begin_shutdown(conn.as_mut());
                    conn.await
                }
            }
        }
    }

    /// Begins shutdown: listeners stop accepting, connections finish what they have in flight.
    pub fn start(&self) {
        self.signal.cancel();
        self.tracker.close();
    }

    /// Waits for in-flight work to finish, at most `grace`; false when the grace period ran out.
    pub async fn wait(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// How many tracked tasks are still running.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_in_flight_work_then_gives_up_after_the_grace_period() {
        let drain = Drain::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            let _ = rx.await;
        });
        drain.start();
        assert!(drain.is_draining());
        assert!(
            !drain.wait(Duration::from_millis(20)).await,
            "still in flight"
        );
        tx.send(()).unwrap();
        assert!(drain.wait(Duration::from_secs(5)).await);
    }
}
