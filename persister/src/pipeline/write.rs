//! Driving stage 3: commits batches — up to [`WriteConfig::in_flight`] at once, each in its
//! own transaction — retrying while the database is unavailable, and sorting each batch's
//! entries into written ones (to acknowledge) and failed ones (see [`super::settle`]).
//!
//! Two transactions in flight keep the database busy while the other one commits. They hold
//! rows only (checkpoints are written after COMMIT, apart: see [`crate::checkpoint`]), so
//! they meet only on a row both write: an insert meeting a row of the other waits for it and
//! then finds it (and the batch is looked up again); a revoke that finds no issue is tried
//! once more after the batch before it has finished (its issue may have been there,
//! uncommitted).

use super::ack::Letter;
use super::commit::plan::{Refusal, Refused};
use super::commit::{commit_batch, CommitStats, Limits};
use crate::db::{classify, error_label, Db, ErrorKind};
use crate::event::{EntryId, Event, Malformed, RawEntry, StreamKey};
use crate::logging::Repeats;
use crate::metrics::{now_ms, Metrics};
use crate::policy::{RetryPolicy, Shutdown, Stopped, Until, Verdict};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// Static settings of the write side.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    pub group: String,
    pub max_deliveries: u64,
    pub dead_letter_stream: String,
    pub limits: Limits,
    pub retry: RetryPolicy,
    /// Batches committing at once (1 for SQLite, which takes one writer at a time).
    pub in_flight: usize,
    /// On a cluster, an entry's dead letter goes to a key in its stream's slot (see
    /// [`WriteConfig::dead_letter_key`]).
    pub cluster: bool,
}

impl WriteConfig {
    /// Where the dead letter of an entry of `stream` goes: the dead-letter stream; on a
    /// cluster `<dead-letter-stream>{<hash tag of the stream>}`, in the stream's slot, so
    /// the script that stores it and acknowledges the entry names keys of one slot.
    pub fn dead_letter_key(&self, stream: &[u8]) -> Vec<u8> {
        let mut key = self.dead_letter_stream.clone().into_bytes();
        if self.cluster {
            key.push(b'{');
            key.extend_from_slice(coupon_layout::hash_tag(stream).unwrap_or(stream));
            key.push(b'}');
        }
        key
    }
}

/// Why one entry was not written.
#[derive(Debug, Clone)]
pub enum Failure {
    Malformed(Malformed),
    Refused(Refused),
    /// The database refused its data (too long for a column…).
    Database(String),
}

impl Failure {
    pub fn letter(&self) -> Letter {
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

    pub fn is_conflict(&self) -> bool {
        matches!(self, Failure::Refused(refused) if refused.is_conflict())
    }

    pub fn label(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "bad_entry",
            Failure::Refused(refused) if refused.is_conflict() => "conflict",
            Failure::Refused(_) => "revoke_without_issue",
            Failure::Database(_) => "refused_by_database",
        }
    }
}

/// What became of a batch's entries.
#[derive(Debug, Default)]
pub struct Written {
    /// Committed: to be acknowledged.
    pub committed: Vec<(StreamKey, EntryId)>,
    /// Not written: left pending, dead-lettered at their last delivery.
    pub failed: Vec<(RawEntry, Failure)>,
}

/// The outcome of committing a set of events.
enum Commit {
    Done(CommitStats),
    /// The database refused the data itself; retrying the same rows would fail again.
    Refused(sqlx::Error),
    /// Shutting down and out of time: nothing of it was acknowledged.
    GaveUp,
}

pub struct Committer {
    config: WriteConfig,
    db: Db,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    failures: Mutex<Repeats>,
}

impl Committer {
    pub fn new(
        config: WriteConfig,
        db: Db,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Committer {
        Committer {
            config,
            db,
            metrics,
            shutdown,
            failures: Mutex::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.config.in_flight.max(1)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Repeats> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits a batch's events; says which entries were written and which failed.
    /// `earlier` completes when the batch before this one has finished (its sender dropped):
    /// a revoke whose issue was not found is tried once more after it, as that issue may
    /// have been in it, still uncommitted when this batch looked.
    pub async fn write(
        &self,
        entries: Vec<RawEntry>,
        earlier: oneshot::Receiver<()>,
        done: oneshot::Sender<()>,
    ) -> Written {
        let mut written = Written::default();
        if entries.is_empty() {
            return written;
        }
        let mut events: Vec<Event> = Vec::with_capacity(entries.len());
        let mut failed: HashMap<(StreamKey, EntryId), Failure> = HashMap::new();
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
                Err(why) => {
                    failed.insert((entry.stream.clone(), entry.id), Failure::Malformed(why));
                }
            }
        }
        if !events.is_empty() {
            match self.commit(&events).await {
                Commit::Done(stats) => {
                    self.record(&events, &stats);
                    let waiting: Vec<(StreamKey, EntryId)> = stats
                        .refused
                        .iter()
                        .filter(|refused| refused.why == Refusal::NoIssue)
                        .map(|refused| (refused.stream.clone(), refused.id))
                        .collect();
                    settle(&events, stats, &mut written.committed, &mut failed);
                    if !waiting.is_empty() {
                        let _ = earlier.await;
                        let again: Vec<Event> = events
                            .iter()
                            .filter(|event| waiting.contains(&(event.stream.clone(), event.id)))
                            .cloned()
                            .collect();
                        if let Commit::Done(stats) = self.commit(&again).await {
                            self.record(&again, &stats);
                            for event in &again {
                                failed.remove(&(event.stream.clone(), event.id));
                            }
                            settle(&again, stats, &mut written.committed, &mut failed);
                        }
                    }
                }
                Commit::GaveUp => events.clear(),
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
                                settle(single, stats, &mut written.committed, &mut failed);
                            }
                            Commit::GaveUp => break,
                            Commit::Refused(error) => {
                                let why = Failure::Database(error.to_string());
                                failed.insert((event.stream.clone(), event.id), why);
                            }
                        }
                    }
                }
            }
        }
        // This batch's transactions are over: the next one may look again.
        drop(done);
        if !failed.is_empty() {
            for entry in entries {
                if let Some(why) = failed.remove(&(entry.stream.clone(), entry.id)) {
                    written.failed.push((entry, why));
                }
            }
        }
        written
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
    async fn commit(&self, events: &[Event]) -> Commit {
        let Committer {
            config,
            db,
            metrics,
            shutdown,
            ..
        } = self;
        let attempt = || {
            let started = Instant::now();
            let abort = shutdown.deadline_passed();
            let write = commit_batch(db, events, config.limits, abort);
            async move { write.await.map(|stats| (stats, started.elapsed())) }
        };
        let judge = |error: &sqlx::Error, failure: crate::policy::Failure| {
            metrics.error(error_label(error));
            if classify(error) == ErrorKind::Data {
                return Verdict::Fail;
            }
            metrics.health.stage_failed("commit", error);
            metrics.retry("commit");
            if let Some(unlogged) = self.failures().note(Instant::now()) {
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
                let failures = self.failures().clear();
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
}

/// Sorts the events of a done commit: written ones are to be acknowledged, refused ones
/// are failures (not acknowledged, dead-lettered in time).
fn settle(
    done: &[Event],
    stats: CommitStats,
    committed: &mut Vec<(StreamKey, EntryId)>,
    failed: &mut HashMap<(StreamKey, EntryId), Failure>,
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
        let key = (event.stream.clone(), event.id);
        match refused.remove(&key) {
            None => committed.push(key),
            Some(refused) => {
                failed.insert(key, Failure::Refused(refused));
            }
        }
    }
}
