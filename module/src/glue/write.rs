//! The one place that writes. A change is first guarded (memory, eviction policy, both keys
//! of the coupon present), then applied through the low-level key API, announced with the
//! keyspace events the built-in commands would emit, and replicated as those plain commands
//! with concrete values (the stream entry's ID included), so a replica or an AOF replayed
//! without the module ends up byte-identical, and save points count it.
//!
//! The FFI write helpers are private to this file: no command can write around it.

use super::cluster::slot_is_moving;
use super::eviction;
use super::ffi::{
    api, context_flags, key_exists, notify, Ctx, KeyKind, Mode, OpenKey, OwnedString, RawString,
};
use super::store::open_checked;
use super::words::{words, Words};
use crate::rules::{guard_write, Change, CouponError, Presence, WriteConditions};
use coupon_layout::{holders_in, CouponKey, Op};
use redis_module::raw;
use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr;

/// The command's arguments a change refers to.
pub struct Target<'a> {
    /// The coupon key as the client sent it.
    pub coupon: RawString,
    pub key: CouponKey<'a>,
    /// Whether the coupon key existed when the change was decided.
    pub coupon_exists: bool,
    /// The user as the client sent it.
    pub user: RawString,
}

/// Applies `change` and returns how many users hold the coupon afterwards.
/// Nothing is written, and no key is opened for writing, unless the guard lets it through.
pub fn apply(ctx: Ctx, target: &Target<'_>, change: &Change<'_>) -> Result<i64, CouponError> {
    let words = words()?;
    let (events_name, _) = guard(ctx, target.key, target.coupon_exists)?;
    let events = open_checked(ctx, events_name.as_ptr(), Mode::Write, KeyKind::Stream)?;
    let coupon = OpenKey::open(ctx, target.coupon, Mode::Write);
    let (op, seq) = match *change {
        Change::Grant { seq, .. } => (Op::Issue, seq),
        Change::Return { seq, .. } => (Op::Revoke, seq),
    };
    let seq_text = OwnedString::from_i64(ctx, seq);

    // The event goes first: if the stream refuses it (ID space exhausted) nothing else changed.
    let entry = [
        words.op.as_ptr(),
        words.op(op),
        words.user.as_ptr(),
        target.user,
        words.seq.as_ptr(),
        seq_text.as_ptr(),
    ];
    append_event(ctx, &events, events_name.as_ptr(), entry)?;

    match change {
        Change::Grant { .. } => {
            let seq = seq_text.as_ptr();
            coupon.hash_set_pair([target.user, seq], [words.last_seq.as_ptr(), seq]);
            notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hset", target.coupon);
            replicate_grant(ctx, target, words, seq_text.as_ptr());
        }
        Change::Return { .. } => {
            // The last-seq field stays, so the coupon key never empties here.
            coupon.hash_del(target.user);
            notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hdel", target.coupon);
            replicate_return(ctx, target);
        }
    }
    Ok(holders_in(coupon.len() as u64) as i64)
}

/// Checks that a write may happen now (see `rules::guard_write`); the event stream's name and
/// whether it exists.
fn guard(
    ctx: Ctx,
    key: CouponKey<'_>,
    coupon_exists: bool,
) -> Result<(OwnedString, bool), CouponError> {
    let events_name = OwnedString::new(ctx, &key.events_key());
    let events_exist = key_exists(ctx, events_name.as_ptr());
    let eviction = eviction::current();
    let conditions = WriteConditions {
        out_of_memory: context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_OOM != 0,
        eviction: &eviction,
    };
    let presence = Presence {
        coupon: coupon_exists,
        events: events_exist,
    };
    guard_write(conditions, presence, || slot_is_moving(ctx, key.as_bytes()))?;
    Ok((events_name, events_exist))
}

/// A restore's holders to write, as the client sent them: `(user, seq)` strings.
pub struct Restoring<'a> {
    /// The coupon key as the client sent it.
    pub coupon: RawString,
    pub key: CouponKey<'a>,
    /// Whether the coupon key existed when the restore was decided.
    pub coupon_exists: bool,
    /// The holders to put back, in the order given; the seq strings are canonical integers.
    pub holders: Vec<[RawString; 2]>,
    /// The new last seq, if it rises.
    pub last_seq: Option<i64>,
}

