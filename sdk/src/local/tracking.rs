//! The tracking connections: one RESP3 connection per node with `CLIENT TRACKING ON`, used
//! only for the reads that fill views. Their invalidation pushes are applied to the views
//! inside redis-rs' read loop, before any reply that follows a push on the socket is handed
//! back — so a fill whose reply came after an invalidation sees that invalidation.

use super::view::{Holders, Views};
use super::Counters;
use crate::{Error, Result};
use coupon_layout::LAST_SEQ_FIELD;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, ProtocolVersion, PushInfo,
    PushKind, ServerErrorKind, Value,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a fill's read may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Holders asked for per `HSCAN` call: a coupon of up to about this many is read in one
/// round trip, and no call holds the server for more.
const SCAN_COUNT: u64 = 5_000;

/// `-MOVED` hops one fill follows before giving up for now.
const MAX_HOPS: usize = 3;

/// What a fill read: the server's clock around the read, and the holders (`None` when more
/// than the view may hold).
pub(crate) struct Read {
    pub clock: ClockSample,
    pub holders: Option<Holders>,
}

/// The server's clock against this process': server ms = local ms + `offset_ms`, give or
/// take `uncertainty_ms` (half the round trip that measured it, plus `TIME`'s rounding).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClockSample {
    pub offset_ms: i64,
    pub uncertainty_ms: u64,
}

/// One node's tracking connection, and whether redis-rs still has it.
#[derive(Clone)]
struct Tracked {
    connection: MultiplexedConnection,
    alive: Arc<AtomicBool>,
}

pub(crate) struct Tracking {
    seeds: Vec<ConnectionInfo>,
    views: Arc<Mutex<Views>>,
    counters: Arc<Counters>,
    nodes: Mutex<HashMap<String, Tracked>>,
    /// The node a `-MOVED` named for a slot (on a cluster; else the one seed serves all).
    slots: Mutex<HashMap<u16, ConnectionInfo>>,
}

impl Tracking {
    pub fn new(
        seeds: Vec<ConnectionInfo>,
        views: Arc<Mutex<Views>>,
        counters: Arc<Counters>,
    ) -> Self {
        Tracking {
            seeds,
            views,
            counters,
            nodes: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the first seed's tracking connection, so that a server without RESP3 or
    /// `CLIENT TRACKING` is refused at once.
    pub async fn check(&self) -> Result<()> {
        let seed = self
            .seeds
            .first()
            .ok_or(Error::InvalidInput("no node to track"))?;
        self.connection(seed).await.map(drop)
    }

    /// Reads `coupon`'s holders on the node that has it, tracked, with the server's `TIME`.
    pub async fn read_holders(&self, coupon: &[u8], max_holders: u64) -> Result<Read> {
        let slot = coupon_layout::hash_slot(coupon);
        let mut hops = 0;
        loop {
            let node = self.node_for(slot)?;
            let result = self.read_on(&node, coupon, max_holders).await;
            match result {
                Err(Error::Server(error))
                    if error.kind() == ErrorKind::Server(ServerErrorKind::Moved)
                        && hops < MAX_HOPS =>
                {
                    hops += 1;
                    let moved = error
                        .redirect_node()
                        .and_then(|(address, _)| moved_to(&node, address));
                    let Some(moved) = moved else {
                        return Err(Error::Server(error));
                    };
                    self.slots
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(slot, moved);
                }
                Err(error) => {
                    if matches!(error, Error::Connection(_) | Error::Timeout(_)) {
                        // Learn the slot's node again, from the seeds.
                        self.slots
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&slot);
                        self.nodes
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&address_of(&node));
                    }
                    return Err(error);
                }
                ok => return ok,
            }
        }
    }

    async fn read_on(
        &self,
        node: &ConnectionInfo,
        coupon: &[u8],
        max_holders: u64,
    ) -> Result<Read> {
        let mut connection = self.connection(node).await?.connection;
        let sent = Instant::now();
        let sent_at = unix_ms(SystemTime::now());
        // `HSCAN` rather than `HGETALL`, so that no call holds the server for more than a few
        // thousand holders; a coupon that small comes whole in the first call, with `TIME`,
        // in one round trip. Each call is tracked: a write to the coupon after the first one
        // invalidates the view this read would fill.
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .cmd("HSCAN")
            .arg(coupon)
            .arg(0)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let ((seconds, micros), (mut cursor, first)): ((u64, u64), (u64, Value)) =
            within(pipe.query_async(&mut connection)).await?;
        let half_trip = sent.elapsed().as_millis() as u64 / 2;
        let server_ms = seconds * 1_000 + micros / 1_000;
        let clock = ClockSample {
            offset_ms: server_ms as i64 - (sent_at + half_trip) as i64,
            uncertainty_ms: half_trip + 1,
        };
        let mut holders = Holders::new();
        add_holders(&mut holders, first)?;
        while cursor != 0 && holders.count() <= max_holders {
            let mut scan = redis::cmd("HSCAN");
            scan.arg(coupon).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
            let (next, fields): (u64, Value) = within(scan.query_async(&mut connection)).await?;
            add_holders(&mut holders, fields)?;
            cursor = next;
        }
        Ok(Read {
            clock,
            holders: (holders.count() <= max_holders).then_some(holders),
        })
    }

