//! The shape of an event entry: `op <issue|revoke|restore> user <user> seq <seq>`. The coupon is the
//! stream's own key and the time is the entry ID's milliseconds, so neither is repeated.

/// What happened to a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Issue,
    Revoke,
    /// A holder put back by `COUPON.RESTORE` from the database after Redis lost data: for a
    /// reader, an issue of `seq` to `user` that may already be recorded.
    Restore,
}

impl Op {
    /// The value of the `op` field.
    pub const fn word(self) -> &'static str {
        match self {
            Op::Issue => "issue",
            Op::Revoke => "revoke",
            Op::Restore => "restore",
        }
    }

    /// The op an `op` field names, if any.
    ///
    /// ```
    /// use coupon_layout::Op;
    /// assert_eq!(Op::from_word(b"revoke"), Some(Op::Revoke));
    /// assert_eq!(Op::from_word(Op::Issue.word().as_bytes()), Some(Op::Issue));
    /// assert_eq!(Op::from_word(b"ISSUE"), None);
    /// ```
    pub fn from_word(word: &[u8]) -> Option<Op> {
        match word {
            b"issue" => Some(Op::Issue),
            b"revoke" => Some(Op::Revoke),
            b"restore" => Some(Op::Restore),
            _ => None,
        }
    }
}

/// The fields of an event entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    Op,
    User,
    Seq,
}

impl EventField {
    pub const fn name(self) -> &'static str {
        match self {
            EventField::Op => "op",
            EventField::User => "user",
            EventField::Seq => "seq",
        }
    }
}

/// The fields of an entry, in the order they are written.
pub const EVENT_FIELDS: [EventField; 3] = [EventField::Op, EventField::User, EventField::Seq];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_words_round_trip() {
        for op in [Op::Issue, Op::Revoke, Op::Restore] {
            assert_eq!(Op::from_word(op.word().as_bytes()), Some(op));
        }
        assert_eq!(Op::from_word(b"grant"), None);
    }
}
