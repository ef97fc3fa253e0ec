//! Maintenance, beside the pipeline on a connection of its own: finding coupon streams
//! ([`discover`]), sampling where the groups stand for the gauges and for claiming
//! ([`sample`]), trimming committed entries ([`trim`]) and forgetting dead consumers
//! ([`consumers`]). Each job works on many streams per round trip; none of them ever holds
//! up a read or a commit. It tells the pipeline what to read and claim
//! ([`Control`]), and hears from the reader what it read, found and lost ([`Report`]).
//!
//! Its work follows the changes, not the number of streams: each job looks only at streams
//! read since it last ran ([`touched`]) and those not settled then; a full pass over every
//! stream comes with each sweep.

pub mod consumers;
pub mod discover;
pub mod sample;
pub mod touched;
pub mod trim;

use crate::changes::Sweep;
use crate::checkpoint::read_checkpoints;
use crate::db::{error_label, Db};
use crate::event::{EntryId, StreamKey};
use crate::logging::Repeats;
use crate::metrics::{now_ms, Metrics};
use crate::pipeline::read::{Fault, Lost, Report};
use crate::pipeline::Control;
use crate::policy::Shutdown;
use discover::{Discovery, Found};
use redis::aio::ConnectionLike;
use sample::Totals;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use touched::Touched;

/// Static settings of maintenance.
#[derive(Debug, Clone)]
pub struct MaintainConfig {
    pub group: String,
    pub consumer: String,
    pub pattern: String,
    pub claim_idle: Duration,
    /// How often to scan for streams on a server without the change index.
    pub discover_every: Duration,
    /// How often every stream is looked at where the change index names what changed.
    pub sweep_every: Duration,
    pub sample_every: Duration,
    /// `None`: never trim.
    pub trim_every: Option<Duration>,
    /// Longest a checkpoint query may take.
    pub db_timeout: Duration,
    /// The dead-letter stream's name: never adopted, nor (on a cluster) its per-slot keys.
    pub dead_letter_stream: String,
    /// The node this maintenance looks after (`host:port` on a cluster, "" on one server):
    /// its share of the gauges.
    pub node: String,
}

impl MaintainConfig {
    fn claim_every(&self) -> Duration {
        (self.claim_idle / 2).max(Duration::from_millis(50))
    }

    /// Dead consumers are forgotten as often as streams are trimmed (each minute when not).
    fn forget_every(&self) -> Duration {
        self.trim_every.unwrap_or(Duration::from_secs(60))
    }
}

/// Shortest time between two scans for streams asked by sweeps.
const SCAN_GAP: Duration = Duration::from_secs(1);
/// How often streams named while their slot was not served here are asked about again.
const DEFERRED_EVERY: Duration = Duration::from_millis(500);

/// A job's failures, logged once per interval.
#[derive(Default)]
struct Failures {
    discover: Repeats,
    sample: Repeats,
    trim: Repeats,
    forget: Repeats,
}

/// Logs a job's failure unless it was logged recently.
fn failed(repeats: &mut Repeats, job: &str, error: &dyn std::fmt::Display) {
    if let Some(unlogged) = repeats.note(Instant::now()) {
        tracing::warn!(%error, unlogged, "{job} failed; trying again later");
    }
}

fn succeeded(repeats: &mut Repeats, job: &str) {
    if repeats.clear() > 0 {
        tracing::info!("{job} works again");
    }
}

/// A few names for a log line.
fn some_names<'a>(streams: impl Iterator<Item = &'a StreamKey>, total: usize) -> String {
    let names: Vec<String> = streams
        .take(5)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let more = total.saturating_sub(names.len());
    if more > 0 {
        format!("{} and {more} more", names.join(", "))
    } else {
        names.join(", ")
    }
}

