//! Reply shapes, written straight to the client with the reply API (no intermediate values).

use super::ffi::{api, Ctx};
use crate::rules::{IssueOutcome, Page, RestoreOutcome};
use std::ffi::CString;
use std::os::raw::{c_char, c_long};

/// `[status, seq | nil, holders]`: reads as three lines in redis-cli. The status goes out as
/// a bulk string: the server copies and scans a simple string for line breaks first, which
/// cost this reply a quarter of a rejected click's time.
pub fn issue(ctx: Ctx, outcome: &IssueOutcome, holders: i64) {
    let status = outcome.status();
    unsafe {
        api!(RedisModule_ReplyWithArray)(ctx, 3);
        api!(RedisModule_ReplyWithStringBuffer)(ctx, status.as_ptr().cast(), status.len());
    }
    optional_integer(ctx, outcome.seq());
    integer(ctx, holders);
}

/// One element per pair: `restored` / `held`, or `[user-holds, seq]` / `[seq-taken, user]`.
pub fn restore(ctx: Ctx, outcomes: &[RestoreOutcome]) {
    let bulk = |bytes: &[u8]| unsafe {
        api!(RedisModule_ReplyWithStringBuffer)(ctx, bytes.as_ptr().cast(), bytes.len());
    };
    unsafe { api!(RedisModule_ReplyWithArray)(ctx, outcomes.len() as c_long) };
    for outcome in outcomes {
        let word = outcome.word().as_bytes();
        match outcome {
            RestoreOutcome::Restored | RestoreOutcome::Held => bulk(word),
            RestoreOutcome::UserHolds { seq } => {
                unsafe { api!(RedisModule_ReplyWithArray)(ctx, 2) };
                bulk(word);
                integer(ctx, *seq);
            }
            RestoreOutcome::SeqTaken { user } => {
                unsafe { api!(RedisModule_ReplyWithArray)(ctx, 2) };
                bulk(word);
                bulk(user);
            }
        }
    }
}

/// `[next cursor, complete (0/1), [stream, ...]]`.
pub fn changes(ctx: Ctx, page: &Page) {
    let next = page.next.to_string();
    unsafe {
        api!(RedisModule_ReplyWithArray)(ctx, 3);
        api!(RedisModule_ReplyWithStringBuffer)(ctx, next.as_ptr().cast(), next.len());
    }
    integer(ctx, i64::from(page.complete));
    unsafe {
        api!(RedisModule_ReplyWithArray)(ctx, page.streams.len() as c_long);
        for stream in &page.streams {
            api!(RedisModule_ReplyWithStringBuffer)(ctx, stream.as_ptr().cast(), stream.len());
        }
    }
}

pub fn integer(ctx: Ctx, value: i64) {
    unsafe { api!(RedisModule_ReplyWithLongLong)(ctx, value) };
}

/// An integer, or nil.
pub fn optional_integer(ctx: Ctx, value: Option<i64>) {
    match value {
        Some(value) => integer(ctx, value),
        None => unsafe {
            api!(RedisModule_ReplyWithNull)(ctx);
        },
    }
}

/// Field/value pairs: a map under RESP3, a flat array under RESP2.
pub fn map(ctx: Ctx, pairs: &[(&str, i64)]) {
    unsafe {
        api!(RedisModule_ReplyWithMap)(ctx, pairs.len() as c_long);
        for (field, value) in pairs {
            api!(RedisModule_ReplyWithStringBuffer)(
                ctx,
                field.as_ptr().cast::<c_char>(),
                field.len(),
            );
            api!(RedisModule_ReplyWithLongLong)(ctx, *value);
        }
    }
}

/// An error reply; `message` starts with its code. Line breaks and NULs (which a client
/// could smuggle in through an unknown option) would break the protocol, so they go.
pub fn error(ctx: Ctx, message: &str) {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let message = CString::new(clean).unwrap_or_else(|_| CString::from(c"ERR invalid error text"));
    unsafe { api!(RedisModule_ReplyWithError)(ctx, message.as_ptr()) };
}
