//! The shutdown rule: once SIGTERM (or SIGINT) arrives, nothing new is read, and the work in
//! flight may still finish until a grace period counted from the signal has passed.

use std::time::Duration;
// Tokio's clock: the same as the system's, but can be paused in tests.
use tokio::sync::watch;
use tokio::time::Instant;

/// Sends the signal; kept by whoever catches it.
#[derive(Debug, Clone)]
pub struct Trigger(std::sync::Arc<watch::Sender<Option<Instant>>>);

impl Trigger {
    /// Asks every holder of a [`Shutdown`] to stop; the grace period counts from the first call.
    pub fn fire(&self) {
        self.0.send_if_modified(|at| {
            let first = at.is_none();
            at.get_or_insert_with(Instant::now);
            first
        });
    }
}

/// A view of the shutdown signal, cloned into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: watch::Receiver<Option<Instant>>,
    grace: Duration,
}

impl Shutdown {
    /// A new signal and its trigger; work in flight gets `grace` after the signal.
    pub fn new(grace: Duration) -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(None);
        (
            Trigger(std::sync::Arc::new(tx)),
            Shutdown { signal: rx, grace },
        )
    }

    /// A signal for part of the work (one node's pipeline): fired by its own trigger, or
    /// when this one fires. Its grace period counts from when it fired.
    pub fn child(&self) -> (Trigger, Shutdown) {
        let (trigger, child) = Shutdown::new(self.grace);
        let (parent, forward, own) = (self.clone(), trigger.clone(), child.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = parent.requested_wait() => forward.fire(),
                () = own.requested_wait() => {}
            }
        });
        (trigger, child)
    }

    /// A signal that never fires (the `migrate` subcommand, tests).
    pub fn never() -> Shutdown {
        // With its trigger dropped, no signal can ever come.
        Shutdown::new(Duration::ZERO).1
    }

    /// Whether shutdown was asked.
    pub fn requested(&self) -> bool {
        self.signal.borrow().is_some()
    }

    /// Until when the work in flight may go on, once shutdown was asked.
    pub fn deadline(&self) -> Option<Instant> {
        self.signal.borrow().map(|at| at + self.grace)
    }

    /// Shutdown was asked and its grace period is over.
    pub fn out_of_time(&self) -> bool {
        self.deadline().is_some_and(|at| Instant::now() >= at)
    }

    /// Completes once shutdown is asked.
    pub async fn requested_wait(&self) {
        let mut signal = self.signal.clone();
        // An error means the trigger is gone: no signal can come any more.
        if signal.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Completes once shutdown was asked and the grace period has passed.
    pub async fn deadline_passed(&self) {
        self.requested_wait().await;
        if let Some(at) = self.deadline() {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Sleeps `delay`, or less: until shutdown is asked (work not started yet is given up).
    pub async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.requested_wait() => {}
        }
    }

    /// Sleeps `delay`, never past the deadline (work in flight goes on after the signal).
    pub async fn pause_in_flight(&self, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.deadline_passed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn grace_counts_from_the_signal() {
        let (trigger, shutdown) = Shutdown::new(Duration::from_secs(10));
        assert!(!shutdown.requested() && !shutdown.out_of_time());
        assert_eq!(shutdown.deadline(), None);
        tokio::time::sleep(Duration::from_secs(5)).await;
        trigger.fire();
        let at = shutdown.deadline().expect("a deadline");
        // A second signal does not move it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.fire();
        assert_eq!(shutdown.deadline(), Some(at));
        assert!(shutdown.requested() && !shutdown.out_of_time());
        shutdown.deadline_passed().await;
        assert!(shutdown.out_of_time());
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_end_at_the_signal_or_the_deadline() {
        let (trigger, shutdown) = Shutdown::new(Duration::from_secs(3));
        let start = tokio::time::Instant::now();
        shutdown.pause(Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let waiter = shutdown.clone();
        let paused = tokio::spawn(async move { waiter.pause(Duration::from_secs(60)).await });
        let in_flight = shutdown.clone();
        let in_flight =
            tokio::spawn(async move { in_flight.pause_in_flight(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.fire();
        paused.await.expect("the pause ends");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        in_flight.await.expect("the pause ends");
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_stops_alone_or_with_its_parent() {
        let (trigger, parent) = Shutdown::new(Duration::from_secs(3));
        let (one, first) = parent.child();
        let (_two, second) = parent.child();
        one.fire();
        first.requested_wait().await;
        assert!(!parent.requested() && !second.requested());
        trigger.fire();
        second.requested_wait().await;
        assert!(second.requested());
    }

    #[tokio::test(start_paused = true)]
    async fn never_fires() {
        let shutdown = Shutdown::never();
        let waited =
            tokio::time::timeout(Duration::from_secs(3600), shutdown.requested_wait()).await;
        assert!(waited.is_err());
        assert!(!shutdown.requested());
    }
}
