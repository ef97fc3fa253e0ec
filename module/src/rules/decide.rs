//! The two decisions: who gets a coupon, and who gives one back.

use super::{CouponError, CouponStore, IssueArgs};

/// What `COUPON.ISSUE` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    /// The user got the coupon now, with this seq.
    Issued { seq: i64 },
    /// The user already holds the coupon, with this seq.
    Duplicate { seq: i64 },
    /// As many users hold the coupon as the limit allows.
    SoldOut,
    /// The sale window has not opened yet.
    NotStarted,
    /// The sale window has closed.
    Ended,
}

impl IssueOutcome {
    /// The status word of the reply.
    pub fn status(&self) -> &'static str {
        match self {
            IssueOutcome::Issued { .. } => "ISSUED",
            IssueOutcome::Duplicate { .. } => "DUPLICATE",
            IssueOutcome::SoldOut => "SOLD_OUT",
            IssueOutcome::NotStarted => "NOT_STARTED",
            IssueOutcome::Ended => "ENDED",
        }
    }

    pub fn seq(&self) -> Option<i64> {
        match self {
            IssueOutcome::Issued { seq } | IssueOutcome::Duplicate { seq } => Some(*seq),
            _ => None,
        }
    }
}

/// A write the rules decided on. The caller applies it as one unit, with its event (whose
/// time is the entry ID the server assigns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// `user` becomes a holder with `seq`; `seq` becomes the last seq; an `issue` event.
    Grant { user: &'a [u8], seq: i64 },
    /// `user` stops holding `seq`; a `revoke` event. The revoke total is derived.
    Return { user: &'a [u8], seq: i64 },
}

/// Decides `COUPON.ISSUE`: duplicate first (a holder always learns their seq), then the
/// window, then the stock. `clock` (unix ms) is read only if a window is given.
pub fn decide_issue<'a>(
    store: &impl CouponStore,
    args: &IssueArgs<'a>,
    clock: impl FnOnce() -> i64,
) -> Result<(IssueOutcome, Option<Change<'a>>), CouponError> {
    if let Some(seq) = store.holder_seq(args.user)? {
        return Ok((IssueOutcome::Duplicate { seq }, None));
    }
    if let Some(window) = args.window {
        let now_ms = clock();
        if !window.has_started(now_ms) {
            return Ok((IssueOutcome::NotStarted, None));
        }
        if window.has_ended(now_ms) {
            return Ok((IssueOutcome::Ended, None));
        }
    }
    if store.holder_count()? >= args.limit {
        return Ok((IssueOutcome::SoldOut, None));
    }
    let seq = store
        .last_seq()?
        .checked_add(1)
        .ok_or(CouponError::SeqExhausted)?;
    let change = Change::Grant {
        user: args.user,
        seq,
    };
    Ok((IssueOutcome::Issued { seq }, Some(change)))
}

