//! What a local view of one coupon may answer, and how fills and invalidations race: plain
//! Rust, no I/O, so the rules are unit-tested on their own.

use crate::Outcome;
use std::collections::HashMap;
use tokio::sync::watch;

/// The coupon's holders as a tracked read of its hash saw them (user → seq).
#[derive(Debug, Default)]
pub(crate) struct Holders {
    by_user: HashMap<Box<[u8]>, u64>,
}

impl Holders {
    pub fn new() -> Self {
        Holders::default()
    }

    #[cfg(test)]
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

/// What a current view can say about a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The server would answer this (never `Issued`).
    Known(Outcome),
    /// Stock is left: the click may win, so only the server can answer it.
    StockLeft { room: u64 },
    /// Too close to an edge of the window to tell.
    Unsure,
}

/// What the server would answer, if the view can tell: the server's own order of checks
/// (a holder first, then the window, then the stock).
pub(crate) fn answer(
    holders: &Holders,
    user: &[u8],
    limit: u64,
    window: Option<(u64, u64)>,
    clock: ServerClock,
) -> Verdict {
    if let Some(seq) = holders.seq_of(user) {
        return Verdict::Known(Outcome::AlreadyIssued { seq });
    }
    if let Some((start_ms, end_ms)) = window {
        if clock.latest_ms < start_ms {
            return Verdict::Known(Outcome::NotStarted);
        }
        if clock.earliest_ms >= end_ms {
            return Verdict::Known(Outcome::Ended);
        }
        if clock.earliest_ms < start_ms || clock.latest_ms >= end_ms {
            return Verdict::Unsure;
        }
    }
    match limit.checked_sub(holders.count()) {
        None | Some(0) => Verdict::Known(Outcome::SoldOut),
        Some(room) => Verdict::StockLeft { room },
    }
}

/// Clicks let through to the server beyond the stock a view shows, per view: a few spare,
/// in case an admitted click fails or another process takes the stock first.
const ADMISSION_SLACK: u64 = 4;

/// One coupon's view: current (holders known) or not, the epoch every invalidation bumps,
/// and a signal that fires on every change, for the clicks that wait for one.
#[derive(Debug)]
struct View {
    epoch: u64,
    holders: Option<Holders>,
    filling: bool,
    /// The server's last answer left the coupon sold out (or outside its window): worth a
    /// view. A coupon with stock left is not filled again after each issue.
    hot: bool,
    /// Clicks this view let through to the server because it showed stock left.
    admitted: u64,
    changed: watch::Sender<()>,
}

impl View {
    fn new() -> Self {
        View {
            epoch: 0,
            holders: None,
            filling: false,
            hot: false,
            admitted: 0,
            changed: watch::channel(()).0,
        }
    }

    fn drop_holders(&mut self) {
        self.epoch += 1;
        self.holders = None;
        self.admitted = 0;
        self.changed.send_replace(());
    }
}

/// A fill in flight: it may install only if nothing invalidated the coupon since it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fill {
    epoch: u64,
    redirects: u64,
}

/// What to do with a click.
#[derive(Debug)]
pub(crate) enum Step {
    Answer(Outcome),
    /// Send it to the server.
    Server,
    /// Wait for the view to change (a fill in flight, or the stock it shows already taken
    /// by clicks let through), then ask again.
    Wait(watch::Receiver<()>),
    /// Start this fill, then wait as for [`Step::Wait`].
    Fill(Fill, watch::Receiver<()>),
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
    /// What to do with a click of `user` on `coupon`.
    pub fn next_step(
        &mut self,
        coupon: &[u8],
        user: &[u8],
        limit: u64,
        window: Option<(u64, u64)>,
        clock: ServerClock,
        redirects: u64,
    ) -> Step {
        self.notice_redirects(redirects);
        let Some(view) = self.views.get_mut(coupon) else {
            return Step::Server;
        };
        if let Some(holders) = &view.holders {
            return match answer(holders, user, limit, window, clock) {
                Verdict::Known(outcome) => Step::Answer(outcome),
                Verdict::Unsure => Step::Server,
                Verdict::StockLeft { room } if view.admitted < room + ADMISSION_SLACK => {
                    view.admitted += 1;
                    Step::Server
                }
                // Enough clicks are on their way to take what is left; their writes (or a
                // failed one's absence, after the wait) decide this one.
                Verdict::StockLeft { .. } => Step::Wait(view.changed.subscribe()),
            };
        }
        if !view.hot {
            return Step::Server;
        }
        if view.filling {
            return Step::Wait(view.changed.subscribe());
        }
        view.filling = true;
        let fill = Fill {
            epoch: view.epoch,
            redirects,
        };
        Step::Fill(fill, view.changed.subscribe())
    }

