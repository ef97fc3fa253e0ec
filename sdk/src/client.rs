//! [`Coupons`]: the client services call.

use crate::backend::{Backend, Call, Dialect, IssueArgs};
use crate::keys::{coupon_key, CouponKeys};
use crate::{CouponInfo, Error, Outcome, Result, Window};
use coupon_layout::{holders_in, revoked_of, LAST_SEQ_FIELD};
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Value};
use std::time::Duration;

/// Issues, revokes and checks coupons over any async redis-rs connection: a
/// [`MultiplexedConnection`](redis::aio::MultiplexedConnection) (thousands of concurrent calls
/// pipelined over one socket), a [`ConnectionManager`](redis::aio::ConnectionManager)
/// (reconnects by itself) or a [`ClusterConnection`](redis::cluster_async::ClusterConnection).
///
/// Cloning is cheap: clones share the connection.
///
/// ```no_run
/// # async fn run() -> coupon_sdk::Result<()> {
/// use coupon_sdk::{Coupons, Outcome};
///
/// let client = redis::Client::open("redis://127.0.0.1/").map_err(coupon_sdk::Error::from)?;
/// let connection = client.get_multiplexed_async_connection().await?;
/// let coupons = Coupons::connect(connection).await?;
/// match coupons.issue("sale:2026-11-22", "alice", 1_000).await? {
///     Outcome::Issued { seq } => println!("alice got coupon #{seq}"),
///     Outcome::AlreadyIssued { seq } => println!("alice already has #{seq}"),
///     Outcome::SoldOut => println!("too late"),
///     Outcome::NotStarted | Outcome::Ended => println!("not on sale now"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Coupons<C> {
    connection: C,
    backend: Backend,
    timeout: Option<Duration>,
}

