//! The pipeline of one server: its connections, the reader, committer, settler and
//! checkpoint writer, and the maintenance beside them.

use super::{redis_config_error, redis_connection, until_ready};
use crate::changes::ChangeFeed;
use crate::checkpoint::{self, Raised};
use crate::config::Settings;
use crate::db::{redact, Backend, Db};
use crate::maintain::{MaintainConfig, Maintenance};
use crate::metrics::Metrics;
use crate::pipeline::read::{ReadConfig, Reader};
use crate::pipeline::settle::Settler;
use crate::pipeline::write::{Committer, WriteConfig};
use crate::pipeline::{Pipeline, Reads};
use crate::policy::Shutdown;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// What every node's pipeline shares: the settings, the database and the metrics.
pub(super) struct Shared {
    pub settings: Settings,
    pub database_url: String,
    pub db: Db,
    pub metrics: Arc<Metrics>,
    pub consumer: String,
}

/// The pipeline of one server (`node`: its `host:port` on a cluster), until `shutdown`.
pub(super) async fn run(
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
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let sweep_every = Duration::from_millis(settings.sweep_interval_ms);
    let maintenance = Maintenance::new(
        MaintainConfig {
            group: settings.group.clone(),
            consumer: consumer.clone(),
            pattern: settings.stream_pattern.clone(),
            claim_idle: settings.claim_idle(),
            discover_every: Duration::from_millis(settings.discover_interval_ms.max(10)),
            sweep_every,
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
        reports_rx,
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
        ChangeFeed::new(sweep_every),
    );
    let reads = Reads::new(
        reader,
        settings.batch_size as usize,
        settings.linger(),
        control_rx,
        reports_tx,
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
    let raised = Arc::new(Raised::default());
    let checkpoints = checkpoint::Writer::new(
        db.clone(),
        settings.group.clone(),
        settings.db_limits(),
        raised.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let checkpoints = tokio::spawn(checkpoints.run());
    let (settle_tx, settle_rx) = mpsc::channel(4);
    let settler = Settler::new(
        config.clone(),
        write_conn,
        metrics.clone(),
        shutdown.clone(),
        raised.clone(),
    );
    let settler = tokio::spawn(settler.run(settle_rx));
    let committer = Committer::new(config, db, metrics, shutdown);
    Pipeline::new(reads, committer, settle_tx).run().await;
    let _ = settler.await;
    // The last batch is settled: the writer writes what is left, then stops.
    raised.close();
    let _ = checkpoints.await;
    let _ = maintenance.await;
    if cluster {
        tracing::info!(%node, "the node's pipeline stopped");
    } else {
        tracing::info!("persister stopped");
    }
    Ok(())
}
