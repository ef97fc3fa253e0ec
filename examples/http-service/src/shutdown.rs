//! Graceful shutdown: on SIGTERM or SIGINT the server stops accepting connections, closes idle
//! ones, lets requests in flight finish, and exits; if they take longer than the limit, it
//! exits anyway (with an error, so the supervisor sees that requests were cut).

use std::future::IntoFuture;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// Signal handlers, installed before the server starts so an early SIGTERM is not fatal.
pub struct Signals {
    term: Signal,
    interrupt: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Runs the server `serve` makes (given the future that says when to stop) until it has
    /// drained after a signal, or until `limit` has passed since the signal.
    pub async fn serve<S>(
        mut self,
        serve: impl FnOnce(Stopping) -> S,
        limit: Duration,
    ) -> anyhow::Result<()>
    where
        S: IntoFuture<Output = std::io::Result<()>>,
    {
        let (stop, stopping) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = self.term.recv() => tracing::info!("SIGTERM: finishing the requests in flight"),
                _ = self.interrupt.recv() => tracing::info!("SIGINT: finishing the requests in flight"),
            }
            let _ = stop.send(true);
        });
        let deadline = Stopping(stopping.clone()).after(limit);
        tokio::select! {
            result = serve(Stopping(stopping)).into_future() => Ok(result?),
            _ = deadline => {
                anyhow::bail!("requests in flight did not finish within {limit:?} of the signal")
            }
        }
    }
}

/// Resolves once a signal has arrived.
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    pub async fn requested(mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            // The signal task is gone without a signal (the runtime is ending): never.
            std::future::pending::<()>().await;
        }
    }

    async fn after(self, limit: Duration) {
        self.requested().await;
        tokio::time::sleep(limit).await;
    }
}
