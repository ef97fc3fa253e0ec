//! Counters behind `INFO coupon`: what the commands answered since the server started.

use super::ffi::api;
use crate::rules::IssueOutcome;
use redis_module::raw;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy)]
pub enum Stat {
    Issued,
    Duplicate,
    SoldOut,
    NotStarted,
    Ended,
    Revoked,
    Errors,
}

const NAMES: [(Stat, &std::ffi::CStr); 7] = [
    (Stat::Issued, c"issued"),
    (Stat::Duplicate, c"duplicate"),
    (Stat::SoldOut, c"sold_out"),
    (Stat::NotStarted, c"not_started"),
    (Stat::Ended, c"ended"),
    (Stat::Revoked, c"revoked"),
    (Stat::Errors, c"errors"),
];

static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

pub fn count(stat: Stat) {
    COUNTS[stat as usize].fetch_add(1, Ordering::Relaxed);
}

impl From<&IssueOutcome> for Stat {
    fn from(outcome: &IssueOutcome) -> Self {
        match outcome {
            IssueOutcome::Issued { .. } => Stat::Issued,
            IssueOutcome::Duplicate { .. } => Stat::Duplicate,
            IssueOutcome::SoldOut => Stat::SoldOut,
            IssueOutcome::NotStarted => Stat::NotStarted,
            IssueOutcome::Ended => Stat::Ended,
        }
    }
}

/// The module's INFO section, `coupon_stats`.
pub unsafe extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    if api!(RedisModule_InfoAddSection)(ctx, c"stats".as_ptr()) != raw::REDISMODULE_OK as c_int {
        return;
    }
    for (stat, name) in NAMES {
        let value = COUNTS[stat as usize].load(Ordering::Relaxed);
        api!(RedisModule_InfoAddFieldULongLong)(ctx, name.as_ptr(), value);
    }
}
