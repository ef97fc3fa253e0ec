//! The coupon persister: moves every issue/revoke event from the coupons' Redis streams into
//! MySQL (or SQLite), exactly once whatever crashes when.
//!
//! Stages, one module each: [`read`] → [`batch`] → [`commit`] → [`ack`] → [`trim`], driven
//! by [`daemon`]. Exactly once comes from three rules: the database write of a batch and its
//! checkpoint are one transaction and replaying it changes nothing (rows are keyed by
//! (coupon, seq)); `XACK` only after COMMIT; trimming only below what every group has
//! acknowledged and below the checkpoint.

pub mod ack;
pub mod backoff;
pub mod batch;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod db;
pub mod event;
pub mod metrics;
pub mod read;
pub mod reply;
pub mod trim;