pub struct Maintenance<C> {
    config: MaintainConfig,
    conn: C,
    db: Db,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    control: mpsc::UnboundedSender<Control>,
    reports: mpsc::UnboundedReceiver<Report>,
    discovery: Discovery,
    /// Streams read since the last sample (or all of them, after a sweep).
    to_sample: HashSet<StreamKey>,
    /// Streams not settled at their last sample (entries pending or not yet delivered),
    /// with their share of the gauges: sampled again each round until they settle.
    standing: HashMap<StreamKey, Totals>,
    to_trim: Touched,
    to_forget: Touched,
    /// The reader sweeps continuously: the server keeps no change index, so streams are
    /// scanned for every `discover_every`.
    no_index: bool,
    /// A sweep started: scan for streams the feed may not have named, soon.
    scan_soon: bool,
    failures: Failures,
    /// Streams whose deletion is not logged yet (aggregated).
    vanished: Repeats,
    /// Faulty streams already logged.
    logged_faults: HashSet<StreamKey>,
    first_round: bool,
}

impl<C: ConnectionLike + Send> Maintenance<C> {
    pub fn new(
        config: MaintainConfig,
        conn: C,
        db: Db,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
        control: mpsc::UnboundedSender<Control>,
        reports: mpsc::UnboundedReceiver<Report>,
    ) -> Maintenance<C> {
        // Long enough for the checkpoints to follow the rows read (written within a second
        // or so) and a trim after that.
        let to_trim = Touched::keeping(
            config.trim_every.unwrap_or(Duration::ZERO) * 2 + Duration::from_secs(10),
        );
        // Long enough for a dead consumer's last entries to be claimed and for it to idle
        // out.
        let to_forget = Touched::keeping(config.claim_idle * 20 + config.forget_every() * 2);
        let discovery = Discovery::new(config.pattern.clone(), config.group.clone())
            .skipping(config.dead_letter_stream.clone());
        Maintenance {
            config,
            conn,
            db,
            metrics,
            shutdown,
            control,
            reports,
            discovery,
            to_sample: HashSet::new(),
            standing: HashMap::new(),
            to_trim,
            to_forget,
            no_index: false,
            scan_soon: false,
            failures: Failures::default(),
            vanished: Repeats::default(),
            logged_faults: HashSet::new(),
            first_round: true,
        }
    }

    /// Runs every job when due until shutdown.
    pub async fn run(mut self) {
        let now = Instant::now();
        let mut next_discover = now;
        let mut last_discover = now;
        let mut next_sample = now;
        let mut next_claim = now + self.config.claim_every();
        let mut next_trim = self.config.trim_every.map(|every| now + every);
        let mut next_forget = now + self.config.forget_every();
        let mut next_deferred = now;
        loop {
            let wake = [
                self.discovery.has_deferred().then_some(next_deferred),
                Some(next_discover),
                Some(next_sample),
                Some(next_claim),
                next_trim,
                Some(next_forget),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                report = self.reports.recv() => {
                    if let Some(report) = report {
                        self.on_report(report).await;
                    }
                    // Without an index scans come every `discover_every`, with one at each
                    // sweep (at most one a second, however often sweeps start).
                    let every = if std::mem::take(&mut self.scan_soon) {
                        SCAN_GAP
                    } else if self.no_index {
                        self.config.discover_every
                    } else {
                        self.config.sweep_every
                    };
                    next_discover = next_discover.min(last_discover + every);
                    continue;
                }
                () = self.shutdown.requested_wait() => return,
            }
            let now = Instant::now();
            if self.discovery.has_deferred() && now >= next_deferred {
                self.adopt_deferred(now).await;
                next_deferred = now + DEFERRED_EVERY;
            }
            if now >= next_discover {
                let ok = self.discover().await;
                last_discover = now;
                // A failed round (Redis down) is tried again soon, not a full interval later.
                let every = if self.no_index {
                    self.config.discover_every
                } else {
                    self.config.sweep_every
                };
                next_discover = now + if ok { every } else { every.min(SCAN_GAP) };
            }
            if now >= next_sample {
                let claims_due = Instant::now() >= next_claim;
                self.sample(claims_due).await;
                if claims_due {
                    next_claim = now + self.config.claim_every();
                }
                next_sample = now + self.config.sample_every;
            }
            if let Some(at) = next_trim.filter(|at| now >= *at) {
                self.trim().await;
                next_trim = self.config.trim_every.map(|every| at.max(now) + every);
            }
            if now >= next_forget {
                self.forget_consumers().await;
                next_forget = now + self.config.forget_every();
            }
        }
    }

