//! What a stream entry means: entry IDs, the raw entry as Redis hands it over, and the parsed
//! coupon event. Parsing is pure so a malformed entry is a value, not a crash.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Issue,
    Revoke,
}

/// A parsed coupon event, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub stream: StreamKey,
    pub id: EntryId,
    pub op: Op,
    /// The coupon's canonical name (see [`coupon_of_stream`]).
    pub coupon: Vec<u8>,
    pub user: Vec<u8>,
    pub seq: i64,
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

/// The coupon a stream belongs to, in one spelling per coupon: `{sale}:events` → `sale`
/// (the same coupon whether clients said `sale` or `{sale}`), `shop{7}:sale:events` →
/// `shop{7}:sale`.
pub fn coupon_of_stream(stream: &[u8]) -> Option<Vec<u8>> {
    let prefix = stream.strip_suffix(b":events")?;
    if prefix.is_empty() {
        return None;
    }
    if let Some(inner) = prefix
        .strip_prefix(b"{")
        .and_then(|rest| rest.strip_suffix(b"}"))
    {
        if !inner.is_empty() && !inner.iter().any(|b| *b == b'{' || *b == b'}') {
            return Some(inner.to_vec());
        }
    }
    Some(prefix.to_vec())
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &'static str) -> Result<&'a [u8], Malformed> {
    fields
        .iter()
        .find(|(key, _)| key.as_slice() == name.as_bytes())
        .map(|(_, value)| value.as_slice())
        .ok_or(Malformed::Missing(name))
}

fn integer(fields: &[(Vec<u8>, Vec<u8>)], name: &'static str) -> Result<i64, Malformed> {
    let raw = field(fields, name)?;
    std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| Malformed::Invalid(name, format!("{:?}", String::from_utf8_lossy(raw))))
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
        let op = match field(fields, "op")? {
            b"issue" => Op::Issue,
            b"revoke" => Op::Revoke,
            other => {
                return Err(Malformed::Invalid(
                    "op",
                    format!("{:?}", String::from_utf8_lossy(other)),
                ))
            }
        };
        field(fields, "coupon")?;
        let user = field(fields, "user")?;
        if user.is_empty() || user.len() > MAX_KEY_BYTES {
            return Err(Malformed::Invalid(
                "user",
                format!("{} bytes, expected 1 to {MAX_KEY_BYTES}", user.len()),
            ));
        }
        let seq = integer(fields, "seq")?;
        if seq < 1 {
            return Err(Malformed::Invalid("seq", format!("{seq} is not positive")));
        }
        let ts_ms = integer(fields, "ts")?;
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
    fn coupon_names_are_canonical() {
        assert_eq!(
            coupon_of_stream(b"{sale}:events").as_deref(),
            Some(&b"sale"[..])
        );
        assert_eq!(
            coupon_of_stream(b"shop{7}:sale:events").as_deref(),
            Some(&b"shop{7}:sale"[..])
        );
        assert_eq!(
            coupon_of_stream(b"{a}b:events").as_deref(),
            Some(&b"{a}b"[..])
        );
        assert_eq!(coupon_of_stream(b"{sale}:holders"), None);
        assert_eq!(coupon_of_stream(b":events"), None);
    }

    #[test]
    fn parses_issue_and_revoke() {
        let fields = [
            ("op", "revoke"),
            ("coupon", "sale"),
            ("user", "bob"),
            ("seq", "7"),
            ("ts", "1700000000000"),
        ];
        let event = entry("{sale}:events", &fields).parse().expect("valid");
        assert_eq!(event.op, Op::Revoke);
        assert_eq!(event.coupon, b"sale");
        assert_eq!(event.user, b"bob");
        assert_eq!((event.seq, event.ts_ms), (7, 1_700_000_000_000));
    }

    #[test]
    fn rejects_malformed_entries() {
        let good = [
            ("op", "issue"),
            ("coupon", "sale"),
            ("user", "bob"),
            ("seq", "7"),
            ("ts", "1"),
        ];
        for (index, replacement) in [(0, "grant"), (3, "x"), (3, "0"), (4, "")] {
            let mut fields = good;
            fields[index].1 = replacement;
            assert!(
                entry("{sale}:events", &fields).parse().is_err(),
                "{fields:?}"
            );
        }
        assert_eq!(
            entry("{sale}:events", &good[1..]).parse(),
            Err(Malformed::Missing("op"))
        );
        let mut gone = entry("{sale}:events", &good);
        gone.fields = None;
        assert_eq!(gone.parse(), Err(Malformed::PayloadGone));
        let long = "u".repeat(MAX_KEY_BYTES + 1);
        let mut fields = good;
        fields[2].1 = &long;
        assert!(entry("{sale}:events", &fields).parse().is_err());
    }
}
