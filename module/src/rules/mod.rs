//! The coupon rules: argument grammar, the issue/revoke/restore decisions, when a write may go
//! ahead, and the index of changed streams.
//!
//! Nothing here touches Redis. The decisions read through [`CouponStore`] and return a
//! [`Change`] for the caller to apply; [`guard_write`] says whether the server and the coupon's
//! keys are in a state to take it. The same rules are tested against an in-memory store and
//! served against Redis keys. Key names and fields come from `coupon_layout`.

mod args;
pub mod changes;
mod decide;
mod error;
mod guard;
mod restore;
mod store;

pub use args::{parse_int, parse_user, IssueArgs, Window};
pub use changes::{ChangeIndex, ChangesArgs, Cursor, Page};
pub use decide::{decide_issue, decide_revoke, Change, IssueOutcome};
pub use error::CouponError;
pub use guard::{guard_write, Eviction, Presence, WriteConditions};
pub use restore::{decide_restore, RestoreArgs, RestoreChange, RestoreDecision, RestoreOutcome};
pub use store::CouponStore;

#[cfg(test)]
pub use store::MemoryStore;
