//! Stage 1, read: hands out entries of the streams it is given, in this order: this
//! consumer's own pending entries (left by a previous run), entries other consumers left idle
//! too long (`XAUTOCLAIM`), then new ones.
//!
//! Many streams are read with one command. When Redis refuses a command because of one
//! stream (deleted: `NOGROUP`; replaced by another type: `WRONGTYPE`), the streams are probed
//! in one pipeline, the faulty ones are dropped and reported (see [`Reader::take_lost`]),
//! and the others are read on: one bad stream never stalls the rest.

use crate::event::{EntryId, RawEntry, Source, StreamKey};
use crate::reply::{self, BadReply};
use coupon_layout::hash_slot;
use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] BadReply),
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

/// Longest wait between two polls of the streams of several slots (see
/// [`Reader::read_new`]).
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A stream dropped from reading, for maintenance to look into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub stream: StreamKey,
    pub fault: Fault,
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

/// Streams named in one command draining own pending entries or probing streams.
const STREAMS_PER_COMMAND: usize = 2_000;

/// The streams to read and where each read phase stands. Generic over the connection: a
/// reader reads the streams of one Redis node.
pub struct Reader<C> {
    conn: C,
    config: ReadConfig,
    streams: Vec<StreamKey>,
    known: HashSet<StreamKey>,
    /// Own pending entries still to drain: the cursor per stream.
    own_pending: BTreeMap<StreamKey, EntryId>,
    /// Streams with entries idle long enough to claim, and the claim cursor.
    claims: VecDeque<(StreamKey, EntryId)>,
    lost: Vec<Lost>,
}

impl<C: ConnectionLike + Send> Reader<C> {
    /// `conn` should be a connection of its own: `XREADGROUP … BLOCK` holds it.
    pub fn new(conn: C, config: ReadConfig) -> Reader<C> {
        Reader {
            conn,
            config,
            streams: Vec::new(),
            known: HashSet::new(),
            own_pending: BTreeMap::new(),
            claims: VecDeque::new(),
            lost: Vec::new(),
        }
    }

    pub fn streams(&self) -> &[StreamKey] {
        &self.streams
    }

    pub fn config(&self) -> &ReadConfig {
        &self.config
    }

    /// Starts reading streams the group was just created on (or found on); their own
    /// pending entries are drained first.
    pub fn add_streams(&mut self, streams: impl IntoIterator<Item = StreamKey>) {
        for stream in streams {
            if self.known.insert(stream.clone()) {
                self.streams.push(stream.clone());
            }
            self.own_pending.entry(stream).or_insert(EntryId::ZERO);
        }
    }

    /// Stops reading a stream.
    pub fn remove_stream(&mut self, stream: &StreamKey, fault: Fault) {
        if self.known.remove(stream) {
            self.streams.retain(|s| s != stream);
        }
        self.own_pending.remove(stream);
        self.claims.retain(|(s, _)| s != stream);
        self.lost.push(Lost {
            stream: stream.clone(),
            fault,
        });
    }

    /// Streams dropped since the last call.
    pub fn take_lost(&mut self) -> Vec<Lost> {
        std::mem::take(&mut self.lost)
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
            .take(STREAMS_PER_COMMAND.min(count.max(1)))
            .map(|(stream, cursor)| (stream.clone(), *cursor))
            .collect();
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        let per_stream = count.div_ceil(chunk.len()).max(1);
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
                .arg(count.max(1))
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
                return Ok((claimed.entries, vanished));
            }
        }
        Ok((Vec::new(), Vec::new()))
    }

    /// Entries never delivered before, waiting up to `block`: about `count` in all (each
    /// stream is asked for an equal share, so the total can pass `count` by up to the
    /// number of streams; the batch keeps what does not fit for the next one).
    ///
    /// By slot (on a cluster node), streams of several slots are read with one command per
    /// slot in one pipeline, without `BLOCK` (one blocking command would hold the others
    /// back), polled every few ms until something comes or `block` has passed.
    pub async fn read_new(
        &mut self,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawEntry>, ReadError> {
        if self.streams.is_empty() {
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        let per_stream = count.div_ceil(self.streams.len()).max(1);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        if !self.config.by_slot || self.one_slot() {
            let command = self.read_new_command(&self.streams, per_stream, block_ms);
            return match command.query_async::<Value>(&mut self.conn).await {
                Ok(answer) => Ok(reply::read_reply(answer, Source::New)?),
                Err(error) => {
                    let streams = self.streams.clone();
                    self.refused(&streams, error).await.map(|()| Vec::new())
                }
            };
        }
        let slots = self.by_slot();
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for streams in &slots {
                pipe.add_command(self.read_new_command(streams, per_stream, 0));
            }
            let answers: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut self.conn).await?;
            let mut entries = Vec::new();
            let mut dropped = false;
            let mut failed = None;
            for (streams, answer) in slots.iter().zip(answers) {
                match answer {
                    Ok(answer) => entries.extend(reply::read_reply(answer, Source::New)?),
                    Err(error) => match self.refused(streams, error).await {
                        Ok(()) => dropped = true,
                        Err(error) => failed = Some(error),
                    },
                }
            }
            if !entries.is_empty() || dropped {
                return Ok(entries);
            }
            if let Some(error) = failed {
                return Err(error);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(entries);
            }
            tokio::time::sleep(POLL_EVERY.min(deadline - now)).await;
        }
    }

    fn one_slot(&self) -> bool {
        let mut slots = self.streams.iter().map(|stream| hash_slot(stream));
        let first = slots.next();
        slots.all(|slot| Some(slot) == first)
    }

    /// The streams to read, one group per hash slot.
    fn by_slot(&self) -> Vec<Vec<StreamKey>> {
        let mut slots: BTreeMap<u16, Vec<StreamKey>> = BTreeMap::new();
        for stream in &self.streams {
            slots
                .entry(hash_slot(stream))
                .or_default()
                .push(stream.clone());
        }
        slots.into_values().collect()
    }

    fn read_new_command(
        &self,
        streams: &[StreamKey],
        per_stream: usize,
        block_ms: u64,
    ) -> redis::Cmd {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(per_stream);
        if block_ms > 0 {
            command.arg("BLOCK").arg(block_ms);
        }
        command.arg("STREAMS");
        for stream in streams {
            command.arg(&**stream);
        }
        for _ in streams {
            command.arg(">");
        }
        command
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
        for chunk in streams.chunks(STREAMS_PER_COMMAND) {
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
