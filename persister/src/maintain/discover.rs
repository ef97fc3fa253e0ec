//! Finding the coupon event streams: `SCAN` for streams matching the pattern, then adopt
//! only those a coupon has — named as a coupon's stream is (`K:events{K}`, or `K:events`
//! for a key with a hash tag) *and* whose coupon key is a coupon (a hash holding the last
//! seq under the empty field), or that already carry our group (joined before, maybe with
//! entries left after the coupon went). Every other stream belongs to someone else: never
//! joined, logged once.

use crate::event::StreamKey;
use crate::pipeline::read::redirected;
use crate::reply::{self, BadReply};
use coupon_layout::{CouponKey, LAST_SEQ_FIELD};
use redis::aio::ConnectionLike;
use redis::{RedisError, RedisResult, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names of ignored streams remembered (so each is logged once); past it, no longer logged.
const MAX_REMEMBERED: usize = 100_000;
/// Streams checked per pipeline.
const CHUNK: usize = 500;
/// How long a stream seen in a slot this node does not serve yet is asked about again: long
/// enough for a slot's move to finish (the sweep's scan finds it after that).
const DEFER_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] BadReply),
}

/// What one round found.
#[derive(Debug, Default)]
pub struct Found {
    /// Streams joined now (the group created, or found there).
    pub joined: Vec<StreamKey>,
    /// Streams ignored for the first time, and why.
    pub newly_ignored: Vec<(StreamKey, &'static str)>,
    /// Streams ignored in this round, new or not.
    pub ignored: usize,
}

pub struct Discovery {
    pattern: String,
    group: String,
    /// Streams joined: not looked at again until forgotten.
    known: HashSet<StreamKey>,
    /// Streams ignored and logged.
    ignored: HashSet<StreamKey>,
    /// Streams named while their slot was not served here (a move under way: `IMPORTING`
    /// here, or `MIGRATING` away), since when: adopted once it is, as nothing else may name
    /// them again before a sweep.
    deferred: HashMap<StreamKey, Instant>,
    /// The dead-letter stream: never adopted, nor its per-slot keys `<name>{<tag>}`.
    dead_letter: Option<Vec<u8>>,
}

/// Whether `key` is the dead-letter stream `name`, or one of its per-slot keys on a cluster
/// (`<name>{<tag>}`).
pub fn is_dead_letter(name: &[u8], key: &[u8]) -> bool {
    key == name
        || key
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(b"{"))
            .is_some_and(|tag| tag.ends_with(b"}"))
}

impl Discovery {
    pub fn new(pattern: String, group: String) -> Discovery {
        Discovery {
            pattern,
            group,
            known: HashSet::new(),
            ignored: HashSet::new(),
            deferred: HashMap::new(),
            dead_letter: None,
        }
    }

    /// Never adopts the dead-letter stream `name` (nor its per-slot keys).
    pub fn skipping(mut self, name: String) -> Discovery {
        self.dead_letter = Some(name.into_bytes());
        self
    }

    pub fn known(&self) -> impl Iterator<Item = &StreamKey> {
        self.known.iter()
    }

    pub fn count(&self) -> usize {
        self.known.len()
    }

    /// Whether streams seen in a slot not served here wait to be asked about again.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The streams seen in a slot not served here, to adopt now if it is; those waiting
    /// longer than [`DEFER_FOR`] are dropped (their slot went elsewhere).
    pub fn take_deferred(&mut self, now: Instant) -> Vec<StreamKey> {
        let known = &self.known;
        self.deferred.retain(|stream, since| {
            !known.contains(stream) && now.saturating_duration_since(*since) < DEFER_FOR
        });
        self.deferred.keys().cloned().collect()
    }

    /// Forgets a stream (gone, or no longer a stream): a later round may adopt it again.
    pub fn forget(&mut self, stream: &StreamKey) {
        self.known.remove(stream);
    }

    /// Marks a stream joined outside a round (joined again after its group vanished).
    pub fn remember(&mut self, stream: StreamKey) {
        self.known.insert(stream);
    }

