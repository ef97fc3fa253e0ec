//! The pipeline: read → batch → commit → ack, one stage per module, driven here. The next
//! batch is read while earlier ones commit (up to two transactions at once, see
//! [`write`]), and committed batches are acknowledged beside it (see [`settle`]), so Redis
//! and the database work at the same time.
//!
//! Nothing slow but reading and writing runs here: finding streams, sampling, claiming
//! schedules and trimming are maintenance's (see [`crate::maintain`]), which tells the
//! pipeline about streams through [`Control`] and hears what the reader saw through
//! [`read::Report`].

pub mod ack;
pub mod batch;
pub mod commit;
pub mod queue;
pub mod read;
pub mod settle;
pub mod write;

use crate::event::{RawEntry, StreamKey};
use crate::logging::Repeats;
use crate::metrics::Metrics;
use crate::policy::{Backoff, Shutdown};
use batch::Batch;
use futures_util::stream::{FuturesOrdered, StreamExt};
use read::{ReadError, Reader, Report, Vanished, LOOK_EVERY};
use redis::aio::ConnectionLike;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use write::{Committer, Written};

/// What maintenance tells the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Streams the group now exists on: read them (their own pending entries first).
    Joined(Vec<StreamKey>),
    /// Streams holding entries idle longer than the claim time: take them over.
    Claim(Vec<StreamKey>),
}

/// The read side: stages 1 and 2.
pub struct Reads<C> {
    pub reader: Reader<C>,
    pub batch_size: usize,
    pub linger: Duration,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    pub backoff: Backoff,
    /// Entries read that did not fit in the last batch: the next one starts with them.
    carry: Vec<RawEntry>,
    failures: Repeats,
    /// On a cluster: asks for the primaries to be looked up again (a stream turned away by
    /// its node, or the node not answering).
    refresh: Option<Arc<Notify>>,
}

pub struct Pipeline<R> {
    reads: Reads<R>,
    committer: Committer,
    /// To the settler: what each batch's commit did, in commit order.
    settle: mpsc::Sender<Written>,
}

impl<R: ConnectionLike + Send> Pipeline<R> {
    pub fn new(
        reads: Reads<R>,
        committer: Committer,
        settle: mpsc::Sender<Written>,
    ) -> Pipeline<R> {
        Pipeline {
            reads,
            committer,
            settle,
        }
    }

    /// Runs until shutdown is asked, then commits what was read and returns (dropping the
    /// settler's channel once everything committed was handed over).
    pub async fn run(self) {
        let Pipeline {
            mut reads,
            committer,
            settle,
        } = self;
        let in_flight = committer.in_flight();
        let mut commits = FuturesOrdered::new();
        // Completes when the batch last started has finished.
        let mut previous: Option<oneshot::Receiver<()>> = None;
        while !reads.shutdown.requested() {
            reads.metrics.health.beat();
            while commits.len() >= in_flight {
                if let Some(written) = commits.next().await {
                    hand_over(&settle, written).await;
                }
            }
            // Commits finishing meanwhile are handed over at once; the read is never
            // cancelled (entries read and dropped would wait for a claim).
            let read = {
                let read = reads.fill_batch();
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        biased;
                        Some(written) = commits.next(), if !commits.is_empty() => {
                            hand_over(&settle, written).await;
                        }
                        read = &mut read => break read,
                    }
                }
            };
            let entries = match read {
                Ok(batch) => {
                    reads.succeeded();
                    batch.into_entries()
                }
                Err((batch, error)) => {
                    reads.failed(&error).await;
                    batch.into_entries()
                }
            };
            if !entries.is_empty() {
                let (done, earlier) = chain(&mut previous);
                commits.push_back(committer.write(entries, earlier, done));
            }
            reads.report();
        }
        tracing::info!("shutdown asked: finishing the batches in flight");
        // Read but not fitting the last batch: committed too, so nothing read stays pending.
        let carry = std::mem::take(&mut reads.carry);
        for batch in carry.chunks(reads.batch_size.max(1)) {
            while commits.len() >= in_flight {
                if let Some(written) = commits.next().await {
                    hand_over(&settle, written).await;
                }
            }
            let (done, earlier) = chain(&mut previous);
            commits.push_back(committer.write(batch.to_vec(), earlier, done));
        }
        while let Some(written) = commits.next().await {
            hand_over(&settle, written).await;
        }
        reads.report();
    }
}

