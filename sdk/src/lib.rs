//! The async Rust client for first-come-first-served coupon issuance.
//!
//! [`Coupons`] issues, revokes and checks coupons on a Redis server that has the `coupon`
//! module loaded — or, on servers that cannot load modules, through a bundled Lua script that
//! leaves exactly the same data ([`Backend`]), so services and the persister work unchanged on
//! either and a deployment can move between them without migrating anything.
//!
//! Part of the coupon project (Redis module, persister, testkit); its README covers the
//! commands, errors, replica acknowledgement and Redis Cluster in full.
//!
//! ```no_run
//! # async fn run() -> coupon_sdk::Result<()> {
//! use coupon_sdk::{Coupons, Outcome};
//! use std::time::Duration;
//!
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//! let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?)
//!     .await?
//!     .with_timeout(Duration::from_millis(250));
//! let outcome = coupons.issue("sale:2026-11-22", "user-42", 1_000).await?;
//! if let Some(seq) = outcome.seq() {
//!     println!("user-42 holds coupon #{seq}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! On Redis Cluster, every task of a service shares one [`Cluster`], which follows `-ASK`
//! and retries `-TRYAGAIN` itself so that calls keep being answered through a resharding:
//!
//! ```no_run
//! # async fn run() -> coupon_sdk::Result<()> {
//! use coupon_sdk::{Cluster, Coupons};
//!
//! let coupons = Coupons::connect(Cluster::connect(["redis://10.0.0.1:7000/"]).await?).await?;
//! # Ok(())
//! # }
//! ```

mod backend;
mod client;
mod cluster;
mod error;
mod keys;
mod local;
mod outcome;

pub use backend::Backend;
pub use client::{Coupons, ACK_CHANNEL_SUFFIX};
pub use cluster::{Cluster, ClusterRetry, DEFAULT_MAX_IN_FLIGHT};
pub use error::{Error, Result};
pub use keys::CouponKeys;
pub use local::{
    LocalAnswers, LocalOptions, LocalStats, DEFAULT_CLOCK_MARGIN, DEFAULT_MAX_HOLDERS,
    DEFAULT_MAX_WAIT,
};
pub use outcome::{Answer, Answered, AnsweredBy, CouponInfo, Outcome, ReplicaAck, Restore, Window};

/// The Lua script of the [`Backend::Script`] backend, for inspection or preloading with
/// `SCRIPT LOAD`.
pub const SCRIPT_SOURCE: &str = include_str!("coupon.lua");
