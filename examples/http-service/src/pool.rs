//! The service's connections to Redis: a few self-reconnecting multiplexed connections,
//! requests spread over them in turn.

use anyhow::Context;
use coupon_sdk::{Backend, Coupons};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct RedisPool {
    clients: Vec<Coupons<ConnectionManager>>,
    next: AtomicUsize,
}

impl RedisPool {
    /// Opens `count` connections and asks the server once which backend it supports. Fails if
    /// Redis does not answer: a service that cannot reach its store at start is misconfigured.
    pub async fn connect(url: &str, count: usize, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("the Redis URL")?;
        // A connection that drops is replaced in the background; calls made meanwhile fail
        // fast (503) instead of queueing behind a long backoff. No response timeout here:
        // each call has the SDK's.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let mut clients = Vec::with_capacity(count.max(1));
        let mut backend = None;
        for _ in 0..count.max(1) {
            let connection = ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            let coupons = match backend {
                Some(backend) => Coupons::with_backend(connection, backend),
                None => Coupons::connect(connection)
                    .await
                    .with_context(|| format!("cannot ask {url} for the coupon module"))?,
            };
            backend = Some(coupons.backend());
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
        })
    }

    /// The next connection in turn.
    pub fn pick(&self) -> &Coupons<ConnectionManager> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// Whether Redis answers a coupon read in time (for `/healthz`).
    pub async fn ping(&self) -> coupon_sdk::Result<()> {
        self.pick().check("healthz", "ping").await.map(|_| ())
    }
}
