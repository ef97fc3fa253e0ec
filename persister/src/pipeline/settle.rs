//! Stage 4 driven: acknowledges what was committed (`XACK`, never before the COMMIT
//! returned), raises the checkpoints of what was committed (written apart, at most once a
//! second: see [`crate::checkpoint`]) and deals with the entries that could not be written —
//! left pending to be tried again, dead-lettered at their last delivery. Runs on a
//! connection of its own, so acknowledging one batch overlaps committing the next. Batches
//! come in the order they were read, each once it has finished.

use super::ack;
use super::write::{Failure, WriteConfig, Written};
use crate::checkpoint::Raised;
use crate::event::{EntryId, RawEntry, StreamKey};
use crate::logging::Repeats;
use crate::metrics::Metrics;
use crate::policy::{Shutdown, Stopped, Until, Verdict};
use redis::aio::ConnectionLike;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Longest list of entries named one by one in a log line.
const NAMED_IN_LOG: usize = 3;

pub struct Settler<C> {
    config: WriteConfig,
    conn: C,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    /// The checkpoints of what was committed, for the checkpoint writer.
    checkpoints: Arc<Raised>,
    ack_failures: Repeats,
    /// Streams whose `XACK` was refused, already logged.
    refused_streams: HashSet<StreamKey>,
}

impl<C: ConnectionLike + Send> Settler<C> {
    pub fn new(
        config: WriteConfig,
        conn: C,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
        checkpoints: Arc<Raised>,
    ) -> Settler<C> {
        Settler {
            config,
            conn,
            metrics,
            shutdown,
            checkpoints,
            ack_failures: Repeats::default(),
            refused_streams: HashSet::new(),
        }
    }

    /// Settles every batch sent, until the sender is dropped.
    pub async fn run(mut self, mut written: mpsc::Receiver<Written>) {
        while let Some(batch) = written.recv().await {
            self.settle(batch).await;
        }
    }

    pub async fn settle(&mut self, written: Written) {
        self.acknowledge(&written.committed).await;
        // Committed, acknowledged or not: their rows are durable.
        self.checkpoints.raise(&written.committed);
        self.failed_entries(written.failed).await;
    }

    /// `XACK` after COMMIT, retried while Redis is unavailable. Entries left unacknowledged
    /// (out of time at shutdown) are delivered again and counted as duplicates.
    async fn acknowledge(&mut self, committed: &[(StreamKey, EntryId)]) {
        if committed.is_empty() {
            return;
        }
        let Settler {
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
                    if crate::pipeline::read::redirected(&error) {
                        tracing::debug!(
                            stream = %String::from_utf8_lossy(&stream),
                            %error,
                            "XACK turned away: the stream's slot is served by another node now, \
                             where its entries are read again (as duplicates) and acknowledged"
                        );
                        continue;
                    }
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
    async fn failed_entries(&mut self, failed: Vec<(RawEntry, Failure)>) {
        if failed.is_empty() {
            return;
        }
        let keys: Vec<(&[u8], EntryId)> = failed
            .iter()
            .map(|(entry, _)| (&*entry.stream, entry.id))
            .collect();
        // Asked twice: the first use of a connection Redis dropped meanwhile (a restart)
        // fails once and reconnects, and an entry left uncounted here would never be counted
        // (its next delivery is not its first).
        let mut counts = ack::delivery_counts(&mut self.conn, &self.config.group, &keys).await;
        if counts.is_err() {
            counts = ack::delivery_counts(&mut self.conn, &self.config.group, &keys).await;
        }
        let counts = match counts {
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
            let dead_letters = self.config.dead_letter_key(&entry.stream);
            match ack::dead_letter(
                &mut self.conn,
                &dead_letters,
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
                        dead_letter_stream = %String::from_utf8_lossy(&dead_letters),
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