    /// One pass over the keyspace.
    pub async fn round<C: ConnectionLike + Send>(
        &mut self,
        conn: &mut C,
    ) -> Result<Found, DiscoverError> {
        let mut found = Found::default();
        let mut candidates: Vec<StreamKey> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let answer: Value = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream")
                .query_async(conn)
                .await?;
            let [next, keys] = reply::items(&answer)? else {
                return Err(BadReply(format!("SCAN reply: {answer:?}")).into());
            };
            for key in reply::items(keys)? {
                let stream: StreamKey = Arc::from(reply::bytes(key)?);
                if self.known.contains(&stream) {
                    continue;
                }
                if let Some(name) = &self.dead_letter {
                    if is_dead_letter(name, &stream) {
                        continue;
                    }
                }
                if CouponKey::of_events_key(&stream).is_none() {
                    found.ignored += 1;
                    self.note_ignored(&mut found, stream, "not named as a coupon's stream");
                    continue;
                }
                candidates.push(stream);
            }
            cursor = reply::text(next)?
                .parse()
                .map_err(|_| BadReply(format!("SCAN cursor: {next:?}")))?;
            if cursor == 0 {
                break;
            }
        }
        candidates.sort();
        candidates.dedup();
        for chunk in candidates.chunks(CHUNK) {
            self.adopt(conn, chunk, &mut found).await?;
        }
        Ok(found)
    }

    /// Adopts streams named by the change feed (new coupons), without a scan: each checked
    /// as a round checks what it finds.
    pub async fn adopt_named<C: ConnectionLike + Send>(
        &mut self,
        conn: &mut C,
        streams: Vec<StreamKey>,
    ) -> Result<Found, DiscoverError> {
        let mut found = Found::default();
        let mut candidates = Vec::new();
        for stream in streams {
            if self.known.contains(&stream) || self.ignored.contains(&stream) {
                continue;
            }
            if let Some(name) = &self.dead_letter {
                if is_dead_letter(name, &stream) {
                    continue;
                }
            }
            // The feed names every coupon stream of the node; only those the pattern takes
            // are this deployment's, as in a scan.
            if !glob_matches(self.pattern.as_bytes(), &stream) {
                continue;
            }
            if CouponKey::of_events_key(&stream).is_none() {
                self.note_ignored(&mut found, stream, "not named as a coupon's stream");
                continue;
            }
            candidates.push(stream);
        }
        candidates.sort();
        candidates.dedup();
        for chunk in candidates.chunks(CHUNK) {
            self.adopt(conn, chunk, &mut found).await?;
        }
        Ok(found)
    }

    fn note_ignored(&mut self, found: &mut Found, stream: StreamKey, why: &'static str) {
        if self.ignored.len() < MAX_REMEMBERED && self.ignored.insert(stream.clone()) {
            found.newly_ignored.push((stream, why));
        }
    }

    /// Checks each candidate's coupon key and group in one pipeline; joins the coupons'.
    async fn adopt<C: ConnectionLike + Send>(
        &mut self,
        conn: &mut C,
        candidates: &[StreamKey],
        found: &mut Found,
    ) -> Result<(), DiscoverError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for stream in candidates {
            let coupon = CouponKey::of_events_key(stream).map(|c| c.as_bytes());
            pipe.cmd("HEXISTS")
                .arg(coupon.unwrap_or_default())
                .arg(LAST_SEQ_FIELD);
            pipe.cmd("XPENDING").arg(&**stream).arg(&self.group);
        }
        let answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
        let mut join = Vec::new();
        for (stream, pair) in candidates.iter().zip(answers.chunks(2)) {
            // Seen in a slot this node does not serve (yet): asked about again until it
            // does (the slot is being moved here) or its owner adopts it.
            if pair.iter().any(|a| matches!(a, Err(e) if redirected(e))) {
                if self.deferred.len() < MAX_REMEMBERED {
                    self.deferred
                        .entry(stream.clone())
                        .or_insert_with(Instant::now);
                }
                continue;
            }
            self.deferred.remove(stream);
            let is_coupon = matches!(pair.first(), Some(Ok(Value::Int(1))));
            let has_group = matches!(pair.get(1), Some(Ok(_)));
            if has_group {
                found.joined.push(stream.clone());
            } else if is_coupon {
                join.push(stream.clone());
            } else {
                found.ignored += 1;
                self.note_ignored(found, stream.clone(), "its coupon key is not a coupon");
            }
        }
        if !join.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for stream in &join {
                // From the first entry, so the history is persisted too.
                pipe.cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&**stream)
                    .arg(&self.group)
                    .arg("0");
            }
            let answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
            for (stream, answer) in join.into_iter().zip(answers) {
                match answer {
                    Ok(_) => found.joined.push(stream),
                    Err(e) if e.code() == Some("BUSYGROUP") => found.joined.push(stream),
                    // Gone or changed type since the scan: the next round sees.
                    Err(e) => tracing::debug!(
                        stream = %String::from_utf8_lossy(&stream),
                        error = %e,
                        "cannot create the group"
                    ),
                }
            }
        }
        for stream in &found.joined {
            self.known.insert(stream.clone());
        }
        Ok(())
    }

    /// After the group vanished from a known stream (`NOGROUP`): joins it again if it still
    /// is a coupon's stream. `Ok(false)` when it is gone (or is no longer a coupon's).
    pub async fn rejoin<C: ConnectionLike + Send>(
        &mut self,
        conn: &mut C,
        stream: &StreamKey,
    ) -> Result<bool, DiscoverError> {
        self.known.remove(stream);
        let mut found = Found::default();
        let kind: String = redis::cmd("TYPE").arg(&**stream).query_async(conn).await?;
        if kind != "stream" {
            return Ok(false);
        }
        self.adopt(conn, std::slice::from_ref(stream), &mut found)
            .await?;
        Ok(!found.joined.is_empty())
    }
}

