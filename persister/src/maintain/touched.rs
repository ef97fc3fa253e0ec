//! Streams a job should look at: those read since its last run, and those of the run
//! before (whose checkpoint may have lagged its entries then). Proportional to what changed,
//! never to how many streams exist.

use crate::event::StreamKey;
use std::collections::HashSet;

#[derive(Debug, Default)]
pub struct Touched {
    current: HashSet<StreamKey>,
    previous: HashSet<StreamKey>,
}

impl Touched {
    pub fn note<'s>(&mut self, streams: impl IntoIterator<Item = &'s StreamKey>) {
        for stream in streams {
            if !self.current.contains(stream) {
                self.current.insert(stream.clone());
            }
        }
    }

    pub fn forget(&mut self, stream: &StreamKey) {
        self.current.remove(stream);
        self.previous.remove(stream);
    }

    /// The streams for this run, sorted; those touched since move to "the run before".
    pub fn take(&mut self) -> Vec<StreamKey> {
        let current = std::mem::take(&mut self.current);
        let mut streams: Vec<StreamKey> = current.union(&self.previous).cloned().collect();
        streams.sort();
        self.previous = current;
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
    fn a_stream_is_looked_at_in_two_runs_after_it_was_touched() {
        let mut touched = Touched::default();
        touched.note([&key("a"), &key("b")]);
        assert_eq!(touched.take(), vec![key("a"), key("b")]);
        touched.note([&key("c")]);
        assert_eq!(touched.take(), vec![key("a"), key("b"), key("c")]);
        assert_eq!(touched.take(), vec![key("c")]);
        assert!(touched.take().is_empty());
    }

    #[test]
    fn a_forgotten_stream_is_not_looked_at() {
        let mut touched = Touched::default();
        touched.note([&key("a")]);
        touched.take();
        touched.note([&key("a"), &key("b")]);
        touched.forget(&key("a"));
        assert_eq!(touched.take(), vec![key("b")]);
    }
}
