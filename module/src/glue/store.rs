//! [`CouponStore`] over a coupon's Redis keys, read through the low-level key API.

use super::ffi::{Ctx, KeyKind, Mode, OpenKey, OwnedString, RawString};
use crate::rules::{parse_int, Counter, CouponError, CouponKeys, CouponStore};

/// The names of one coupon's keys as Redis strings, created once per command.
pub struct KeyNames {
    pub holders: OwnedString,
    pub meta: OwnedString,
    pub events: OwnedString,
}

impl KeyNames {
    pub fn new(ctx: Ctx, keys: &CouponKeys) -> Self {
        KeyNames {
            holders: OwnedString::new(ctx, &keys.holders()),
            meta: OwnedString::new(ctx, &keys.meta()),
            events: OwnedString::new(ctx, &keys.events()),
        }
    }
}

/// A read-only view of one coupon. Holds the holders hash open; the meta hash is opened
/// only when a counter is read, so the rejecting paths touch one key.
pub struct RedisStore<'a> {
    ctx: Ctx,
    names: &'a KeyNames,
    holders: OpenKey,
}

impl<'a> RedisStore<'a> {
    pub fn open(ctx: Ctx, names: &'a KeyNames) -> Result<Self, CouponError> {
        let holders = open_checked(ctx, names.holders.as_ptr(), Mode::Read, KeyKind::Hash)?;
        Ok(RedisStore {
            ctx,
            names,
            holders,
        })
    }

    /// Entries in the event stream (what the persister has not trimmed yet).
    pub fn event_count(&self) -> Result<i64, CouponError> {
        let events = open_checked(
            self.ctx,
            self.names.events.as_ptr(),
            Mode::Read,
            KeyKind::Stream,
        )?;
        Ok(events.len() as i64)
    }
}

impl CouponStore for RedisStore<'_> {
    fn holder_seq(&self, user: &[u8]) -> Result<Option<i64>, CouponError> {
        let field = OwnedString::new(self.ctx, user);
        self.holders
            .hash_get(self.ctx, field.as_ptr())
            .map(|seq| {
                parse_int(seq.bytes())
                    .ok_or(CouponError::Corrupt("a holder's seq is not an integer"))
            })
            .transpose()
    }

    fn holder_count(&self) -> Result<i64, CouponError> {
        Ok(self.holders.len() as i64)
    }

    fn counter(&self, counter: Counter) -> Result<i64, CouponError> {
        let meta = open_checked(
            self.ctx,
            self.names.meta.as_ptr(),
            Mode::Read,
            KeyKind::Hash,
        )?;
        match meta.hash_get_cfield(self.ctx, counter.field()) {
            None => Ok(0),
            Some(value) => parse_int(value.bytes())
                .ok_or(CouponError::Corrupt("a meta counter is not an integer")),
        }
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
