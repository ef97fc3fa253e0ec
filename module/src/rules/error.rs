use coupon_layout::KeyError;

/// Everything a COUPON command can refuse. The text is the reply the client sees after
/// its [`code`](CouponError::code), so it names the argument or the state at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("wrong number of arguments")]
    Arity,
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("user must not be empty")]
    EmptyUser,
    #[error("limit must be an integer from 0 to 9223372036854775807")]
    InvalidLimit,
    #[error("floor must be an integer from 0 to 9223372036854775807")]
    InvalidFloor,
    #[error("seq must be an integer from 1 to 9223372036854775807")]
    InvalidSeq,
    #[error("user '{0}' is named twice in one restore; nothing was changed")]
    RepeatedUser(String),
    #[error("seq {0} is named twice in one restore; nothing was changed")]
    RepeatedSeq(i64),
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
    /// Redis' own words for a write refused at `maxmemory`.
    #[error("command not allowed when used memory > 'maxmemory'.")]
    OutOfMemory,
    #[error(
        "coupon writes are refused under maxmemory-policy {0} with maxmemory set: eviction \
         could erase a coupon and hand its seqs out again; use noeviction or a volatile-* policy"
    )]
    EvictingPolicy(String),
    #[error(
        "the coupon exists but its event stream is missing (evicted or deleted), so nothing \
         was changed; restore the stream, or delete the coupon to start it over"
    )]
    EventsMissing,
    #[error(
        "the coupon's event stream exists but the coupon is missing (evicted or deleted), so \
         nothing was changed; restore the coupon, or delete the stream to start it over"
    )]
    CouponMissing,
    #[error(
        "invalid cursor '{0}': expected 0 or a cursor COUPON.CHANGES returned \
         (<epoch>-<tick>)"
    )]
    InvalidCursor(String),
    #[error(
        "invalid cursor '{0}': it is ahead of this node's change index, which never returned it"
    )]
    CursorAhead(String),
    #[error("COUNT must be an integer from 1 to 10000")]
    InvalidCount,
    #[error("syntax error: COUNT takes <n>")]
    CountArity,
    #[error("syntax error: unknown option '{0}' (expected COUNT)")]
    UnknownChangesOption(String),
    #[error("the coupon's keys are being migrated between nodes; retry")]
    Migrating,
}

impl CouponError {
    /// The error code Redis clients dispatch on (cluster clients retry `TRYAGAIN`).
    pub fn code(&self) -> &'static str {
        match self {
            CouponError::WrongType => "WRONGTYPE",
            CouponError::OutOfMemory => "OOM",
            CouponError::Migrating => "TRYAGAIN",
            _ => "ERR",
        }
    }
}
