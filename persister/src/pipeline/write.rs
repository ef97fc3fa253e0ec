//! The write side of the pipeline: commits a batch (stage 3), acknowledges what was
//! committed (stage 4), and deals with the entries that could not be written — left pending
//! to be tried again, dead-lettered at their last delivery.

use super::ack::{self, Letter};
use super::commit::plan::Refused;
use super::commit::{commit_batch, CommitStats, Limits};
use crate::db::{classify, error_label, Db, ErrorKind};
use crate::event::{EntryId, Event, Malformed, RawEntry, StreamKey};
use crate::logging::Repeats;
use crate::metrics::{now_ms, Metrics};
use crate::policy::{RetryPolicy, Shutdown, Stopped, Until, Verdict};
use redis::aio::ConnectionLike;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Static settings of the write side.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    pub group: String,
    pub max_deliveries: u64,
    pub dead_letter_stream: String,
    pub limits: Limits,
    pub retry: RetryPolicy,
}

/// Why one entry was not written.
#[derive(Debug, Clone)]
enum Failure {
    Malformed(Malformed),
    Refused(Refused),
    /// The database refused its data (too long for a column…).
    Database(String),
}

impl Failure {
    fn letter(&self) -> Letter {
        match self {
            Failure::Malformed(why) => Letter {
                reason: why.to_string(),
                details: Vec::new(),
            },
            Failure::Database(error) => Letter {
                reason: format!("database refused it: {error}"),
                details: Vec::new(),
            },
            Failure::Refused(refused) => {
                let mut details = vec![
                    ("coupon", refused.coupon.clone()),
                    ("seq", refused.seq.to_string().into_bytes()),
                    ("user", refused.user.clone()),
                ];
                if let super::commit::plan::Refusal::Conflict { holder, entry, .. } = &refused.why {
                    details.push(("persisted_user", holder.clone()));
                    details.push(("persisted_entry", entry.clone().into_bytes()));
                }
                Letter {
                    reason: refused.reason(),
                    details,
                }
            }
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(self, Failure::Refused(refused) if refused.is_conflict())
    }

    fn label(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "bad_entry",
            Failure::Refused(refused) if refused.is_conflict() => "conflict",
            Failure::Refused(_) => "revoke_without_issue",
            Failure::Database(_) => "refused_by_database",
        }
    }
}

/// The outcome of committing a set of events.
enum Commit {
    Done(CommitStats),
    /// The database refused the data itself; retrying the same rows would fail again.
    Refused(sqlx::Error),
    /// Shutting down and out of time: nothing of it was acknowledged.
    GaveUp,
}

pub struct Writer<C> {
    config: WriteConfig,
    db: Db,
    conn: C,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    commit_failures: Repeats,
    ack_failures: Repeats,
    /// Streams whose `XACK` was refused, already logged.
    refused_streams: HashSet<StreamKey>,
}

/// Longest list of entries named one by one in a log line.
const NAMED_IN_LOG: usize = 3;

