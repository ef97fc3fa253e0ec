//! The test harness: real `redis-server` / `valkey-server` processes with the coupon module,
//! each in its own temp dir on a free loopback port, killed when dropped. The servers, MariaDB
//! and the persister come from `coupon-testkit` (its local backend); the load generators and
//! the per-flavor test macro live here.

pub mod cpu;
pub mod figures;
pub mod http;
pub mod load;
pub mod replicas;
mod workload;

pub use coupon_testkit::{
    assert_persisted, assert_redis_matches, db_rows, differences, event_streams, events_key,
    http_service_path, key_in_slot, module_path, pending, persister_path, query_rows, Cluster,
    DbRow, Flavor, Ledger, Load, MariaDb, Persister, Server, ServerBuilder, TestDb,
};
pub use workload::mixed_workload;

/// Runs each named test once per server flavor: `fn name(flavor: Flavor)` becomes the tests
/// `on_redis::name`, `on_valkey::name` and `on_redis8::name`, so one suite covers Redis 7,
/// Valkey 8 and Redis 8.
#[macro_export]
macro_rules! on_every_server {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(#[test]
            fn $name() {
                super::$name($crate::Flavor::Redis)
            })*
        }
        mod on_valkey {
            $(#[test]
            fn $name() {
                super::$name($crate::Flavor::Valkey)
            })*
        }
        mod on_redis8 {
            $(#[test]
            fn $name() {
                super::$name($crate::Flavor::Redis8)
            })*
        }
    };
}
