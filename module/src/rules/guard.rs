//! Whether a decided change may be written now. Reads answer whatever the server's state;
//! a write goes ahead only if it can be stored whole and cannot be silently undone.

use super::CouponError;

/// What eviction could do to coupon data under the server's `maxmemory-policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// Coupon keys are never evicted: `noeviction`, or a `volatile-*` policy (coupon keys
    /// have no TTL).
    Never,
    /// An `allkeys-*` policy without `maxmemory`: nothing is evicted until a limit is set.
    Armed { policy: String },
    /// An `allkeys-*` policy with `maxmemory` set: any coupon key may vanish.
    Possible { policy: String },
}

impl Eviction {
    pub fn of(policy: &str, maxmemory_bytes: u64) -> Eviction {
        if !policy.starts_with("allkeys-") {
            Eviction::Never
        } else if maxmemory_bytes == 0 {
            Eviction::Armed {
                policy: policy.to_string(),
            }
        } else {
            Eviction::Possible {
                policy: policy.to_string(),
            }
        }
    }

    /// Why coupon data is at risk, for the server log and `INFO coupon`; `None` when it is not.
    pub fn warning(&self) -> Option<String> {
        match self {
            Eviction::Never => None,
            Eviction::Armed { policy } => Some(format!(
                "maxmemory-policy is {policy}: coupon data must not live under an evicting \
                 policy; coupon writes will be refused once maxmemory is set (use noeviction \
                 or a volatile-* policy)"
            )),
            Eviction::Possible { policy } => Some(format!(
                "maxmemory-policy is {policy} with maxmemory set: coupon data must not live \
                 under an evicting policy, so coupon writes are refused (use noeviction or a \
                 volatile-* policy)"
            )),
        }
    }
}

/// The server's state when a write is about to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteConditions<'a> {
    /// Used memory is over `maxmemory` (what `deny-oom` commands are refused on).
    pub out_of_memory: bool,
    pub eviction: &'a Eviction,
}

/// Which of a coupon's two keys exist. A coupon is both or neither: one without the other
/// was evicted, deleted, or is on its way to another node, and writing would hand out a seq
/// without its event or restart the seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub coupon: bool,
    pub events: bool,
}

/// Decides whether a change may be written. `slot_is_moving` is asked only when a key is
/// missing: during a resharding the missing key is on the other node and the client retries.
pub fn guard_write(
    conditions: WriteConditions<'_>,
    presence: Presence,
    slot_is_moving: impl FnOnce() -> bool,
) -> Result<(), CouponError> {
    if conditions.out_of_memory {
        return Err(CouponError::OutOfMemory);
    }
    if let Eviction::Possible { policy } = conditions.eviction {
        return Err(CouponError::EvictingPolicy(policy.clone()));
    }
    if presence.coupon == presence.events {
        return Ok(());
    }
    if slot_is_moving() {
        return Err(CouponError::Migrating);
    }
    Err(if presence.coupon {
        CouponError::EventsMissing
    } else {
        CouponError::CouponMissing
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFE: WriteConditions<'static> = WriteConditions {
        out_of_memory: false,
        eviction: &Eviction::Never,
    };
    const BOTH: Presence = Presence {
        coupon: true,
        events: true,
    };

    fn unasked() -> bool {
        panic!("the slot was looked up although no key is missing")
    }

    #[test]
    fn a_whole_coupon_or_a_new_one_is_written() {
        assert_eq!(guard_write(SAFE, BOTH, unasked), Ok(()));
        let fresh = Presence {
            coupon: false,
            events: false,
        };
        assert_eq!(guard_write(SAFE, fresh, unasked), Ok(()));
    }

    #[test]
    fn a_missing_sibling_is_never_papered_over() {
        let no_events = Presence {
            coupon: true,
            events: false,
        };
        let no_coupon = Presence {
            coupon: false,
            events: true,
        };
        assert_eq!(
            guard_write(SAFE, no_events, || false),
            Err(CouponError::EventsMissing)
        );
        assert_eq!(
            guard_write(SAFE, no_coupon, || false),
            Err(CouponError::CouponMissing)
        );
        for presence in [no_events, no_coupon] {
            let refused = guard_write(SAFE, presence, || true);
            assert_eq!(refused, Err(CouponError::Migrating));
            assert_eq!(CouponError::Migrating.code(), "TRYAGAIN");
        }
    }

    #[test]
    fn out_of_memory_refuses_with_redis_own_error() {
        let full = WriteConditions {
            out_of_memory: true,
            ..SAFE
        };
        let refused = guard_write(full, BOTH, unasked);
        assert_eq!(refused, Err(CouponError::OutOfMemory));
        assert_eq!(CouponError::OutOfMemory.code(), "OOM");
    }

    #[test]
    fn only_an_armed_allkeys_policy_refuses_writes() {
        for (policy, maxmemory, refused) in [
            ("noeviction", 1 << 20, false),
            ("volatile-lru", 1 << 20, false),
            ("volatile-ttl", 1 << 20, false),
            ("allkeys-lru", 0, false),
            ("allkeys-lru", 1 << 20, true),
            ("allkeys-lfu", 1, true),
            ("allkeys-random", 1 << 30, true),
        ] {
            let eviction = Eviction::of(policy, maxmemory);
            let conditions = WriteConditions {
                out_of_memory: false,
                eviction: &eviction,
            };
            let result = guard_write(conditions, BOTH, unasked);
            assert_eq!(result.is_err(), refused, "{policy} {maxmemory}");
            assert_eq!(
                eviction.warning().is_some(),
                policy.starts_with("allkeys-"),
                "{policy}"
            );
        }
    }
}
