//! The coupon persister: moves every issue/revoke event from the coupons' Redis streams into
//! MySQL (or SQLite), exactly once whatever crashes when.
//!
//! The [`pipeline`]'s stages, one module each: read → batch → commit → ack; beside it,
//! [`maintain`]ance finds streams, samples them, claims and trims; the [`changes`] feed says
//! which streams to read (from the module's change index); [`policy`] holds the
//! retry and shutdown rules every stage follows; [`daemon`] starts it all. Exactly once
//! comes from four rules: a batch's rows are one transaction and replaying it changes
//! nothing (rows are keyed by (coupon, seq)); `XACK` only after COMMIT; [`checkpoint`]s only
//! after COMMIT, apart, and only raised; trimming only below what every group has
//! acknowledged and below the checkpoint.

pub mod changes;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod db;
pub mod event;
pub mod health;
pub mod http;
pub mod logging;
pub mod maintain;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod repair;
pub mod reply;
pub mod topology;