/// Applies a restore: one `restore` event per holder put back, then one `HSET` of every
/// holder and the last seq. Replicated as those `XADD`s with their IDs and that `HSET`.
///
/// A coupon must never be left without its stream: when only the last seq is written and the
/// stream is missing (the coupon is being created by raising its floor), the stream is
/// created empty, by adding an entry and deleting it (`XADD <id> …` + `XDEL <id>`), which
/// leaves no event for a reader and moves the stream's last ID to now.
pub fn apply_restore(ctx: Ctx, restoring: &Restoring<'_>) -> Result<(), CouponError> {
    if restoring.holders.is_empty() && restoring.last_seq.is_none() {
        return Ok(());
    }
    let words = words()?;
    let (events_name, events_exist) = guard(ctx, restoring.key, restoring.coupon_exists)?;
    let events = open_checked(ctx, events_name.as_ptr(), Mode::Write, KeyKind::Stream)?;
    let coupon = OpenKey::open(ctx, restoring.coupon, Mode::Write);

    // The events go first: if the stream refuses the first (ID space exhausted), nothing
    // else changed.
    for [user, seq] in &restoring.holders {
        let entry = [
            words.op.as_ptr(),
            words.op(Op::Restore),
            words.user.as_ptr(),
            *user,
            words.seq.as_ptr(),
            *seq,
        ];
        append_event(ctx, &events, events_name.as_ptr(), entry)?;
    }
    let last_text = restoring
        .last_seq
        .map(|last| OwnedString::from_i64(ctx, last));
    if restoring.holders.is_empty() && !events_exist {
        if let Some(last) = &last_text {
            let entry = [
                words.op.as_ptr(),
                words.op(Op::Restore),
                words.user.as_ptr(),
                words.last_seq.as_ptr(),
                words.seq.as_ptr(),
                last.as_ptr(),
            ];
            let id = append_event(ctx, &events, events_name.as_ptr(), entry)?;
            events.stream_delete(id);
            notify(
                ctx,
                raw::REDISMODULE_NOTIFY_STREAM,
                c"xdel",
                events_name.as_ptr(),
            );
            replicate_xdel(ctx, events_name.as_ptr(), id);
        }
    }

    let mut hset: Vec<RawString> = Vec::with_capacity(2 * restoring.holders.len() + 3);
    hset.push(restoring.coupon);
    for [user, seq] in &restoring.holders {
        coupon.hash_set(*user, *seq);
        hset.extend([*user, *seq]);
    }
    if let Some(last) = &last_text {
        coupon.hash_set(words.last_seq.as_ptr(), last.as_ptr());
        hset.extend([words.last_seq.as_ptr(), last.as_ptr()]);
    }
    notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hset", restoring.coupon);
    replicate_vector(ctx, c"HSET", &mut hset);
    Ok(())
}

/// The writes of the low-level key API, usable from this file only.
impl OpenKey {
    /// Sets two fields in one call, as one `HSET` would.
    fn hash_set_pair(&self, [field, value]: [RawString; 2], [other, other_value]: [RawString; 2]) {
        if self.ptr.is_null() {
            return;
        }
        unsafe {
            api!(RedisModule_HashSet)(
                self.ptr,
                raw::REDISMODULE_HASH_NONE as c_int,
                field,
                value,
                other,
                other_value,
                ptr::null::<u8>(),
            );
        }
    }

    fn hash_set(&self, field: RawString, value: RawString) {
        if self.ptr.is_null() {
            return;
        }
        unsafe {
            api!(RedisModule_HashSet)(
                self.ptr,
                raw::REDISMODULE_HASH_NONE as c_int,
                field,
                value,
                ptr::null::<u8>(),
            );
        }
    }

    /// Deletes a stream entry (present: it was just added).
    fn stream_delete(&self, mut id: raw::RedisModuleStreamID) {
        if self.ptr.is_null() {
            return;
        }
        unsafe { api!(RedisModule_StreamDelete)(self.ptr, &mut id) };
    }

