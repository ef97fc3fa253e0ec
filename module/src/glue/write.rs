//! The one place that writes. Every change is applied through the low-level key API, then
//! announced with the keyspace events the built-in commands would emit, then replicated as
//! those plain commands with concrete values (the stream entry's ID included), so a replica
//! or an AOF replayed without the module ends up byte-identical, and save points count it.

use super::ffi::{api, notify, Ctx, KeyKind, Mode, OwnedString, RawString, StaticString};
use super::store::{open_checked, KeyNames};
use crate::rules::{Change, Counter, CouponError};
use redis_module::raw;
use std::ffi::CStr;
use std::sync::OnceLock;

/// Field names and op words of event entries, created once at load.
pub struct EventWords {
    op: StaticString,
    coupon: StaticString,
    user: StaticString,
    seq: StaticString,
    ts: StaticString,
    issue: StaticString,
    revoke: StaticString,
}

static EVENT_WORDS: OnceLock<EventWords> = OnceLock::new();

/// Creates the event words; called from `on_load` before any command can run.
pub fn init_event_words() {
    EVENT_WORDS.get_or_init(|| EventWords {
        op: StaticString::new("op"),
        coupon: StaticString::new("coupon"),
        user: StaticString::new("user"),
        seq: StaticString::new("seq"),
        ts: StaticString::new("ts"),
        issue: StaticString::new("issue"),
        revoke: StaticString::new("revoke"),
    });
}

/// The arguments of the command being served that a change refers to.
pub struct Target<'a> {
    /// The coupon key as the client sent it (recorded in events).
    pub coupon: RawString,
    /// The user as the client sent it.
    pub user: RawString,
    pub names: &'a KeyNames<'a>,
}

/// Applies `change` and returns how many users hold the coupon afterwards.
/// Nothing is written unless all three keys are of the right type.
pub fn apply(ctx: Ctx, target: &Target<'_>, change: &Change<'_>) -> Result<i64, CouponError> {
    let names = target.names;
    let holders = open_checked(ctx, names.holders(), Mode::Write, KeyKind::Hash)?;
    let meta = open_checked(ctx, names.meta(), Mode::Write, KeyKind::Hash)?;
    let events = open_checked(ctx, names.events(), Mode::Write, KeyKind::Stream)?;
    let words = EVENT_WORDS
        .get()
        .ok_or(CouponError::Corrupt("module not initialised"))?;

    let (op, seq, counter, count, at_ms) = match *change {
        Change::Grant { seq, at_ms, .. } => (words.issue, seq, Counter::LastSeq, seq, at_ms),
        Change::Return {
            seq,
            revoked,
            at_ms,
            ..
        } => (words.revoke, seq, Counter::Revoked, revoked, at_ms),
    };
    let seq_text = OwnedString::from_i64(ctx, seq);
    let ts_text = OwnedString::from_i64(ctx, at_ms);

    // The event goes first: if the stream refuses it (ID space exhausted) nothing else changed.
    let mut entry = [
        words.op.as_ptr(),
        op.as_ptr(),
        words.coupon.as_ptr(),
        target.coupon,
        words.user.as_ptr(),
        target.user,
        words.seq.as_ptr(),
        seq_text.as_ptr(),
        words.ts.as_ptr(),
        ts_text.as_ptr(),
    ];
    let id = events.stream_add(&mut entry).ok_or(CouponError::Corrupt(
        "the event stream accepts no more entries",
    ))?;
    notify(ctx, raw::REDISMODULE_NOTIFY_STREAM, c"xadd", names.events());
    replicate_xadd(ctx, names.events(), id, &entry);

    match change {
        Change::Grant { .. } => {
            holders.hash_insert(target.user, seq_text.as_ptr());
            notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hset", names.holders());
            replicate_hset(ctx, names.holders(), target.user, seq_text.as_ptr());
        }
        Change::Return { .. } => {
            holders.hash_del(target.user);
            notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hdel", names.holders());
            if holders.kind() == KeyKind::Empty {
                notify(
                    ctx,
                    raw::REDISMODULE_NOTIFY_GENERIC,
                    c"del",
                    names.holders(),
                );
            }
            replicate_hdel(ctx, names.holders(), target.user);
        }
    }

    let count_text = OwnedString::from_i64(ctx, count);
    meta.hash_set_cfield(counter.field(), count_text.as_ptr());
    notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hset", names.meta());
    replicate_hset_counter(ctx, names.meta(), counter.field(), count_text.as_ptr());

    Ok(holders.len() as i64)
}

fn replicate_hset(ctx: Ctx, key: RawString, field: RawString, value: RawString) {
    unsafe {
        api!(RedisModule_Replicate)(ctx, c"HSET".as_ptr(), c"sss".as_ptr(), key, field, value);
    }
}

fn replicate_hdel(ctx: Ctx, key: RawString, field: RawString) {
    unsafe {
        api!(RedisModule_Replicate)(ctx, c"HDEL".as_ptr(), c"ss".as_ptr(), key, field);
    }
}

fn replicate_hset_counter(ctx: Ctx, meta: RawString, field: &CStr, value: RawString) {
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            c"HSET".as_ptr(),
            c"scs".as_ptr(),
            meta,
            field.as_ptr(),
            value,
        );
    }
}

/// `XADD <events> <ms>-<seq> <fields…>`: the concrete ID makes the replica's entry identical.
fn replicate_xadd(
    ctx: Ctx,
    events: RawString,
    id: raw::RedisModuleStreamID,
    entry: &[RawString; 10],
) {
    let id = format!("{}-{}", id.ms, id.seq);
    let [f0, v0, f1, v1, f2, v2, f3, v3, f4, v4] = *entry;
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            c"XADD".as_ptr(),
            c"sbssssssssss".as_ptr(),
            events,
            id.as_ptr(),
            id.len(),
            f0,
            v0,
            f1,
            v1,
            f2,
            v2,
            f3,
            v3,
            f4,
            v4,
        );
    }
}
