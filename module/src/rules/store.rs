//! What the rules need to read. Redis implements it over the coupon key; tests over maps.

use super::CouponError;

/// Read access to one coupon's state.
pub trait CouponStore {
    /// The seq `user` holds, if they hold the coupon.
    fn holder_seq(&self, user: &[u8]) -> Result<Option<i64>, CouponError>;
    /// How many users hold the coupon now.
    fn holder_count(&self) -> Result<i64, CouponError>;
    /// The highest seq ever issued (0 before the first); seqs are never reused.
    fn last_seq(&self) -> Result<i64, CouponError>;
}

#[cfg(test)]
pub use memory::MemoryStore;

#[cfg(test)]
mod memory {
    use super::*;
    use crate::rules::Change;
    use coupon_layout::Op;
    use std::collections::HashMap;

    /// The state of one coupon in plain maps, with the same write semantics as Redis.
    #[derive(Debug, Default)]
    pub struct MemoryStore {
        pub holders: HashMap<Vec<u8>, i64>,
        pub last_seq: i64,
        pub events: Vec<(Op, Vec<u8>, i64)>,
    }

    impl MemoryStore {
        pub fn apply(&mut self, change: &Change<'_>) {
            match *change {
                Change::Grant { user, seq } => {
                    self.holders.insert(user.to_vec(), seq);
                    self.last_seq = seq;
                    self.events.push((Op::Issue, user.to_vec(), seq));
                }
                Change::Return { user, seq } => {
                    self.holders.remove(user);
                    self.events.push((Op::Revoke, user.to_vec(), seq));
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

        fn last_seq(&self) -> Result<i64, CouponError> {
            Ok(self.last_seq)
        }
    }
}
