//! Starting and running: connects (waiting for a database or Redis that is down, stopping at
//! once on a configuration that can never work), migrates, then runs the pipeline with
//! maintenance and the health probes beside it until shutdown.

use crate::config::{ClusterMode, Settings};
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
use crate::policy::{Shutdown, Stopped, Trigger, Until, Verdict};
use crate::topology::{self, Topology};
use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

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

/// What every node's pipeline shares: the settings, the database and the metrics.
struct Shared {
    settings: Settings,
    database_url: String,
    db: Db,
    metrics: Arc<Metrics>,
    consumer: String,
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
        check_dead_letter_name(&shared.settings.dead_letter_stream)?;
        run_cluster(shared, client, shutdown).await
    } else {
        run_node(&shared, client, None, None, shutdown).await
    }
}

/// On a cluster, dead letters go to `<name>{<tag>}`: a name with braces would carry its own
/// hash tag (another slot), and a name ending in `:events` would make `<name>{<tag>}` the
/// event stream of coupon `<tag>`.
fn check_dead_letter_name(name: &str) -> anyhow::Result<()> {
    if name.contains(['{', '}']) {
        anyhow::bail!(
            "--dead-letter-stream {name:?}: on a cluster, dead letters go to \
             `<name>{{<stream's hash tag>}}`, so the name must not have braces of its own"
        );
    }
    if name.ends_with(":events") {
        anyhow::bail!(
            "--dead-letter-stream {name:?}: on a cluster, `<name>{{<tag>}}` would be a \
             coupon's event stream; choose a name not ending in \":events\""
        );
    }
    Ok(())
}

/// One pipeline per primary, each under its own shutdown: started for new primaries,
/// stopped for nodes no longer primaries (their uncommitted entries stay pending in the
/// group and move with the keys: the new owner's pipeline reads them again).
async fn run_cluster(
    shared: Arc<Shared>,
    client: redis::Client,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let refresh = Arc::new(Notify::new());
    let every = Duration::from_millis(shared.settings.topology_refresh_ms);
    let mut topology = Topology::new(client.clone());
    let mut running: BTreeMap<String, (Trigger, JoinHandle<()>)> = BTreeMap::new();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let mut failures = Repeats::default();
    tracing::info!(
        group = %shared.settings.group,
        consumer = %shared.consumer,
        redis = %redact(&shared.settings.redis_url),
        "Redis Cluster: one pipeline per primary"
    );
    while !shutdown.requested() {
        match topology.primaries().await {
            Ok(primaries) => {
                if failures.clear() > 0 {
                    tracing::info!("the cluster's primaries can be looked up again");
                }
                let now = topology::by_address(&primaries);
                for (address, (trigger, handle)) in std::mem::take(&mut running) {
                    if now.contains_key(&address) && !handle.is_finished() {
                        running.insert(address, (trigger, handle));
                    } else {
                        tracing::info!(node = %address, "no longer a primary: stopping its pipeline");
                        trigger.fire();
                        shared.metrics.forget_node(&address);
                        stopping.push(handle);
                    }
                }
                for (address, primary) in now {
                    if running.contains_key(&address) {
                        continue;
                    }
                    let node = match topology::client_for(&client, &primary.host, primary.port) {
                        Ok(node) => node,
                        Err(error) => {
                            tracing::warn!(node = %address, %error, "cannot address the node");
                            continue;
                        }
                    };
                    tracing::info!(node = %address, slots = ?primary.slots, "primary: starting its pipeline");
                    let (trigger, child) = shutdown.child();
                    let (shared, refresh, label) =
                        (shared.clone(), refresh.clone(), address.clone());
                    let handle = tokio::spawn(async move {
                        if let Err(error) =
                            run_node(&shared, node, Some(label.clone()), Some(refresh), child).await
                        {
                            tracing::warn!(node = %label, "the node's pipeline stopped: {error:#}");
                        }
                    });
                    running.insert(address, (trigger, handle));
                }
            }
            Err(error) => {
                shared.metrics.error("redis_topology");
                if let Some(unlogged) = failures.note(Instant::now()) {
                    tracing::warn!(%error, unlogged, "cannot look up the cluster's primaries");
                }
            }
        }
        stopping.retain(|handle| !handle.is_finished());
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = refresh.notified() => {
                // Several pipelines may ask at once; one look a little later answers them all.
                shutdown.pause(Duration::from_millis(100)).await;
            }
            () = shutdown.requested_wait() => {}
        }
    }
    for (_, (_, handle)) in running {
        let _ = handle.await;
    }
    for handle in stopping {
        let _ = handle.await;
    }
    tracing::info!("persister stopped");
    Ok(())
}

