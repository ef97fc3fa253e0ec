//! Whether the coupon's slot is being migrated, asked only when one of its keys is missing:
//! then the key is on the other node and the client should retry (`-TRYAGAIN`).

use super::ffi::{context_flags, Ctx};
use coupon_layout::hash_slot;
use redis_module::{raw, Context, RedisValue};

pub fn slot_is_moving(ctx: Ctx, key: &[u8]) -> bool {
    if context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_CLUSTER == 0 {
        return false;
    }
    let nodes = match Context::new(ctx).call("CLUSTER", &["NODES"]) {
        Ok(RedisValue::SimpleString(text) | RedisValue::BulkString(text)) => text,
        Ok(RedisValue::StringBuffer(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => return false,
    };
    let slot = hash_slot(key);
    let moving = moving_slots(&nodes).any(|moving| moving == slot);
    moving
}

/// The slots this node is migrating out (`[slot->-node]`) or importing (`[slot-<-node]`),
/// from `CLUSTER NODES`' line for `myself`.
fn moving_slots(nodes: &str) -> impl Iterator<Item = u16> + '_ {
    nodes
        .lines()
        .find(|line| {
            line.split(' ')
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|flag| flag == "myself"))
        })
        .into_iter()
        .flat_map(|line| line.split(' ').skip(8))
        .filter_map(|field| {
            let inner = field.strip_prefix('[')?.strip_suffix(']')?;
            let (slot, _) = inner
                .split_once("->-")
                .or_else(|| inner.split_once("-<-"))?;
            slot.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::moving_slots;

    #[test]
    fn finds_this_nodes_migrating_and_importing_slots() {
        let nodes = "\
a1 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460 [77->-b2]
b2 127.0.0.1:7002@17002 myself,master - 0 0 2 connected 5461-10922 [1974->-c3] [42-<-a1]
c3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
";
        assert_eq!(moving_slots(nodes).collect::<Vec<_>>(), [1974, 42]);
        let quiet = "b2 127.0.0.1:7002@17002 myself,master - 0 0 2 connected 0-16383\n";
        assert_eq!(moving_slots(quiet).count(), 0);
    }
}
