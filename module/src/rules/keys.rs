//! The data layout of one coupon. Every key lives in the hash slot of the coupon key, so a
//! coupon works unchanged on Redis Cluster and a Lua script can touch all of it at once.
//!
//! | key               | type   | content                                    |
//! |-------------------|--------|--------------------------------------------|
//! | `{K}:holders`     | hash   | user → seq, one field per current holder   |
//! | `{K}:meta`        | hash   | `last_seq`, `revoked`                      |
//! | `{K}:events`      | stream | `op coupon user seq ts` per issue/revoke   |
//!
//! `{K}` is the coupon key wrapped in a hash tag, or the key itself when it already has one
//! (`sale{42}` → `sale{42}:holders`).

use super::CouponError;

/// Field names of an event entry, in the order they are written.
pub const EVENT_FIELDS: [&str; 5] = ["op", "coupon", "user", "seq", "ts"];

/// The sibling keys of one coupon. Borrows the coupon key; each name costs one allocation,
/// made only when asked for (the rejecting paths need just the holders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponKeys<'a> {
    key: &'a [u8],
    /// Whether the key is wrapped in `{…}` (it has no hash tag of its own).
    wrap: bool,
}

impl<'a> CouponKeys<'a> {
    pub fn derive(key: &'a [u8]) -> Result<Self, CouponError> {
        if key.is_empty() {
            return Err(CouponError::EmptyKey);
        }
        let wrap = if has_hash_tag(key) {
            false
        } else if key.contains(&b'}') {
            // `{a}b}` would hash on "a", not on the whole key: the siblings would leave its slot.
            return Err(CouponError::KeyWithStrayBrace);
        } else {
            true
        };
        Ok(CouponKeys { key, wrap })
    }

    pub fn holders(&self) -> Vec<u8> {
        self.sibling(b":holders")
    }

    pub fn meta(&self) -> Vec<u8> {
        self.sibling(b":meta")
    }

    pub fn events(&self) -> Vec<u8> {
        self.sibling(b":events")
    }

    fn sibling(&self, suffix: &[u8]) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.key.len() + 2 + suffix.len());
        if self.wrap {
            name.push(b'{');
            name.extend_from_slice(self.key);
            name.push(b'}');
        } else {
            name.extend_from_slice(self.key);
        }
        name.extend_from_slice(suffix);
        name
    }
}

/// Redis Cluster's rule: the bytes between the first `{` and the next `}`, if non-empty.
fn has_hash_tag(key: &[u8]) -> bool {
    let Some(open) = key.iter().position(|b| *b == b'{') else {
        return false;
    };
    match key[open + 1..].iter().position(|b| *b == b'}') {
        Some(len) => len > 0,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(key: &str) -> Result<(String, String, String), CouponError> {
        let keys = CouponKeys::derive(key.as_bytes())?;
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        Ok((text(keys.holders()), text(keys.meta()), text(keys.events())))
    }

    #[test]
    fn wraps_a_plain_key_in_a_hash_tag() {
        assert_eq!(
            keys("sale").unwrap(),
            (
                "{sale}:holders".into(),
                "{sale}:meta".into(),
                "{sale}:events".into()
            )
        );
    }

    #[test]
    fn keeps_an_existing_hash_tag() {
        assert_eq!(keys("sale{42}").unwrap().0, "sale{42}:holders");
        assert_eq!(keys("{shop}:sale").unwrap().2, "{shop}:sale:events");
    }

    #[test]
    fn an_empty_tag_is_no_tag() {
        // "{}" hashes the whole key, and so would "{a{}b}"'s tag "a{" not: refuse it.
        assert_eq!(keys("a{}b"), Err(CouponError::KeyWithStrayBrace));
        assert_eq!(keys("open{only").unwrap().0, "{open{only}:holders");
    }

    #[test]
    fn refuses_keys_whose_wrapping_would_move_the_slot() {
        assert_eq!(keys("a}b"), Err(CouponError::KeyWithStrayBrace));
        assert_eq!(keys(""), Err(CouponError::EmptyKey));
    }

    #[test]
    fn is_binary_safe() {
        let keys = CouponKeys::derive(b"s\0\xff").unwrap();
        assert_eq!(keys.holders(), b"{s\0\xff}:holders");
    }
}
