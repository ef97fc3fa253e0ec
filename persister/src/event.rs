//! What a stream entry means: entry IDs, the raw entry as Redis hands it over, and the parsed
//! coupon event. Parsing is pure so a malformed entry is a value, not a crash.

use coupon_layout::{CouponKey, EventField};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest coupon key or user the database columns hold (`VARBINARY(512)`).
pub const MAX_KEY_BYTES: usize = 512;

/// A Redis stream entry ID `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The smallest ID greater than this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a stream entry ID: {0:?}")]
pub struct BadEntryId(pub String);

impl FromStr for EntryId {
    type Err = BadEntryId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadEntryId(text.to_string());
        let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A stream key, shared by all entries read from it.
pub type StreamKey = Arc<[u8]>;

/// How an entry reached this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Never delivered before (`XREADGROUP >`).
    New,
    /// This consumer's own pending entries, drained at start.
    Pending,
    /// Taken over from a consumer that left it idle (`XAUTOCLAIM`).
    Claimed,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::New => "new",
            Source::Pending => "pending",
            Source::Claimed => "claimed",
        }
    }
}

/// One entry as read: `fields` is `None` when the entry is still pending but its payload was
/// trimmed out of the stream.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub stream: StreamKey,
    pub id: EntryId,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    pub source: Source,
}

pub use coupon_layout::Op;

/// A parsed coupon event, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub stream: StreamKey,
    pub id: EntryId,
    pub op: Op,
    /// The coupon key: the stream's coupon (see [`coupon_of_stream`]).
    pub coupon: Vec<u8>,
    pub user: Vec<u8>,
    pub seq: i64,
    /// When it happened: the entry ID's milliseconds, assigned by the server.
    pub ts_ms: i64,
}

/// Why an entry cannot be written, ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the entry's payload is gone from the stream (trimmed or deleted)")]
    PayloadGone,
    #[error("the stream name {0:?} is not a coupon event stream")]
    NotAnEventStream(String),
    #[error("field {0:?} is missing")]
    Missing(&'static str),
    #[error("field {0:?} is not valid: {1}")]
    Invalid(&'static str, String),
}

/// The coupon key whose event stream `stream` is (`sale:events{sale}` → `sale`,
/// `shop{7}:sale:events` → `shop{7}:sale`), or `None` for a stream no coupon would have.
pub fn coupon_of_stream(stream: &[u8]) -> Option<Vec<u8>> {
    CouponKey::of_events_key(stream).map(|coupon| coupon.as_bytes().to_vec())
}

fn field(fields: &[(Vec<u8>, Vec<u8>)], name: EventField) -> Result<&[u8], Malformed> {
    fields
        .iter()
        .find(|(key, _)| key.as_slice() == name.name().as_bytes())
        .map(|(_, value)| value.as_slice())
        .ok_or(Malformed::Missing(name.name()))
}

impl RawEntry {
    /// The event this entry records, or why it is not one.
    pub fn parse(&self) -> Result<Event, Malformed> {
        let fields = self.fields.as_deref().ok_or(Malformed::PayloadGone)?;
        let coupon = coupon_of_stream(&self.stream).ok_or_else(|| {
            Malformed::NotAnEventStream(String::from_utf8_lossy(&self.stream).into_owned())
        })?;
        if coupon.len() > MAX_KEY_BYTES {
            return Err(Malformed::Invalid(
                "coupon",
                format!("{} bytes, at most {MAX_KEY_BYTES}", coupon.len()),
            ));
        }
        let op_word = field(fields, EventField::Op)?;
        let op = Op::from_word(op_word).ok_or_else(|| {
            Malformed::Invalid("op", format!("{:?}", String::from_utf8_lossy(op_word)))
        })?;
        let user = field(fields, EventField::User)?;
        if user.is_empty() || user.len() > MAX_KEY_BYTES {
            return Err(Malformed::Invalid(
                "user",
                format!("{} bytes, expected 1 to {MAX_KEY_BYTES}", user.len()),
            ));
        }
        let raw_seq = field(fields, EventField::Seq)?;
        let seq = std::str::from_utf8(raw_seq)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| {
                Malformed::Invalid("seq", format!("{:?}", String::from_utf8_lossy(raw_seq)))
            })?;
        if seq < 1 {
            return Err(Malformed::Invalid("seq", format!("{seq} is not positive")));
        }
        let ts_ms = i64::try_from(self.id.ms)
            .map_err(|_| Malformed::Invalid("id", format!("{} is past i64", self.id)))?;
        Ok(Event {
            stream: self.stream.clone(),
            id: self.id,
            op,
            coupon,
            user: user.to_vec(),
            seq,
            ts_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream: &str, fields: &[(&str, &str)]) -> RawEntry {
        RawEntry {
            stream: Arc::from(stream.as_bytes()),
            id: EntryId { ms: 5, seq: 1 },
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
            source: Source::New,
        }
    }

    #[test]
    fn entry_ids_order_numerically_and_round_trip() {
        let a: EntryId = "9-5".parse().expect("valid");
        let b: EntryId = "10-0".parse().expect("valid");
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert_eq!(a.next().to_string(), "9-6");
        assert!("10".parse::<EntryId>().is_err());
        assert!("a-1".parse::<EntryId>().is_err());
    }

    #[test]
    fn streams_name_their_coupon() {
        assert_eq!(
            coupon_of_stream(b"sale:events{sale}").as_deref(),
            Some(&b"sale"[..])
        );
        assert_eq!(
            coupon_of_stream(b"shop{7}:sale:events").as_deref(),
            Some(&b"shop{7}:sale"[..])
        );
        assert_eq!(
            coupon_of_stream(b"{sale}:events").as_deref(),
            Some(&b"{sale}"[..])
        );
        assert_eq!(coupon_of_stream(b"app:events"), None);
        assert_eq!(coupon_of_stream(b":events"), None);
    }

    #[test]
    fn parses_issue_and_revoke() {
        let fields = [("op", "revoke"), ("user", "bob"), ("seq", "7")];
        let mut raw = entry("sale:events{sale}", &fields);
        raw.id = EntryId {
            ms: 1_700_000_000_000,
            seq: 3,
        };
        let event = raw.parse().expect("valid");
        assert_eq!(event.op, Op::Revoke);
        assert_eq!(event.coupon, b"sale");
        assert_eq!(event.user, b"bob");
        assert_eq!((event.seq, event.ts_ms), (7, 1_700_000_000_000));
    }

    #[test]
    fn rejects_malformed_entries() {
        let good = [("op", "issue"), ("user", "bob"), ("seq", "7")];
        let stream = "sale:events{sale}";
        for (index, replacement) in [(0, "grant"), (2, "x"), (2, "0"), (1, "")] {
            let mut fields = good;
            fields[index].1 = replacement;
            assert!(entry(stream, &fields).parse().is_err(), "{fields:?}");
        }
        assert_eq!(
            entry(stream, &good[1..]).parse(),
            Err(Malformed::Missing("op"))
        );
        assert!(matches!(
            entry("app:events", &good).parse(),
            Err(Malformed::NotAnEventStream(_))
        ));
        let mut gone = entry(stream, &good);
        gone.fields = None;
        assert_eq!(gone.parse(), Err(Malformed::PayloadGone));
        let long = "u".repeat(MAX_KEY_BYTES + 1);
        let mut fields = good;
        fields[1].1 = &long;
        assert!(entry(stream, &fields).parse().is_err());
    }
}
