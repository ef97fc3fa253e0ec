//! The data types a call returns.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// What [`Coupons::issue`](crate::Coupons::issue) answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The user got the coupon now, with this seq (1, 2, 3 … per coupon).
    Issued { seq: u64 },
    /// The user already held the coupon, with this seq. A retry of an issue that had
    /// succeeded answers this, with the same seq.
    AlreadyIssued { seq: u64 },
    /// The coupon has as many holders as the limit allows.
    SoldOut,
    /// The sale window has not opened yet.
    NotStarted,
    /// The sale window has closed.
    Ended,
}

impl Outcome {
    /// The seq the user holds, if they hold the coupon after this call.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Outcome::Issued { seq } | Outcome::AlreadyIssued { seq } => Some(*seq),
            _ => None,
        }
    }

    /// Whether the user holds the coupon after this call (issued now or before).
    pub fn holds_coupon(&self) -> bool {
        self.seq().is_some()
    }
}

/// An issue's outcome and who gave it ([`Coupons::issue_answered`](crate::Coupons::issue_answered)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Answered {
    pub outcome: Outcome,
    pub by: AnsweredBy,
}

/// Who answered an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    /// The server ran the command.
    Server,
    /// [`LocalAnswers`](crate::LocalAnswers) answered from a current view; nothing was sent.
    Locally,
    /// [`LocalAnswers`](crate::LocalAnswers) answered from a view this call waited for (a
    /// fill of the coupon, one round trip); the call itself sent nothing.
    AfterFill,
}

/// What [`Coupons::restore`](crate::Coupons::restore) answered for one `(user, seq)` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Restore {
    /// The user held nothing and nobody held the seq: the holder was written, with a
    /// `restore` event.
    Restored,
    /// The user already holds exactly this seq (a re-run).
    Held,
    /// The user holds another seq: nothing was written for this pair.
    UserHolds { seq: u64 },
    /// Another user holds this seq (Redis handed it out again after losing data): nothing
    /// was written for this pair.
    SeqTaken { user: Vec<u8> },
}

/// The answer a write got on the primary, carried by
/// [`Error::NotReplicated`](crate::Error::NotReplicated) when the replicas did not confirm it
/// in time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Answer {
    /// `issue` / `issue_in_window`.
    Issue { outcome: Outcome },
    /// `revoke`: whether the user held the coupon.
    Revoke { revoked: bool },
    /// `restore`: one answer per pair sent so far (the unconfirmed chunk included).
    Restore { pairs: Vec<Restore> },
}

/// How many replicas must have a write before a call reports it
/// ([`Coupons::with_replica_ack`](crate::Coupons::with_replica_ack)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// Replicas that must acknowledge (`WAIT`'s first argument).
    pub replicas: u32,
    /// How long to wait for them (`WAIT`'s second argument, rounded up to whole ms; at least
    /// 1 ms, as `WAIT … 0` would wait forever).
    pub timeout: std::time::Duration,
}

/// A sale window: open from `start_ms` (inclusive) to `end_ms` (exclusive), unix milliseconds
/// by the Redis server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Window {
    /// A window between two unix-millisecond instants.
    pub fn between_ms(start_ms: u64, end_ms: u64) -> Self {
        Window { start_ms, end_ms }
    }

    /// A window between two system times (before the epoch counts as the epoch).
    pub fn between(start: SystemTime, end: SystemTime) -> Self {
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        Window::between_ms(ms(start), ms(end))
    }
}

/// A coupon's counters, from [`Coupons::info`](crate::Coupons::info).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CouponInfo {
    /// Users holding the coupon now.
    pub issued: u64,
    /// Coupons given back, in total.
    pub revoked: u64,
    /// The highest seq ever issued.
    pub last_seq: u64,
    /// Entries in the event stream now (the persister trims what it has stored).
    pub events: u64,
}