    fn hash_del(&self, field: RawString) {
        if self.ptr.is_null() {
            return;
        }
        let delete = raw::REDISMODULE_HASH_DELETE as RawString;
        unsafe {
            api!(RedisModule_HashSet)(
                self.ptr,
                raw::REDISMODULE_HASH_NONE as c_int,
                field,
                delete,
                ptr::null::<u8>(),
            );
        }
    }

    /// Appends an entry with a server-assigned ID; the ID, or `None` if the stream is full.
    fn stream_add<const N: usize>(
        &self,
        mut fields: [RawString; N],
    ) -> Option<raw::RedisModuleStreamID> {
        if self.ptr.is_null() {
            return None;
        }
        let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
        let status = unsafe {
            api!(RedisModule_StreamAdd)(
                self.ptr,
                raw::REDISMODULE_STREAM_ADD_AUTOID as c_int,
                &mut id,
                fields.as_mut_ptr(),
                (N / 2) as i64,
            )
        };
        (status == raw::REDISMODULE_OK as c_int).then_some(id)
    }
}

/// `HSET <coupon> <user> <seq> "" <seq>`: one command, as a client would send it.
fn replicate_grant(ctx: Ctx, target: &Target<'_>, words: &Words, seq: RawString) {
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            c"HSET".as_ptr(),
            c"sssss".as_ptr(),
            target.coupon,
            target.user,
            seq,
            words.last_seq.as_ptr(),
            seq,
        );
    }
}

fn replicate_return(ctx: Ctx, target: &Target<'_>) {
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            c"HDEL".as_ptr(),
            c"ss".as_ptr(),
            target.coupon,
            target.user,
        );
    }
}

/// `<command> <args…>` for any number of server strings.
fn replicate_vector(ctx: Ctx, command: &CStr, args: &mut [RawString]) {
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            command.as_ptr(),
            c"v".as_ptr(),
            args.as_mut_ptr(),
            args.len(),
        );
    }
}

/// `XDEL <events> <ms>-<seq>`.
fn replicate_xdel(ctx: Ctx, events: RawString, id: raw::RedisModuleStreamID) {
    let id_text = id_text(id);
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            c"XDEL".as_ptr(),
            c"sb".as_ptr(),
            events,
            id_text.as_ptr(),
            id_text.len(),
        );
    }
}

fn id_text(id: raw::RedisModuleStreamID) -> String {
    let mut buffer = itoa::Buffer::new();
    let mut id_text = String::with_capacity(41);
    id_text.push_str(buffer.format(id.ms));
    id_text.push('-');
    id_text.push_str(buffer.format(id.seq));
    id_text
}

/// Appends one event to the coupon's stream, announces it as `XADD` would and replicates it
/// with its concrete ID. Fails, having changed nothing, if the stream takes no more entries.
fn append_event(
    ctx: Ctx,
    events: &OpenKey,
    events_name: RawString,
    entry: [RawString; 6],
) -> Result<raw::RedisModuleStreamID, CouponError> {
    let id = events.stream_add(entry).ok_or(CouponError::Corrupt(
        "the event stream accepts no more entries",
    ))?;
    notify(ctx, raw::REDISMODULE_NOTIFY_STREAM, c"xadd", events_name);
    replicate_xadd(ctx, events_name, id, &entry);
    Ok(id)
}

/// `XADD <events> <ms>-<seq> <fields…>`: the concrete ID makes the replica's entry identical.
fn replicate_xadd(
    ctx: Ctx,
    events: RawString,
    id: raw::RedisModuleStreamID,
    entry: &[RawString; 6],
) {
    let id_text = id_text(id);
    let [f0, v0, f1, v1, f2, v2] = *entry;
    unsafe {
        api!(RedisModule_Replicate)(
            ctx,
            c"XADD".as_ptr(),
            c"sbssssss".as_ptr(),
            events,
            id_text.as_ptr(),
            id_text.len(),
            f0,
            v0,
            f1,
            v1,
            f2,
            v2,
        );
    }
}
