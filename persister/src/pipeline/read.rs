//! Stage 1, read: hands out entries of the streams it is given, in this order: this
//! consumer's own pending entries (left by a previous run), entries other consumers left idle
//! too long (`XAUTOCLAIM`), then new ones — of the streams the change feed names or a sweep
//! goes over (see [`crate::changes`] and [`super::queue`]), never of every stream at once.
//!
//! Many streams are read with one command. When Redis refuses a command because of one
//! stream (deleted: `NOGROUP`; replaced by another type: `WRONGTYPE`), the streams are probed
//! in one pipeline, the faulty ones are dropped and reported (see [`Reader::take_lost`]),
//! and the others are read on: one bad stream never stalls the rest.

use super::queue::{share, ReadQueue, ENTRIES_PER_READ, STREAMS_PER_READ};
use crate::changes::{ChangeFeed, FeedError, Sweep};
use crate::event::{EntryId, RawEntry, Source, StreamKey};
use crate::reply::{self, BadReply};
use coupon_layout::hash_slot;
use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] BadReply),
}

impl From<FeedError> for ReadError {
    fn from(error: FeedError) -> ReadError {
        match error {
            FeedError::Redis(e) => ReadError::Redis(e),
            FeedError::Reply(e) => ReadError::Reply(e),
        }
    }
}

impl ReadError {
    pub fn label(&self) -> &'static str {
        match self {
            ReadError::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "redis_io",
            ReadError::Redis(_) => "redis",
            ReadError::Reply(_) => "redis_reply",
        }
    }
}

/// What is wrong with one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The stream or the group on it is gone (coupon deleted, Redis restarted empty, group
    /// destroyed).
    NoGroup,
    /// The key holds another type now.
    WrongType,
    /// Anything else Redis said about this key.
    Other(String),
    /// A cluster node no longer serves the stream's slot (`MOVED`, `ASK`), or cannot serve
    /// it for now (`TRYAGAIN`, `CLUSTERDOWN`): forgotten on this node; the owner's pipeline
    /// adopts it.
    Moved(String),
}

impl Fault {
    pub fn of(error: &RedisError) -> Fault {
        match error.code() {
            Some("NOGROUP") => Fault::NoGroup,
            Some("WRONGTYPE") => Fault::WrongType,
            _ if redirected(error) => Fault::Moved(error.to_string()),
            _ => Fault::Other(error.to_string()),
        }
    }
}

/// Whether a cluster node turned a command away because of where its keys' slot is served:
/// elsewhere (`MOVED`, `ASK`), split between two nodes (`TRYAGAIN`) or by no one reachable
/// (`CLUSTERDOWN`). Never seen outside a cluster.
pub fn redirected(error: &RedisError) -> bool {
    matches!(
        error.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN")
    )
}

/// How often the change feed is looked at while entries are read (at once when idle).
pub const LOOK_EVERY: Duration = Duration::from_millis(5);

/// A stream dropped from reading, for maintenance to look into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub stream: StreamKey,
    pub fault: Fault,
}

/// What the reader tells maintenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A stream dropped from reading.
    Lost(Lost),
    /// Streams the change feed named that the group is not on yet (new coupons): to adopt.
    Found(Vec<StreamKey>),
    /// A sweep started: maintenance looks for streams the feed may not have named.
    Sweep(Sweep),
    /// Streams just read (entries or not): their standing may have changed.
    Touched(Vec<StreamKey>),
}

/// Whether a server error may be about one of the keys rather than the connection or the
/// server as a whole (those are retried as they are).
fn may_be_one_key(error: &RedisError) -> bool {
    if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
        return false;
    }
    !matches!(
        error.code(),
        None | Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
    )
}

/// Static settings of a reader.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    pub group: String,
    pub consumer: String,
    /// Entries idle this long in another consumer's hands are taken over.
    pub claim_idle: Duration,
    /// On a cluster node: one command names streams of one hash slot only (a command over
    /// several slots is refused with `CROSSSLOT`).
    pub by_slot: bool,
}

/// An entry whose payload is gone although it is still pending.
#[derive(Debug, Clone)]
pub struct Vanished {
    pub stream: StreamKey,
    pub id: EntryId,
}

/// Streams probed per pipeline when a command was refused.
const STREAMS_PER_PROBE: usize = 2_000;

