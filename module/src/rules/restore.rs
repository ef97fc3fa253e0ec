//! `COUPON.RESTORE <key> <floor> [<user> <seq> ...]`: puts back holders the database knows and
//! Redis lost, and raises the last seq so no seq the database knows is handed out again.
//!
//! Never overwrites: a pair whose user holds another seq, or whose seq another user holds, is
//! answered as a conflict and left alone. Bad input (a malformed integer, a seq below 1, a
//! user or seq named twice) refuses the whole call.

use super::{parse_int, parse_user, CouponError, CouponStore};
use std::collections::{HashMap, HashSet};

/// A parsed `COUPON.RESTORE` call. Borrows from the command's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreArgs<'a> {
    pub key: &'a [u8],
    /// The highest seq the database knows for the coupon (revoked rows included); may be 0.
    pub floor: i64,
    /// `(user, seq)` in the order given.
    pub pairs: Vec<(&'a [u8], i64)>,
}

impl<'a> RestoreArgs<'a> {
    /// Parses the arguments after the command name.
    pub fn parse(args: &[&'a [u8]]) -> Result<Self, CouponError> {
        let [key, floor, rest @ ..] = args else {
            return Err(CouponError::Arity);
        };
        if rest.len() % 2 != 0 {
            return Err(CouponError::Arity);
        }
        let floor = parse_int(floor)
            .filter(|floor| *floor >= 0)
            .ok_or(CouponError::InvalidFloor)?;
        let mut pairs = Vec::with_capacity(rest.len() / 2);
        let mut users = HashSet::with_capacity(rest.len() / 2);
        let mut seqs = HashSet::with_capacity(rest.len() / 2);
        for pair in rest.chunks_exact(2) {
            let user = parse_user(pair[0])?;
            let seq = parse_int(pair[1])
                .filter(|seq| *seq >= 1)
                .ok_or(CouponError::InvalidSeq)?;
            if !users.insert(user) {
                return Err(CouponError::RepeatedUser(
                    String::from_utf8_lossy(user).into_owned(),
                ));
            }
            if !seqs.insert(seq) {
                return Err(CouponError::RepeatedSeq(seq));
            }
            pairs.push((user, seq));
        }
        Ok(RestoreArgs { key, floor, pairs })
    }
}

/// What happened to one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The user held nothing and nobody held the seq: the holder is written.
    Restored,
    /// The user already holds exactly this seq.
    Held,
    /// The user holds another seq: nothing written for this pair.
    UserHolds { seq: i64 },
    /// Another user holds this seq: nothing written for this pair.
    SeqTaken { user: Vec<u8> },
}

impl RestoreOutcome {
    /// The reply's word for the outcome.
    pub fn word(&self) -> &'static str {
        match self {
            RestoreOutcome::Restored => "restored",
            RestoreOutcome::Held => "held",
            RestoreOutcome::UserHolds { .. } => "user-holds",
            RestoreOutcome::SeqTaken { .. } => "seq-taken",
        }
    }
}

/// The change a restore decided on, applied as one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreChange {
    /// Indexes into the call's pairs of the holders to write, in the order given; each gets a
    /// `restore` event.
    pub restored: Vec<usize>,
    /// The new last seq, if it rises.
    pub last_seq: Option<i64>,
}

impl RestoreChange {
    pub fn is_empty(&self) -> bool {
        self.restored.is_empty() && self.last_seq.is_none()
    }
}

/// The decision: one outcome per pair, and the change (empty when nothing is to be written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreDecision {
    pub outcomes: Vec<RestoreOutcome>,
    pub change: RestoreChange,
}

