//! Which streams to read next, and how much of each: the reader names only streams that may
//! have new entries, never every stream it knows. Three lines, served in order:
//!
//! 1. streams whose last read filled their share (more is waiting: a hot coupon);
//! 2. streams the change feed named;
//! 3. streams of a sweep (every known stream once, at the feed's say).
//!
//! A read takes streams of the first two lines or of a sweep, never both, so the share of a
//! hot stream is not cut into slivers by hundreds of swept ones; while streams wait, every
//! [`SWEEP_TURN`]th read is a sweep's, so a sweep always goes on. A stream waits in at most
//! one of the first two lines; a swept stream already waiting there is skipped when its turn
//! comes.

use crate::event::StreamKey;
use std::collections::{HashSet, VecDeque};

/// Most streams one read names: keeps each `XREADGROUP` far below a millisecond of the
/// server's time, however many coupons exist.
pub const STREAMS_PER_READ: usize = 256;

/// Most entries one read asks for in all: a read of 1,000 entries took Redis about 1.3 ms,
/// so 500 keep each well below a millisecond of the server's time.
pub const ENTRIES_PER_READ: usize = 500;

/// While streams wait, one read in this many goes to a sweep under way.
pub const SWEEP_TURN: usize = 4;

#[derive(Debug, Default)]
pub struct ReadQueue {
    again: VecDeque<StreamKey>,
    hinted: VecDeque<StreamKey>,
    /// Streams in `again` or `hinted`.
    waiting: HashSet<StreamKey>,
    swept: VecDeque<StreamKey>,
    /// Reads of waiting streams since the sweep's last turn.
    since_sweep: usize,
}

impl ReadQueue {
    /// Streams with changes: read after those already waiting.
    pub fn hint(&mut self, stream: StreamKey) {
        if self.waiting.insert(stream.clone()) {
            self.hinted.push_back(stream);
        }
    }

    /// A stream that filled its share: read again before the others.
    pub fn read_again(&mut self, stream: StreamKey) {
        if self.waiting.insert(stream.clone()) {
            self.again.push_back(stream);
        } else if let Some(at) = self.hinted.iter().position(|s| *s == stream) {
            // Moves up: it is known to hold more.
            self.hinted.remove(at);
            self.again.push_back(stream);
        }
    }

    /// Queues a sweep of `streams`, replacing one still under way.
    pub fn sweep(&mut self, streams: impl IntoIterator<Item = StreamKey>) {
        self.swept = streams.into_iter().collect();
    }

    pub fn sweeping(&self) -> bool {
        !self.swept.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.swept.is_empty()
    }

    /// Up to `max` streams to read now: waiting ones, first line first, or a sweep's
    /// (when nothing waits, or it is the sweep's turn); each once.
    pub fn next(&mut self, max: usize) -> Vec<StreamKey> {
        let sweep_turn = self.since_sweep + 1 >= SWEEP_TURN || self.waiting.is_empty();
        if self.sweeping() && sweep_turn {
            self.since_sweep = 0;
            let mut picked = Vec::new();
            while picked.len() < max {
                let Some(stream) = self.swept.pop_front() else {
                    break;
                };
                if !self.waiting.contains(&stream) && !picked.contains(&stream) {
                    picked.push(stream);
                }
            }
            if !picked.is_empty() {
                return picked;
            }
        }
        self.since_sweep += 1;
        let mut picked = Vec::new();
        for line in [&mut self.again, &mut self.hinted] {
            while picked.len() < max {
                let Some(stream) = line.pop_front() else {
                    break;
                };
                self.waiting.remove(&stream);
                picked.push(stream);
            }
        }
        picked
    }
}

/// Each stream's share of `budget` entries when `streams` are read at once: all of it for
/// one, at least one each.
pub fn share(budget: usize, streams: usize) -> usize {
    (budget / streams.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::from(name.as_bytes())
    }

    fn names(streams: &[StreamKey]) -> Vec<String> {
        streams
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    #[test]
    fn a_stream_with_more_goes_before_hints_and_a_sweep_gets_its_turn() {
        let mut queue = ReadQueue::default();
        queue.sweep([key("s1"), key("s2")]);
        queue.hint(key("h"));
        queue.read_again(key("hot"));
        assert_eq!(names(&queue.next(10)), ["hot", "h"]);
        // Nothing waits: the sweep's turn.
        assert_eq!(names(&queue.next(10)), ["s1", "s2"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_hot_stream_leaves_every_fourth_read_to_the_sweep() {
        let mut queue = ReadQueue::default();
        queue.sweep((0..10).map(|i| key(&format!("s{i}"))));
        let mut reads = Vec::new();
        for _ in 0..8 {
            queue.read_again(key("hot"));
            reads.push(names(&queue.next(2)).join(","));
        }
        assert_eq!(
            reads,
            ["hot", "hot", "hot", "s0,s1", "hot", "hot", "hot", "s2,s3"]
        );
    }

    #[test]
    fn a_stream_waits_once_and_a_sweep_skips_what_waits() {
        let mut queue = ReadQueue::default();
        queue.hint(key("a"));
        queue.hint(key("a"));
        queue.read_again(key("a"));
        queue.sweep([key("a"), key("b")]);
        assert_eq!(names(&queue.next(1)), ["a"]);
        assert_eq!(names(&queue.next(10)), ["a", "b"]);
        assert!(queue.next(10).is_empty());
    }

    #[test]
    fn reads_are_bounded_and_the_rest_waits() {
        let mut queue = ReadQueue::default();
        for i in 0..600 {
            queue.hint(key(&format!("c{i}")));
        }
        assert_eq!(queue.next(STREAMS_PER_READ).len(), STREAMS_PER_READ);
        assert_eq!(queue.next(STREAMS_PER_READ).len(), STREAMS_PER_READ);
        assert_eq!(
            queue.next(STREAMS_PER_READ).len(),
            600 - 2 * STREAMS_PER_READ
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn one_hot_stream_gets_the_whole_budget() {
        assert_eq!(share(ENTRIES_PER_READ, 1), ENTRIES_PER_READ);
        assert_eq!(share(1000, 256), 3);
        assert_eq!(share(10, 256), 1);
        assert_eq!(share(10, 0), 10);
    }
}