/// The streams to read and where each read phase stands. Generic over the connection: a
/// reader reads the streams of one Redis node.
pub struct Reader<C> {
    conn: C,
    config: ReadConfig,
    known: HashSet<StreamKey>,
    /// Own pending entries still to drain: the cursor per stream.
    own_pending: BTreeMap<StreamKey, EntryId>,
    /// Streams with entries idle long enough to claim, and the claim cursor.
    claims: VecDeque<(StreamKey, EntryId)>,
    /// The streams that may have new entries.
    queue: ReadQueue,
    feed: ChangeFeed,
    /// When the feed was last looked at; `None`: look at once.
    looked: Option<Instant>,
    reports: Vec<Report>,
}

impl<C: ConnectionLike + Send> Reader<C> {
    /// A reader of the streams `feed` names on the node `conn` talks to.
    pub fn new(conn: C, config: ReadConfig, feed: ChangeFeed) -> Reader<C> {
        Reader {
            conn,
            config,
            known: HashSet::new(),
            own_pending: BTreeMap::new(),
            claims: VecDeque::new(),
            queue: ReadQueue::default(),
            feed,
            looked: None,
            reports: Vec::new(),
        }
    }

    /// How many streams are read.
    pub fn stream_count(&self) -> usize {
        self.known.len()
    }

    pub fn config(&self) -> &ReadConfig {
        &self.config
    }

    /// Starts reading streams the group was just created on (or found on): their own
    /// pending entries first, then whatever is new.
    pub fn add_streams(&mut self, streams: impl IntoIterator<Item = StreamKey>) {
        for stream in streams {
            self.known.insert(stream.clone());
            self.own_pending
                .entry(stream.clone())
                .or_insert(EntryId::ZERO);
            self.queue.hint(stream);
        }
    }

    /// Stops reading a stream.
    pub fn remove_stream(&mut self, stream: &StreamKey, fault: Fault) {
        self.known.remove(stream);
        self.own_pending.remove(stream);
        self.claims.retain(|(s, _)| s != stream);
        self.reports.push(Report::Lost(Lost {
            stream: stream.clone(),
            fault,
        }));
    }

    /// What happened since the last call, for maintenance.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// The connection failed: changes may have gone unseen, so the next look sweeps.
    pub fn connection_failed(&mut self) {
        self.feed.connection_failed();
    }

    /// Whether the change feed should be looked at before the next read.
    pub fn look_due(&self, now: Instant) -> bool {
        self.queue.is_empty()
            || self
                .looked
                .is_none_or(|at| now.saturating_duration_since(at) >= LOOK_EVERY)
    }

    /// Whether streams wait to be read.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Looks at the change feed: queues the streams it names (and hands those the group is
    /// not on yet to maintenance), and a sweep of every known stream when one is due.
    pub async fn look(&mut self) -> Result<(), ReadError> {
        let now = Instant::now();
        let look = self.feed.look(&mut self.conn, now).await?;
        // More than one call holds: look again at once.
        self.looked = (!look.more).then_some(now);
        let mut found = Vec::new();
        for stream in look.changed {
            if self.known.contains(&stream) {
                self.queue.hint(stream);
            } else {
                found.push(stream);
            }
        }
        if !found.is_empty() {
            self.reports.push(Report::Found(found));
        }
        if let Some(sweep) = look.sweep {
            // A routine sweep lets one under way finish; any other starts over.
            let routine = matches!(sweep, Sweep::Interval | Sweep::NoIndex);
            if !(routine && self.queue.sweeping()) {
                self.queue.sweep(self.known.iter().cloned());
                self.reports.push(Report::Sweep(sweep));
            }
        }
        Ok(())
    }

    /// Queues streams that have entries idle long enough to be taken over.
    pub fn queue_claims(&mut self, streams: impl IntoIterator<Item = StreamKey>) {
        for stream in streams {
            let queued = self.claims.iter().any(|(s, _)| *s == stream);
            if self.known.contains(&stream) && !queued {
                self.claims.push_back((stream, EntryId::ZERO));
            }
        }
    }

    /// Whether own pending entries from an earlier run remain to be drained.
    pub fn draining(&self) -> bool {
        !self.own_pending.is_empty()
    }

