//! [`LocalAnswers`]: sold-out clicks and holders' repeats answered in this process, from a
//! view of the coupon that Redis' server-assisted client-side caching keeps exact.

mod tracking;
mod view;

use crate::{Cluster, Error, Outcome, Result};
use redis::{ConnectionInfo, IntoConnectionInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracking::{ClockSample, Tracking};
use view::{Fill, ServerClock, Step, Views};

/// Views of at most this many holders by default; a larger coupon is always asked.
pub const DEFAULT_MAX_HOLDERS: u64 = 100_000;

/// How far the server's clock may have drifted from the last measurement by default: a
/// window is answered locally only this far (plus half a round trip) from its edges.
pub const DEFAULT_CLOCK_MARGIN: Duration = Duration::from_millis(250);

/// How long a click waits for a view by default: a fill is one round trip.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(20);

/// Answers a hot coupon's rejections in this process, kept exact by server-assisted
/// client-side caching: give it to [`Coupons::with_local_answers`](crate::Coupons::with_local_answers).
///
/// Once the server has answered a click with `SoldOut` (or `NotStarted`/`Ended`), the client
/// reads the coupon's holders on a connection of its own with `CLIENT TRACKING ON` (RESP3),
/// and from then on answers from that view — until Redis says the coupon changed:
///
/// - **never `Issued`**: issuing always goes to the server;
/// - `SoldOut` when the view shows as many holders as the limit and the user is not one;
/// - `AlreadyIssued` with the seq, for a holder's repeat click;
/// - `NotStarted`/`Ended` only when this process' estimate of the server's clock (measured at
///   each fill) is safely outside the window; near an edge the server is asked;
/// - everything else goes to the server.
///
/// A view is dropped, and the server asked again until a new fill, by: an invalidation (any
/// write to the coupon: an issue, a revoke, a restore, its deletion, eviction or migration
/// away), a flush, the tracking connection closing, a `-MOVED`/`-ASK`/`-TRYAGAIN` that the
/// [`Cluster`] followed, and a revoke or restore sent through this client (at once, before
/// it is sent). A fill that an invalidation overtakes is not installed. So a local answer can
/// only be late by the time an invalidation takes to arrive: a `SoldOut` just after a revoke
/// freed a coupon, or an `AlreadyIssued` just after the holder was revoked — never an
/// over-issue. Calls with replica acknowledgement on are never answered locally.
///
/// ```no_run
/// # async fn run() -> coupon_sdk::Result<()> {
/// use coupon_sdk::{Coupons, LocalAnswers};
///
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let local = LocalAnswers::connect("redis://127.0.0.1/").await?;
/// let coupons = Coupons::connect(client.get_multiplexed_async_connection().await?)
///     .await?
///     .with_local_answers(local.clone());
/// coupons.issue("sale", "alice", 1_000).await?;
/// println!("{} clicks answered here", local.stats().answered_locally);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LocalAnswers {
    shared: Arc<Shared>,
}

struct Shared {
    views: Arc<Mutex<Views>>,
    tracking: Tracking,
    counters: Arc<Counters>,
    clock: Mutex<ClockSample>,
    /// The [`Cluster`]'s count of redirects it followed, if the calls go through one.
    redirects: Option<Arc<AtomicU64>>,
    options: LocalOptions,
}

/// Settings of [`LocalAnswers`]; `LocalOptions::default().connect(node)` is
/// [`LocalAnswers::connect`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Coupons with more holders than this are never kept locally: every process reads every
    /// holder at each fill (with `HSCAN`, 5,000 a call; about 0.5 µs of server time each).
    /// Default [`DEFAULT_MAX_HOLDERS`].
    pub max_holders: u64,
    /// See [`DEFAULT_CLOCK_MARGIN`].
    pub clock_margin: Duration,
    /// How long a click may wait for a view being filled (or for the clicks let through
    /// to take the stock a view shows) before it goes to the server. Default
    /// [`DEFAULT_MAX_WAIT`].
    pub max_wait: Duration,
    /// For tests: how long a fill waits between its reply and installing the view.
    #[doc(hidden)]
    pub install_delay: Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            max_holders: DEFAULT_MAX_HOLDERS,
            clock_margin: DEFAULT_CLOCK_MARGIN,
            max_wait: DEFAULT_MAX_WAIT,
            install_delay: Duration::ZERO,
        }
    }
}

