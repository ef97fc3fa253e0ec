//! The change index: which coupon event streams changed since a reader last looked, so the
//! persister reads only those instead of every stream on the node.
//!
//! Every change gets the next tick; a stream is kept once, under the tick of its newest change,
//! so the index holds at most one entry per stream and a busy stream costs nothing extra. A
//! reader passes the cursor of its last call and gets the streams changed after it, oldest
//! change first. The index is a hint, never the source of truth: it starts empty at every load
//! (a new epoch), and when it is full the oldest-changed stream is dropped and the floor
//! raised, so a reader it may have failed is told so (`complete` = false) and sweeps.

use super::{parse_int, CouponError};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Streams kept before the oldest-changed is dropped: about 150 MB with 50-byte names.
pub const CAPACITY: usize = 1_000_000;
/// Streams one call lists when COUNT is not given, and the most it may ask for.
pub const DEFAULT_COUNT: usize = 1000;
pub const MAX_COUNT: usize = 10_000;

/// Stream names are hashed on every event: foldhash (randomly seeded per index) costs a
/// fraction of std's SipHash on names this short (BENCHMARKS.md).
type Names = HashMap<Arc<[u8]>, u64, foldhash::fast::RandomState>;

/// Where a reader is: from the start, or after a tick of some index instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// `0`: nothing seen yet.
    Start,
    At {
        epoch: u64,
        tick: u64,
    },
}

impl Cursor {
    /// `0`, or `<epoch>-<tick>` as [`Display`](fmt::Display) writes it: the epoch in 16 hex
    /// digits, the tick in canonical decimal.
    pub fn parse(text: &[u8]) -> Result<Cursor, CouponError> {
        if text == b"0" {
            return Ok(Cursor::Start);
        }
        let invalid = || CouponError::InvalidCursor(printable(text));
        let (epoch, tick) = split_once(text, b'-').ok_or_else(invalid)?;
        let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if epoch.len() != 16 || !epoch.iter().all(lower_hex) {
            return Err(invalid());
        }
        let epoch = std::str::from_utf8(epoch)
            .ok()
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(invalid)?;
        let tick = parse_tick(tick).ok_or_else(invalid)?;
        Ok(Cursor::At { epoch, tick })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Start => f.write_str("0"),
            Cursor::At { epoch, tick } => write!(f, "{epoch:016x}-{tick}"),
        }
    }
}

/// A u64 in canonical decimal: digits only, no leading zero.
fn parse_tick(raw: &[u8]) -> Option<u64> {
    match raw {
        [b'0'] => Some(0),
        [b'1'..=b'9', ..] if raw.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(raw).ok()?.parse().ok()
        }
        _ => None,
    }
}

fn split_once(text: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = text.iter().position(|b| *b == separator)?;
    Some((&text[..at], &text[at + 1..]))
}

/// A cursor as the error reply shows it: at most 64 characters of it.
fn printable(text: &[u8]) -> String {
    String::from_utf8_lossy(&text[..text.len().min(64)]).into_owned()
}

/// A parsed `COUPON.CHANGES <cursor> [COUNT <n>]` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangesArgs {
    pub cursor: Cursor,
    pub count: usize,
}

impl ChangesArgs {
    /// Parses the arguments after the command name.
    pub fn parse(args: &[&[u8]]) -> Result<Self, CouponError> {
        let [cursor, options @ ..] = args else {
            return Err(CouponError::Arity);
        };
        let cursor = Cursor::parse(cursor)?;
        let mut count = None;
        let mut rest = options;
        while let [option, tail @ ..] = rest {
            if !option.eq_ignore_ascii_case(b"COUNT") {
                return Err(CouponError::UnknownChangesOption(printable(option)));
            }
            let [value, tail @ ..] = tail else {
                return Err(CouponError::CountArity);
            };
            if count.is_some() {
                return Err(CouponError::DuplicateOption("COUNT"));
            }
            let value = parse_int(value)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_COUNT).contains(n))
                .ok_or(CouponError::InvalidCount)?;
            count = Some(value);
            rest = tail;
        }
        Ok(ChangesArgs {
            cursor,
            count: count.unwrap_or(DEFAULT_COUNT),
        })
    }
}

