//! The change index as the server feeds and reads it: keyspace events note or forget coupon
//! event streams, a flush empties it, `COUPON.CHANGES` pages through it, `INFO` shows its size.
//!
//! The module subscribes to the events itself, so the index sees every way a stream gets an
//! entry: this module's own `xadd`, the SDK's Lua fallback, a replica applying its primary's
//! stream, `RESTORE` / `MIGRATE` during resharding, `RENAME`, `COPY`, `MOVE`. The event
//! callbacks run on the main thread inside the command that fired them: they write no key,
//! allocate nothing for a stream already held or a key that is not a coupon's stream, and
//! never unwind into the server.

use super::boundary::Argv;
use super::ffi::{api, bytes_of, Ctx, RawString};
use super::reply;
use crate::rules::changes::CAPACITY;
use crate::rules::{ChangeIndex, ChangesArgs, CouponError};
use coupon_layout::CouponKey;
use redis_module::raw;
use std::ffi::CStr;
use std::hash::{BuildHasher, Hasher};
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Set anew at every load, so a reloaded module starts a new epoch.
static INDEX: Mutex<Option<ChangeIndex>> = Mutex::new(None);

fn index() -> MutexGuard<'static, Option<ChangeIndex>> {
    // Nothing panics while holding it; if something did, the index is still consistent
    // enough to serve hints (it is never the source of truth).
    INDEX.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a new index and subscribes to what feeds it. Called from `on_load`.
pub fn init(ctx: Ctx) -> Result<(), &'static str> {
    *index() = Some(ChangeIndex::new(new_epoch(), CAPACITY));
    let types = raw::REDISMODULE_NOTIFY_STREAM
        | raw::REDISMODULE_NOTIFY_GENERIC
        | raw::REDISMODULE_NOTIFY_EXPIRED
        | raw::REDISMODULE_NOTIFY_EVICTED;
    let ok = raw::REDISMODULE_OK as c_int;
    if unsafe { api!(RedisModule_SubscribeToKeyspaceEvents)(ctx, types as c_int, Some(on_event)) }
        != ok
    {
        return Err("SubscribeToKeyspaceEvents failed");
    }
    let flush = raw::RedisModuleEvent {
        id: raw::REDISMODULE_EVENT_FLUSHDB,
        dataver: 1,
    };
    if unsafe { api!(RedisModule_SubscribeToServerEvent)(ctx, flush, Some(on_flush)) } != ok {
        return Err("SubscribeToServerEvent(FLUSHDB) failed");
    }
    Ok(())
}

/// 64 random bits (std's per-process random keys, mixed with the clock and the pid): another
/// load, node or failover gets another epoch.
fn new_epoch() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[derive(Clone, Copy)]
enum Action {
    Note,
    Forget,
}

/// What a keyspace event means for the stream it names, if anything: an entry may have been
/// added (or the stream arrived), or the stream is gone. Trims and deletions of entries leave
/// nothing new to read.
fn action_of(event: &[u8]) -> Option<Action> {
    match event {
        b"xadd" | b"restore" | b"rename_to" | b"copy_to" | b"move_to" => Some(Action::Note),
        b"del" | b"rename_from" | b"expired" | b"evicted" | b"move_from" => Some(Action::Forget),
        _ => None,
    }
}

unsafe extern "C" fn on_event(
    _ctx: Ctx,
    _type: c_int,
    event: *const c_char,
    key: RawString,
) -> c_int {
    // A panic must not unwind into the server; a hint lost to one costs a sweep, no data.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if event.is_null() || key.is_null() {
            return;
        }
        let Some(action) = action_of(CStr::from_ptr(event).to_bytes()) else {
            return;
        };
        let name = bytes_of(key);
        if CouponKey::of_events_key(name).is_none() {
            return;
        }
        if let Some(index) = index().as_mut() {
            match action {
                Action::Note => index.note(name),
                Action::Forget => index.forget(name),
            }
        }
    }));
    raw::REDISMODULE_OK as c_int
}

/// `FLUSHALL` / `FLUSHDB` (and a replica's full resync) remove keys without a `del` event each.
unsafe extern "C" fn on_flush(
    _ctx: Ctx,
    _event: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    if subevent != raw::REDISMODULE_SUBEVENT_FLUSHDB_END {
        return;
    }
    let _ = catch_unwind(|| {
        if let Some(index) = index().as_mut() {
            index.forget_all();
        }
    });
}

/// `COUPON.CHANGES <cursor> [COUNT <n>]`: `[next cursor, complete, streams]`.
pub fn changes(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let args = argv.with_tail(ChangesArgs::parse)?;
    // The names are shared with the index: the reply is written after the lock is let go.
    let page = index()
        .as_ref()
        .ok_or(CouponError::Corrupt("the change index is not initialised"))?
        .page(args.cursor, args.count)?;
    reply::changes(ctx, &page);
    Ok(())
}

/// For `INFO coupon`: the index's epoch (as cursors write it) and how many streams it holds.
pub fn describe() -> Option<(String, u64)> {
    let index = index();
    let index = index.as_ref()?;
    Some((format!("{:016x}", index.epoch()), index.len() as u64))
}
