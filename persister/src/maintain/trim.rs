//! Trimming: removes from a stream only entries that are committed. The lowest entry kept
//! is the smallest of: just past the group's checkpoint in the database, the oldest entry
//! still pending in any group, and the first entry any group has not yet read. Everything
//! below that was acknowledged by every group, and this group acknowledges only after
//! COMMIT.

use super::sample::{GroupState, StreamState};
use crate::event::EntryId;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::collections::HashMap;

/// The `XTRIM … MINID` bound, or `None` when nothing may be trimmed.
pub fn safe_min_id(checkpoint: Option<EntryId>, groups: &[GroupState]) -> Option<EntryId> {
    let mut bound = checkpoint?.next();
    for group in groups {
        let group_bound = match group.oldest_pending {
            Some(oldest) if group.pending > 0 => oldest,
            // Pending but its oldest unknown (it could not be read): keep everything.
            None if group.pending > 0 => return None,
            _ => group.last_delivered.next(),
        };
        bound = bound.min(group_bound);
    }
    Some(bound)
}

/// Trims each stream of `states` (sampled with every group's oldest pending entry) below
/// its safe bound, given the checkpoints; one pipeline. Returns how many entries went.
pub async fn trim<C: ConnectionLike + Send>(
    conn: &mut C,
    states: &[StreamState],
    checkpoints: &HashMap<Vec<u8>, EntryId>,
) -> RedisResult<u64> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut trims = 0;
    for state in states {
        let checkpoint = checkpoints.get(&*state.stream).copied();
        let Some(min_id) = safe_min_id(checkpoint, &state.groups) else {
            continue;
        };
        pipe.cmd("XTRIM")
            .arg(&*state.stream)
            .arg("MINID")
            .arg("=")
            .arg(min_id.to_string());
        trims += 1;
    }
    if trims == 0 {
        return Ok(0);
    }
    let answers: Vec<RedisResult<u64>> = pipe.query_async(conn).await?;
    Ok(answers.into_iter().filter_map(Result::ok).sum())
}

/// The streams of `states`, as the checkpoint query takes them.
pub fn names(states: &[StreamState]) -> Vec<&[u8]> {
    states.iter().map(|state| &*state.stream).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    fn group(pending: u64, last: u64, oldest: Option<u64>) -> GroupState {
        GroupState {
            name: "g".into(),
            pending,
            last_delivered: id(last),
            lag: None,
            oldest_pending: oldest.map(id),
        }
    }

    #[test]
    fn never_past_the_checkpoint() {
        assert_eq!(safe_min_id(None, &[group(0, 100, None)]), None);
        assert_eq!(
            safe_min_id(Some(id(50)), &[group(0, 100, None)]),
            Some(id(50).next())
        );
    }

    #[test]
    fn never_past_a_pending_or_unread_entry() {
        assert_eq!(
            safe_min_id(Some(id(50)), &[group(3, 60, Some(20))]),
            Some(id(20))
        );
        assert_eq!(
            safe_min_id(Some(id(50)), &[group(0, 50, None), group(0, 10, None)]),
            Some(id(10).next())
        );
        assert_eq!(safe_min_id(Some(id(50)), &[group(3, 60, None)]), None);
    }
}
