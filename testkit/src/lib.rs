//! Real servers for integration tests of services that issue coupons: Redis with the coupon
//! module, a MySQL/MariaDB database and the persister draining Redis into it.
//!
//! Two backends behind one API, [`Stack`]:
//!
//! - [`Backend::Containers`] (the default; feature `containers`, on by default): Docker
//!   containers through `testcontainers`, from the project's images (`coupon-redis`,
//!   `coupon-persister`, built from `docker/`) and `mysql:8`. See [`containers`] for the images
//!   and how to point them elsewhere.
//! - [`Backend::Local`]: local processes — `redis-server` from PATH with the module built from
//!   this workspace, MariaDB in a temp dir, the persister binary — each on a free loopback
//!   port, killed when dropped. The project's own test suite runs on these ([`Server`],
//!   [`Cluster`], [`MariaDb`], [`Persister`] give it finer control). Inside the project's
//!   workspace the kit builds the module and the persister itself; a copy from crates.io has
//!   neither beside it, so set `COUPON_MODULE` and `COUPON_PERSISTER_BIN` to built ones
//!   ([`module_path()`], [`persister_path()`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), coupon_testkit::Error> {
//! use coupon_sdk::Outcome;
//!
//! // Redis with the module in a container, and a client for it: one call.
//! let (_stack, coupons) = coupon_testkit::coupons().await?;
//! assert_eq!(coupons.issue("sale", "alice", 10).await?, Outcome::Issued { seq: 1 });
//! # Ok(())
//! # }
//! ```

mod build;
mod cluster;
#[cfg(feature = "containers")]
pub mod containers;
mod mariadb;
mod persister;
mod server;
mod stack;

pub use build::{http_service_path, module_path, persister_path};
pub use cluster::{key_in_slot, Cluster, ClusterBuilder};
pub use mariadb::MariaDb;
pub use persister::{
    assert_persisted, assert_redis_matches, db_rows, differences, event_streams, events_key,
    pending, query_rows, DbRow, Ledger, Load, Persister, TestDb,
};
pub use server::{free_port, Flavor, Server, ServerBuilder};
pub use stack::{coupons, persisted_differences, Backend, Client, Error, Stack, StackBuilder};
