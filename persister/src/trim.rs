//! Stage 5, trim: removes from a stream only entries that are committed. The lowest entry
//! kept is the smallest of: just past the group's checkpoint in the database, the oldest
//! entry still pending in any group, and the first entry any group has not yet read.
//! Everything below that was acknowledged by every group, and this group acknowledges only
//! after COMMIT.

use crate::event::{EntryId, StreamKey};
use crate::reply;
use redis::aio::ConnectionManager;
use redis::Value;

/// One consumer group's position on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub name: String,
    pub pending: u64,
    pub last_delivered: EntryId,
    /// The oldest pending entry, when `pending > 0`.
    pub oldest_pending: Option<EntryId>,
}

/// The `XTRIM … MINID` bound, or `None` when nothing may be trimmed.
pub fn safe_min_id(checkpoint: Option<EntryId>, groups: &[GroupState]) -> Option<EntryId> {
    let mut bound = checkpoint?.next();
    for group in groups {
        let group_bound = match group.oldest_pending {
            Some(oldest) if group.pending > 0 => oldest,
            _ => group.last_delivered.next(),
        };
        bound = bound.min(group_bound);
    }
    Some(bound)
}

/// Every group's position on `stream`.
pub async fn group_states(
    conn: &mut ConnectionManager,
    stream: &[u8],
) -> anyhow::Result<Vec<GroupState>> {
    let answer: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let mut groups = Vec::new();
    for group in reply::items(&answer)? {
        let mut name = None;
        let mut pending = 0;
        let mut last_delivered = None;
        for (key, value) in reply::pairs(group)? {
            match reply::text(key)?.as_str() {
                "name" => name = Some(reply::text(value)?),
                "pending" => pending = u64::try_from(reply::int(value)?).unwrap_or(0),
                "last-delivered-id" => last_delivered = Some(reply::entry_id(value)?),
                _ => {}
            }
        }
        let (Some(name), Some(last_delivered)) = (name, last_delivered) else {
            anyhow::bail!("XINFO GROUPS reply without name or last-delivered-id");
        };
        let oldest_pending = if pending > 0 {
            let summary: Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&name)
                .query_async(conn)
                .await?;
            match reply::items(&summary)? {
                [_, smallest, ..] if *smallest != Value::Nil => Some(reply::entry_id(smallest)?),
                _ => None,
            }
        } else {
            None
        };
        groups.push(GroupState {
            name,
            pending,
            last_delivered,
            oldest_pending,
        });
    }
    Ok(groups)
}

/// Deletes, in one atomic step, the consumers of `group` other than `me` that hold no
/// pending entry and were idle at least `idle_ms`: consumers of processes gone for good
/// (consumer names default to host and PID). Atomic so a consumer cannot take an entry
/// between the check and the delete; a live one deleted is recreated by its next read.
const FORGET_CONSUMERS: &str = r"
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] ~= ARGV[2] and fields['pending'] == 0
      and fields['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    removed = removed + 1
  end
end
return removed
";

/// Forgets idle consumers without pending entries (see [`FORGET_CONSUMERS`]); returns how
/// many.
pub async fn forget_idle_consumers(
    conn: &mut ConnectionManager,
    stream: &[u8],
    group: &str,
    me: &str,
    idle_ms: u64,
) -> redis::RedisResult<u64> {
    redis::Script::new(FORGET_CONSUMERS)
        .key(stream)
        .arg(group)
        .arg(me)
        .arg(idle_ms)
        .invoke_async(conn)
        .await
}

/// Trims `stream` below `min_id` exactly. Returns how many entries went.
pub async fn trim(
    conn: &mut ConnectionManager,
    stream: &StreamKey,
    min_id: EntryId,
) -> redis::RedisResult<u64> {
    redis::cmd("XTRIM")
        .arg(&**stream)
        .arg("MINID")
        .arg("=")
        .arg(min_id.to_string())
        .query_async(conn)
        .await
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
    }
}