impl LocalOptions {
    /// Local answers for coupons on the standalone server at `node` (the one the calls go
    /// to; its password and database apply, the protocol becomes RESP3).
    pub async fn connect(self, node: impl IntoConnectionInfo) -> Result<LocalAnswers> {
        LocalAnswers::start(vec![node.into_connection_info()?], None, self).await
    }

    /// Local answers for coupons on a Redis Cluster that the calls reach through `cluster`;
    /// `nodes` are some of its nodes (each fill goes to the node of its coupon's slot, found
    /// by following `-MOVED`).
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        self,
        cluster: &Cluster,
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<LocalAnswers> {
        let nodes = nodes
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<redis::RedisResult<Vec<ConnectionInfo>>>()?;
        if nodes.is_empty() {
            return Err(Error::InvalidInput("a cluster needs at least one node"));
        }
        LocalAnswers::start(nodes, Some(cluster.redirects()), self).await
    }
}

/// What [`LocalAnswers`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Clicks answered in this process, and how many of them waited for a fill first.
    pub answered_locally: u64,
    pub answered_after_fill: u64,
    /// Clicks sent to the server (no current view, or one that could not tell).
    pub sent_to_server: u64,
    /// Fills started, and those that ended with a current view.
    pub fills: u64,
    pub fills_installed: u64,
    /// Invalidation pushes received.
    pub invalidations: u64,
    /// Heap bytes of the current views.
    pub view_bytes: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    answered_locally: AtomicU64,
    answered_after_fill: AtomicU64,
    sent_to_server: AtomicU64,
    fills_started: AtomicU64,
    fills_installed: AtomicU64,
    invalidations: AtomicU64,
}

impl LocalAnswers {
    /// Local answers for coupons on the standalone server at `node`, with default
    /// [`LocalOptions`].
    pub async fn connect(node: impl IntoConnectionInfo) -> Result<Self> {
        LocalOptions::default().connect(node).await
    }

    /// Local answers on a Redis Cluster, with default [`LocalOptions`]
    /// ([`LocalOptions::connect_cluster`]).
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        cluster: &Cluster,
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self> {
        LocalOptions::default()
            .connect_cluster(cluster, nodes)
            .await
    }

    async fn start(
        seeds: Vec<ConnectionInfo>,
        redirects: Option<Arc<AtomicU64>>,
        options: LocalOptions,
    ) -> Result<Self> {
        let views = Arc::new(Mutex::new(Views::default()));
        let counters = Arc::new(Counters::default());
        let tracking = Tracking::new(seeds, views.clone(), counters.clone());
        tracking.check().await?;
        Ok(LocalAnswers {
            shared: Arc::new(Shared {
                views,
                tracking,
                counters,
                clock: Mutex::new(ClockSample::default()),
                redirects,
                options,
            }),
        })
    }

    /// Whether `coupon` has a current view (clicks on it may be answered here).
    pub fn is_current(&self, coupon: impl AsRef<[u8]>) -> bool {
        let mut views = self.views();
        views.notice_redirects(self.redirects());
        views.current(coupon.as_ref()).is_some()
    }

    pub fn stats(&self) -> LocalStats {
        let counters = &self.shared.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LocalStats {
            answered_locally: count(&counters.answered_locally),
            answered_after_fill: count(&counters.answered_after_fill),
            sent_to_server: count(&counters.sent_to_server),
            fills: count(&counters.fills_started),
            fills_installed: count(&counters.fills_installed),
            invalidations: count(&counters.invalidations),
            view_bytes: self.views().bytes() as u64,
        }
    }

