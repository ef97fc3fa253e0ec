//! Checkpoints: per consumer group and stream, the highest entry ID the group has committed.
//! Only trimming reads them (duplicates are found by row key, see [`crate::pipeline::commit`]), so
//! they are written off the hot path, after the data: the settler raises them from each
//! batch it settles — entries whose COMMIT returned — and the [`Writer`] writes what was
//! raised in one short transaction of its own, at most once every [`WRITE_EVERY`], and once
//! more after the last batch. A batch's transaction holds rows only.
//!
//! A checkpoint is therefore only ever behind the rows. A crash after a batch's COMMIT and
//! before its checkpoint is written leaves it behind: trimming keeps more, and the entries
//! read again are skipped as duplicates. It never covers a batch before every batch read
//! before it has finished, as the settler gets them in that order; entries left pending
//! (refused, to be tried again) may lie below it, and trimming keeps them as pending. A
//! failed write is counted, logged and tried again with whatever was raised meanwhile; the
//! `UPDATE` only raises, so a write never moves a checkpoint back (another consumer's
//! older one included).

pub mod statements;

pub use statements::{read_checkpoint, read_checkpoints};

use crate::db::{classify, error_label, Db, ErrorKind};
use crate::event::{EntryId, StreamKey};
use crate::logging::Repeats;
use crate::metrics::{now_ms, Metrics};
use crate::pipeline::commit::Limits;
use crate::policy::Shutdown;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Checkpoints are written at most this often (and after the last batch); a failed write is
/// tried again after as long. Flat, not backing off: one short transaction a second costs a
/// database that is down nothing, and checkpoints (and `/healthz`) recover within a second
/// of it coming back.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The checkpoints raised and not written yet, shared by the settler (which raises them)
/// and the [`Writer`] (which takes them). Holds one entry per stream, however many batches
/// wait to be written.
#[derive(Debug, Default)]
pub struct Raised {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    highest: HashMap<StreamKey, EntryId>,
    /// Nothing more will be raised: the writer writes what is left and stops.
    closed: bool,
}

impl Raised {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Raises each stream's checkpoint to its highest entry in `committed` (entries whose
    /// COMMIT returned).
    pub fn raise(&self, committed: &[(StreamKey, EntryId)]) {
        if committed.is_empty() {
            return;
        }
        let mut state = self.lock();
        let was_empty = state.highest.is_empty();
        for (stream, id) in committed {
            raise_to(&mut state.highest, stream, *id);
        }
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// No more batches: the writer writes what is left, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// (nothing to write, closed)
    fn peek(&self) -> (bool, bool) {
        let state = self.lock();
        (state.highest.is_empty(), state.closed)
    }

    /// What is to be written, sorted by stream (every writer locks rows in one order).
    fn take(&self) -> Vec<(StreamKey, EntryId)> {
        let mut taken: Vec<(StreamKey, EntryId)> = std::mem::take(&mut self.lock().highest)
            .into_iter()
            .collect();
        taken.sort_unstable();
        taken
    }

    /// Puts back what could not be written, under what was raised meanwhile.
    fn put_back(&self, unwritten: Vec<(StreamKey, EntryId)>) {
        let mut state = self.lock();
        for (stream, id) in unwritten {
            raise_to(&mut state.highest, &stream, id);
        }
    }
}

fn raise_to(highest: &mut HashMap<StreamKey, EntryId>, stream: &StreamKey, id: EntryId) {
    match highest.get_mut(stream) {
        Some(known) => *known = (*known).max(id),
        None => {
            highest.insert(stream.clone(), id);
        }
    }
}

/// Writes the raised checkpoints of one group, until [`Raised::close`] and the last write.
pub struct Writer {
    db: Db,
    group: String,
    limits: Limits,
    raised: Arc<Raised>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    failures: Repeats,
    /// Streams whose checkpoint the database refused, already logged.
    refused: HashSet<StreamKey>,
}

/// What a failed write leaves: the checkpoints not written, and why.
type Unwritten = (Vec<(StreamKey, EntryId)>, sqlx::Error);

impl Writer {
    pub fn new(
        db: Db,
        group: String,
        limits: Limits,
        raised: Arc<Raised>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Writer {
        Writer {
            db,
            group,
            limits,
            raised,
            metrics,
            shutdown,
            failures: Repeats::default(),
            refused: HashSet::new(),
        }
    }

    /// Writes what is raised: at once after a quiet second, else a second after the last
    /// write or failure. Once closed, writes what is left at once (a second after a failure)
    /// and returns — or gives up, leaving the checkpoints behind the rows, when a write
    /// fails after the shutdown deadline.
    pub async fn run(mut self) {
        let mut paced_until = Instant::now();
        let mut retry_at: Option<Instant> = None;
        loop {
            let (empty, closed) = self.raised.peek();
            if empty {
                if closed {
                    return;
                }
                self.raised.wake.notified().await;
                continue;
            }
            let now = Instant::now();
            let due = match retry_at {
                _ if closed && self.shutdown.out_of_time() => now,
                Some(at) => at,
                None if closed => now,
                None => paced_until,
            };
            if now < due {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    // Closed: the last write need not wait for the pace.
                    () = self.raised.wake.notified() => {}
                    () = self.shutdown.deadline_passed(), if closed => {}
                }
                continue;
            }
            let taken = self.raised.take();
            match self.write(taken).await {
                Ok(()) => {
                    self.succeeded();
                    retry_at = None;
                    paced_until = Instant::now() + WRITE_EVERY;
                }
                Err((unwritten, error)) => {
                    let streams = unwritten.len();
                    self.raised.put_back(unwritten);
                    self.failed(&error);
                    if closed && self.shutdown.out_of_time() {
                        tracing::warn!(
                            %error,
                            streams,
                            "shutting down: checkpoints left behind the committed rows \
                             (trimming keeps those entries until the next run)"
                        );
                        return;
                    }
                    retry_at = Some(Instant::now() + WRITE_EVERY);
                }
            }
        }
    }