/// Decides `COUPON.REVOKE`: the change if `user` held the coupon.
pub fn decide_revoke<'a>(
    store: &impl CouponStore,
    user: &'a [u8],
) -> Result<Option<Change<'a>>, CouponError> {
    Ok(store
        .holder_seq(user)?
        .map(|seq| Change::Return { user, seq }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{MemoryStore, Window};
    use coupon_layout::Op;

    fn issue(store: &mut MemoryStore, user: &str, limit: i64) -> IssueOutcome {
        issue_at(store, user, limit, None, 1_000)
    }

    fn issue_at(
        store: &mut MemoryStore,
        user: &str,
        limit: i64,
        window: Option<Window>,
        now_ms: i64,
    ) -> IssueOutcome {
        let args = IssueArgs {
            key: b"sale",
            user: user.as_bytes(),
            limit,
            window,
        };
        let (outcome, change) = decide_issue(store, &args, || now_ms).unwrap();
        assert_eq!(
            change.is_some(),
            matches!(outcome, IssueOutcome::Issued { .. })
        );
        if let Some(change) = change {
            store.apply(&change);
        }
        outcome
    }

    fn revoke(store: &mut MemoryStore, user: &str) -> bool {
        let change = decide_revoke(store, user.as_bytes()).unwrap();
        if let Some(change) = &change {
            store.apply(change);
        }
        change.is_some()
    }

    #[test]
    fn issues_seqs_in_order_until_sold_out() {
        let mut store = MemoryStore::default();
        assert_eq!(issue(&mut store, "a", 2), IssueOutcome::Issued { seq: 1 });
        assert_eq!(issue(&mut store, "b", 2), IssueOutcome::Issued { seq: 2 });
        assert_eq!(issue(&mut store, "c", 2), IssueOutcome::SoldOut);
        assert_eq!(store.events.len(), 2);
    }

    #[test]
    fn a_holder_gets_their_seq_back_even_when_sold_out_or_closed() {
        let mut store = MemoryStore::default();
        issue(&mut store, "a", 1);
        assert_eq!(
            issue(&mut store, "a", 1),
            IssueOutcome::Duplicate { seq: 1 }
        );
        assert_eq!(
            issue(&mut store, "a", 0),
            IssueOutcome::Duplicate { seq: 1 }
        );
        let closed = Window::new(0, 10).ok();
        assert_eq!(
            issue_at(&mut store, "a", 1, closed, 50),
            IssueOutcome::Duplicate { seq: 1 }
        );
        assert_eq!(store.events.len(), 1);
    }

    #[test]
    fn limit_zero_issues_nothing_and_i64_max_is_unbounded() {
        let mut store = MemoryStore::default();
        assert_eq!(issue(&mut store, "a", 0), IssueOutcome::SoldOut);
        assert_eq!(
            issue(&mut store, "a", i64::MAX),
            IssueOutcome::Issued { seq: 1 }
        );
    }

    #[test]
    fn the_window_is_checked_before_the_stock() {
        let mut store = MemoryStore::default();
        let window = Window::new(100, 200).ok();
        assert_eq!(
            issue_at(&mut store, "a", 0, window, 99),
            IssueOutcome::NotStarted
        );
        assert_eq!(
            issue_at(&mut store, "a", 0, window, 200),
            IssueOutcome::Ended
        );
        assert_eq!(
            issue_at(&mut store, "a", 0, window, 150),
            IssueOutcome::SoldOut
        );
        assert_eq!(
            issue_at(&mut store, "a", 1, window, 100),
            IssueOutcome::Issued { seq: 1 }
        );
    }

    #[test]
    fn a_revoke_returns_stock_but_never_the_seq() {
        let mut store = MemoryStore::default();
        issue(&mut store, "a", 1);
        assert!(revoke(&mut store, "a"));
        assert!(!revoke(&mut store, "a"), "a second revoke changes nothing");
        assert_eq!(issue(&mut store, "b", 1), IssueOutcome::Issued { seq: 2 });
        assert_eq!(issue(&mut store, "a", 2), IssueOutcome::Issued { seq: 3 });
        let ops: Vec<_> = store.events.iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(
            ops,
            [
                (Op::Issue, 1),
                (Op::Revoke, 1),
                (Op::Issue, 2),
                (Op::Issue, 3)
            ]
        );
    }

    #[test]
    fn the_event_names_the_user_and_seq() {
        let mut store = MemoryStore::default();
        issue(&mut store, "a", 1);
        assert_eq!(store.events[0], (Op::Issue, b"a".to_vec(), 1));
    }

    #[test]
    fn the_clock_is_read_only_when_the_answer_needs_it() {
        let mut store = MemoryStore::default();
        let args = |user: &'static str, limit, window| IssueArgs {
            key: b"k",
            user: user.as_bytes(),
            limit,
            window,
        };
        let unread = || -> i64 { panic!("the clock was read") };
        store.holders.insert(b"holder".to_vec(), 1);
        assert!(decide_issue(&store, &args("holder", 5, None), unread).is_ok());
        assert!(decide_issue(&store, &args("new", 0, None), unread).is_ok());
        assert!(decide_issue(&store, &args("new", 5, None), unread).is_ok());
        let reads = std::cell::Cell::new(0);
        let counted = || {
            reads.set(reads.get() + 1);
            150
        };
        let (outcome, _) =
            decide_issue(&store, &args("new", 5, Window::new(100, 200).ok()), counted).unwrap();
        assert_eq!(outcome, IssueOutcome::Issued { seq: 1 });
        assert_eq!(reads.get(), 1, "the window reads the clock once");
    }

    #[test]
    fn seqs_do_not_overflow() {
        let mut store = MemoryStore {
            last_seq: i64::MAX,
            ..MemoryStore::default()
        };
        let args = IssueArgs {
            key: b"k",
            user: b"u",
            limit: 1,
            window: None,
        };
        assert_eq!(
            decide_issue(&store, &args, || 0),
            Err(CouponError::SeqExhausted)
        );
        store.last_seq = 0;
        assert!(decide_issue(&store, &args, || 0).is_ok());
    }
}