    /// What the reader saw.
    async fn on_report(&mut self, report: Report) {
        match report {
            Report::Lost(lost) => self.on_lost(lost).await,
            Report::Found(streams) => {
                match self.discovery.adopt_named(&mut self.conn, streams).await {
                    Ok(found) => self.joined(found, "new coupon streams"),
                    Err(error) => {
                        // The next sweep's scan finds them.
                        self.metrics.error("redis_discover");
                        failed(
                            &mut self.failures.discover,
                            "adopting new coupon streams",
                            &error,
                        );
                    }
                }
            }
            Report::Sweep(sweep) => {
                self.no_index = sweep == Sweep::NoIndex;
                if !self.no_index {
                    self.scan_soon = true;
                }
            }
            Report::Touched(streams) => {
                let now = Instant::now();
                self.to_trim.note(&streams, now);
                self.to_forget.note(&streams, now);
                self.to_sample.extend(streams);
            }
        }
    }

    /// Adopts the streams named while their slot was not served here, if it is now: a slot
    /// moved here whose streams' hints came before the move finished.
    async fn adopt_deferred(&mut self, now: Instant) {
        let streams = self.discovery.take_deferred(now);
        if streams.is_empty() {
            return;
        }
        match self.discovery.adopt_named(&mut self.conn, streams).await {
            Ok(found) => self.joined(found, "coupon streams moved here"),
            Err(error) => {
                self.metrics.error("redis_discover");
                failed(
                    &mut self.failures.discover,
                    "adopting coupon streams moved here",
                    &error,
                );
            }
        }
    }

    /// Tells the pipeline about streams just joined.
    fn joined(&mut self, found: Found, what: &str) {
        if found.joined.is_empty() {
            return;
        }
        let joined = found.joined.len();
        let names = some_names(found.joined.iter(), joined);
        tracing::info!(streams = joined, "{what}: {names}");
        let _ = self.control.send(Control::Joined(found.joined));
        let streams = count(self.discovery.count());
        self.metrics
            .node_gauges(&self.config.node, |g| g.streams = streams);
    }

    async fn discover(&mut self) -> bool {
        let found = match self.discovery.round(&mut self.conn).await {
            Ok(found) => found,
            Err(error) => {
                self.metrics.error("redis_discover");
                failed(
                    &mut self.failures.discover,
                    "discovering coupon streams",
                    &error,
                );
                return false;
            }
        };
        succeeded(&mut self.failures.discover, "discovering coupon streams");
        let (streams, ignored) = (count(self.discovery.count()), count(found.ignored));
        self.metrics.node_gauges(&self.config.node, |g| {
            g.streams = streams;
            g.streams_ignored = ignored;
        });
        if !found.newly_ignored.is_empty() {
            let names = some_names(
                found.newly_ignored.iter().map(|(s, _)| s),
                found.newly_ignored.len(),
            );
            let why: HashSet<&str> = found.newly_ignored.iter().map(|(_, why)| *why).collect();
            tracing::info!(
                streams = found.newly_ignored.len(),
                "ignoring streams that are not coupon event streams ({}): {names}",
                why.into_iter().collect::<Vec<_>>().join("; ")
            );
        }
        let what = if self.first_round {
            "reading coupon streams"
        } else {
            "new coupon streams"
        };
        self.joined(found, what);
        self.first_round = false;
        // A full pass: every stream is sampled once more.
        self.to_sample.extend(self.discovery.known().cloned());
        true
    }

