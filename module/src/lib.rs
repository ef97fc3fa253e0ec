//! COUPON.*: first-come-first-served coupon issuance as one atomic step inside Redis.
//!
//! `rules` holds the whole algorithm in plain Rust (no Redis types, unit-tested);
//! `glue` is the thin layer that parses `argv`, reads through the low-level key API,
//! funnels every write through one replicating path and shapes replies.

// Unit tests exercise `rules` and the panic boundary; the rest of the glue runs only loaded.
#[cfg_attr(test, allow(dead_code))]
mod glue;
pub mod rules;

#[cfg(not(test))]
use glue::register::on_load;

// Unit tests run on the system allocator; only the loaded module allocates through Redis.
#[cfg(not(test))]
redis_module::redis_module! {
    name: "coupon",
    version: 1,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [],
    init: on_load,
}
