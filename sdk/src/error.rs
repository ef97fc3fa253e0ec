//! Errors, told apart by what the caller should do about them.

use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input was refused before anything was sent (empty user, inverted window, …).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// No answer within the timeout. The command may still have run: retrying `issue` is
    /// safe (it answers `AlreadyIssued` with the same seq if the first attempt got through).
    #[error("no answer in time{}", .0.map(|limit| format!(" ({limit:?})")).unwrap_or_default())]
    Timeout(Option<Duration>),
    /// The connection to Redis failed or dropped.
    #[error("connection to Redis failed: {0}")]
    Connection(#[source] redis::RedisError),
    /// Redis answered with an error (WRONGTYPE, OOM, READONLY, …).
    #[error("Redis refused the command: {0}")]
    Server(#[source] redis::RedisError),
    /// The write happened on the primary (its answer is `answer`), but fewer replicas than
    /// asked for ([`ReplicaAck`](crate::ReplicaAck)) confirmed having it within the timeout.
    /// It may still reach them, or be lost if the primary fails first. Retrying is safe: a
    /// retried `issue` answers `AlreadyIssued` with the same seq (or issues once, if the
    /// write was lost with a failover) and waits for the replicas again.
    #[error("written on the primary, but {acked} of {wanted} replicas confirmed it in time")]
    NotReplicated {
        answer: crate::Answer,
        acked: u32,
        wanted: u32,
    },
    /// Redis answered something this client does not understand.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        if error.is_timeout() {
            // The connection's own response timeout, whose length this client does not know.
            Error::Timeout(None)
        } else if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
        {
            Error::Connection(error)
        } else {
            Error::Server(error)
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
