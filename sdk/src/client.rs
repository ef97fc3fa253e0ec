//! [`Coupons`]: the client services call.

use crate::backend::{Backend, Call, Dialect, IssueArgs};
use crate::keys::{coupon_key, CouponKeys};
use crate::{
    Answer, Answered, AnsweredBy, CouponInfo, Error, LocalAnswers, Outcome, ReplicaAck, Restore,
    Result, Window,
};
use coupon_layout::{holders_in, revoked_of, LAST_SEQ_FIELD};
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Value};
use std::collections::HashSet;
use std::time::Duration;

/// What replica-acknowledged calls append to the coupon's stream name to name the shard
/// channel they publish an empty message on (`sale:events{sale}:replica-ack`): it shares the
/// coupon's hash slot, and an ACL channel pattern like `&sale*` covers it.
pub const ACK_CHANNEL_SUFFIX: &str = ":replica-ack";

fn ack_channel(coupon: &[u8]) -> Result<Vec<u8>> {
    let mut channel = coupon_key(coupon)?.events_key();
    channel.extend_from_slice(ACK_CHANNEL_SUFFIX.as_bytes());
    Ok(channel)
}

/// Pairs per `COUPON.RESTORE` call: each call is atomic and passes over the coupon's holders.
const RESTORE_CHUNK: usize = 500;

/// Issues, revokes and checks coupons over any async redis-rs connection: a
/// [`MultiplexedConnection`](redis::aio::MultiplexedConnection) (thousands of concurrent calls
/// pipelined over one socket), a [`ConnectionManager`](redis::aio::ConnectionManager)
/// (reconnects by itself) or, on Redis Cluster, a [`Cluster`](crate::Cluster): one shared
/// connection that keeps answering while slots move (a plain redis-rs
/// [`ClusterConnection`](redis::cluster_async::ClusterConnection) works too, but see
/// [`Cluster`](crate::Cluster) for what it does during a resharding).
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
    replica_ack: Option<ReplicaAck>,
    local: Option<LocalAnswers>,
}

