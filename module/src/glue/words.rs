//! The field names and op words of the layout as server strings, created once at load so no
//! command allocates them.

use super::ffi::{RawString, StaticString};
use crate::rules::CouponError;
use coupon_layout::{EventField, Op, LAST_SEQ_FIELD};
use std::sync::OnceLock;

pub struct Words {
    /// The coupon hash's last-seq field.
    pub last_seq: StaticString,
    pub op: StaticString,
    pub user: StaticString,
    pub seq: StaticString,
    pub issue: StaticString,
    pub revoke: StaticString,
    pub restore: StaticString,
}

static WORDS: OnceLock<Words> = OnceLock::new();

/// Creates the words; called from `on_load` before any command can run.
pub fn init() {
    let word = |text: &str| StaticString::new(text.as_bytes());
    WORDS.get_or_init(|| Words {
        last_seq: StaticString::new(LAST_SEQ_FIELD),
        op: word(EventField::Op.name()),
        user: word(EventField::User.name()),
        seq: word(EventField::Seq.name()),
        issue: word(Op::Issue.word()),
        revoke: word(Op::Revoke.word()),
        restore: word(Op::Restore.word()),
    });
}

pub fn words() -> Result<&'static Words, CouponError> {
    WORDS
        .get()
        .ok_or(CouponError::Corrupt("module not initialised"))
}

impl Words {
    pub fn op(&self, op: Op) -> RawString {
        match op {
            Op::Issue => self.issue.as_ptr(),
            Op::Revoke => self.revoke.as_ptr(),
            Op::Restore => self.restore.as_ptr(),
        }
    }
}