    /// Samples the streams read since the last round and those not settled at it:
    /// updates the gauges and, when `claims` is due, tells the pipeline which streams hold
    /// entries idle long enough to take over.
    async fn sample(&mut self, claims: bool) {
        let mut streams: Vec<StreamKey> = self.to_sample.drain().collect();
        streams.extend(
            self.standing
                .keys()
                .filter(|s| !self.to_sample.contains(*s))
                .cloned(),
        );
        streams.sort();
        streams.dedup();
        let group = self.config.group.clone();
        let states = match sample::sample(&mut self.conn, &streams, &group, false).await {
            Ok(states) => states,
            Err(error) => {
                self.metrics.error("redis_sample");
                failed(&mut self.failures.sample, "sampling the streams", &error);
                // Looked at again next round.
                self.to_sample.extend(streams);
                return;
            }
        };
        succeeded(&mut self.failures.sample, "sampling the streams");
        // Streams Redis did not answer for are gone: they no longer count.
        for stream in &streams {
            self.standing.remove(stream);
        }
        for state in &states {
            let share = sample::totals(std::slice::from_ref(state), &group);
            if share != Totals::default() {
                self.standing.insert(state.stream.clone(), share);
            }
        }
        let totals = self
            .standing
            .values()
            .fold(Totals::default(), |all, one| Totals {
                pending: all.pending + one.pending,
                backlog: all.backlog + one.backlog,
                oldest: match (all.oldest, one.oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            });
        let oldest_ms = totals.oldest.map_or(0, |id: EntryId| {
            (now_ms() - i64::try_from(id.ms).unwrap_or(i64::MAX)).max(0)
        });
        self.metrics.node_gauges(&self.config.node, |g| {
            g.pending = count_u64(totals.pending);
            g.backlog = count_u64(totals.backlog);
            g.oldest_seconds = oldest_ms as f64 / 1000.0;
        });
        if !claims {
            return;
        }
        let mut with_pending: Vec<StreamKey> = self
            .standing
            .iter()
            .filter(|(_, share)| share.pending > 0)
            .map(|(stream, _)| stream.clone())
            .collect();
        if with_pending.is_empty() {
            return;
        }
        with_pending.sort();
        let idle_ms = u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX);
        match sample::with_idle_entries(&mut self.conn, &with_pending, &group, idle_ms).await {
            Ok(idle) if !idle.is_empty() => {
                let _ = self.control.send(Control::Claim(idle));
            }
            Ok(_) => {}
            Err(error) => {
                self.metrics.error("redis_sample");
                failed(
                    &mut self.failures.sample,
                    "looking for idle entries",
                    &error,
                );
            }
        }
    }

    /// Trims the streams read lately below what is committed and acknowledged by every
    /// group.
    async fn trim(&mut self) {
        let streams = self.to_trim.take(Instant::now());
        let group = self.config.group.clone();
        let mut trimmed = 0;
        for chunk in streams.chunks(sample::CHUNK) {
            let states = match sample::sample(&mut self.conn, chunk, &group, true).await {
                Ok(states) => states,
                Err(error) => {
                    self.metrics.error("redis_trim");
                    failed(&mut self.failures.trim, "trimming", &error);
                    return;
                }
            };
            let names = trim::names(&states);
            let read = read_checkpoints(&self.db.pool, &group, &names);
            let checkpoints = match tokio::time::timeout(self.config.db_timeout, read).await {
                Ok(Ok(checkpoints)) => checkpoints,
                Ok(Err(error)) => {
                    self.metrics.error(error_label(&error));
                    failed(
                        &mut self.failures.trim,
                        "reading checkpoints to trim",
                        &error,
                    );
                    return;
                }
                Err(_) => {
                    self.metrics.error("db_timeout");
                    let error = format!("no answer within {:?}", self.config.db_timeout);
                    failed(
                        &mut self.failures.trim,
                        "reading checkpoints to trim",
                        &error,
                    );
                    return;
                }
            };
            match trim::trim(&mut self.conn, &states, &checkpoints).await {
                Ok(removed) => trimmed += removed,
                Err(error) => {
                    self.metrics.error("redis_trim");
                    failed(&mut self.failures.trim, "trimming", &error);
                    return;
                }
            }
        }
        succeeded(&mut self.failures.trim, "trimming");
        self.metrics.trimmed.inc_by(trimmed);
        if trimmed > 0 {
            tracing::debug!(trimmed, "trimmed committed entries");
        }
    }