/// Decides `COUPON.RESTORE`. `owners` (seq → the user holding it) is built only if some pair
/// names a user who holds nothing, as it costs a pass over every holder.
pub fn decide_restore<F>(
    store: &impl CouponStore,
    args: &RestoreArgs<'_>,
    owners: F,
) -> Result<RestoreDecision, CouponError>
where
    F: FnOnce() -> Result<HashMap<i64, Vec<u8>>, CouponError>,
{
    let mut outcomes: Vec<Option<RestoreOutcome>> = Vec::with_capacity(args.pairs.len());
    for (user, seq) in &args.pairs {
        outcomes.push(match store.holder_seq(user)? {
            Some(held) if held == *seq => Some(RestoreOutcome::Held),
            Some(held) => Some(RestoreOutcome::UserHolds { seq: held }),
            None => None,
        });
    }
    let mut owners = Some(owners);
    let mut owner_of: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut restored = Vec::new();
    let mut highest = store.last_seq()?;
    let current = highest;
    highest = highest.max(args.floor);
    for (index, (outcome, (_, seq))) in outcomes.iter_mut().zip(&args.pairs).enumerate() {
        if outcome.is_some() {
            continue;
        }
        if let Some(build) = owners.take() {
            owner_of = build()?;
        }
        // Users and seqs are distinct within a call, so a pair restored here never takes a
        // seq another pair of the same call is checked against.
        *outcome = Some(match owner_of.get(seq) {
            Some(other) => RestoreOutcome::SeqTaken {
                user: other.clone(),
            },
            None => {
                restored.push(index);
                highest = highest.max(*seq);
                RestoreOutcome::Restored
            }
        });
    }
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| outcome.ok_or(CouponError::Corrupt("a restore pair went undecided")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RestoreDecision {
        outcomes,
        change: RestoreChange {
            restored,
            last_seq: (highest > current).then_some(highest),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::MemoryStore;

    fn args(list: &[&str]) -> Result<RestoreArgs<'static>, CouponError> {
        let args: Vec<&'static [u8]> = list
            .iter()
            .map(|a| &*Box::leak(a.as_bytes().to_vec().into_boxed_slice()))
            .collect();
        RestoreArgs::parse(&args)
    }

    fn owners_of(store: &MemoryStore) -> Result<HashMap<i64, Vec<u8>>, CouponError> {
        Ok(store
            .holders
            .iter()
            .map(|(user, seq)| (*seq, user.clone()))
            .collect())
    }

    fn restore(store: &mut MemoryStore, list: &[&str]) -> Vec<RestoreOutcome> {
        let args = args(list).unwrap();
        let snapshot = owners_of(store);
        let decision = decide_restore(store, &args, || snapshot).unwrap();
        for index in &decision.change.restored {
            let (user, seq) = args.pairs[*index];
            store.holders.insert(user.to_vec(), seq);
            store
                .events
                .push((coupon_layout::Op::Restore, user.to_vec(), seq));
        }
        if let Some(last) = decision.change.last_seq {
            store.last_seq = last;
        }
        decision.outcomes
    }

    fn holding(pairs: &[(&str, i64)], last_seq: i64) -> MemoryStore {
        MemoryStore {
            holders: pairs
                .iter()
                .map(|(user, seq)| (user.as_bytes().to_vec(), *seq))
                .collect(),
            last_seq,
            events: Vec::new(),
        }
    }

    #[test]
    fn parses_floor_and_pairs() {
        let parsed = args(&["sale", "7", "alice", "3", "bob", "5"]).unwrap();
        assert_eq!(parsed.key, b"sale");
        assert_eq!(parsed.floor, 7);
        assert_eq!(
            parsed.pairs,
            [(&b"alice"[..], 3), (&b"bob"[..], 5)].to_vec()
        );
        assert_eq!(args(&["sale", "0"]).unwrap().pairs, Vec::new());
    }

    #[test]
    fn refuses_bad_input_whole() {
        assert_eq!(args(&["sale"]), Err(CouponError::Arity));
        assert_eq!(args(&["sale", "1", "alice"]), Err(CouponError::Arity));
        for bad in ["-1", "007", "+1", " 1", "1.0", "", "x", "-0"] {
            assert_eq!(
                args(&["sale", bad]),
                Err(CouponError::InvalidFloor),
                "{bad:?}"
            );
        }
        for bad in ["0", "-1", "01", "9223372036854775808", ""] {
            assert_eq!(
                args(&["sale", "1", "alice", bad]),
                Err(CouponError::InvalidSeq),
                "{bad:?}"
            );
        }
        assert_eq!(args(&["sale", "1", "", "1"]), Err(CouponError::EmptyUser));
        assert_eq!(
            args(&["sale", "1", "a", "1", "a", "2"]),
            Err(CouponError::RepeatedUser("a".into()))
        );
        assert_eq!(
            args(&["sale", "1", "a", "1", "b", "1"]),
            Err(CouponError::RepeatedSeq(1))
        );
    }

    #[test]
    fn each_pair_gets_its_outcome() {
        let mut store = holding(&[("alice", 1), ("bob", 2)], 2);
        let outcomes = restore(
            &mut store,
            &[
                "sale", "4", "alice", "1", "bob", "3", "carol", "2", "dave", "4",
            ],
        );
        assert_eq!(
            outcomes,
            [
                RestoreOutcome::Held,
                RestoreOutcome::UserHolds { seq: 2 },
                RestoreOutcome::SeqTaken {
                    user: b"bob".to_vec()
                },
                RestoreOutcome::Restored,
            ]
        );
        assert_eq!(store.holders.get(&b"dave"[..]), Some(&4));
        assert_eq!(store.holders.len(), 3);
        assert_eq!(store.last_seq, 4);
        assert_eq!(store.events.len(), 1, "one event per restored holder");
    }

    #[test]
    fn a_rerun_changes_nothing() {
        let mut store = holding(&[], 0);
        let call = ["sale", "9", "alice", "3", "bob", "7"];
        assert_eq!(
            restore(&mut store, &call),
            [RestoreOutcome::Restored, RestoreOutcome::Restored]
        );
        assert_eq!(store.last_seq, 9);
        let args = args(&call).unwrap();
        let unasked = || -> Result<HashMap<i64, Vec<u8>>, CouponError> {
            panic!("the holders were scanned although every pair is held")
        };
        let decision = decide_restore(&store, &args, unasked).unwrap();
        assert_eq!(
            decision.outcomes,
            [RestoreOutcome::Held, RestoreOutcome::Held]
        );
        assert!(decision.change.is_empty());
    }

    #[test]
    fn the_last_seq_only_rises() {
        let mut store = holding(&[("alice", 5)], 12);
        assert_eq!(
            restore(&mut store, &["sale", "3", "bob", "4"]),
            [RestoreOutcome::Restored]
        );
        assert_eq!(store.last_seq, 12, "a lower floor or seq never lowers it");
        assert_eq!(restore(&mut store, &["sale", "20"]), []);
        assert_eq!(store.last_seq, 20);
        assert_eq!(
            restore(&mut store, &["sale", "0", "carol", "25"]),
            [RestoreOutcome::Restored]
        );
        assert_eq!(
            store.last_seq, 25,
            "a restored seq above the floor raises it too"
        );
        let args = args(&["sale", "25"]).unwrap();
        let decision = decide_restore(&store, &args, || owners_of(&store)).unwrap();
        assert!(decision.change.is_empty());
    }
}