    pub fn claiming(&self) -> bool {
        !self.claims.is_empty()
    }

    /// Up to about `count` of this consumer's own pending entries (payload-less ones
    /// included, for the caller to raise the alarm about), from many streams at once.
    pub async fn read_own_pending(&mut self, count: usize) -> Result<Vec<RawEntry>, ReadError> {
        let slot = self
            .own_pending
            .keys()
            .next()
            .map(|stream| hash_slot(stream));
        let by_slot = self.config.by_slot;
        let chunk: Vec<(StreamKey, EntryId)> = self
            .own_pending
            .iter()
            .filter(|(stream, _)| !by_slot || Some(hash_slot(stream)) == slot)
            .take(STREAMS_PER_READ.min(count.max(1)))
            .map(|(stream, cursor)| (stream.clone(), *cursor))
            .collect();
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        let per_stream = share(count.min(ENTRIES_PER_READ), chunk.len());
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(per_stream)
            .arg("STREAMS");
        for (stream, _) in &chunk {
            command.arg(&**stream);
        }
        for (_, cursor) in &chunk {
            command.arg(cursor.to_string());
        }
        let answer: Value = match command.query_async(&mut self.conn).await {
            Ok(answer) => answer,
            Err(error) => {
                let streams: Vec<StreamKey> = chunk.into_iter().map(|(s, _)| s).collect();
                return self.refused(&streams, error).await.map(|()| Vec::new());
            }
        };
        let entries = reply::read_reply(answer, Source::Pending)?;
        // Streams that returned nothing are drained; the others go on after their last.
        let mut last: BTreeMap<&StreamKey, EntryId> = BTreeMap::new();
        for entry in &entries {
            last.insert(&entry.stream, entry.id);
        }
        for (stream, _) in &chunk {
            match last.get(stream) {
                Some(id) => {
                    if let Some(cursor) = self.own_pending.get_mut(stream) {
                        *cursor = *id;
                    }
                }
                None => {
                    self.own_pending.remove(stream);
                }
            }
        }
        Ok(entries)
    }

