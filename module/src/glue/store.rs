//! [`CouponStore`] over a coupon's Redis keys, read through the low-level key API.

use super::ffi::{Ctx, KeyKind, Mode, OpenKey, OwnedString, RawString};
use crate::rules::{parse_int, Counter, CouponError, CouponKeys, CouponStore};
use std::cell::OnceCell;

/// The names of one coupon's keys as Redis strings, each created on first use: the
/// rejecting paths only ever name the holders hash.
pub struct KeyNames<'a> {
    ctx: Ctx,
    keys: CouponKeys<'a>,
    holders: OnceCell<OwnedString>,
    meta: OnceCell<OwnedString>,
    events: OnceCell<OwnedString>,
}

impl<'a> KeyNames<'a> {
    pub fn new(ctx: Ctx, keys: CouponKeys<'a>) -> Self {
        KeyNames {
            ctx,
            keys,
            holders: OnceCell::new(),
            meta: OnceCell::new(),
            events: OnceCell::new(),
        }
    }

    pub fn holders(&self) -> RawString {
        self.name(&self.holders, CouponKeys::holders)
    }

    pub fn meta(&self) -> RawString {
        self.name(&self.meta, CouponKeys::meta)
    }

    pub fn events(&self) -> RawString {
        self.name(&self.events, CouponKeys::events)
    }

    fn name(
        &self,
        cell: &OnceCell<OwnedString>,
        derive: fn(&CouponKeys<'a>) -> Vec<u8>,
    ) -> RawString {
        cell.get_or_init(|| OwnedString::new(self.ctx, &derive(&self.keys)))
            .as_ptr()
    }
}

/// A read-only view of one coupon. Holds the holders hash open; the meta hash is opened
/// only when a counter is read, so the rejecting paths touch one key.
pub struct RedisStore<'n, 'k> {
    ctx: Ctx,
    names: &'n KeyNames<'k>,
    holders: OpenKey,
}

impl<'n, 'k> RedisStore<'n, 'k> {
    pub fn open(ctx: Ctx, names: &'n KeyNames<'k>) -> Result<Self, CouponError> {
        let holders = open_checked(ctx, names.holders(), Mode::Read, KeyKind::Hash)?;
        Ok(RedisStore {
            ctx,
            names,
            holders,
        })
    }

    /// Entries in the event stream (what the persister has not trimmed yet).
    pub fn event_count(&self) -> Result<i64, CouponError> {
        let events = open_checked(self.ctx, self.names.events(), Mode::Read, KeyKind::Stream)?;
        Ok(events.len() as i64)
    }
}

impl CouponStore for RedisStore<'_, '_> {
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
        let meta = open_checked(self.ctx, self.names.meta(), Mode::Read, KeyKind::Hash)?;
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
