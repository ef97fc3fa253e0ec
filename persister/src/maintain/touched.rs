//! Streams a job should look at: those read within its window (long enough for what the job
//! waits for — a checkpoint to follow the rows, a consumer to idle out — to have happened).
//! Proportional to what changed lately, never to how many streams exist.

use crate::event::StreamKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Touched {
    /// Each stream's last read.
    last: HashMap<StreamKey, Instant>,
    keep: Duration,
}

impl Touched {
    /// Streams stay `keep` after their last read.
    pub fn keeping(keep: Duration) -> Touched {
        Touched {
            last: HashMap::new(),
            keep,
        }
    }

    pub fn note<'s>(&mut self, streams: impl IntoIterator<Item = &'s StreamKey>, now: Instant) {
        for stream in streams {
            match self.last.get_mut(stream) {
                Some(at) => *at = now,
                None => {
                    self.last.insert(stream.clone(), now);
                }
            }
        }
    }

    pub fn forget(&mut self, stream: &StreamKey) {
        self.last.remove(stream);
    }

    /// The streams for this run, sorted; those read longer than the window ago go after it.
    pub fn take(&mut self, now: Instant) -> Vec<StreamKey> {
        let mut streams: Vec<StreamKey> = self.last.keys().cloned().collect();
        streams.sort();
        let keep = self.keep;
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) <= keep);
        streams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::from(name.as_bytes())
    }

    #[test]
    fn a_stream_is_looked_at_until_its_window_after_the_last_read_is_over() {
        let start = Instant::now();
        let mut touched = Touched::keeping(Duration::from_secs(10));
        touched.note([&key("a"), &key("b")], start);
        touched.note([&key("b")], start + Duration::from_secs(8));
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(touched.take(at(5)), vec![key("a"), key("b")]);
        // The last run that sees `a`, 11 s after its read.
        assert_eq!(touched.take(at(11)), vec![key("a"), key("b")]);
        assert_eq!(touched.take(at(12)), vec![key("b")]);
        assert_eq!(touched.take(at(19)), vec![key("b")]);
        assert!(touched.take(at(20)).is_empty());
    }

    #[test]
    fn a_forgotten_stream_is_not_looked_at() {
        let now = Instant::now();
        let mut touched = Touched::keeping(Duration::from_secs(10));
        touched.note([&key("a"), &key("b")], now);
        touched.forget(&key("a"));
        assert_eq!(touched.take(now), vec![key("b")]);
    }
}