impl<C> std::fmt::Debug for Coupons<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coupons")
            .field("backend", &self.backend)
            .field("timeout", &self.timeout)
            .field("replica_ack", &self.replica_ack)
            .field("local", &self.local)
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
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// use coupon_sdk::{Backend, Coupons};
    ///
    /// // A server that cannot load modules: the Lua script, without asking.
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let connection = client.get_multiplexed_async_connection().await?;
    /// let coupons = Coupons::with_backend(connection, Backend::Script);
    /// assert_eq!(coupons.backend(), Backend::Script);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_backend(connection: C, backend: Backend) -> Self {
        Coupons {
            connection,
            backend,
            timeout: None,
            replica_ack: None,
            local: None,
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

    /// The same client, reporting the writes of `issue`, `issue_in_window`, `revoke` and
    /// `restore` only once `ack.replicas` replicas have them.
    ///
    /// Each such call is sent together with `WAIT <replicas> <timeout-ms>`, in one pipeline on
    /// the same connection (on a cluster, to the node that holds the coupon). When fewer
    /// replicas confirm in time, the call fails with [`Error::NotReplicated`], which carries
    /// the answer the primary gave: the write happened there and may or may not survive a
    /// failover. Retrying is safe; the retry waits again.
    ///
    /// Every answer is confirmed the same way, those that write nothing included (`SoldOut`,
    /// `NotStarted`, `Ended`, `AlreadyIssued`, a revoke of a non-holder, a restore re-run):
    /// An empty `SPUBLISH` on the coupon's shard channel (its stream's name followed by
    /// [`ACK_CHANNEL_SUFFIX`](crate::ACK_CHANNEL_SUFFIX)) goes between the command and `WAIT`:
    /// a standalone server propagates it, which brings the connection's replication offset up
    /// to the server's, so a confirmed `AlreadyIssued` means the issue it reports is on the
    /// replicas too, and a confirmed `SoldOut` means the holders it was decided on are. (On a
    /// cluster it travels on the cluster bus instead; there a write's own confirmation holds,
    /// and a no-write answer is confirmed as far as the connection's offset goes.) An ACL
    /// user needs `+spublish` and a channel pattern covering it (`&sale*`).
    ///
    /// `WAIT` holds the connection it is sent on until it answers: on a shared
    /// [`MultiplexedConnection`](redis::aio::MultiplexedConnection) the calls behind it wait
    /// too, so give acknowledged writes connections of their own (or several). Keep the
    /// per-call [`with_timeout`](Self::with_timeout) above `ack.timeout`, or a slow
    /// acknowledgement ends as [`Error::Timeout`] instead.
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// use std::time::Duration;
    ///
    /// let acked = coupons.with_replica_ack(ReplicaAck { replicas: 1, timeout: Duration::from_millis(100) });
    /// match acked.issue("sale", "alice", 100).await {
    ///     Err(Error::NotReplicated { .. }) => println!("issued on the primary only, for now"),
    ///     other => println!("{:?}", other?),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_replica_ack(&self, ack: ReplicaAck) -> Self {
        Coupons {
            replica_ack: Some(ack),
            ..self.clone()
        }
    }

    /// The same client, answering a hot coupon's rejections itself once the server has sold
    /// it out: `SoldOut` for users who do not hold it and `AlreadyIssued` for a holder's
    /// repeat, from a view that Redis' client-side caching keeps exact ([`LocalAnswers`],
    /// which says what drops the view). Issuing, revoking and restoring always go to the
    /// server; with replica acknowledgement on, so does every call.
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// let coupons = coupons.with_local_answers(LocalAnswers::connect("redis://127.0.0.1/").await?);
    /// // After the sell-out, this is answered without a round trip:
    /// assert_eq!(coupons.issue("sale", "late-user", 1).await?, Outcome::SoldOut);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_local_answers(&self, local: LocalAnswers) -> Self {
        Coupons {
            local: Some(local),
            ..self.clone()
        }
    }

    /// The backend the calls use.
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
            .map(|answered| answered.outcome)
    }

    /// Like [`issue`](Self::issue), also telling whether the answer came from the server or
    /// from [`LocalAnswers`] (for a service's own metrics).
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// let answered = coupons.issue_answered("sale", "alice", 100).await?;
    /// if answered.by == AnsweredBy::Locally {
    ///     println!("{:?}, without a round trip", answered.outcome);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn issue_answered(
        &self,
        coupon: impl AsRef<[u8]>,
        user: impl AsRef<[u8]>,
        limit: u64,
    ) -> Result<Answered> {
        self.issue_with(coupon.as_ref(), user.as_ref(), limit, None)
            .await
    }

    /// Like [`issue`](Self::issue), and only while `window` is open by the server's clock.
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// use std::time::{Duration, SystemTime};
    ///
    /// let start = SystemTime::now() + Duration::from_secs(3600);
    /// let window = Window::between(start, start + Duration::from_secs(600));
    /// // An hour early: nothing is issued yet.
    /// assert_eq!(coupons.issue_in_window("night-sale", "alice", 100, window).await?, Outcome::NotStarted);
    /// # Ok(())
    /// # }
    /// ```
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
            .map(|answered| answered.outcome)
    }

    async fn issue_with(
        &self,
        coupon: &[u8],
        user: &[u8],
        limit: u64,
        window: Option<(u64, u64)>,
    ) -> Result<Answered> {
        let user = non_empty(user)?;
        if limit > i64::MAX as u64 {
            return Err(Error::InvalidInput(
                "limit must be at most 9223372036854775807",
            ));
        }
        coupon_key(coupon)?;
        let local = self.local.as_ref().filter(|_| self.replica_ack.is_none());
        let answered_locally = match local {
            Some(local) => local.answer(coupon, user, limit, window).await,
            None => None,
        };
        if let Some((outcome, waited)) = answered_locally {
            let by = match waited {
                false => AnsweredBy::Locally,
                true => AnsweredBy::AfterFill,
            };
            return Ok(Answered { outcome, by });
        }
        let args = IssueArgs {
            coupon,
            user,
            limit,
            window,
        };
        let ((status, seq, holders), acked): ((String, Option<u64>, u64), _) =
            self.send(coupon, self.backend.issue(&args)?).await?;
        let seq = || seq.ok_or_else(|| Error::UnexpectedReply(format!("{status} without a seq")));
        let outcome = match status.as_str() {
            "ISSUED" => Outcome::Issued { seq: seq()? },
            "DUPLICATE" => Outcome::AlreadyIssued { seq: seq()? },
            "SOLD_OUT" => Outcome::SoldOut,
            "NOT_STARTED" => Outcome::NotStarted,
            "ENDED" => Outcome::Ended,
            other => return Err(Error::UnexpectedReply(format!("unknown status {other:?}"))),
        };
        self.confirmed(acked, || Answer::Issue { outcome })?;
        if let Some(local) = local {
            local.learn(coupon, &outcome, holders, limit);
        }
        Ok(Answered {
            outcome,
            by: AnsweredBy::Server,
        })
    }

    /// Takes the coupon back from `user`: `true` if they held it (the stock returns; the seq
    /// is never reused), `false` if they did not (nothing changes).
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// coupons.issue("sale", "alice", 100).await?;
    /// assert!(coupons.revoke("sale", "alice").await?);
    /// assert!(!coupons.revoke("sale", "alice").await?); // held nothing any more
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke(&self, coupon: impl AsRef<[u8]>, user: impl AsRef<[u8]>) -> Result<bool> {
        let (coupon, user) = (coupon.as_ref(), non_empty(user.as_ref())?);
        coupon_key(coupon)?;
        // The stock comes back: this process stops answering SoldOut at once, and again after
        // the reply in case a fill read the coupon in between.
        self.forget_locally(coupon);
        let sent = self.send(coupon, self.backend.revoke(coupon, user)?).await;
        self.forget_locally(coupon);
        let (revoked, acked): (i64, _) = sent?;
        let revoked = revoked == 1;
        self.confirmed(acked, || Answer::Revoke { revoked })?;
        Ok(revoked)
    }

    /// Puts back holders that Redis lost (after a failover with replication lag, a restart
    /// without persistence, an older RDB) from a database that has them: `COUPON.RESTORE`.
    ///
    /// `floor` is the highest seq the database knows for the coupon (revoked rows included):
    /// afterwards the coupon's last seq is at least `floor` and every restored seq, so no seq
    /// the database knows is handed out again. Each `(user, seq)` gets one [`Restore`], in
    /// order. Nothing is ever overwritten: a user holding another seq, or a seq held by
    /// another user, is reported and left alone. Re-running is safe (`Held`).
    ///
    /// Sent in chunks of 500 pairs, each one atomic (with `floor` on each); with replica
    /// acknowledgement on, a chunk not confirmed in time ends the call with
    /// [`Error::NotReplicated`] carrying the answers so far (a re-run answers `Held` for
    /// them). Works on the cluster client too (one coupon, one node). A user or a seq
    /// named twice, an empty user, a seq of 0 or a number over `i64::MAX` is refused
    /// before anything is sent.
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// // From the database: alice held seq 17, bob seq 18, and 20 was the highest seq issued.
    /// let answers = coupons.restore("sale", 20, &[("alice", 17), ("bob", 18)]).await?;
    /// for answer in answers {
    ///     if let Restore::SeqTaken { user } = answer {
    ///         println!("the seq went to {} meanwhile", String::from_utf8_lossy(&user));
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restore<U: AsRef<[u8]>>(
        &self,
        coupon: impl AsRef<[u8]>,
        floor: u64,
        holders: &[(U, u64)],
    ) -> Result<Vec<Restore>> {
        let coupon = coupon.as_ref();
        coupon_key(coupon)?;
        if floor > i64::MAX as u64 {
            return Err(Error::InvalidInput(
                "floor must be at most 9223372036854775807",
            ));
        }
        let mut users = HashSet::with_capacity(holders.len());
        let mut seqs = HashSet::with_capacity(holders.len());
        let mut pairs = Vec::with_capacity(holders.len());
        for (user, seq) in holders {
            let user = non_empty(user.as_ref())?;
            if *seq == 0 || *seq > i64::MAX as u64 {
                return Err(Error::InvalidInput(
                    "seq must be from 1 to 9223372036854775807",
                ));
            }
            if !users.insert(user) {
                return Err(Error::InvalidInput("a user is named twice"));
            }
            if !seqs.insert(*seq) {
                return Err(Error::InvalidInput("a seq is named twice"));
            }
            pairs.push((user, *seq));
        }
        let mut answers = Vec::with_capacity(pairs.len());
        let chunks: Vec<&[(&[u8], u64)]> = if pairs.is_empty() {
            vec![&[]]
        } else {
            pairs.chunks(RESTORE_CHUNK).collect()
        };
        for chunk in chunks {
            self.forget_locally(coupon);
            let sent = self
                .send(coupon, self.backend.restore(coupon, floor, chunk)?)
                .await;
            self.forget_locally(coupon);
            let (replies, acked): (Vec<Value>, _) = sent?;
            if replies.len() != chunk.len() {
                return Err(Error::UnexpectedReply(format!(
                    "{} answers to {} pairs",
                    replies.len(),
                    chunk.len()
                )));
            }
            for reply in replies {
                answers.push(restore_answer(reply)?);
            }
            self.confirmed(acked, || Answer::Restore {
                pairs: answers.clone(),
            })?;
        }
        Ok(answers)
    }

    /// The seq `user` holds, if any.
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// if let Some(seq) = coupons.check("sale", "alice").await? {
    ///     println!("alice holds #{seq}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn run() -> coupon_sdk::Result<()> {
    /// # use coupon_sdk::*;
    /// # let client = redis::Client::open("redis://127.0.0.1/")?;
    /// # let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?).await?;
    /// let info = coupons.info("sale").await?;
    /// println!("{} held, {} given back, last seq {}", info.issued, info.revoked, info.last_seq);
    /// # Ok(())
    /// # }
    /// ```
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

    fn forget_locally(&self, coupon: &[u8]) {
        if let Some(local) = &self.local {
            local.forget(coupon);
        }
    }

    /// Sends a write, followed by `WAIT` when replica acknowledgement is on: its answer and
    /// how many replicas confirmed it (`None` without `WAIT`).
    async fn send<T: FromRedisValue>(&self, coupon: &[u8], call: Call) -> Result<(T, Option<u32>)> {
        match (
            self.send_once(coupon, &call.command).await,
            call.on_noscript,
        ) {
            (Err(Error::Server(e)), Some(fallback)) if e.code() == Some("NOSCRIPT") => {
                self.send_once(coupon, &fallback).await
            }
            (result, _) => result,
        }
    }

    async fn send_once<T: FromRedisValue>(
        &self,
        coupon: &[u8],
        command: &Cmd,
    ) -> Result<(T, Option<u32>)> {
        let Some(ack) = self.replica_ack else {
            return Ok((self.query(command).await?, None));
        };
        // One pipeline, so WAIT runs on the connection (and cluster node) that wrote. WAIT
        // waits for the replication offset of the connection's last propagated command; a
        // call that wrote nothing (a retry answering AlreadyIssued) propagates nothing, and
        // on Valkey 8.1 (unlike Redis 7.0) its WAIT would then not wait for the earlier write
        // it reports. The SPUBLISH, which a standalone server propagates to its replicas,
        // moves the connection's offset to the server's current one first; its channel is in
        // the coupon's hash slot, so on a cluster the pipeline stays on the coupon's node.
        let timeout_ms = ack.timeout.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut pipe = redis::pipe();
        pipe.add_command(command.clone())
            .cmd("SPUBLISH")
            .arg(ack_channel(coupon)?)
            .arg("")
            .ignore()
            .cmd("WAIT")
            .arg(ack.replicas)
            .arg(timeout_ms);
        let mut connection = self.connection.clone();
        let query = pipe.query_async(&mut connection);
        let (answer, acked): (T, i64) = self.within_timeout(query).await?;
        Ok((answer, Some(u32::try_from(acked).unwrap_or(0))))
    }

    /// `Ok` unless replica acknowledgement is on and fewer replicas confirmed than asked for.
    fn confirmed(&self, acked: Option<u32>, answer: impl FnOnce() -> Answer) -> Result<()> {
        match (self.replica_ack, acked) {
            (Some(ack), Some(acked)) if acked < ack.replicas => Err(Error::NotReplicated {
                answer: answer(),
                acked,
                wanted: ack.replicas,
            }),
            _ => Ok(()),
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

/// One element of `COUPON.RESTORE`'s reply.
fn restore_answer(reply: Value) -> Result<Restore> {
    let unexpected = |reply: &Value| Error::UnexpectedReply(format!("restore answered {reply:?}"));
    let word = |value: &Value| match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    };
    if let Some(word) = word(&reply) {
        return match word.as_slice() {
            b"restored" => Ok(Restore::Restored),
            b"held" => Ok(Restore::Held),
            _ => Err(unexpected(&reply)),
        };
    }
    let Value::Array(parts) = &reply else {
        return Err(unexpected(&reply));
    };
    match parts.as_slice() {
        [kind, Value::Int(seq)] if word(kind).as_deref() == Some(b"user-holds") => {
            let seq = u64::try_from(*seq).map_err(|_| unexpected(&reply))?;
            Ok(Restore::UserHolds { seq })
        }
        [kind, user] if word(kind).as_deref() == Some(b"seq-taken") => match word(user) {
            Some(user) => Ok(Restore::SeqTaken { user }),
            None => Err(unexpected(&reply)),
        },
        _ => Err(unexpected(&reply)),
    }
}

fn non_empty(user: &[u8]) -> Result<&[u8]> {
    if user.is_empty() {
        Err(Error::InvalidInput("user must not be empty"))
    } else {
        Ok(user)
    }
}