    /// The answer the server would give, if a current view can tell — waiting (at most
    /// `max_wait`) for a fill in flight, or for the clicks already let through to take the
    /// stock a view shows, rather than sending every click to the server meanwhile.
    pub(crate) async fn answer(
        &self,
        coupon: &[u8],
        user: &[u8],
        limit: u64,
        window: Option<(u64, u64)>,
    ) -> Option<(Outcome, bool)> {
        let deadline = tokio::time::Instant::now() + self.shared.options.max_wait;
        let mut waited = false;
        let clock = match window {
            Some(_) => self.server_clock(),
            None => ServerClock {
                earliest_ms: 0,
                latest_ms: 0,
            },
        };
        let answer = loop {
            let step = self
                .views()
                .next_step(coupon, user, limit, window, clock, self.redirects());
            let mut changed = match step {
                Step::Answer(outcome) => break Some((outcome, waited)),
                Step::Server => break None,
                Step::Wait(changed) => changed,
                Step::Fill(fill, changed) => {
                    self.spawn_fill(coupon, fill);
                    changed
                }
            };
            waited = true;
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                break None;
            }
        };
        if let Some((_, true)) = answer {
            let counters = &self.shared.counters;
            counters.answered_after_fill.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match answer {
            Some(_) => &self.shared.counters.answered_locally,
            None => &self.shared.counters.sent_to_server,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// Takes note of the server's answer and the holder count it came with: a coupon it left
    /// sold out (or outside its window) gets a view, if it has at most `max_holders`.
    pub(crate) fn learn(&self, coupon: &[u8], outcome: &Outcome, holders: u64, limit: u64) {
        if holders > self.shared.options.max_holders {
            return;
        }
        let fill = self
            .views()
            .learn(coupon, outcome, holders, limit, self.redirects());
        if let Some(fill) = fill {
            self.spawn_fill(coupon, fill);
        }
    }

    /// Reads the coupon on its tracking connection and installs the view, unless anything
    /// invalidated it meanwhile.
    fn spawn_fill(&self, coupon: &[u8], fill: Fill) {
        self.shared
            .counters
            .fills_started
            .fetch_add(1, Ordering::Relaxed);
        let (local, coupon) = (self.clone(), coupon.to_vec());
        tokio::spawn(async move {
            let options = &local.shared.options;
            let read = local
                .shared
                .tracking
                .read_holders(&coupon, options.max_holders)
                .await;
            if !options.install_delay.is_zero() {
                tokio::time::sleep(options.install_delay).await;
            }
            let holders = match read {
                Ok(read) => {
                    *local
                        .shared
                        .clock
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = read.clock;
                    read.holders
                }
                Err(_) => None,
            };
            let mut views = local.views();
            views.notice_redirects(local.redirects());
            if views.install(&coupon, fill, holders) {
                local
                    .shared
                    .counters
                    .fills_installed
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Drops the coupon's view: this client is about to change it (or just did).
    pub(crate) fn forget(&self, coupon: &[u8]) {
        self.views().invalidate(coupon);
    }

    fn views(&self) -> std::sync::MutexGuard<'_, Views> {
        self.shared
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn redirects(&self) -> u64 {
        self.shared
            .redirects
            .as_ref()
            .map_or(0, |redirects| redirects.load(Ordering::Acquire))
    }

    /// Where the server's clock is now, as far as this process can tell.
    fn server_clock(&self) -> ServerClock {
        let sample = *self
            .shared
            .clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let local_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let estimate = (local_ms + sample.offset_ms).max(0) as u64;
        let spread = sample.uncertainty_ms + self.shared.options.clock_margin.as_millis() as u64;
        ServerClock {
            earliest_ms: estimate.saturating_sub(spread),
            latest_ms: estimate.saturating_add(spread),
        }
    }
}

impl std::fmt::Debug for LocalAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAnswers")
            .field("options", &self.shared.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