    /// Takes note of the server's answer (with the holders it counted): a coupon it left sold
    /// out (or outside its window) is worth a view, one with stock left is not. The fill to
    /// start, if one is due.
    pub fn learn(
        &mut self,
        coupon: &[u8],
        outcome: &Outcome,
        holders: u64,
        limit: u64,
        redirects: u64,
    ) -> Option<Fill> {
        self.notice_redirects(redirects);
        if let Outcome::Issued { .. } = outcome {
            // This client's own write: its view is stale now, before the push says so.
            self.invalidate(coupon);
        }
        let hot = match outcome {
            Outcome::SoldOut | Outcome::NotStarted | Outcome::Ended => true,
            Outcome::Issued { .. } | Outcome::AlreadyIssued { .. } => holders >= limit,
        };
        if !hot {
            if let Some(view) = self.views.get_mut(coupon) {
                view.hot = false;
            }
            return None;
        }
        let view = self.views.entry(coupon.to_vec()).or_insert_with(View::new);
        view.hot = true;
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
    /// disconnect or redirect came since the fill began. Whether it did.
    pub fn install(&mut self, coupon: &[u8], fill: Fill, holders: Option<Holders>) -> bool {
        let redirected = self.redirects != fill.redirects;
        let Some(view) = self.views.get_mut(coupon) else {
            return false;
        };
        view.filling = false;
        if holders.is_none() {
            // The read failed (or found too many holders): no fill again until the server
            // rejects a click anew, so that waiting clicks do not retry it in a loop.
            view.hot = false;
        }
        let installed = view.epoch == fill.epoch && !redirected && holders.is_some();
        if installed {
            view.holders = holders;
            view.admitted = 0;
        }
        view.changed.send_replace(());
        installed
    }

    /// The coupon changed (or may have): its view is not current until a new fill.
    pub fn invalidate(&mut self, coupon: &[u8]) {
        if let Some(view) = self.views.get_mut(coupon) {
            view.drop_holders();
        }
    }

    /// Tracking was lost or the server flushed: no view is current.
    pub fn invalidate_all(&mut self) {
        for view in self.views.values_mut() {
            view.drop_holders();
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

    fn sold_out(outcome: Outcome) -> Verdict {
        Verdict::Known(outcome)
    }

    #[test]
    fn a_holder_is_told_their_seq_before_anything_else() {
        let sold = holders(&[("alice", 1), ("bob", 2)]);
        let closed = Some((5_000, 6_000));
        assert_eq!(
            answer(&sold, b"bob", 2, closed, ANY_TIME),
            sold_out(Outcome::AlreadyIssued { seq: 2 })
        );
    }

    #[test]
    fn sold_out_only_at_the_limit_and_never_issued() {
        let two = holders(&[("alice", 1), ("bob", 2)]);
        assert_eq!(
            answer(&two, b"carol", 2, None, ANY_TIME),
            sold_out(Outcome::SoldOut)
        );
        assert_eq!(
            answer(&two, b"carol", 1, None, ANY_TIME),
            sold_out(Outcome::SoldOut)
        );
        assert_eq!(
            answer(&two, b"carol", 3, None, ANY_TIME),
            Verdict::StockLeft { room: 1 }
        );
        let none = Holders::new();
        assert_eq!(
            answer(&none, b"carol", 0, None, ANY_TIME),
            sold_out(Outcome::SoldOut)
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
        let at = |earliest, latest| answer(&none, b"u", 1, window, clock(earliest, latest));
        assert_eq!(at(500, 999), sold_out(Outcome::NotStarted));
        assert_eq!(at(900, 1_000), Verdict::Unsure);
        assert_eq!(at(2_000, 2_100), sold_out(Outcome::Ended));
        assert_eq!(at(1_900, 2_000), Verdict::Unsure);
        // Safely inside: the stock decides.
        assert_eq!(at(1_000, 1_999), Verdict::StockLeft { room: 1 });
        let inside = answer(&none, b"u", 0, window, clock(1_000, 1_999));
        assert_eq!(inside, sold_out(Outcome::SoldOut));
    }

    fn step(views: &mut Views, coupon: &[u8], limit: u64) -> Step {
        views.next_step(coupon, b"someone", limit, None, ANY_TIME, 0)
    }

    #[test]
    fn a_fill_installs_only_without_an_invalidation_since_it_began() {
        let mut views = Views::default();
        let fill = views.learn(b"sale", &Outcome::SoldOut, 1, 1, 0).unwrap();
        assert!(
            views.learn(b"sale", &Outcome::SoldOut, 1, 1, 0).is_none(),
            "one fill at a time"
        );
        assert!(matches!(step(&mut views, b"sale", 1), Step::Wait(_)));
        views.invalidate(b"sale"); // the push arrived before the reply that fills
        assert!(!views.install(b"sale", fill, Some(holders(&[("alice", 1)]))));
        assert!(views.current(b"sale").is_none());

        // The next click starts the next fill itself, and waits for it.
        let Step::Fill(fill, changed) = step(&mut views, b"sale", 1) else {
            panic!("a hot coupon without a view is filled")
        };
        assert!(views.install(b"sale", fill, Some(holders(&[("alice", 1)]))));
        assert!(
            changed.has_changed().unwrap(),
            "the waiting clicks are woken"
        );
        assert!(matches!(
            step(&mut views, b"sale", 1),
            Step::Answer(Outcome::SoldOut)
        ));
    }

    #[test]
    fn stock_left_lets_only_as_many_clicks_through_as_could_win() {
        let mut views = Views::default();
        let fill = views.learn(b"sale", &Outcome::SoldOut, 3, 3, 0).unwrap();
        assert!(views.install(b"sale", fill, Some(holders(&[("a", 1), ("b", 2)]))));
        let through = (0..20)
            .filter(|_| matches!(step(&mut views, b"sale", 3), Step::Server))
            .count() as u64;
        assert_eq!(through, 1 + ADMISSION_SLACK);
        assert!(matches!(step(&mut views, b"sale", 3), Step::Wait(_)));
        // The winner's write invalidates; the next view lets clicks through afresh.
        views.invalidate(b"sale");
        let Step::Fill(fill, _) = step(&mut views, b"sale", 3) else {
            panic!("no fill")
        };
        assert!(views.install(b"sale", fill, Some(holders(&[("a", 1)]))));
        assert!(matches!(step(&mut views, b"sale", 3), Step::Server));
    }

    #[test]
    fn a_coupon_with_stock_left_goes_cold() {
        let mut views = Views::default();
        assert!(
            matches!(step(&mut views, b"sale", 5), Step::Server),
            "unknown coupons go to the server"
        );
        let fill = views.learn(b"sale", &Outcome::SoldOut, 5, 5, 0).unwrap();
        views.install(b"sale", fill, Some(Holders::new()));
        views.invalidate(b"sale");
        // A restock: the server issues with stock left, so no view is filled per issue.
        assert!(views
            .learn(b"sale", &Outcome::Issued { seq: 6 }, 6, 10, 0)
            .is_none());
        assert!(matches!(step(&mut views, b"sale", 10), Step::Server));
        // Its last coupon makes it hot again.
        assert!(views
            .learn(b"sale", &Outcome::Issued { seq: 10 }, 10, 10, 0)
            .is_some());
    }

    #[test]
    fn an_issue_through_this_client_drops_its_view_at_once() {
        let mut views = Views::default();
        let fill = views.learn(b"sale", &Outcome::SoldOut, 2, 3, 0).unwrap();
        assert!(views.install(b"sale", fill, Some(holders(&[("a", 1), ("b", 2)]))));
        let fill = views.learn(b"sale", &Outcome::Issued { seq: 3 }, 3, 3, 0);
        assert!(
            views.current(b"sale").is_none(),
            "a view without the new holder"
        );
        assert!(fill.is_some(), "the sold-out coupon is filled again");
    }

    #[test]
    fn a_flush_a_disconnect_or_a_redirect_drops_every_view() {
        let mut views = Views::default();
        for coupon in [&b"a"[..], b"b"] {
            let fill = views.learn(coupon, &Outcome::SoldOut, 0, 0, 0).unwrap();
            assert!(views.install(coupon, fill, Some(Holders::new())));
        }
        views.invalidate_all();
        assert!(views.current(b"a").is_none() && views.current(b"b").is_none());

        let Step::Fill(fill, _) = step(&mut views, b"a", 0) else {
            panic!("no fill")
        };
        assert!(views.install(b"a", fill, Some(Holders::new())));
        views.notice_redirects(1);
        assert!(views.current(b"a").is_none());

        // A fill that began before a redirect does not install after it.
        let Step::Fill(fill, _) = views.next_step(b"a", b"u", 0, None, ANY_TIME, 1) else {
            panic!("no fill")
        };
        views.notice_redirects(2);
        assert!(!views.install(b"a", fill, Some(Holders::new())));
    }

    #[test]
    fn a_failed_fill_wakes_the_waiting_clicks_and_waits_for_the_next_rejection() {
        let mut views = Views::default();
        let fill = views.learn(b"sale", &Outcome::SoldOut, 0, 0, 0).unwrap();
        let Step::Wait(changed) = step(&mut views, b"sale", 0) else {
            panic!("a click during a fill waits")
        };
        assert!(!views.install(b"sale", fill, None));
        assert!(changed.has_changed().unwrap());
        assert!(
            matches!(step(&mut views, b"sale", 0), Step::Server),
            "no fill in a loop"
        );
        assert!(views.learn(b"sale", &Outcome::SoldOut, 0, 0, 0).is_some());
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
