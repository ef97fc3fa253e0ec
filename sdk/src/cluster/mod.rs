//! [`Cluster`]: one connection to a Redis Cluster, shared by every task of a service, that
//! keeps answering while slots move.

mod asking;
mod redirect;
mod retry;

pub use retry::ClusterRetry;

use crate::{Error, Result};
use redirect::{Next, Node};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Calls in flight on one [`Cluster`] by default; the rest wait for a turn.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// A Redis Cluster connection for [`Coupons`](crate::Coupons), made to be shared: clone it
/// (or the `Coupons` over it) into every task.
///
/// It is redis-rs' [`ClusterConnection`] — one multiplexed connection per node, routing by
/// slot, following topology changes — with redirects and retries done here instead:
///
/// - `-ASK` (the slot is being migrated and the key is already on the target) is followed by
///   sending `ASKING` and the command as *one pipeline* to the target, so no other task's
///   command can take the one-shot `ASKING` in between;
/// - `-MOVED` is followed to the named node (redis-rs refreshes its slot map meanwhile);
/// - `-TRYAGAIN`, `-CLUSTERDOWN`, `-MASTERDOWN`, `-LOADING`, `-READONLY` and refused
///   connections, none of which ran the command, are retried by slot after a jittered backoff
///   ([`ClusterRetry`]: 40 retries of 10 to 200 ms by default);
/// - at most [`DEFAULT_MAX_IN_FLIGHT`] calls are sent at once ([`with_max_in_flight`]);
/// - anything else, a connection dropped after sending included (the call may have run), is
///   the call's answer.
///
/// A pipeline is re-sent whole when the cluster turns any of its commands away, as redis-rs
/// does; the SDK's pipelines only read or repeat safely. A transaction (`MULTI`/`EXEC`) that
/// meets `-ASK` fails with it.
///
/// [`with_max_in_flight`]: Cluster::with_max_in_flight
///
/// ```no_run
/// # async fn run() -> coupon_sdk::Result<()> {
/// use coupon_sdk::{Cluster, Coupons};
///
/// let cluster = Cluster::connect(["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"]).await?;
/// let coupons = Coupons::connect(cluster).await?;
/// for n in 0..1_000 {
///     let coupons = coupons.clone();
///     tokio::spawn(async move { coupons.issue("sale", format!("user-{n}"), 100).await });
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cluster {
    connection: ClusterConnection,
    retry: ClusterRetry,
    in_flight: Arc<Semaphore>,
    /// Redirects and retries followed so far (`-MOVED`, `-ASK`, `-TRYAGAIN`, …): each may
    /// mean a slot moved, which [`LocalAnswers`](crate::LocalAnswers) must know.
    redirects: Arc<AtomicU64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("retry", &self.retry)
            .field("available_permits", &self.in_flight.available_permits())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the cluster that `nodes` (some or all of its nodes) belong to.
    pub async fn connect<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self> {
        Self::connect_with(ClusterClientBuilder::new(nodes)).await
    }

    /// Connects with redis-rs' settings (password, TLS, timeouts, …). Its retry settings are
    /// replaced by the [`ClusterRetry`] of [`with_retry`](Self::with_retry).
    pub async fn connect_with(builder: ClusterClientBuilder) -> Result<Self> {
        // redis-rs hands every refusal back; this type decides what is retried.
        let client = builder.retries(0).build()?;
        let connection = client.get_async_connection().await?;
        Ok(Cluster {
            connection,
            retry: ClusterRetry::default(),
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
            redirects: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same connection, retrying with `retry`.
    pub fn with_retry(self, retry: ClusterRetry) -> Self {
        Cluster { retry, ..self }
    }

    /// The same connection, with at most `calls` calls in flight at once (counted over it and
    /// its clones from then on). Refuses 0.
    ///
    /// The cap is there for redis-rs 1.8.1: with 200 calls in flight on one cluster
    /// connection while it refreshed its slot map after `-MOVED`, calls went unanswered for
    /// good (`tests/tests/reshard.rs`); with 32 every one is answered.
    pub fn with_max_in_flight(self, calls: usize) -> Result<Self> {
        if calls == 0 || calls > Semaphore::MAX_PERMITS {
            return Err(Error::InvalidInput(
                "calls in flight must be at least 1 and fit a semaphore",
            ));
        }
        Ok(Cluster {
            in_flight: Arc::new(Semaphore::new(calls)),
            ..self
        })
    }

    pub fn retry(&self) -> ClusterRetry {
        self.retry
    }

    pub(crate) fn redirects(&self) -> Arc<AtomicU64> {
        self.redirects.clone()
    }

    async fn command(&self, command: &Cmd) -> RedisResult<Value> {
        let _turn = self.turn().await?;
        let mut connection = self.connection.clone();
        let (mut route, mut retries) = (Route::BySlot, 0);
        loop {
            let result = match &route {
                Route::BySlot => connection.req_packed_command(command).await,
                Route::To(node) => {
                    let routing = redis::cluster_routing::RoutingInfo::SingleNode(node.routing());
                    connection.route_command(command.clone(), routing).await
                }
                Route::Asking(node) => asking::command(&mut connection, command, node).await,
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) => route = self.after(error, &mut retries, true).await?,
            }
        }
    }

    async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let _turn = self.turn().await?;
        let mut connection = self.connection.clone();
        let (mut route, mut retries) = (Route::BySlot, 0);
        let can_ask = !pipeline.is_transaction();
        loop {
            let result = match &route {
                Route::BySlot => {
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Route::To(node) => {
                    let pipeline = pipeline.clone();
                    connection
                        .route_pipeline(pipeline, offset, count, node.routing())
                        .await
                }
                Route::Asking(node) => {
                    asking::pipeline(&mut connection, pipeline, offset, count, node).await
                }
            };
            match result {
                Ok(values) => return Ok(values),
                Err(error) => route = self.after(error, &mut retries, can_ask).await?,
            }
        }
    }

    /// Where to send a call next after `error`, having waited if it asks for that; the error
    /// itself when it is the answer or the retries are spent.
    async fn after(
        &self,
        error: RedisError,
        retries: &mut u32,
        can_ask: bool,
    ) -> RedisResult<Route> {
        let next = Next::after(&error);
        if next != Next::Answer {
            self.redirects.fetch_add(1, Ordering::AcqRel);
        }
        if next == Next::Answer || *retries >= self.retry.retries() {
            return Err(error);
        }
        *retries += 1;
        Ok(match next {
            Next::Ask(node) if can_ask => Route::Asking(node),
            Next::Moved(node) => Route::To(node),
            Next::Ask(_) | Next::Answer => return Err(error),
            Next::Wait => {
                tokio::time::sleep(self.retry.wait(*retries)).await;
                Route::BySlot
            }
        })
    }

    async fn turn(&self) -> RedisResult<tokio::sync::SemaphorePermit<'_>> {
        self.in_flight.acquire().await.map_err(|_| {
            RedisError::from((redis::ErrorKind::Client, "the cluster connection is closed"))
        })
    }
}

/// Where the next attempt of a call goes.
enum Route {
    /// To the node redis-rs' slot map names.
    BySlot,
    /// To the node a `-MOVED` named.
    To(Node),
    /// To the node an `-ASK` named, each command preceded by `ASKING`.
    Asking(Node),
}

impl ConnectionLike for Cluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.pipeline(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        0
    }
}