/// One call's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Where the next call goes on from (always of this index's epoch).
    pub next: Cursor,
    /// Whether `streams` (with the pages after it) is sure to name every stream changed since
    /// the cursor: false for `0`, a cursor of another epoch, or one older than the floor.
    pub complete: bool,
    /// Oldest change first.
    pub streams: Vec<Arc<[u8]>>,
}

/// Tombstones tolerated beyond one per live stream before the log is compacted.
const SLACK: usize = 1024;

/// The index of one module instance.
///
/// `log` holds the notes in tick order. A stream noted again moves to the back: when it was
/// the newest (one hot coupon) its entry is simply taken off the back and pushed again;
/// otherwise its old entry becomes a tombstone, found by binary search. Tombstones at the
/// front go at once; the rest when they outnumber live entries, in one pass without hashing.
/// No move allocates.
pub struct ChangeIndex {
    epoch: u64,
    capacity: usize,
    /// The tick of the newest change noted (0: none yet).
    tick: u64,
    /// The newest tick dropped without being forgotten (capacity, a flush): a cursor before
    /// it may have missed that change.
    floor: u64,
    /// `(tick, stream)`, ticks increasing; `None` is a tombstone.
    log: VecDeque<(u64, Option<Arc<[u8]>>)>,
    /// Each live stream's tick: exactly one live log entry per stream.
    ticks: Names,
}

