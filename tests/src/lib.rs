//! The test harness: real `redis-server` / `valkey-server` processes with the coupon module,
//! each in its own temp dir on a free loopback port, killed when dropped.

mod build;
mod cluster;
pub mod http;
pub mod load;
mod mariadb;
mod persister;
mod server;
mod workload;

pub use build::{http_service_path, module_path, persister_path};
pub use cluster::Cluster;
pub use mariadb::MariaDb;
pub use persister::{
    assert_persisted, assert_redis_matches, db_rows, differences, events_key, pending, query_rows,
    DbRow, Ledger, Load, Persister, TestDb,
};
pub use server::{Flavor, Server, ServerBuilder};
pub use workload::mixed_workload;

/// Runs each named test once per server flavor: `fn name(flavor: Flavor)` becomes the tests
/// `on_redis::name` and `on_valkey::name`, so one suite covers Redis 7 and Valkey 8.
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
    };
}
