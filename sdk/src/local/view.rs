//! What a local view of one coupon may answer, and how fills and invalidations race: plain
//! Rust, no I/O, so the rules are unit-tested on their own.

use crate::Outcome;
use std::collections::HashMap;

/// The coupon's holders as a tracked read of its hash saw them (user → seq).
#[derive(Debug, Default)]
pub(crate) struct Holders {
    by_user: HashMap<Box<[u8]>, u64>,
}

impl Holders {
    #[cfg(test)]
    pub fn new() -> Self {
        Holders::default()
    }

    pub fn with_capacity(holders: usize) -> Self {
        Holders {
            by_user: HashMap::with_capacity(holders),
        }
    }

    pub fn insert(&mut self, user: &[u8], seq: u64) {
        self.by_user.insert(user.into(), seq);
    }

    pub fn count(&self) -> u64 {
        self.by_user.len() as u64
    }

    pub fn seq_of(&self, user: &[u8]) -> Option<u64> {
        self.by_user.get(user).copied()
    }

    /// Heap bytes the view holds: the table's slots (and their control bytes) plus the users.
    pub fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<[u8]>, u64)>() + 1;
        self.by_user.capacity() * slot + self.by_user.keys().map(|user| user.len()).sum::<usize>()
    }
}

/// The server's clock as this process can know it: the server's unix ms lies in
/// `earliest..=latest` now (the offset measured at the last fill, widened by its round trip
/// and a margin for drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerClock {
    pub earliest_ms: u64,
    pub latest_ms: u64,
}

/// What the server would answer, if the view can tell: the server's own order of checks
/// (a holder first, then the window, then the stock), never `Issued`. `None`: ask the server.
pub(crate) fn answer(
    holders: &Holders,
    user: &[u8],
    limit: u64,
    window: Option<(u64, u64)>,
    clock: ServerClock,
) -> Option<Outcome> {
    if let Some(seq) = holders.seq_of(user) {
        return Some(Outcome::AlreadyIssued { seq });
    }
    if let Some((start_ms, end_ms)) = window {
        if clock.latest_ms < start_ms {
            return Some(Outcome::NotStarted);
        }
        if clock.earliest_ms >= end_ms {
            return Some(Outcome::Ended);
        }
        if clock.earliest_ms < start_ms || clock.latest_ms >= end_ms {
            return None; // too close to an edge of the window to tell
        }
    }
    (holders.count() >= limit).then_some(Outcome::SoldOut)
}

/// One coupon's view: current (holders known) or not, and the epoch every invalidation bumps.
#[derive(Debug, Default)]
struct View {
    epoch: u64,
    holders: Option<Holders>,
    filling: bool,
}

/// A fill in flight: it may install only if nothing invalidated the coupon since it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fill {
    epoch: u64,
    redirects: u64,
}

/// Every coupon's view, kept under one lock that the invalidation handler takes too.
#[derive(Debug, Default)]
pub(crate) struct Views {
    views: HashMap<Vec<u8>, View>,
    /// The cluster's count of redirects when the views were last checked against it: any
    /// `-MOVED`/`-ASK`/`-TRYAGAIN` seen since may mean a slot moved, so every view goes.
    redirects: u64,
}

impl Views {
    /// Starts a fill of `coupon`, unless one is in flight or the view is current.
    pub fn begin_fill(&mut self, coupon: &[u8], redirects: u64) -> Option<Fill> {
        self.notice_redirects(redirects);
        let view = self.views.entry(coupon.to_vec()).or_default();
        if view.filling || view.holders.is_some() {
            return None;
        }
        view.filling = true;
        Some(Fill {
            epoch: view.epoch,
            redirects,
        })
    }

    /// Ends a fill: the view becomes current with `holders` only if no invalidation, flush,
    /// disconnect or redirect came since [`begin_fill`](Self::begin_fill). Whether it did.
    pub fn install(&mut self, coupon: &[u8], fill: Fill, holders: Option<Holders>) -> bool {
        let redirected = self.redirects != fill.redirects;
        let Some(view) = self.views.get_mut(coupon) else {
            return false;
        };
        view.filling = false;
        if view.epoch != fill.epoch || redirected {
            return false;
        }
        view.holders = holders;
        view.holders.is_some()
    }

    /// The coupon changed (or may have): its view is not current until a new fill.
    pub fn invalidate(&mut self, coupon: &[u8]) {
        if let Some(view) = self.views.get_mut(coupon) {
            view.epoch += 1;
            view.holders = None;
        }
    }

    /// Tracking was lost or the server flushed: no view is current.
    pub fn invalidate_all(&mut self) {
        for view in self.views.values_mut() {
            view.epoch += 1;
            view.holders = None;
        }
    }

    /// Drops every view if the cluster redirected a call since they were filled.
    pub fn notice_redirects(&mut self, redirects: u64) {
        if redirects != self.redirects {
            self.redirects = redirects;
            self.invalidate_all();
        }
    }

