//! The argument grammar of `COUPON.ISSUE <key> <user> <limit> [WINDOW <start-ms> <end-ms>]`.

use super::CouponError;

/// A sale window in unix milliseconds: open from `start_ms` (inclusive) to `end_ms` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    pub fn new(start_ms: i64, end_ms: i64) -> Result<Self, CouponError> {
        if start_ms < 0 || end_ms < 0 {
            return Err(CouponError::InvalidWindowBound);
        }
        if start_ms >= end_ms {
            return Err(CouponError::InvertedWindow);
        }
        Ok(Window { start_ms, end_ms })
    }

    pub fn has_started(&self, now_ms: i64) -> bool {
        now_ms >= self.start_ms
    }

    pub fn has_ended(&self, now_ms: i64) -> bool {
        now_ms >= self.end_ms
    }
}

/// A parsed `COUPON.ISSUE` call. Borrows from the command's arguments: parsing allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueArgs<'a> {
    pub key: &'a [u8],
    pub user: &'a [u8],
    pub limit: i64,
    pub window: Option<Window>,
}

impl<'a> IssueArgs<'a> {
    /// Parses the arguments after the command name. Redis has already checked the
    /// minimum arity (`key user limit`), but the rules do not rely on it.
    pub fn parse(args: &[&'a [u8]]) -> Result<Self, CouponError> {
        let [key, user, limit, options @ ..] = args else {
            return Err(CouponError::Arity);
        };
        let limit = parse_int(limit)
            .filter(|limit| *limit >= 0)
            .ok_or(CouponError::InvalidLimit)?;
        if user.is_empty() {
            return Err(CouponError::EmptyUser);
        }
        let mut window = None;
        let mut rest = options;
        while let [option, tail @ ..] = rest {
            if !option.eq_ignore_ascii_case(b"WINDOW") {
                return Err(CouponError::UnknownOption(
                    String::from_utf8_lossy(option).into_owned(),
                ));
            }
            let [start, end, tail @ ..] = tail else {
                return Err(CouponError::WindowArity);
            };
            if window.is_some() {
                return Err(CouponError::DuplicateOption("WINDOW"));
            }
            let bound = |raw: &[u8]| parse_int(raw).ok_or(CouponError::InvalidWindowBound);
            window = Some(Window::new(bound(start)?, bound(end)?)?);
            rest = tail;
        }
        Ok(IssueArgs {
            key,
            user,
            limit,
            window,
        })
    }
}

/// Parses a user of `COUPON.REVOKE` / `COUPON.CHECK`.
pub fn parse_user(user: &[u8]) -> Result<&[u8], CouponError> {
    if user.is_empty() {
        Err(CouponError::EmptyUser)
    } else {
        Ok(user)
    }
}

/// A signed 64-bit decimal exactly as Redis' own integer arguments take it (`string2ll`):
/// optional '-', no leading zeros, no '+', no spaces, and no "-0".
pub fn parse_int(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, raw),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    // Accumulated negative, so i64::MIN parses too.
    let mut value: i64 = 0;
    for digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<IssueArgs<'static>, CouponError> {
        let args: Vec<&'static [u8]> = args
            .iter()
            .map(|a| &*Box::leak(a.as_bytes().to_vec().into_boxed_slice()))
            .collect();
        IssueArgs::parse(&args)
    }

    #[test]
    fn parses_the_plain_form() {
        let args = parse(&["sale", "alice", "1000"]).unwrap();
        assert_eq!(args.key, b"sale");
        assert_eq!(args.user, b"alice");
        assert_eq!(args.limit, 1000);
        assert_eq!(args.window, None);
    }

    #[test]
    fn accepts_limits_zero_to_i64_max() {
        assert_eq!(parse(&["k", "u", "0"]).unwrap().limit, 0);
        assert_eq!(
            parse(&["k", "u", "9223372036854775807"]).unwrap().limit,
            i64::MAX
        );
    }

    #[test]
    fn rejects_bad_limits() {
        for bad in [
            "-1",
            "9223372036854775808",
            "1.5",
            "",
            "ten",
            "+5",
            " 5",
            "5 ",
            "0x10",
            "007",
            "00",
            "-0",
            "-00",
            "-",
        ] {
            assert_eq!(
                parse(&["k", "u", bad]),
                Err(CouponError::InvalidLimit),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_integers_as_redis_does() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"10"), Some(10));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            "007",
            "-0",
            "+5",
            " 5",
            "5 ",
            "",
            "-",
            "1e3",
            "9223372036854775808",
        ] {
            assert_eq!(parse_int(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_window_bounds_redis_would_refuse() {
        for bad in ["007", "-0", "+5", " 5"] {
            assert_eq!(
                parse(&["k", "u", "1", "WINDOW", bad, "9"]),
                Err(CouponError::InvalidWindowBound),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_an_empty_user() {
        assert_eq!(parse(&["k", "", "1"]), Err(CouponError::EmptyUser));
    }

    #[test]
    fn parses_a_window_in_any_case() {
        let args = parse(&["k", "u", "1", "window", "100", "200"]).unwrap();
        assert_eq!(
            args.window,
            Some(Window {
                start_ms: 100,
                end_ms: 200
            })
        );
    }

    #[test]
    fn rejects_malformed_windows() {
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW"]),
            Err(CouponError::WindowArity)
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "1"]),
            Err(CouponError::WindowArity)
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "a", "2"]),
            Err(CouponError::InvalidWindowBound)
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "-1", "2"]),
            Err(CouponError::InvalidWindowBound)
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "2", "2"]),
            Err(CouponError::InvertedWindow)
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "3", "2"]),
            Err(CouponError::InvertedWindow)
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "1", "2", "WINDOW", "1", "2"]),
            Err(CouponError::DuplicateOption("WINDOW"))
        );
        assert_eq!(
            parse(&["k", "u", "1", "WINDOW", "1", "2", "extra"]),
            Err(CouponError::UnknownOption("extra".into()))
        );
    }

    #[test]
    fn rejects_unknown_options() {
        assert_eq!(
            parse(&["k", "u", "1", "TTL", "5"]),
            Err(CouponError::UnknownOption("TTL".into()))
        );
    }

    #[test]
    fn rejects_too_few_arguments() {
        assert_eq!(parse(&["k", "u"]), Err(CouponError::Arity));
    }

    #[test]
    fn window_is_half_open() {
        let window = Window::new(100, 200).unwrap();
        assert!(!window.has_started(99));
        assert!(window.has_started(100));
        assert!(!window.has_ended(199));
        assert!(window.has_ended(200));
    }
}
