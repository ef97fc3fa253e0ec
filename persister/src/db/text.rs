//! How a coupon, user or stream name is bound: as text when it is UTF-8, as bytes otherwise.
//! Names are bytes in Redis, but nearly always text; bound as text, SQLite stores them as
//! text, so `WHERE coupon = 'sale'` finds them (a BLOB never equals a string there). MySQL's
//! VARBINARY columns hold the same bytes either way. Every statement binds names through
//! [`Name`], so a name is always stored and looked up the same way.

use sqlx::any::{Any, AnyTypeInfo};
use sqlx::encode::{Encode, IsNull};
use sqlx::error::BoxDynError;
use sqlx::{Database, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Name<'a> {
    pub fn of(bytes: &'a [u8]) -> Name<'a> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Name::Text(text),
            Err(_) => Name::Bytes(bytes),
        }
    }
}

impl Type<Any> for Name<'_> {
    fn type_info() -> AnyTypeInfo {
        <str as Type<Any>>::type_info()
    }

    fn compatible(_: &AnyTypeInfo) -> bool {
        true
    }
}

impl<'q> Encode<'q, Any> for Name<'q> {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        match self {
            Name::Text(text) => <&str as Encode<'q, Any>>::encode_by_ref(text, buf),
            Name::Bytes(bytes) => <&[u8] as Encode<'q, Any>>::encode_by_ref(bytes, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_when_utf8() {
        assert_eq!(Name::of(b"sale"), Name::Text("sale"));
        assert_eq!(Name::of("é".as_bytes()), Name::Text("é"));
        assert_eq!(Name::of(b"\x00bin\xff"), Name::Bytes(b"\x00bin\xff"));
    }
}
