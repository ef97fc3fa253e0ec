//! The coupon's key names, from the layout the module writes (`coupon_layout`).

use crate::Error;
use coupon_layout::CouponKey;

/// The two keys of one coupon, for reading its data directly (the README's data layout):
/// the coupon key itself (a hash: user → seq, and the last seq under the field `""`) and its
/// event stream, in the same hash slot.
///
/// ```
/// let keys = coupon_sdk::CouponKeys::of(b"sale").unwrap();
/// assert_eq!(keys.coupon, b"sale");
/// assert_eq!(keys.events, b"sale:events{sale}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponKeys {
    pub coupon: Vec<u8>,
    pub events: Vec<u8>,
}

impl CouponKeys {
    /// The keys of `coupon`, or [`Error::InvalidInput`] for a key the module refuses.
    pub fn of(coupon: &[u8]) -> Result<Self, Error> {
        let key = coupon_key(coupon)?;
        Ok(CouponKeys {
            coupon: coupon.to_vec(),
            events: key.events_key(),
        })
    }
}

/// Checks a coupon key as the module does.
pub(crate) fn coupon_key(coupon: &[u8]) -> Result<CouponKey<'_>, Error> {
    CouponKey::new(coupon).map_err(|refused| Error::InvalidInput(refused.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_layouts_keys() {
        let keys = CouponKeys::of(b"shop{7}").unwrap();
        assert_eq!(keys.coupon, b"shop{7}");
        assert_eq!(keys.events, b"shop{7}:events");
    }

    #[test]
    fn refuses_keys_the_module_refuses() {
        assert!(CouponKeys::of(b"").is_err());
        assert!(CouponKeys::of(b"a}b").is_err());
        assert!(CouponKeys::of(b"a{b").is_err());
        assert!(CouponKeys::of(b"a{}b").is_err());
    }
}