/// Whether `key` matches the glob `pattern` as Redis' `SCAN … MATCH` does: `*`, `?`,
/// `[abc]`, `[a-z]`, `[^…]` and `\` escapes.
pub fn glob_matches(pattern: &[u8], key: &[u8]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((b'*', rest)) => (0..=key.len()).any(|at| glob_matches(rest, &key[at..])),
        Some((b'?', rest)) => !key.is_empty() && glob_matches(rest, &key[1..]),
        Some((b'[', rest)) => {
            let Some((&first, tail)) = key.split_first() else {
                return false;
            };
            let (negate, mut class) = match rest.split_first() {
                Some((b'^', class)) => (true, class),
                _ => (false, rest),
            };
            let mut hit = false;
            loop {
                match class {
                    [] => return false,
                    [b']', after @ ..] => {
                        class = after;
                        break;
                    }
                    [b'\\', c, after @ ..] => {
                        hit |= *c == first;
                        class = after;
                    }
                    [low, b'-', high, after @ ..] if *high != b']' => {
                        let (low, high) = if low <= high {
                            (*low, *high)
                        } else {
                            (*high, *low)
                        };
                        hit |= (low..=high).contains(&first);
                        class = after;
                    }
                    [c, after @ ..] => {
                        hit |= *c == first;
                        class = after;
                    }
                }
            }
            hit != negate && glob_matches(class, tail)
        }
        Some((b'\\', [c, rest @ ..])) => key.first() == Some(c) && glob_matches(rest, &key[1..]),
        Some((c, rest)) => key.first() == Some(c) && glob_matches(rest, &key[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_scan_does() {
        assert!(glob_matches(b"*:events*", b"sale:events{sale}"));
        assert!(!glob_matches(b"*:events*", b"sale:holders"));
        assert!(glob_matches(b"run7:*:events*", b"run7:3:events{run7:3}"));
        assert!(!glob_matches(b"run7:*:events*", b"run8:3:events{run8:3}"));
        assert!(glob_matches(b"s?le*", b"sale:events"));
        assert!(glob_matches(b"[a-c]x", b"bx"));
        assert!(!glob_matches(b"[^a-c]x", b"bx"));
        assert!(glob_matches(b"a\\*b", b"a*b"));
        assert!(!glob_matches(b"a\\*b", b"axb"));
        assert!(glob_matches(b"*", b""));
    }

    #[test]
    fn deferred_streams_are_dropped_once_known_or_too_old() {
        let mut discovery = Discovery::new("*".into(), "g".into());
        let start = Instant::now();
        let (a, b): (StreamKey, StreamKey) = (b"a:events{a}"[..].into(), b"b:events{b}"[..].into());
        discovery.deferred.insert(a.clone(), start);
        discovery.deferred.insert(b.clone(), start);
        assert!(discovery.has_deferred());
        discovery.remember(a);
        assert_eq!(discovery.take_deferred(start), vec![b.clone()]);
        assert_eq!(
            discovery.take_deferred(start + DEFER_FOR),
            Vec::<StreamKey>::new()
        );
        assert!(!discovery.has_deferred());
    }

    #[test]
    fn dead_letter_keys_are_the_name_or_the_name_with_a_tag() {
        let name = b"coupon-persister:dead-letter";
        assert!(is_dead_letter(name, name));
        assert!(is_dead_letter(name, b"coupon-persister:dead-letter{sale}"));
        assert!(!is_dead_letter(name, b"coupon-persister:dead-letter-2"));
        assert!(!is_dead_letter(name, b"coupon-persister:dead-letter{sale"));
        assert!(!is_dead_letter(name, b"sale:events{sale}"));
    }
}
