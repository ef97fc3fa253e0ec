//! Starting and running: connects (waiting for a database or Redis that is down, stopping at
//! once on a configuration that can never work), migrates, then runs the pipeline with
//! maintenance and the health probes beside it until shutdown.

use crate::config::Settings;
use crate::db::migrate::{self, Failure};
use crate::db::{redact, Backend, Db};
use crate::health;
use crate::logging::Repeats;
use crate::maintain::{MaintainConfig, Maintenance};
use crate::metrics::Metrics;
use crate::pipeline::read::{ReadConfig, Reader};
use crate::pipeline::settle::Settler;
use crate::pipeline::write::{Committer, WriteConfig};
use crate::pipeline::{Pipeline, Reads};
use crate::policy::{Shutdown, Stopped, Until, Verdict};
use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Opens a Redis connection that reconnects by itself after a server restart, and checks
/// that the server takes our commands (a refused password shows here, not later).
pub async fn redis_connection(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
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
fn redis_config_error(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Retries `attempt` until it succeeds (`Some`), fails for good (`Err`), or shutdown comes
/// first (`None`). Logs the first failure, then one line per interval while it lasts.
async fn until_ready<T, E, F, Fut>(
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

/// Connects, migrates, and runs until shutdown.
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
    let connect = || redis_connection(&client);
    let what = "connecting to Redis";
    let mut connections = Vec::new();
    for _ in 0..3 {
        let conn = until_ready(
            what,
            &settings,
            &metrics,
            &shutdown,
            connect,
            redis_config_error,
        )
        .await?;
        connections.extend(conn);
    }
    let [read_conn, write_conn, maintain_conn]: [ConnectionManager; 3] = connections
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what}: no connection"))?;

    let consumer = settings.consumer_name();
    tracing::info!(
        group = %settings.group,
        %consumer,
        redis = %redact(&settings.redis_url),
        database = %redact(&database_url),
        "persister started"
    );
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let maintenance = Maintenance::new(
        MaintainConfig {
            group: settings.group.clone(),
            consumer: consumer.clone(),
            pattern: settings.stream_pattern.clone(),
            claim_idle: settings.claim_idle(),
            discover_every: Duration::from_millis(settings.discover_interval_ms.max(10)),
            sample_every: Duration::from_millis(settings.sample_interval_ms),
            trim_every: (settings.trim_interval_ms > 0)
                .then(|| Duration::from_millis(settings.trim_interval_ms)),
            db_timeout: settings.db_limits().statements,
        },
        maintain_conn,
        db.clone(),
        metrics.clone(),
        shutdown.clone(),
        control_tx,
        lost_rx,
    );
    let maintenance = tokio::spawn(maintenance.run());
    let reader = Reader::new(
        read_conn,
        ReadConfig {
            group: settings.group.clone(),
            consumer,
            claim_idle: settings.claim_idle(),
        },
    );
    let reads = Reads::new(
        reader,
        settings.batch_size as usize,
        settings.linger(),
        control_rx,
        lost_tx,
        metrics.clone(),
        shutdown.clone(),
        settings.retry().backoff(),
    );
    let config = WriteConfig {
        group: settings.group.clone(),
        max_deliveries: settings.max_deliveries,
        dead_letter_stream: settings.dead_letter_stream.clone(),
        limits: settings.db_limits(),
        retry: settings.retry(),
        // SQLite takes one writer at a time.
        in_flight: match db.backend {
            Backend::MySql => 2,
            Backend::Sqlite => 1,
        },
    };
    let (settle_tx, settle_rx) = mpsc::channel(4);
    let settler = Settler::new(
        config.clone(),
        write_conn,
        metrics.clone(),
        shutdown.clone(),
    );
    let settler = tokio::spawn(settler.run(settle_rx));
    let committer = Committer::new(config, db, metrics, shutdown);
    Pipeline::new(reads, committer, settle_tx).run().await;
    let _ = settler.await;
    let _ = maintenance.await;
    tracing::info!("persister stopped");
    Ok(())
}
