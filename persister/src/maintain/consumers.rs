//! Forgetting the consumers of processes gone for good (consumer names default to host and
//! PID, so every restart leaves one behind).

use crate::event::StreamKey;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

/// Deletes, in one atomic step, the consumers of `group` other than `me` that hold no
/// pending entry and were idle at least `idle_ms`. Atomic so a consumer cannot take an entry
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

/// Streams per pipeline.
const CHUNK: usize = 500;

/// Forgets idle consumers without pending entries on each of `streams` (see
/// [`FORGET_CONSUMERS`]); returns how many, over all streams. A stream that refuses (deleted
/// meanwhile) is skipped.
pub async fn forget_idle<C: ConnectionLike + Send>(
    conn: &mut C,
    streams: &[StreamKey],
    group: &str,
    me: &str,
    idle_ms: u64,
) -> RedisResult<u64> {
    let script = Script::new(FORGET_CONSUMERS);
    let mut removed = 0;
    for chunk in streams.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.load_script(&script).ignore();
        for stream in chunk {
            let mut invocation = script.key(&**stream);
            invocation.arg(group).arg(me).arg(idle_ms);
            pipe.invoke_script(&invocation);
        }
        let answers: Vec<RedisResult<u64>> = pipe.query_async(conn).await?;
        removed += answers.into_iter().filter_map(Result::ok).sum::<u64>();
    }
    Ok(removed)
}
