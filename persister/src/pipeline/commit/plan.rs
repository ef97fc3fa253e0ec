//! What a batch does to the rows, decided before any statement runs: which rows are new,
//! which existing rows get their missing half, which events are already there, and which
//! must not be written at all. Pure: no database here.
//!
//! A row belongs to the user its issue names. An event is written onto a row only when it is
//! that user's: a revoke (or issue) of the same seq by someone else is a conflict — the seq
//! was reused, because the coupon was deleted and created again or Redis lost data — and is
//! refused, never written over the row. A revoke is written only with its issue, already
//! persisted or in the same batch; otherwise it waits (its issue may be pending with another
//! consumer) and is dead-lettered if its issue never comes.

use crate::event::{EntryId, Event, Op, StreamKey};
use std::collections::HashMap;

/// A row's key: (coupon, seq).
pub type Key<'a> = (&'a [u8], i64);

/// What a row already holds in the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    pub user: Vec<u8>,
    pub issue: Option<String>,
    pub revoke: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct NewRow<'a> {
    pub key: Key<'a>,
    pub user: &'a [u8],
    pub issue: Option<(i64, String)>,
    pub revoke: Option<(i64, String)>,
}

/// A missing half to fill in on an existing row.
#[derive(Debug, PartialEq, Eq)]
pub struct SetHalf<'a> {
    pub key: Key<'a>,
    pub ts_ms: i64,
    pub id: String,
}

/// Why an event is not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It contradicts what is persisted (or another event of the batch): the seq belongs to
    /// another user, or its issue (revoke) is already recorded from another entry.
    Conflict {
        /// The user the persisted row (or the earlier event) names.
        holder: Vec<u8>,
        /// The entry that row's half came from.
        entry: String,
        what: &'static str,
    },
    /// A revoke whose issue is neither persisted nor in the batch.
    NoIssue,
}

/// An event that is not written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub stream: StreamKey,
    pub id: EntryId,
    pub op: Op,
    pub coupon: Vec<u8>,
    pub seq: i64,
    pub user: Vec<u8>,
    pub why: Refusal,
}

fn shown(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

impl Refused {
    pub fn is_conflict(&self) -> bool {
        matches!(self.why, Refusal::Conflict { .. })
    }

    /// One sentence for the log and the dead letter.
    pub fn reason(&self) -> String {
        let event = format!(
            "{} of seq {} of coupon {} by {}",
            self.op.word(),
            self.seq,
            shown(&self.coupon),
            shown(&self.user)
        );
        match &self.why {
            Refusal::Conflict {
                holder,
                entry,
                what,
            } => format!(
                "conflict: {event}, but {what} (entry {entry}, user {}); the seq was reused \
                 (coupon recreated, or Redis lost data)",
                shown(holder)
            ),
            Refusal::NoIssue => format!("{event}: no issue of that seq is persisted"),
        }
    }
}

/// Everything a batch writes, and the events it does not.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub new_rows: Vec<NewRow<'a>>,
    pub set_issue: Vec<SetHalf<'a>>,
    pub set_revoke: Vec<SetHalf<'a>>,
    pub duplicates: u64,
    pub refused: Vec<Refused>,
}

/// The order [`plan`] takes events in: by row, issues before revokes, then by entry.
pub fn order(a: &Event, b: &Event) -> std::cmp::Ordering {
    let rank = |event: &Event| (event.op == Op::Revoke, event.id);
    (&a.coupon, a.seq)
        .cmp(&(&b.coupon, b.seq))
        .then_with(|| rank(a).cmp(&rank(b)))
}

