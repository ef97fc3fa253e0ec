//! Starting and running: connects (waiting for a database or Redis that is down, stopping at
//! once on a configuration that can never work), migrates, then runs one server's pipeline
//! ([`node`]) or one per primary of a Redis Cluster ([`primaries`]), with the health probes
//! beside it, until shutdown. [`repair`] runs the `reconcile` and `restore` subcommands.

mod node;
mod primaries;
mod repair;

pub use repair::repair;

use crate::config::{ClusterMode, Settings};
use crate::db::migrate::{self, Failure};
use crate::db::Db;
use crate::health;
use crate::logging::Repeats;
use crate::metrics::Metrics;
use crate::policy::{Shutdown, Stopped, Until, Verdict};
use crate::topology;
use anyhow::Context;
use node::Shared;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
/// Opens a Redis connection that reconnects by itself after a server restart, and checks
/// that the server takes our commands (a refused password shows here, not later).
pub(crate) async fn redis_connection(
    client: &redis::Client,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
    redis::cmd("PING").query_async::<String>(&mut conn).await?;
    Ok(conn)
}

/// Whether a Redis error means the configuration is wrong (no retry can succeed).
pub(crate) fn redis_config_error(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Retries `attempt` until it succeeds (`Some`), fails for good (`Err`), or shutdown comes
/// first (`None`). Logs the first failure, then one line per interval while it lasts.
pub(crate) async fn until_ready<T, E, F, Fut>(
    what: &str,
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &Shutdown,
    attempt: F,
    fatal: impl Fn(&E) -> bool,
) -> anyhow::Result<Option<T>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut repeats = Repeats::default();
    let judge = |error: &E, failure: crate::policy::Failure| {
        if fatal(error) {
            return Verdict::Fail;
        }
        metrics.error(what);
        metrics.retry(what);
        if let Some(unlogged) = repeats.note(Instant::now()) {
            tracing::warn!(%error, delay = ?failure.delay, unlogged, "{what} failed; retrying");
        }
        Verdict::Retry
    };
    match settings
        .retry()
        .run(shutdown, Until::Signal, attempt, judge)
        .await
    {
        Ok(value) => Ok(Some(value)),
        Err(Stopped::Failed(error)) => Err(anyhow::anyhow!("{what}: {error}")),
        Err(Stopped::ShutDown(error)) => Err(anyhow::anyhow!(
            "stopped before {what} ever succeeded (last error: {error})"
        )),
    }
}

/// The `migrate` subcommand: applies the migrations, waiting up to `wait` for the database.
pub async fn migrate_only(
    settings: &Settings,
    database_url: &str,
    metrics: &Metrics,
    wait: Duration,
) -> anyhow::Result<()> {
    let db = Db::open(database_url)?;
    let never = Shutdown::never();
    let attempt = until_ready(
        "migrating the database",
        settings,
        metrics,
        &never,
        || migrate::migrate(&db),
        |failure| matches!(failure, Failure::Fatal(_)),
    );
    match tokio::time::timeout(wait, attempt).await {
        Ok(done) => done.map(|_| ()),
        Err(_) => anyhow::bail!("the migrations did not run within {wait:?}: see the log above"),
    }
}

/// Connects, migrates, and runs until shutdown: one pipeline for one server, or one per
/// primary of a Redis Cluster (see [`crate::topology`]).
pub async fn run(
    settings: Settings,
    database_url: String,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let db = Db::open(&database_url)?;
    let client = redis::Client::open(settings.redis_url.as_str()).context("--redis-url")?;
    tokio::spawn(health::run_probes(
        db.clone(),
        client.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    until_ready(
        "migrating the database",
        &settings,
        &metrics,
        &shutdown,
        || migrate::migrate(&db),
        |failure| matches!(failure, Failure::Fatal(_)),
    )
    .await?;
    let cluster = match settings.cluster {
        ClusterMode::Yes => true,
        ClusterMode::No => false,
        ClusterMode::Auto => {
            // Waited for: Redis may be down at start.
            let ask = || async {
                let mut conn = redis_connection(&client).await?;
                topology::is_cluster(&mut conn).await
            };
            let asked = until_ready(
                "connecting to Redis",
                &settings,
                &metrics,
                &shutdown,
                ask,
                redis_config_error,
            )
            .await?;
            // Shutdown before Redis ever answered.
            let Some(cluster) = asked else {
                return Ok(());
            };
            cluster
        }
    };
    let consumer = settings.consumer_name();
    let shared = Arc::new(Shared {
        settings,
        database_url,
        db,
        metrics,
        consumer,
    });
    if cluster {
        primaries::check_dead_letter_name(&shared.settings.dead_letter_stream)?;
        primaries::run(shared, client, shutdown).await
    } else {
        node::run(&shared, client, None, None, shutdown).await
    }
}
