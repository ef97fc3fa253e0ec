//! The five commands: parse, read, decide (in `rules`), write (through `write::apply`), reply.

use super::boundary::Argv;
use super::ffi::{now_ms, Ctx, KeyKind, Mode, OwnedString};
use super::reply;
use super::stats::{self, Stat};
use super::store::{open_checked, RedisStore};
use super::write::{self, Restoring, Target};
use crate::rules::{
    decide_issue, decide_restore, decide_revoke, parse_user, CouponError, CouponStore, IssueArgs,
    RestoreArgs,
};
use coupon_layout::{revoked_of, CouponKey};

/// `COUPON.ISSUE <key> <user> <limit> [WINDOW <start-ms> <end-ms>]`
pub fn issue(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let args = argv.with_tail(IssueArgs::parse)?;
    let key = CouponKey::new(args.key)?;
    let store = RedisStore::open(ctx, argv.raw(1)?)?.asking_about(args.user, argv.raw(2)?);
    let (outcome, change) = decide_issue(&store, &args, now_ms)?;
    let holders = match change {
        Some(change) => {
            let target = target(argv, key, store.exists())?;
            drop(store);
            write::apply(ctx, &target, &change)?
        }
        None => store.holder_count()?,
    };
    stats::count(Stat::from(&outcome));
    reply::issue(ctx, &outcome, holders);
    Ok(())
}

/// `COUPON.REVOKE <key> <user>`: 1 if the user gave the coupon back now, 0 if not a holder.
pub fn revoke(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let user = parse_user(argv.bytes(2)?)?;
    let key = CouponKey::new(argv.bytes(1)?)?;
    let store = RedisStore::open(ctx, argv.raw(1)?)?.asking_about(user, argv.raw(2)?);
    let revoked = match decide_revoke(&store, user)? {
        Some(change) => {
            let target = target(argv, key, store.exists())?;
            drop(store);
            write::apply(ctx, &target, &change)?;
            stats::count(Stat::Revoked);
            1
        }
        None => 0,
    };
    reply::integer(ctx, revoked);
    Ok(())
}

/// `COUPON.RESTORE <key> <floor> [<user> <seq> ...]`: one answer per pair (see
/// `rules::decide_restore`); the holders restored and the raised last seq are written as one.
pub fn restore(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let args = argv.with_tail(RestoreArgs::parse)?;
    let key = CouponKey::new(args.key)?;
    let store = RedisStore::open(ctx, argv.raw(1)?)?;
    let decision = decide_restore(&store, &args, || store.owners())?;
    let mut holders = Vec::with_capacity(decision.change.restored.len());
    for index in &decision.change.restored {
        // Pair i is arguments 3 + 2i (user) and 4 + 2i (seq), the command name at 0.
        holders.push([argv.raw(3 + 2 * index)?, argv.raw(4 + 2 * index)?]);
    }
    let restoring = Restoring {
        coupon: argv.raw(1)?,
        key,
        coupon_exists: store.exists(),
        holders,
        last_seq: decision.change.last_seq,
    };
    drop(store);
    write::apply_restore(ctx, &restoring)?;
    stats::count_many(Stat::Restored, restoring.holders.len() as u64);
    reply::restore(ctx, &decision.outcomes);
    Ok(())
}

/// `COUPON.CHECK <key> <user>`: the user's seq, or nil.
pub fn check(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let user = parse_user(argv.bytes(2)?)?;
    CouponKey::new(argv.bytes(1)?)?;
    let store = RedisStore::open(ctx, argv.raw(1)?)?.asking_about(user, argv.raw(2)?);
    reply::optional_integer(ctx, store.holder_seq(user)?);
    Ok(())
}

/// `COUPON.INFO <key>`: holders now, revokes, the last seq and the stream's length.
pub fn info(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let key = CouponKey::new(argv.bytes(1)?)?;
    let store = RedisStore::open(ctx, argv.raw(1)?)?;
    let (holders, last_seq) = (store.holder_count()?, store.last_seq()?);
    let events_name = OwnedString::new(ctx, &key.events_key());
    let events = open_checked(ctx, events_name.as_ptr(), Mode::Read, KeyKind::Stream)?.len();
    let fields = [
        ("issued", holders),
        (
            "revoked",
            revoked_of(last_seq as u64, holders as u64) as i64,
        ),
        ("last_seq", last_seq),
        ("events", events as i64),
    ];
    reply::map(ctx, &fields);
    Ok(())
}

fn target<'a>(
    argv: &Argv<'_>,
    key: CouponKey<'a>,
    coupon_exists: bool,
) -> Result<Target<'a>, CouponError> {
    Ok(Target {
        coupon: argv.raw(1)?,
        key,
        coupon_exists,
        user: argv.raw(2)?,
    })
}