impl ChangeIndex {
    /// An empty index; `epoch` must differ between instances (each load of the module).
    pub fn new(epoch: u64, capacity: usize) -> Self {
        ChangeIndex {
            epoch,
            capacity: capacity.max(1),
            tick: 0,
            floor: 0,
            log: VecDeque::new(),
            ticks: Names::default(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many streams the index holds.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// Records a change to `stream`: it becomes the newest. A stream already held is moved
    /// without allocating; a new one may push the oldest-changed out.
    pub fn note(&mut self, stream: &[u8]) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(current) = self.ticks.get_mut(stream) {
            let previous = std::mem::replace(current, tick);
            let name = match self.log.back() {
                Some((newest, _)) if *newest == previous => {
                    self.log.pop_back().and_then(|(_, name)| name)
                }
                _ => self.bury(previous),
            };
            // Always found: the map and the log hold the same live streams.
            let name = name.unwrap_or_else(|| Arc::from(stream));
            self.log.push_back((tick, Some(name)));
            self.tidy();
            return;
        }
        if self.ticks.len() >= self.capacity {
            self.drop_oldest();
        }
        let name: Arc<[u8]> = Arc::from(stream);
        self.ticks.insert(Arc::clone(&name), tick);
        self.log.push_back((tick, Some(name)));
    }

    /// `stream` is gone (deleted, renamed away, expired, evicted): nothing is left to read.
    pub fn forget(&mut self, stream: &[u8]) {
        if let Some(tick) = self.ticks.remove(stream) {
            self.bury(tick);
            self.tidy();
        }
    }

    /// Drops every entry (a flush) and raises the floor: a reader behind it sweeps.
    pub fn forget_all(&mut self) {
        self.ticks.clear();
        self.log.clear();
        self.floor = self.tick;
    }

    /// Turns the live entry of `tick` into a tombstone; its name.
    fn bury(&mut self, tick: u64) -> Option<Arc<[u8]>> {
        let at = self.log.partition_point(|(t, _)| *t < tick);
        match self.log.get_mut(at) {
            Some((t, name)) if *t == tick => name.take(),
            _ => None,
        }
    }

    /// Pops tombstones off the front; compacts when they outnumber the live entries.
    fn tidy(&mut self) {
        while let Some((_, None)) = self.log.front() {
            self.log.pop_front();
        }
        if self.log.len() > 2 * self.ticks.len() + SLACK {
            self.log.retain(|(_, name)| name.is_some());
        }
    }

    fn drop_oldest(&mut self) {
        while let Some((tick, name)) = self.log.pop_front() {
            if let Some(name) = name {
                self.ticks.remove(&name);
                self.floor = self.floor.max(tick);
                break;
            }
        }
        self.tidy();
    }

    /// The streams changed after `cursor`, at most `count` (at least one), oldest change first.
    pub fn page(&self, cursor: Cursor, count: usize) -> Result<Page, CouponError> {
        let (after, complete) = match cursor {
            Cursor::At { epoch, tick } if epoch == self.epoch => {
                if tick > self.tick {
                    return Err(CouponError::CursorAhead(cursor.to_string()));
                }
                (tick, tick >= self.floor)
            }
            // Changes before this instance were never seen: the caller must sweep.
            Cursor::Start | Cursor::At { .. } => (0, false),
        };
        let from = self.log.partition_point(|(tick, _)| *tick <= after);
        let mut listed = self
            .log
            .range(from..)
            .filter_map(|(tick, name)| Some((*tick, name.as_ref()?)));
        let count = count.max(1);
        let mut streams = Vec::with_capacity(count.min(self.len()));
        let mut last = after;
        for (tick, name) in listed.by_ref().take(count) {
            streams.push(Arc::clone(name));
            last = tick;
        }
        // More left: go on after the last listed; else from now.
        let next_tick = if listed.next().is_some() {
            last
        } else {
            self.tick
        };
        Ok(Page {
            next: Cursor::At {
                epoch: self.epoch,
                tick: next_tick,
            },
            complete,
            streams,
        })
    }

    /// Entries in the log, tombstones included (for tests of its bound).
    #[cfg(test)]
    fn log_len(&self) -> usize {
        self.log.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 0x00ab_cdef_0123_4567;

    fn names(page: &Page) -> Vec<String> {
        page.streams
            .iter()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect()
    }

    fn at(tick: u64) -> Cursor {
        Cursor::At { epoch: EPOCH, tick }
    }

    fn index_of(streams: &[&str]) -> ChangeIndex {
        let mut index = ChangeIndex::new(EPOCH, CAPACITY);
        for stream in streams {
            index.note(stream.as_bytes());
        }
        index
    }

    #[test]
    fn lists_what_changed_after_the_cursor_oldest_first() {
        let index = index_of(&["a", "b", "c"]);
        let all = index.page(Cursor::Start, 10).unwrap();
        assert_eq!(names(&all), ["a", "b", "c"]);
        assert_eq!(all.next, at(3));
        assert!(!all.complete, "0 cannot know what happened before the load");
        let since = index.page(at(1), 10).unwrap();
        assert_eq!(names(&since), ["b", "c"]);
        assert!(since.complete);
        let none = index.page(at(3), 10).unwrap();
        assert!(none.streams.is_empty());
        assert_eq!(none.next, at(3));
        assert!(none.complete);
    }

    #[test]
    fn pages_by_count_and_goes_on_from_the_last_listed() {
        let index = index_of(&["a", "b", "c", "d", "e"]);
        let first = index.page(at(0), 2).unwrap();
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(first.next, at(2));
        let second = index.page(first.next, 2).unwrap();
        assert_eq!(names(&second), ["c", "d"]);
        assert_eq!(second.next, at(4));
        let last = index.page(second.next, 2).unwrap();
        assert_eq!(names(&last), ["e"]);
        assert_eq!(last.next, at(5));
        // Exactly COUNT left: all listed, so the cursor is the index's tick.
        let exact = index.page(at(3), 2).unwrap();
        assert_eq!(names(&exact), ["d", "e"]);
        assert_eq!(exact.next, at(5));
        assert!([first, second, last, exact]
            .iter()
            .all(|page| page.complete));
    }

    #[test]
    fn a_stream_noted_again_moves_to_the_newest_and_is_held_once() {
        let mut index = index_of(&["a", "b", "c"]);
        index.note(b"a");
        assert_eq!(index.len(), 3);
        assert_eq!(names(&index.page(at(0), 10).unwrap()), ["b", "c", "a"]);
        // A reader who had seen up to b sees a again, and c.
        assert_eq!(names(&index.page(at(2), 10).unwrap()), ["c", "a"]);
        // Changed while a reader pages: it comes on a later page, not lost.
        let first = index.page(at(0), 1).unwrap();
        assert_eq!(names(&first), ["b"]);
        index.note(b"b");
        let rest = index.page(first.next, 10).unwrap();
        assert_eq!(names(&rest), ["c", "a", "b"]);
        assert!(rest.complete);
    }

    #[test]
    fn interleaved_and_forgotten_streams_leave_a_bounded_log() {
        let mut index = index_of(&["dormant"]);
        for round in 0..10_000u64 {
            index.note(b"hot");
            index.note(if round % 2 == 0 { b"a" } else { b"b" });
            if round % 3 == 0 {
                index.forget(b"gone");
                index.note(b"gone");
            }
            assert!(index.log_len() <= 2 * index.len() + SLACK + 1);
        }
        assert_eq!(index.len(), 5);
        // The last round noted hot, b, gone; a was noted the round before.
        let page = index.page(at(0), 10).unwrap();
        assert_eq!(names(&page), ["dormant", "a", "hot", "b", "gone"]);
        let tail = index.page(at(index.tick - 2), 10).unwrap();
        assert_eq!(names(&tail), ["b", "gone"]);
        // Paging one at a time lists each live stream once, in order.
        let mut cursor = at(0);
        let mut seen = Vec::new();
        loop {
            let page = index.page(cursor, 1).unwrap();
            if page.streams.is_empty() {
                break;
            }
            seen.extend(names(&page));
            cursor = page.next;
        }
        assert_eq!(seen, ["dormant", "a", "hot", "b", "gone"]);
    }

    #[test]
    fn a_forgotten_stream_is_not_listed_and_lowers_nothing() {
        let mut index = index_of(&["a", "b", "c"]);
        index.forget(b"b");
        index.forget(b"never-noted");
        assert_eq!(index.len(), 2);
        let page = index.page(at(0), 10).unwrap();
        assert_eq!(names(&page), ["a", "c"]);
        assert!(page.complete, "a deleted stream has nothing left to read");
        index.note(b"b");
        assert_eq!(names(&index.page(at(3), 10).unwrap()), ["b"]);
    }

    #[test]
    fn when_full_the_oldest_goes_and_older_cursors_are_incomplete() {
        let mut index = ChangeIndex::new(EPOCH, 2);
        index.note(b"a");
        index.note(b"b");
        index.note(b"a"); // a is newest now: b (tick 2) is the oldest
        index.note(b"c"); // drops b
        assert_eq!(index.len(), 2);
        let behind = index.page(at(1), 10).unwrap();
        assert_eq!(names(&behind), ["a", "c"]);
        assert!(!behind.complete, "b's change at tick 2 was dropped");
        let at_floor = index.page(at(2), 10).unwrap();
        assert_eq!(names(&at_floor), ["a", "c"]);
        assert!(at_floor.complete, "b's change was before this cursor");
        // Re-noting a stream held never drops anything.
        index.note(b"c");
        index.note(b"a");
        assert!(index.page(at(2), 10).unwrap().complete);
    }

    #[test]
    fn a_flush_empties_the_index_and_raises_the_floor() {
        let mut index = index_of(&["a", "b"]);
        index.forget_all();
        assert!(index.is_empty());
        let behind = index.page(at(1), 10).unwrap();
        assert!(behind.streams.is_empty());
        assert!(!behind.complete);
        assert!(index.page(at(2), 10).unwrap().complete);
        index.note(b"c");
        let page = index.page(at(2), 10).unwrap();
        assert_eq!(names(&page), ["c"]);
        assert!(page.complete);
    }

    #[test]
    fn a_cursor_of_another_epoch_lists_everything_as_incomplete() {
        let index = index_of(&["a", "b"]);
        let foreign = Cursor::At {
            epoch: EPOCH + 1,
            tick: 1,
        };
        let page = index.page(foreign, 10).unwrap();
        assert_eq!(names(&page), ["a", "b"]);
        assert!(!page.complete);
        assert_eq!(page.next, at(2), "the next cursor is of this epoch");
        assert!(index.page(page.next, 10).unwrap().complete);
    }

    #[test]
    fn a_cursor_ahead_of_the_index_is_refused() {
        let index = index_of(&["a"]);
        assert_eq!(
            index.page(at(2), 10),
            Err(CouponError::CursorAhead(at(2).to_string()))
        );
    }

    #[test]
    fn an_empty_index_answers_its_tick() {
        let index = ChangeIndex::new(EPOCH, 0);
        let page = index.page(Cursor::Start, 10).unwrap();
        assert!(page.streams.is_empty());
        assert_eq!(page.next, at(0));
        assert!(index.page(at(0), 10).unwrap().complete);
    }

    #[test]
    fn cursors_read_back_as_written() {
        for cursor in [
            Cursor::Start,
            at(0),
            at(17),
            Cursor::At {
                epoch: u64::MAX,
                tick: u64::MAX,
            },
            Cursor::At { epoch: 0, tick: 1 },
        ] {
            let text = cursor.to_string();
            assert_eq!(Cursor::parse(text.as_bytes()), Ok(cursor), "{text}");
        }
        assert_eq!(at(17).to_string(), "00abcdef01234567-17");
    }

    #[test]
    fn refuses_cursors_it_cannot_have_written() {
        for bad in [
            "",
            "1",
            "00",
            "-0",
            "00abcdef01234567",
            "00abcdef01234567-",
            "00abcdef01234567-007",
            "00abcdef01234567--1",
            "00abcdef01234567-+1",
            "00abcdef01234567-1-2",
            "00abcdef01234567-18446744073709551616",
            "00ABCDEF01234567-1",
            "abcdef01234567-1",
            "000abcdef01234567-1",
            "00abcdef0123456g-1",
            "-1",
            " 0",
        ] {
            assert_eq!(
                Cursor::parse(bad.as_bytes()),
                Err(CouponError::InvalidCursor(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    fn parse(args: &[&str]) -> Result<ChangesArgs, CouponError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        ChangesArgs::parse(&args)
    }

    #[test]
    fn parses_the_cursor_and_count() {
        assert_eq!(
            parse(&["0"]),
            Ok(ChangesArgs {
                cursor: Cursor::Start,
                count: DEFAULT_COUNT
            })
        );
        assert_eq!(
            parse(&["00abcdef01234567-9", "count", "1"]),
            Ok(ChangesArgs {
                cursor: at(9),
                count: 1
            })
        );
        assert_eq!(parse(&["0", "COUNT", "10000"]).map(|a| a.count), Ok(10_000));
    }

    #[test]
    fn refuses_bad_counts_and_options() {
        for bad in ["0", "10001", "-1", "01", "ten", "", "1.5"] {
            assert_eq!(
                parse(&["0", "COUNT", bad]),
                Err(CouponError::InvalidCount),
                "{bad:?}"
            );
        }
        assert_eq!(parse(&["0", "COUNT"]), Err(CouponError::CountArity));
        assert_eq!(
            parse(&["0", "COUNT", "1", "COUNT", "2"]),
            Err(CouponError::DuplicateOption("COUNT"))
        );
        assert_eq!(
            parse(&["0", "MATCH", "x"]),
            Err(CouponError::UnknownChangesOption("MATCH".into()))
        );
        assert_eq!(parse(&[]), Err(CouponError::Arity));
        assert_eq!(
            parse(&["x", "COUNT", "1"]),
            Err(CouponError::InvalidCursor("x".into()))
        );
    }
}
