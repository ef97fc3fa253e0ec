//! The coupon's key names, as the module derives them: every key in the coupon key's slot.

use crate::Error;

/// The three keys of one coupon, for reading its data directly (the README's data layout):
/// `{K}:holders` (hash user → seq), `{K}:meta` (hash), `{K}:events` (stream).
///
/// ```
/// let keys = coupon_sdk::CouponKeys::of(b"sale").unwrap();
/// assert_eq!(keys.events, b"{sale}:events");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponKeys {
    pub holders: Vec<u8>,
    pub meta: Vec<u8>,
    pub events: Vec<u8>,
}

impl CouponKeys {
    /// The keys of `coupon`, or [`Error::InvalidInput`] for a key the module refuses.
    pub fn of(coupon: &[u8]) -> Result<Self, Error> {
        let prefix = if needs_wrapping(coupon)? {
            [b"{", coupon, b"}"].concat()
        } else {
            coupon.to_vec()
        };
        let sibling = |suffix: &[u8]| [prefix.as_slice(), suffix].concat();
        Ok(CouponKeys {
            holders: sibling(b":holders"),
            meta: sibling(b":meta"),
            events: sibling(b":events"),
        })
    }
}

/// Checks a coupon key as the module does; `true` if its siblings wrap it in `{…}`.
pub(crate) fn needs_wrapping(coupon: &[u8]) -> Result<bool, Error> {
    if coupon.is_empty() {
        Err(Error::InvalidInput("coupon key must not be empty"))
    } else if has_hash_tag(coupon) {
        Ok(false)
    } else if coupon.contains(&b'}') {
        Err(Error::InvalidInput(
            "coupon key contains '}' but no hash tag; use a tag like 'sale{42}'",
        ))
    } else {
        Ok(true)
    }
}

/// Redis Cluster's rule: non-empty bytes between the first `{` and the next `}`.
fn has_hash_tag(key: &[u8]) -> bool {
    key.iter()
        .position(|b| *b == b'{')
        .and_then(|open| key[open + 1..].iter().position(|b| *b == b'}'))
        .is_some_and(|len| len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_module_layout() {
        let keys = CouponKeys::of(b"sale").unwrap();
        assert_eq!(keys.holders, b"{sale}:holders");
        assert_eq!(keys.meta, b"{sale}:meta");
        assert_eq!(keys.events, b"{sale}:events");
        assert_eq!(
            CouponKeys::of(b"shop{7}").unwrap().events,
            b"shop{7}:events"
        );
        assert_eq!(CouponKeys::of(b"a{b").unwrap().holders, b"{a{b}:holders");
    }

    #[test]
    fn refuses_keys_the_module_refuses() {
        assert!(CouponKeys::of(b"").is_err());
        assert!(CouponKeys::of(b"a}b").is_err());
        assert!(CouponKeys::of(b"a{}b").is_err());
    }
}
