//! What the rules need to read. Redis implements it over the coupon's keys; tests over maps.

use super::CouponError;
use std::ffi::CStr;

/// A counter kept in the coupon's meta hash, named by its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// The highest seq ever issued; seqs are never reused.
    LastSeq,
    /// How many holders gave their coupon back, in total.
    Revoked,
}

impl Counter {
    /// The meta hash field; a C string because that is what the hash API takes by name.
    pub fn field(self) -> &'static CStr {
        match self {
            Counter::LastSeq => c"last_seq",
            Counter::Revoked => c"revoked",
        }
    }
}

/// Read access to one coupon's state.
pub trait CouponStore {
    /// The seq `user` holds, if they hold the coupon.
    fn holder_seq(&self, user: &[u8]) -> Result<Option<i64>, CouponError>;
    /// How many users hold the coupon now.
    fn holder_count(&self) -> Result<i64, CouponError>;
    /// A counter's value; 0 before it was first written.
    fn counter(&self, counter: Counter) -> Result<i64, CouponError>;
}

#[cfg(test)]
pub use memory::MemoryStore;

#[cfg(test)]
mod memory {
    use super::*;
    use crate::rules::Change;
    use std::collections::HashMap;

    /// The state of one coupon in plain maps, with the same write semantics as Redis.
    #[derive(Debug, Default)]
    pub struct MemoryStore {
        pub holders: HashMap<Vec<u8>, i64>,
        pub last_seq: i64,
        pub revoked: i64,
        pub events: Vec<(&'static str, Vec<u8>, i64, i64)>,
    }

    impl MemoryStore {
        pub fn apply(&mut self, change: &Change<'_>) {
            match *change {
                Change::Grant { user, seq, at_ms } => {
                    self.holders.insert(user.to_vec(), seq);
                    self.last_seq = seq;
                    self.events.push(("issue", user.to_vec(), seq, at_ms));
                }
                Change::Return {
                    user,
                    seq,
                    revoked,
                    at_ms,
                } => {
                    self.holders.remove(user);
                    self.revoked = revoked;
                    self.events.push(("revoke", user.to_vec(), seq, at_ms));
                }
            }
        }
    }

    impl CouponStore for MemoryStore {
        fn holder_seq(&self, user: &[u8]) -> Result<Option<i64>, CouponError> {
            Ok(self.holders.get(user).copied())
        }

        fn holder_count(&self) -> Result<i64, CouponError> {
            Ok(self.holders.len() as i64)
        }

        fn counter(&self, counter: Counter) -> Result<i64, CouponError> {
            Ok(match counter {
                Counter::LastSeq => self.last_seq,
                Counter::Revoked => self.revoked,
            })
        }
    }
}