impl<C: ConnectionLike + Send> Writer<C> {
    pub fn new(
        config: WriteConfig,
        db: Db,
        conn: C,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Writer<C> {
        Writer {
            config,
            db,
            conn,
            metrics,
            shutdown,
            commit_failures: Repeats::default(),
            ack_failures: Repeats::default(),
            refused_streams: HashSet::new(),
        }
    }

    /// Commits a batch's events, acknowledges them, and deals with the ones that failed.
    pub async fn process(&mut self, entries: Vec<RawEntry>) {
        if entries.is_empty() {
            return;
        }
        let mut events: Vec<Event> = Vec::with_capacity(entries.len());
        let mut failed: Vec<(&RawEntry, Failure)> = Vec::new();
        for entry in &entries {
            match entry.parse() {
                Ok(event) => events.push(event),
                Err(Malformed::PayloadGone) => {
                    self.metrics.vanished.inc();
                    tracing::error!(
                        stream = %String::from_utf8_lossy(&entry.stream),
                        id = %entry.id,
                        "ALARM: a pending entry's payload is gone from the stream; it is left \
                         pending, not acknowledged"
                    );
                }
                Err(why) => failed.push((entry, Failure::Malformed(why))),
            }
        }

        let by_id: HashMap<(&[u8], EntryId), &RawEntry> = entries
            .iter()
            .map(|entry| ((&*entry.stream, entry.id), entry))
            .collect();
        let mut committed: Vec<(StreamKey, EntryId)> = Vec::with_capacity(events.len());
        if !events.is_empty() {
            match self.commit(&events).await {
                Commit::Done(stats) => {
                    self.record(&events, &stats);
                    settle(&events, stats, &by_id, &mut committed, &mut failed);
                }
                Commit::GaveUp => return,
                Commit::Refused(error) => {
                    tracing::warn!(
                        %error,
                        events = events.len(),
                        "the database refused a batch; committing its events one by one"
                    );
                    for event in &events {
                        let single = std::slice::from_ref(event);
                        match self.commit(single).await {
                            Commit::Done(stats) => {
                                self.record(single, &stats);
                                settle(single, stats, &by_id, &mut committed, &mut failed);
                            }
                            Commit::GaveUp => break,
                            Commit::Refused(error) => {
                                if let Some(entry) = by_id.get(&(&*event.stream, event.id)) {
                                    failed.push((entry, Failure::Database(error.to_string())));
                                }
                            }
                        }
                    }
                }
            }
        }

        self.acknowledge(&committed).await;
        self.failed_entries(failed).await;
    }

    fn record(&self, events: &[Event], stats: &CommitStats) {
        let m = &self.metrics;
        m.batch_size.observe(events.len() as f64);
        m.rows_written
            .with_label_values(&["inserted"])
            .inc_by(stats.inserted);
        m.rows_written
            .with_label_values(&["updated"])
            .inc_by(stats.updated);
        m.duplicates.inc_by(stats.duplicates);
        let now = now_ms();
        for event in events {
            m.lag_seconds
                .observe((now - event.ts_ms).max(0) as f64 / 1000.0);
        }
        tracing::debug!(
            events = events.len(),
            inserted = stats.inserted,
            updated = stats.updated,
            duplicates = stats.duplicates,
            refused = stats.refused.len(),
            "batch committed"
        );
    }

    /// One transaction, retried while the database is unavailable. The statements before
    /// COMMIT are bounded by `--db-timeout-ms` and abandoned (rolled back) at the shutdown
    /// deadline; a COMMIT in flight is never cancelled by shutdown, only bounded by a long
    /// timeout.
    async fn commit(&mut self, events: &[Event]) -> Commit {
        let Writer {
            config,
            db,
            metrics,
            shutdown,
            commit_failures,
            ..
        } = self;
        let attempt = || {
            let started = Instant::now();
            let abort = shutdown.deadline_passed();
            let write = commit_batch(db, &config.group, events, now_ms(), config.limits, abort);
            async move { write.await.map(|stats| (stats, started.elapsed())) }
        };
        let judge = |error: &sqlx::Error, failure: crate::policy::Failure| {
            metrics.error(error_label(error));
            if classify(error) == ErrorKind::Data {
                return Verdict::Fail;
            }
            metrics.health.stage_failed("commit", error);
            metrics.retry("commit");
            if let Some(unlogged) = commit_failures.note(Instant::now()) {
                tracing::warn!(
                    %error,
                    delay = ?failure.delay,
                    events = events.len(),
                    unlogged,
                    "commit failed; retrying"
                );
            }
            Verdict::Retry
        };
        let result = config
            .retry
            .run(shutdown, Until::Deadline, attempt, judge)
            .await;
        match result {
            Ok((stats, took)) => {
                metrics.commit_seconds.observe(took.as_secs_f64());
                metrics.health.stage_ok("commit");
                let failures = commit_failures.clear();
                if failures > 0 {
                    tracing::info!(failures, "commits succeed again");
                }
                Commit::Done(stats)
            }
            Err(Stopped::Failed(error)) => Commit::Refused(error),
            Err(Stopped::ShutDown(error)) => {
                tracing::warn!(%error, "shutting down: batch left pending, not committed");
                Commit::GaveUp
            }
        }
    }

    /// `XACK` after COMMIT, retried while Redis is unavailable. Entries left unacknowledged
    /// (out of time at shutdown) are delivered again and counted as duplicates.
    async fn acknowledge(&mut self, committed: &[(StreamKey, EntryId)]) {
        if committed.is_empty() {
            return;
        }
        let Writer {
            config,
            conn,
            metrics,
            shutdown,
            ack_failures,
            ..
        } = self;
        let group = config.group.as_str();
        let conn = tokio::sync::Mutex::new(conn);
        let attempt = || async {
            let mut conn = conn.lock().await;
            ack::ack(&mut **conn, group, committed).await
        };
        let judge = |error: &redis::RedisError, failure: crate::policy::Failure| {
            metrics.error("redis_ack");
            metrics.retry("ack");
            metrics.health.stage_failed("ack", error);
            if let Some(unlogged) = ack_failures.note(Instant::now()) {
                tracing::warn!(%error, delay = ?failure.delay, unlogged, "XACK failed; retrying");
            }
            Verdict::Retry
        };
        let result = config
            .retry
            .run(shutdown, Until::Deadline, attempt, judge)
            .await;
        match result {
            Ok(acked) => {
                metrics.acked.inc_by(acked.count);
                metrics.health.stage_ok("ack");
                if ack_failures.clear() > 0 {
                    tracing::info!("XACK succeeds again");
                }
                for (stream, error) in acked.refused {
                    if self.refused_streams.insert(stream.clone()) {
                        tracing::warn!(
                            stream = %String::from_utf8_lossy(&stream),
                            %error,
                            "the stream refused XACK (it is no longer a stream?): its committed \
                             entries stay unacknowledged"
                        );
                    }
                }
            }
            Err(error) => {
                let (Stopped::Failed(error) | Stopped::ShutDown(error)) = error;
                tracing::warn!(%error, "shutting down: committed entries left unacknowledged");
            }
        }
    }

    /// Entries that could not be written: dead-lettered once delivered `max_deliveries`
    /// times, else left pending to be claimed and tried again. Logged and counted once per
    /// entry (at its first delivery), and again when dead-lettered.
    async fn failed_entries(&mut self, failed: Vec<(&RawEntry, Failure)>) {
        if failed.is_empty() {
            return;
        }
        let keys: Vec<(&[u8], EntryId)> = failed
            .iter()
            .map(|(entry, _)| (&*entry.stream, entry.id))
            .collect();
        let counts = match ack::delivery_counts(&mut self.conn, &self.config.group, &keys).await {
            Ok(counts) => counts,
            Err(error) => {
                self.metrics.error("redis_pending");
                tracing::warn!(%error, entries = failed.len(), "cannot read delivery counts");
                return;
            }
        };
        let mut first_seen: Vec<String> = Vec::new();
        let mut first_count = 0usize;
        for ((entry, failure), deliveries) in failed.iter().zip(counts) {
            let Some(deliveries) = deliveries else {
                continue;
            };
            let stream = String::from_utf8_lossy(&entry.stream);
            let letter = failure.letter();
            if deliveries <= 1 {
                self.metrics.error(failure.label());
                if failure.is_conflict() {
                    self.metrics.conflicts.inc();
                    tracing::error!(%stream, id = %entry.id, "ALARM: {}", letter.reason);
                } else if !matches!(failure, Failure::Refused(_)) {
                    first_count += 1;
                    if first_seen.len() < NAMED_IN_LOG {
                        first_seen.push(format!("{stream} {}: {}", entry.id, letter.reason));
                    }
                }
            }
            if deliveries < self.config.max_deliveries {
                continue;
            }
            match ack::dead_letter(
                &mut self.conn,
                &self.config.dead_letter_stream,
                &self.config.group,
                entry,
                &letter,
                deliveries,
            )
            .await
            {
                Ok(()) => {
                    self.metrics.dead_lettered.inc();
                    tracing::error!(
                        %stream, id = %entry.id, reason = %letter.reason, deliveries,
                        dead_letter_stream = %self.config.dead_letter_stream,
                        "entry dead-lettered"
                    );
                }
                Err(error) => {
                    self.metrics.error("redis_dead_letter");
                    tracing::warn!(%error, %stream, id = %entry.id, "dead-lettering failed");
                }
            }
        }
        if first_count > 0 {
            tracing::warn!(
                entries = first_count,
                max_deliveries = self.config.max_deliveries,
                "entries cannot be persisted; left pending to be tried again, then \
                 dead-lettered: {}{}",
                first_seen.join("; "),
                if first_count > first_seen.len() {
                    format!("; and {} more", first_count - first_seen.len())
                } else {
                    String::new()
                }
            );
        }
    }
}

/// Sorts the events of a done commit: written ones are to be acknowledged, refused ones
/// are failures (not acknowledged, dead-lettered in time).
fn settle<'a>(
    done: &[Event],
    stats: CommitStats,
    by_id: &HashMap<(&[u8], EntryId), &'a RawEntry>,
    committed: &mut Vec<(StreamKey, EntryId)>,
    failed: &mut Vec<(&'a RawEntry, Failure)>,
) {
    if stats.refused.is_empty() {
        committed.extend(done.iter().map(|event| (event.stream.clone(), event.id)));
        return;
    }
    let mut refused: HashMap<(StreamKey, EntryId), Refused> = stats
        .refused
        .into_iter()
        .map(|refused| ((refused.stream.clone(), refused.id), refused))
        .collect();
    for event in done {
        match refused.remove(&(event.stream.clone(), event.id)) {
            None => committed.push((event.stream.clone(), event.id)),
            Some(refused) => {
                if let Some(entry) = by_id.get(&(&*event.stream, event.id)) {
                    failed.push((entry, Failure::Refused(refused)));
                }
            }
        }
    }
}
