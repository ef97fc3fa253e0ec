//! Health: whether the database and Redis answer — probed every second on connections of
//! their own, so a frozen dependency shows whatever the traffic and however stuck the
//! pipeline is — and whether a stage of the pipeline keeps failing.

use crate::db::Db;
use crate::metrics::{now_ms, Metrics};
use crate::policy::Shutdown;
use sqlx::{AnyConnection, Connection};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the dependencies are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take before the dependency counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Unhealthy when a dependency has not answered for this long.
const STALE_MS: i64 = 3_000;
/// Unhealthy when the pipeline has not turned for this long (a batch stuck past every
/// timeout).
const STALL_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dependency {
    Database,
    Redis,
}

impl Dependency {
    pub fn label(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Redis => "redis",
        }
    }
}

#[derive(Debug, Default)]
struct Probe {
    /// Unix ms of the last answer; 0 before the first.
    answered_ms: AtomicI64,
    /// The last probe's error, if it failed.
    error: Mutex<Option<String>>,
}

#[derive(Debug)]
pub struct Health {
    database: Probe,
    redis: Probe,
    /// Stages whose last attempt failed, with the error.
    failing: Mutex<BTreeMap<&'static str, String>>,
    /// Unix ms of the pipeline's last turn.
    heartbeat_ms: AtomicI64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            database: Probe::default(),
            redis: Probe::default(),
            failing: Mutex::default(),
            heartbeat_ms: AtomicI64::new(now_ms()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Health {
    fn probe(&self, dependency: Dependency) -> &Probe {
        match dependency {
            Dependency::Database => &self.database,
            Dependency::Redis => &self.redis,
        }
    }

    /// Records a probe's outcome.
    pub fn probed(&self, dependency: Dependency, outcome: Result<(), String>, at_ms: i64) {
        let probe = self.probe(dependency);
        if outcome.is_ok() {
            probe.answered_ms.store(at_ms, Ordering::Relaxed);
        }
        *lock(&probe.error) = outcome.err();
    }

    pub fn stage_failed(&self, stage: &'static str, error: &dyn std::fmt::Display) {
        lock(&self.failing).insert(stage, error.to_string());
    }

    pub fn stage_ok(&self, stage: &'static str) {
        let mut failing = lock(&self.failing);
        if !failing.is_empty() {
            failing.remove(stage);
        }
    }

    /// The pipeline turned.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `Err` with the reasons when unhealthy at `now_ms`.
    pub fn status(&self, now_ms: i64) -> Result<(), String> {
        let mut problems = Vec::new();
        for dependency in [Dependency::Database, Dependency::Redis] {
            let probe = self.probe(dependency);
            let answered = probe.answered_ms.load(Ordering::Relaxed);
            if let Some(error) = lock(&probe.error).as_ref() {
                problems.push(format!("{}: {error}", dependency.label()));
            } else if answered == 0 {
                problems.push(format!("{}: not reached yet", dependency.label()));
            } else if now_ms - answered > STALE_MS {
                let silent = (now_ms - answered) as f64 / 1000.0;
                problems.push(format!(
                    "{}: no answer for {silent:.1} s",
                    dependency.label()
                ));
            }
        }
        for (stage, error) in lock(&self.failing).iter() {
            problems.push(format!("{stage} failing: {error}"));
        }
        let turned = self.heartbeat_ms.load(Ordering::Relaxed);
        if now_ms - turned > STALL_MS {
            let stalled = (now_ms - turned) / 1000;
            problems.push(format!("the pipeline has not moved for {stalled} s"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Probes the database (`SELECT 1`) and Redis (`PING`) every [`PROBE_EVERY`] on connections
/// of their own, until shutdown.
pub async fn run_probes(db: Db, redis: redis::Client, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut database: Option<AnyConnection> = None;
    let mut server: Option<redis::aio::MultiplexedConnection> = None;
    while !shutdown.requested() {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe_database(&db, &mut database))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        if outcome.is_err() {
            database = None;
        }
        record(&metrics, Dependency::Database, outcome);
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe_redis(&redis, &mut server))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        if outcome.is_err() {
            server = None;
        }
        record(&metrics, Dependency::Redis, outcome);
        shutdown.pause(PROBE_EVERY).await;
    }
}

fn record(metrics: &Metrics, dependency: Dependency, outcome: Result<(), String>) {
    let up = i64::from(outcome.is_ok());
    metrics.up.with_label_values(&[dependency.label()]).set(up);
    metrics.health.probed(dependency, outcome, now_ms());
}

async fn probe_database(db: &Db, conn: &mut Option<AnyConnection>) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(db.connect_alone().await.map_err(|e| e.to_string())?);
    }
    let Some(conn) = conn.as_mut() else {
        return Err("no connection".into());
    };
    conn.ping().await.map_err(|e| e.to_string())
}

async fn probe_redis(
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
) -> Result<(), String> {
    if conn.is_none() {
        let opened = client.get_multiplexed_async_connection().await;
        *conn = Some(opened.map_err(|e| e.to_string())?);
    }
    let Some(conn) = conn.as_mut() else {
        return Err("no connection".into());
    };
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_until_both_answer_and_when_one_goes_silent() {
        let health = Health::default();
        let now = now_ms();
        assert!(health.status(now).is_err());
        health.probed(Dependency::Database, Ok(()), now);
        health.probed(Dependency::Redis, Ok(()), now);
        assert_eq!(health.status(now), Ok(()));
        let why = health.status(now + STALE_MS + 500).expect_err("stale");
        assert!(why.contains("database: no answer for"), "{why}");
        health.probed(Dependency::Redis, Err("refused".into()), now);
        assert!(health
            .status(now)
            .expect_err("failing")
            .contains("redis: refused"));
        health.probed(Dependency::Redis, Ok(()), now);
        health.stage_failed("commit", &"deadlock");
        assert!(health
            .status(now)
            .expect_err("failing")
            .contains("commit failing"));
        health.stage_ok("commit");
        assert_eq!(health.status(now), Ok(()));
    }
}
