//! Logging: the subscriber, and how repeats are kept out of the log. A failure that lasts
//! (the database down for an hour) logs its first occurrence, then one line per interval
//! saying how many more there were, then one line when it is over.

use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// How often a lasting condition is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// Counts occurrences of one kind of event and says when one should be logged: the first,
/// then at most one per interval.
#[derive(Debug, Clone)]
pub struct Repeats {
    every: Duration,
    last_logged: Option<Instant>,
    /// Occurrences since the last one logged.
    unlogged: u64,
    /// Occurrences since the last [`Repeats::clear`].
    total: u64,
}

impl Default for Repeats {
    fn default() -> Repeats {
        Repeats::new(REPEAT_EVERY)
    }
}

impl Repeats {
    pub fn new(every: Duration) -> Repeats {
        Repeats {
            every,
            last_logged: None,
            unlogged: 0,
            total: 0,
        }
    }

    /// Records an occurrence at `now`: `Some(n)` when it is to be logged, `n` being how many
    /// went unlogged before it.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        let due = self
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// The condition is over: returns how many occurrences it had (0 if none), and starts
    /// afresh.
    pub fn clear(&mut self) -> u64 {
        let total = self.total;
        *self = Repeats::new(self.every);
        total
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_one_per_interval() {
        let start = Instant::now();
        let mut repeats = Repeats::new(Duration::from_secs(30));
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(repeats.note(at(0)), Some(0));
        assert_eq!(repeats.note(at(5)), None);
        assert_eq!(repeats.note(at(10)), None);
        assert_eq!(repeats.note(at(30)), Some(2));
        assert_eq!(repeats.note(at(31)), None);
        assert_eq!(repeats.total(), 5);
        assert_eq!(repeats.clear(), 5);
        assert_eq!(repeats.clear(), 0);
        assert_eq!(repeats.note(at(32)), Some(0));
    }
}
