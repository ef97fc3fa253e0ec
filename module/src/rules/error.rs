/// Everything a COUPON command can refuse. The text is the reply the client sees after
/// its [`code`](CouponError::code), so it names the argument at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("wrong number of arguments")]
    Arity,
    #[error("coupon key must not be empty")]
    EmptyKey,
    #[error(
        "coupon key contains '}}' but no hash tag; use a tag like 'sale{{42}}' or drop the brace"
    )]
    KeyWithStrayBrace,
    #[error("user must not be empty")]
    EmptyUser,
    #[error("limit must be an integer from 0 to 9223372036854775807")]
    InvalidLimit,
    #[error("syntax error: WINDOW takes <start-unix-ms> <end-unix-ms>")]
    WindowArity,
    #[error("WINDOW bounds must be non-negative integers (unix milliseconds)")]
    InvalidWindowBound,
    #[error("WINDOW start must be before its end")]
    InvertedWindow,
    #[error("syntax error: unknown option '{0}' (expected WINDOW)")]
    UnknownOption(String),
    #[error("syntax error: {0} given more than once")]
    DuplicateOption(&'static str),
    #[error("Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("coupon data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("coupon has issued its last possible seq")]
    SeqExhausted,
}

impl CouponError {
    /// The error code Redis clients dispatch on (`ERR`, `WRONGTYPE`).
    pub fn code(&self) -> &'static str {
        match self {
            CouponError::WrongType => "WRONGTYPE",
            _ => "ERR",
        }
    }
}
