//! [`CouponStore`] over the coupon key, read through the low-level key API.

use super::ffi::{Ctx, KeyKind, Mode, OpenKey, OwnedString, RawString};
use super::words::words;
use crate::rules::{parse_int, CouponError, CouponStore};
use coupon_layout::{holders_in, LAST_SEQ_FIELD};
use std::collections::HashMap;

/// A read-only view of one coupon: its key, opened for reading (so a rejected click marks
/// nothing modified for `WATCH` or client-side caching).
pub struct RedisStore<'a> {
    ctx: Ctx,
    coupon: OpenKey,
    /// The user the command names, as the server string it arrived in: looking them up
    /// needs no copy.
    asked: Option<(&'a [u8], RawString)>,
}

impl<'a> RedisStore<'a> {
    /// Opens the coupon key, which must be a hash or missing.
    pub fn open(ctx: Ctx, coupon: RawString) -> Result<Self, CouponError> {
        Ok(RedisStore {
            ctx,
            coupon: open_checked(ctx, coupon, Mode::Read, KeyKind::Hash)?,
            asked: None,
        })
    }

    /// The user argument of the command, so `holder_seq` can pass the server its own string.
    pub fn asking_about(mut self, user: &'a [u8], raw: RawString) -> Self {
        self.asked = Some((user, raw));
        self
    }

    pub fn exists(&self) -> bool {
        self.coupon.kind() != KeyKind::Empty
    }

    /// Seq → the user holding it, from one pass over the coupon hash (the last-seq field
    /// aside): O(holders).
    pub fn owners(&self) -> Result<HashMap<i64, Vec<u8>>, CouponError> {
        let mut owners = HashMap::with_capacity(self.coupon.len());
        let mut corrupt = false;
        self.coupon.scan_hash(|field, value| {
            if field == LAST_SEQ_FIELD {
                return;
            }
            match parse_int(value) {
                Some(seq) => {
                    owners.insert(seq, field.to_vec());
                }
                None => corrupt = true,
            }
        });
        if corrupt {
            return Err(CouponError::Corrupt("a holder's seq is not an integer"));
        }
        Ok(owners)
    }

    fn field(&self, bytes: &[u8]) -> Result<Option<OwnedString>, CouponError> {
        Ok(match self.asked {
            Some((user, raw)) if std::ptr::eq(user, bytes) => self.coupon.hash_get(self.ctx, raw),
            _ => self
                .coupon
                .hash_get(self.ctx, OwnedString::new(self.ctx, bytes).as_ptr()),
        })
    }
}

impl CouponStore for RedisStore<'_> {
    fn holder_seq(&self, user: &[u8]) -> Result<Option<i64>, CouponError> {
        self.field(user)?
            .map(|seq| {
                parse_int(seq.bytes())
                    .ok_or(CouponError::Corrupt("a holder's seq is not an integer"))
            })
            .transpose()
    }

    fn holder_count(&self) -> Result<i64, CouponError> {
        Ok(holders_in(self.coupon.len() as u64) as i64)
    }

    fn last_seq(&self) -> Result<i64, CouponError> {
        if !self.exists() {
            return Ok(0);
        }
        let last = self.coupon.hash_get(self.ctx, words()?.last_seq.as_ptr());
        let last = last.ok_or(CouponError::Corrupt(
            "the coupon hash has no last-seq field",
        ))?;
        parse_int(last.bytes()).ok_or(CouponError::Corrupt("the last seq is not an integer"))
    }
}

/// Opens a key that must be missing or of `kind`; anything else is WRONGTYPE.
pub fn open_checked(
    ctx: Ctx,
    name: RawString,
    mode: Mode,
    kind: KeyKind,
) -> Result<OpenKey, CouponError> {
    let key = OpenKey::open(ctx, name, mode);
    match key.kind() {
        KeyKind::Empty => Ok(key),
        found if found == kind => Ok(key),
        _ => Err(CouponError::WrongType),
    }
}
