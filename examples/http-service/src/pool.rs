//! The service's connections to Redis: a few self-reconnecting multiplexed connections to one
//! server, requests spread over them in turn — or one connection to a Redis Cluster that every
//! request shares.

use anyhow::Context;
use coupon_sdk::{Backend, Cluster, Coupons, LocalAnswers};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where the service's Redis calls go.
#[derive(Clone)]
pub enum Store {
    /// One of the connections to a single server.
    Server(ConnectionManager),
    /// The connection to a cluster, shared by every request.
    Cluster(Cluster),
}

impl ConnectionLike for Store {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Store::Server(connection) => connection.req_packed_command(cmd),
            Store::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Store::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Store::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Server(connection) => connection.get_db(),
            Store::Cluster(connection) => connection.get_db(),
        }
    }
}

pub struct RedisPool {
    clients: Vec<Coupons<Store>>,
    next: AtomicUsize,
    local: Option<LocalAnswers>,
}

impl RedisPool {
    /// Opens `count` connections and asks the server once which backend it supports. Fails if
    /// Redis does not answer: a service that cannot reach its store at start is misconfigured.
    /// With `local_answers`, the clients share one [`LocalAnswers`] over a tracking
    /// connection of its own.
    pub async fn connect(
        url: &str,
        count: usize,
        timeout: Duration,
        local_answers: bool,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("the Redis URL")?;
        // A connection that drops is replaced in the background; calls made meanwhile fail
        // fast (503) instead of queueing behind a long backoff. No response timeout here:
        // each call has the SDK's.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout(timeout)))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let mut connections = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let connection = ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            connections.push(Store::Server(connection));
        }
        let local = match local_answers {
            true => Some(
                LocalAnswers::connect(url)
                    .await
                    .with_context(|| format!("cannot track coupons on {url} (RESP3)"))?,
            ),
            false => None,
        };
        Self::over(connections, url, timeout, local).await
    }

    /// Opens one connection to the Redis Cluster that `nodes` (comma-separated URLs) belong
    /// to, for every request to share: the SDK's `Cluster` follows `-ASK` and retries
    /// `-TRYAGAIN` itself, so requests keep being answered through a resharding.
    pub async fn connect_cluster(
        nodes: &str,
        timeout: Duration,
        local_answers: bool,
    ) -> anyhow::Result<Self> {
        let urls: Vec<&str> = nodes.split(',').map(str::trim).collect();
        if urls.iter().any(|url| url.is_empty()) {
            anyhow::bail!("the Redis Cluster URLs {nodes:?} name an empty node");
        }
        // No response timeout here either: each call has the SDK's.
        let builder =
            ClusterClientBuilder::new(urls.clone()).connection_timeout(connect_timeout(timeout));
        let cluster = Cluster::connect_with(builder)
            .await
            .with_context(|| format!("cannot connect to the Redis Cluster at {nodes}"))?;
        let local = match local_answers {
            true => Some(
                LocalAnswers::connect_cluster(&cluster, urls)
                    .await
                    .with_context(|| format!("cannot track coupons on {nodes} (RESP3)"))?,
            ),
            false => None,
        };
        Self::over(vec![Store::Cluster(cluster)], nodes, timeout, local).await
    }

    /// Asks Redis once which backend it supports, then uses it on every connection.
    async fn over(
        connections: Vec<Store>,
        url: &str,
        timeout: Duration,
        local: Option<LocalAnswers>,
    ) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(connections.len());
        let mut backend = None;
        for connection in connections {
            let coupons = match backend {
                Some(backend) => Coupons::with_backend(connection, backend),
                None => Coupons::connect(connection)
                    .await
                    .with_context(|| format!("cannot ask {url} for the coupon module"))?,
            };
            backend = Some(coupons.backend());
            let coupons = match &local {
                Some(local) => coupons.with_local_answers(local.clone()),
                None => coupons,
            };
            clients.push(coupons.with_timeout(timeout));
        }
        if backend == Some(Backend::Script) {
            tracing::warn!(
                "Redis has no coupon module loaded: issuing through the SDK's Lua script"
            );
        }
        Ok(RedisPool {
            clients,
            next: AtomicUsize::new(0),
            local,
        })
    }

    /// The next connection in turn.
    pub fn pick(&self) -> &Coupons<Store> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// The local answers the clients share, if they are on.
    pub fn local_answers(&self) -> Option<&LocalAnswers> {
        self.local.as_ref()
    }

    /// Whether Redis answers a coupon read in time (for `/healthz`).
    pub async fn ping(&self) -> coupon_sdk::Result<()> {
        self.pick().check("healthz", "ping").await.map(|_| ())
    }
}

fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(100))
}