    /// Writes `taken` in one transaction. When the database refuses the data itself (a
    /// stream name longer than the column), writes them one by one and drops the refused
    /// ones: their streams keep their old checkpoint, so they are not trimmed past it.
    async fn write(&mut self, taken: Vec<(StreamKey, EntryId)>) -> Result<(), Unwritten> {
        let error = match self.advance(&taken).await {
            Ok(()) => return Ok(()),
            Err(error) if classify(&error) == ErrorKind::Data => error,
            Err(error) => return Err((taken, error)),
        };
        tracing::warn!(%error, streams = taken.len(), "the database refused checkpoints; writing them one by one");
        for (i, one) in taken.iter().enumerate() {
            match self.advance(std::slice::from_ref(one)).await {
                Ok(()) => {}
                Err(error) if classify(&error) == ErrorKind::Data => self.refuse(&one.0, &error),
                Err(error) => return Err((taken[i..].to_vec(), error)),
            }
        }
        Ok(())
    }

    async fn advance(&self, checkpoints: &[(StreamKey, EntryId)]) -> Result<(), sqlx::Error> {
        let named: Vec<(&[u8], EntryId)> = checkpoints
            .iter()
            .map(|(stream, id)| (&**stream, *id))
            .collect();
        let abort = self.shutdown.deadline_passed();
        let statements =
            statements::advance(&self.db, &self.group, &named, now_ms(), self.limits, abort)
                .await?;
        self.metrics.checkpoint_writes.inc();
        tracing::debug!(streams = named.len(), statements, "checkpoints written");
        Ok(())
    }

    fn refuse(&mut self, stream: &StreamKey, error: &sqlx::Error) {
        self.metrics.error("checkpoint_refused");
        if self.refused.insert(stream.clone()) {
            tracing::error!(
                stream = %String::from_utf8_lossy(stream),
                %error,
                "the database refused this stream's checkpoint: its rows are persisted, but \
                 it is not trimmed past its last checkpoint"
            );
        }
    }

    fn succeeded(&mut self) {
        self.metrics.health.stage_ok("checkpoint");
        let failures = self.failures.clear();
        if failures > 0 {
            tracing::info!(failures, "writing the checkpoints works again");
        }
    }

