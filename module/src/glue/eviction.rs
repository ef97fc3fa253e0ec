//! The server's eviction policy as the rules see it: read at load and again whenever the
//! configuration changes, warned about in the server log, shown in `INFO coupon`.

use super::ffi::{api, Ctx};
use crate::rules::Eviction;
use redis_module::{raw, Context};
use std::os::raw::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The `maxmemory-policy` as last read, and what it means for coupon data.
struct Policy {
    name: String,
    eviction: Eviction,
}

static POLICY: Mutex<Option<Policy>> = Mutex::new(None);
/// Whether the policy puts coupon data at risk: the write path takes the lock only then.
static AT_RISK: AtomicBool = AtomicBool::new(false);

/// The eviction policy in force, as last read.
pub fn current() -> Eviction {
    if !AT_RISK.load(Ordering::Relaxed) {
        return Eviction::Never;
    }
    with_policy(|policy| policy.eviction.clone()).unwrap_or(Eviction::Never)
}

/// The policy's name and, when coupon data is at risk, the warning: for `INFO coupon`.
pub fn describe() -> (String, Option<String>) {
    with_policy(|policy| (policy.name.clone(), policy.eviction.warning()))
        .unwrap_or_else(|| ("unknown".to_string(), None))
}

fn with_policy<T>(read: impl FnOnce(&Policy) -> T) -> Option<T> {
    POLICY.lock().ok()?.as_ref().map(read)
}

/// Reads the policy now and again on every configuration change. Called from `on_load`.
pub fn watch(ctx: Ctx) {
    refresh(ctx);
    let event = raw::RedisModuleEvent {
        id: raw::REDISMODULE_EVENT_CONFIG,
        dataver: 1,
    };
    unsafe { api!(RedisModule_SubscribeToServerEvent)(ctx, event, Some(on_config_change)) };
}

unsafe extern "C" fn on_config_change(
    ctx: *mut raw::RedisModuleCtx,
    _event: raw::RedisModuleEvent,
    _subevent: u64,
    _data: *mut c_void,
) {
    refresh(ctx);
}

/// Reads `maxmemory-policy` and `maxmemory`, and logs a warning whenever coupon data is left
/// at risk (at load, and after any configuration change).
fn refresh(ctx: Ctx) {
    let context = Context::new(ctx);
    let config = |name: &str| {
        let reply = context.call("CONFIG", &["GET", name]).ok()?;
        match reply {
            redis_module::RedisValue::Array(pair) => String::try_from(pair.get(1)?.clone()).ok(),
            _ => None,
        }
    };
    let maxmemory = config("maxmemory").and_then(|bytes| bytes.parse::<u64>().ok());
    let (Some(name), Some(maxmemory)) = (config("maxmemory-policy"), maxmemory) else {
        context.log_warning("could not read maxmemory-policy and maxmemory");
        return;
    };
    let eviction = Eviction::of(&name, maxmemory);
    if let Some(warning) = eviction.warning() {
        context.log_warning(&warning);
    }
    AT_RISK.store(eviction != Eviction::Never, Ordering::Relaxed);
    if let Ok(mut slot) = POLICY.lock() {
        *slot = Some(Policy { name, eviction });
    }
}
