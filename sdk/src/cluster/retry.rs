//! How long a call waits before it is sent again: a bounded, jittered exponential backoff.

use crate::{Error, Result};
use std::time::Duration;

/// How a [`Cluster`](crate::Cluster) retries a call the cluster turned away for now
/// (`-TRYAGAIN`, `-CLUSTERDOWN`, `-READONLY`, a refused connection) or redirected
/// (`-MOVED`, `-ASK`).
///
/// Retry `n` waits a random time between `min_wait` and `min_wait × 2ⁿ⁻¹` (at most
/// `max_wait`), so calls turned away together do not all come back together. A redirect is
/// followed at once. The default — 40 retries, 10 to 200 ms — outlasts a slot migration of
/// several seconds.
///
/// ```
/// use coupon_sdk::ClusterRetry;
/// use std::time::Duration;
///
/// let patient = ClusterRetry::new(100, Duration::from_millis(5), Duration::from_secs(1))?;
/// assert_eq!(patient.retries(), 100);
/// # Ok::<(), coupon_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterRetry {
    retries: u32,
    min_wait: Duration,
    max_wait: Duration,
}

impl Default for ClusterRetry {
    fn default() -> Self {
        ClusterRetry {
            retries: 40,
            min_wait: Duration::from_millis(10),
            max_wait: Duration::from_millis(200),
        }
    }
}

impl ClusterRetry {
    /// Up to `retries` retries per call, waiting from `min_wait` up to `max_wait` before each.
    /// Refuses a `min_wait` above `max_wait`.
    pub fn new(retries: u32, min_wait: Duration, max_wait: Duration) -> Result<Self> {
        if min_wait > max_wait {
            return Err(Error::InvalidInput(
                "the shortest retry wait must not exceed the longest",
            ));
        }
        Ok(ClusterRetry {
            retries,
            min_wait,
            max_wait,
        })
    }

    /// How many times one call is sent again at most.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The longest wait before retry `retry` (from 1): `min_wait` doubled `retry - 1` times,
    /// never above `max_wait`. Saturates instead of overflowing, whatever the count.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.min_wait
            .saturating_mul(1 << doublings)
            .clamp(self.min_wait, self.max_wait)
    }

    /// The wait before retry `retry`: uniformly between `min_wait` and [`ceiling`](Self::ceiling).
    pub fn wait(&self, retry: u32) -> Duration {
        self.wait_at(retry, fastrand::f64())
    }

    /// The wait `fraction` (0.0..1.0) of the way from `min_wait` to the ceiling.
    fn wait_at(&self, retry: u32, fraction: f64) -> Duration {
        // In whole nanoseconds, so that no rounding can step past the ceiling (or overflow).
        let spread = (self.ceiling(retry) - self.min_wait).as_nanos();
        let offset = ((spread as f64 * fraction.clamp(0.0, 1.0)) as u128).min(spread);
        let offset = Duration::new(
            (offset / 1_000_000_000) as u64,
            (offset % 1_000_000_000) as u32,
        );
        self.min_wait.saturating_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_the_shortest_wait_up_to_the_longest() {
        let retry = ClusterRetry::default();
        let ceilings: Vec<Duration> = (1..=7).map(|n| retry.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [
                10 * MS,
                20 * MS,
                40 * MS,
                80 * MS,
                160 * MS,
                200 * MS,
                200 * MS
            ]
        );
        assert_eq!(retry.ceiling(0), 10 * MS, "a first attempt waits the least");
    }

    #[test]
    fn no_retry_count_overflows() {
        let retry = ClusterRetry::default();
        for n in [31, 32, 33, 60, 64, 65, 1_000, u32::MAX] {
            assert_eq!(retry.ceiling(n), 200 * MS, "retry {n}");
        }
        let huge = ClusterRetry::new(u32::MAX, Duration::from_secs(u64::MAX / 4), Duration::MAX);
        let huge = huge.expect("valid");
        assert_eq!(huge.ceiling(u32::MAX), Duration::MAX);
        assert!(huge.wait(u32::MAX) >= Duration::from_secs(u64::MAX / 4));
    }

    #[test]
    fn waits_spread_between_the_shortest_and_the_ceiling() {
        let retry = ClusterRetry::default();
        assert_eq!(retry.wait_at(3, 0.0), 10 * MS);
        assert_eq!(retry.wait_at(3, 0.5), 25 * MS);
        assert_eq!(retry.wait_at(3, 1.0), 40 * MS);
        assert_eq!(retry.wait_at(50, 0.5), 105 * MS);
        let waits: Vec<Duration> = (0..1_000).map(|_| retry.wait(4)).collect();
        assert!(waits.iter().all(|w| (10 * MS..=80 * MS).contains(w)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "the waits are jittered");
    }

    #[test]
    fn equal_bounds_wait_exactly_that_long() {
        let fixed = ClusterRetry::new(3, 50 * MS, 50 * MS).expect("valid");
        assert_eq!(fixed.ceiling(10), 50 * MS);
        assert_eq!(fixed.wait(10), 50 * MS);
    }

    #[test]
    fn inverted_bounds_are_refused() {
        let inverted = ClusterRetry::new(3, 200 * MS, 10 * MS);
        assert!(matches!(inverted, Err(Error::InvalidInput(_))));
    }
}