    /// The current view of `coupon`, if there is one.
    pub fn current(&self, coupon: &[u8]) -> Option<&Holders> {
        self.views.get(coupon)?.holders.as_ref()
    }

    /// Heap bytes of every current view.
    pub fn bytes(&self) -> usize {
        self.views
            .values()
            .filter_map(|view| view.holders.as_ref())
            .map(Holders::bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY_TIME: ServerClock = ServerClock {
        earliest_ms: 1_000,
        latest_ms: 1_000,
    };

    fn holders(pairs: &[(&str, u64)]) -> Holders {
        let mut holders = Holders::new();
        for (user, seq) in pairs {
            holders.insert(user.as_bytes(), *seq);
        }
        holders
    }

    #[test]
    fn a_holder_is_told_their_seq_before_anything_else() {
        let sold = holders(&[("alice", 1), ("bob", 2)]);
        let closed = Some((5_000, 6_000));
        assert_eq!(
            answer(&sold, b"bob", 2, closed, ANY_TIME),
            Some(Outcome::AlreadyIssued { seq: 2 })
        );
    }

    #[test]
    fn sold_out_only_at_the_limit_and_never_issued() {
        let two = holders(&[("alice", 1), ("bob", 2)]);
        assert_eq!(
            answer(&two, b"carol", 2, None, ANY_TIME),
            Some(Outcome::SoldOut)
        );
        assert_eq!(
            answer(&two, b"carol", 1, None, ANY_TIME),
            Some(Outcome::SoldOut)
        );
        assert_eq!(answer(&two, b"carol", 3, None, ANY_TIME), None);
        assert_eq!(
            answer(&Holders::new(), b"carol", 0, None, ANY_TIME),
            Some(Outcome::SoldOut)
        );
    }

    #[test]
    fn the_window_is_answered_only_when_the_clock_is_safely_on_one_side() {
        let none = Holders::new();
        let clock = |earliest_ms, latest_ms| ServerClock {
            earliest_ms,
            latest_ms,
        };
        let window = Some((1_000, 2_000));
        assert_eq!(
            answer(&none, b"u", 1, window, clock(500, 999)),
            Some(Outcome::NotStarted)
        );
        assert_eq!(answer(&none, b"u", 1, window, clock(900, 1_000)), None);
        assert_eq!(
            answer(&none, b"u", 1, window, clock(2_000, 2_100)),
            Some(Outcome::Ended)
        );
        assert_eq!(answer(&none, b"u", 1, window, clock(1_900, 2_000)), None);
        // Safely inside: the stock decides, or the server does.
        assert_eq!(answer(&none, b"u", 1, window, clock(1_000, 1_999)), None);
        assert_eq!(
            answer(&none, b"u", 0, window, clock(1_000, 1_999)),
            Some(Outcome::SoldOut)
        );
    }

    #[test]
    fn a_fill_installs_only_without_an_invalidation_since_it_began() {
        let mut views = Views::default();
        let fill = views.begin_fill(b"sale", 0).unwrap();
        assert!(views.begin_fill(b"sale", 0).is_none(), "one fill at a time");
        views.invalidate(b"sale"); // the push arrived before the reply that fills
        assert!(!views.install(b"sale", fill, Some(holders(&[("alice", 1)]))));
        assert!(views.current(b"sale").is_none());

        let fill = views.begin_fill(b"sale", 0).unwrap();
        assert!(views.install(b"sale", fill, Some(holders(&[("alice", 1)]))));
        assert_eq!(views.current(b"sale").unwrap().count(), 1);
        assert!(
            views.begin_fill(b"sale", 0).is_none(),
            "a current view is not filled again"
        );
    }

    #[test]
    fn a_flush_a_disconnect_or_a_redirect_drops_every_view() {
        let mut views = Views::default();
        for coupon in [&b"a"[..], b"b"] {
            let fill = views.begin_fill(coupon, 0).unwrap();
            assert!(views.install(coupon, fill, Some(Holders::new())));
        }
        views.invalidate_all();
        assert!(views.current(b"a").is_none() && views.current(b"b").is_none());

        let fill = views.begin_fill(b"a", 0).unwrap();
        assert!(views.install(b"a", fill, Some(Holders::new())));
        views.notice_redirects(1);
        assert!(views.current(b"a").is_none());

        // A fill that began before a redirect does not install after it.
        let fill = views.begin_fill(b"a", 1).unwrap();
        views.notice_redirects(2);
        assert!(!views.install(b"a", fill, Some(Holders::new())));
    }

    #[test]
    fn a_failed_fill_lets_the_next_one_start() {
        let mut views = Views::default();
        let fill = views.begin_fill(b"sale", 0).unwrap();
        assert!(!views.install(b"sale", fill, None));
        assert!(views.begin_fill(b"sale", 0).is_some());
    }

    #[test]
    fn memory_counts_slots_and_users() {
        let mut big = Holders::with_capacity(1_000);
        for n in 0..1_000u64 {
            big.insert(format!("user-{n:06}").as_bytes(), n + 1);
        }
        assert!(big.bytes() >= 1_000 * (11 + 24));
    }
}
