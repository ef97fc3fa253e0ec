//! The change feed: which streams of one node have new entries, from the module's change
//! index (`COUPON.CHANGES`). A hint, never the source of truth: whenever the index cannot
//! vouch for having named every change (first call, a restart or failover behind the same
//! address, an index that dropped old entries, a reconnect), and at a slow interval anyway,
//! the feed asks for a sweep — every known stream read once — so a lost hint costs latency,
//! never a row. On a server without the module the feed asks for sweeps continuously.

use crate::event::StreamKey;
use crate::reply::{self, BadReply};
use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams asked for per `COUPON.CHANGES`.
pub const CHANGES_PER_CALL: usize = 1_000;

/// Shortest time between two sweeps on a server without the change index.
const NO_INDEX_SWEEP_GAP: Duration = Duration::from_millis(50);

/// Why a sweep is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// The feed just started.
    Start,
    /// The connection failed since the last look: changes may have been missed meanwhile.
    Reconnect,
    /// The index cannot vouch for the streams since the cursor (another epoch: restarted,
    /// failed over; or it dropped old entries for room).
    Incomplete,
    /// The slow interval passed.
    Interval,
    /// The server keeps no change index: every known stream is read in turn.
    NoIndex,
}

impl Sweep {
    pub fn label(self) -> &'static str {
        match self {
            Sweep::Start => "start",
            Sweep::Reconnect => "reconnect",
            Sweep::Incomplete => "incomplete",
            Sweep::Interval => "interval",
            Sweep::NoIndex => "no_index",
        }
    }
}

/// What one look at the feed found.
#[derive(Debug, Default)]
pub struct Look {
    /// Streams with changes since the last look (maybe more to come: see `more`).
    pub changed: Vec<StreamKey>,
    /// A sweep is due, and why.
    pub sweep: Option<Sweep>,
    /// The index has more changes than one call returns: look again at once.
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] BadReply),
}

/// A node's change feed: its cursor and when it last swept.
pub struct ChangeFeed {
    cursor: String,
    /// `None` until the first look; `Some(false)` on a server without the index.
    has_index: Option<bool>,
    sweep_every: Duration,
    last_sweep: Option<Instant>,
    reconnected: bool,
}

impl ChangeFeed {
    /// A feed sweeping at least every `sweep_every`.
    pub fn new(sweep_every: Duration) -> ChangeFeed {
        ChangeFeed {
            cursor: "0".into(),
            has_index: None,
            sweep_every,
            last_sweep: None,
            reconnected: false,
        }
    }

    /// Whether the server keeps a change index (`None` before the first look).
    pub fn has_index(&self) -> Option<bool> {
        self.has_index
    }

    /// The connection failed: the next look asks for a sweep.
    pub fn connection_failed(&mut self) {
        self.reconnected = true;
    }

    /// Asks the node what changed since the last look.
    pub async fn look<C: ConnectionLike + Send>(
        &mut self,
        conn: &mut C,
        now: Instant,
    ) -> Result<Look, FeedError> {
        let mut look = Look::default();
        if self.has_index != Some(false) {
            let answer = redis::cmd("COUPON.CHANGES")
                .arg(&self.cursor)
                .arg("COUNT")
                .arg(CHANGES_PER_CALL)
                .query_async::<Value>(conn)
                .await;
            match answer {
                Ok(answer) => {
                    let page = Page::parse(&answer)?;
                    let first = self.has_index.is_none();
                    self.has_index = Some(true);
                    look.more = page.streams.len() >= CHANGES_PER_CALL;
                    look.changed = page.streams;
                    self.cursor = page.cursor;
                    if first {
                        look.sweep = Some(Sweep::Start);
                    } else if !page.complete {
                        look.sweep = Some(Sweep::Incomplete);
                    }
                }
                Err(error) if is_unknown_command(&error.to_string()) => {
                    tracing::info!(
                        "the server keeps no coupon change index (module not loaded): \
                         reading every coupon stream in turn"
                    );
                    self.has_index = Some(false);
                }
                Err(error) if error.code() == Some("NOPERM") => {
                    tracing::warn!(
                        %error,
                        "not allowed to ask the coupon change index: reading every coupon \
                         stream in turn, which costs Redis far more (allow it with \
                         +coupon.changes)"
                    );
                    self.has_index = Some(false);
                }
                Err(error) => {
                    // A cursor the index refuses (never one it returned) starts over, with
                    // a sweep.
                    if error.to_string().contains("invalid cursor") {
                        self.cursor = "0".into();
                        self.has_index = None;
                    }
                    self.reconnected = true;
                    return Err(error.into());
                }
            }
        }
        if look.sweep.is_none() {
            look.sweep = self.due(now);
        }
        if std::mem::take(&mut self.reconnected) && look.sweep.is_none() {
            look.sweep = Some(Sweep::Reconnect);
        }
        if look.sweep.is_some() {
            self.last_sweep = Some(now);
        }
        Ok(look)
    }