impl<C> std::fmt::Debug for Coupons<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coupons")
            .field("backend", &self.backend)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C> Coupons<C>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    /// Uses the module if the server has it loaded, else the Lua script. Asks the server once.
    pub async fn connect(connection: C) -> Result<Self> {
        let mut probe = connection.clone();
        let found: Vec<Value> = redis::cmd("COMMAND")
            .arg("INFO")
            .arg("coupon.issue")
            .query_async(&mut probe)
            .await?;
        let backend = match found.first() {
            Some(Value::Nil) | None => Backend::Script,
            Some(_) => Backend::Module,
        };
        Ok(Self::with_backend(connection, backend))
    }

    /// Uses `backend` without asking the server.
    pub fn with_backend(connection: C, backend: Backend) -> Self {
        Coupons {
            connection,
            backend,
            timeout: None,
        }
    }

    /// The same client, giving up on each call after `timeout` with [`Error::Timeout`].
    ///
    /// A timed-out `issue` may still have run; calling it again is safe and answers
    /// [`Outcome::AlreadyIssued`] with the same seq if it did.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Coupons {
            timeout: Some(timeout),
            ..self.clone()
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Gives `user` one coupon of `coupon` if fewer than `limit` users hold it.
    ///
    /// The answer is [`Outcome::AlreadyIssued`] whenever the user holds it already, so a
    /// retried or double-clicked call never issues twice.
    pub async fn issue(
        &self,
        coupon: impl AsRef<[u8]>,
        user: impl AsRef<[u8]>,
        limit: u64,
    ) -> Result<Outcome> {
        self.issue_with(coupon.as_ref(), user.as_ref(), limit, None)
            .await
    }

    /// Like [`issue`](Self::issue), and only while `window` is open by the server's clock.
    pub async fn issue_in_window(
        &self,
        coupon: impl AsRef<[u8]>,
        user: impl AsRef<[u8]>,
        limit: u64,
        window: Window,
    ) -> Result<Outcome> {
        if window.start_ms >= window.end_ms {
            return Err(Error::InvalidInput("window start must be before its end"));
        }
        if window.end_ms > i64::MAX as u64 {
            return Err(Error::InvalidInput(
                "window end is past the year 292 million",
            ));
        }
        let window = Some((window.start_ms, window.end_ms));
        self.issue_with(coupon.as_ref(), user.as_ref(), limit, window)
            .await
    }

    async fn issue_with(
        &self,
        coupon: &[u8],
        user: &[u8],
        limit: u64,
        window: Option<(u64, u64)>,
    ) -> Result<Outcome> {
        let user = non_empty(user)?;
        if limit > i64::MAX as u64 {
            return Err(Error::InvalidInput(
                "limit must be at most 9223372036854775807",
            ));
        }
        coupon_key(coupon)?;
        let args = IssueArgs {
            coupon,
            user,
            limit,
            window,
        };
        let (status, seq, _holders): (String, Option<u64>, u64) =
            self.send(self.backend.issue(&args)?).await?;
        let seq = || seq.ok_or_else(|| Error::UnexpectedReply(format!("{status} without a seq")));
        Ok(match status.as_str() {
            "ISSUED" => Outcome::Issued { seq: seq()? },
            "DUPLICATE" => Outcome::AlreadyIssued { seq: seq()? },
            "SOLD_OUT" => Outcome::SoldOut,
            "NOT_STARTED" => Outcome::NotStarted,
            "ENDED" => Outcome::Ended,
            other => return Err(Error::UnexpectedReply(format!("unknown status {other:?}"))),
        })
    }

    /// Takes the coupon back from `user`: `true` if they held it (the stock returns; the seq
    /// is never reused), `false` if they did not (nothing changes).
    pub async fn revoke(&self, coupon: impl AsRef<[u8]>, user: impl AsRef<[u8]>) -> Result<bool> {
        let (coupon, user) = (coupon.as_ref(), non_empty(user.as_ref())?);
        coupon_key(coupon)?;
        let revoked: i64 = self.send(self.backend.revoke(coupon, user)?).await?;
        Ok(revoked == 1)
    }

    /// The seq `user` holds, if any.
    pub async fn check(
        &self,
        coupon: impl AsRef<[u8]>,
        user: impl AsRef<[u8]>,
    ) -> Result<Option<u64>> {
        let (coupon, user) = (coupon.as_ref(), non_empty(user.as_ref())?);
        coupon_key(coupon)?;
        // Plain data: the same read serves both backends.
        let mut command = redis::cmd("HGET");
        command.arg(coupon).arg(user);
        self.query(&command).await
    }

    /// The coupon's counters.
    pub async fn info(&self, coupon: impl AsRef<[u8]>) -> Result<CouponInfo> {
        let keys = CouponKeys::of(coupon.as_ref())?;
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN").arg(&keys.coupon);
        pipe.cmd("HGET").arg(&keys.coupon).arg(LAST_SEQ_FIELD);
        pipe.cmd("XLEN").arg(&keys.events);
        let mut connection = self.connection.clone();
        let query = pipe.query_async(&mut connection);
        let (fields, last_seq, events): (u64, Option<u64>, u64) =
            self.within_timeout(query).await?;
        let (issued, last_seq) = (holders_in(fields), last_seq.unwrap_or(0));
        Ok(CouponInfo {
            issued,
            revoked: revoked_of(last_seq, issued),
            last_seq,
            events,
        })
    }

    async fn send<T: FromRedisValue>(&self, call: Call) -> Result<T> {
        match (self.query(&call.command).await, call.on_noscript) {
            (Err(Error::Server(e)), Some(fallback)) if e.code() == Some("NOSCRIPT") => {
                self.query(&fallback).await
            }
            (result, _) => result,
        }
    }

    async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T> {
        let mut connection = self.connection.clone();
        let query = command.query_async(&mut connection);
        self.within_timeout(query).await
    }

    async fn within_timeout<T>(
        &self,
        query: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match self.timeout {
            None => Ok(query.await?),
            Some(limit) => match tokio::time::timeout(limit, query).await {
                Ok(result) => Ok(result?),
                Err(_) => Err(Error::Timeout(Some(limit))),
            },
        }
    }
}

fn non_empty(user: &[u8]) -> Result<&[u8]> {
    if user.is_empty() {
        Err(Error::InvalidInput("user must not be empty"))
    } else {
        Ok(user)
    }
}