    fn failed(&mut self, error: &sqlx::Error) {
        self.metrics.error(error_label(error));
        self.metrics.retry("checkpoint");
        self.metrics.health.stage_failed("checkpoint", error);
        if let Some(unlogged) = self.failures.note(Instant::now()) {
            tracing::warn!(
                %error,
                delay = ?WRITE_EVERY,
                unlogged,
                "writing the checkpoints failed; retrying (until then trimming keeps the \
                 entries they do not cover)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::scratch_sqlite;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    fn stream(name: &str) -> StreamKey {
        Arc::from(name.as_bytes())
    }

    fn writer(db: &Db, raised: &Arc<Raised>, metrics: &Arc<Metrics>, shutdown: Shutdown) -> Writer {
        Writer::new(
            db.clone(),
            "g".into(),
            Limits::default(),
            raised.clone(),
            metrics.clone(),
            shutdown,
        )
    }

    async fn checkpoint_of(db: &Db, name: &str) -> Option<EntryId> {
        read_checkpoint(db, "g", name.as_bytes())
            .await
            .ok()
            .flatten()
    }

    /// Polls until `name`'s checkpoint is `want`, for at most `within`.
    async fn wait_for(db: &Db, name: &str, want: EntryId, within: Duration) -> Duration {
        let started = Instant::now();
        while checkpoint_of(db, name).await != Some(want) {
            assert!(
                started.elapsed() < within,
                "{name} not at {want} after {within:?}: {:?}",
                checkpoint_of(db, name).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    #[test]
    fn the_highest_entry_per_stream_is_kept() {
        let raised = Raised::default();
        raised.raise(&[(stream("a"), id(5)), (stream("b"), id(3))]);
        raised.raise(&[(stream("a"), id(4)), (stream("a"), id(7))]);
        let taken = raised.take();
        assert_eq!(taken, vec![(stream("a"), id(7)), (stream("b"), id(3))]);
        assert_eq!(raised.peek(), (true, false));
        // Raised again while the write failed: the higher one stays.
        raised.raise(&[(stream("a"), id(9))]);
        raised.put_back(taken);
        assert_eq!(
            raised.take(),
            vec![(stream("a"), id(9)), (stream("b"), id(3))]
        );
        raised.close();
        assert_eq!(raised.peek(), (true, true));
    }

    /// The first checkpoint is written at once, later ones at most once a second, and what
    /// is left at close is written before the writer stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn written_promptly_at_most_once_a_second_and_at_close() {
        let (_dir, db) = scratch_sqlite().await;
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let raised = Arc::new(Raised::default());
        let task = tokio::spawn(writer(&db, &raised, &metrics, Shutdown::never()).run());
        raised.raise(&[(stream("a"), id(1))]);
        wait_for(&db, "a", id(1), Duration::from_millis(800)).await;

        let started = Instant::now();
        let mut last = 1;
        while started.elapsed() < Duration::from_millis(1500) {
            last += 1;
            raised.raise(&[(stream("a"), id(last)), (stream("b"), id(last))]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let raising = started.elapsed();
        // Raised meanwhile, within the pace: caught up within about a second.
        let caught_up = wait_for(&db, "b", id(last), Duration::from_secs(3)).await;
        assert!(caught_up <= Duration::from_millis(1500), "{caught_up:?}");
        last += 1;
        raised.raise(&[(stream("a"), id(last))]);
        raised.close();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("the writer stops after close")
            .expect("no panic");
        assert_eq!(checkpoint_of(&db, "a").await, Some(id(last)));
        let writes = metrics.checkpoint_writes.get();
        // The first, one a second while raising and catching up, the last at close.
        let most = 1 + (raising + caught_up).as_secs() + 2;
        assert!(
            (3..=most).contains(&writes),
            "{writes} writes, at most {most}"
        );
    }

    /// A write that fails is counted and shown, and retried until it succeeds, with what was
    /// raised meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_counted_and_retried() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        // Not migrated yet: the table is missing.
        let db = Db::open(&url).expect("open");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let raised = Arc::new(Raised::default());
        let task = tokio::spawn(writer(&db, &raised, &metrics, Shutdown::never()).run());
        raised.raise(&[(stream("a"), id(5))]);
        let retries = || metrics.retries.with_label_values(&["checkpoint"]).get();
        let started = Instant::now();
        while retries() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "no failure seen"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.errors.with_label_values(&["db_database"]).get() >= 1);
        let health = metrics.health.status(now_ms()).expect_err("failing");
        assert!(health.contains("checkpoint failing"), "{health}");
        raised.raise(&[(stream("b"), id(2))]);
        crate::db::migrate::migrate(&db).await.expect("migrate");
        // The failed one was kept, not dropped.
        wait_for(&db, "a", id(5), Duration::from_secs(4)).await;
        assert_eq!(checkpoint_of(&db, "b").await, Some(id(2)));
        let health = metrics.health.status(now_ms()).err().unwrap_or_default();
        assert!(!health.contains("checkpoint"), "{health}");
        raised.close();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("the writer stops after close")
            .expect("no panic");
    }

    /// Closed while writes fail, after shutdown: the writer gives up at the deadline (the
    /// checkpoints stay behind) instead of holding up the exit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_shutdown_failing_writes_end_at_the_deadline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::open(&url).expect("open");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let raised = Arc::new(Raised::default());
        let (trigger, shutdown) = Shutdown::new(Duration::from_millis(300));
        let task = tokio::spawn(writer(&db, &raised, &metrics, shutdown).run());
        raised.raise(&[(stream("a"), id(5))]);
        trigger.fire();
        raised.close();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("the writer gives up at the deadline")
            .expect("no panic");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(raised.peek(), (false, true), "left unwritten, not dropped");
    }
}