/// Decides what `events` (sorted by [`order`]) do, given the rows of their keys already in
/// the database.
pub fn plan<'a>(events: &[&'a Event], mut present: HashMap<Key<'a>, Present>) -> Plan<'a> {
    let mut plan = Plan::default();
    for event in events {
        let key: Key<'a> = (&event.coupon, event.seq);
        let id = event.id.to_string();
        let refuse = |why: Refusal| Refused {
            stream: event.stream.clone(),
            id: event.id,
            op: event.op,
            coupon: event.coupon.clone(),
            seq: event.seq,
            user: event.user.clone(),
            why,
        };
        let conflict = |holder: &[u8], entry: &str, what: &'static str| {
            refuse(Refusal::Conflict {
                holder: holder.to_vec(),
                entry: entry.to_string(),
                what,
            })
        };
        if let Some(row) = present.get_mut(&key) {
            // A holder put back from the database: already recorded, under its first issue.
            if event.op == Op::Restore && row.user == event.user && row.issue.is_some() {
                plan.duplicates += 1;
                continue;
            }
            let slot = match event.op {
                Op::Issue | Op::Restore => &row.issue,
                Op::Revoke => &row.revoke,
            };
            let refusal = match slot {
                Some(recorded) if *recorded == id => {
                    plan.duplicates += 1;
                    continue;
                }
                Some(recorded) => Some(conflict(&row.user, recorded, "that is persisted")),
                None if row.user != event.user => {
                    let entry = row.issue.as_ref().or(row.revoke.as_ref());
                    Some(conflict(
                        &row.user,
                        entry.map_or("", String::as_str),
                        "the seq is persisted as another user's",
                    ))
                }
                None if event.op == Op::Revoke && row.issue.is_none() => {
                    Some(refuse(Refusal::NoIssue))
                }
                None => None,
            };
            match refusal {
                Some(refused) => plan.refused.push(refused),
                None => {
                    let half = SetHalf {
                        key,
                        ts_ms: event.ts_ms,
                        id: id.clone(),
                    };
                    match event.op {
                        Op::Issue | Op::Restore => {
                            row.issue = Some(id);
                            plan.set_issue.push(half);
                        }
                        Op::Revoke => {
                            row.revoke = Some(id);
                            plan.set_revoke.push(half);
                        }
                    }
                }
            }
            continue;
        }
        // Sorted by key: the row of this event, if new, is the last one pushed.
        let row = match plan.new_rows.last_mut() {
            Some(row) if row.key == key => row,
            _ => {
                match event.op {
                    Op::Issue | Op::Restore => plan.new_rows.push(NewRow {
                        key,
                        user: &event.user,
                        issue: Some((event.ts_ms, id)),
                        revoke: None,
                    }),
                    Op::Revoke => plan.refused.push(refuse(Refusal::NoIssue)),
                }
                continue;
            }
        };
        let slot = match event.op {
            Op::Issue | Op::Restore => &mut row.issue,
            Op::Revoke => &mut row.revoke,
        };
        match slot {
            Some((_, recorded)) if *recorded == id => plan.duplicates += 1,
            Some((_, recorded)) => {
                let refused = conflict(row.user, recorded, "another entry of the batch has it");
                plan.refused.push(refused);
            }
            None if row.user != event.user.as_slice() => {
                let entry = row.issue.as_ref().map_or("", |(_, id)| id.as_str());
                let refused = conflict(row.user, entry, "the seq is another user's");
                plan.refused.push(refused);
            }
            None => *slot = Some((event.ts_ms, id)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn event(op: Op, user: &str, seq: i64, id_ms: u64) -> Event {
        Event {
            stream: Arc::from(&b"c:events{c}"[..]),
            id: EntryId { ms: id_ms, seq: 0 },
            op,
            coupon: b"c".to_vec(),
            user: user.as_bytes().to_vec(),
            seq,
            ts_ms: i64::try_from(id_ms).unwrap_or(0),
        }
    }

    fn sorted(events: &[Event]) -> Vec<&Event> {
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by(|a, b| order(a, b));
        sorted
    }

    fn row(user: &str, issue: Option<&str>, revoke: Option<&str>) -> Present {
        Present {
            user: user.as_bytes().to_vec(),
            issue: issue.map(str::to_string),
            revoke: revoke.map(str::to_string),
        }
    }

    #[test]
    fn an_issue_and_its_revoke_in_one_batch_make_one_row() {
        let events = [
            event(Op::Revoke, "ann", 1, 20),
            event(Op::Issue, "ann", 1, 10),
        ];
        let done = plan(&sorted(&events), HashMap::new());
        assert_eq!(done.new_rows.len(), 1);
        assert_eq!(done.new_rows[0].revoke, Some((20, "20-0".to_string())));
        assert!(done.refused.is_empty());
        // Whatever their entries' order.
        let events = [
            event(Op::Revoke, "ann", 1, 10),
            event(Op::Issue, "ann", 1, 20),
        ];
        let done = plan(&sorted(&events), HashMap::new());
        assert_eq!(done.new_rows.len(), 1);
        assert!(done.refused.is_empty());
    }

    #[test]
    fn a_revoke_without_its_issue_waits() {
        let events = [event(Op::Revoke, "ann", 1, 20)];
        let plan = plan(&sorted(&events), HashMap::new());
        assert!(plan.new_rows.is_empty());
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].why, Refusal::NoIssue);
        assert!(!plan.refused[0].is_conflict());
    }

    /// alice held seq 1; after the coupon was recreated carol got seq 1 and revoked it.
    /// Neither event touches alice's row; both are conflicts naming both users.
    #[test]
    fn a_reused_seq_never_touches_the_holders_row() {
        let key: Key<'_> = (b"c", 1);
        let present = HashMap::from([(key, row("alice", Some("5-0"), None))]);
        let events = [
            event(Op::Issue, "carol", 1, 10),
            event(Op::Revoke, "carol", 1, 20),
        ];
        let plan = plan(&sorted(&events), present);
        assert!(plan.set_revoke.is_empty() && plan.set_issue.is_empty());
        assert_eq!(plan.refused.len(), 2);
        for refused in &plan.refused {
            assert!(refused.is_conflict());
            let reason = refused.reason();
            assert!(
                reason.contains("\"alice\"") && reason.contains("\"carol\""),
                "{reason}"
            );
            assert!(
                reason.contains("seq 1") && reason.contains("\"c\""),
                "{reason}"
            );
        }
    }

    #[test]
    fn the_holders_revoke_fills_the_row_and_replays_are_duplicates() {
        let key: Key<'_> = (b"c", 1);
        let present = HashMap::from([(key, row("alice", Some("5-0"), None))]);
        let events = [
            event(Op::Issue, "alice", 1, 5),
            event(Op::Revoke, "alice", 1, 9),
        ];
        let done = plan(&sorted(&events), present);
        assert_eq!(done.duplicates, 1);
        assert_eq!(done.set_revoke.len(), 1);
        assert!(done.refused.is_empty());
    }

    #[test]
    fn within_a_batch_the_first_issue_wins() {
        let events = [
            event(Op::Issue, "ann", 1, 10),
            event(Op::Issue, "bob", 1, 11),
            event(Op::Revoke, "bob", 1, 12),
        ];
        let plan = plan(&sorted(&events), HashMap::new());
        assert_eq!(plan.new_rows.len(), 1);
        assert_eq!(plan.new_rows[0].user, b"ann");
        assert_eq!(plan.new_rows[0].revoke, None);
        assert_eq!(plan.refused.len(), 2);
    }

    /// Rows written by earlier versions may hold a revoke without its issue: the issue of the
    /// same user completes it.
    #[test]
    fn an_early_revoke_row_is_completed_by_its_users_issue() {
        let key: Key<'_> = (b"c", 1);
        let present = HashMap::from([(key, row("ann", None, Some("20-0")))]);
        let ann = [event(Op::Issue, "ann", 1, 10)];
        let done = plan(&sorted(&ann), present.clone());
        assert_eq!(done.set_issue.len(), 1);
        let bob = [event(Op::Issue, "bob", 1, 10)];
        let done = plan(&sorted(&bob), present);
        assert!(done.set_issue.is_empty() && done.refused[0].is_conflict());
    }
}
