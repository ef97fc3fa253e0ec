//! Which keys can name a coupon, and the name of each coupon's event stream.

use std::fmt;

/// A key that can name a coupon: its event stream can share its hash slot.
///
/// A key with a hash tag (`shop{7}:sale`) keeps it: the stream is `shop{7}:sale:events`. A key
/// without one (`sale`) gets its whole name as the stream's tag: `sale:events{sale}`. Either
/// way the stream's name starts with the coupon key, so an ACL pattern like `~sale*` covers
/// both. Braces that do not form a hash tag (`a}b`, `a{b`, `a{}b`) are refused: as a tag, the
/// key's bytes would hash differently from the key itself.
///
/// ```
/// use coupon_layout::CouponKey;
/// assert_eq!(CouponKey::new(b"sale").unwrap().events_key(), b"sale:events{sale}");
/// assert_eq!(CouponKey::new(b"shop{7}:sale").unwrap().events_key(), b"shop{7}:sale:events");
/// assert!(CouponKey::new(b"a}b").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponKey<'a> {
    key: &'a [u8],
    tagged: bool,
}

/// Why a key cannot name a coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    /// `{` or `}` outside a non-empty hash tag.
    StrayBrace,
}

impl KeyError {
    /// What is wrong, in the words a user reads in the error reply.
    pub const fn message(self) -> &'static str {
        match self {
            KeyError::Empty => "coupon key must not be empty",
            KeyError::StrayBrace => {
                "coupon key has a '{' or '}' that is not part of a hash tag, so its event \
                 stream could not share its hash slot; use a tag like 'sale{42}' or no braces"
            }
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for KeyError {}

const EVENTS_SUFFIX: &[u8] = b":events";
/// What joins an untagged key to its copy in the stream's tag: `K:events{K}`.
const EVENTS_OPEN: &[u8] = b":events{";

impl<'a> CouponKey<'a> {
    pub fn new(key: &'a [u8]) -> Result<Self, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if hash_tag(key).is_some() {
            return Ok(CouponKey { key, tagged: true });
        }
        if key.iter().any(|b| *b == b'{' || *b == b'}') {
            return Err(KeyError::StrayBrace);
        }
        Ok(CouponKey { key, tagged: false })
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.key
    }

    /// The name of the coupon's event stream, in the coupon key's hash slot.
    pub fn events_key(&self) -> Vec<u8> {
        let mut name = Vec::with_capacity(2 * self.key.len() + EVENTS_SUFFIX.len() + 2);
        name.extend_from_slice(self.key);
        name.extend_from_slice(EVENTS_SUFFIX);
        if !self.tagged {
            name.push(b'{');
            name.extend_from_slice(self.key);
            name.push(b'}');
        }
        name
    }

    /// The coupon whose event stream `stream` is, if it is one: the inverse of
    /// [`events_key`](Self::events_key), so a stream no coupon would have is never taken
    /// for one (`app:events` is not: coupon `app`'s stream is `app:events{app}`).
    ///
    /// ```
    /// use coupon_layout::CouponKey;
    /// let coupon = CouponKey::of_events_key(b"sale:events{sale}").unwrap();
    /// assert_eq!(coupon.as_bytes(), b"sale");
    /// assert!(CouponKey::of_events_key(b"app:events").is_none());
    /// ```
    pub fn of_events_key(stream: &'a [u8]) -> Option<Self> {
        // Compared piece by piece, without building the name: the module asks this of every
        // stream key a keyspace event names, on the main thread.
        match stream.strip_suffix(b"}") {
            // `K:events{K}`, K untagged: K, then ":events{", then K again.
            Some(body) => {
                let doubled = body.len().checked_sub(EVENTS_OPEN.len())?;
                if doubled % 2 != 0 {
                    return None;
                }
                let (key, rest) = body.split_at(doubled / 2);
                let (open, inner) = rest.split_at(EVENTS_OPEN.len());
                if open != EVENTS_OPEN || inner != key {
                    return None;
                }
                // Untagged: no brace at all (one pass, where `new` would take two).
                let untagged = !key.is_empty() && !key.iter().any(|b| *b == b'{' || *b == b'}');
                untagged.then_some(CouponKey { key, tagged: false })
            }
            // `K:events`, K tagged.
            None => {
                let key = stream.strip_suffix(EVENTS_SUFFIX)?;
                CouponKey::new(key).ok().filter(|coupon| coupon.tagged)
            }
        }
    }
}

/// Redis Cluster's hash tag: the bytes between the first `{` and the next `}`, if non-empty.
///
/// ```
/// use coupon_layout::hash_tag;
/// assert_eq!(hash_tag(b"sale:events{sale}"), Some(&b"sale"[..]));
/// assert_eq!(hash_tag(b"sale"), None);
/// ```
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let rest = &key[open + 1..];
    let len = rest.iter().position(|b| *b == b'}')?;
    (len > 0).then(|| &rest[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_slot;

    fn events(key: &str) -> Result<String, KeyError> {
        let name = CouponKey::new(key.as_bytes())?.events_key();
        Ok(String::from_utf8(name).expect("utf-8 in, utf-8 out"))
    }

    #[test]
    fn a_plain_key_lends_its_name_as_the_streams_tag() {
        assert_eq!(events("sale").as_deref(), Ok("sale:events{sale}"));
        assert_eq!(
            events("x:events").as_deref(),
            Ok("x:events:events{x:events}")
        );
    }

    #[test]
    fn a_tagged_key_keeps_its_tag() {
        assert_eq!(events("{sale}").as_deref(), Ok("{sale}:events"));
        assert_eq!(events("shop{7}:sale").as_deref(), Ok("shop{7}:sale:events"));
        assert_eq!(events("{a}b}").as_deref(), Ok("{a}b}:events"));
    }

    #[test]
    fn refuses_braces_outside_a_tag() {
        for key in ["a}b", "a{b", "a{}b", "{}", "}{"] {
            assert_eq!(events(key), Err(KeyError::StrayBrace), "{key}");
        }
        assert_eq!(events(""), Err(KeyError::Empty));
    }

    #[test]
    fn the_stream_lives_in_the_coupons_slot() {
        for key in [
            "sale",
            "{sale}",
            "shop{7}:sale",
            "x:events",
            "{a}b}",
            "s\u{0}\u{ff}",
        ] {
            let coupon = CouponKey::new(key.as_bytes()).expect("a coupon key");
            assert_eq!(
                hash_slot(&coupon.events_key()),
                hash_slot(key.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn different_coupons_never_share_a_stream() {
        // `sale` and `{sale}` are two coupons (two keys); so are their streams.
        assert_ne!(events("sale"), events("{sale}"));
        assert_ne!(events("sale:events{sale}"), events("sale"));
    }

    #[test]
    fn streams_name_their_coupon_and_nothing_else() {
        for key in [
            "sale",
            "{sale}",
            "shop{7}:sale",
            "x:events",
            "a:events{b",
            "q",
        ] {
            if let Ok(coupon) = CouponKey::new(key.as_bytes()) {
                let stream = coupon.events_key();
                assert_eq!(
                    CouponKey::of_events_key(&stream).map(|c| c.as_bytes()),
                    Some(key.as_bytes()),
                    "{key}"
                );
            }
        }
        for foreign in [
            "app:events",
            "events",
            ":events",
            "sale:events{other}",
            "{x}",
            "sale:events{sale",
            "a:events{a}x",
            "}",
        ] {
            assert!(
                CouponKey::of_events_key(foreign.as_bytes()).is_none(),
                "{foreign}"
            );
        }
    }

    /// Every name over a small alphabet up to 7 bytes: a stream is a coupon's exactly when
    /// building that coupon's stream name gives it back.
    #[test]
    fn recognising_a_stream_agrees_with_building_its_name() {
        fn by_building(stream: &[u8]) -> Option<&[u8]> {
            let candidates = [
                stream.strip_suffix(EVENTS_SUFFIX),
                stream
                    .strip_suffix(b"}")
                    .and_then(|body| body.get(..body.len().saturating_sub(8) / 2)),
            ];
            candidates
                .into_iter()
                .flatten()
                .find(|key| CouponKey::new(key).is_ok_and(|coupon| coupon.events_key() == stream))
        }
        let alphabet = [b'a', b'{', b'}', b':'];
        let mut names: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..7 {
            let longer: Vec<Vec<u8>> = names
                .iter()
                .filter(|name| name.len() == names.last().map_or(0, Vec::len))
                .flat_map(|name| {
                    alphabet.iter().map(move |b| {
                        let mut next = name.clone();
                        next.push(*b);
                        next
                    })
                })
                .collect();
            names.extend(longer);
        }
        let mut streams = 0;
        for key in &names {
            for stream in [
                [&key[..], b":events"].concat(),
                [&key[..], b":events{", &key[..], b"}"].concat(),
                [&key[..], b":events{", &key[..]].concat(),
                key.clone(),
            ] {
                let found = CouponKey::of_events_key(&stream).map(|c| c.as_bytes());
                assert_eq!(found, by_building(&stream), "{stream:?}");
                streams += usize::from(found.is_some());
            }
        }
        assert!(streams > 1000, "the names include many streams: {streams}");
    }

    #[test]
    fn is_binary_safe() {
        let coupon = CouponKey::new(b"s\0\xff").expect("binary keys are keys");
        assert_eq!(coupon.events_key(), b"s\0\xff:events{s\0\xff}");
    }
}
