//! The data layout of one coupon in Redis, in one place: the module writes it, the SDK's Lua
//! fallback writes the same, the persister reads it. No dependencies, no Redis types.
//!
//! A coupon is two keys in one hash slot:
//!
//! | key                 | type   | content                                                  |
//! |---------------------|--------|----------------------------------------------------------|
//! | the coupon key `K`  | hash   | user → seq per holder, and the last seq under the field `""` |
//! | its event stream    | stream | `op user seq` per issue/revoke; the entry ID holds the time |
//!
//! The coupon key is the key the commands name, so everything Redis decides per key (cluster
//! routing, `WATCH`, client-side caching, ACL key patterns) sees the state the rules depend on.
//! The empty field can never be a user (an empty user is refused), and the revoke total is
//! derived: every seq ever issued is either held or was revoked.
//!
//! ```
//! use coupon_layout::{hash_slot, CouponKey};
//!
//! let key = CouponKey::new(b"sale:2026-11-22").expect("a key that can name a coupon");
//! let stream = key.events_key();
//! assert_eq!(hash_slot(key.as_bytes()), hash_slot(&stream));
//! assert_eq!(CouponKey::of_events_key(&stream), Some(key));
//! ```
//!
//! Part of the coupon project (Redis module, SDK, persister); its README covers the rest.

mod event;
mod key;
mod slot;

pub use event::{EventField, Op, EVENT_FIELDS};
pub use key::{hash_tag, CouponKey, KeyError};
pub use slot::hash_slot;

/// The field of the coupon hash that holds the last seq issued. No user can be empty.
pub const LAST_SEQ_FIELD: &[u8] = b"";

/// How many users hold the coupon, from the length of its hash: every field but the last seq.
///
/// ```
/// // HLEN 4: three holders and the last seq; of seqs 1..=5, two were given back.
/// assert_eq!(coupon_layout::holders_in(4), 3);
/// assert_eq!(coupon_layout::revoked_of(5, 3), 2);
/// assert_eq!(coupon_layout::holders_in(0), 0); // no such coupon
/// ```
pub fn holders_in(hash_len: u64) -> u64 {
    hash_len.saturating_sub(1)
}

/// How many coupons were given back: every seq issued is either held or was revoked.
pub fn revoked_of(last_seq: u64, holders: u64) -> u64 {
    last_seq.saturating_sub(holders)
}