    /// Forgets consumers idle for ten claim times without pending entries, on the streams
    /// read lately.
    async fn forget_consumers(&mut self) {
        let streams = self.to_forget.take(Instant::now());
        let idle_ms = u64::try_from(self.config.claim_idle.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(10);
        let (group, me) = (&self.config.group, &self.config.consumer);
        match consumers::forget_idle(&mut self.conn, &streams, group, me, idle_ms).await {
            Ok(0) => succeeded(&mut self.failures.forget, "forgetting idle consumers"),
            Ok(removed) => {
                succeeded(&mut self.failures.forget, "forgetting idle consumers");
                tracing::info!(removed, "forgot idle consumers without pending entries");
            }
            Err(error) => {
                self.metrics.error("redis_consumers");
                failed(
                    &mut self.failures.forget,
                    "forgetting idle consumers",
                    &error,
                );
            }
        }
    }

    /// A stream the pipeline dropped: joined again if its group vanished but it still is a
    /// coupon's stream, else forgotten (a later discovery adopts it if it comes back).
    async fn on_lost(&mut self, lost: Lost) {
        let shown = String::from_utf8_lossy(&lost.stream).into_owned();
        self.standing.remove(&lost.stream);
        self.to_sample.remove(&lost.stream);
        self.to_trim.forget(&lost.stream);
        self.to_forget.forget(&lost.stream);
        match &lost.fault {
            Fault::NoGroup => match self.discovery.rejoin(&mut self.conn, &lost.stream).await {
                Ok(true) => {
                    tracing::warn!(
                        stream = %shown,
                        "the consumer group vanished from the stream; joined it again"
                    );
                    let _ = self.control.send(Control::Joined(vec![lost.stream]));
                }
                Ok(false) => {
                    if let Some(unlogged) = self.vanished.note(Instant::now()) {
                        tracing::info!(
                            stream = %shown,
                            before = unlogged,
                            "a coupon stream is gone (coupon deleted); no longer read"
                        );
                    }
                }
                Err(error) => {
                    // Not known any more: the next discovery round adopts it if it is one.
                    tracing::debug!(stream = %shown, %error, "cannot look at a lost stream");
                }
            },
            Fault::Moved(error) => {
                // Its slot is served elsewhere now (or for a moment by no one): the owner's
                // pipeline adopts it, with the entries still pending in the group.
                self.discovery.forget(&lost.stream);
                tracing::debug!(stream = %shown, %error, "the stream is not served here any more");
            }
            fault => {
                self.discovery.forget(&lost.stream);
                if self.logged_faults.len() < 100_000
                    && self.logged_faults.insert(lost.stream.clone())
                {
                    let why = match fault {
                        Fault::WrongType => "the key no longer holds a stream".to_string(),
                        Fault::Other(error) => error.clone(),
                        Fault::NoGroup | Fault::Moved(_) => String::new(),
                    };
                    tracing::warn!(
                        stream = %shown,
                        %why,
                        "Redis refuses to read the stream; no longer read (the other streams \
                         are not affected)"
                    );
                }
            }
        }
        let streams = count(self.discovery.count());
        self.metrics
            .node_gauges(&self.config.node, |g| g.streams = streams);
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
