//! Where every consumer group stands on each stream, read in pipelines of many streams: the
//! base of the gauges (pending, backlog, age of the oldest unpersisted entry), of claiming
//! and of trimming.

use crate::event::{EntryId, StreamKey};
use crate::reply;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

/// Streams per pipeline.
pub const CHUNK: usize = 500;

/// One consumer group's position on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub name: String,
    pub pending: u64,
    pub last_delivered: EntryId,
    /// Entries not yet delivered to the group, when Redis can tell.
    pub lag: Option<u64>,
    /// The oldest pending entry, when `pending > 0` (and it was asked for).
    pub oldest_pending: Option<EntryId>,
}

/// Every group's position on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    pub stream: StreamKey,
    pub groups: Vec<GroupState>,
    /// The first entry our group has not been delivered yet, if any.
    pub first_undelivered: Option<EntryId>,
}

impl StreamState {
    pub fn group(&self, name: &str) -> Option<&GroupState> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// What the gauges show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub pending: u64,
    pub backlog: u64,
    /// The entry ID (its time) of the oldest entry not yet acknowledged by our group.
    pub oldest: Option<EntryId>,
}

pub fn totals(states: &[StreamState], group: &str) -> Totals {
    let mut totals = Totals::default();
    for state in states {
        let Some(ours) = state.group(group) else {
            continue;
        };
        totals.pending += ours.pending;
        totals.backlog += match ours.lag {
            Some(lag) => lag,
            None => u64::from(state.first_undelivered.is_some()),
        };
        for oldest in [ours.oldest_pending, state.first_undelivered]
            .into_iter()
            .flatten()
        {
            totals.oldest = Some(totals.oldest.map_or(oldest, |o| o.min(oldest)));
        }
    }
    totals
}

fn parse_groups(answer: &Value) -> Result<Vec<GroupState>, reply::BadReply> {
    let mut groups = Vec::new();
    for group in reply::items(answer)? {
        let mut name = None;
        let mut pending = 0;
        let mut last_delivered = None;
        let mut lag = None;
        for (key, value) in reply::pairs(group)? {
            match reply::text(key)?.as_str() {
                "name" => name = Some(reply::text(value)?),
                "pending" => pending = u64::try_from(reply::int(value)?).unwrap_or(0),
                "last-delivered-id" => last_delivered = Some(reply::entry_id(value)?),
                "lag" if *value != Value::Nil => lag = u64::try_from(reply::int(value)?).ok(),
                _ => {}
            }
        }
        let (Some(name), Some(last_delivered)) = (name, last_delivered) else {
            return Err(reply::BadReply(
                "XINFO GROUPS reply without name or last-delivered-id".into(),
            ));
        };
        groups.push(GroupState {
            name,
            pending,
            last_delivered,
            lag,
            oldest_pending: None,
        });
    }
    Ok(groups)
}

/// The state of `streams` (those Redis answers for: a stream deleted meanwhile is left out).
/// The oldest pending entry is read for `group`, or for every group when `all_groups`
/// (trimming needs them all).
pub async fn sample<C: ConnectionLike + Send>(
    conn: &mut C,
    streams: &[StreamKey],
    group: &str,
    all_groups: bool,
) -> RedisResult<Vec<StreamState>> {
    let mut states = Vec::with_capacity(streams.len());
    for chunk in streams.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for stream in chunk {
            pipe.cmd("XINFO").arg("GROUPS").arg(&**stream);
        }
        let answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
        let mut part: Vec<StreamState> = Vec::with_capacity(chunk.len());
        for (stream, answer) in chunk.iter().zip(answers) {
            let Ok(groups) = answer
                .map_err(|_| ())
                .and_then(|a| parse_groups(&a).map_err(|_| ()))
            else {
                continue;
            };
            part.push(StreamState {
                stream: stream.clone(),
                groups,
                first_undelivered: None,
            });
        }
        // Second round trip: oldest pending entries, first undelivered entries.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut asked: Vec<(usize, Option<usize>)> = Vec::new();
        for (i, state) in part.iter().enumerate() {
            for (g, state_group) in state.groups.iter().enumerate() {
                let ours = state_group.name == group;
                if state_group.pending > 0 && (ours || all_groups) {
                    pipe.cmd("XPENDING")
                        .arg(&*state.stream)
                        .arg(&state_group.name);
                    asked.push((i, Some(g)));
                }
                if ours && state_group.lag != Some(0) {
                    pipe.cmd("XRANGE")
                        .arg(&*state.stream)
                        .arg(format!("({}", state_group.last_delivered))
                        .arg("+")
                        .arg("COUNT")
                        .arg(1);
                    asked.push((i, None));
                }
            }
        }
        if !asked.is_empty() {
            let answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
            for ((i, g), answer) in asked.into_iter().zip(answers) {
                let Ok(answer) = answer else {
                    continue;
                };
                let state = &mut part[i];
                match g {
                    Some(g) => {
                        if let Ok([_, smallest, ..]) = reply::items(&answer) {
                            if *smallest != Value::Nil {
                                state.groups[g].oldest_pending = reply::entry_id(smallest).ok();
                            }
                        }
                    }
                    None => {
                        state.first_undelivered = reply::items(&answer)
                            .ok()
                            .and_then(|entries| entries.first())
                            .and_then(|entry| reply::items(entry).ok())
                            .and_then(|parts| parts.first())
                            .and_then(|id| reply::entry_id(id).ok());
                    }
                }
            }
        }
        states.extend(part);
    }
    Ok(states)
}

/// Of `streams` (where `group` has pending entries), those holding an entry idle at least
/// `idle_ms`: worth an `XAUTOCLAIM`.
pub async fn with_idle_entries<C: ConnectionLike + Send>(
    conn: &mut C,
    streams: &[StreamKey],
    group: &str,
    idle_ms: u64,
) -> RedisResult<Vec<StreamKey>> {
    let mut idle = Vec::new();
    for chunk in streams.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for stream in chunk {
            pipe.cmd("XPENDING")
                .arg(&**stream)
                .arg(group)
                .arg("IDLE")
                .arg(idle_ms)
                .arg("-")
                .arg("+")
                .arg(1);
        }
        let answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
        for (stream, answer) in chunk.iter().zip(answers) {
            let has = answer
                .ok()
                .and_then(|a| reply::items(&a).ok().map(|rows| !rows.is_empty()));
            if has == Some(true) {
                idle.push(stream.clone());
            }
        }
    }
    Ok(idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    fn state(name: &str, pending: u64, lag: Option<u64>, oldest: Option<u64>) -> StreamState {
        StreamState {
            stream: Arc::from(name.as_bytes()),
            groups: vec![GroupState {
                name: "g".into(),
                pending,
                last_delivered: id(1),
                lag,
                oldest_pending: oldest.map(id),
            }],
            first_undelivered: lag.filter(|lag| *lag > 0).map(|_| id(90)),
        }
    }

    #[test]
    fn totals_add_up_over_streams() {
        let states = [
            state("a", 3, Some(0), Some(50)),
            state("b", 0, Some(7), None),
            state("c", 1, None, Some(70)),
        ];
        let totals = totals(&states, "g");
        assert_eq!((totals.pending, totals.backlog), (4, 7));
        assert_eq!(totals.oldest, Some(id(50)));
        assert_eq!(super::totals(&states, "other"), Totals::default());
    }
}
