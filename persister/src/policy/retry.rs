//! The retry rule: an attempt that fails for a reason that can pass (the database or Redis
//! is down, a deadlock…) is tried again after a capped exponential backoff; one that cannot
//! pass (a refused password, data the database refuses) stops at once; and retrying ends at
//! shutdown — at the signal for work not started, at the deadline for work in flight.

use super::shutdown::Shutdown;
use std::future::Future;
use std::time::Duration;

/// Capped exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The pause before the next attempt; each call doubles the following one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// What a failed attempt calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It can pass: try again after the pause.
    Retry,
    /// It cannot pass: stop now.
    Fail,
}

/// When retrying gives up because of shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// At the signal: nothing depends on this work yet (connecting, reading).
    Signal,
    /// At the signal's deadline: work in flight (a batch read and not yet committed).
    Deadline,
}

/// Why retrying ended without success; both carry the last error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped<E> {
    /// The error was judged one that cannot pass.
    Failed(E),
    /// Shutdown came first.
    ShutDown(E),
}

/// A failed attempt, as the judge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// 1 for the first failure in a row.
    pub count: u32,
    /// The pause before the next attempt, if there is one.
    pub delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn new(first: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy { first, max }
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first, self.max)
    }

    /// Runs `attempt` until it succeeds, `judge` says [`Verdict::Fail`], or shutdown ends it
    /// (see [`Until`]). `judge` sees every error (to log and count it) before the pause.
    pub async fn run<T, E, F, Fut>(
        &self,
        shutdown: &Shutdown,
        until: Until,
        mut attempt: F,
        mut judge: impl FnMut(&E, Failure) -> Verdict,
    ) -> Result<T, Stopped<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self.backoff();
        let mut count = 0u32;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            count = count.saturating_add(1);
            let delay = backoff.next_delay();
            if judge(&error, Failure { count, delay }) == Verdict::Fail {
                return Err(Stopped::Failed(error));
            }
            let over = |shutdown: &Shutdown| match until {
                Until::Signal => shutdown.requested(),
                Until::Deadline => shutdown.out_of_time(),
            };
            if over(shutdown) {
                return Err(Stopped::ShutDown(error));
            }
            match until {
                Until::Signal => shutdown.pause(delay).await,
                Until::Deadline => shutdown.pause_in_flight(delay).await,
            }
            if over(shutdown) {
                return Err(Stopped::ShutDown(error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::time::Instant;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(350));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, vec![ms(100), ms(200), ms(350), ms(350), ms(350)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_it_succeeds() {
        let tries = Cell::new(0);
        let mut seen = Vec::new();
        let result: Result<u32, Stopped<&str>> = policy()
            .run(
                &Shutdown::never(),
                Until::Signal,
                || {
                    tries.set(tries.get() + 1);
                    let n = tries.get();
                    async move {
                        if n < 4 {
                            Err("down")
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_, failure| {
                    seen.push(failure);
                    Verdict::Retry
                },
            )
            .await;
        assert_eq!(result, Ok(4));
        let delays: Vec<u64> = seen.iter().map(|f| f.delay.as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400]);
        assert_eq!(seen.last().map(|f| f.count), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_cannot_pass_stops_at_once() {
        let start = Instant::now();
        let result: Result<(), _> = policy()
            .run(
                &Shutdown::never(),
                Until::Signal,
                || async { Err("access denied") },
                |_, _| Verdict::Fail,
            )
            .await;
        assert_eq!(result, Err(Stopped::Failed("access denied")));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_retrying_at_the_signal_or_the_deadline() {
        for (until, expected) in [(Until::Signal, 2), (Until::Deadline, 7)] {
            let (trigger, shutdown) = Shutdown::new(Duration::from_secs(5));
            let start = Instant::now();
            let stopper = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                trigger.fire();
                // Keep the trigger alive past the deadline.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            let result: Result<(), _> = policy()
                .run(
                    &shutdown,
                    until,
                    || async { Err("down") },
                    |_, _| Verdict::Retry,
                )
                .await;
            assert_eq!(result, Err(Stopped::ShutDown("down")));
            assert_eq!(start.elapsed().as_secs(), expected, "{until:?}");
            stopper.abort();
        }
    }
}