    fn node_for(&self, slot: u16) -> Result<ConnectionInfo> {
        if let Some(node) = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&slot)
        {
            return Ok(node.clone());
        }
        // Seeds in turn, so that one dead seed does not stop every fill.
        let turn = self.counters.fills_started.load(Ordering::Relaxed) as usize;
        self.seeds
            .get(turn % self.seeds.len().max(1))
            .cloned()
            .ok_or(Error::InvalidInput("no node to track"))
    }

    /// The node's tracking connection, opened (again) if redis-rs has dropped it.
    async fn connection(&self, node: &ConnectionInfo) -> Result<Tracked> {
        let address = address_of(node);
        if let Some(tracked) = self
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
        {
            if tracked.alive.load(Ordering::Acquire) {
                return Ok(tracked.clone());
            }
        }
        let tracked = self.open(node).await?;
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address, tracked.clone());
        Ok(tracked)
    }

    async fn open(&self, node: &ConnectionInfo) -> Result<Tracked> {
        let settings = node
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(node.clone().set_redis_settings(settings))?;
        let alive = Arc::new(AtomicBool::new(true));
        let handler = {
            let (views, counters, alive) =
                (self.views.clone(), self.counters.clone(), alive.clone());
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                on_push(&views, &counters, &alive, push);
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_push_sender(handler)
            .set_response_timeout(Some(READ_TIMEOUT));
        let mut connection =
            within(client.get_multiplexed_async_connection_with_config(&config)).await?;
        // A fresh connection tracks nothing yet: whatever it reads from here on is tracked.
        let mut tracking_on = redis::cmd("CLIENT");
        tracking_on.arg("TRACKING").arg("ON");
        within(tracking_on.query_async::<()>(&mut connection)).await?;
        Ok(Tracked { connection, alive })
    }
}

/// Applies one push under the views' lock: an invalidation drops the views of the keys it
/// names (all of them for a flush), a lost connection drops every view.
fn on_push(views: &Mutex<Views>, counters: &Counters, alive: &AtomicBool, push: PushInfo) {
    let mut views = views.lock().unwrap_or_else(PoisonError::into_inner);
    match push.kind {
        PushKind::Invalidate => {
            counters.invalidations.fetch_add(1, Ordering::Relaxed);
            match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(key) => views.invalidate(key),
                            _ => views.invalidate_all(),
                        }
                    }
                }
                // `FLUSHALL`/`FLUSHDB` (a null), or a form this client does not know.
                _ => views.invalidate_all(),
            }
        }
        PushKind::Disconnection => {
            alive.store(false, Ordering::Release);
            views.invalidate_all();
        }
        _ => {}
    }
}

/// One `HSCAN` batch (field, value, field, value, …) into `holders`; the last-seq field is
/// not a holder. A field may come twice in a scan; it is the same holder.
fn add_holders(holders: &mut Holders, batch: Value) -> Result<()> {
    let Value::Array(flat) = batch else {
        return Err(Error::UnexpectedReply(format!("HSCAN answered {batch:?}")));
    };
    let mut flat = flat.into_iter();
    while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
        let (Value::BulkString(user), Value::BulkString(seq)) = (field, value) else {
            return Err(Error::UnexpectedReply(
                "a holder that is not a string".into(),
            ));
        };
        if user == LAST_SEQ_FIELD {
            continue;
        }
        let seq = std::str::from_utf8(&seq)
            .ok()
            .and_then(|seq| seq.parse().ok())
            .ok_or_else(|| Error::UnexpectedReply("a holder's seq is not a number".into()))?;
        holders.insert(&user, seq);
    }
    Ok(())
}

/// The seed's settings (password, database) at the address a `-MOVED` named.
fn moved_to(node: &ConnectionInfo, address: &str) -> Option<ConnectionInfo> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host == "?" {
        return None;
    }
    let port = port.parse().ok()?;
    Some(
        node.clone()
            .set_addr(ConnectionAddr::Tcp(host.to_string(), port)),
    )
}

fn address_of(node: &ConnectionInfo) -> String {
    node.addr().to_string()
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn within<T>(query: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(READ_TIMEOUT, query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Timeout(Some(READ_TIMEOUT))),
    }
}
