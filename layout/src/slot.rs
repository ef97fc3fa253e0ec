//! Redis Cluster's key → hash slot function (CRC16/XMODEM of the hash tag, or of the key).

use crate::key::hash_tag;

/// Slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// The cluster hash slot of `key`, as Redis computes it.
///
/// ```
/// use coupon_layout::hash_slot;
/// assert_eq!(hash_slot(b"foo"), 12182); // CLUSTER KEYSLOT foo
/// assert_eq!(hash_slot(b"shop{7}:sale"), hash_slot(b"7"));
/// ```
pub fn hash_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(*byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"sale"), 1974);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        // An empty tag is no tag: the whole key hashes.
        assert_eq!(hash_slot(b"foo{}{bar}"), 8363);
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }
}
