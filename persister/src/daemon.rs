//! The loop that drives the stages: read → batch → commit → ack → trim, with the retries,
//! the dead-lettering and the shutdown rules around them.

use crate::ack;
use crate::backoff::Backoff;
use crate::batch::Batch;
use crate::commit::{commit_batch, read_checkpoint, CommitStats};
use crate::config::Settings;
use crate::db::{classify, error_label, migration_is_broken, Db, ErrorKind};
use crate::event::{EntryId, Event, Malformed, RawEntry, StreamKey};
use crate::metrics::{now_ms, Metrics};
use crate::read::{ReadConfig, ReadError, Reader, Vanished};
use crate::trim;
use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest `XREADGROUP … BLOCK` while no batch is open: bounds how long SIGTERM waits for a
/// read in flight and how late periodic work (discovery, claims, trims) runs.
const IDLE_BLOCK: Duration = Duration::from_millis(500);
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Sorts the events of a done commit: written ones are to be acknowledged, conflicting ones
/// are failures (not acknowledged, dead-lettered in time).
fn settle<'a>(
    done: &[Event],
    stats: &CommitStats,
    by_id: &HashMap<(StreamKey, EntryId), &'a RawEntry>,
    committed: &mut Vec<(StreamKey, EntryId)>,
    failed: &mut Vec<(&'a RawEntry, String)>,
) {
    for event in done {
        let conflict = stats
            .conflicts
            .iter()
            .find(|c| c.id == event.id && c.stream == event.stream);
        match conflict {
            None => committed.push((event.stream.clone(), event.id)),
            Some(conflict) => {
                if let Some(entry) = by_id.get(&(event.stream.clone(), event.id)) {
                    failed.push((entry, conflict.reason.clone()));
                }
            }
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

/// Reads the streams and runs the batches: the next batch is read while the previous one
/// commits and is acknowledged, so Redis and the database work at the same time. Batches
/// still commit one after another, never two at once.
pub struct Daemon {
    reads: Reads,
    writer: Writer,
}

/// The read side: stage 1 and 2.
struct Reads {
    settings: Settings,
    reader: Reader,
    /// Entries read that did not fit in the last batch: the next one starts with them.
    carry: Vec<RawEntry>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<Shutdown>,
}

/// The write side: stages 3 to 5.
struct Writer {
    settings: Settings,
    group: String,
    db: Db,
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<Shutdown>,
    deadline: Option<Instant>,
}

/// When a shutdown signal arrived, if one did: the deadline for the batch in flight counts
/// from then.
pub type Shutdown = Option<Instant>;

/// Waits for a shutdown signal or `delay`, whichever comes first.
async fn pause(shutdown: &mut watch::Receiver<Shutdown>, delay: Duration) {
    if shutdown.borrow().is_some() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Retries `attempt` with capped exponential backoff until it succeeds or shutdown is asked.
async fn until_ready<T, E, F, Fut>(
    what: &str,
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<Shutdown>,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(FIRST_RETRY, Duration::from_millis(settings.backoff_max_ms));
    loop {
        match attempt().await {
            Ok(value) => {
                metrics.set_healthy(true);
                return Some(value);
            }
            Err(e) => {
                metrics.set_healthy(false);
                metrics.error(what);
                metrics.retry(what);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "{what} failed; retrying");
                if shutdown.borrow().is_some() {
                    return None;
                }
                pause(shutdown, delay).await;
                if shutdown.borrow().is_some() {
                    return None;
                }
            }
        }
    }
}

/// Opens a Redis connection that reconnects by itself after a server restart.
pub async fn redis_connection(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// The `migrate` subcommand: applies the migrations, waiting up to `wait` for the database.
pub async fn migrate(
    db: &Db,
    settings: &Settings,
    metrics: &Metrics,
    wait: Duration,
) -> anyhow::Result<()> {
    let (_keep, mut never) = watch::channel(None);
    let attempt = until_ready("db_migrate", settings, metrics, &mut never, || {
        migrate_once(db)
    });
    match tokio::time::timeout(wait, attempt).await {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err(broken))) => Err(broken),
        _ => anyhow::bail!("the migrations did not run within {wait:?}: see the log above"),
    }
}

/// One try at migrating: `Err` to retry (the database is not reachable…), `Ok(Err)` when
/// the database's migration history contradicts this version's, which no retry fixes.
async fn migrate_once(db: &Db) -> Result<anyhow::Result<()>, sqlx::migrate::MigrateError> {
    match db.migrate().await {
        Ok(()) => Ok(Ok(())),
        Err(error) if migration_is_broken(&error) => Ok(Err(anyhow::anyhow!(
            "the database's migrations do not match this version of coupon-persister ({error}); \
             fix the _sqlx_migrations table or use a matching version"
        ))),
        Err(error) => Err(error),
    }
}

impl Daemon {
    /// Connects (waiting for the database and Redis as long as needed) and migrates.
    /// `None` when shutdown was asked before both were there.
    pub async fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<Shutdown>,
    ) -> anyhow::Result<Option<Daemon>> {
        let db = Db::open(&settings.database_url)?;
        match until_ready("db_migrate", &settings, &metrics, &mut shutdown, || {
            migrate_once(&db)
        })
        .await
        {
            None => return Ok(None),
            Some(Err(broken)) => return Err(broken),
            Some(Ok(())) => {}
        }
        let client = redis::Client::open(settings.redis_url.as_str()).context("--redis-url")?;
        let Some(read_conn) =
            until_ready("redis_connect", &settings, &metrics, &mut shutdown, || {
                redis_connection(&client)
            })
            .await
        else {
            return Ok(None);
        };
        let Some(conn) = until_ready("redis_connect", &settings, &metrics, &mut shutdown, || {
            redis_connection(&client)
        })
        .await
        else {
            return Ok(None);
        };
        let consumer = settings.consumer_name();
        tracing::info!(
            group = %settings.group,
            %consumer,
            database = ?db.backend,
            "persister started"
        );
        let reader = Reader::new(
            read_conn,
            ReadConfig {
                group: settings.group.clone(),
                consumer,
                pattern: settings.stream_pattern.clone(),
                claim_idle: settings.claim_idle(),
            },
        );
        Ok(Some(Daemon {
            reads: Reads {
                settings: settings.clone(),
                reader,
                carry: Vec::new(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            },
            writer: Writer {
                group: settings.group.clone(),
                settings,
                db,
                conn,
                metrics,
                shutdown,
                deadline: None,
            },
        }))
    }
    /// Runs until shutdown is asked, then finishes the batch in flight and returns.
    pub async fn run(self) -> anyhow::Result<()> {
        let Daemon {
            mut reads,
            mut writer,
        } = self;
        let settings = reads.settings.clone();
        let discover_every = Duration::from_millis(settings.discover_interval_ms.max(10));
        let claim_every = (settings.claim_idle() / 2).max(Duration::from_millis(50));
        let trim_every = Duration::from_millis(match settings.trim_interval_ms {
            0 => 10_000,
            ms => ms,
        });
        let mut next_discover = Instant::now();
        let mut next_claim = Instant::now() + claim_every;
        let mut next_trim = Instant::now() + trim_every;
        let mut backoff = Backoff::new(FIRST_RETRY, Duration::from_millis(settings.backoff_max_ms));
        // Read, not yet committed: committed while the next batch is read.
        let mut in_flight: Vec<RawEntry> = Vec::new();
        while !writer.stopping() {
            reads.metrics.beat();
            let now = Instant::now();
            if now >= next_discover {
                match reads.reader.discover().await {
                    Ok(found) => {
                        if found > 0 {
                            tracing::info!(found, "new coupon streams");
                        }
                        next_discover = now + discover_every;
                        reads
                            .metrics
                            .streams
                            .set(i64::try_from(reads.reader.streams().len()).unwrap_or(i64::MAX));
                    }
                    Err(e) => {
                        let entries = std::mem::take(&mut in_flight);
                        tokio::join!(reads.read_failed(&e, &mut backoff), writer.process(entries));
                        continue;
                    }
                }
            }
            if now >= next_claim && !reads.reader.claiming() {
                reads.reader.start_claim_round();
                next_claim = now + claim_every;
            }
            let entries = std::mem::take(&mut in_flight);
            let (read, ()) = tokio::join!(reads.fill_batch(), writer.process(entries));
            let batch = match read {
                Ok(batch) => {
                    backoff.reset();
                    batch
                }
                Err((batch, e)) => {
                    if e.lost_group() {
                        next_discover = Instant::now();
                    }
                    reads.read_failed(&e, &mut backoff).await;
                    batch
                }
            };
            in_flight = batch.into_entries();
            if Instant::now() >= next_trim && !writer.stopping() {
                writer
                    .maintain(reads.reader.streams(), &reads.reader.config().consumer)
                    .await;
                next_trim = Instant::now() + trim_every;
            }
        }
        writer.process(in_flight).await;
        // Read but not fitting the last batch: committed too, so nothing read stays pending.
        let carry = std::mem::take(&mut reads.carry);
        for batch in carry.chunks(settings.batch_size.max(1) as usize) {
            writer.process(batch.to_vec()).await;
        }
        tracing::info!("persister stopped");
        Ok(())
    }
}

impl Reads {
    fn stopping(&self) -> bool {
        self.shutdown.borrow().is_some()
    }

    async fn read_failed(&mut self, error: &ReadError, backoff: &mut Backoff) {
        self.metrics.error(error.label());
        self.metrics.retry("read");
        self.metrics.set_healthy(false);
        if error.lost_group() {
            tracing::warn!(%error, "consumer group gone; joining the streams again");
            self.reader.forget_streams();
        }
        let delay = backoff.next_delay();
        tracing::warn!(%error, ?delay, "reading the streams failed; retrying");
        pause(&mut self.shutdown, delay).await;
    }

    /// Reads until the batch is full or has lingered long enough. On a read error, hands
    /// back what was gathered so far with the error.
    async fn fill_batch(&mut self) -> Result<Batch, (Batch, ReadError)> {
        let mut batch = Batch::new(self.settings.batch_size as usize, self.settings.linger());
        let carried = std::mem::take(&mut self.carry);
        self.carry = batch.extend(carried, Instant::now());
        loop {
            let now = Instant::now();
            if batch.is_ready(now) || (self.stopping() && !self.reader.draining()) {
                return Ok(batch);
            }
            let room = batch.room();
            let read = if self.reader.draining() {
                self.reader.read_own_pending(room).await
            } else if self.reader.claiming() {
                match self.reader.claim(room).await {
                    Ok((entries, vanished)) => {
                        self.alarm_vanished(&vanished);
                        Ok(entries)
                    }
                    Err(e) => Err(e),
                }
            } else {
                let block = batch
                    .time_left(now)
                    .unwrap_or(IDLE_BLOCK)
                    .max(Duration::from_millis(1));
                let entries = self.reader.read_new(room, block).await;
                match entries {
                    Ok(entries) if entries.is_empty() => {
                        // Waited the whole linger (or idle) time: go with what there is.
                        return Ok(batch);
                    }
                    other => other,
                }
            };
            match read {
                Ok(entries) => {
                    for entry in &entries {
                        self.metrics
                            .events_read
                            .with_label_values(&[entry.source.label()])
                            .inc();
                    }
                    let rest = batch.extend(entries, Instant::now());
                    self.carry.extend(rest);
                    self.metrics.set_healthy(true);
                }
                Err(e) => return Err((batch, e)),
            }
        }
    }

    fn alarm_vanished(&self, vanished: &[Vanished]) {
        for entry in vanished {
            self.metrics.vanished.inc();
            tracing::error!(
                stream = %String::from_utf8_lossy(&entry.stream),
                id = %entry.id,
                "ALARM: a pending entry's payload is gone from the stream (trimmed or deleted \
                 before it was persisted); Redis dropped it from the pending list"
            );
        }
    }
}

impl Writer {
    /// Whether shutdown was asked; the first time, logs it and fixes the deadline (counted
    /// from the signal).
    fn stopping(&mut self) -> bool {
        let Some(signalled) = *self.shutdown.borrow() else {
            return false;
        };
        if self.deadline.is_none() {
            tracing::info!("shutdown asked: finishing the batch in flight");
            self.deadline =
                Some(signalled + Duration::from_millis(self.settings.shutdown_timeout_ms));
        }
        true
    }

    fn out_of_time(&mut self) -> bool {
        self.stopping()
            && self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Sleeps for a retry, never past the shutdown deadline.
    async fn retry_pause(&mut self, delay: Duration) {
        let delay = match self.deadline {
            Some(deadline) => delay.min(deadline.saturating_duration_since(Instant::now())),
            None => delay,
        };
        if self.deadline.is_some() {
            tokio::time::sleep(delay).await;
        } else {
            pause(&mut self.shutdown, delay).await;
        }
    }

    /// Commits a batch's events, acknowledges them, and deals with the ones that failed.
    async fn process(&mut self, entries: Vec<RawEntry>) {
        if entries.is_empty() {
            return;
        }
        let mut events: Vec<Event> = Vec::with_capacity(entries.len());
        let mut failed: Vec<(&RawEntry, String)> = Vec::new();
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
                Err(why) => failed.push((entry, why.to_string())),
            }
        }

        let by_id: HashMap<(StreamKey, EntryId), &RawEntry> = entries
            .iter()
            .map(|entry| ((entry.stream.clone(), entry.id), entry))
            .collect();
        let mut committed: Vec<(StreamKey, EntryId)> = Vec::with_capacity(events.len());
        if !events.is_empty() {
            match self.commit(&events).await {
                Commit::Done(stats) => {
                    self.record(&events, &stats);
                    settle(&events, &stats, &by_id, &mut committed, &mut failed);
                }
                Commit::GaveUp => return,
                Commit::Refused(error) => {
                    tracing::warn!(%error, "the database refused a batch; committing its events one by one");
                    for event in &events {
                        let single = std::slice::from_ref(event);
                        match self.commit(single).await {
                            Commit::Done(stats) => {
                                self.record(single, &stats);
                                settle(single, &stats, &by_id, &mut committed, &mut failed);
                            }
                            Commit::GaveUp => break,
                            Commit::Refused(error) => {
                                if let Some(entry) = by_id.get(&(event.stream.clone(), event.id)) {
                                    failed.push((entry, format!("database refused it: {error}")));
                                }
                            }
                        }
                    }
                }
            }
        }

        self.acknowledge(&committed).await;
        for (entry, reason) in failed {
            self.failed_entry(entry, &reason).await;
        }
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
        m.conflicts.inc_by(stats.conflicts.len() as u64);
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
            "batch committed"
        );
    }

    /// Completes once shutdown was asked and its deadline has passed.
    fn deadline_passed(&self) -> impl Future<Output = ()> + 'static {
        let mut shutdown = self.shutdown.clone();
        let grace = Duration::from_millis(self.settings.shutdown_timeout_ms);
        async move {
            loop {
                let signalled = *shutdown.borrow_and_update();
                if let Some(at) = signalled {
                    tokio::time::sleep_until((at + grace).into()).await;
                    return;
                }
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// One transaction, retried while the database is unavailable. The statements before
    /// COMMIT are bounded by `--db-timeout-ms` and abandoned (rolled back) at the shutdown
    /// deadline; a COMMIT in flight is never cancelled by shutdown, only bounded by a long
    /// timeout.
    async fn commit(&mut self, events: &[Event]) -> Commit {
        let mut backoff = Backoff::new(
            FIRST_RETRY,
            Duration::from_millis(self.settings.backoff_max_ms),
        );
        loop {
            let started = Instant::now();
            let limits = self.settings.db_limits();
            let abort = self.deadline_passed();
            match commit_batch(&self.db, &self.group, events, now_ms(), limits, abort).await {
                Ok(stats) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.set_healthy(true);
                    return Commit::Done(stats);
                }
                Err(error) => {
                    self.metrics.error(error_label(&error));
                    if classify(&error) == ErrorKind::Data {
                        return Commit::Refused(error);
                    }
                    self.metrics.set_healthy(false);
                    self.metrics.retry("commit");
                    if self.out_of_time() {
                        tracing::warn!(%error, "shutting down: batch left pending, not committed");
                        return Commit::GaveUp;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, events = events.len(), "commit failed; retrying");
                    self.retry_pause(delay).await;
                }
            }
        }
    }

    /// `XACK` after COMMIT, retried while Redis is unavailable. Entries left unacknowledged
    /// (out of time at shutdown) are delivered again and counted as duplicates.
    async fn acknowledge(&mut self, committed: &[(StreamKey, EntryId)]) {
        if committed.is_empty() {
            return;
        }
        let mut backoff = Backoff::new(
            FIRST_RETRY,
            Duration::from_millis(self.settings.backoff_max_ms),
        );
        loop {
            match ack::ack(&mut self.conn, &self.group, committed).await {
                Ok(count) => {
                    self.metrics.acked.inc_by(count);
                    return;
                }
                Err(error) => {
                    self.metrics.error("redis_ack");
                    self.metrics.retry("ack");
                    if self.out_of_time() {
                        tracing::warn!(%error, "shutting down: committed entries left unacknowledged");
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, "XACK failed; retrying");
                    self.retry_pause(delay).await;
                }
            }
        }
    }

    /// An entry that could not be written: dead-lettered once it has been delivered
    /// `max_deliveries` times, else left pending to be claimed and tried again.
    async fn failed_entry(&mut self, entry: &RawEntry, reason: &str) {
        let stream = String::from_utf8_lossy(&entry.stream).into_owned();
        let deliveries = match ack::delivery_count(
            &mut self.conn,
            &self.group,
            &entry.stream,
            entry.id,
        )
        .await
        {
            Ok(Some(count)) => count,
            Ok(None) => return,
            Err(error) => {
                self.metrics.error("redis_pending");
                tracing::warn!(%error, %stream, id = %entry.id, "cannot read the delivery count");
                return;
            }
        };
        if deliveries < self.settings.max_deliveries {
            self.metrics.error("bad_entry");
            tracing::warn!(
                %stream, id = %entry.id, %reason, deliveries,
                max = self.settings.max_deliveries,
                "entry cannot be persisted; left pending for another try"
            );
            return;
        }
        match ack::dead_letter(
            &mut self.conn,
            &self.settings.dead_letter_stream,
            &self.group,
            entry,
            reason,
            deliveries,
        )
        .await
        {
            Ok(()) => {
                self.metrics.dead_lettered.inc();
                tracing::error!(
                    %stream, id = %entry.id, %reason, deliveries,
                    dead_letter_stream = %self.settings.dead_letter_stream,
                    "entry dead-lettered"
                );
            }
            Err(error) => {
                self.metrics.error("redis_dead_letter");
                tracing::warn!(%error, %stream, id = %entry.id, "dead-lettering failed");
            }
        }
    }

    /// Samples the pending count, forgets consumers idle for ten claim times without pending
    /// entries, and trims committed entries.
    async fn maintain(&mut self, streams: &[StreamKey], me: &str) {
        let mut pending: u64 = 0;
        let trim = self.settings.trim_interval_ms > 0;
        for stream in streams {
            let groups = match trim::group_states(&mut self.conn, stream).await {
                Ok(groups) => groups,
                Err(error) => {
                    self.metrics.error("redis_trim");
                    tracing::warn!(%error, "cannot read the stream's groups");
                    continue;
                }
            };
            pending += groups
                .iter()
                .filter(|g| g.name == self.group)
                .map(|g| g.pending)
                .sum::<u64>();
            let idle_ms = u64::try_from(self.settings.claim_idle().as_millis())
                .unwrap_or(u64::MAX)
                .saturating_mul(10);
            let me = me.to_string();
            match trim::forget_idle_consumers(&mut self.conn, stream, &self.group, &me, idle_ms)
                .await
            {
                Ok(0) => {}
                Ok(removed) => tracing::info!(
                    stream = %String::from_utf8_lossy(stream),
                    removed,
                    "forgot idle consumers without pending entries"
                ),
                Err(error) => {
                    self.metrics.error("redis_consumers");
                    tracing::warn!(%error, "cannot clean up idle consumers");
                }
            }
            if !trim {
                continue;
            }
            let limit = self.settings.db_limits().statements;
            let read = read_checkpoint(&self.db, &self.group, stream);
            let checkpoint = match tokio::time::timeout(limit, read).await {
                Err(_) => {
                    self.metrics.error("db_timeout");
                    tracing::warn!(?limit, "reading the checkpoint timed out; not trimming");
                    continue;
                }
                Ok(Ok(checkpoint)) => checkpoint,
                Ok(Err(error)) => {
                    self.metrics.error(error_label(&error));
                    tracing::warn!(%error, "cannot read the checkpoint; not trimming");
                    continue;
                }
            };
            let Some(min_id) = trim::safe_min_id(checkpoint, &groups) else {
                continue;
            };
            match trim::trim(&mut self.conn, stream, min_id).await {
                Ok(removed) => {
                    self.metrics.trimmed.inc_by(removed);
                    if removed > 0 {
                        tracing::debug!(
                            stream = %String::from_utf8_lossy(stream),
                            %min_id, removed, "trimmed"
                        );
                    }
                }
                Err(error) => {
                    self.metrics.error("redis_trim");
                    tracing::warn!(%error, "XTRIM failed");
                }
            }
        }
        self.metrics
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
}
