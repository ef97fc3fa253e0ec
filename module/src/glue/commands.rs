//! The four commands: parse, read, decide (in `rules`), write (through `write::apply`), reply.

use super::boundary::Argv;
use super::ffi::{now_ms, Ctx};
use super::reply;
use super::stats::{self, Stat};
use super::store::{KeyNames, RedisStore};
use super::write::{self, Target};
use crate::rules::{
    decide_issue, decide_revoke, parse_user, Counter, CouponError, CouponKeys, CouponStore,
    IssueArgs,
};

/// `COUPON.ISSUE <key> <user> <limit> [WINDOW <start-ms> <end-ms>]`
pub fn issue(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let args = argv.with_tail(IssueArgs::parse)?;
    let names = KeyNames::new(ctx, CouponKeys::derive(args.key)?);
    let store = RedisStore::open(ctx, &names)?;
    let (outcome, change) = decide_issue(&store, &args, now_ms)?;
    let holders = match change {
        Some(change) => {
            drop(store);
            write::apply(ctx, &target(argv, &names)?, &change)?
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
    let names = KeyNames::new(ctx, CouponKeys::derive(argv.bytes(1)?)?);
    let store = RedisStore::open(ctx, &names)?;
    let revoked = match decide_revoke(&store, user, now_ms)? {
        Some(change) => {
            drop(store);
            write::apply(ctx, &target(argv, &names)?, &change)?;
            stats::count(Stat::Revoked);
            1
        }
        None => 0,
    };
    reply::integer(ctx, revoked);
    Ok(())
}

/// `COUPON.CHECK <key> <user>`: the user's seq, or nil.
pub fn check(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let user = parse_user(argv.bytes(2)?)?;
    let names = KeyNames::new(ctx, CouponKeys::derive(argv.bytes(1)?)?);
    let seq = RedisStore::open(ctx, &names)?.holder_seq(user)?;
    reply::optional_integer(ctx, seq);
    Ok(())
}

/// `COUPON.INFO <key>`: holders now, revokes, the last seq and the stream's length.
pub fn info(ctx: Ctx, argv: &Argv<'_>) -> Result<(), CouponError> {
    let names = KeyNames::new(ctx, CouponKeys::derive(argv.bytes(1)?)?);
    let store = RedisStore::open(ctx, &names)?;
    let fields = [
        ("issued", store.holder_count()?),
        ("revoked", store.counter(Counter::Revoked)?),
        ("last_seq", store.counter(Counter::LastSeq)?),
        ("events", store.event_count()?),
    ];
    reply::map(ctx, &fields);
    Ok(())
}

fn target<'a>(argv: &Argv<'_>, names: &'a KeyNames<'a>) -> Result<Target<'a>, CouponError> {
    Ok(Target {
        coupon: argv.raw(1)?,
        user: argv.raw(2)?,
        names,
    })
}
