//! Stage 4, ack: `XACK` of what was committed, and the dead-letter stream for entries that
//! keep failing. Nothing here runs before the batch's COMMIT has returned.

use crate::event::{EntryId, RawEntry, StreamKey};
use crate::reply;
use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use std::collections::BTreeMap;

/// What one `XACK` round did.
#[derive(Debug, Default)]
pub struct Acked {
    /// Entries that were pending and are no longer.
    pub count: u64,
    /// Streams that refused the `XACK` (replaced by another type): their entries cannot be
    /// acknowledged any more, and are not retried.
    pub refused: Vec<(StreamKey, RedisError)>,
}

/// Acknowledges entries, one `XACK` per stream, pipelined. A stream that refuses (the key
/// holds another type now) does not hold back the others; a connection failure fails all.
pub async fn ack<C: ConnectionLike + Send>(
    conn: &mut C,
    group: &str,
    entries: &[(StreamKey, EntryId)],
) -> redis::RedisResult<Acked> {
    let mut by_stream: BTreeMap<&StreamKey, Vec<String>> = BTreeMap::new();
    for (stream, id) in entries {
        by_stream.entry(stream).or_default().push(id.to_string());
    }
    let mut done = Acked::default();
    if by_stream.is_empty() {
        return Ok(done);
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut streams = Vec::new();
    for (stream, ids) in &by_stream {
        for chunk in ids.chunks(1000) {
            pipe.cmd("XACK").arg(&***stream).arg(group).arg(chunk);
            streams.push(*stream);
        }
    }
    let answers: Vec<redis::RedisResult<u64>> = pipe.query_async(conn).await?;
    for (stream, answer) in streams.into_iter().zip(answers) {
        match answer {
            Ok(count) => done.count += count,
            Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                return Err(error)
            }
            Err(error) => done.refused.push((stream.clone(), error)),
        }
    }
    Ok(done)
}

/// How many times the group has delivered each entry, `None` for one no longer pending (or
/// whose stream refused the question): one pipeline.
pub async fn delivery_counts<C: ConnectionLike + Send>(
    conn: &mut C,
    group: &str,
    entries: &[(&[u8], EntryId)],
) -> redis::RedisResult<Vec<Option<u64>>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (stream, id) in entries {
        let id = id.to_string();
        pipe.cmd("XPENDING")
            .arg(*stream)
            .arg(group)
            .arg(&id)
            .arg(&id)
            .arg(1);
    }
    let answers: Vec<redis::RedisResult<Value>> = pipe.query_async(conn).await?;
    Ok(answers
        .into_iter()
        .map(|answer| {
            let answer = answer.ok()?;
            let rows = reply::items(&answer).ok()?;
            let fields = reply::items(rows.first()?).ok()?;
            let count = reply::int(fields.get(3)?).ok()?;
            u64::try_from(count).ok()
        })
        .collect())
}

/// `XADD` to the dead-letter stream, then `XACK`: a failing `XADD` (the key holding another
/// type, out of memory…) raises an error that ends the script before the `XACK`, so an entry
/// is never acknowledged without being stored. (In `MULTI`, a command failing at run time
/// does not stop the next one.)
const DEAD_LETTER_SCRIPT: &str = r"
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
";

/// Why an entry is dead-lettered: the reason, and details as fields of their own (for a
/// conflict: the coupon, the seq, the entry's user and the user already persisted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub reason: String,
    pub details: Vec<(&'static str, Vec<u8>)>,
}

/// Moves an entry to the dead-letter stream and acknowledges it, atomically (a Lua script):
/// the dead-letter entry has `stream`, `id`, `group`, `reason`, `deliveries`, the letter's
/// details, then the original fields prefixed with `entry.`.
pub async fn dead_letter<C: ConnectionLike + Send>(
    conn: &mut C,
    dead_letter_stream: &[u8],
    group: &str,
    entry: &RawEntry,
    letter: &Letter,
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
        .arg(&letter.reason)
        .arg("deliveries")
        .arg(deliveries);
    for (name, value) in &letter.details {
        invocation.arg(*name).arg(value.as_slice());
    }
    for (name, value) in entry.fields.iter().flatten() {
        let mut prefixed = b"entry.".to_vec();
        prefixed.extend_from_slice(name);
        invocation.arg(prefixed).arg(value.as_slice());
    }
    invocation.invoke_async::<Value>(conn).await?;
    Ok(())
}
