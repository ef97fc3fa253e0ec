//! Stage 2, batch: gathers read entries until the batch is full or has lingered long enough.
//! An entry seen twice (drained and claimed in one batch) is kept once; new entries (never
//! delivered before) cannot have been seen, so they are not looked up.

use crate::event::{EntryId, RawEntry, Source, StreamKey};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Batch {
    max_size: usize,
    linger: Duration,
    opened: Option<Instant>,
    entries: Vec<RawEntry>,
    seen: HashSet<(StreamKey, EntryId)>,
}

impl Batch {
    pub fn new(max_size: usize, linger: Duration) -> Batch {
        Batch {
            max_size: max_size.max(1),
            linger,
            opened: None,
            entries: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Adds entries up to the batch's size and hands back those that did not fit (in
    /// order, for the next batch); the linger clock starts with the first one.
    #[must_use = "entries that did not fit belong in the next batch"]
    pub fn extend(&mut self, entries: Vec<RawEntry>, now: Instant) -> Vec<RawEntry> {
        let mut rest = Vec::new();
        for entry in entries {
            if self.is_full() {
                rest.push(entry);
            } else if entry.source == Source::New
                || self.seen.insert((entry.stream.clone(), entry.id))
            {
                self.opened.get_or_insert(now);
                self.entries.push(entry);
            }
        }
        rest
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_size
    }

    /// How many more entries fit.
    pub fn room(&self) -> usize {
        self.max_size.saturating_sub(self.entries.len())
    }

    /// How long to keep waiting for more: `None` while empty (no clock running).
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.opened.map(|opened| {
            self.linger
                .saturating_sub(now.saturating_duration_since(opened))
        })
    }

    /// Full, or non-empty and past its linger time.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.is_full() || self.time_left(now) == Some(Duration::ZERO)
    }

    pub fn into_entries(self) -> Vec<RawEntry> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entries(ids: &[u64]) -> Vec<RawEntry> {
        let stream: StreamKey = Arc::from(&b"{a}:events"[..]);
        ids.iter()
            .map(|ms| RawEntry {
                stream: stream.clone(),
                id: EntryId { ms: *ms, seq: 0 },
                fields: None,
                source: Source::Pending,
            })
            .collect()
    }

    #[test]
    fn fills_up_and_dedups() {
        let now = Instant::now();
        let mut batch = Batch::new(3, Duration::from_millis(50));
        assert_eq!(batch.time_left(now), None);
        assert!(!batch.is_ready(now));
        assert!(batch.extend(entries(&[1, 2]), now).is_empty());
        assert!(batch.extend(entries(&[2]), now).is_empty());
        assert_eq!((batch.len(), batch.room()), (2, 1));
        assert!(!batch.is_ready(now));
        assert!(batch.extend(entries(&[3]), now).is_empty());
        assert!(batch.is_full() && batch.is_ready(now));
    }

    #[test]
    fn never_grows_past_its_size() {
        let now = Instant::now();
        let mut batch = Batch::new(3, Duration::from_millis(50));
        let rest = batch.extend(entries(&[1, 2, 3, 4, 5]), now);
        assert_eq!(batch.len(), 3);
        let ids: Vec<u64> = rest.iter().map(|entry| entry.id.ms).collect();
        assert_eq!(ids, vec![4, 5]);
        let mut next = Batch::new(3, Duration::from_millis(50));
        assert!(next.extend(rest, now).is_empty());
        assert_eq!(next.len(), 2);
    }

    #[test]
    fn lingers_from_the_first_entry() {
        let start = Instant::now();
        let mut batch = Batch::new(100, Duration::from_millis(50));
        assert!(batch.extend(Vec::new(), start).is_empty());
        assert_eq!(batch.time_left(start), None);
        assert!(batch.extend(entries(&[1]), start).is_empty());
        let later = start + Duration::from_millis(20);
        assert_eq!(batch.time_left(later), Some(Duration::from_millis(30)));
        assert!(!batch.is_ready(later));
        assert!(batch.is_ready(start + Duration::from_millis(60)));
    }
}
