//! Stage 4, ack: `XACK` of what was committed, and the dead-letter stream for entries that
//! keep failing. Nothing here runs before the batch's COMMIT has returned.

use crate::event::{EntryId, RawEntry, StreamKey};
use crate::reply;
use redis::aio::ConnectionManager;
use redis::Value;
use std::collections::BTreeMap;

/// Acknowledges entries, one `XACK` per stream, pipelined. Returns how many were pending.
pub async fn ack(
    conn: &mut ConnectionManager,
    group: &str,
    entries: &[(StreamKey, EntryId)],
) -> redis::RedisResult<u64> {
    let mut by_stream: BTreeMap<&StreamKey, Vec<String>> = BTreeMap::new();
    for (stream, id) in entries {
        by_stream.entry(stream).or_default().push(id.to_string());
    }
    if by_stream.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for (stream, ids) in &by_stream {
        for chunk in ids.chunks(1000) {
            pipe.cmd("XACK").arg(&***stream).arg(group).arg(chunk);
        }
    }
    let counts: Vec<u64> = pipe.query_async(conn).await?;
    Ok(counts.iter().sum())
}

/// How many times the group has delivered the entry, if it is still pending.
pub async fn delivery_count(
    conn: &mut ConnectionManager,
    group: &str,
    stream: &[u8],
    id: EntryId,
) -> redis::RedisResult<Option<u64>> {
    let id = id.to_string();
    let answer: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(&id)
        .arg(&id)
        .arg(1)
        .query_async(conn)
        .await?;
    let count = reply::items(&answer)
        .ok()
        .and_then(|rows| rows.first())
        .and_then(|row| reply::items(row).ok())
        .and_then(|fields| fields.get(3))
        .and_then(|count| reply::int(count).ok())
        .and_then(|count| u64::try_from(count).ok());
    Ok(count)
}

/// `XADD` to the dead-letter stream, then `XACK`: a failing `XADD` (the key holding another
/// type, out of memory…) raises an error that ends the script before the `XACK`, so an entry
/// is never acknowledged without being stored. (In `MULTI`, a command failing at run time
/// does not stop the next one.)
const DEAD_LETTER_SCRIPT: &str = r"
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
";

/// Moves an entry to the dead-letter stream and acknowledges it, atomically (a Lua script):
/// the dead-letter entry has `stream`, `id`, `group`, `reason`, `deliveries`, then the
/// original fields prefixed with `entry.`.
pub async fn dead_letter(
    conn: &mut ConnectionManager,
    dead_letter_stream: &str,
    group: &str,
    entry: &RawEntry,
    reason: &str,
    deliveries: u64,
) -> redis::RedisResult<()> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(DEAD_LETTER_SCRIPT));
    let id = entry.id.to_string();
    let mut invocation = script.prepare_invoke();
    invocation
        .key(dead_letter_stream)
        .key(&*entry.stream)
        .arg(group)
        .arg(&id)
        .arg("stream")
        .arg(&*entry.stream)
        .arg("id")
        .arg(&id)
        .arg("group")
        .arg(group)
        .arg("reason")
        .arg(reason)
        .arg("deliveries")
        .arg(deliveries);
    for (name, value) in entry.fields.iter().flatten() {
        let mut prefixed = b"entry.".to_vec();
        prefixed.extend_from_slice(name);
        invocation.arg(prefixed).arg(value.as_slice());
    }
    invocation.invoke_async::<Value>(conn).await?;
    Ok(())
}