    /// Up to `count` entries idle longer than the claim time (any consumer's, this one's
    /// included: an entry that failed here is retried the same way), plus the IDs of idle
    /// pending entries whose payload is gone.
    pub async fn claim(
        &mut self,
        count: usize,
    ) -> Result<(Vec<RawEntry>, Vec<Vanished>), ReadError> {
        let idle_ms = u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX);
        while let Some((stream, cursor)) = self.claims.front().cloned() {
            let answer: Value = match redis::cmd("XAUTOCLAIM")
                .arg(&*stream)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(idle_ms)
                .arg(cursor.to_string())
                .arg("COUNT")
                .arg(count.clamp(1, ENTRIES_PER_READ))
                .query_async(&mut self.conn)
                .await
            {
                Ok(answer) => answer,
                Err(error) if may_be_one_key(&error) || redirected(&error) => {
                    self.remove_stream(&stream, Fault::of(&error));
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let claimed = reply::claim_reply(&stream, answer)?;
            if claimed.cursor == EntryId::ZERO {
                self.claims.pop_front();
            } else if let Some(front) = self.claims.front_mut() {
                front.1 = claimed.cursor;
            }
            let vanished: Vec<Vanished> = claimed
                .deleted
                .into_iter()
                .map(|id| Vanished {
                    stream: stream.clone(),
                    id,
                })
                .collect();
            if !claimed.entries.is_empty() || !vanished.is_empty() {
                self.reports.push(Report::Touched(vec![stream.clone()]));
                return Ok((claimed.entries, vanished));
            }
        }
        Ok((Vec::new(), Vec::new()))
    }

    /// Entries never delivered before, of the streams first in line (at most
    /// [`STREAMS_PER_READ`]), about `count` in all (at most [`ENTRIES_PER_READ`]), shared
    /// evenly: one hot stream alone gets it all. A stream that filled its share is read again
    /// first. Never blocks: empty when nothing waits.
    ///
    /// By slot (on a cluster node), streams of several slots are read with one command per
    /// slot, in one pipeline.
    pub async fn read_new(&mut self, count: usize) -> Result<Vec<RawEntry>, ReadError> {
        let streams: Vec<StreamKey> = self
            .queue
            .next(STREAMS_PER_READ)
            .into_iter()
            .filter(|stream| self.known.contains(stream))
            .collect();
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        self.reports.push(Report::Touched(streams.clone()));
        let per_stream = share(count.min(ENTRIES_PER_READ), streams.len());
        let slots = if self.config.by_slot {
            by_slot(&streams)
        } else {
            vec![streams]
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for streams in &slots {
            pipe.add_command(read_new_command(&self.config, streams, per_stream));
        }
        let answers: Vec<redis::RedisResult<Value>> = match pipe.query_async(&mut self.conn).await {
            Ok(answers) => answers,
            Err(error) => {
                self.read_later(slots.iter().flatten());
                return Err(error.into());
            }
        };
        let mut entries = Vec::new();
        let mut failed = None;
        for (streams, answer) in slots.iter().zip(answers) {
            match answer {
                Ok(answer) => entries.extend(reply::read_reply(answer, Source::New)?),
                Err(error) => {
                    if let Err(error) = self.refused(streams, error).await {
                        failed = Some(error);
                    }
                    // Those still known were not read: they wait for the next read.
                    self.read_later(streams.iter());
                }
            }
        }
        let mut read: HashMap<&StreamKey, usize> = HashMap::new();
        for entry in &entries {
            *read.entry(&entry.stream).or_default() += 1;
        }
        for (stream, n) in read {
            if n >= per_stream {
                self.queue.read_again(stream.clone());
            }
        }
        match failed {
            Some(error) if entries.is_empty() => Err(error),
            _ => Ok(entries),
        }
    }

    /// Queues streams a read could not cover for the next one.
    fn read_later<'s>(&mut self, streams: impl Iterator<Item = &'s StreamKey>) {
        for stream in streams {
            if self.known.contains(stream) {
                self.queue.read_again(stream.clone());
            }
        }
    }

    /// After `error` refused a command naming `streams` (all of one slot when reading by
    /// slot): a cluster node that no longer serves their slot drops them all; else the
    /// faulty ones are looked for (see [`Reader::isolate`]). `Ok` when streams were dropped.
    async fn refused(&mut self, streams: &[StreamKey], error: RedisError) -> Result<(), ReadError> {
        if redirected(&error) {
            let fault = Fault::of(&error);
            for stream in streams {
                self.remove_stream(stream, fault.clone());
            }
            return Ok(());
        }
        self.isolate(streams, error).await
    }

    /// After `error` refused a command naming `streams`: probes each of them in one
    /// pipeline and drops the faulty ones. `Ok` when some were found (read again at once),
    /// else the original error.
    async fn isolate(&mut self, streams: &[StreamKey], error: RedisError) -> Result<(), ReadError> {
        if !may_be_one_key(&error) {
            return Err(error.into());
        }
        let mut faulty = Vec::new();
        for chunk in streams.chunks(STREAMS_PER_PROBE) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for stream in chunk {
                pipe.cmd("XPENDING").arg(&**stream).arg(&self.config.group);
            }
            let answers: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut self.conn).await?;
            for (stream, answer) in chunk.iter().zip(answers) {
                if let Err(fault) = answer {
                    faulty.push((stream.clone(), Fault::of(&fault)));
                }
            }
        }
        if faulty.is_empty() {
            return Err(error.into());
        }
        for (stream, fault) in faulty {
            self.remove_stream(&stream, fault);
        }
        Ok(())
    }
}

/// `XREADGROUP` of new entries, `per_stream` at most from each of `streams`.
fn read_new_command(config: &ReadConfig, streams: &[StreamKey], per_stream: usize) -> redis::Cmd {
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(&config.group)
        .arg(&config.consumer)
        .arg("COUNT")
        .arg(per_stream)
        .arg("STREAMS");
    for stream in streams {
        command.arg(&**stream);
    }
    for _ in streams {
        command.arg(">");
    }
    command
}

/// `streams`, one group per hash slot.
fn by_slot(streams: &[StreamKey]) -> Vec<Vec<StreamKey>> {
    let mut slots: BTreeMap<u16, Vec<StreamKey>> = BTreeMap::new();
    for stream in streams {
        slots
            .entry(hash_slot(stream))
            .or_default()
            .push(stream.clone());
    }
    slots.into_values().collect()
}
