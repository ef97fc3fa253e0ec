//! The coupon rules: argument grammar, key layout and the issue/revoke decisions.
//!
//! Nothing here touches Redis. The decisions read through [`CouponStore`] and return a
//! [`Change`] for the caller to apply, so the same rules are tested against an
//! in-memory store and served against Redis keys.

mod args;
mod decide;
mod error;
mod keys;
mod store;

pub use args::{parse_int, parse_user, IssueArgs, Window};
pub use decide::{decide_issue, decide_revoke, Change, IssueOutcome};
pub use error::CouponError;
pub use keys::{CouponKeys, EVENT_FIELDS};
pub use store::{Counter, CouponStore};

#[cfg(test)]
pub use store::MemoryStore;