/// The pipeline of one server (`node`: its `host:port` on a cluster), until `shutdown`.
async fn run_node(
    shared: &Shared,
    client: redis::Client,
    node: Option<String>,
    refresh: Option<Arc<Notify>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Shared {
        settings,
        database_url,
        db,
        metrics,
        consumer,
    } = shared;
    let (db, metrics, consumer) = (db.clone(), metrics.clone(), consumer.clone());
    let connect = || redis_connection(&client);
    let what = "connecting to Redis";
    let mut connections = Vec::new();
    for _ in 0..3 {
        let conn = until_ready(
            what,
            settings,
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

    let cluster = node.is_some();
    let node = node.unwrap_or_default();
    if cluster {
        tracing::info!(%node, "reading the node's coupon streams");
    } else {
        tracing::info!(
            group = %settings.group,
            %consumer,
            redis = %redact(&settings.redis_url),
            database = %redact(database_url),
            "persister started"
        );
    }
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
            dead_letter_stream: settings.dead_letter_stream.clone(),
            node: node.clone(),
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
            by_slot: cluster,
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
    let reads = match refresh {
        Some(refresh) => reads.with_refresh(refresh),
        None => reads,
    };
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
        cluster,
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
    if cluster {
        tracing::info!(%node, "the node's pipeline stopped");
    } else {
        tracing::info!("persister stopped");
    }
    Ok(())
}

/// Whether `--redis-url` is a cluster node, as `--cluster` says or the server answers.
async fn is_cluster(settings: &Settings, client: &redis::Client) -> anyhow::Result<bool> {
    Ok(match settings.cluster {
        ClusterMode::Yes => true,
        ClusterMode::No => false,
        ClusterMode::Auto => {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .context("connecting to Redis")?;
            topology::is_cluster(&mut conn).await?
        }
    })
}

/// The `reconcile` and `restore` subcommands: the number of differences or conflicts found.
pub async fn repair(
    settings: &Settings,
    database_url: &str,
    command: &crate::config::Command,
) -> anyhow::Result<usize> {
    use crate::config::Command;
    use crate::repair;
    let db = Db::open(database_url)?;
    let client = redis::Client::open(settings.redis_url.as_str()).context("--redis-url")?;
    let cluster = is_cluster(settings, &client).await?;
    let drain = match command {
        Command::Reconcile { drain_timeout_ms } => Some(Duration::from_millis(*drain_timeout_ms)),
        _ => None,
    };
    if cluster {
        let conn = redis::cluster::ClusterClient::builder(vec![settings.redis_url.as_str()])
            .retries(10)
            .build()?
            .get_async_connection()
            .await
            .context("connecting to the cluster")?;
        match drain {
            Some(drain) => {
                let mut conn = conn;
                repair::reconcile(&mut conn, &db, &settings.group, drain).await
            }
            None => {
                let coupons = coupon_sdk::Coupons::connect(conn).await?;
                Ok(repair::restore(&coupons, &db).await?.conflicts)
            }
        }
    } else {
        let mut conn = redis_connection(&client)
            .await
            .context("connecting to Redis")?;
        match drain {
            Some(drain) => repair::reconcile(&mut conn, &db, &settings.group, drain).await,
            None => {
                let coupons = coupon_sdk::Coupons::connect(conn).await?;
                Ok(repair::restore(&coupons, &db).await?.conflicts)
            }
        }
    }
}
