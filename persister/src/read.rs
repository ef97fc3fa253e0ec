//! Stage 1, read: finds coupon event streams, joins the consumer group on each, and hands
//! out entries in this order: this consumer's own pending entries (left by a previous run),
//! entries other consumers left idle too long (`XAUTOCLAIM`), then new ones.

use crate::event::{coupon_of_stream, EntryId, RawEntry, Source, StreamKey};
use crate::reply::{self, BadReply};
use redis::aio::ConnectionManager;
use redis::Value;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
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

    /// The group (or the stream) vanished: Redis restarted without persistence, or the
    /// coupon was deleted. The streams must be found and joined again.
    pub fn lost_group(&self) -> bool {
        matches!(self, ReadError::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

/// Static settings of a reader.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    pub group: String,
    pub consumer: String,
    /// `SCAN … MATCH` pattern of event streams.
    pub pattern: String,
    /// Entries idle this long in another consumer's hands are taken over.
    pub claim_idle: Duration,
}

/// An entry whose payload is gone although it is still pending.
#[derive(Debug, Clone)]
pub struct Vanished {
    pub stream: StreamKey,
    pub id: EntryId,
}

/// The streams known so far and where each read phase stands.
pub struct Reader {
    conn: ConnectionManager,
    config: ReadConfig,
    streams: Vec<StreamKey>,
    known: HashSet<StreamKey>,
    own_pending: VecDeque<(StreamKey, EntryId)>,
    claims: VecDeque<(StreamKey, EntryId)>,
}

impl Reader {
    /// `conn` should be a connection of its own: `XREADGROUP … BLOCK` holds it.
    pub fn new(conn: ConnectionManager, config: ReadConfig) -> Reader {
        Reader {
            conn,
            config,
            streams: Vec::new(),
            known: HashSet::new(),
            own_pending: VecDeque::new(),
            claims: VecDeque::new(),
        }
    }

    pub fn streams(&self) -> &[StreamKey] {
        &self.streams
    }

    pub fn config(&self) -> &ReadConfig {
        &self.config
    }

    /// Forgets every stream, so the next discovery joins them again.
    pub fn forget_streams(&mut self) {
        self.streams.clear();
        self.known.clear();
        self.claims.clear();
        self.own_pending.clear();
    }

    /// Scans for event streams not seen yet, creates the group on each (from the first
    /// entry, so history is persisted too) and queues its own pending entries for draining.
    /// Returns how many streams are new.
    pub async fn discover(&mut self) -> Result<usize, ReadError> {
        let mut cursor: u64 = 0;
        let mut found = 0;
        loop {
            let answer: Value = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&self.config.pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream")
                .query_async(&mut self.conn)
                .await?;
            let parts = reply::items(&answer)?;
            let [next, keys] = parts else {
                return Err(BadReply(format!("SCAN reply: {answer:?}")).into());
            };
            for key in reply::items(keys)? {
                let stream: StreamKey = Arc::from(reply::bytes(key)?);
                // A stream no coupon would have belongs to someone else: never join it.
                if self.known.contains(&stream) || coupon_of_stream(&stream).is_none() {
                    continue;
                }
                self.join(&stream).await?;
                self.known.insert(stream.clone());
                self.streams.push(stream.clone());
                self.own_pending.push_back((stream, EntryId::ZERO));
                found += 1;
            }
            cursor = reply::text(next)?
                .parse()
                .map_err(|_| BadReply(format!("SCAN cursor: {next:?}")))?;
            if cursor == 0 {
                return Ok(found);
            }
        }
    }

    async fn join(&mut self, stream: &[u8]) -> Result<(), ReadError> {
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.config.group)
            .arg("0")
            .query_async(&mut self.conn)
            .await;
        match created {
            Ok(_) => {
                tracing::info!(stream = %String::from_utf8_lossy(stream), "joined stream");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether own pending entries from an earlier run remain to be drained.
    pub fn draining(&self) -> bool {
        !self.own_pending.is_empty()
    }

    /// Up to `count` of this consumer's own pending entries (payload-less ones included,
    /// for the caller to raise the alarm about).
    pub async fn read_own_pending(&mut self, count: usize) -> Result<Vec<RawEntry>, ReadError> {
        while let Some((stream, after)) = self.own_pending.front().cloned() {
            let answer: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg("COUNT")
                .arg(count.max(1))
                .arg("STREAMS")
                .arg(&*stream)
                .arg(after.to_string())
                .query_async(&mut self.conn)
                .await?;
            let entries = reply::read_reply(&answer, Source::Pending)?;
            match entries.last() {
                Some(last) => {
                    if let Some(front) = self.own_pending.front_mut() {
                        front.1 = last.id;
                    }
                    return Ok(entries);
                }
                None => {
                    self.own_pending.pop_front();
                }
            }
        }
        Ok(Vec::new())
    }

    /// Starts a pass over every stream looking for idle entries to take over.
    pub fn start_claim_round(&mut self) {
        self.claims = self
            .streams
            .iter()
            .map(|stream| (stream.clone(), EntryId::ZERO))
            .collect();
    }

    pub fn claiming(&self) -> bool {
        !self.claims.is_empty()
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
            let answer: Value = redis::cmd("XAUTOCLAIM")
                .arg(&*stream)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(idle_ms)
                .arg(cursor.to_string())
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut self.conn)
                .await?;
            let claimed = reply::claim_reply(&stream, &answer)?;
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
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(per_stream);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        if block_ms > 0 {
            command.arg("BLOCK").arg(block_ms);
        }
        command.arg("STREAMS");
        for stream in &self.streams {
            command.arg(&**stream);
        }
        for _ in &self.streams {
            command.arg(">");
        }
        let answer: Value = command.query_async(&mut self.conn).await?;
        Ok(reply::read_reply(&answer, Source::New)?)
    }
}