/// A signal for the batch about to start (dropped when it finishes), and the one of the
/// batch before it to wait on.
fn chain(
    previous: &mut Option<oneshot::Receiver<()>>,
) -> (oneshot::Sender<()>, oneshot::Receiver<()>) {
    let (done, next) = oneshot::channel();
    let earlier = previous.replace(next).unwrap_or_else(|| {
        let (finished, earlier) = oneshot::channel();
        drop(finished);
        earlier
    });
    (done, earlier)
}

async fn hand_over(settle: &mpsc::Sender<Written>, written: Written) {
    if settle.send(written).await.is_err() {
        tracing::warn!("the settler is gone: committed entries left unacknowledged");
    }
}

impl<C: ConnectionLike + Send> Reads<C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reader: Reader<C>,
        batch_size: usize,
        linger: Duration,
        control: mpsc::UnboundedReceiver<Control>,
        reports: mpsc::UnboundedSender<Report>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
        backoff: Backoff,
    ) -> Reads<C> {
        Reads {
            reader,
            batch_size,
            linger,
            control,
            reports,
            metrics,
            shutdown,
            backoff,
            carry: Vec::new(),
            failures: Repeats::default(),
            refresh: None,
        }
    }

    /// On a cluster: `refresh` is notified when the topology may have changed.
    pub fn with_refresh(mut self, refresh: Arc<Notify>) -> Reads<C> {
        self.refresh = Some(refresh);
        self
    }

    fn ask_refresh(&self) {
        if let Some(refresh) = &self.refresh {
            refresh.notify_one();
        }
    }

    /// Applies what maintenance said since the last call.
    fn take_control(&mut self) {
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Joined(streams) => self.reader.add_streams(streams),
                Control::Claim(streams) => self.reader.queue_claims(streams),
            }
        }
    }

    /// Hands what the reader saw to maintenance.
    fn report(&mut self) {
        for report in self.reader.take_reports() {
            if matches!(&report, Report::Lost(lost) if matches!(lost.fault, read::Fault::Moved(_)))
            {
                self.ask_refresh();
            }
            // Maintenance gone means shutting down: nothing to report to.
            let _ = self.reports.send(report);
        }
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.metrics.health.stage_ok("read");
        let failures = self.failures.clear();
        if failures > 0 {
            tracing::info!(failures, "reading the streams works again");
        }
    }

    async fn failed(&mut self, error: &ReadError) {
        self.metrics.error(error.label());
        self.metrics.retry("read");
        self.metrics.health.stage_failed("read", error);
        if matches!(error, ReadError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || read::redirected(e))
        {
            self.ask_refresh();
        }
        self.reader.connection_failed();
        let delay = self.backoff.next_delay();
        if let Some(unlogged) = self.failures.note(Instant::now()) {
            tracing::warn!(%error, ?delay, unlogged, "reading the streams failed; retrying");
        }
        self.shutdown.pause(delay).await;
    }

    /// Reads until the batch is full or has lingered long enough. On a read error, hands
    /// back what was gathered so far with the error.
    async fn fill_batch(&mut self) -> Result<Batch, (Batch, ReadError)> {
        let mut batch = Batch::new(self.batch_size, self.linger);
        let carried = std::mem::take(&mut self.carry);
        self.carry = batch.extend(carried, Instant::now());
        loop {
            self.take_control();
            let now = Instant::now();
            if batch.is_ready(now) || (self.shutdown.requested() && !self.reader.draining()) {
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
                if self.reader.look_due(now) {
                    let looked = self.reader.look().await;
                    self.report();
                    if let Err(e) = looked {
                        return Err((batch, e));
                    }
                }
                match self.reader.read_new(room).await {
                    Ok(entries) if entries.is_empty() && !self.reader.has_queued() => {
                        // Nothing waits: look at the feed again shortly.
                        let wait = batch.time_left(now).unwrap_or(LOOK_EVERY).min(LOOK_EVERY);
                        tokio::time::sleep(wait).await;
                        if batch.is_empty() {
                            return Ok(batch);
                        }
                        continue;
                    }
                    other => other,
                }
            };
            match read {
                Ok(entries) => {
                    if let Some(first) = entries.first() {
                        // One read has one source.
                        self.metrics
                            .events_read
                            .with_label_values(&[first.source.label()])
                            .inc_by(entries.len() as u64);
                    }
                    let rest = batch.extend(entries, Instant::now());
                    self.carry.extend(rest);
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
