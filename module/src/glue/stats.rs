//! Counters behind `INFO coupon`: what the commands answered since the server started.

use super::ffi::api;
use super::{changes, eviction};
use crate::rules::IssueOutcome;
use redis_module::raw;
use std::ffi::CString;
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
    /// Holders put back by COUPON.RESTORE.
    Restored,
    Errors,
}

const NAMES: [(Stat, &std::ffi::CStr); 8] = [
    (Stat::Issued, c"issued"),
    (Stat::Duplicate, c"duplicate"),
    (Stat::SoldOut, c"sold_out"),
    (Stat::NotStarted, c"not_started"),
    (Stat::Ended, c"ended"),
    (Stat::Revoked, c"revoked"),
    (Stat::Restored, c"restored"),
    (Stat::Errors, c"errors"),
];

static COUNTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

pub fn count(stat: Stat) {
    count_many(stat, 1);
}

pub fn count_many(stat: Stat, n: u64) {
    COUNTS[stat as usize].fetch_add(n, Ordering::Relaxed);
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

/// The module's INFO sections: `coupon_stats` (answers since start), `coupon_eviction`
/// (whether the server's eviction policy puts coupon data at risk, and the warning if so) and
/// `coupon_changes` (the change index's epoch and size).
pub unsafe extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, for_crash_report: c_int) {
    let ok = raw::REDISMODULE_OK as c_int;
    if api!(RedisModule_InfoAddSection)(ctx, c"stats".as_ptr()) != ok {
        return;
    }
    for (stat, name) in NAMES {
        let value = COUNTS[stat as usize].load(Ordering::Relaxed);
        api!(RedisModule_InfoAddFieldULongLong)(ctx, name.as_ptr(), value);
    }
    if api!(RedisModule_InfoAddSection)(ctx, c"eviction".as_ptr()) != ok {
        return;
    }
    let (policy, warning) = eviction::describe();
    let text = |value: &str| CString::new(value.replace(['\r', '\n'], " ")).unwrap_or_default();
    api!(RedisModule_InfoAddFieldCString)(
        ctx,
        c"eviction_maxmemory_policy".as_ptr(),
        text(&policy).as_ptr(),
    );
    let safe = if warning.is_some() { c"no" } else { c"yes" };
    api!(RedisModule_InfoAddFieldCString)(ctx, c"eviction_safe".as_ptr(), safe.as_ptr());
    if let Some(warning) = warning {
        api!(RedisModule_InfoAddFieldCString)(
            ctx,
            c"eviction_warning".as_ptr(),
            text(&warning).as_ptr(),
        );
    }
    // A crash report may be written while the index is locked: it goes without this section.
    if for_crash_report != 0 || api!(RedisModule_InfoAddSection)(ctx, c"changes".as_ptr()) != ok {
        return;
    }
    if let Some((epoch, streams)) = changes::describe() {
        api!(RedisModule_InfoAddFieldCString)(
            ctx,
            c"changes_epoch".as_ptr(),
            text(&epoch).as_ptr(),
        );
        api!(RedisModule_InfoAddFieldULongLong)(ctx, c"changes_streams".as_ptr(), streams);
    }
}