    fn due(&self, now: Instant) -> Option<Sweep> {
        let Some(last) = self.last_sweep else {
            return Some(match self.has_index {
                Some(false) => Sweep::NoIndex,
                _ => Sweep::Start,
            });
        };
        let gap = now.saturating_duration_since(last);
        match self.has_index {
            Some(false) if gap >= NO_INDEX_SWEEP_GAP => Some(Sweep::NoIndex),
            _ if gap >= self.sweep_every => Some(Sweep::Interval),
            _ => None,
        }
    }
}

/// Whether Redis' error says it does not know the command (the module is not loaded, or
/// is older).
fn is_unknown_command(error: &str) -> bool {
    error.to_ascii_lowercase().contains("unknown command")
}

/// One `COUPON.CHANGES` reply: `[cursor, complete, [stream, …]]`.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    cursor: String,
    complete: bool,
    streams: Vec<StreamKey>,
}

impl Page {
    fn parse(answer: &Value) -> Result<Page, BadReply> {
        let [cursor, complete, streams] = reply::items(answer)? else {
            return Err(BadReply(format!("COUPON.CHANGES reply: {answer:?}")));
        };
        let streams = reply::items(streams)?
            .iter()
            .map(|stream| reply::bytes(stream).map(Arc::from))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            cursor: reply::text(cursor)?,
            complete: reply::int(complete)? == 1,
            streams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn a_page_is_the_cursor_the_completeness_and_the_streams() {
        let answer = Value::Array(vec![
            bulk("ab12-7"),
            Value::Int(1),
            Value::Array(vec![bulk("a:events{a}"), bulk("b:events{b}")]),
        ]);
        let page = Page::parse(&answer).expect("parses");
        assert_eq!(page.cursor, "ab12-7");
        assert!(page.complete);
        assert_eq!(
            page.streams,
            vec![
                StreamKey::from(&b"a:events{a}"[..]),
                b"b:events{b}"[..].into()
            ]
        );
        assert!(Page::parse(&Value::Array(vec![bulk("x")])).is_err());
        assert!(Page::parse(&Value::Int(3)).is_err());
    }

    #[test]
    fn sweeps_come_at_the_start_at_the_interval_and_often_without_an_index() {
        let start = Instant::now();
        let mut feed = ChangeFeed::new(Duration::from_secs(60));
        assert_eq!(feed.due(start), Some(Sweep::Start));
        feed.has_index = Some(true);
        feed.last_sweep = Some(start);
        assert_eq!(feed.due(start + Duration::from_secs(59)), None);
        assert_eq!(
            feed.due(start + Duration::from_secs(60)),
            Some(Sweep::Interval)
        );
        feed.has_index = Some(false);
        assert_eq!(feed.due(start + Duration::from_millis(10)), None);
        assert_eq!(
            feed.due(start + Duration::from_millis(50)),
            Some(Sweep::NoIndex)
        );
    }

    #[test]
    fn unknown_commands_are_told_apart_from_other_errors() {
        assert!(is_unknown_command(
            "ERR unknown command 'COUPON.CHANGES', with args beginning with: '0'"
        ));
        assert!(!is_unknown_command("BUSY Redis is busy running a script"));
    }
}
